"""Health checks without sockets: Kong's counters, the registry, balancers skipping
unhealthy peers, the threshold, reload survival, follower forwarding, the master relay."""

from __future__ import annotations

import copy
import logging
from collections import Counter

import pytest

from guichet.balancer import Balancer, build_balancer
from guichet.config.model import Service, Target, Upstream
from guichet.config.schema import Healthchecks
from guichet.health.registry import HealthRegistry
from guichet.health.relay import HealthRelay
from guichet.health.state import (
    ACTIVE,
    HEALTHY,
    HTTP_FAILURE,
    MOSTLY_HEALTHY,
    MOSTLY_UNHEALTHY,
    SUCCESS,
    TCP_FAILURE,
    TIMEOUT,
    UNHEALTHY,
    TargetHealth,
    compile_healthchecks,
)

# Kong's defaults, as the schema fills them in.
DEFAULTS = Healthchecks().model_dump()


def checks(**changes) -> dict:
    """DEFAULTS with dotted keys changed: checks(**{"passive.unhealthy.tcp_failures": 2})."""
    out = copy.deepcopy(DEFAULTS)
    for dotted, value in changes.items():
        node = out
        *path, last = dotted.split(".")
        for key in path:
            node = node[key]
        node[last] = value
    return out


# ---- Kong's counters ------------------------------------------------------------------------


def test_failures_make_a_target_mostly_healthy_then_unhealthy_at_the_limit():
    t = TargetHealth()
    assert t.state == HEALTHY and t.up
    first = t.report(TCP_FAILURE, 3)
    assert first is not None and first.new == MOSTLY_HEALTHY and not first.flipped
    assert t.up  # mostly healthy is still up
    assert t.report(TCP_FAILURE, 3) is None
    last = t.report(TCP_FAILURE, 3)
    assert last is not None and last.new == UNHEALTHY and last.flipped
    assert last.reason() == "3 tcp failures, passive"
    assert not t.up
    assert t.report(TCP_FAILURE, 3) is None  # a failure on an unhealthy target: nothing


def test_successes_bring_a_target_back_through_mostly_unhealthy():
    t = TargetHealth(UNHEALTHY)
    step = t.report(SUCCESS, 2, ACTIVE)
    assert step is not None and step.new == MOSTLY_UNHEALTHY and not t.up
    back = t.report(SUCCESS, 2, ACTIVE)
    assert back is not None and back.new == HEALTHY and back.flipped and t.up
    assert t.report(SUCCESS, 2) is None  # a success on a healthy target: nothing


def test_a_limit_of_zero_disables_the_counter_entirely():
    t = TargetHealth()
    assert t.report(TIMEOUT, 0) is None and t.counters == [0, 0, 0, 0]
    t.report(HTTP_FAILURE, 3)
    t.report(HTTP_FAILURE, 3)
    # successes: 0 -> a success does not even clear the failures (lua-resty-healthcheck)
    assert t.report(SUCCESS, 0) is None
    assert t.report(HTTP_FAILURE, 3).new == UNHEALTHY


def test_a_success_clears_every_failure_counter_and_a_failure_the_successes():
    t = TargetHealth()
    t.report(TCP_FAILURE, 3)
    t.report(TCP_FAILURE, 3)
    t.report(SUCCESS, 5)
    assert t.counters == [1, 0, 0, 0] and t.state == MOSTLY_HEALTHY
    t.report(TCP_FAILURE, 3)
    t.report(TCP_FAILURE, 3)
    assert t.up  # only two in a row since the success
    assert t.counters[SUCCESS] == 0


def test_each_failure_kind_counts_against_its_own_limit():
    t = TargetHealth()
    for _ in range(2):
        t.report(TCP_FAILURE, 3)
        t.report(TIMEOUT, 3)
        t.report(HTTP_FAILURE, 3)
    assert t.up and t.counters == [0, 2, 2, 2]
    assert t.report(TIMEOUT, 3).new == UNHEALTHY


def test_force_sets_the_state_and_clears_counters():
    t = TargetHealth()
    t.report(TCP_FAILURE, 5)
    assert t.force(UNHEALTHY) and t.counters == [0, 0, 0, 0] and not t.up
    assert not t.force(UNHEALTHY)
    with pytest.raises(ValueError):
        t.force("sideways")


def test_statuses_are_classified_by_the_lists_and_zero_is_a_failure():
    compiled = compile_healthchecks(checks())
    passive = compiled.passive
    assert passive.classify(200) == SUCCESS
    assert passive.classify(503) == HTTP_FAILURE
    assert passive.classify(0) == HTTP_FAILURE  # an invalid response
    assert passive.classify(404) is None  # in neither list: ignored
    assert compiled.active.classify(404) == HTTP_FAILURE
    tcp = compile_healthchecks(checks(**{"passive.type": "tcp"})).passive
    assert tcp.classify(503) == SUCCESS  # passive tcp checks do not read statuses


def test_an_upstream_uses_health_checks_as_kong_decides():
    assert not compile_healthchecks(checks()).enabled
    assert not compile_healthchecks(checks(**{"active.healthy.successes": 3})).enabled
    assert compile_healthchecks(checks(**{"passive.unhealthy.timeouts": 1})).enabled
    active = compile_healthchecks(checks(**{"active.unhealthy.interval": 0.5,
                                            "active.headers": {"X-A": ["1", "2"]}}))
    assert active.enabled and active.active_enabled
    assert active.headers == (("X-A", "1"), ("X-A", "2"))


# ---- registry and balancers -----------------------------------------------------------------


class FakeTimers:
    """call_later stand-in driven by the fake clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.pending: list[list] = []

    def clock(self) -> float:
        return self.now

    def schedule(self, delay, callback):
        entry = [self.now + delay, callback, False]
        self.pending.append(entry)

        class Handle:
            def cancel(self_inner) -> None:
                entry[2] = True

        return Handle()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [e for e in self.pending if e[0] <= self.now and not e[2]]
        self.pending = [e for e in self.pending if e not in due and not e[2]]
        for entry in due:
            entry[1]()


def make_upstream(n: int = 3, *, healthchecks=None, circuit_breaker=None, name="backend",
                  algorithm="round-robin", weights=None) -> Upstream:
    weights = weights or [100] * n
    targets = tuple(Target(id=f"t{i}", upstream_id="u", host=f"10.0.0.{i + 1}", port=8000,
                           weight=weights[i]) for i in range(n))
    return Upstream(id="u", name=name, algorithm=algorithm, targets=targets,
                    healthchecks=healthchecks or checks(),
                    circuit_breaker=circuit_breaker or {})


class FakeResolver:
    timeout = 0.1

    def watch(self, *args):  # only IP targets here
        raise AssertionError("no DNS expected")


def balancer_for(up: Upstream, registry: HealthRegistry) -> Balancer:
    service = Service(id="s", name="s", host=up.name, port=80)
    return build_balancer(service, {up.name: up}, FakeResolver(), registry)


@pytest.fixture
def timers():
    return FakeTimers()


def registry_for(timers: FakeTimers, leader: bool = True, sent: list | None = None):
    return HealthRegistry(leader=leader, send=(sent.append if sent is not None else None),
                          schedule=timers.schedule, clock=timers.clock, probes=False)


def peer(b: Balancer, ip: str):
    return next(p for p in b.addresses if p.ip == ip)


def picked(b: Balancer, count: int) -> Counter:
    return Counter(b.select().peer.ip for _ in range(count))


PASSIVE_TCP2 = checks(**{"passive.unhealthy.tcp_failures": 2})


def test_passive_failures_take_a_target_out_of_round_robin(timers, caplog):
    sent: list = []
    registry = registry_for(timers, sent=sent)
    b = balancer_for(make_upstream(healthchecks=PASSIVE_TCP2), registry)
    registry.adopt([b])
    assert picked(b, 30) == {"10.0.0.1": 10, "10.0.0.2": 10, "10.0.0.3": 10}
    record = peer(b, "10.0.0.2").health
    with caplog.at_level(logging.WARNING, logger="guichet.health"):
        record.connect_failed()
        assert picked(b, 30)["10.0.0.2"] == 10  # one failure: mostly healthy, still in
        record.connect_failed()
    assert "target 10.0.0.2:8000 of upstream backend is now unhealthy (2 tcp failures" in caplog.text
    assert picked(b, 40) == {"10.0.0.1": 20, "10.0.0.3": 20}
    assert sent[-1] == {"op": "health_state", "upstream": "backend", "boot": False,
                        "targets": {"10.0.0.1:8000": HEALTHY, "10.0.0.2:8000": UNHEALTHY,
                                    "10.0.0.3:8000": HEALTHY}}
    # no healthy peer at all: nothing is selected, even a peer already tried
    peer(b, "10.0.0.1").health.lost()
    peer(b, "10.0.0.1").health.lost()
    peer(b, "10.0.0.3").health.timed_out()  # timeouts: limit 0, not counted
    assert picked(b, 5) == {"10.0.0.3": 5}
    peer(b, "10.0.0.3").health.connect_failed()
    peer(b, "10.0.0.3").health.connect_failed()
    assert b.select() is None
    assert b.retry_after() == 1


def test_passive_statuses_count_as_http_failures(timers):
    registry = registry_for(timers)
    hc = checks(**{"passive.unhealthy.http_failures": 3, "passive.healthy.successes": 1})
    b = balancer_for(make_upstream(2, healthchecks=hc), registry)
    registry.adopt([b])
    record = peer(b, "10.0.0.1").health
    record.responded(500)
    record.responded(404)  # ignored: in neither list
    record.responded(503)
    record.responded(200)  # a success resets the failures (successes: 1)
    record.responded(500)
    record.responded(0)  # invalid response
    assert record.health.state == MOSTLY_HEALTHY
    record.responded(429)
    assert record.health.state == UNHEALTHY
    assert set(picked(b, 10)) == {"10.0.0.2"}


@pytest.mark.parametrize("algorithm", ["least-connections", "consistent-hashing"])
def test_other_algorithms_never_pick_an_unhealthy_peer(timers, algorithm):
    registry = registry_for(timers)
    b = balancer_for(make_upstream(3, healthchecks=PASSIVE_TCP2, algorithm=algorithm), registry)
    registry.adopt([b])
    owner = b.select().peer  # consistent hashing: every key-less request hashes alike
    for _ in range(2):
        owner.health.connect_failed()
    chosen = Counter(b.select().peer.ip for _ in range(30))
    assert owner.ip not in chosen and sum(chosen.values()) == 30
    if algorithm == "consistent-hashing":
        assert len(chosen) == 1  # walked to the next point on the ring, consistently
        owner.health.health.force(HEALTHY)
        owner.health.owner.availability_changed()
        assert b.select().peer is owner  # back on its own keys


def test_threshold_is_a_percentage_of_healthy_weight(timers):
    registry = registry_for(timers)
    hc = checks(**{"passive.unhealthy.tcp_failures": 1, "threshold": 50})
    b = balancer_for(make_upstream(3, healthchecks=hc), registry)
    registry.adopt([b])
    peer(b, "10.0.0.1").health.connect_failed()
    assert set(picked(b, 10)) == {"10.0.0.2", "10.0.0.3"}  # 66% healthy > 50
    peer(b, "10.0.0.2").health.connect_failed()
    assert b.select() is None  # 33% healthy: the whole upstream is unhealthy (Kong)


def test_health_survives_a_reload_with_the_same_config_and_drops_removed_targets(timers):
    registry = registry_for(timers)
    b1 = balancer_for(make_upstream(3, healthchecks=PASSIVE_TCP2), registry)
    registry.adopt([b1])
    health = b1.health
    for _ in range(2):
        peer(b1, "10.0.0.3").health.connect_failed()
    # reload: same healthchecks, target 10.0.0.1 removed
    up2 = make_upstream(3, healthchecks=PASSIVE_TCP2)
    up2 = Upstream(id="u", name="backend", targets=up2.targets[1:], healthchecks=PASSIVE_TCP2)
    b2 = balancer_for(up2, registry)
    assert b2.health is health
    registry.adopt([b2])
    assert set(picked(b2, 10)) == {"10.0.0.2"}  # 10.0.0.3 is still unhealthy
    assert set(health.records) == {("10.0.0.2", 8000), ("10.0.0.3", 8000)}
    # a changed healthchecks config starts afresh, and the old checker is stopped
    hc3 = checks(**{"passive.unhealthy.tcp_failures": 3})
    b3 = balancer_for(Upstream(id="u", name="backend", targets=up2.targets, healthchecks=hc3),
                      registry)
    assert b3.health is not health
    registry.adopt([b3])
    assert health.stopped and set(picked(b3, 10)) == {"10.0.0.2", "10.0.0.3"}
    # the upstream goes away: nothing is kept
    registry.adopt([])
    assert registry.upstreams == {} and b3.health.stopped


def test_a_failed_compile_changes_nothing(timers):
    registry = registry_for(timers)
    b1 = balancer_for(make_upstream(2, healthchecks=PASSIVE_TCP2), registry)
    registry.adopt([b1])
    other = checks(**{"passive.unhealthy.tcp_failures": 5})
    balancer_for(make_upstream(2, healthchecks=other), registry)  # compiled, never adopted
    assert registry.upstreams["backend"] is b1.health and not b1.health.stopped


def test_followers_forward_events_and_apply_the_leaders_states(timers):
    sent: list = []
    registry = registry_for(timers, leader=False, sent=sent)
    b = balancer_for(make_upstream(2, healthchecks=PASSIVE_TCP2), registry)
    registry.adopt([b])
    assert sent == []  # followers publish nothing
    record = peer(b, "10.0.0.1").health
    for _ in range(5):
        record.connect_failed()
    record.responded(200)  # a success on a healthy target: nothing to tell
    # at most `limit` (2) events of a kind per target and second reach the leader
    assert sent == [{"op": "health_report", "upstream": "backend", "target": "10.0.0.1:8000",
                     "kind": TCP_FAILURE}] * 2
    assert record.health.up  # counting is the leader's job
    registry.on_message({"op": "health_state", "upstream": "backend",
                         "targets": {"10.0.0.1:8000": UNHEALTHY, "10.0.0.2:8000": HEALTHY}})
    assert set(picked(b, 10)) == {"10.0.0.2"}
    # a balancer built later (a reload) starts from the leader's word
    b2 = balancer_for(make_upstream(2, healthchecks=checks(**{"passive.unhealthy.tcp_failures": 9})),
                      registry)
    assert not peer(b2, "10.0.0.1").health.health.up


def test_the_leader_counts_forwarded_events(timers):
    sent: list = []
    registry = registry_for(timers, sent=sent)
    b = balancer_for(make_upstream(2, healthchecks=PASSIVE_TCP2), registry)
    registry.adopt([b])
    report = {"op": "health_report", "upstream": "backend", "target": "10.0.0.2:8000",
              "kind": TCP_FAILURE}
    registry.on_message(report)
    registry.on_message(report)
    assert set(picked(b, 10)) == {"10.0.0.1"}
    assert sent[-1]["targets"]["10.0.0.2:8000"] == UNHEALTHY


def test_a_restarted_leader_takes_the_masters_states(timers):
    sent: list = []
    registry = registry_for(timers, sent=sent)
    b = balancer_for(make_upstream(2, healthchecks=PASSIVE_TCP2), registry)
    registry.adopt([b])
    assert sent[0]["boot"] is True  # the first publication says so: the master's copy wins
    registry.on_message({"op": "health_sync", "upstreams": {
        "backend": {"10.0.0.1:8000": UNHEALTHY}, "gone": {"1.2.3.4:80": HEALTHY}}})
    assert set(picked(b, 10)) == {"10.0.0.2"}


# ---- circuit breakers in the balancer --------------------------------------------------------


def test_open_circuits_leave_the_rotation_and_half_open_after_the_timeout(timers, caplog):
    registry = registry_for(timers)
    cb = {"failures": 2, "open_timeout": 5, "half_open_requests": 1,
          "http_statuses": [502, 503, 504]}
    b = balancer_for(make_upstream(2, circuit_breaker=cb), registry)
    registry.adopt([b])
    record = peer(b, "10.0.0.1").health
    with caplog.at_level(logging.WARNING, logger="guichet.health"):
        record.responded(503)
        record.responded(200)  # resets the count: failures in a row only
        record.responded(503)
        record.connect_failed()
    assert "circuit of target 10.0.0.1:8000 of upstream backend is now open" in caplog.text
    assert set(picked(b, 10)) == {"10.0.0.2"}
    timers.advance(4.9)
    assert set(picked(b, 10)) == {"10.0.0.2"}
    timers.advance(0.2)  # open_timeout passed: half-open
    assert "10.0.0.1" in picked(b, 2)
    record.picked()  # the one trial goes out: no more until it answers
    assert set(picked(b, 10)) == {"10.0.0.2"}
    record.responded(200)
    assert record.breaker.state == "closed"
    assert picked(b, 10) == {"10.0.0.1": 5, "10.0.0.2": 5}


def test_all_circuits_open_give_retry_after_until_the_first_half_open(timers):
    registry = registry_for(timers)
    b = balancer_for(make_upstream(2, circuit_breaker={"failures": 1, "open_timeout": 30}),
                     registry)
    registry.adopt([b])
    peer(b, "10.0.0.1").health.timed_out()
    timers.advance(10)
    peer(b, "10.0.0.2").health.lost()
    assert b.select() is None
    assert b.retry_after() == 20
    timers.advance(20)
    assert b.select().peer.ip == "10.0.0.1"


def test_stopped_upstreams_cancel_their_circuit_timers(timers):
    registry = registry_for(timers)
    b = balancer_for(make_upstream(1, circuit_breaker={"failures": 1, "open_timeout": 3}),
                     registry)
    registry.adopt([b])
    peer(b, "10.0.0.1").health.lost()
    assert [e for e in timers.pending if not e[2]]
    registry.adopt([])
    assert not [e for e in timers.pending if not e[2]]


def test_upstreams_without_checks_or_breaker_get_no_health(timers):
    registry = registry_for(timers)
    b = balancer_for(make_upstream(2), registry)
    assert b.health is None and all(p.health is None for p in b.addresses)


# ---- the master's relay ---------------------------------------------------------------------


class FakeProcess:
    def is_alive(self) -> bool:
        return True


class FakeConn:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, message) -> None:
        self.sent.append(message)


class FakeHandle:
    def __init__(self, index: int) -> None:
        self.index, self.ready, self.conn, self.process = index, True, FakeConn(), FakeProcess()


def test_the_master_keeps_worker_zeros_states_and_relays_them():
    relay = HealthRelay()
    w0, w1, w2 = workers = [FakeHandle(0), FakeHandle(1), FakeHandle(2)]
    state = {"op": "health_state", "upstream": "u", "boot": False,
             "targets": {"10.0.0.1:80": UNHEALTHY, "10.0.0.2:80": MOSTLY_HEALTHY,
                         "db.internal:5432": "dns_error"}}
    relay.on_message(w0, state, workers)
    assert w0.conn.sent == []
    assert w1.conn.sent == w2.conn.sent == [{"op": "health_state", "upstream": "u",
                                             "targets": state["targets"]}]
    assert relay.status() == {"u": {"10.0.0.1:80": "UNHEALTHY", "10.0.0.2:80": "HEALTHY",
                                    "db.internal:5432": "DNS_ERROR"}}
    # only worker 0 speaks for the node
    relay.on_message(w1, dict(state, targets={"10.0.0.1:80": HEALTHY}), workers)
    assert relay.status()["u"]["10.0.0.1:80"] == "UNHEALTHY"
    # followers' events go to worker 0
    report = {"op": "health_report", "upstream": "u", "target": "10.0.0.2:80", "kind": 2}
    relay.on_message(w2, report, workers)
    assert w0.conn.sent == [report]
    # a restarted worker 0 boots with all healthy: the master's states win and go back
    relay.on_message(w0, dict(state, boot=True, targets={"10.0.0.1:80": HEALTHY,
                                                         "10.0.0.3:80": HEALTHY}), workers)
    assert relay.upstreams["u"] == {"10.0.0.1:80": UNHEALTHY, "10.0.0.3:80": HEALTHY}
    assert w0.conn.sent[-1]["targets"] == relay.upstreams["u"]
    # a ready worker gets everything; a removed upstream is forgotten
    relay.worker_ready(w2)
    assert w2.conn.sent[-1] == {"op": "health_sync", "upstreams": relay.upstreams}
    relay.on_message(w0, {"op": "health_state", "upstream": "u", "targets": None}, workers)
    assert relay.status() == {}
    assert w1.conn.sent[-1] == {"op": "health_state", "upstream": "u", "targets": None}


def test_a_target_name_that_resolves_to_nothing_is_reported_as_dns_error(timers):
    class Watch:
        def __init__(self, callback) -> None:
            self.callback = callback

        async def ready(self) -> None:
            return None

        def cancel(self) -> None:
            pass

    class Resolver:
        timeout = 0.1

        def __init__(self) -> None:
            self.watches: list[Watch] = []

        def watch(self, name, port, callback):
            self.watches.append(Watch(callback))
            return self.watches[-1]

    import asyncio
    import math

    from guichet.dns import Address

    sent: list = []
    registry = registry_for(timers, sent=sent)
    targets = (Target(id="t0", upstream_id="u", host="10.0.0.1", port=8000),
               Target(id="t1", upstream_id="u", host="api.internal", port=9000))
    up = Upstream(id="u", name="backend", targets=targets, healthchecks=PASSIVE_TCP2)
    resolver = Resolver()
    b = build_balancer(Service(id="s", name="s", host="backend", port=80), {"backend": up},
                       resolver, registry)
    asyncio.run(b.start())
    registry.adopt([b])
    assert sent[-1]["targets"] == {"10.0.0.1:8000": HEALTHY, "api.internal:9000": "dns_error"}
    resolver.watches[0].callback([Address("10.0.0.9", 9000, None, math.inf)])
    assert sent[-1]["targets"] == {"10.0.0.1:8000": HEALTHY, "10.0.0.9:9000": HEALTHY}
    assert {p.ip for p in b.addresses} == {"10.0.0.1", "10.0.0.9"}


def test_records_follow_the_serving_balancer_only(timers):
    registry = registry_for(timers)
    up = make_upstream(3, healthchecks=PASSIVE_TCP2)
    first = Upstream(id="u", name="backend", targets=up.targets[:2], healthchecks=PASSIVE_TCP2)
    b1 = balancer_for(first, registry)
    registry.adopt([b1])
    health = b1.health
    second = Upstream(id="u", name="backend", targets=up.targets[1:], healthchecks=PASSIVE_TCP2)
    b2 = balancer_for(second, registry)  # compiled, not serving yet
    assert set(health.records) == {("10.0.0.1", 8000), ("10.0.0.2", 8000)}
    assert peer(b2, "10.0.0.2").health is peer(b1, "10.0.0.2").health  # shared
    registry.adopt([b2])
    assert set(health.records) == {("10.0.0.2", 8000), ("10.0.0.3", 8000)}
    assert peer(b2, "10.0.0.3").health is health.records[("10.0.0.3", 8000)]
    assert not peer(b1, "10.0.0.1").health.alive  # the removed target counts nothing
