"""Resolver against a real (tiny) DNS server on 127.0.0.1; balancers following DNS changes."""

from __future__ import annotations

import asyncio
import gc
import math
import time
import weakref

import pytest
from support.dnsserver import DNSServer

from guichet.balancer import build_balancer
from guichet.balancing.dns_files import parse_hosts, parse_nameservers, parse_resolv_conf
from guichet.config.model import Service, Target, Upstream
from guichet.dns import Resolver


@pytest.fixture
def server():
    with DNSServer() as srv:
        yield srv


def make_resolver(server: DNSServer, **options) -> Resolver:
    settings = dict(
        nameservers=[server.address],
        hostsfile=None,
        resolv_conf=None,
        min_ttl=0.05,
        timeout=0.1,
        attempts=1,
        error_ttl=0.1,
        not_found_ttl=0.2,
    )
    settings.update(options)
    return Resolver(**settings)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def endpoints(addresses) -> list[tuple]:
    return sorted((a.ip, a.port, a.weight) for a in addresses)


# ---- one-shot resolution ---------------------------------------------------------------------


def test_a_aaaa_and_cname(server):
    server.set("multi.test", "A", ["10.0.0.2", "10.0.0.1"], ttl=30)
    server.set("six.test", "AAAA", ["2001:db8::1"])
    server.set("alias.test", "CNAME", ["multi.test."])

    async def main():
        r = make_resolver(server)
        assert endpoints(await r.resolve("multi.test", 80)) == [
            ("10.0.0.1", 80, None), ("10.0.0.2", 80, None)
        ]
        assert endpoints(await r.resolve("six.test", 81)) == [("2001:db8::1", 81, None)]
        assert endpoints(await r.resolve("alias.test", 82)) == [
            ("10.0.0.1", 82, None), ("10.0.0.2", 82, None)
        ]
        assert await r.resolve("missing.test", 80) == []
        (first,) = [a for a in await r.resolve("multi.test", 80) if a.ip == "10.0.0.1"]
        assert 25 < first.expires - time.monotonic() <= 30  # expiry from the record's TTL
        queried = len(server.queries)
        await r.resolve("multi.test", 80)
        assert len(server.queries) == queried  # served from the cache
        await r.close()

    run(main())


def test_srv_best_priority_ports_and_weights(server):
    server.set(
        "_http._tcp.svc.test",
        "SRV",
        ["10 5 9001 a.test.", "10 0 0 b.test.", "20 50 9003 c.test."],
    )
    server.set("a.test", "A", ["10.0.1.1"])
    server.set("b.test", "AAAA", ["2001:db8::b"])
    server.set("c.test", "A", ["10.0.1.3"])

    async def main():
        r = make_resolver(server)
        found = await r.resolve("_http._tcp.svc.test", 8080)
        # priority 20 ignored; weight 0 counts as 1; port 0 keeps the caller's port
        assert endpoints(found) == [("10.0.1.1", 9001, 5), ("2001:db8::b", 8080, 1)]
        assert {a.name for a in found} == {"a.test", "b.test"}
        await r.close()

    run(main())


def test_srv_additional_section_spares_queries():
    with DNSServer(glue=True) as server:
        server.set("_x._tcp.g.test", "SRV", ["1 1 7000 t.g.test."])
        server.set("t.g.test", "A", ["10.0.2.1"])

        async def main():
            r = make_resolver(server)
            assert endpoints(await r.resolve("_x._tcp.g.test", 1)) == [("10.0.2.1", 7000, 1)]
            assert server.count("t.g.test", "A") == 0
            await r.close()

        run(main())


def test_last_successful_type_is_asked_first(server):
    server.set("plain.test", "A", ["10.0.3.1"], ttl=1)

    async def main():
        r = make_resolver(server)
        await r.resolve("plain.test", 80)
        assert server.count("plain.test", "SRV") == 1
        r._cache.clear()  # force new questions
        await r.resolve("plain.test", 80)
        assert server.count("plain.test", "SRV") == 1  # LAST (A) answered first
        assert server.count("plain.test", "A") == 2
        await r.close()

    run(main())


def test_ip_literals_and_hosts_file_need_no_dns(server, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "# comment\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
        "10.5.0.1 Backend.Local db  # inline\n10.5.0.2 backend.local\nbogus line\n"
    )

    async def main():
        r = make_resolver(server, hostsfile=str(hosts))
        assert endpoints(await r.resolve("backend.local", 80)) == [("10.5.0.1", 80, None)]
        assert endpoints(await r.resolve("DB", 81)) == [("10.5.0.1", 81, None)]
        assert endpoints(await r.resolve("localhost", 80)) == [("127.0.0.1", 80, None)]
        assert endpoints(await r.resolve("ip6-localhost", 80)) == [("::1", 80, None)]
        assert endpoints(await r.resolve("192.0.2.7", 80)) == [("192.0.2.7", 80, None)]
        assert endpoints(await r.resolve("[2001:db8::7]", 80)) == [("2001:db8::7", 80, None)]
        assert (await r.resolve("192.0.2.7", 80))[0].expires == math.inf
        seen = []
        watch = r.watch("backend.local", 90, seen.append)  # answered at once, no task
        assert endpoints(seen[0]) == [("10.5.0.1", 90, None)] and not r._watches
        watch.cancel()
        await r.close()

    run(main())
    assert server.queries == []


# ---- watches: refresh, stale, sharing -------------------------------------------------------


def test_watch_follows_ttl_driven_changes(server):
    server.set("pool.test", "A", ["10.0.4.1", "10.0.4.2"], ttl=1)

    async def main():
        r = make_resolver(server)
        seen: list[list] = []
        watch = r.watch("pool.test", 80, seen.append)
        await watch.ready()
        assert endpoints(seen[-1]) == [("10.0.4.1", 80, None), ("10.0.4.2", 80, None)]
        server.set("pool.test", "A", ["10.0.4.2", "10.0.4.3"], ttl=1)
        started = time.monotonic()
        await until(lambda: len(seen) == 2)
        assert 0.5 < time.monotonic() - started < 1.6  # at the TTL, not before
        assert endpoints(seen[-1]) == [("10.0.4.2", 80, None), ("10.0.4.3", 80, None)]
        watch.cancel()
        await r.close()

    run(main())


def test_min_ttl_bounds_refresh_rate(server):
    server.set("zero.test", "A", ["10.0.5.1"], ttl=0)

    async def main():
        r = make_resolver(server, min_ttl=0.2)
        seen: list = []
        watch = r.watch("zero.test", 80, seen.append)
        await watch.ready()
        await asyncio.sleep(0.5)
        assert 2 <= server.count("zero.test", "A") <= 4  # ~every 0.2 s, not in a loop
        assert len(seen) == 1  # refreshed, unchanged: watchers are not called again
        watch.cancel()
        await r.close()

    run(main())


@pytest.mark.parametrize("failure", ["drop", "servfail"])
def test_stale_addresses_kept_while_server_fails_then_dropped(server, failure):
    server.set("flaky.test", "A", ["10.0.6.1"], ttl=0)

    async def main():
        r = make_resolver(server, min_ttl=0.2, stale_ttl=0.8)
        seen: list[list] = []
        watch = r.watch("flaky.test", 80, seen.append)
        await watch.ready()
        server.mode = failure
        await asyncio.sleep(0.5)  # record expired (0.2 s), refreshes failing
        assert server.count("flaky.test", "A") >= 2
        assert len(seen) == 1  # nothing changed for the watcher
        assert endpoints(await r.resolve("flaky.test", 80)) == [("10.0.6.1", 80, None)]
        await until(lambda: len(seen) == 2, timeout=2.0)  # past stale_ttl: dropped
        assert seen[-1] == []
        server.mode = "answer"
        await until(lambda: len(seen) == 3, timeout=2.0)  # and back when the server is
        assert endpoints(seen[-1]) == [("10.0.6.1", 80, None)]
        watch.cancel()
        await r.close()

    run(main())


def test_name_gone_is_followed_and_unknown_name_keeps_being_retried(server):
    server.set("gone.test", "A", ["10.0.7.1"], ttl=0)

    async def main():
        r = make_resolver(server)
        seen: dict[str, list] = {"gone.test": [], "later.test": []}
        watches = [r.watch(n, 80, seen[n].append) for n in seen]
        for w in watches:
            await w.ready()
        assert seen["later.test"] == [[]]  # failed at start: no address, retried
        server.remove("gone.test")
        server.set("later.test", "A", ["10.0.7.2"], ttl=0)
        await until(lambda: len(seen["gone.test"]) == 2 and len(seen["later.test"]) == 2)
        assert seen["gone.test"][-1] == []  # NXDOMAIN is definitive
        assert endpoints(seen["later.test"][-1]) == [("10.0.7.2", 80, None)]
        for w in watches:
            w.cancel()
        await r.close()

    run(main())


def test_watches_share_one_refresh_and_are_reference_counted(server):
    server.set("shared.test", "A", ["10.0.8.1"], ttl=30)

    async def main():
        r = make_resolver(server)
        first: list = []
        w1 = r.watch("shared.test", 80, first.append)
        await w1.ready()
        second: list = []
        w2 = r.watch("Shared.Test", 443, second.append)  # served at once from the watch
        assert endpoints(second[0]) == [("10.0.8.1", 443, None)]
        assert server.count("shared.test", "A") == 1
        task = r._watches["shared.test"].task
        w1.cancel()
        await asyncio.sleep(0)
        assert not task.done()
        w2.cancel()
        w2.cancel()
        await asyncio.sleep(0)
        assert task.cancelled() and r._watches == {}
        third: list = []
        w3 = r.watch("shared.test", 80, third.append)  # cache reused: no new question
        await w3.ready()
        assert endpoints(third[0]) == [("10.0.8.1", 80, None)]
        assert server.count("shared.test", "A") == 1
        await r.close()
        assert r._watches == {} and r._cache == {}

    run(main())


# ---- balancers over DNS ------------------------------------------------------------------------


def test_balancer_follows_dns_and_closes_its_watches(server):
    server.set("api.test", "A", ["10.0.9.1", "10.0.9.2"], ttl=0)
    server.set("_api._tcp.srv.test", "SRV", ["1 3 9001 api.test."], ttl=0)
    up = Upstream(
        id="u",
        name="backend",
        targets=(
            Target(id="t1", upstream_id="u", host="api.test", port=8000, weight=10),
            Target(id="t2", upstream_id="u", host="nowhere.test", port=8000, weight=10),
        ),
    )
    service = Service(id="s", name="s", host="backend")

    async def main():
        r = make_resolver(server)
        b = build_balancer(service, {"backend": up}, r)
        await b.start()
        assert sorted((p.ip, p.port, p.weight) for p in b.addresses) == [
            ("10.0.9.1", 8000, 10), ("10.0.9.2", 8000, 10)
        ]
        server.set("api.test", "A", ["10.0.9.3"], ttl=0)
        await until(lambda bal=b: [p.ip for p in bal.addresses] == ["10.0.9.3"])
        # a reload: the new balancer gets the addresses from the shared watch at once
        b2 = build_balancer(service, {"backend": up}, r)
        await b2.start(wait=0)
        assert [p.ip for p in b2.addresses] == ["10.0.9.3"]
        await b.close()
        await b2.close()
        assert r._watches == {}
        gone = weakref.ref(b)
        del b, b2
        gc.collect()
        assert gone() is None  # nothing in the resolver keeps a closed balancer alive
        plain = Service(id="p", name=None, host="_api._tcp.srv.test", port=1)
        implicit = build_balancer(plain, {}, r)
        await implicit.start()
        assert [(p.ip, p.port, p.weight) for p in implicit.addresses] == [("10.0.9.3", 9001, 3)]
        await implicit.close()
        await r.close()

    run(main())


# ---- configuration files -------------------------------------------------------------------------


def test_resolv_conf_hosts_and_dns_resolver_parsing(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# x\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nnameserver bad\n"
        "domain old.example\nsearch svc.cluster.local cluster.local\n"
        "options ndots:5 timeout:3 attempts:4 rotate\n"
    )
    parsed = parse_resolv_conf(str(conf))
    assert parsed.nameservers == (("10.0.0.53", 53), ("fe80::1", 53))
    assert parsed.search == ("svc.cluster.local", "cluster.local")
    assert (parsed.ndots, parsed.timeout, parsed.attempts) == (5, 3.0, 4)
    assert parse_resolv_conf(str(tmp_path / "absent")).nameservers == ()
    assert parse_nameservers("10.0.0.1, 10.0.0.2:5353,[::1]:53,::2") == [
        ("10.0.0.1", 53), ("10.0.0.2", 5353), ("::1", 53), ("::2", 53)
    ]
    with pytest.raises(ValueError, match="not-an-ip"):
        parse_nameservers("not-an-ip:53")
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 a\n10.0.0.2 a b\n::1 a\n")
    assert parse_hosts(str(hosts)) == {"a": ("10.0.0.1", "::1"), "b": ("10.0.0.2", None)}


def test_search_domains_and_ndots(server, tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("search ns.test\noptions ndots:2\n")
    server.set("web.ns.test", "A", ["10.0.10.1"])

    async def main():
        r = make_resolver(server, resolv_conf=str(conf))
        assert endpoints(await r.resolve("web", 80)) == [("10.0.10.1", 80, None)]
        assert server.queries[0] == ("web.ns.test", "SRV")  # fewer dots than ndots: search first
        assert await r.resolve("web.", 80) == []  # absolute: no search
        await r.close()

    run(main())


def test_bad_order_rejected():
    with pytest.raises(ValueError, match="dns_order"):
        Resolver(nameservers=[("127.0.0.1", 53)], order=("A", "MX"), resolv_conf=None)
