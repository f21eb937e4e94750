"""The arithmetic of rate limits, without I/O or clocks: every function takes ``now``.

State of one counter is a :class:`State` ``(start, count, prev, tat)``:

* ``fixed``: ``start`` is the window the ``count`` belongs to. A state from another window
  counts as zero.
* ``sliding``: as ``fixed``, plus ``prev``, the count of the window just before ``start``.
  A state one window old becomes ``prev``; older ones count as zero. The estimate is
  ``prev * (1 - elapsed / length) + count`` (``length`` of the current window).
* ``gcra``: ``tat``, the theoretical arrival time: the instant the bucket is full again.
  A hit costing ``c`` moves it to ``max(tat, now) + c / rate``; it is admitted while that
  is at most ``limit / rate`` ahead of ``now`` (a bucket of ``limit`` tokens).

Windows (:func:`window`) follow Kong's ``kong/tools/timestamp.get_timestamps``: second,
minute, hour and day start at multiples of their length since the Unix epoch (UTC has no
leap seconds in POSIX time, so these are UTC boundaries); month and year start on the
first day of the UTC calendar month or year; a numeric period starts at multiples of
itself since the epoch.

:func:`evaluate` decides one request against several limits: admitted only if every limit
admits it, and then every state advances; otherwise no state changes (a refused request is
not counted). It returns the new states, which the backend stores atomically with the
read. :func:`describe` computes the same outcomes for a verdict reached elsewhere (the
Redis script), from the states the script read.

The numbers of an :class:`~guichet.limits.Outcome` (for the headers):

* ``remaining``: hits left after this one (not counting it when the request is refused),
  never negative; for sliding, ``floor(limit - estimate)``; for gcra, whole tokens left.
* ``reset``: fixed, seconds until the window ends; sliding, seconds until the window ends
  while hits remain, else until the estimate frees one (until this hit fits, when
  refused); gcra, seconds until the bucket is full again.
* ``retry_after`` of the Decision: the longest wait among the limits that refused, until
  a hit of the same cost fits (at least ``MIN_RETRY``); 0 when admitted.
"""

from __future__ import annotations

import calendar
import math
import time
from typing import NamedTuple, Optional, Sequence

from guichet.limits import ALGORITHMS, PERIODS, Decision, Limit, Outcome

EPSILON = 1e-9  # float slack for "fits exactly" (gcra)
MIN_RETRY = 0.001  # a refused request always gets a retry_after > 0


class State(NamedTuple):
    start: float = 0.0
    count: float = 0.0
    prev: float = 0.0
    tat: float = 0.0


EMPTY = State()


# -- windows ---------------------------------------------------------------------------
def _month_start(year: int, month: int) -> float:
    return float(calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)))


def window(period: str | float, now: float) -> tuple[float, float]:
    """``(start, end)`` of the window of ``period`` holding ``now`` (Unix seconds)."""
    if period == "month" or period == "year":
        tm = time.gmtime(now)
        if period == "month":
            start = _month_start(tm.tm_year, tm.tm_mon)
            end = (_month_start(tm.tm_year + 1, 1) if tm.tm_mon == 12
                   else _month_start(tm.tm_year, tm.tm_mon + 1))
        else:
            start, end = _month_start(tm.tm_year, 1), _month_start(tm.tm_year + 1, 1)
        return start, end
    length = period_seconds(period)
    start = math.floor(now / length) * length
    return start, start + length


def previous_window_start(period: str | float, start: float) -> float:
    """Start of the window just before the one starting at ``start``."""
    return window(period, start - 0.5)[0] if period in ("month", "year") \
        else start - period_seconds(period)


def period_seconds(period: str | float) -> float:
    """Nominal length of ``period`` (a PERIODS name or seconds)."""
    if isinstance(period, str):
        try:
            return float(PERIODS[period])
        except KeyError:
            raise ValueError(f"unknown period {period!r} (one of {', '.join(PERIODS)}, "
                             "or seconds)") from None
    return float(period)


def check(limit: Limit) -> None:
    """Raise ValueError when ``limit`` cannot be counted."""
    if limit.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {limit.algorithm!r} (one of {', '.join(ALGORITHMS)})")
    if limit.limit < 0:
        raise ValueError("limit must be >= 0")
    if limit.algorithm == "gcra":
        if not limit.rate > 0:
            raise ValueError("a gcra limit needs rate > 0 (tokens per second)")
    elif not period_seconds(limit.period) > 0:
        raise ValueError("period must be > 0 seconds")


# -- one limit -------------------------------------------------------------------------
class _Verdict(NamedTuple):
    admits: bool
    state: State  # normalised to now (counted = False)
    new: State  # state after counting the hit
    expires: float  # when ``new`` can be forgotten


def _current(limit: Limit, state: Optional[State], now: float) -> tuple[State, float, float]:
    """The state as seen at ``now`` for fixed/sliding, with the window bounds."""
    start, end = window(limit.period, now)
    if state is None:
        return State(start, 0.0, 0.0), start, end
    if state.start == start:
        cur = state
    elif limit.algorithm == "sliding" and state.start == previous_window_start(limit.period, start):
        cur = State(start, 0.0, state.count)
    else:
        cur = State(start, 0.0, 0.0)
    if limit.algorithm == "fixed" and cur.prev:
        cur = cur._replace(prev=0.0)
    return cur, start, end


def _estimate(state: State, now: float, start: float, end: float) -> float:
    if not state.prev:
        return state.count
    return state.prev * (1.0 - (now - start) / (end - start)) + state.count


def judge(limit: Limit, state: Optional[State], now: float, cost: int = 1) -> _Verdict:
    """Would ``limit`` admit a hit of ``cost`` given its stored ``state``?"""
    if limit.algorithm == "gcra":
        tat = state.tat if state is not None else 0.0
        base = tat if tat > now else now
        new_tat = base + cost / limit.rate
        admits = new_tat - now <= limit.limit / limit.rate + EPSILON
        return _Verdict(admits, State(tat=base), State(tat=new_tat), new_tat)
    cur, start, end = _current(limit, state, now)
    if limit.algorithm == "fixed":
        admits = cur.count + cost <= limit.limit
        expires = end
    else:
        admits = _estimate(cur, now, start, end) + cost <= limit.limit + EPSILON
        expires = window(limit.period, end)[1]  # the count is still "prev" in the next one
    return _Verdict(admits, cur, cur._replace(count=cur.count + cost), expires)


def outcome(limit: Limit, state: State, now: float, cost: int, counted: bool) -> tuple[Outcome, float]:
    """``(Outcome, retry_after)`` for ``limit`` whose state at ``now`` is ``state``
    (normalised, before the hit); ``counted`` says whether this hit was counted.
    ``retry_after`` is how long until a hit of ``cost`` would fit (0 when it fits now)."""
    n = limit.limit
    if limit.algorithm == "gcra":
        rate = limit.rate
        base = state.tat if state.tat > now else now
        after = base + cost / rate if counted else base
        remaining = int(math.floor(n - (after - now) * rate + EPSILON))
        retry = 0.0 if counted else max(0.0, base + cost / rate - now - n / rate)
        return Outcome(n, max(0, min(n, remaining)), max(0.0, after - now)), retry
    start, end = window(limit.period, now)
    if limit.algorithm == "fixed":
        used = state.count + (cost if counted else 0)
        retry = 0.0 if used + (0 if counted else cost) <= n else end - now
        return Outcome(n, max(0, int(n - used)), end - now), retry
    # sliding
    used_state = state._replace(count=state.count + cost) if counted else state
    estimate = _estimate(used_state, now, start, end)
    remaining = max(0, int(math.floor(n - estimate + EPSILON)))
    retry = 0.0 if counted else _sliding_wait(limit, used_state, now, start, end, n - cost)
    # reset: when this hit would fit (refused); while hits remain, when the window ends
    # (as for fixed); none left: when the estimate frees one
    if retry > 0:
        reset = retry
    elif remaining > 0:
        reset = end - now
    else:
        reset = _sliding_wait(limit, used_state, now, start, end, n - 1.0)
    return Outcome(n, remaining, reset), retry


def _sliding_wait(limit: Limit, state: State, now: float, start: float, end: float,
                  target: float) -> float:
    """Seconds until the sliding estimate is at most ``target``."""
    length = end - start
    if _estimate(state, now, start, end) <= target + EPSILON:
        return 0.0
    if state.count <= target:  # the previous window's weight decays enough in this one
        at = start + length * (1.0 - (target - state.count) / state.prev)
        return max(0.0, at - now)
    # the current count becomes the previous window's and decays in the next one
    nxt_end = window(limit.period, end)[1]
    if target < 0 or not state.count:
        return nxt_end - now
    at = end + (nxt_end - end) * (1.0 - target / state.count)
    return max(0.0, at - now)


# -- one request, several limits ---------------------------------------------------------
def evaluate(limits: Sequence[Limit], states: Sequence[Optional[State]], now: float,
             cost: int = 1) -> tuple[Decision, Optional[list[tuple[State, float]]]]:
    """Decide a request against all ``limits`` (``states[i]`` stored for ``limits[i]``,
    None when absent). Returns the decision and, when admitted, the ``(state, expires)``
    to store for each limit (None when refused: nothing is counted).

    Fixed windows only (Kong's periods, the common case) take a shorter path with the
    same results (a test compares the two on random states)."""
    for limit in limits:
        if limit.algorithm != "fixed":
            return evaluate_general(limits, states, now, cost)
    return _evaluate_fixed(limits, states, now, cost)


def _evaluate_fixed(limits: Sequence[Limit], states: Sequence[Optional[State]], now: float,
                    cost: int) -> tuple[Decision, Optional[list[tuple[State, float]]]]:
    seen = []
    allowed = True
    for limit, state in zip(limits, states):
        period = limit.period
        if period == "month" or period == "year":
            start, end = window(period, now)
        else:
            length = PERIODS[period] if isinstance(period, str) else float(period)
            start = math.floor(now / length) * length
            end = start + length
        count = state.count if state is not None and state.start == start else 0.0
        if count + cost > limit.limit:
            allowed = False
        seen.append((start, end, count))
    outcomes = []
    retry_after = 0.0
    new: Optional[list[tuple[State, float]]] = [] if allowed else None
    for limit, (start, end, count) in zip(limits, seen):
        n = limit.limit
        if allowed:
            outcomes.append(Outcome(n, max(0, int(n - count - cost)), end - now))
            new.append((State(start, count + cost), end))  # type: ignore[union-attr]
        else:
            outcomes.append(Outcome(n, max(0, int(n - count)), end - now))
            if count + cost > n and end - now > retry_after:
                retry_after = end - now
    if not allowed:
        retry_after = max(retry_after, MIN_RETRY)
    return Decision(allowed, tuple(outcomes), retry_after), new


def evaluate_general(limits: Sequence[Limit], states: Sequence[Optional[State]], now: float,
                     cost: int = 1) -> tuple[Decision, Optional[list[tuple[State, float]]]]:
    """:func:`evaluate` for any mix of algorithms."""
    verdicts = [judge(limit, state, now, cost) for limit, state in zip(limits, states)]
    allowed = all(v.admits for v in verdicts)
    decision = describe(limits, [v.state for v in verdicts], now, cost, allowed)
    if not allowed:
        return decision, None
    return decision, [(v.new, v.expires) for v in verdicts]


def describe(limits: Sequence[Limit], states: Sequence[State], now: float, cost: int,
             allowed: bool) -> Decision:
    """The Decision for a verdict, from the states normalised at ``now`` before the hit."""
    outcomes = []
    retry_after = 0.0
    for limit, state in zip(limits, states):
        out, retry = outcome(limit, state, now, cost, allowed)
        outcomes.append(out)
        if retry > retry_after:
            retry_after = retry
    if not allowed:
        retry_after = max(retry_after, MIN_RETRY)
    return Decision(allowed, tuple(outcomes), retry_after)
