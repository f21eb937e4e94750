"""Quota periods: which window a moment falls in, and when that window ends.

Rules (UTC, whatever the node's time zone):

* ``day``: from 00:00:00 to the next 00:00:00;
* ``week``: ISO weeks, from Monday 00:00:00 to the next Monday 00:00:00;
* ``month``: calendar months, from the 1st at 00:00:00 to the 1st of the next month.

A window is identified by its period and the date it starts (``"day", "2024-05-06"``):
that is what a counter's key holds, so every node and worker sharing a store counts in
the same row as long as their clocks agree (keep them synchronised: a node whose clock is
off counts near a boundary in the neighbouring window). The window's end is when its
counts reset (``resets_at``, ISO 8601 with ``Z``).

:class:`WindowClock` remembers the current window of one period and recomputes it only
once it has ended, so the hot path does one float comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

PERIODS = ("day", "week", "month")


@dataclass(frozen=True, slots=True)
class Window:
    period: str  # day | week | month
    start: datetime  # UTC, aware
    end: datetime  # UTC, aware: when the counts reset

    @property
    def label(self) -> str:
        """The start date, ``YYYY-MM-DD``: with the period, the window's identity."""
        return self.start.date().isoformat()

    @property
    def end_ts(self) -> float:
        return self.end.timestamp()

    @property
    def resets_at(self) -> str:
        """The end as ISO 8601 UTC (``2024-05-07T00:00:00Z``)."""
        return self.end.strftime("%Y-%m-%dT%H:%M:%SZ")

    def seconds_left(self, now: float) -> float:
        return max(0.0, self.end_ts - now)


def window(period: str, now: float) -> Window:
    """The window of ``period`` that the Unix time ``now`` falls in."""
    moment = datetime.fromtimestamp(now, timezone.utc)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return Window(period, day, day + timedelta(days=1))
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return Window(period, start, start + timedelta(days=7))
    if period == "month":
        start = day.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else \
            start.replace(month=start.month + 1)
        return Window(period, start, end)
    raise ValueError(f"unknown quota period {period!r}: expected one of {', '.join(PERIODS)}")


class WindowClock:
    """The current window of one period, recomputed when it has ended."""

    __slots__ = ("period", "current", "_end")

    def __init__(self, period: str) -> None:
        if period not in PERIODS:
            raise ValueError(f"unknown quota period {period!r}")
        self.period = period
        self.current: Window | None = None
        self._end = 0.0

    def at(self, now: float) -> Window:
        if now >= self._end or self.current is None or now < self.current.start.timestamp():
            self.current = window(self.period, now)
            self._end = self.current.end_ts
        return self.current
