"""rate-limiting (policy local) and concurrency-limiting through a real gateway with two
workers and real upstreams.

Exactness is the point: many connections at once, spread by the kernel over both
workers, against a limit of N admit exactly N (each admitted request sees a different
X-RateLimit-Remaining, and the upstream receives exactly N). Every test counts under an
identifier of its own (a fresh X-Run header value), so tests and reruns never share a
counter. Window-bound tests start right after a window boundary (or wait for the next
one when too close to its end), so a burst never straddles two windows.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import declarative
from support.bursts import burst, statuses
from support.gateway import Gateway
from support.rawhttp import RawResponse

WORKERS = 2
N = 50


def plugin(name: str, **config) -> dict:
    return {"name": name, "config": config}


def by_run(**config) -> dict:
    return plugin("rate-limiting", limit_by="header", header_name="X-Run", **config)


class GatedUpstream:
    """An upstream that holds every request until ``open()`` (or 10 s), counting how many
    are in flight at once; answers 200 "ok"."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._gate: asyncio.Event | None = None
        ready = threading.Event()

        async def start() -> None:
            self._gate = asyncio.Event()
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(start())
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="gated-upstream")
        self._thread.start()
        assert ready.wait(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                with self._lock:
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    await asyncio.wait_for(self._gate.wait(), 10)
                except TimeoutError:
                    pass
                with self._lock:
                    self.in_flight -= 1
                    self.served += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def open(self) -> None:
        self._loop.call_soon_threadsafe(self._gate.set)

    def close_gate(self) -> None:
        self._loop.call_soon_threadsafe(self._gate.clear)

    def stop(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def wait_in_flight(self, count: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.in_flight >= count:
                return True
            time.sleep(0.01)
        return False


@pytest.fixture(scope="module")
def gated():
    server = GatedUpstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(module_gateway_factory, upstream_servers, gated) -> Gateway:
    u1 = upstream_servers[0].url
    routes = [
        {"name": "exact", "paths": ["/exact"], "plugins": [by_run(minute=N)]},
        {"name": "second", "paths": ["/second"], "plugins": [by_run(second=5, hour=1000)]},
        {"name": "sliding", "paths": ["/sliding"],
         "plugins": [by_run(second=5, window_type="sliding")]},
        {"name": "bucket", "paths": ["/bucket"],
         "plugins": [by_run(token_bucket={"rate": 1, "burst": 4})]},
        {"name": "hidden", "paths": ["/hidden"],
         "plugins": [by_run(minute=2, hide_client_headers=True, error_code=418,
                            error_message="Easy, tiger")]},
        {"name": "consumer", "paths": ["/consumer"],
         "plugins": [plugin("key-auth"), plugin("rate-limiting", minute=3)]},
        # identical plugins on two routes: two counters
        {"name": "twin-a", "paths": ["/twin-a"], "plugins": [by_run(minute=2)]},
        {"name": "twin-b", "paths": ["/twin-b"], "plugins": [by_run(minute=2)]},
    ]
    shared = {"name": "shared", "url": u1, "plugins": [by_run(minute=3)],
              "routes": [{"name": "shared-a", "paths": ["/shared-a"]},
                         {"name": "shared-b", "paths": ["/shared-b"]}]}
    slow = {"name": "slow", "url": f"http://127.0.0.1:{gated.port}",
            "routes": [{"name": "slow", "paths": ["/slow"], "plugins": [
                plugin("concurrency-limiting", limit=3, queue=3, queue_timeout=10,
                       retry_after=2)]}]}
    config = declarative(
        services=[{"name": "main", "url": u1, "routes": routes}, shared, slow],
        consumers=[{"username": "alice", "keyauth_credentials": [{"key": "alice-key"}]},
                   {"username": "bob", "keyauth_credentials": [{"key": "bob-key"}]}])
    return module_gateway_factory(config, workers=WORKERS)


def run_id() -> list[tuple[str, str]]:
    return [("X-Run", uuid.uuid4().hex)]


def fresh_window(period: float, margin: float) -> None:
    """Return right after a window boundary when fewer than ``margin`` seconds are left
    in the current window; otherwise at once."""
    left = period - (time.time() % period)
    if left < margin:
        time.sleep(left + 0.02)


def start_of_next_second() -> None:
    time.sleep(1.0 - (time.time() % 1.0) + 0.02)


def ok(results) -> list[RawResponse]:
    for r in results:
        assert isinstance(r, RawResponse), f"a connection failed: {r!r}"
    return list(results)


def assert_refusal(resp: RawResponse, status: int = 429,
                   message: str = "API rate limit exceeded") -> None:
    assert resp.status == status, resp
    body = resp.json()
    assert body["message"] == message and body["request_id"]


# ------------------------------------------------------------------ exactness
def test_concurrent_clients_over_both_workers_get_exactly_the_limit(gw, upstream):
    fresh_window(60, 3)
    results = ok(burst(gw.port, "/exact", 250, run_id()))
    assert statuses(results) == {200: N, 429: 250 - N}
    assert len(upstream.requests) == N  # (the route strips /exact)
    admitted = [r for r in results if r.status == 200]
    # each admitted request took a distinct place in the window: N-1, N-2, ..., 0
    assert sorted(int(r.header("X-RateLimit-Remaining-Minute")) for r in admitted) == \
        list(range(N))
    for r in admitted:
        assert r.header("X-RateLimit-Limit-Minute") == str(N)
        assert r.header("RateLimit-Limit") == str(N)
        assert r.header("RateLimit-Remaining") == r.header("X-RateLimit-Remaining-Minute")
        assert 1 <= int(r.header("RateLimit-Reset")) <= 60
        assert r.header("Retry-After") is None
    for r in results:
        if r.status == 429:
            assert_refusal(r)
            assert r.header("X-RateLimit-Remaining-Minute") == "0"
            assert r.header("RateLimit-Remaining") == "0"
            assert 1 <= int(r.header("Retry-After")) <= 60
            assert r.header("Retry-After") == r.header("RateLimit-Reset")


def test_per_second_windows_admit_again_in_the_next_second(gw):
    run = run_id()
    start_of_next_second()
    first = ok(burst(gw.port, "/second", 8, run))
    assert statuses(first) == {200: 5, 429: 3}
    refused = [r for r in first if r.status == 429]
    assert all(r.header("Retry-After") == "1" for r in refused)
    # the hour limit is not the one refusing: its remaining count shows it
    assert {r.header("X-RateLimit-Remaining-Hour") for r in refused} == {"995"}
    start_of_next_second()
    second = ok(burst(gw.port, "/second", 8, run))
    assert statuses(second) == {200: 5, 429: 3}
    hours = sorted(int(r.header("X-RateLimit-Remaining-Hour")) for r in second
                   if r.status == 200)
    assert hours == [990, 991, 992, 993, 994]


def test_sliding_window_carries_the_previous_second_over(gw):
    run = run_id()
    start_of_next_second()
    assert statuses(ok(burst(gw.port, "/sliding", 8, run))) == {200: 5, 429: 3}
    # right after the boundary the previous second still weighs almost fully: a fixed
    # window would admit 5 again, the sliding estimate admits at most one
    start_of_next_second()
    early = statuses(ok(burst(gw.port, "/sliding", 5, run)))
    assert early.get(200, 0) <= 1 and early.get(429, 0) >= 4
    # two idle seconds later the estimate is empty again
    time.sleep(2.0)
    start_of_next_second()
    assert statuses(ok(burst(gw.port, "/sliding", 8, run))) == {200: 5, 429: 3}


def test_token_bucket_admits_the_burst_then_the_refill_rate(gw):
    run = run_id()
    first = ok(burst(gw.port, "/bucket", 8, run))
    assert statuses(first) == {200: 4, 429: 4}
    assert all(int(r.header("Retry-After")) >= 1 for r in first if r.status == 429)
    assert {r.header("X-RateLimit-Limit-Bucket") for r in first} == {"4"}
    time.sleep(2.1)  # at 1 token per second, at least 2 tokens are back
    again = statuses(ok(burst(gw.port, "/bucket", 8, run)))
    assert again.get(200, 0) >= 2 and again.get(429, 0) >= 4


# ------------------------------------------------------------------ Kong's options
def test_hide_client_headers_and_custom_refusal(gw, http):
    headers = dict(run_id())
    fresh_window(60, 3)
    answers = [http.get(f"{gw.url}/hidden", headers=headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 418]
    assert answers[2].json()["message"] == "Easy, tiger"
    for a in answers:
        assert not [h for h in a.headers if "ratelimit" in h.lower()]
    assert "retry-after" not in answers[0].headers
    assert 1 <= int(answers[2].headers["retry-after"]) <= 60  # still told when to retry


def test_limit_by_consumer_counts_each_consumer(gw, http):
    fresh_window(60, 3)
    codes = {}
    for key in ("alice-key", "bob-key"):
        codes[key] = [http.get(f"{gw.url}/consumer", headers={"apikey": key}).status_code
                      for _ in range(4)]
    # each consumer has its own 3 per minute (reruns in the same minute would share them:
    # the first three may already be spent, the fourth is always refused)
    for key, seen in codes.items():
        assert seen[-1] == 429, (key, seen)
        assert seen == sorted(seen), (key, seen)


def test_counters_belong_to_the_plugin_entity(gw, http):
    """A plugin on a service counts the requests of all its routes together; the same
    plugin configured on two routes counts each route apart (Kong keys by the plugin's
    scope)."""
    headers = dict(run_id())
    fresh_window(60, 3)
    shared = [http.get(f"{gw.url}/shared-{side}", headers=headers).status_code
              for side in "ababab"]
    assert shared == [200, 200, 200, 429, 429, 429]
    twins = [http.get(f"{gw.url}/twin-{side}", headers=headers).status_code
             for side in "aabbab"]
    assert twins == [200, 200, 200, 200, 429, 429]


# ------------------------------------------------------------------ concurrency-limiting
def test_concurrency_limit_queue_and_refusals_past_the_queue(gw, gated):
    gated.close_gate()
    gated.max_in_flight = 0
    served_before = gated.served
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(burst, gw.port, "/slow", 10, (), 20.0)
        # three reach the upstream; three wait in the queue; four are refused at once
        assert gated.wait_in_flight(3), "the upstream never had 3 requests in flight"
        time.sleep(0.3)  # room for a fourth to (wrongly) reach the upstream
        assert gated.in_flight == 3
        gated.open()
        results = ok(future.result(30))
    assert statuses(results) == {200: 6, 503: 4}
    assert gated.max_in_flight == 3
    assert gated.served - served_before == 6
    for r in results:
        if r.status == 503:
            assert_refusal(r, 503, "Too many concurrent requests")
            assert r.header("Retry-After") == "2"
        else:
            assert r.body == b"ok"
    # every slot was given back: three at once go through again
    gated.open()
    assert statuses(ok(burst(gw.port, "/slow", 3))) == {200: 3}
