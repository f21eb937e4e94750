"""The pure arithmetic of rate limits (guichet.limits.algorithms), with an injected clock."""

from __future__ import annotations

import calendar

import pytest

from guichet.limits import Limit
from guichet.limits.algorithms import State, check, evaluate, previous_window_start, window
from guichet.limits.process import ProcessCounters


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)[:6] + (0, 0, 0)))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counters(now: float) -> tuple[ProcessCounters, Clock]:
    clock = Clock(now)
    return ProcessCounters(clock=clock), clock


# -- windows ---------------------------------------------------------------------------
@pytest.mark.parametrize("period,now,start,end", [
    ("second", utc(2024, 5, 17, 10, 11, 12) + 0.75, utc(2024, 5, 17, 10, 11, 12), utc(2024, 5, 17, 10, 11, 13)),
    ("minute", utc(2024, 5, 17, 10, 11, 12), utc(2024, 5, 17, 10, 11, 0), utc(2024, 5, 17, 10, 12, 0)),
    ("hour", utc(2024, 5, 17, 10, 59, 59), utc(2024, 5, 17, 10, 0, 0), utc(2024, 5, 17, 11, 0, 0)),
    ("day", utc(2024, 5, 17, 23, 59, 59), utc(2024, 5, 17), utc(2024, 5, 18)),
    ("month", utc(2024, 2, 29, 23, 59, 59), utc(2024, 2, 1), utc(2024, 3, 1)),  # leap year
    ("month", utc(2023, 2, 15), utc(2023, 2, 1), utc(2023, 3, 1)),
    ("month", utc(2023, 12, 31, 12), utc(2023, 12, 1), utc(2024, 1, 1)),
    ("month", utc(2024, 1, 1), utc(2024, 1, 1), utc(2024, 2, 1)),  # first instant
    ("year", utc(2024, 12, 31, 23, 59, 59), utc(2024, 1, 1), utc(2025, 1, 1)),
    ("year", utc(2025, 1, 1), utc(2025, 1, 1), utc(2026, 1, 1)),
    (7, 700.0, 700.0, 707.0),  # numeric: multiples of itself since the epoch
    (7, 706.99, 700.0, 707.0),
    (0.5, 10.26, 10.0, 10.5),
])
def test_windows_are_kongs(period, now, start, end) -> None:
    assert window(period, now) == (start, end)


def test_previous_window_follows_the_calendar() -> None:
    assert previous_window_start("month", utc(2024, 3, 1)) == utc(2024, 2, 1)
    assert previous_window_start("month", utc(2024, 1, 1)) == utc(2023, 12, 1)
    assert previous_window_start("year", utc(2024, 1, 1)) == utc(2023, 1, 1)
    assert previous_window_start("minute", 120.0) == 60.0


@pytest.mark.parametrize("limit,message", [
    (Limit("k", 1, algorithm="leaky"), "unknown algorithm"),
    (Limit("k", 1, period="fortnight"), "unknown period"),
    (Limit("k", 1, period=0), "period must be > 0"),
    (Limit("k", -1), "limit must be >= 0"),
    (Limit("k", 5, algorithm="gcra"), "rate > 0"),
])
def test_check_rejects_what_cannot_be_counted(limit, message) -> None:
    with pytest.raises(ValueError, match=message):
        check(limit)


# -- fixed -----------------------------------------------------------------------------
def test_fixed_admits_limit_then_refuses_until_the_window_ends() -> None:
    start = utc(2024, 5, 17, 10, 11)
    c, clock = counters(start + 15)
    lim = [Limit("k", 3, "minute")]
    remaining = [c.hit(lim).outcomes[0].remaining for _ in range(3)]
    assert remaining == [2, 1, 0]
    refused = c.hit(lim)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(45.0)
    assert refused.outcomes[0].reset == pytest.approx(45.0)
    assert refused.outcomes[0].remaining == 0
    clock.now = start + 60  # the next minute
    again = c.hit(lim)
    assert again.allowed and again.outcomes[0].remaining == 2


def test_month_window_rolls_over_on_the_calendar() -> None:
    c, clock = counters(utc(2023, 12, 31, 23, 59, 59))
    lim = [Limit("k", 1, "month")]
    assert c.hit(lim).allowed
    refused = c.hit(lim)
    assert not refused.allowed and refused.retry_after == pytest.approx(1.0)
    clock.now = utc(2024, 1, 1)
    assert c.hit(lim).allowed


def test_cost_counts_several_hits() -> None:
    c, _ = counters(1000.0)
    lim = [Limit("k", 10, 100)]
    assert c.hit(lim, cost=7).outcomes[0].remaining == 3
    refused = c.hit(lim, cost=4)
    assert not refused.allowed
    assert refused.outcomes[0].remaining == 3  # not counted
    assert c.hit(lim, cost=3).allowed


# -- all or nothing --------------------------------------------------------------------
def test_a_refused_request_is_counted_by_no_limit() -> None:
    c, _ = counters(utc(2024, 5, 17, 10, 11, 5))
    second = Limit("s", 2, "second")
    minute = Limit("m", 100, "minute")
    assert c.hit([second, minute]).allowed
    assert c.hit([second, minute]).allowed
    for _ in range(5):
        refused = c.hit([second, minute])
        assert not refused.allowed
    # the minute limit only counted the two admitted requests
    assert refused.outcomes[1].remaining == 98
    assert c.hit([minute]).outcomes[0].remaining == 97


def test_retry_after_is_the_longest_wait_of_the_refusing_limits() -> None:
    start = utc(2024, 5, 17, 10, 11)
    c, _ = counters(start + 30.25)
    lims = [Limit("s", 1, "second"), Limit("m", 1, "minute")]
    assert c.hit(lims).allowed
    refused = c.hit(lims)
    assert refused.retry_after == pytest.approx(29.75)
    assert [o.reset for o in refused.outcomes] == [pytest.approx(0.75), pytest.approx(29.75)]


# -- sliding ---------------------------------------------------------------------------
def test_sliding_weights_the_previous_window() -> None:
    start = utc(2024, 5, 17, 10, 11)
    c, clock = counters(start + 30)
    lim = [Limit("k", 10, "minute", "sliding")]
    for _ in range(10):
        assert c.hit(lim).allowed
    assert not c.hit(lim).allowed
    # 15 s into the next minute the previous 10 weigh 10 * 0.75 = 7.5: two more fit
    clock.now = start + 75
    first = c.hit(lim)
    assert first.allowed and first.outcomes[0].remaining == 1  # 8.5 used
    assert c.hit(lim).allowed  # 9.5
    refused = c.hit(lim)
    assert not refused.allowed
    # 10.5 estimated: fits again when 10 * (1 - e/60) + 2 <= 9, i.e. e = 18 s
    assert refused.retry_after == pytest.approx(3.0)
    clock.now = start + 78
    assert c.hit(lim).allowed


def test_sliding_forgets_windows_older_than_the_previous_one() -> None:
    start = utc(2024, 5, 17, 10, 11)
    c, clock = counters(start + 1)
    lim = [Limit("k", 2, "minute", "sliding")]
    assert c.hit(lim).allowed and c.hit(lim).allowed
    clock.now = start + 121  # two windows later: nothing weighs
    assert c.hit(lim).outcomes[0].remaining == 1


def test_sliding_refused_when_current_window_is_full_waits_into_the_next() -> None:
    start = 6000.0
    c, clock = counters(start + 50)
    lim = [Limit("k", 4, 100, "sliding")]
    for _ in range(4):
        assert c.hit(lim).allowed
    refused = c.hit(lim)
    # the 4 become the previous window's; 4 * (1 - e/100) <= 3 at e = 25 s into it
    assert refused.retry_after == pytest.approx(50 + 25)
    clock.now = start + 100 + 25
    assert c.hit(lim).allowed


# -- gcra ------------------------------------------------------------------------------
def test_gcra_allows_the_burst_then_the_rate() -> None:
    c, clock = counters(5000.0)
    lim = [Limit("k", 3, algorithm="gcra", rate=2.0)]  # burst 3, 2 tokens/s
    outcomes = [c.hit(lim) for _ in range(3)]
    assert all(d.allowed for d in outcomes)
    assert [d.outcomes[0].remaining for d in outcomes] == [2, 1, 0]
    assert outcomes[-1].outcomes[0].reset == pytest.approx(1.5)  # full again after 3 / 2 s
    refused = c.hit(lim)
    assert not refused.allowed and refused.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    assert c.hit(lim).allowed
    assert not c.hit(lim).allowed
    clock.now += 10  # the bucket refills to its burst, not beyond
    results = [c.hit(lim).allowed for _ in range(5)]
    assert results == [True, True, True, False, False]


def test_gcra_cost_larger_than_the_burst_never_fits() -> None:
    c, _ = counters(5000.0)
    decision = c.hit([Limit("k", 2, algorithm="gcra", rate=1.0)], cost=3)
    assert not decision.allowed and decision.retry_after > 0


def test_evaluate_returns_no_state_when_refused() -> None:
    lim = [Limit("a", 0, "minute")]
    decision, new = evaluate(lim, [None], 100.0)
    assert not decision.allowed and new is None
    assert decision.retry_after > 0
    decision, new = evaluate([Limit("a", 1, "minute")], [None], 100.0)
    assert decision.allowed and new is not None and new[0][0].count == 1


def test_the_fixed_window_shortcut_agrees_with_the_general_path_on_random_states():
    """``evaluate`` takes a shorter path when every limit is a fixed window; it must give
    exactly what the general path gives: same decision, outcomes, retry_after and states."""
    import random

    from guichet.limits.algorithms import evaluate_general

    rng = random.Random(4)
    periods = ["second", "minute", "hour", "day", "month", "year", 7, 30.0]
    for _ in range(5000):
        now = rng.uniform(1.7e9, 1.9e9)
        limits, states = [], []
        for i in range(rng.randint(1, 4)):
            period = rng.choice(periods)
            limits.append(Limit(f"k{i}", rng.randint(0, 6), period))
            start = window(period, now)[0]
            states.append(rng.choice([
                None,
                State(start, float(rng.randint(0, 7))),  # this window
                State(start - 86400 * 400, 3.0),  # a window long gone
            ]))
        cost = rng.randint(1, 3)
        assert evaluate(limits, states, now, cost) == evaluate_general(limits, states, now, cost)
