"""A circuit breaker for one target in one worker, sans I/O (the clock is passed in).

States::

    CLOSED ──(failures in a row ≥ failures, or failure ratio over the window ≥
              failure_ratio with at least min_requests)──► OPEN
    OPEN ──(open_timeout elapsed)──► HALF_OPEN
    HALF_OPEN ──(half_open_requests trials all succeeded)──► CLOSED
    HALF_OPEN ──(a trial failed)──► OPEN (for open_timeout again)

Rules:

- *Closed*: every request passes; each outcome is counted. ``failures`` (0 = off) counts
  failures in a row, any success resets it. ``failure_ratio`` (0 = off) is the share of
  failures among the outcomes of the last ``window`` seconds, judged only once
  ``min_requests`` outcomes are in the window; the window slides in ten steps.
- *Open*: the target gets no request (the balancer leaves it out, like an unhealthy
  target) until ``open_timeout`` seconds have passed; outcomes of requests still in flight
  from before are ignored.
- *Half-open*: at most ``half_open_requests`` trial requests are let through (``picked``
  counts them); once that many are out, the target is left out again until their
  outcomes are in. One failed trial reopens the circuit; when every trial succeeded it
  closes and its counts start afresh. A trial whose outcome never comes (the client went
  away) is given up after ``open_timeout``, and new trials are allowed.
- What is a failure is the caller's decision (the proxy: a connect error, a timeout, a
  reset before any response, an invalid response, or a status in ``http_statuses``).

Every method that may change the state returns the ``(old, new)`` pair when it did, so
the caller can log and rebuild its picker; ``deadline()`` says when ``tick`` must be
called next (the caller schedules a timer, nothing here sleeps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
BUCKETS = 10
DEFAULT_FAILURE_STATUSES = (502, 503, 504)

Change = tuple[str, str]


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 0
    failure_ratio: float = 0.0
    window: float = 10.0
    min_requests: int = 20
    open_timeout: float = 30.0
    half_open_requests: int = 1
    http_statuses: frozenset[int] = field(default_factory=lambda: frozenset(DEFAULT_FAILURE_STATUSES))

    @property
    def enabled(self) -> bool:
        return self.failures > 0 or self.failure_ratio > 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "BreakerConfig":
        data = data or {}
        statuses = data.get("http_statuses")
        return cls(
            failures=int(data.get("failures") or 0),
            failure_ratio=float(data.get("failure_ratio") or 0),
            window=float(data.get("window") or 10.0),
            min_requests=max(1, int(data.get("min_requests") or 20)),
            open_timeout=float(data.get("open_timeout") or 30.0),
            half_open_requests=max(1, int(data.get("half_open_requests") or 1)),
            http_statuses=frozenset(DEFAULT_FAILURE_STATUSES if statuses is None else statuses),
        )


class CircuitBreaker:
    __slots__ = ("config", "state", "open_until", "consecutive", "trials", "trial_results",
                 "trial_at", "_epochs", "_totals", "_failed", "_width", "last_reason")

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state = CLOSED
        self.open_until = 0.0
        self.consecutive = 0
        self.trials = 0  # trial requests let through in this half-open period
        self.trial_results = 0  # outcomes of those received (all successes so far)
        self.trial_at = 0.0  # when the last trial was let through
        self._width = config.window / BUCKETS
        self._epochs = [-1] * BUCKETS
        self._totals = [0] * BUCKETS
        self._failed = [0] * BUCKETS
        self.last_reason = ""

    # -- questions ---------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """May the balancer pick this target now?"""
        state = self.state
        return state == CLOSED or (state == HALF_OPEN and self.trials < self.config.half_open_requests)

    def deadline(self) -> float | None:
        """When ``tick`` may change something (None: nothing is pending)."""
        if self.state == OPEN:
            return self.open_until
        if self.state == HALF_OPEN and not self.available:
            return self.trial_at + self.config.open_timeout
        return None

    def retry_after(self, now: float) -> float:
        """Seconds until this target may take a request again."""
        deadline = self.deadline()
        return 0.0 if deadline is None else max(0.0, deadline - now)

    def ratio(self, now: float) -> tuple[int, int]:
        """(failures, outcomes) in the window ending now."""
        epoch = self._epoch(now)
        failed = total = 0
        for slot in range(BUCKETS):
            if epoch - BUCKETS < self._epochs[slot] <= epoch:
                failed += self._failed[slot]
                total += self._totals[slot]
        return failed, total

    # -- events ------------------------------------------------------------------------
    def tick(self, now: float) -> Change | None:
        """Time passed: an open circuit half-opens, lost trials are given up."""
        if self.state == OPEN and now >= self.open_until:
            self.state = HALF_OPEN
            self.trials = self.trial_results = 0
            return OPEN, HALF_OPEN
        if (self.state == HALF_OPEN and not self.available
                and now >= self.trial_at + self.config.open_timeout):
            self.trials = self.trial_results
            return None  # available again, same state: the caller checks ``available``
        return None

    def picked(self, now: float) -> bool:
        """A request was sent to the target; True when that made it unavailable."""
        if self.state != HALF_OPEN:
            return False
        self.trials += 1
        self.trial_at = now
        return self.trials >= self.config.half_open_requests

    def record(self, failed: bool, now: float) -> Change | None:
        state = self.state
        config = self.config
        if state == OPEN:
            return None
        if state == HALF_OPEN:
            if self.trial_results >= self.trials:
                return None  # not the outcome of a trial (a request from before)
            if failed:
                self.last_reason = "a trial request failed"
                return self._open(now)
            self.trial_results += 1
            if self.trial_results >= config.half_open_requests:
                self._reset()
                self.state = CLOSED
                return HALF_OPEN, CLOSED
            return None
        if failed:
            self.consecutive += 1
        else:
            self.consecutive = 0
        if config.failure_ratio > 0:
            self._count(failed, now)
        if not failed:
            return None
        if config.failures and self.consecutive >= config.failures:
            self.last_reason = f"{self.consecutive} failures in a row"
            return self._open(now)
        if config.failure_ratio > 0:
            bad, total = self.ratio(now)
            if total >= config.min_requests and bad >= config.failure_ratio * total:
                self.last_reason = f"{bad} failures in {total} requests"
                return self._open(now)
        return None

    def force_closed(self) -> Change | None:
        old = self.state
        self._reset()
        self.state = CLOSED
        return None if old == CLOSED else (old, CLOSED)

    # -- internals ---------------------------------------------------------------------
    def _open(self, now: float) -> Change:
        old = self.state
        self.state = OPEN
        self.open_until = now + self.config.open_timeout
        self.trials = self.trial_results = 0
        return old, OPEN

    def _reset(self) -> None:
        self.consecutive = 0
        self.trials = self.trial_results = 0
        self._epochs = [-1] * BUCKETS
        self._totals = [0] * BUCKETS
        self._failed = [0] * BUCKETS

    def _epoch(self, now: float) -> int:
        return int(now / self._width) if self._width > 0 else 0

    def _count(self, failed: bool, now: float) -> None:
        epoch = self._epoch(now)
        slot = epoch % BUCKETS
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._totals[slot] = 0
            self._failed[slot] = 0
        self._totals[slot] += 1
        if failed:
            self._failed[slot] += 1
