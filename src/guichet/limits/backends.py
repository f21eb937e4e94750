"""The counter backends of one worker, handed to plugins as ``env.counters``.

A :class:`CounterBackends` is owned by the worker, not by a configuration snapshot: the
counters and the Redis connections survive reloads, and plugin instances built from any
snapshot share them.

* :meth:`CounterBackends.local` is the ``local`` policy: the node table shared by every
  worker when the master made one (:class:`~guichet.limits.node.NodeCounters`), else
  counters of this process only (:class:`~guichet.limits.process.ProcessCounters`: tests
  that build plugins in-process, the master's validation build).
* :meth:`CounterBackends.redis` is the ``redis`` policy: one
  :class:`~guichet.limits.redis.RedisCounters` per distinct
  :class:`~guichet.limits.redis.RedisSettings`, created on first use; it connects on its
  first hit, never at build time.
* :meth:`CounterBackends.close` (async) closes the Redis clients and unmaps the table.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Union

from guichet.limits.process import ProcessCounters

if TYPE_CHECKING:
    from guichet.limits.node import NodeCounters, NodeTable
    from guichet.limits.redis import RedisCounters, RedisSettings

log = logging.getLogger("guichet.limits")


class CounterBackends:
    def __init__(self, table: "NodeTable | None" = None) -> None:
        self.table = table
        self._local: Union["NodeCounters", ProcessCounters, None] = None
        self._redis: dict[Any, "RedisCounters"] = {}

    @classmethod
    def for_node(cls, path: str | None) -> "CounterBackends":
        """The worker's backends over the node table at ``path`` (None: process-local)."""
        if not path:
            return cls()
        from guichet.limits.node import NodeTable

        return cls(NodeTable.open(path))

    def local(self) -> Union["NodeCounters", ProcessCounters]:
        if self._local is None:
            if self.table is not None:
                from guichet.limits.node import NodeCounters

                self._local = NodeCounters(self.table)
            else:
                self._local = ProcessCounters()
        return self._local

    def redis(self, settings: "RedisSettings") -> "RedisCounters":
        counters = self._redis.get(settings)
        if counters is None:
            from guichet.limits.redis import RedisCounters

            counters = self._redis[settings] = RedisCounters(settings)
        return counters

    def tally(self) -> dict[str, dict[str, int]]:
        """Every backend's counts by name (``local``, ``redis host:port/db``)."""
        out: dict[str, dict[str, int]] = {}
        if self._local is not None:
            out["local"] = dict(self._local.tally)
        for settings, counters in self._redis.items():
            out[f"redis {settings.host}:{settings.port}/{settings.database}"] = dict(counters.tally)
        return out

    async def close(self) -> None:
        for counters in list(self._redis.values()):
            try:
                await counters.close()
            except Exception:  # noqa: BLE001 - closing must not stop the worker's exit
                log.exception("closing a Redis counter client failed")
        self._redis.clear()
        if self.table is not None:
            self.table.close()
