"""The embedded quota store: one SQLite file shared by every worker of a node.

Rules:

* One table, ``quota_usage (plan, consumer, period, period_start, period_end, used)``,
  primary key ``(plan, consumer, period, period_start)``, created if missing. WAL
  journal, ``synchronous`` NORMAL by default (``?synchronous=full`` in the URL for an
  fsync per commit).
* A consume is ``INSERT ... ON CONFLICT DO UPDATE SET used = used + 1 WHERE used <
  limit RETURNING used`` inside a ``BEGIN IMMEDIATE`` transaction: SQLite holds the
  file's write lock from the check to the increment, so the workers (processes) of a
  node never admit more than the limit together. No row returned means refused; the
  stored count is then read in the same transaction.
* Group commit on the event loop: the consumes of the requests that arrive in one turn
  of the worker's event loop wait for the end of that turn and go into one transaction
  (at most ``BATCH``), committed, and only then answered. With ``synchronous=normal`` a
  commit is a write to the WAL (no fsync), a few microseconds; nothing else blocks the
  loop: the write lock is taken without waiting (``busy_timeout`` 0), and when another
  worker holds it the batch is tried again a moment later (from 0.2 ms, doubling up to
  5 ms), without blocking. A request is let through only once its count is committed, so
  a crash of the gateway loses no count of an admitted request (a committed transaction
  is in the WAL, which survives the process); a crash can only leave counted some
  requests that were not answered yet (never more than the limit).
* WAL checkpoints (copying the WAL into the database file, with its fsyncs) run in a
  thread of each worker every ``CHECKPOINT_EVERY`` seconds (``PRAGMA wal_checkpoint
  (PASSIVE)``), never on the event loop (``wal_autocheckpoint`` is off on the loop's
  connection).
* Bounded: more than ``MAX_PENDING`` consumes waiting, a consume not committed within the
  store's ``timeout`` (the lock held elsewhere all that time), or any SQLite error (a
  full disk, a file that cannot be opened) raise ``QuotaStoreUnavailable`` for the
  requests concerned. A file that could not be opened is tried again at most once a
  second.
* Windows that ended more than ``KEEP_ENDED`` ago are deleted when the store opens. Read
  only use (``guichet usage``) creates nothing: a missing file reads as zeros.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from typing import Sequence

from guichet.quotas import Consumed, QuotaKey, QuotaStoreUnavailable, StoreUrl, redact

log = logging.getLogger("guichet.quotas.sqlite")

BATCH = 256
MAX_PENDING = 4096
KEEP_ENDED = 7 * 86400.0  # seconds a finished window's row is kept (for inspection)
RETRY_OPEN = 1.0
OPEN_LOG_EVERY = 10.0  # seconds between two log lines about a file that cannot be opened
CHECKPOINT_EVERY = 0.5
FIRST_BACKOFF, MAX_BACKOFF = 0.0002, 0.005

SCHEMA = """CREATE TABLE IF NOT EXISTS quota_usage (
    plan TEXT NOT NULL,
    consumer TEXT NOT NULL,
    period TEXT NOT NULL,
    period_start TEXT NOT NULL,
    period_end REAL NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (plan, consumer, period, period_start)
) WITHOUT ROWID"""
CONSUME = """INSERT INTO quota_usage (plan, consumer, period, period_start, period_end, used)
VALUES (?, ?, ?, ?, ?, 1)
ON CONFLICT (plan, consumer, period, period_start) DO UPDATE SET used = used + 1
WHERE used < ?
RETURNING used"""
READ = """SELECT used FROM quota_usage
WHERE plan = ? AND consumer = ? AND period = ? AND period_start = ?"""

# one waiting consume: (key, limit, future, deadline on the loop's clock)
Pending = tuple[QuotaKey, int, "asyncio.Future[Consumed]", float]


class SqliteQuotaStore:
    def __init__(self, parsed: StoreUrl, *, timeout: float = 2.0,
                 read_only: bool = False) -> None:
        self.path = parsed.path
        self.url = redact(parsed.url)
        self.synchronous = parsed.options.get("synchronous", "normal").upper()
        self.timeout = timeout
        self.read_only = read_only  # guichet usage: never creates the file nor the table
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None
        self._open_error: str | None = None
        self._open_at = -RETRY_OPEN
        self._open_logged = -OPEN_LOG_EVERY
        self._pending: list[Pending] = []
        self._scheduled = False
        self._backoff = FIRST_BACKOFF
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self.read_only:
            return
        # The first open may wait for other workers preparing the file (up to the
        # timeout): in a thread, so the event loop keeps serving meanwhile. Later opens
        # (after a failure) happen on the loop and never wait for the lock.
        self._open_at = time.monotonic()
        try:
            self._conn = await self._loop.run_in_executor(None, self._open, self.timeout)
        except (sqlite3.Error, OSError) as exc:
            self._open_failed(exc)  # logged; tried again by the next requests
        self._checkpointer = threading.Thread(target=self._checkpoints, daemon=True,
                                              name="guichet-quota-checkpoint")
        self._checkpointer.start()

    async def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        self._fail(self._pending, QuotaStoreUnavailable("the quota store was closed"))
        self._pending = []
        thread, self._checkpointer = self._checkpointer, None
        if thread is not None:
            self._stop.set()
            await loop.run_in_executor(None, thread.join, 5.0)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ requests
    def consume(self, key: QuotaKey, limit: int) -> "asyncio.Future[Consumed]":
        loop = self._loop
        if loop is None:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(QuotaStoreUnavailable("the quota store is not started"))
            return future
        future = loop.create_future()
        if len(self._pending) >= MAX_PENDING:
            future.set_exception(QuotaStoreUnavailable(
                f"more than {MAX_PENDING} quota updates waiting for {self.url}"))
            return future
        self._pending.append((key, limit, future, loop.time() + self.timeout))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    async def read(self, keys: Sequence[QuotaKey]) -> list[int]:
        if self.read_only and not os.path.exists(self.path):
            return [0] * len(keys)  # no gateway has counted anything there yet
        if self._loop is None:
            raise QuotaStoreUnavailable("the quota store is not started")
        conn = self._connection()
        try:
            return [_read(conn, key) for key in keys]
        except sqlite3.Error as exc:
            raise QuotaStoreUnavailable(f"quota store {self.url}: {exc}") from None

    # ------------------------------------------------------------------ group commit
    def _flush(self) -> None:
        self._scheduled = False
        loop = self._loop
        if loop is None or not self._pending:
            return
        batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
        try:
            conn = self._connection()
        except QuotaStoreUnavailable as exc:
            self._fail(batch, exc)
        else:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    self._fail(batch, QuotaStoreUnavailable(f"quota store {self.url}: {exc}"))
                else:  # another worker writes: try again in a moment, without waiting here
                    self._retry_later(batch, loop)
                    return
            else:
                self._commit(conn, batch)
                self._backoff = FIRST_BACKOFF
        if self._pending and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)

    def _commit(self, conn: sqlite3.Connection, batch: list[Pending]) -> None:
        try:
            answers = [_consume(conn, key, limit) for key, limit, _, _ in batch]
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._fail(batch, QuotaStoreUnavailable(f"quota store {self.url}: {exc}"))
            return
        for (_, _, future, _), answer in zip(batch, answers):
            if not future.done():
                future.set_result(answer)

    def _retry_later(self, batch: list[Pending], loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        late = [item for item in batch if item[3] <= now]
        if late:
            self._fail(late, QuotaStoreUnavailable(
                f"quota store {self.url}: locked by another process for {self.timeout} s"))
        self._pending[:0] = [item for item in batch if item[3] > now]
        if self._pending:
            self._scheduled = True
            loop.call_later(self._backoff, self._flush)
            self._backoff = min(MAX_BACKOFF, self._backoff * 2)

    @staticmethod
    def _fail(items: list[Pending], exc: QuotaStoreUnavailable) -> None:
        for _, _, future, _ in items:
            if not future.done():
                future.set_exception(exc)

    # ------------------------------------------------------------------ the file
    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        now = time.monotonic()
        if self._open_error is not None and now - self._open_at < RETRY_OPEN:
            raise QuotaStoreUnavailable(self._open_error)
        self._open_at = now
        try:
            self._conn = self._open(0.0)
        except (sqlite3.Error, OSError) as exc:
            self._open_failed(exc)
            raise QuotaStoreUnavailable(self._open_error) from None
        self._open_error = None
        return self._conn

    def _open_failed(self, exc: BaseException) -> None:
        error = f"cannot open the quota store {self.url}: {exc}"
        now = time.monotonic()
        if error != self._open_error or now - self._open_logged >= OPEN_LOG_EVERY:
            log.error("%s", error)  # at most every OPEN_LOG_EVERY s while it stays so
            self._open_logged = now
        self._open_error = error

    def _open(self, timeout: float) -> sqlite3.Connection:
        """Open and prepare the file, waiting up to ``timeout`` for the lock (0 on the
        event loop); then the connection never waits for the lock again."""
        conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            if not self.read_only:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpoint thread's job
                conn.execute(SCHEMA)
                try:
                    conn.execute("DELETE FROM quota_usage WHERE period_end < ?",
                                 (time.time() - KEEP_ENDED,))
                except sqlite3.OperationalError as exc:
                    if not _busy(exc):
                        raise  # busy: another worker writes; old rows go next time
            conn.execute("PRAGMA busy_timeout = 0")
        except BaseException:
            conn.close()
            raise
        return conn

    def _checkpoints(self) -> None:
        """The checkpoint thread: copy the WAL into the database file now and then, so
        the WAL stays small and the event loop never does it."""
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(CHECKPOINT_EVERY):
            if self._conn is None:
                continue  # the loop has not opened (or prepared) the file yet
            try:
                if conn is None:
                    conn = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                           check_same_thread=False)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                log.debug("quota store checkpoint skipped: %s", exc)
        if conn is not None:
            conn.close()


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _consume(conn: sqlite3.Connection, key: QuotaKey, limit: int) -> Consumed:
    w = key.window
    row = conn.execute(CONSUME, (key.plan, key.consumer, w.period, w.label, w.end_ts,
                                 limit)).fetchone()
    if row is not None:
        return Consumed(True, row[0], limit, w)
    return Consumed(False, _read(conn, key), limit, w)


def _read(conn: sqlite3.Connection, key: QuotaKey) -> int:
    w = key.window
    try:
        row = conn.execute(READ, (key.plan, key.consumer, w.period, w.label)).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0  # read-only use of a file no gateway has written yet
        raise
    return int(row[0]) if row else 0
