"""What a plugin receives when it is built: the snapshot's consumers, the node's settings,
the worker's named stores and its rate-limit counter backends (``counters``: the node
table behind ``local``, Redis clients; process-local ones when none is given)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from guichet.limits.backends import CounterBackends
from guichet.plugins.consumers import ConsumerDirectory
from guichet.plugins.stores import MemoryStore, Stores

if TYPE_CHECKING:
    from guichet.settings import Settings


class BuildEnv:
    def __init__(self, consumers: ConsumerDirectory, settings: "Settings | None",
                 stores: Stores, counters: CounterBackends | None = None) -> None:
        self.consumers = consumers
        self.settings = settings
        self._stores = stores
        self.counters = counters if counters is not None else CounterBackends()

    def store(self, name: str) -> MemoryStore:
        """The worker's store called ``name``; it survives configuration reloads."""
        return self._stores.get(name)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<BuildEnv consumers={len(self.consumers.by_id)}>"


