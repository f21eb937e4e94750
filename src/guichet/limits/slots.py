"""Concurrency slots with a bounded wait queue, over any atomic slot book.

A *book* (:class:`SlotBook`) keeps, per key, how many slots are taken (``active``) and how
many requests wait (``queued``), and changes them atomically; the process-local book is a
dict, the node book lives in the shared-memory table (``guichet.limits.node``).

:meth:`Slots.acquire`:

* a free slot: taken at once, the :class:`SlotLease` is returned synchronously;
* none free and the queue (node-wide for the node book) has room and ``timeout > 0``: the
  request joins the queue and an awaitable is returned; it resolves to a lease as soon as
  it takes a slot, or to None after ``timeout`` seconds (it then leaves the queue);
* otherwise None at once.

A waiter is woken at once by a release in its own process (first come, first served among
this process's waiters) and re-checks every ``poll`` seconds for releases elsewhere. A
free slot goes to whoever asks first (a new request does not queue behind waiters), so
order across processes is not strictly FIFO. A waiter that is cancelled (its client went
away) leaves the queue. ``release()`` is idempotent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Awaitable, Optional, Protocol, Union

TAKEN, QUEUED, FULL = 0, 1, 2
POLL_INTERVAL = 0.005


class SlotBook(Protocol):
    def take(self, key: str, limit: int, queue: int) -> int:
        """TAKEN (a slot), QUEUED (joined the queue) or FULL (neither), atomically."""

    def take_queued(self, key: str, limit: int) -> bool:
        """A queued request takes a free slot (and leaves the queue) if there is one."""

    def leave_queue(self, key: str) -> None: ...

    def release(self, key: str) -> None: ...


class SlotLease:
    __slots__ = ("_slots", "key", "_done")

    def __init__(self, slots: "Slots", key: str) -> None:
        self._slots = slots
        self.key = key
        self._done = False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._slots._release(self.key)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<SlotLease {self.key!r}{' released' if self._done else ''}>"


class Slots:
    def __init__(self, book: SlotBook, tally: dict[str, int], poll: float = POLL_INTERVAL) -> None:
        self.book = book
        self.tally = tally
        self.poll = poll
        self._waiters: dict[str, deque[asyncio.Future[Any]]] = {}

    def acquire(self, key: str, limit: int, queue: int, timeout: float) -> Union[
            SlotLease, None, Awaitable[Optional[SlotLease]]]:
        result = self.book.take(key, limit, queue if timeout > 0 else 0)
        if result == TAKEN:
            return SlotLease(self, key)
        if result == FULL:
            self.tally["slots_refused"] = self.tally.get("slots_refused", 0) + 1
            return None
        return self._wait(key, limit, timeout)

    async def _wait(self, key: str, limit: int, timeout: float) -> Optional[SlotLease]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queued = True
        try:
            while True:
                fut = loop.create_future()
                waiters = self._waiters.setdefault(key, deque())
                waiters.append(fut)
                delay = min(self.poll, max(0.0, deadline - loop.time()))
                timer = loop.call_later(delay, _wake, fut)
                try:
                    await fut
                finally:
                    timer.cancel()
                    if not fut.done():
                        fut.cancel()
                    self._forget(key, fut)
                if self.book.take_queued(key, limit):
                    queued = False
                    return SlotLease(self, key)
                if loop.time() >= deadline:
                    self.tally["slots_timed_out"] = self.tally.get("slots_timed_out", 0) + 1
                    return None
        finally:
            if queued:
                self.book.leave_queue(key)

    def _forget(self, key: str, fut: asyncio.Future[Any]) -> None:
        waiters = self._waiters.get(key)
        if waiters is None:
            return
        try:
            waiters.remove(fut)
        except ValueError:
            pass
        if not waiters:
            del self._waiters[key]

    def _release(self, key: str) -> None:
        self.book.release(key)
        waiters = self._waiters.get(key)
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
                    break

    def waiting(self, key: str) -> int:
        """How many of this process's requests wait for ``key``."""
        return len(self._waiters.get(key, ()))


def _wake(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


class LocalSlotBook:
    """The process-local book: a dict, atomic because the event loop is one thread."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}  # key -> [active, queued]

    def take(self, key: str, limit: int, queue: int) -> int:
        entry = self.counts.get(key)
        if entry is None:
            entry = self.counts[key] = [0, 0]
        if entry[0] < limit:
            entry[0] += 1
            return TAKEN
        if entry[1] < queue:
            entry[1] += 1
            return QUEUED
        self._drop_if_idle(key, entry)
        return FULL

    def take_queued(self, key: str, limit: int) -> bool:
        entry = self.counts.get(key)
        if entry is not None and entry[0] < limit:
            entry[0] += 1
            entry[1] -= 1
            return True
        return False

    def leave_queue(self, key: str) -> None:
        entry = self.counts.get(key)
        if entry is not None:
            entry[1] = max(0, entry[1] - 1)
            self._drop_if_idle(key, entry)

    def release(self, key: str) -> None:
        entry = self.counts.get(key)
        if entry is not None:
            entry[0] = max(0, entry[0] - 1)
            self._drop_if_idle(key, entry)

    def _drop_if_idle(self, key: str, entry: list[int]) -> None:
        if entry[0] <= 0 and entry[1] <= 0:
            self.counts.pop(key, None)

    def active(self, key: str) -> int:
        entry = self.counts.get(key)
        return entry[0] if entry else 0

    def queued(self, key: str) -> int:
        entry = self.counts.get(key)
        return entry[1] if entry else 0
