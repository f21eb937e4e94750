"""Counters kept in this process only: the ``local`` backend when there is no node table
(a gateway built in-process by tests, the master's validation build).

Exact within the process (one event loop thread; a lock makes it safe from other threads
too). Holds at most ``max_entries`` counters: past that, expired ones are swept; if none
has expired, the hit raises :class:`~guichet.limits.CountersUnavailable` (counted as
``table_full``) and the caller's ``fault_tolerant`` decides, as with the node table.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Sequence

from guichet.limits import CountersUnavailable, Decision, Limit
from guichet.limits.algorithms import State, evaluate
from guichet.limits.slots import LocalSlotBook, Slots


class ProcessCounters:
    kind = "process"

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self.tally: dict[str, int] = {}
        self._data: dict[str, tuple[State, float]] = {}  # key -> (state, expires)
        self._lock = threading.Lock()
        self.book = LocalSlotBook()
        self._slots = Slots(self.book, self.tally)

    def hit(self, limits: Sequence[Limit], cost: int = 1) -> Decision:
        now = self.clock()
        data = self._data
        with self._lock:
            states: list[Optional[State]] = []
            for limit in limits:
                entry = data.get(limit.key)
                states.append(entry[0] if entry is not None and entry[1] > now else None)
            decision, new = evaluate(limits, states, now, cost)
            if new is not None:
                missing = sum(1 for limit in limits if limit.key not in data)
                if missing and len(data) + missing > self.max_entries:
                    self.sweep(now)
                    if len(data) + missing > self.max_entries:
                        self.tally["table_full"] = self.tally.get("table_full", 0) + 1
                        raise CountersUnavailable(
                            f"the process counter table is full ({self.max_entries} entries)")
                for limit, entry in zip(limits, new):
                    data[limit.key] = entry
        return decision

    def acquire(self, key: str, limit: int, queue: int, timeout: float):
        return self._slots.acquire(key, limit, queue, timeout)

    def sweep(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        dead = [k for k, (_, expires) in self._data.items() if expires <= now]
        for key in dead:
            del self._data[key]

    def __len__(self) -> int:
        return len(self._data)
