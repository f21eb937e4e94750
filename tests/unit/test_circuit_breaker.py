"""The circuit breaker and the retry backoff, pure: the clock is a number passed in."""

from __future__ import annotations

import pytest

from guichet.health.backoff import RetryBackoff
from guichet.health.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerConfig,
    CircuitBreaker,
)


def breaker(**fields) -> CircuitBreaker:
    return CircuitBreaker(BreakerConfig(**fields))


def test_consecutive_failures_open_the_circuit_and_a_success_resets_the_count():
    b = breaker(failures=3, open_timeout=10)
    assert b.available and b.deadline() is None
    assert b.record(True, 0) is None
    assert b.record(True, 1) is None
    assert b.record(False, 2) is None  # in a row only
    assert b.record(True, 3) is None and b.record(True, 4) is None
    assert b.record(True, 5) == (CLOSED, OPEN)
    assert not b.available and b.last_reason == "3 failures in a row"
    assert b.deadline() == 15 and b.retry_after(12) == 3


def test_an_open_circuit_ignores_outcomes_and_half_opens_after_the_timeout():
    b = breaker(failures=1, open_timeout=10)
    b.record(True, 0)
    assert b.record(False, 1) is None and b.state == OPEN  # late answers change nothing
    assert b.tick(9.99) is None and not b.available
    assert b.tick(10) == (OPEN, HALF_OPEN)
    assert b.available


def test_half_open_lets_a_bounded_number_of_trials_through():
    b = breaker(failures=1, open_timeout=10, half_open_requests=2)
    b.record(True, 0)
    b.tick(10)
    assert b.record(False, 10) is None and b.state == HALF_OPEN  # not a trial's outcome
    assert b.picked(10) is False and b.available
    assert b.picked(10.5) is True and not b.available  # two trials out: no more
    assert b.record(False, 11) is None and b.state == HALF_OPEN
    assert b.record(False, 11.5) == (HALF_OPEN, CLOSED)
    assert b.available and b.consecutive == 0


def test_a_failed_trial_reopens_for_a_full_open_timeout():
    b = breaker(failures=1, open_timeout=10)
    b.record(True, 0)
    b.tick(10)
    b.picked(12)
    assert b.record(True, 13) == (HALF_OPEN, OPEN)
    assert b.open_until == 23 and b.last_reason == "a trial request failed"
    assert b.tick(22) is None and b.tick(23) == (OPEN, HALF_OPEN)


def test_a_trial_that_never_answers_is_given_up_after_the_open_timeout():
    b = breaker(failures=1, open_timeout=5)
    b.record(True, 0)
    b.tick(5)
    b.picked(6)
    assert not b.available and b.deadline() == 11
    b.tick(10)
    assert not b.available
    b.tick(11)
    assert b.available and b.state == HALF_OPEN


def test_failure_ratio_needs_min_requests_in_the_window():
    b = breaker(failure_ratio=0.5, window=10, min_requests=4, open_timeout=1)
    assert b.record(True, 0) is None
    assert b.record(True, 1) is None  # 2 of 2 failed, but fewer than 4 outcomes
    assert b.record(False, 2) is None
    assert b.record(True, 3) == (CLOSED, OPEN)  # 3 of 4
    assert b.last_reason == "3 failures in 4 requests"


def test_the_ratio_window_slides_and_forgets_old_outcomes():
    b = breaker(failure_ratio=0.5, window=10, min_requests=3, open_timeout=1)
    b.record(True, 0)
    b.record(True, 1)
    assert b.ratio(1) == (2, 2)
    for t in (12, 13, 14):
        assert b.record(False, t) is None
    assert b.ratio(14) == (0, 3)  # the failures of t=0..1 slid out of the window
    assert b.record(True, 15) is None  # 1 of 4
    assert b.record(True, 16) is None  # 2 of 5: under half
    assert b.record(True, 17) == (CLOSED, OPEN)  # 3 of 6


def test_force_closed_and_configuration_defaults():
    b = breaker(failures=1)
    b.record(True, 0)
    assert b.force_closed() == (OPEN, CLOSED) and b.available
    assert b.force_closed() is None
    config = BreakerConfig.from_dict({"failures": 0, "failure_ratio": 0})
    assert not config.enabled
    config = BreakerConfig.from_dict({"failures": 5, "http_statuses": [500]})
    assert config.enabled and config.http_statuses == frozenset({500})
    assert config.open_timeout == 30 and config.half_open_requests == 1
    assert BreakerConfig.from_dict(None).http_statuses == frozenset({502, 503, 504})


# ---- retry backoff ---------------------------------------------------------------------------


def test_backoff_doubles_up_to_max_with_full_jitter():
    fixed = RetryBackoff(base=0.1, max=0.5, jitter=False)
    assert [fixed.delay(n) for n in (1, 2, 3, 4, 10)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    jittered = RetryBackoff(base=0.1, max=0.5, jitter=True)
    assert jittered.delay(3, rand=lambda: 0.5) == pytest.approx(0.2)
    assert jittered.delay(3, rand=lambda: 0.0) == 0.0
    assert all(0 <= jittered.delay(2) <= 0.2 for _ in range(100))


def test_backoff_base_zero_means_retry_at_once():
    assert RetryBackoff(base=0).delay(5) == 0.0
    assert RetryBackoff.from_dict(None) is None
    assert RetryBackoff.from_dict({"base": 0, "max": 1, "jitter": True}) is None
    made = RetryBackoff.from_dict({"base": 0.05, "max": 2, "jitter": False})
    assert made == RetryBackoff(0.05, 2.0, False)
