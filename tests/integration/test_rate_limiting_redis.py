"""rate-limiting with ``policy: redis`` against real Redis servers.

* Two gateway processes (two workers each) share the Redis at REDIS_URL: many concurrent
  connections dealt over both admit exactly N in total.
* A Redis server of this test's own (``redis-server`` on a free port, no persistence) is
  killed and restarted while traffic flows: every answer is one of the documented ones
  (fault_tolerant: 200 without rate-limit headers while Redis is away; not fault
  tolerant: Kong's 500), and limiting comes back by itself once Redis is back.

Counters are keyed by a fresh identifier per test (an X-Run header value), so reruns and
other tests never share them; the keys this module wrote in the shared Redis are deleted
at the end.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest

from support import declarative
from support.bursts import burst, spread, statuses
from support.rawhttp import RawResponse
from support.redisserver import RedisServer

N = 40
DATABASE = 11  # this module's Redis database on the shared server
UNEXPECTED = "An unexpected error occurred"


def rate_limit(redis: dict, **config) -> dict:
    return {"name": "rate-limiting",
            "config": {"policy": "redis", "redis": redis, "limit_by": "header",
                       "header_name": "X-Run", **config}}


def fresh_minute(margin: float = 3.0) -> None:
    left = 60 - (time.time() % 60)
    if left < margin:
        time.sleep(left + 0.02)


def redis_cli(port: int, *args: str, database: int = DATABASE, host: str = "127.0.0.1") -> str:
    out = subprocess.run(["redis-cli", "-h", host, "-p", str(port), "-n", str(database), *args],
                         capture_output=True, text=True, timeout=10)
    return out.stdout


# ------------------------------------------------------------------ two nodes, one Redis
@pytest.fixture
def shared_redis(requires_services):
    url = urlsplit(requires_services("redis")["redis"])
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    runs: list[str] = []
    yield host, port, runs
    if shutil.which("redis-cli"):
        for run in runs:
            keys = redis_cli(port, "--scan", "--pattern", f"*{run}*", host=host).split()
            if keys:
                redis_cli(port, "DEL", *keys, host=host)


def test_two_gateways_sharing_redis_admit_exactly_the_limit(gateway_factory, upstream,
                                                            shared_redis):
    host, port, runs = shared_redis
    redis = {"host": host, "port": port, "database": DATABASE}
    config = declarative(services=[{"name": "main", "url": upstream.url, "routes": [
        {"name": "shared", "paths": ["/shared"], "plugins": [rate_limit(redis, minute=N)]}]}])
    first = gateway_factory(config, workers=2)
    second = gateway_factory(config, workers=2)
    run = uuid.uuid4().hex
    runs.append(run)
    headers = [("X-Run", run)]
    fresh_minute()
    # a third of the limit spent through the first node alone...
    early = burst(first.port, "/shared", N // 3, headers)
    assert statuses(early) == {200: N // 3}
    # ...then many connections at once, dealt over both nodes, get exactly the rest
    results = spread([first.port, second.port], "/shared", 200, headers)
    for r in results:
        assert isinstance(r, RawResponse), f"a connection failed: {r!r}"
    assert statuses(results) == {200: N - N // 3, 429: 200 - (N - N // 3)}
    assert len(upstream.requests) == N  # (the route strips /shared)
    admitted = [r for r in early + results if r.status == 200]
    assert sorted(int(r.header("X-RateLimit-Remaining-Minute")) for r in admitted) == \
        list(range(N))
    for r in results:
        if r.status == 429:
            assert r.json()["message"] == "API rate limit exceeded"
            assert 1 <= int(r.header("Retry-After")) <= 60
    # each node now refuses: they count in the same place
    for gw in (first, second):
        (last,) = burst(gw.port, "/shared", 1, headers)
        assert last.status == 429 and last.header("X-RateLimit-Remaining-Minute") == "0"


# ------------------------------------------------------------------ Redis goes away
@dataclass
class Seen:
    path: str
    started: float
    ended: float
    status: int | str
    limited: bool  # carries X-RateLimit-* headers
    retry_after: str | None
    message: str | None


class Traffic:
    """Threads sending requests to each path in turn until stopped, recording answers."""

    def __init__(self, base: str, paths: list[str], run: str, threads: int = 2) -> None:
        self.base, self.paths, self.run = base, paths, run
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def _loop(self) -> None:
        with httpx.Client(trust_env=False, timeout=10.0) as client:
            while not self._stop.is_set():
                for path in self.paths:
                    started = time.monotonic()
                    try:
                        r = client.get(self.base + path, headers={"X-Run": self.run})
                        message = None
                        if r.headers.get("content-type", "").startswith("application/json"):
                            message = r.json().get("message")
                        item = Seen(path, started, time.monotonic(), r.status_code,
                                    "x-ratelimit-limit-second" in r.headers,
                                    r.headers.get("retry-after"), message)
                    except httpx.HTTPError as exc:
                        item = Seen(path, started, time.monotonic(), type(exc).__name__,
                                    False, None, None)
                    with self._lock:
                        self.seen.append(item)
                time.sleep(0.003)

    def since(self, t: float, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.started >= t and s.path == path]

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False


def documented(s: Seen) -> bool:
    """The answers a client may get, by route, whatever the state of Redis."""
    if s.status == 200:
        return True  # admitted (with headers), or let through while Redis is away (without)
    if s.status == 429:
        return s.limited and s.retry_after is not None and s.message == "API rate limit exceeded"
    if s.status == 500:
        return s.path == "/strict" and s.message == UNEXPECTED and not s.limited
    return False


def test_redis_killed_and_restarted_while_traffic_flows(gateway_factory, upstream, tmp_path,
                                                        requires_services):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path).start()
    try:
        redis = {"host": "127.0.0.1", "port": server.port, "timeout": 300}
        config = declarative(services=[{"name": "main", "url": upstream.url, "routes": [
            {"name": "ft", "paths": ["/ft"], "plugins": [rate_limit(redis, second=5)]},
            {"name": "strict", "paths": ["/strict"],
             "plugins": [rate_limit(redis, second=5, fault_tolerant=False)]},
        ]}])
        gw = gateway_factory(config, workers=2)
        with Traffic(gw.url, ["/ft", "/strict"], uuid.uuid4().hex) as traffic:
            t0 = time.monotonic()
            assert traffic.wait(lambda: all(any(s.status == 429 for s in traffic.since(t0, p))
                                            for p in ("/ft", "/strict")), 10), \
                "no rate limiting with Redis up"

            up = [s for s in traffic.since(t0, "/ft") + traffic.since(t0, "/strict")]
            assert up and all(s.limited for s in up), \
                {(s.path, s.status, s.limited) for s in up}  # Redis up: every answer counted
            server.kill()
            down = time.monotonic()
            assert traffic.wait(lambda: all(len(traffic.since(down + 0.5, p)) >= 20
                                            for p in ("/ft", "/strict")), 15)
            # requests started once Redis was surely gone
            restarted_at = time.monotonic()
            gone_ft = [s for s in traffic.since(down + 0.5, "/ft") if s.ended < restarted_at]
            gone_strict = [s for s in traffic.since(down + 0.5, "/strict")
                           if s.ended < restarted_at]
            assert gone_ft and all(s.status == 200 and not s.limited for s in gone_ft), \
                {(s.status, s.limited) for s in gone_ft}
            assert gone_strict and all(s.status == 500 for s in gone_strict), \
                {s.status for s in gone_strict}

            server.start()  # the same port
            back = time.monotonic()
            assert traffic.wait(lambda: all(any(s.status == 429 for s in traffic.since(back, p))
                                            for p in ("/ft", "/strict")), 20), \
                "rate limiting did not come back after Redis restarted"
            assert traffic.wait(lambda: any(s.status == 200 and s.limited
                                            for s in traffic.since(back, "/strict")), 10)
        everything = traffic.seen
        assert len(everything) > 100
        odd = [s for s in everything if not documented(s)]
        assert not odd, odd[:10]
        # each decision taken without Redis is counted, and the node shows the counts
        passed, failed = len(gone_ft), len(gone_strict)
        deadline = time.monotonic() + 5
        while True:
            counts = gw.status()["rate_limiting"].get(f"redis 127.0.0.1:{server.port}/0", {})
            if counts.get("fault_tolerant_passed", 0) >= passed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert counts.get("fault_tolerant_passed", 0) >= passed, counts
        assert counts.get("fault_tolerant_failed", 0) >= failed, counts
        assert counts.get("redis_errors", 0) + counts.get("redis_skipped", 0) \
            >= passed + failed, counts
    finally:
        server.kill()
