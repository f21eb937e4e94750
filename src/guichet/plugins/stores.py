"""Named stores for state that outlives a request: caches, counters, fetched keys.

A store is owned by the worker, not by a configuration snapshot, so what it holds
survives reloads. This module holds the in-process backend (the default when a node runs
alone); shared backends (Redis, SQL) implement the same methods.

Every value has an optional time to live in seconds. Reads of an expired entry miss;
expired entries are dropped on access and by :meth:`MemoryStore.sweep`. A store holds at
most ``max_entries`` entries; past that, the oldest inserted are evicted first.
"""

from __future__ import annotations

import time
from typing import Any, Callable

_MISSING = object()


class MemoryStore:
    def __init__(self, name: str, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.max_entries = max_entries
        self._clock = clock
        self._data: dict[Any, tuple[Any, float]] = {}  # key -> (value, expires at or 0)

    def get(self, key: Any, default: Any = None) -> Any:
        entry = self._data.get(key)
        if entry is None:
            return default
        value, expires = entry
        if expires and expires <= self._clock():
            del self._data[key]
            return default
        return value

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        data = self._data
        if key in data:
            del data[key]  # re-inserted last: eviction follows insertion order
        elif len(data) >= self.max_entries:
            del data[next(iter(data))]
        data[key] = (value, self._clock() + ttl if ttl else 0.0)

    def delete(self, key: Any) -> None:
        self._data.pop(key, None)

    def incr(self, key: Any, amount: int = 1, ttl: float | None = None) -> int:
        """Add ``amount`` to a counter (created at 0 with ``ttl``) and return the new value.
        Atomic within the worker: there is no ``await`` between the read and the write."""
        entry = self._data.get(key)
        now = self._clock()
        if entry is None or (entry[1] and entry[1] <= now):
            self.set(key, amount, ttl)
            return amount
        value = entry[0] + amount
        self._data[key] = (value, entry[1])
        return value

    def __len__(self) -> int:
        return len(self._data)

    def sweep(self) -> None:
        now = self._clock()
        dead = [k for k, (_, exp) in self._data.items() if exp and exp <= now]
        for key in dead:
            del self._data[key]


class Stores:
    """The worker's stores by name, created on first use."""

    def __init__(self) -> None:
        self._stores: dict[str, MemoryStore] = {}

    def get(self, name: str) -> MemoryStore:
        store = self._stores.get(name)
        if store is None:
            store = self._stores[name] = MemoryStore(name)
        return store

    def sweep(self) -> None:
        for store in self._stores.values():
            store.sweep()
