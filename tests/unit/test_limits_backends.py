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


def test_node_table_full_evicts_the_rate_counter_expiring_first(tmp_path, monkeypatch) -> None:
    import guichet.limits.node as node

    small = NodeTable.create(16, directory=str(tmp_path))
    try:
        c = NodeCounters(small)
        for i in range(15):
            assert c.hit([Limit(f"k{i}", 1, 3600)]).allowed
        assert c.hit([Limit("soon", 1, 60)]).allowed  # its window ends first
        assert not c.hit([Limit("soon", 1, 60)]).allowed
        assert small.live_keys() == 16
        # no free slot: the new key evicts the counter closest to the end of its window
        assert c.hit([Limit("one too many", 1, 3600)]).allowed
        assert c.tally["table_evictions"] == 1
        assert "table_full" not in c.tally
        assert not c.hit([Limit("one too many", 1, 3600)]).allowed  # counted exactly
        assert not c.hit([Limit("k3", 1, 3600)]).allowed  # the others were kept
        # the evicted key starts again from zero: lenient, never stricter
        assert c.hit([Limit("soon", 1, 60)]).allowed
        assert c.tally["table_evictions"] == 2
        assert small.live_keys() == 16
        # an hour later every window has ended: new keys take expired slots, no eviction
        clock = Clock(__import__("time").time() + 3601)
        monkeypatch.setattr(node.time, "time", clock)
        assert c.hit([Limit("later", 1, 3600)]).allowed
        assert c.hit([Limit("k3", 1, 3600)]).allowed  # a new window for an old key
        assert small.live_keys(clock.now) == 2
        assert c.tally["table_evictions"] == 2
    finally:
        small.close()
        small.unlink()


def test_node_table_never_evicts_busy_concurrency_slots(tmp_path) -> None:
    small = NodeTable.create(16, directory=str(tmp_path))
    try:
        c = NodeCounters(small)
        leases = [c.acquire(f"c{i}", 1, 0, 0) for i in range(8)]  # 8 totals + 8 holders
        assert all(lease is not None for lease in leases)
        with pytest.raises(CountersUnavailable, match="limits_node_slots"):
            c.hit([Limit("rate", 1, 3600)])
        with pytest.raises(CountersUnavailable):
            c.acquire("c-new", 1, 0, 0)
        assert c.tally["table_full"] == 2
        assert "table_evictions" not in c.tally
        assert all(c.book.counts(f"c{i}") == (1, 0) for i in range(8))
        leases[0].release()  # idle slots (expires 0) are free again: no eviction needed
        assert c.hit([Limit("rate", 1, 3600)]).allowed
        assert "table_evictions" not in c.tally
        # one free slot left for two: the rate counter is evicted, never a busy slot
        lease = c.acquire("c-new", 1, 0, 0)
        assert lease is not None
        assert c.tally["table_evictions"] == 1
        assert c.book.counts("c-new") == (1, 0)
        assert all(c.book.counts(f"c{i}") == (1, 0) for i in range(1, 8))
        with pytest.raises(CountersUnavailable):
            c.hit([Limit("rate", 1, 3600)])  # nothing evictable left
        lease.release()
    finally:
        small.close()
        small.unlink()


def test_stale_tables_of_dead_masters_are_removed(tmp_path) -> None:
    import subprocess

    from guichet.limits.node import remove_stale_tables

    child = subprocess.Popen(["true"])
    child.wait()  # a pid that no longer runs
    dead = tmp_path / f"guichet-limits-{child.pid}-0123456789ab"
    live = tmp_path / f"guichet-limits-{os.getpid()}-ba9876543210"
    other = tmp_path / "guichet-limits-notes.txt"
    for path in (dead, live, other):
        path.write_bytes(b"x")
    table = NodeTable.create(16, directory=str(tmp_path))  # what the master does at start
    try:
        assert not dead.exists()
        assert live.exists() and other.exists() and os.path.exists(table.path)
        assert remove_stale_tables(str(tmp_path)) == []  # this process is alive
    finally:
        table.close()
        table.unlink()


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


def test_backends_sharing_a_name_are_summed_in_the_tally() -> None:
    from guichet.limits.redis import RedisSettings

    backends = CounterBackends()
    a = backends.redis(RedisSettings(port=6380, password="one", timeout=100))
    b = backends.redis(RedisSettings(port=6380, password="two", timeout=200, username="u"))
    c = backends.redis(RedisSettings(port=6380, database=2))
    assert len({id(a), id(b), id(c)}) == 3
    a.tally.update(redis_errors=2, redis_skipped=5)
    b.tally.update(redis_errors=3, redis_recoveries=1)
    c.tally.update(redis_errors=7)
    assert backends.tally() == {
        "redis 127.0.0.1:6380/0": {"redis_errors": 5, "redis_skipped": 5, "redis_recoveries": 1},
        "redis 127.0.0.1:6380/2": {"redis_errors": 7}}
    run(backends.close())


def test_prune_closes_the_clients_no_snapshot_uses_and_keeps_their_counts() -> None:
    from guichet.limits.redis import RedisSettings

    old, new = RedisSettings(timeout=100), RedisSettings(timeout=200)
    backends = CounterBackends()
    first = backends.start_build()
    a = backends.redis(old)
    assert first == {old}
    second = backends.start_build()
    assert backends.redis(new) is not a and second == {new}
    a.tally["redis_errors"] = 4
    closed = []

    async def close() -> None:
        closed.append(a)

    a.close = close
    assert run(backends.prune(first | second)) == 0  # both still serve
    assert run(backends.prune(set())) == 1  # the latest build is always kept
    assert closed == [a]
    assert backends.redis(new) is not None and backends.redis(old) is not a  # a new client
    assert backends.tally()["redis 127.0.0.1:6379/0"]["redis_errors"] == 4
    run(backends.close())
