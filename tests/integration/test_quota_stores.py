"""The shared quota stores on real servers: Redis and PostgreSQL.

Two gateway processes (two workers each) on one store admit exactly the quota in total,
whichever gateway each client reaches; the stores alone, used by two clients at once
(two nodes), admit exactly the limit too. Each test keeps its keys under a prefix of its
own (Redis) or in a table of its own (PostgreSQL), and removes them at the end.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from support import declarative
from support.bursts import spread, statuses
from support.rawhttp import RawResponse
from support.redisserver import RedisServer
from guichet.quotas import QuotaKey, open_store
from guichet.quotas.periods import window

BACKENDS = ("redis", "postgres")


@pytest.fixture(params=BACKENDS)
def store_url(request, requires_services):
    """A usage_store URL on the real server, with keys or a table of this test's own."""
    backend = request.param
    server = requires_services(backend)[backend]
    run = uuid.uuid4().hex[:12]
    if backend == "redis":
        url = f"{server}?prefix=guichet-test-{run}:"
        yield url
        asyncio.run(_drop_redis_keys(server, f"guichet-test-{run}:"))
    else:
        url = f"{server}?table=guichet_quota_test_{run}"
        yield url
        asyncio.run(_drop_table(server, f"guichet_quota_test_{run}"))


async def _drop_redis_keys(server: str, prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(server)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def _drop_table(server: str, table: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        await conn.close()


def away_from_midnight(margin: float = 30.0) -> None:
    left = 86400 - (time.time() % 86400)
    if left < margin:
        time.sleep(left + 0.5)


def test_two_stores_on_one_server_admit_exactly_the_limit(store_url):
    """Two clients of one server (two nodes) racing on the same key."""
    away_from_midnight()

    async def scenario():
        nodes = [open_store(store_url), open_store(store_url)]
        for node in nodes:
            await node.start()
        key = QuotaKey("plan", "consumer", window("day", time.time()))
        try:
            answers = await asyncio.gather(*(nodes[i % 2].consume(key, 25)
                                             for i in range(80)))
            counts = await nodes[1].read([key, QuotaKey("plan", "other", key.window)])
        finally:
            for node in nodes:
                await node.close()
        return answers, counts

    answers, counts = asyncio.run(scenario())
    admitted = [a for a in answers if a.allowed]
    assert sorted(a.used for a in admitted) == list(range(1, 26))
    assert all(a.used == 25 and a.remaining == 0 for a in answers if not a.allowed)
    assert counts == [25, 0]


def test_two_gateways_sharing_the_store_admit_exactly_the_quota(
        store_url, gateway_factory, upstream):
    away_from_midnight()
    run, n = uuid.uuid4().hex[:8], 15
    text = declarative(
        services=[{"name": "main", "url": upstream.url,
                   "routes": [{"name": "api", "paths": ["/api"]}],
                   "plugins": [{"name": "key-auth"}]}],
        consumers=[{"username": "alice", "keyauth_credentials": [{"key": "alice-key-0123"}]}],
        usage_plans=[{"name": f"shared-{run}", "quota": {"limit": n, "period": "month"},
                      "consumers": ["alice"], "fault_tolerant": False}])
    env = {"GUICHET_USAGE_STORE": store_url}
    gateways = [gateway_factory(text, workers=2, env=env) for _ in range(2)]
    # 60 connections at once, dealt in turn to the two gateways
    results = spread([g.port for g in gateways], "/api", 60, [("apikey", "alice-key-0123")])
    for r in results:
        assert isinstance(r, RawResponse), f"a connection failed: {r!r}"
    assert statuses(results) == {200: n, 429: 60 - n}  # never 500: the store answered
    assert len(upstream.requests) == n
    assert sorted(int(r.header("X-Quota-Remaining")) for r in results if r.status == 200) \
        == list(range(n))
    refusal = next(r for r in results if r.status == 429).json()
    assert refusal["quota"] == {"plan": f"shared-{run}", "limit": n, "period": "month",
                                "used": n, "resets_at": refusal["quota"]["resets_at"]}
    assert refusal["quota"]["resets_at"].endswith("-01T00:00:00Z")


def test_usage_reads_the_shared_store_and_creates_nothing(store_url):
    """``guichet usage``'s read-only access: zeros where nothing was counted, and no
    table or key made for it."""
    async def scenario():
        reader = open_store(store_url, read_only=True)
        await reader.start()
        try:
            return await reader.read([QuotaKey("p", "c", window("day", time.time()))])
        finally:
            await reader.close()

    assert asyncio.run(scenario()) == [0]
    if store_url.startswith("postgres"):
        assert asyncio.run(_table_exists(store_url)) is False


async def _table_exists(store_url: str) -> bool:
    import asyncpg

    server, _, query = store_url.partition("?")
    conn = await asyncpg.connect(server)
    try:
        return await conn.fetchval("SELECT to_regclass($1) IS NOT NULL",
                                   query.removeprefix("table="))
    finally:
        await conn.close()


# ------------------------------------------------------------------ a store that goes away
def test_a_redis_store_that_goes_away_fails_open_and_is_used_again_when_back(
        gateway_factory, upstream, tmp_path):
    import shutil

    import httpx

    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    away_from_midnight()
    redis = RedisServer(tmp_path).start()
    try:
        text = declarative(
            services=[{"name": "main", "url": upstream.url,
                       "routes": [{"name": "api", "paths": ["/api"]}],
                       "plugins": [{"name": "key-auth"}]}],
            consumers=[{"username": "alice", "keyauth_credentials": [{"key": "alice-key-0"}]}],
            usage_plans=[{"name": "flaky", "quota": {"limit": 4, "period": "day"},
                          "consumers": ["alice"]}])
        gateway = gateway_factory(text, workers=1, env={
            "GUICHET_USAGE_STORE": f"redis://127.0.0.1:{redis.port}/0",
            "GUICHET_USAGE_STORE_TIMEOUT": "0.5"})
        with httpx.Client(base_url=gateway.url, trust_env=False, timeout=10.0,
                          headers={"apikey": "alice-key-0"}) as http:
            def remaining() -> list[str | None]:
                answer = http.get("/api")
                assert answer.status_code == 200, answer.text  # never refused, never 500
                return answer.headers.get("X-Quota-Remaining")

            assert [remaining(), remaining()] == ["3", "2"]
            redis.kill()
            assert [remaining() for _ in range(3)] == [None] * 3  # let through, uncounted
            redis.start()  # the same port, empty (no persistence)
            deadline = time.monotonic() + 10
            seen = None
            while seen is None and time.monotonic() < deadline:
                seen = remaining()  # the worker reconnects by itself
            assert seen == "3"
        assert "quota store unavailable" in gateway.stderr_text()
    finally:
        redis.kill()
