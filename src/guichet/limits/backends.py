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
* Which Redis settings a snapshot uses: the snapshot compiler calls :meth:`start_build`
  and keeps the set it returns, which :meth:`redis` fills while the plugins are built
  (builds are synchronous, one at a time). When retired snapshots are released the worker
  calls :meth:`prune` with the union of the sets of the snapshots still serving; the
  clients no snapshot uses any more are closed, so reloads that change a ``redis`` record
  (its ``timeout``, say) do not accumulate connections. The set of the latest build is
  always kept too (a build not yet swapped in). Their ``tally`` is kept.
* :meth:`tally` sums the counts of the backends sharing a name (``redis host:port/db``:
  records differing only in password, timeout, username or TLS), pruned ones included.
* :meth:`CounterBackends.close` (async) closes the Redis clients and unmaps the table.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable, Union

from guichet.limits.process import ProcessCounters

if TYPE_CHECKING:
    from guichet.limits.node import NodeCounters, NodeTable
    from guichet.limits.redis import RedisCounters, RedisSettings

log = logging.getLogger("guichet.limits")


def backend_name(settings: "RedisSettings") -> str:
    return f"redis {settings.host}:{settings.port}/{settings.database}"


class CounterBackends:
    def __init__(self, table: "NodeTable | None" = None) -> None:
        self.table = table
        self._local: Union["NodeCounters", ProcessCounters, None] = None
        self._redis: dict[Any, "RedisCounters"] = {}
        self._build: set[Any] = set()  # the Redis settings the latest build asked for
        self._pruned_tally: dict[str, dict[str, int]] = {}  # of closed clients, by name

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
        self._build.add(settings)
        counters = self._redis.get(settings)
        if counters is None:
            from guichet.limits.redis import RedisCounters

            counters = self._redis[settings] = RedisCounters(settings)
        return counters

    def start_build(self) -> set[Any]:
        """A new set that :meth:`redis` fills until the next build starts; the snapshot
        being built keeps it (see the module docstring)."""
        self._build = set()
        return self._build

    async def prune(self, keep: Iterable[Any]) -> int:
        """Close the Redis clients whose settings are neither in ``keep`` (the sets of the
        snapshots still serving) nor asked for by the latest build; returns how many."""
        wanted = set(keep) | self._build
        gone = [(s, c) for s, c in self._redis.items() if s not in wanted]
        for settings, _ in gone:  # decided and removed before any await: a build after
            del self._redis[settings]  # this point gets a new client
        for settings, counters in gone:
            self._merge(self._pruned_tally.setdefault(backend_name(settings), {}),
                        counters.tally)
            try:
                await counters.close()
            except Exception:  # noqa: BLE001 - a failed close must not stop the worker
                log.exception("closing a Redis counter client failed")
        return len(gone)

    def tally(self) -> dict[str, dict[str, int]]:
        """Every backend's counts by name (``local``, ``redis host:port/db``); backends
        with the same name are summed."""
        out: dict[str, dict[str, int]] = {}
        if self._local is not None:
            out["local"] = dict(self._local.tally)
        for name, tally in self._pruned_tally.items():
            self._merge(out.setdefault(name, {}), tally)
        for settings, counters in self._redis.items():
            self._merge(out.setdefault(backend_name(settings), {}), counters.tally)
        return out

    @staticmethod
    def _merge(into: dict[str, int], tally: dict[str, int]) -> None:
        for key, value in tally.items():
            into[key] = into.get(key, 0) + value

    async def close(self) -> None:
        for counters in list(self._redis.values()):
            try:
                await counters.close()
            except Exception:  # noqa: BLE001 - closing must not stop the worker's exit
                log.exception("closing a Redis counter client failed")
        self._redis.clear()
        if self.table is not None:
            self.table.close()
