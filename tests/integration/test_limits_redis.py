"""The Redis counters on a real server: the Lua script agrees with the Python arithmetic,
two independent clients never admit more than the limit, faults fail fast and the client
comes back by itself, NOSCRIPT is handled, the password stays out of messages."""

from __future__ import annotations

import asyncio
import calendar
import logging
import multiprocessing
import secrets
import time
from urllib.parse import urlsplit

import pytest

from guichet.limits import CountersUnavailable, Limit
from guichet.limits.process import ProcessCounters
from guichet.limits.redis import RedisCounters, RedisSettings
from support.redisserver import RedisServer

CTX = multiprocessing.get_context("spawn")


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)[:6] + (0, 0, 0)))


@pytest.fixture
def shared_redis(requires_services):
    """Settings for the test Redis and a key prefix of this test; its keys are deleted."""
    url = urlsplit(requires_services("redis")["redis"])
    db = int(url.path.lstrip("/") or 0)
    settings = RedisSettings(host=url.hostname or "127.0.0.1", port=url.port or 6379,
                             password=url.password, database=db)
    prefix = f"guichet-test-limits-{secrets.token_hex(4)}:"
    yield settings, prefix
    import redis

    client = redis.Redis(host=settings.host, port=settings.port, db=db, password=settings.password)
    keys = list(client.scan_iter(prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def own_redis():
    servers: list[RedisServer] = []

    def make(password: str | None = None) -> RedisServer:
        server = RedisServer(password=password)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


# -- the script agrees with the Python arithmetic -----------------------------------------
SCENARIOS = {
    "fixed": ([Limit("f1", 3, "minute"), Limit("f2", 5, 7)],
              [0, 0.1, 0.2, 0.3, 0.4, 59.9, 60.0, 60.1, 60.2, 60.3, 66.5, 70.0]),
    "sliding": ([Limit("s1", 4, "minute", "sliding")],
                [0, 1, 2, 3, 4, 59, 61, 62, 75, 80, 90, 100, 130, 200]),
    "gcra": ([Limit("g1", 3, algorithm="gcra", rate=2.0)],
             [0, 0, 0, 0, 0.2, 0.5, 0.5, 0.6, 3.0, 3.0, 3.0, 3.0, 3.0]),
    "month": ([Limit("m1", 2, "month"), Limit("m2", 3, "month", "sliding"),
               Limit("y1", 4, "year")],
              [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 86400.0, 31 * 86400.0]),
    "several": ([Limit("a", 2, "second"), Limit("b", 6, "minute", "sliding"),
                 Limit("c", 5, algorithm="gcra", rate=1.0)],
                [0.1, 0.2, 0.3, 0.4, 1.1, 1.2, 1.3, 2.5, 2.6, 3.5, 4.5, 5.5, 61.0]),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_script_decides_as_the_python_arithmetic(shared_redis, name) -> None:
    settings, prefix = shared_redis
    limits, offsets = SCENARIOS[name]
    origin = utc(2023, 12, 31, 23, 59, 59) if name == "month" else utc(2024, 2, 29, 23, 59)
    now = [origin]
    reference = ProcessCounters(clock=lambda: now[0])
    remote = RedisCounters(settings, prefix=prefix)

    async def scenario() -> list[tuple]:
        seen = []
        for offset in offsets:
            now[0] = remote._clock_override = origin + offset
            expected = reference.hit(limits)
            got = await remote.hit(limits)
            assert got.allowed == expected.allowed, (offset, got, expected)
            assert [o.remaining for o in got.outcomes] == [o.remaining for o in expected.outcomes]
            assert [o.reset for o in got.outcomes] == pytest.approx(
                [o.reset for o in expected.outcomes], abs=1e-6)
            assert got.retry_after == pytest.approx(expected.retry_after, abs=1e-6)
            seen.append(got.allowed)
        await remote.close()
        return seen

    seen = asyncio.run(scenario())
    assert True in seen and False in seen  # each scenario both admits and refuses


def test_keys_expire_when_their_state_is_no_longer_needed(shared_redis) -> None:
    import redis

    settings, prefix = shared_redis
    remote = RedisCounters(settings, prefix=prefix)

    async def scenario() -> None:
        await remote.hit([Limit("fx", 5, 60), Limit("sl", 5, 60, "sliding"),
                          Limit("gc", 5, algorithm="gcra", rate=1.0)])
        await remote.close()

    asyncio.run(scenario())
    client = redis.Redis(host=settings.host, port=settings.port, db=settings.database,
                         password=settings.password)
    try:
        ttl = {k: client.pttl(prefix + k) / 1000 for k in ("fx", "sl", "gc")}
    finally:
        client.close()
    assert 0 < ttl["fx"] <= 61
    assert 60 < ttl["sl"] <= 121  # still the previous window during the next one
    assert 0 < ttl["gc"] <= 2


# -- several clients, one server ---------------------------------------------------------
def _remote_hammer(settings: RedisSettings, prefix: str, limits: list[Limit], hits: int,
                   start, results) -> None:
    async def main() -> int:
        counters = RedisCounters(settings, prefix=prefix)
        await counters.hit([Limit("warm-up", 1_000_000, 3600)])  # connected and scripts loaded
        start.wait()  # both clients are ready: they hammer at the same time
        admitted = 0
        for _ in range(hits // 50):
            decisions = await asyncio.gather(*(counters.hit(limits) for _ in range(50)))
            admitted += sum(d.allowed for d in decisions)
        await counters.close()
        return admitted

    results.put(asyncio.run(main()))


def test_two_processes_sharing_redis_never_admit_more_than_the_limit(shared_redis) -> None:
    settings, prefix = shared_redis
    limits = [Limit("shared", 250, 3600), Limit("wide", 10_000, 3600, "sliding")]
    start, results = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_remote_hammer, args=(settings, prefix, limits, 400, start, results),
                         daemon=True) for _ in range(2)]
    for p in procs:
        p.start()
    admitted = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert sum(admitted) == 250
    assert all(a > 0 for a in admitted)  # both nodes took part

    async def check() -> list[int]:
        counters = RedisCounters(settings, prefix=prefix)
        decision = await counters.hit(limits[1:])
        await counters.close()
        return [o.remaining for o in decision.outcomes]

    # the refused 550 were not counted by the wide limit
    assert asyncio.run(check()) == [10_000 - 251]


# -- faults ---------------------------------------------------------------------------------
def test_redis_down_fails_fast_and_the_client_comes_back_by_itself(own_redis) -> None:
    server = own_redis()
    counters = RedisCounters(RedisSettings(port=server.port, timeout=500), prefix="fault:")
    limits = [Limit("k", 100, 3600)]

    async def scenario() -> None:
        assert (await counters.hit(limits)).allowed
        server.stop()
        with pytest.raises(CountersUnavailable, match=f"127.0.0.1:{server.port}"):
            await counters.hit(limits)
        assert counters.tally["redis_errors"] == 1
        # while backing off: refused at once, synchronously, without trying
        with pytest.raises(CountersUnavailable, match="unavailable"):
            counters.hit(limits)
        assert counters.tally["redis_skipped"] == 1
        server.start()  # same port
        deadline = time.monotonic() + 20
        while True:
            try:
                decision = await counters.hit(limits)
                break
            except CountersUnavailable:
                assert time.monotonic() < deadline, counters.tally
                await asyncio.sleep(0.05)
        assert decision.allowed
        assert decision.outcomes[0].remaining == 99  # a new server: counting starts again
        assert counters.tally["redis_recoveries"] == 1
        assert (await counters.hit(limits)).outcomes[0].remaining == 98
        await counters.close()

    asyncio.run(scenario())


def test_scripts_flushed_on_the_server_are_loaded_again(own_redis) -> None:
    import redis

    server = own_redis()
    counters = RedisCounters(RedisSettings(port=server.port), prefix="noscript:")
    limits = [Limit("k", 10, 3600)]

    async def scenario() -> list[int]:
        first = await counters.hit(limits)
        redis.Redis(port=server.port).script_flush()
        second = await counters.hit(limits)
        await counters.close()
        return [first.outcomes[0].remaining, second.outcomes[0].remaining]

    assert asyncio.run(scenario()) == [9, 8]
    assert "redis_errors" not in counters.tally


def test_the_password_never_appears_in_errors_or_logs(own_redis, caplog) -> None:
    server = own_redis(password="the-right-password")
    wrong = RedisCounters(RedisSettings(port=server.port, password="a-wrong-password"))
    right = RedisCounters(RedisSettings(port=server.port, password="the-right-password"),
                          prefix="auth:")
    limits = [Limit("k", 10, 3600)]

    async def scenario() -> str:
        with pytest.raises(CountersUnavailable) as info:
            await wrong.hit(limits)
        assert (await right.hit(limits)).allowed
        await wrong.close()
        await right.close()
        return str(info.value)

    with caplog.at_level(logging.DEBUG):
        message = asyncio.run(scenario())
    assert "a-wrong-password" not in message and "a-wrong-password" not in caplog.text
    assert "the-right-password" not in caplog.text
    assert wrong.tally["redis_errors"] == 1
    assert "a-wrong-password" not in repr(wrong.settings)


# -- incidents, pool, connections -----------------------------------------------------------
def test_one_stall_under_concurrency_is_one_incident_and_one_call_probes(own_redis) -> None:
    import os
    import signal

    from guichet.limits.redis import BACKOFF_FIRST

    server = own_redis()
    counters = RedisCounters(RedisSettings(port=server.port, timeout=100), prefix="stall:")
    limits = [Limit("k", 1000, 3600)]

    async def attempt():
        return await counters.hit(limits)

    async def scenario() -> None:
        # 20 connections open and the script loaded
        assert all(d.allowed for d in await asyncio.gather(*(attempt() for _ in range(20))))
        os.kill(server.proc.pid, signal.SIGSTOP)  # Redis accepts but never answers
        try:
            failed = await asyncio.gather(*(attempt() for _ in range(20)), return_exceptions=True)
            assert all(isinstance(r, CountersUnavailable) for r in failed), failed
            assert counters.tally["redis_errors"] == 20
            # one incident: one step of backoff (0.5 s), not twenty (the 5 s cap)
            assert counters._failures == 1
            assert counters._down_until - counters._down_since == pytest.approx(BACKOFF_FIRST)
            await asyncio.sleep(max(0.0, counters._down_until - time.monotonic()) + 0.02)
            # the backoff is over, Redis still silent: one call probes, the others fail fast
            probes, skipped = [], 0
            for _ in range(20):
                try:
                    probes.append(counters.hit(limits))
                except CountersUnavailable as exc:
                    assert "probing" in str(exc)
                    skipped += 1
            assert (len(probes), skipped) == (1, 19)
            with pytest.raises(CountersUnavailable):
                await probes[0]
            assert counters._failures == 2  # the probe failed: the next step (1 s)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await asyncio.sleep(max(0.0, counters._down_until - time.monotonic()) + 0.02)
        decision = await counters.hit(limits)  # the first call after the backoff
        assert decision.allowed
        assert counters.tally["redis_recoveries"] == 1
        assert counters._failures == 0
        assert all(d.allowed for d in await asyncio.gather(*(attempt() for _ in range(20))))
        await counters.close()

    asyncio.run(scenario())


SLOW_PROXY = r"""
import asyncio, sys

async def pipe(reader, writer, delay):
    try:
        while data := await reader.read(65536):
            if delay:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()

async def client(reader, writer):
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(sys.argv[1]))
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer, 0), pipe(up_reader, writer, float(sys.argv[2])))

async def main():
    server = await asyncio.start_server(client, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture
def slow_proxy():
    """A TCP proxy in front of a Redis port that delays every answer (a distant but
    healthy server)."""
    import subprocess
    import sys

    procs: list[subprocess.Popen] = []

    def make(port: int, delay: float) -> int:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_PROXY, str(port), str(delay)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return int(proc.stdout.readline())

    yield make
    for proc in procs:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()


def test_a_busy_pool_is_load_not_an_outage(own_redis, slow_proxy, monkeypatch) -> None:
    import guichet.limits.redis as module

    server = own_redis()
    port = slow_proxy(server.port, 0.03)  # every answer 30 ms late, well within the timeout
    monkeypatch.setattr(module, "MAX_CONNECTIONS", 4)  # a pool far smaller than the load
    counters = RedisCounters(RedisSettings(port=port, timeout=150), prefix="busy:")
    limits = [Limit("k", 100_000, 3600)]

    async def attempt():
        return await counters.hit(limits)

    async def scenario() -> list:
        assert all(d.allowed for d in await asyncio.gather(*(attempt() for _ in range(4))))
        # 60 at once on 4 connections: ~450 ms of work, the last ones wait more than 150 ms
        results = await asyncio.gather(*(attempt() for _ in range(60)), return_exceptions=True)
        after = await attempt()  # no backoff: the next request goes to Redis
        assert after.allowed
        await counters.close()
        return results

    results = asyncio.run(scenario())
    busy = [r for r in results if isinstance(r, BaseException)]
    assert busy, "the scenario must exhaust the pool"
    assert all(isinstance(r, CountersUnavailable) and "busy" in str(r) for r in busy), busy
    assert counters.tally["redis_pool_busy"] == len(busy)
    assert counters._failures == 0  # Redis was healthy: no backoff started
    assert "redis_errors" not in counters.tally and "redis_skipped" not in counters.tally


def test_reloads_changing_the_redis_record_do_not_accumulate_connections(
        gateway_factory, upstream, own_redis) -> None:
    import httpx
    import redis

    from support import declarative

    server = own_redis()

    def config(timeout: int) -> str:
        plugin = {"name": "rate-limiting", "config": {
            "policy": "redis", "minute": 100_000,
            "redis": {"host": "127.0.0.1", "port": server.port, "timeout": timeout}}}
        return declarative(services=[{"name": "s", "url": upstream.url, "routes": [
            {"name": "r", "paths": ["/"], "plugins": [plugin]}]}])

    admin = redis.Redis(port=server.port)

    def gateway_connections() -> list[str]:
        return [c["name"] for c in admin.client_list() if c["name"].startswith("guichet-rl-")]

    gw = gateway_factory(config(1000), workers=1)
    worker = gw.status()["worker_pids"][0]
    try:
        with httpx.Client(trust_env=False, timeout=10) as client:
            for i in range(15):
                if i:
                    gw.reload_config(config(1000 + i))
                answer = client.get(gw.url + "/echo")
                assert answer.status_code == 200
                assert "RateLimit-Remaining" in answer.headers  # counted in Redis
        # once the retired snapshots are released: the current record's one connection,
        # not one per reload
        deadline = time.monotonic() + 10
        while len(gateway_connections()) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gateway_connections() == [f"guichet-rl-{worker}"]
        status = gw.status()["rate_limiting"]
        assert status[f"redis 127.0.0.1:{server.port}/0"].get("redis_errors", 0) == 0
    finally:
        admin.close()
