"""Balancer algorithms and address handling: pure tests, no sockets (a fake resolver)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass, field

import pytest

from guichet.balancer import Balancer, Peer, build_balancer, build_balancers
from guichet.balancing.round_robin import MAX_WHEEL, wheel_points
from guichet.config.model import Service, Target, Upstream
from guichet.dns import Address


# ---- helpers -------------------------------------------------------------------------------


class FakeWatch:
    def __init__(self, resolver: FakeResolver, name: str, port: int, callback) -> None:
        self.resolver, self.name, self.port, self.callback = resolver, name, port, callback
        self.cancelled = False

    async def ready(self) -> None:
        return None

    def cancel(self) -> None:
        self.cancelled = True

    def push(self, *records: tuple) -> None:
        """Deliver addresses: (ip,) for A/AAAA, (ip, port, weight, srv_name) for SRV."""
        addresses = []
        for record in records:
            ip, port, weight, name = (*record, None, None, None)[:4]
            addresses.append(Address(ip, port or self.port, weight, math.inf, name))
        self.callback(addresses)


class FakeResolver:
    timeout = 0.1

    def __init__(self) -> None:
        self.watches: list[FakeWatch] = []

    def watch(self, name: str, port: int, callback) -> FakeWatch:
        watch = FakeWatch(self, name, port, callback)
        self.watches.append(watch)
        return watch


@dataclass
class Req:
    """A HashInput."""

    consumer_id: str | None = None
    client_ip: str = "192.0.2.1"
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    captures: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def cookie(self, name: str) -> str | None:
        return self.cookies.get(name)

    def query_arg(self, name: str) -> str | None:
        return self.args.get(name)

    def uri_capture(self, name: str) -> str | None:
        return self.captures.get(name)


def upstream(*targets: tuple[str, int], **fields) -> Upstream:
    """Targets as (host, weight), all on port 8000."""
    made = tuple(
        Target(id=f"t{i}", upstream_id="u", host=host, port=8000, weight=weight)
        for i, (host, weight) in enumerate(targets)
    )
    return Upstream(id="u", name="backend", targets=made, **fields)


def balancer_for(up: Upstream, resolver=None) -> Balancer:
    service = Service(id="s", name="s", host=up.name, port=80)
    return build_balancer(service, {up.name: up}, resolver or FakeResolver())


def picks(balancer: Balancer, count: int, source=None) -> list[str]:
    return [balancer.select(source).peer.ip for _ in range(count)]


def ips(n: int) -> list[tuple[str, int]]:
    return [(f"10.0.0.{i + 1}", 100) for i in range(n)]


# ---- round-robin ---------------------------------------------------------------------------


def test_round_robin_honours_weights_exactly_over_each_cycle():
    b = balancer_for(upstream(("10.0.0.1", 100), ("10.0.0.2", 50), ("10.0.0.3", 25)))
    # gcd 25 -> a wheel of 4 + 2 + 1 = 7 slots; every window of 7 picks is one turn.
    seq = picks(b, 70)
    for start in range(0, 70, 7):
        assert Counter(seq[start : start + 7]) == {"10.0.0.1": 4, "10.0.0.2": 2, "10.0.0.3": 1}


def test_round_robin_equal_weights_alternate_and_spread():
    b = balancer_for(upstream(*ips(3)))
    seq = picks(b, 30)
    assert all(seq[i] != seq[i + 1] for i in range(29))
    assert Counter(seq) == {"10.0.0.1": 10, "10.0.0.2": 10, "10.0.0.3": 10}
    # 3:1: one turn of four picks holds exactly three of one and one of the other
    b = balancer_for(upstream(("10.0.0.1", 300), ("10.0.0.2", 100)))
    turn = picks(b, 4)
    assert Counter(turn) == {"10.0.0.1": 3, "10.0.0.2": 1}


def test_round_robin_weight_zero_never_selected():
    b = balancer_for(upstream(("10.0.0.1", 0), ("10.0.0.2", 10)))
    assert set(picks(b, 20)) == {"10.0.0.2"}
    assert [p.ip for p in b.addresses] == ["10.0.0.2"]


def test_wheel_points_reduce_by_gcd_and_cap_large_wheels():
    assert wheel_points([17, 31]) == [17, 31]
    assert wheel_points([16, 32]) == [1, 2]
    points = wheel_points([65535, 65534, 1])
    assert sum(points) <= MAX_WHEEL + 3
    assert points[2] == 1 and abs(points[0] / points[1] - 1) < 0.01


def test_no_peer_returns_none():
    assert balancer_for(upstream()).select() is None
    assert balancer_for(upstream(("10.0.0.1", 0))).select() is None
    for algorithm in ("least-connections", "consistent-hashing"):
        assert balancer_for(upstream(algorithm=algorithm)).select(Req()) is None


# ---- skipping: tried, mark_refused --------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["round-robin", "least-connections", "consistent-hashing"])
def test_tried_peers_are_skipped_while_others_remain(algorithm):
    b = balancer_for(upstream(*ips(3), algorithm=algorithm, hash_on="ip"))
    req = Req(client_ip="198.51.100.7")
    first = b.select(req).peer
    second = b.select(req, tried={first}).peer
    third = b.select(req, tried={first, second}).peer
    assert len({first, second, third}) == 3
    # every peer tried: retry on one of them rather than fail (Kong retries its only target)
    assert b.select(req, tried={first, second, third}) is not None


@pytest.mark.parametrize("algorithm", ["round-robin", "least-connections", "consistent-hashing"])
def test_refused_peer_is_skipped_until_its_mark_expires(algorithm):
    b = balancer_for(upstream(*ips(2), algorithm=algorithm, hash_on="ip"))
    req = Req(client_ip="203.0.113.9")
    refused = b.select(req).peer
    b.mark_refused(refused, 30)
    assert all(b.select(req).peer is not refused for _ in range(10))
    refused.down_until = 1.0  # the mark expired long ago
    seen = {b.select(req).peer for _ in range(10)}
    assert refused in seen


def test_every_peer_refused_still_selects():
    b = balancer_for(upstream(*ips(2)))
    for peer in b.addresses:
        b.mark_refused(peer, 30)
    assert {b.select().peer for _ in range(4)} == set(b.addresses)


def test_untried_refused_peer_preferred_over_tried_one():
    b = balancer_for(upstream(*ips(2)))
    a, c = b.addresses
    b.mark_refused(c, 30)
    assert b.select(tried={a}).peer is c


# ---- least-connections ----------------------------------------------------------------------


def test_least_connections_ties_take_turns_without_accounting():
    b = balancer_for(upstream(*ips(3), algorithm="least-connections"))
    seq = picks(b, 9)
    assert Counter(seq) == {"10.0.0.1": 3, "10.0.0.2": 3, "10.0.0.3": 3}
    assert len(set(seq[:3])) == 3


def test_least_connections_prefers_fewest_inflight():
    b = balancer_for(upstream(*ips(2), algorithm="least-connections"))
    busy, idle = b.addresses
    for _ in range(3):
        b.acquire(busy)
    chosen = []
    for _ in range(3):
        peer = b.select().peer
        b.acquire(peer)
        chosen.append(peer)
    assert chosen == [idle, idle, idle]  # 0,1,2 in flight on idle against 3 on busy
    for _ in range(3):
        b.release(busy)
    assert b.select().peer is busy
    b.release(busy)  # never below zero
    assert busy.inflight == 0


def test_least_connections_honours_weights():
    b = balancer_for(upstream(("10.0.0.1", 200), ("10.0.0.2", 100), algorithm="least-connections"))
    counts: Counter[str] = Counter()
    for _ in range(300):  # connections held open: the split follows the weights
        peer = b.select().peer
        b.acquire(peer)
        counts[peer.ip] += 1
    assert counts == {"10.0.0.1": 200, "10.0.0.2": 100}
    heavy = b.addresses[0]
    for _ in range(50):
        b.release(heavy)
    assert b.select().peer is heavy


# ---- consistent hashing ----------------------------------------------------------------------


def ch(targets, **fields) -> Balancer:
    return balancer_for(upstream(*targets, algorithm="consistent-hashing", **fields))


def test_same_key_same_peer_and_weights_shape_the_split():
    b = ch([("10.0.0.1", 100), ("10.0.0.2", 100), ("10.0.0.3", 200)], hash_on="ip")
    owners = {}
    for i in range(4000):
        req = Req(client_ip=f"198.51.{i // 250}.{i % 250}")
        owners[req.client_ip] = b.select(req).peer.ip
        assert b.select(req).peer.ip == owners[req.client_ip]
    share = Counter(owners.values())
    assert 0.40 < share["10.0.0.3"] / 4000 < 0.60
    assert 0.17 < share["10.0.0.1"] / 4000 < 0.33


def test_removing_a_target_remaps_only_its_keys():
    keys = [Req(client_ip=f"172.16.{i // 200}.{i % 200}") for i in range(5000)]
    before_b = ch(ips(5), hash_on="ip")
    after_b = ch(ips(5)[:2] + ips(5)[3:], hash_on="ip")  # 10.0.0.3 removed
    before = [before_b.select(k).peer.ip for k in keys]
    after = [after_b.select(k).peer.ip for k in keys]
    moved = [(x, y) for x, y in zip(before, after) if x != y]
    assert all(x == "10.0.0.3" for x, _ in moved)  # nobody else's key moved
    assert 0.10 < len(moved) / len(keys) < 0.30  # about its fifth
    assert len({y for _, y in moved}) == 4  # its keys spread over the survivors


def test_adding_a_target_only_takes_keys_for_itself():
    keys = [Req(client_ip=f"172.17.{i // 200}.{i % 200}") for i in range(3000)]
    before_b, after_b = ch(ips(4), hash_on="ip"), ch(ips(5), hash_on="ip")
    moved = [
        after_b.select(k).peer.ip
        for k in keys
        if before_b.select(k).peer.ip != after_b.select(k).peer.ip
    ]
    assert set(moved) == {"10.0.0.5"}
    assert 0.10 < len(moved) / len(keys) < 0.30


def test_hash_fallback_used_when_primary_value_missing():
    on_header = ch(ips(5), hash_on="header", hash_on_header="X-User", hash_fallback="ip")
    on_ip = ch(ips(5), hash_on="ip")
    for i in range(50):
        req = Req(client_ip=f"192.0.2.{i}")
        assert on_header.select(req).peer.ip == on_ip.select(req).peer.ip
    # with the header present, the header decides, whatever the client address
    users = [Req(client_ip=f"192.0.2.{i}", headers={"x-user": "alice"}) for i in range(20)]
    assert len({on_header.select(r).peer.ip for r in users}) == 1


@pytest.mark.parametrize(
    ("fields", "varying"),
    [
        ({"hash_on": "consumer"}, lambda v: Req(consumer_id=v)),
        ({"hash_on": "path"}, lambda v: Req(path="/" + v)),
        ({"hash_on": "query_arg", "hash_on_query_arg": "u"}, lambda v: Req(args={"u": v})),
        (
            {"hash_on": "uri_capture", "hash_on_uri_capture": "id"},
            lambda v: Req(captures={"id": v}),
        ),
    ],
)
def test_each_hash_source_is_read(fields, varying):
    b = ch(ips(5), **fields)
    assert len({b.select(varying(f"k{i}")).peer.ip for i in range(60)}) > 1
    assert len({b.select(varying("same")).peer.ip for _ in range(10)}) == 1


def test_no_hash_value_sends_everything_to_one_peer_like_kong():
    b = ch(ips(5), hash_on="header", hash_on_header="x-k")
    assert len({b.select(Req(client_ip=f"192.0.2.{i}")).peer.ip for i in range(40)}) == 1
    assert b.select(None).peer is b.select(Req()).peer


def test_cookie_hashing_generates_a_cookie_then_sticks_to_it():
    b = ch(ips(5), hash_on="cookie", hash_on_cookie="sticky", hash_on_cookie_path="/app")
    first = b.select(Req())
    assert first.set_cookie is not None
    name, value, path = first.set_cookie
    assert (name, path) == ("sticky", "/app") and len(value) == 36
    for _ in range(10):
        again = b.select(Req(client_ip="203.0.113.50", cookies={"sticky": value}))
        assert again.peer is first.peer and again.set_cookie is None
    assert b.select(Req()).set_cookie[1] != value  # a fresh one for each new client


# ---- addresses from DNS ----------------------------------------------------------------------


def test_named_target_expands_every_address_with_the_target_weight():
    async def run():
        resolver = FakeResolver()
        b = balancer_for(upstream(("svc.test", 30), ("10.9.9.9", 60)), resolver)
        assert [p.ip for p in b.addresses] == ["10.9.9.9"]
        await b.start()
        (watch,) = resolver.watches
        assert (watch.name, watch.port) == ("svc.test", 8000)
        watch.push(("10.0.0.1",), ("10.0.0.2",))
        peers = {p.ip: p for p in b.addresses}
        assert {ip: p.weight for ip, p in peers.items()} == {
            "10.0.0.1": 30, "10.0.0.2": 30, "10.9.9.9": 60
        }
        assert peers["10.0.0.1"].hostname == "svc.test" and peers["10.0.0.1"].port == 8000
        assert peers["10.9.9.9"].hostname == "10.9.9.9"
        # a turn of the wheel: 30:30:60 -> 1:1:2
        assert Counter(picks(b, 4)) == {"10.0.0.1": 1, "10.0.0.2": 1, "10.9.9.9": 2}

        # refresh: a kept address keeps its Peer and in-flight count; a gone one leaves
        kept = peers["10.0.0.2"]
        b.acquire(kept)
        watch.push(("10.0.0.2",), ("10.0.0.3",))
        assert kept in b.addresses and kept.inflight == 1
        assert {p.ip for p in b.addresses} == {"10.0.0.2", "10.0.0.3", "10.9.9.9"}

        watch.push()  # the name stopped resolving: its addresses go, the IP target stays
        assert {b.select().peer.ip for _ in range(5)} == {"10.9.9.9"}
        await b.close()
        assert watch.cancelled

    asyncio.run(run())


def test_srv_records_give_port_and_weight_and_optional_srv_host_header():
    async def run():
        resolver = FakeResolver()
        b = balancer_for(upstream(("_http._tcp.svc.test", 100), use_srv_name=True), resolver)
        await b.start()
        resolver.watches[0].push(
            ("10.0.0.1", 9001, 3, "a.svc.test"), ("10.0.0.2", 9002, 1, "b.svc.test")
        )
        assert sorted((p.ip, p.port, p.weight, p.hostname) for p in b.addresses) == [
            ("10.0.0.1", 9001, 3, "a.svc.test"),
            ("10.0.0.2", 9002, 1, "b.svc.test"),
        ]
        assert Counter(picks(b, 8)) == {"10.0.0.1": 6, "10.0.0.2": 2}
        await b.close()

    asyncio.run(run())


def test_host_header_of_upstream_names_every_peer():
    b = balancer_for(upstream(*ips(2), host_header="api.internal"))
    assert {p.hostname for p in b.addresses} == {"api.internal"}


def test_plain_service_gets_an_implicit_round_robin_balancer():
    async def run():
        resolver = FakeResolver()
        service = Service(id="s", name="s", host="web.test", port=8443)
        b = build_balancer(service, {}, resolver)
        assert b.select() is None  # nothing resolved yet: the proxy answers 503
        await b.start()
        resolver.watches[0].push(("10.1.0.1",), ("10.1.0.2",))
        seq = picks(b, 4)
        assert Counter(seq) == {"10.1.0.1": 2, "10.1.0.2": 2}
        assert {(p.port, p.hostname, p.target) for p in b.addresses} == {(8443, "web.test", None)}
        await b.close()
        ip_service = Service(id="s2", name=None, host="::1", port=81)
        only = build_balancer(ip_service, {}, resolver).select().peer
        assert (only.ip, only.port, only.address) == ("::1", 81, "[::1]:81")

    asyncio.run(run())


def test_services_naming_one_upstream_share_its_balancer():
    up = upstream(*ips(2))
    services = [Service(id=f"s{i}", name=None, host="backend") for i in range(2)]
    services.append(Service(id="s3", name=None, host="10.0.0.9"))
    balancers = build_balancers(services, {"backend": up}, FakeResolver())
    assert balancers["s0"] is balancers["s1"] is not balancers["s3"]


def test_unknown_algorithm_is_an_error():
    with pytest.raises(ValueError, match="algorithm"):
        balancer_for(upstream(*ips(1), algorithm="latency"))


def test_peers_compare_by_identity():
    a = Peer("10.0.0.1", 80, "h", None, 1)
    b = Peer("10.0.0.1", 80, "h", None, 1)
    assert a != b and len({a, b}) == 2
