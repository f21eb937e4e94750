"""The node table across real processes: exact limits, concurrency slots and their queue,
slots of a killed process given back."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time

import pytest

from guichet.limits import Limit
from guichet.limits.node import NodeCounters, NodeTable

CTX = multiprocessing.get_context("spawn")


@pytest.fixture
def table():
    t = NodeTable.create(4096)
    yield t
    t.close()
    t.unlink()


# -- children (run in spawned processes) -------------------------------------------------
def _hammer(path: str, threads: int, hits: int, limits: list[Limit], start, results) -> None:
    counters = NodeCounters(NodeTable.open(path))
    admitted = [0] * threads

    def loop(i: int) -> None:
        for _ in range(hits):
            if counters.hit(limits).allowed:
                admitted[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    start.wait()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    results.put(sum(admitted))


def _clients(path: str, key: str, limit: int, queue: int, timeout: float, tasks: int,
             hold: float, start, results, current, peak, lock) -> None:
    counters = NodeCounters(NodeTable.open(path))

    async def one() -> str:
        result = counters.acquire(key, limit, queue, timeout)
        if result is not None and not hasattr(result, "release"):
            result = await result
        if result is None:
            return "refused"
        with lock:
            current.value += 1
            peak.value = max(peak.value, current.value)
        await asyncio.sleep(hold)
        with lock:
            current.value -= 1
        result.release()
        return "served"

    async def main() -> list[str]:
        return await asyncio.gather(*(one() for _ in range(tasks)))

    start.wait()
    outcomes = asyncio.run(main())
    results.put((outcomes.count("served"), outcomes.count("refused")))


def _hold_and_die(path: str, key: str, ready) -> None:
    counters = NodeCounters(NodeTable.open(path))

    async def main() -> None:
        leases = [counters.acquire(key, 2, 5, 60.0) for _ in range(2)]
        assert all(lease is not None for lease in leases)
        waiter = asyncio.ensure_future(counters.acquire(key, 2, 5, 60.0))
        await asyncio.sleep(0.05)
        ready.set()
        await waiter

    asyncio.run(main())


def _flood(path: str, name: str, keys: int, start, results) -> None:
    """Distinct keys, one hit each (a client sending a new limit_by value per request)."""
    counters = NodeCounters(NodeTable.open(path))
    start.wait()
    unavailable = 0
    for i in range(keys):
        try:
            counters.hit([Limit(f"flood:{name}:{i}", 5, "hour")])
        except Exception:  # noqa: BLE001 - counted: the test asserts there is none
            unavailable += 1
    results.put((unavailable, counters.tally.get("table_evictions", 0)))


def _run(target, args, count: int) -> list:
    procs = [CTX.Process(target=target, args=args, daemon=True) for _ in range(count)]
    for p in procs:
        p.start()
    return procs


def _collect(procs, results, count: int) -> list:
    out = [results.get(timeout=60) for _ in range(count)]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    return out


# -- tests ------------------------------------------------------------------------------
def test_four_processes_never_admit_more_than_the_limit(table) -> None:
    start, results = CTX.Event(), CTX.Queue()
    limits = [Limit("exact", 1000, 3600)]
    procs = _run(_hammer, (table.path, 4, 400, limits, start, results), 4)
    start.set()
    admitted = _collect(procs, results, 4)
    assert sum(admitted) == 1000  # 6,400 tries, 1,000 admitted: not one more, not one less
    assert not NodeCounters(table).hit(limits).allowed


def test_several_limits_count_all_or_nothing_across_processes(table) -> None:
    start, results = CTX.Event(), CTX.Queue()
    limits = [Limit("tight", 300, 3600), Limit("loose", 5000, 3600, "sliding"),
              Limit("bucket", 400, algorithm="gcra", rate=0.001)]
    procs = _run(_hammer, (table.path, 3, 250, limits, start, results), 4)
    start.set()
    assert sum(_collect(procs, results, 4)) == 300
    outcomes = NodeCounters(table).hit(limits[1:]).outcomes
    # refused requests were counted by no limit: loose and bucket saw 300 each, then this one
    assert [o.remaining for o in outcomes] == [5000 - 301, 400 - 301]


def test_concurrency_slots_and_queue_are_bounded_node_wide(table) -> None:
    start, results = CTX.Event(), CTX.Queue()
    current, peak, lock = CTX.Value("i", 0, lock=False), CTX.Value("i", 0, lock=False), CTX.Lock()
    key, limit, queue = "conc", 3, 4
    samples: list[tuple[int, int]] = []
    monitor_stop = threading.Event()
    counters = NodeCounters(table)

    def monitor() -> None:
        while not monitor_stop.is_set():
            samples.append(counters.book.counts(key))
            time.sleep(0.002)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    procs = _run(_clients, (table.path, key, limit, queue, 5.0, 6, 0.03, start, results,
                            current, peak, lock), 3)
    start.set()
    try:
        outcomes = _collect(procs, results, 3)
    finally:
        monitor_stop.set()
        watcher.join()
    served = sum(s for s, _ in outcomes)
    refused = sum(r for _, r in outcomes)
    assert served + refused == 18
    assert refused > 0  # 18 at once, 3 slots + 4 queue places
    assert served >= limit + queue
    assert peak.value <= limit
    assert samples and max(a for a, _ in samples) <= limit
    assert max(q for _, q in samples) <= queue
    assert counters.book.counts(key) == (0, 0)


def test_queue_timeout_across_processes(table) -> None:
    start, results = CTX.Event(), CTX.Queue()
    current, peak, lock = CTX.Value("i", 0, lock=False), CTX.Value("i", 0, lock=False), CTX.Lock()
    counters = NodeCounters(table)
    held = counters.acquire("busy", 1, 10, 1.0)  # this process holds the only slot
    procs = _run(_clients, (table.path, "busy", 1, 10, 0.2, 3, 0.0, start, results,
                            current, peak, lock), 1)
    started = time.monotonic()
    start.set()
    assert _collect(procs, results, 1) == [(0, 3)]
    assert time.monotonic() - started >= 0.2
    assert counters.book.counts("busy") == (1, 0)
    held.release()


def test_a_release_in_another_process_wakes_a_waiter(table) -> None:
    counters = NodeCounters(table)
    held = counters.acquire("handoff", 1, 1, 1.0)
    start, results = CTX.Event(), CTX.Queue()
    current, peak, lock = CTX.Value("i", 0, lock=False), CTX.Value("i", 0, lock=False), CTX.Lock()
    procs = _run(_clients, (table.path, "handoff", 1, 1, 30.0, 1, 0.0, start, results,
                            current, peak, lock), 1)
    start.set()
    deadline = time.monotonic() + 20
    while counters.book.counts("handoff") != (1, 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counters.book.counts("handoff") == (1, 1)
    held.release()
    assert _collect(procs, results, 1) == [(1, 0)]
    assert counters.book.counts("handoff") == (0, 0)


def test_slots_of_a_killed_process_are_given_back(table) -> None:
    ready = CTX.Event()
    proc = CTX.Process(target=_hold_and_die, args=(table.path, "leak", ready), daemon=True)
    proc.start()
    try:
        assert ready.wait(30)
        counters = NodeCounters(table)
        assert counters.book.counts("leak") == (2, 1)
        assert counters.acquire("leak", 2, 0, 0) is None
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
    assert table.reclaim(proc.pid) == 3  # what the master does when a worker dies
    assert counters.book.counts("leak") == (0, 0)
    lease = counters.acquire("leak", 2, 0, 0)
    assert lease is not None
    lease.release()
    assert table.reclaim(proc.pid) == 0


def test_a_flood_of_new_keys_cannot_lock_other_keys_out_of_a_full_table() -> None:
    small = NodeTable.create(1024)
    try:
        counters = NodeCounters(small)
        idle = counters.acquire("service-b", 1, 0, 0)  # a concurrency slot, idle again:
        idle.release()  # its slot has expires 0, so the flood may take it
        start, results = CTX.Event(), CTX.Queue()
        procs = [CTX.Process(target=_flood, args=(small.path, f"p{n}", 1500, start, results),
                             daemon=True) for n in range(4)]
        for p in procs:
            p.start()
        start.set()
        outcomes = _collect(procs, results, 4)
        assert [u for u, _ in outcomes] == [0, 0, 0, 0]  # every new key got a slot
        assert sum(e for _, e in outcomes) >= 6000 - 1024  # by evicting older counters
        assert small.live_keys() >= 1000  # the table is full of live flood counters
        lease = counters.acquire("service-b", 1, 0, 0)  # not a 503
        assert lease is not None
        assert counters.acquire("service-b", 1, 0, 0) is None  # and still a limit of 1
        lease.release()
        fresh = [Limit("service-c:client", 7, "hour")]
        assert [counters.hit(fresh).allowed for _ in range(8)] == [True] * 7 + [False]
    finally:
        small.close()
        small.unlink()


# -- the gateway: the master's table, shared by its workers --------------------------------
def _gateway_config(upstream_port: int) -> str:
    return f"""
_format_version: "3.0"
services:
- name: slow
  url: http://127.0.0.1:{upstream_port}
  routes:
  - name: slow
    paths: ["/slow"]
    plugins:
    - name: concurrency-limiting
      config: {{limit: 1, queue: 0}}
"""


def _table_of(master_pid: int) -> str:
    from guichet.limits.node import default_directory

    names = [n for n in os.listdir(default_directory())
             if n.startswith(f"guichet-limits-{master_pid}-")]
    assert len(names) == 1, names
    return os.path.join(default_directory(), names[0])


def test_the_master_shares_one_table_and_takes_back_a_dead_workers_slots(
        gateway_factory, upstream) -> None:
    import httpx

    gw = gateway_factory(_gateway_config(upstream.port), workers=2)
    path = _table_of(gw.pid)
    pids = gw.status()["worker_pids"]
    for pid in pids:  # every worker maps the master's table
        with open(f"/proc/{pid}/maps") as maps:
            assert path in maps.read()
    table = NodeTable.open(path)
    try:
        slow = threading.Thread(target=lambda: _quiet_get(gw.url + "/slow/delay/20000"), daemon=True)
        slow.start()
        deadline = time.monotonic() + 10
        while not table.holders() and time.monotonic() < deadline:
            time.sleep(0.02)
        holders = table.holders()
        assert list(holders.values()) == [(1, 0)]
        holder = next(iter(holders))
        assert holder in pids
        with httpx.Client(trust_env=False, timeout=5) as client:
            assert client.get(gw.url + "/slow/echo").status_code == 503  # node-wide slot
        os.kill(holder, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = gw.status() if _alive(gw) else {}
            replaced = status.get("worker_pids", [holder])
            if status.get("status") == "ok" and holder not in replaced and len(replaced) == 2:
                break
            time.sleep(0.05)
        assert table.holders() == {}  # the master gave the dead worker's slot back
        with httpx.Client(trust_env=False, timeout=5) as client:
            assert client.get(gw.url + "/slow/echo").status_code == 200
    finally:
        table.close()
    assert gw.stop() == 0
    assert not os.path.exists(path)  # the master deletes the table when it exits


def _alive(gw) -> bool:
    try:
        gw.status()
        return True
    except Exception:  # noqa: BLE001 - 503 while the replacement starts
        return False


def _quiet_get(url: str) -> None:
    import httpx

    try:
        with httpx.Client(trust_env=False, timeout=30) as client:
            client.get(url)
    except httpx.HTTPError:
        pass  # its worker is killed mid-request
