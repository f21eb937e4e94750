"""Quota windows, store URLs and the SQLite quota store (guichet.quotas)."""

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from guichet.quotas import (QuotaKey, QuotaStoreUnavailable, SharedStores, StoreUrlError,
                            open_store, parse_store_url, redact, resolve_store_url)
from guichet.quotas import sqlite as sqlite_store
from guichet.quotas.periods import WindowClock, window

SRC = str(Path(__file__).resolve().parents[2] / "src")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


# ------------------------------------------------------------------ periods
@pytest.mark.parametrize("period, moment, start, resets_at", [
    ("day", "2024-05-08 13:45:12", "2024-05-08", "2024-05-09T00:00:00Z"),
    ("day", "2024-05-08 00:00:00", "2024-05-08", "2024-05-09T00:00:00Z"),
    ("day", "2024-05-08 23:59:59.999", "2024-05-08", "2024-05-09T00:00:00Z"),
    ("day", "2024-12-31 23:00:00", "2024-12-31", "2025-01-01T00:00:00Z"),
    ("week", "2024-05-08 13:45:12", "2024-05-06", "2024-05-13T00:00:00Z"),  # a Wednesday
    ("week", "2024-05-06 00:00:00", "2024-05-06", "2024-05-13T00:00:00Z"),  # Monday 00:00
    ("week", "2024-05-12 23:59:59", "2024-05-06", "2024-05-13T00:00:00Z"),  # Sunday night
    ("week", "2025-01-01 12:00:00", "2024-12-30", "2025-01-06T00:00:00Z"),  # across years
    ("month", "2024-05-08 13:45:12", "2024-05-01", "2024-06-01T00:00:00Z"),
    ("month", "2024-02-29 23:59:59", "2024-02-01", "2024-03-01T00:00:00Z"),  # leap year
    ("month", "2024-12-15 00:00:00", "2024-12-01", "2025-01-01T00:00:00Z"),
    ("month", "2025-01-01 00:00:00", "2025-01-01", "2025-02-01T00:00:00Z"),
])
def test_windows_are_utc_calendar_periods(period, moment, start, resets_at):
    w = window(period, ts(moment))
    assert (w.period, w.label, w.resets_at) == (period, start, resets_at)
    assert w.start.timestamp() <= ts(moment) < w.end_ts
    assert w.seconds_left(ts(moment)) == w.end_ts - ts(moment)


def test_window_ignores_the_local_time_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14
    time.tzset()
    try:
        assert window("day", ts("2024-05-08 13:00:00")).label == "2024-05-08"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_window_clock_moves_to_the_next_window_at_the_boundary():
    clock = WindowClock("day")
    first = clock.at(ts("2024-05-08 23:59:59"))
    assert clock.at(ts("2024-05-08 12:00:00")) is first
    second = clock.at(ts("2024-05-09 00:00:00"))
    assert second.label == "2024-05-09" and second is not first
    with pytest.raises(ValueError):
        WindowClock("year")


# ------------------------------------------------------------------ URLs
def test_store_urls():
    assert parse_store_url("sqlite:///usage.db").path == "usage.db"
    assert parse_store_url("sqlite:////var/lib/g/usage.db").path == "/var/lib/g/usage.db"
    assert parse_store_url("sqlite:///u.db?synchronous=full").options == {"synchronous": "full"}
    redis = parse_store_url("redis://:pw@127.0.0.1:6379/3?prefix=t:")
    assert (redis.options, redis.url) == ({"prefix": "t:"}, "redis://:pw@127.0.0.1:6379/3")
    pg = parse_store_url("postgresql://u@h/db?table=my_quota&sslmode=disable")
    assert (pg.options, pg.url) == ({"table": "my_quota"}, "postgresql://u@h/db?sslmode=disable")
    for bad in ("mysql://h/db", "sqlite://host/usage.db", "sqlite:///", "redis:///0",
                "postgresql://h/db?table=Robert');DROP", "sqlite:///u.db?synchronous=off",
                "sqlite:///u.db?mode=ro"):
        with pytest.raises(StoreUrlError):
            parse_store_url(bad)


def test_relative_sqlite_paths_are_relative_to_the_config_directory():
    assert resolve_store_url("sqlite:///guichet-usage.db", "/etc/guichet") == \
        "sqlite:////etc/guichet/guichet-usage.db"
    assert resolve_store_url("sqlite:///../u.db?synchronous=full", "/etc/guichet") == \
        "sqlite:////etc/u.db?synchronous=full"
    assert resolve_store_url("sqlite:////abs/u.db", "/etc") == "sqlite:////abs/u.db"
    assert resolve_store_url("redis://h:6379/0", "/etc") == "redis://h:6379/0"


def test_passwords_never_show():
    assert redact("redis://:s3cret@10.0.0.1:6379/0") == "redis://:***@10.0.0.1:6379/0"
    assert redact("postgresql://app:s3cret@[::1]:5432/db?table=q") == \
        "postgresql://app:***@[::1]:5432/db?table=q"
    assert redact("sqlite:////tmp/u.db") == "sqlite:////tmp/u.db"
    # a password given as a query option (asyncpg, libpq and redis-py accept it)
    assert redact("postgresql://app@h:5432/db?password=s3cret&table=q") == \
        "postgresql://app@h:5432/db?password=***&table=q"
    assert redact("postgresql://app@h/db?sslpassword=s3cret") == \
        "postgresql://app@h/db?sslpassword=***"
    assert "s3cret" not in open_store("postgresql://app@h/db?password=s3cret").url
    store = open_store("redis://:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in store.url


# ------------------------------------------------------------------ SQLite
def key(consumer: str = "c", plan: str = "p", period: str = "day") -> QuotaKey:
    return QuotaKey(plan, consumer, window(period, time.time()))


def run(coro):
    return asyncio.run(coro)


def test_sqlite_admits_exactly_the_limit_to_concurrent_requests(tmp_path):
    async def scenario():
        store = open_store(f"sqlite:///{tmp_path}/u.db")
        await store.start()
        try:
            answers = await asyncio.gather(*(store.consume(key(), 40) for _ in range(100)))
            other = await store.consume(key("d"), 40)
            counts = await store.read([key(), key("d"), key("nobody")])
        finally:
            await store.close()
        return answers, other, counts

    answers, other, counts = run(scenario())
    admitted = [a for a in answers if a.allowed]
    assert len(admitted) == 40
    assert sorted(a.used for a in admitted) == list(range(1, 41))  # one place each
    refused = [a for a in answers if not a.allowed]
    assert {(a.used, a.remaining, a.limit) for a in refused} == {(40, 0, 40)}
    assert other.allowed and other.used == 1  # counted per consumer
    assert counts == [40, 1, 0]  # refusals are not counted


def test_sqlite_counts_per_plan_and_window_and_survive_a_reopen(tmp_path):
    url = f"sqlite:///{tmp_path}/u.db"

    async def use(n: int, k: QuotaKey, limit: int = 5) -> list[bool]:
        store = open_store(url)
        await store.start()
        try:
            return [(await store.consume(k, limit)).allowed for _ in range(n)]
        finally:
            await store.close()

    assert run(use(3, key())) == [True] * 3
    assert run(use(4, key())) == [True, True, False, False]  # 3 + 2 = 5 after the reopen
    assert run(use(1, key(plan="q"))) == [True]
    assert run(use(1, key(period="month"))) == [True]
    assert run(use(1, key(), limit=9)) == [True]  # a raised limit admits more
    assert run(use(1, key(), limit=3)) == [False]  # a lowered one refuses


def test_sqlite_is_exact_across_processes(tmp_path):
    """Several processes (the workers of a node) on one file admit exactly the limit."""
    script = textwrap.dedent(f"""
        import asyncio, sys, time
        sys.path.insert(0, {SRC!r})
        from guichet.quotas import QuotaKey, open_store
        from guichet.quotas.periods import window

        async def main():
            store = open_store({f"sqlite:///{tmp_path}/u.db"!r})
            await store.start()
            k = QuotaKey("plan", "consumer", window("day", time.time()))
            while time.time() < float(sys.argv[1]):
                await asyncio.sleep(0.005)
            answers = await asyncio.gather(*(store.consume(k, 150) for _ in range(120)))
            await store.close()
            print(sum(a.allowed for a in answers))

        asyncio.run(main())
    """)
    go = str(time.time() + 1.5)  # they all start at once, after their imports
    procs = [subprocess.Popen([sys.executable, "-c", script, go], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(4)]
    outputs = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err.decode()
    admitted = [int(out) for out, _ in outputs]
    assert sum(admitted) == 150  # 480 asked for, from 4 processes

    async def read():
        store = open_store(f"sqlite:///{tmp_path}/u.db")
        await store.start()
        try:
            return await store.read([QuotaKey("plan", "consumer", window("day", time.time()))])
        finally:
            await store.close()

    assert run(read()) == [150]


def test_sqlite_store_that_cannot_open_is_unavailable(tmp_path):
    async def scenario():
        store = open_store(f"sqlite:///{tmp_path}/missing-dir/u.db")
        await store.start()
        try:
            with pytest.raises(QuotaStoreUnavailable) as info:
                await store.consume(key(), 5)
            return str(info.value)
        finally:
            await store.close()

    assert "cannot open the quota store" in run(scenario())


def test_sqlite_queue_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "MAX_PENDING", 10)

    async def scenario():
        store = open_store(f"sqlite:///{tmp_path}/u.db")
        await store.start()
        try:
            return await asyncio.gather(*(store.consume(key(), 100) for _ in range(25)),
                                        return_exceptions=True)
        finally:
            await store.close()

    answers = run(scenario())
    assert sum(isinstance(a, QuotaStoreUnavailable) for a in answers) == 15
    assert sum(not isinstance(a, Exception) and a.allowed for a in answers) == 10


def test_reading_a_file_no_gateway_wrote_neither_fails_nor_creates_it(tmp_path):
    async def scenario():
        store = sqlite_store.SqliteQuotaStore(parse_store_url(f"sqlite:///{tmp_path}/u.db"),
                                              read_only=True)
        await store.start()
        try:
            return await store.read([key(), key("d")])
        finally:
            await store.close()

    assert run(scenario()) == [0, 0]
    assert not os.path.exists(tmp_path / "u.db")


def test_sqlite_file_is_in_wal_mode_with_the_chosen_synchronous(tmp_path):
    import sqlite3

    async def use(url: str) -> None:
        store = open_store(url)
        await store.start()
        await store.consume(key(), 5)
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        await store.close()

    run(use(f"sqlite:///{tmp_path}/u.db?synchronous=full"))
    conn = sqlite3.connect(tmp_path / "u.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_shared_stores_close_with_their_last_borrower(tmp_path):
    async def scenario():
        shared = SharedStores()
        url = f"sqlite:///{tmp_path}/u.db"
        a = shared.acquire(url, 2.0)
        b = shared.acquire(url, 2.0)
        assert a is b
        await a.start()
        await shared.release(a)
        assert (await a.consume(key(), 5)).allowed  # still open for the other borrower
        await shared.release(b)
        with pytest.raises(QuotaStoreUnavailable):
            await a.consume(key(), 5)
        assert shared.acquire(url, 2.0) is not a  # a new one once closed

    run(scenario())


def test_the_checkpoint_thread_copies_the_wal_into_the_database_file(tmp_path, monkeypatch):
    """Checkpoints (and their fsyncs) happen off the event loop, every CHECKPOINT_EVERY."""
    import shutil
    import sqlite3

    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 0.05)

    def rows_in_main_file() -> int:
        shutil.copy(tmp_path / "u.db", tmp_path / "copy.db")  # the file alone, no WAL
        conn = sqlite3.connect(tmp_path / "copy.db")
        try:
            return conn.execute("SELECT count(*) FROM quota_usage").fetchone()[0]
        except sqlite3.OperationalError:
            return 0  # not even the table yet
        finally:
            conn.close()

    async def scenario():
        store = open_store(f"sqlite:///{tmp_path}/u.db")
        await store.start()
        try:
            for i in range(20):
                await store.consume(key(f"c{i}"), 5)
            assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
            deadline = time.monotonic() + 5
            while rows_in_main_file() < 20 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return rows_in_main_file()
        finally:
            await store.close()

    assert run(scenario()) == 20


def test_a_misspelt_redis_option_is_refused_when_the_settings_load():
    """redis-py would take it as a connection argument and fail every request; a review
    started a gateway with ``?prefx=`` that metered nothing."""
    from guichet.quotas import StoreUrlError, parse_store_url

    with pytest.raises(StoreUrlError, match="prefx"):
        parse_store_url("redis://127.0.0.1:6379/0?prefx=a:")
    with pytest.raises(StoreUrlError) as caught:
        parse_store_url("redis://:s3cret@127.0.0.1:6379/0?bogus=1")
    assert "s3cret" not in str(caught.value)
    # redis-py's own options and guichet's prefix are fine
    assert parse_store_url("redis://127.0.0.1:6379/0?prefix=a:&socket_timeout=1").options == \
        {"prefix": "a:"}
