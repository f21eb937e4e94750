"""concurrency-limiting on requests built in memory, against a small fake slot engine: the
configuration, a slot taken in access and given back exactly once in log, the bounded
queue and its timeout (503 with Retry-After past them), and the client that goes away
while queued (it leaves the queue; a slot granted after that is given back at once)."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from guichet.config.model import Route, Service
from guichet.plugins.bundled.concurrency_limiting import (
    CTX_LEASE,
    ConcurrencyLimiting,
)
from guichet.plugins.request import Request, ResponseHead
from support.plugin_requests import make_request, refused


class FakeSlots:
    """``limit`` slots per key and a FIFO queue of at most ``queue`` waiters; a released
    slot goes straight to the first waiter. Counts what happened."""

    def __init__(self) -> None:
        self.active: dict[str, int] = {}
        self.queued: dict[str, int] = {}  # queue places, taken before the wait starts
        self.waiting: dict[str, deque] = {}
        self.releases = 0
        self.tally: dict[str, int] = {}
        self.keys: list[str] = []

    def acquire(self, key: str, limit: int, queue: int, timeout: float) -> Any:
        self.keys.append(key)
        waiting = self.waiting.setdefault(key, deque())
        if self.active.get(key, 0) < limit and not waiting:
            self.active[key] = self.active.get(key, 0) + 1
            return FakeLease(self, key)
        if self.queued.get(key, 0) >= queue:
            return None
        self.queued[key] = self.queued.get(key, 0) + 1  # as the real engine: at once
        return self._wait(key, timeout)

    async def _wait(self, key: str, timeout: float) -> "FakeLease | None":
        future = asyncio.get_running_loop().create_future()
        waiting = self.waiting[key]
        waiting.append(future)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return future.result() if future.done() else None
        except asyncio.CancelledError:
            if future.done():
                future.result().release()  # granted while we were being cancelled
            raise
        finally:
            self.queued[key] -= 1
            if future in waiting:
                waiting.remove(future)

    def release(self, key: str) -> None:
        self.releases += 1
        waiting = self.waiting.get(key)
        while waiting:
            future = waiting.popleft()
            if not future.done():
                future.set_result(FakeLease(self, key))
                return
        self.active[key] -= 1

    def hit(self, limits: Any, cost: int = 1) -> Any:
        raise AssertionError("not used by concurrency-limiting")


class FakeLease:
    def __init__(self, slots: FakeSlots, key: str) -> None:
        self.slots, self.key, self.done = slots, key, False

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.slots.release(self.key)


def plugin_with(slots: FakeSlots, **conf: Any) -> ConcurrencyLimiting:
    env = SimpleNamespace(counters=SimpleNamespace(local=lambda: slots), consumers=None,
                          settings=None)
    return ConcurrencyLimiting(ConcurrencyLimiting.Config.model_validate(conf), env)


def request(ip: str = "10.0.0.1") -> Request:
    return make_request("/", client_ip=ip, route=Route(id="r-1", name="r", service_id="s-1"),
                        service=Service(id="s-1", name="svc"))


def finish(plugin: ConcurrencyLimiting, req: Request) -> None:
    plugin.log(req, ResponseHead(200, []))


# ------------------------------------------------------------------ configuration
def test_name_priority_and_defaults():
    assert (ConcurrencyLimiting.name, ConcurrencyLimiting.priority) == ("concurrency-limiting", 907)
    conf = ConcurrencyLimiting.Config.model_validate({"limit": 4})
    assert (conf.limit, conf.queue, conf.queue_timeout, conf.limit_by, conf.error_code,
            conf.error_message, conf.retry_after) == \
        (4, 0, 1.0, "service", 503, "Too many concurrent requests", 1)
    assert ConcurrencyLimiting.Config.model_validate({"limit": 1, "queue_timeout": 2}) \
        .queue_timeout == 2.0


@pytest.mark.parametrize("conf, fragment", [
    ({}, "Field required"),
    ({"limit": 0}, "greater than 0"),
    ({"limit": 1, "queue": -1}, "greater than or equal to 0"),
    ({"limit": 1, "queue_timeout": 0}, "greater than 0"),
    ({"limit": 1, "limit_by": "header"}, "header_name: required field missing"),
    ({"limit": 1, "limit_by": "path"}, "path: required field missing"),
    ({"limit": 1, "error_code": 600}, "less than or equal to 599"),
    ({"limit": 1, "policy": "redis"}, "Extra inputs"),
])
def test_bad_configurations_are_refused(conf, fragment):
    with pytest.raises(ValidationError) as info:
        ConcurrencyLimiting.Config.model_validate(conf)
    assert fragment in str(info.value)


# ------------------------------------------------------------------ slots
def test_a_slot_is_taken_in_access_and_given_back_once_in_log():
    slots = FakeSlots()
    plugin = plugin_with(slots, limit=2)
    first, second = request(), request()
    assert plugin.access(first) is None and plugin.access(second) is None  # synchronous
    third = plugin.access(request())
    assert refused(third) == (503, "Too many concurrent requests")
    assert third.headers == [("Retry-After", "1")]
    finish(plugin, first)
    finish(plugin, first)  # a second log call changes nothing
    assert slots.releases == 1 and CTX_LEASE not in first.ctx
    assert plugin.access(request()) is None
    assert slots.keys[0].startswith("cc:") and slots.keys[0].endswith(":service:s-1")


def test_limit_by_ip_counts_each_client_apart():
    slots = FakeSlots()
    plugin = plugin_with(slots, limit=1, limit_by="ip", error_code=429, error_message="busy",
                         retry_after=7)
    assert plugin.access(request("10.0.0.1")) is None
    assert plugin.access(request("10.0.0.2")) is None
    answer = plugin.access(request("10.0.0.1"))
    assert refused(answer) == (429, "busy") and answer.headers == [("Retry-After", "7")]


def test_queued_requests_get_the_freed_slots_in_order_and_past_the_queue_get_503():
    async def scenario() -> None:
        slots = FakeSlots()
        plugin = plugin_with(slots, limit=1, queue=2, queue_timeout=5)
        holder = request()
        assert plugin.access(holder) is None
        queued = [request(), request()]
        waits = [plugin.access(r) for r in queued]
        assert all(inspect.isawaitable(w) for w in waits)
        tasks = [asyncio.ensure_future(w) for w in waits]
        await asyncio.sleep(0)
        assert refused(plugin.access(request())) == (503, "Too many concurrent requests")
        finish(plugin, holder)
        assert await tasks[0] is None and CTX_LEASE in queued[0].ctx
        assert not tasks[1].done()
        finish(plugin, queued[0])
        assert await tasks[1] is None and CTX_LEASE in queued[1].ctx
        finish(plugin, queued[1])
        assert slots.active[plugin._prefix + "service:s-1"] == 0
    asyncio.run(scenario())


def test_a_queued_request_that_waits_too_long_gets_503():
    async def scenario() -> None:
        slots = FakeSlots()
        plugin = plugin_with(slots, limit=1, queue=1, queue_timeout=0.05, retry_after=3)
        assert plugin.access(request()) is None
        late = request()
        answer = await plugin.access(late)
        assert refused(answer) == (503, "Too many concurrent requests")
        assert answer.headers == [("Retry-After", "3")]
        finish(plugin, late)  # its log: nothing to give back
        assert slots.releases == 0
    asyncio.run(scenario())


def test_a_client_gone_while_queued_leaves_the_queue_and_frees_nothing_twice():
    async def scenario() -> None:
        slots = FakeSlots()
        plugin = plugin_with(slots, limit=1, queue=1, queue_timeout=5)
        holder = request()
        plugin.access(holder)
        gone = request()
        task = asyncio.ensure_future(plugin.access(gone))
        await asyncio.sleep(0)
        key = next(iter(slots.waiting))
        assert len(slots.waiting[key]) == 1
        finish(plugin, gone)  # the exchange ended (client closed): the log hook runs
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(slots.waiting[key]) == 0 and slots.queued[key] == 0
        finish(plugin, holder)
        assert slots.active[key] == 0 and slots.releases == 1
        # the queue has room again
        assert plugin.access(request()) is None
    asyncio.run(scenario())


def test_a_wait_that_starts_after_the_exchange_ended_does_not_queue():
    async def scenario() -> None:
        slots = FakeSlots()
        plugin = plugin_with(slots, limit=1, queue=1, queue_timeout=5)
        plugin.access(request())
        late = request()
        pending = plugin.access(late)  # the runner would start this task later...
        finish(plugin, late)           # ...but the client went away first
        assert await pending is None
        key = next(iter(slots.waiting))
        assert not slots.waiting[key] and slots.releases == 0
        assert slots.queued[key] == 0  # the queue place taken at once was given back
    asyncio.run(scenario())


def test_a_websocket_handshake_takes_a_slot_like_any_request():
    """Handshake headers are no way around the limit (a review sent them to a plain HTTP
    upstream and got 40 requests in flight past a limit of 3)."""
    slots = FakeSlots()
    plugin = plugin_with(slots, limit=1)
    assert plugin.access(request()) is None
    handshake = request()
    handshake._ex.ws_key = b"dGhlIHNhbXBsZSBub25jZQ=="
    answer = plugin.access(handshake)
    assert answer is not None and answer.status == 503


# ------------------------------------------------------------------ with the real engine
def test_with_the_engine_a_gone_client_gives_its_queue_place_back():
    from guichet.limits.process import ProcessCounters

    async def scenario() -> None:
        engine = ProcessCounters()
        plugin = plugin_with(engine, limit=1, queue=1, queue_timeout=5)
        holder = request()
        assert plugin.access(holder) is None
        key = plugin._prefix + "service:s-1"
        gone = request()
        task = asyncio.ensure_future(plugin.access(gone))
        await asyncio.sleep(0.01)
        assert (engine.book.active(key), engine.book.queued(key)) == (1, 1)
        assert refused(plugin.access(request())) == (503, "Too many concurrent requests")
        finish(plugin, gone)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.book.queued(key) == 0
        # a wait that starts after its exchange ended gives its place back too
        late = request()
        pending = plugin.access(late)
        assert engine.book.queued(key) == 1
        finish(plugin, late)
        assert await pending is None and engine.book.queued(key) == 0
        # the queued request gets the slot the holder gives back
        waiter = request()
        task = asyncio.ensure_future(plugin.access(waiter))
        await asyncio.sleep(0.01)
        finish(plugin, holder)
        assert await task is None and CTX_LEASE in waiter.ctx
        finish(plugin, waiter)
        assert (engine.book.active(key), engine.book.queued(key)) == (0, 0)
    asyncio.run(scenario())
