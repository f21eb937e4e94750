"""Kong's health counters for one target, and the rules compiled from ``healthchecks``.

Sans I/O: the counters and transitions of ``lua-resty-healthcheck`` (the library Kong's
ring balancer uses), applied to events reported by active probes or by live traffic.

Rules (lua-resty-healthcheck's ``incr_counter``):

- A target has four counters, each 0..255: successes, HTTP failures, TCP failures and
  timeouts. Active probes and passive checks share them; what differs is the limit
  each source compares them with (``active.healthy.successes`` or
  ``passive.healthy.successes``, and so on).
- Its internal health is one of ``healthy``, ``mostly_healthy``, ``mostly_unhealthy``,
  ``unhealthy``. The first two are *up* (the balancer may pick the target), the last
  two are *down*. A new target starts ``healthy``, as in Kong.
- An event whose limit is 0 is ignored entirely: that counter is disabled (so with
  ``successes: 0`` a success does not even clear the failure counters).
- A success on a target that is fully ``healthy``, or a failure on one that is fully
  ``unhealthy``, changes nothing.
- A success increments the success counter and clears the three failure counters; a
  failure increments its own counter and clears the success counter.
- A counter reaching its limit makes the target ``healthy`` (successes) or
  ``unhealthy`` (any failure counter). Short of the limit, a ``healthy`` target that
  has failures becomes ``mostly_healthy`` (still up), an ``unhealthy`` one with
  successes ``mostly_unhealthy`` (still down).
- ``force`` (a state received from the node's health leader, or set by hand) sets the
  state and clears every counter.

Classifying an HTTP status: in the ``healthy.http_statuses`` list, a success; in the
``unhealthy.http_statuses`` list, or 0 (an invalid response), an HTTP failure; any other
status is ignored. Passive checks of ``type: tcp`` do not interpret statuses: any
response is a success (the connection worked).

An upstream *uses health checks* (Kong's ``is_upstream_using_healthcheck``) when an
active interval is not 0 or a passive failure counter is not 0; otherwise nothing is
counted at all and every target is always up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

HEALTHY = "healthy"
MOSTLY_HEALTHY = "mostly_healthy"
MOSTLY_UNHEALTHY = "mostly_unhealthy"
UNHEALTHY = "unhealthy"
STATES = (HEALTHY, MOSTLY_HEALTHY, MOSTLY_UNHEALTHY, UNHEALTHY)
UP = frozenset({HEALTHY, MOSTLY_HEALTHY})

# Event kinds, also the index of their counter.
SUCCESS, HTTP_FAILURE, TCP_FAILURE, TIMEOUT = range(4)
KIND_NAMES = ("success", "http failure", "tcp failure", "timeout")
COUNTER_MAX = 255

ACTIVE, PASSIVE = "active", "passive"


def is_up(state: str) -> bool:
    return state in UP


@dataclass(frozen=True, slots=True)
class Rules:
    """The limits and status lists of one source (``active`` or ``passive``)."""

    successes: int
    http_failures: int
    tcp_failures: int
    timeouts: int
    healthy_statuses: frozenset[int]
    unhealthy_statuses: frozenset[int]
    interpret_statuses: bool = True

    def limit(self, kind: int) -> int:
        if kind == SUCCESS:
            return self.successes
        if kind == HTTP_FAILURE:
            return self.http_failures
        if kind == TCP_FAILURE:
            return self.tcp_failures
        return self.timeouts

    def classify(self, status: int) -> int | None:
        """The event an HTTP status is (None: ignored)."""
        if not self.interpret_statuses:
            return SUCCESS
        if status in self.healthy_statuses:
            return SUCCESS
        if status == 0 or status in self.unhealthy_statuses:
            return HTTP_FAILURE
        return None


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of internal health, with what caused it (for the log)."""

    old: str
    new: str
    kind: int
    count: int
    source: str

    @property
    def flipped(self) -> bool:
        """Up became down or down became up (what the balancer and the log care about)."""
        return is_up(self.old) != is_up(self.new)

    def reason(self) -> str:
        name = KIND_NAMES[self.kind]
        if self.count != 1:
            name = "successes" if self.kind == SUCCESS else name + "s"
        return f"{self.count} {name}, {self.source}"


class TargetHealth:
    """The counters and internal health of one target (one ``ip:port``)."""

    __slots__ = ("state", "counters")

    def __init__(self, state: str = HEALTHY) -> None:
        self.state = state
        self.counters = [0, 0, 0, 0]

    @property
    def up(self) -> bool:
        return self.state in UP

    def report(self, kind: int, limit: int, source: str = PASSIVE) -> Transition | None:
        """Count one event against ``limit``; the transition it caused, if any."""
        if limit <= 0:
            return None
        current = self.state
        if (kind == SUCCESS and current == HEALTHY) or (kind != SUCCESS and current == UNHEALTHY):
            return None
        counters = self.counters
        count = min(counters[kind] + 1, COUNTER_MAX)
        if kind == SUCCESS:
            counters[HTTP_FAILURE] = counters[TCP_FAILURE] = counters[TIMEOUT] = 0
        else:
            counters[SUCCESS] = 0
        counters[kind] = count
        if count >= limit:
            new = HEALTHY if kind == SUCCESS else UNHEALTHY
        elif current == HEALTHY and kind != SUCCESS:
            new = MOSTLY_HEALTHY
        elif current == UNHEALTHY and kind == SUCCESS:
            new = MOSTLY_UNHEALTHY
        else:
            new = current
        if new == current:
            return None
        self.state = new
        return Transition(current, new, kind, count, source)

    def force(self, state: str) -> bool:
        """Set the state and clear the counters; True when the state changed."""
        if state not in STATES:
            raise ValueError(f"unknown health state {state!r}")
        self.counters = [0, 0, 0, 0]
        changed = state != self.state
        self.state = state
        return changed


@dataclass(frozen=True, slots=True)
class HealthChecks:
    """An upstream's ``healthchecks`` object, compiled once."""

    active: Rules
    passive: Rules
    threshold: float
    active_type: str
    timeout: float
    concurrency: int
    http_path: str
    https_sni: str | None
    https_verify_certificate: bool
    headers: tuple[tuple[str, str], ...]
    healthy_interval: float
    unhealthy_interval: float

    @property
    def active_enabled(self) -> bool:
        return self.healthy_interval > 0 or self.unhealthy_interval > 0

    @property
    def enabled(self) -> bool:
        """Kong's ``is_upstream_using_healthcheck``."""
        p = self.passive
        return self.active_enabled or bool(p.tcp_failures or p.timeouts or p.http_failures)

    def rules(self, source: str) -> Rules:
        return self.active if source == ACTIVE else self.passive


def _rules(section: Mapping[str, Any], interpret: bool = True) -> Rules:
    healthy = section.get("healthy") or {}
    unhealthy = section.get("unhealthy") or {}
    return Rules(
        successes=int(healthy.get("successes") or 0),
        http_failures=int(unhealthy.get("http_failures") or 0),
        tcp_failures=int(unhealthy.get("tcp_failures") or 0),
        timeouts=int(unhealthy.get("timeouts") or 0),
        healthy_statuses=frozenset(healthy.get("http_statuses") or ()),
        unhealthy_statuses=frozenset(unhealthy.get("http_statuses") or ()),
        interpret_statuses=interpret,
    )


def compile_healthchecks(config: Mapping[str, Any] | None) -> HealthChecks:
    """Compile the validated, defaulted ``healthchecks`` dict of an upstream."""
    config = config or {}
    active = config.get("active") or {}
    passive = config.get("passive") or {}
    headers = tuple(
        (name, value)
        for name, values in (active.get("headers") or {}).items()
        for value in (values or ())
    )
    return HealthChecks(
        active=_rules(active),
        passive=_rules(passive, interpret=(passive.get("type") or "http") != "tcp"),
        threshold=float(config.get("threshold") or 0),
        active_type=active.get("type") or "http",
        timeout=float(active.get("timeout", 1) or 0),
        concurrency=max(1, int(active.get("concurrency") or 10)),
        http_path=active.get("http_path") or "/",
        https_sni=active.get("https_sni"),
        https_verify_certificate=bool(active.get("https_verify_certificate", True)),
        headers=headers,
        healthy_interval=float((active.get("healthy") or {}).get("interval") or 0),
        unhealthy_interval=float((active.get("unhealthy") or {}).get("interval") or 0),
    )
