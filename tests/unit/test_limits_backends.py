"""Counter backends in one process: ProcessCounters, the node table, slots and queues,
CounterBackends and BuildEnv's default."""

from __future__ import annotations

import asyncio
import os

import pytest

from guichet.limits import CountersUnavailable, Limit
from guichet.limits.backends import CounterBackends
from guichet.limits.node import NodeCounters, NodeTable
from guichet.limits.process import ProcessCounters


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table(tmp_path):
    t = NodeTable.create(1024, directory=str(tmp_path))
    yield t
    t.close()
    t.unlink()


def run(coro):
    return asyncio.run(coro)


# -- ProcessCounters -------------------------------------------------------------------
def test_process_counters_full_raise_unavailable_then_reuse_expired_entries() -> None:
    clock = Clock(1000.0)
    c = ProcessCounters(max_entries=3, clock=clock)
    for i in range(3):
        assert c.hit([Limit(f"k{i}", 5, 10)]).allowed
    with pytest.raises(CountersUnavailable, match="full"):
        c.hit([Limit("k3", 5, 10)])
    assert c.tally["table_full"] == 1
    assert c.hit([Limit("k0", 5, 10)]).outcomes[0].remaining == 3  # known keys still count
    clock.now = 1010.0  # the window ended: the entries expired
    assert c.hit([Limit("k3", 5, 10)]).allowed
    assert len(c) == 1


# -- the node table in one process -----------------------------------------------------
def test_node_table_counts_like_the_algorithms(table) -> None:
    c = NodeCounters(table)
    lims = [Limit("a", 2, "hour"), Limit("b", 10, "hour", "sliding"),
            Limit("g", 5, algorithm="gcra", rate=0.001)]
    assert [c.hit(lims).allowed for _ in range(3)] == [True, True, False]
    # the refused request was not counted by b or g
    assert [o.remaining for o in c.hit(lims[1:]).outcomes] == [7, 2]
    # another mapping of the same file sees the same counters
    other = NodeCounters(NodeTable.open(table.path))
    assert not other.hit(lims[:1]).allowed
    assert other.hit(lims[1:2]).outcomes[0].remaining == 6
    other.table.close()


def test_node_table_keys_are_salted_per_table(tmp_path, table) -> None:
    other = NodeTable.create(1024, directory=str(tmp_path))
    try:
        assert other.digest("same key") != table.digest("same key")
        assert NodeTable.open(table.path).digest("same key") == table.digest("same key")
    finally:
        other.close()
        other.unlink()


def test_node_table_full_raises_unavailable_and_reuses_expired_slots(tmp_path, monkeypatch) -> None:
    import guichet.limits.node as node

    small = NodeTable.create(16, directory=str(tmp_path))
    try:
        c = NodeCounters(small)
        for i in range(16):
            assert c.hit([Limit(f"k{i}", 1, 3600)]).allowed
        with pytest.raises(CountersUnavailable, match="limits_node_slots"):
            c.hit([Limit("one too many", 1, 3600)])
        assert c.tally["table_full"] == 1
        assert small.live_keys() == 16
        # an hour later every window has ended: new keys take expired slots
        clock = Clock(__import__("time").time() + 3601)
        monkeypatch.setattr(node.time, "time", clock)
        assert c.hit([Limit("one too many", 1, 3600)]).allowed
        assert c.hit([Limit("k3", 1, 3600)]).allowed  # a new window for an old key
        assert small.live_keys(clock.now) == 2
    finally:
        small.close()
        small.unlink()


def test_node_table_rejects_a_foreign_file(tmp_path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"x" * 4096)
    with pytest.raises(ValueError, match="not a guichet node table"):
        NodeTable.open(str(path))


# -- concurrency slots (both books) ----------------------------------------------------
@pytest.fixture(params=["process", "node"])
def slot_counters(request, table):
    return ProcessCounters() if request.param == "process" else NodeCounters(table)


def counts(c, key):
    if isinstance(c, NodeCounters):
        return c.book.counts(key)
    return c.book.active(key), c.book.queued(key)


def test_free_slots_are_taken_at_once_and_release_is_idempotent(slot_counters) -> None:
    c = slot_counters
    first = c.acquire("k", 2, 0, 1.0)
    second = c.acquire("k", 2, 0, 1.0)
    assert first is not None and second is not None and not asyncio.iscoroutine(first)
    assert c.acquire("k", 2, 0, 1.0) is None  # no queue
    assert counts(c, "k") == (2, 0)
    first.release()
    first.release()  # extra calls do nothing
    assert counts(c, "k") == (1, 0)
    second.release()
    assert counts(c, "k") == (0, 0)


def test_a_waiter_gets_the_slot_a_release_frees(slot_counters) -> None:
    c = slot_counters

    async def scenario():
        held = c.acquire("k", 1, 1, 5.0)
        pending = c.acquire("k", 1, 1, 5.0)
        assert asyncio.iscoroutine(pending)
        waiter = asyncio.ensure_future(pending)
        await asyncio.sleep(0.02)
        assert counts(c, "k") == (1, 1)
        assert c.acquire("k", 1, 1, 5.0) is None  # the queue holds one
        held.release()
        lease = await waiter
        assert lease is not None
        assert counts(c, "k") == (1, 0)
        lease.release()

    run(scenario())
    assert counts(c, "k") == (0, 0)


def test_a_waiter_times_out_and_leaves_the_queue(slot_counters) -> None:
    c = slot_counters

    async def scenario():
        loop = asyncio.get_running_loop()
        held = c.acquire("k", 1, 2, 1.0)
        started = loop.time()
        assert await c.acquire("k", 1, 2, 0.1) is None
        assert loop.time() - started >= 0.1
        assert counts(c, "k") == (1, 0)
        held.release()

    run(scenario())
    assert c.tally["slots_timed_out"] == 1


def test_a_cancelled_waiter_leaves_the_queue(slot_counters) -> None:
    c = slot_counters

    async def scenario():
        held = c.acquire("k", 1, 1, 1.0)
        waiter = asyncio.ensure_future(c.acquire("k", 1, 1, 10.0))
        await asyncio.sleep(0.02)
        assert counts(c, "k") == (1, 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert counts(c, "k") == (1, 0)
        held.release()

    run(scenario())


def test_zero_timeout_never_queues(slot_counters) -> None:
    c = slot_counters
    held = c.acquire("k", 1, 5, 0)
    assert c.acquire("k", 1, 5, 0) is None
    held.release()


# -- CounterBackends and BuildEnv ------------------------------------------------------
def test_backends_share_one_local_and_one_redis_client_per_settings(table) -> None:
    from guichet.limits.redis import RedisCounters, RedisSettings

    backends = CounterBackends(table)
    assert isinstance(backends.local(), NodeCounters)
    assert backends.local() is backends.local()
    a = backends.redis(RedisSettings(host="127.0.0.1", password="secret"))
    assert isinstance(a, RedisCounters)
    assert backends.redis(RedisSettings(host="127.0.0.1", password="secret")) is a
    assert backends.redis(RedisSettings(host="127.0.0.1", database=3)) is not a
    assert a._client is None  # nothing connects before the first hit
    assert "secret" not in repr(RedisSettings(password="secret"))
    assert set(backends.tally()) == {"local", "redis 127.0.0.1:6379/0", "redis 127.0.0.1:6379/3"}
    run(backends.close())


def test_backends_without_a_node_table_are_process_local() -> None:
    from guichet.plugins.consumers import ConsumerDirectory
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.stores import Stores

    assert isinstance(CounterBackends.for_node(None).local(), ProcessCounters)
    env = BuildEnv(ConsumerDirectory.__new__(ConsumerDirectory), None, Stores())
    assert isinstance(env.counters.local(), ProcessCounters)


def test_backends_for_node_map_the_masters_table(table) -> None:
    backends = CounterBackends.for_node(table.path)
    try:
        assert isinstance(backends.local(), NodeCounters)
        assert backends.local().table.path == table.path
        assert backends.local().table.pid == os.getpid()
    finally:
        run(backends.close())
