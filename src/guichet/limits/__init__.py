"""Rate-limit counters: the engine behind ``rate-limiting``, usage-plan throttles and
``concurrency-limiting``.

This file is the contract between the engine (``guichet.limits.*``) and its users (the
plugins). Everything here is shared by every backend:

* A :class:`Limit` names one counter (``key``, built by the caller and unique for what it
  counts), its ``limit`` and how it counts (``algorithm``):

  - ``"fixed"``: at most ``limit`` hits per window of ``period``. Windows are aligned as
    Kong aligns them (``kong/tools/timestamp``): second, minute, hour and day on UTC
    boundaries, month and year on UTC calendar boundaries; a numeric period (seconds) is
    aligned on multiples of itself since the Unix epoch.
  - ``"sliding"``: the weighted two-window estimate (Kong Enterprise's sliding window):
    ``previous * (1 - elapsed/period) + current``; admitted while below ``limit``.
  - ``"gcra"``: a token bucket of capacity ``limit`` (the burst) refilled at ``rate``
    tokens per second, as the generic cell rate algorithm computes it (one timestamp per
    key, no refill timer).

* :meth:`Counters.hit` checks every limit of one request and increments them all **only
  if all admit** the request, atomically: no other hit on those keys can come between the
  check and the increment, in this worker, in any worker of the node (``local``), or on
  any node sharing the Redis server (``redis``). A refused request is not counted.

* :class:`Decision` answers with one :class:`Outcome` per limit (same order), for the
  headers, and ``retry_after`` (seconds, > 0 when refused).

* A backend that cannot answer (Redis unreachable, timed out) raises
  :class:`CountersUnavailable`; the caller decides (``fault_tolerant``). Backends count
  those failures in ``tally``.

* Concurrency: :meth:`NodeSlots.acquire` (the ``local`` backends only: slots are counted
  per node) takes one of ``limit`` slots for ``key``, waiting
  in a queue of at most ``queue`` requests for at most ``timeout`` seconds; it returns a
  :class:`Lease` (call ``release()`` exactly once when the request ends; extra calls do
  nothing) or None when refused (queue full, or timed out).

Backends (``env.counters`` is a :class:`guichet.limits.backends.CounterBackends`):
``local()`` is the node table shared by every worker (``guichet.limits.node``) or, without
one, :class:`guichet.limits.process.ProcessCounters`; ``redis(RedisSettings)`` is
:class:`guichet.limits.redis.RedisCounters` (rate limits only, ``hit`` returns an
awaitable). The arithmetic is in ``guichet.limits.algorithms`` (``check(limit)`` validates
a Limit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Protocol, Sequence, Union

PERIODS: dict[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "month": 2592000,  # nominal (30 days); month windows follow the calendar
    "year": 31536000,  # nominal (365 days); year windows follow the calendar
}

ALGORITHMS = ("fixed", "sliding", "gcra")


@dataclass(frozen=True, slots=True)
class Limit:
    key: str
    limit: int  # hits per window (fixed, sliding); bucket capacity, the burst (gcra)
    period: Union[str, float] = "minute"  # a PERIODS name or seconds (fixed, sliding)
    algorithm: str = "fixed"
    rate: float = 0.0  # gcra: tokens per second


@dataclass(frozen=True, slots=True)
class Outcome:
    limit: int
    remaining: int  # after this hit (never negative)
    reset: float  # seconds until the window ends (fixed), the estimate frees a hit
    #               (sliding), or the bucket is full again (gcra)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    outcomes: tuple[Outcome, ...]
    retry_after: float = 0.0  # seconds; > 0 when refused


class CountersUnavailable(Exception):
    """The backend could not answer (the message says why, without secrets)."""


class Lease(Protocol):
    def release(self) -> None: ...


class Counters(Protocol):
    """A backend. ``hit`` may answer synchronously (a ``Decision``) or with an awaitable
    (a network backend); callers handle both, so the in-node path stays synchronous."""

    tally: dict[str, int]

    def hit(self, limits: Sequence[Limit], cost: int = 1) -> Union[Decision, Awaitable[Decision]]: ...


class NodeSlots(Counters, Protocol):
    """A ``local`` backend (``CounterBackends.local()``): counters and concurrency slots."""

    def acquire(self, key: str, limit: int, queue: int, timeout: float) -> Union[
            Lease, None, Awaitable[Union[Lease, None]]]: ...
