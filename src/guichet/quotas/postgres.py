"""The PostgreSQL quota store: nodes sharing one database share their quota counts.

Rules:

* One table (``guichet_quota_usage`` unless the URL says ``?table=...``), created if
  missing: ``(plan, consumer, period, period_start, period_end, used)``, primary key
  ``(plan, consumer, period, period_start)``.
* A consume is one statement, ``INSERT ... ON CONFLICT (...) DO UPDATE SET used =
  q.used + 1 WHERE q.used < $limit RETURNING used``: PostgreSQL locks the row from the
  check to the increment, so nodes never admit more than the limit together. No row
  returned means refused (the count is then read for the answer).
* Durability is PostgreSQL's: each statement commits before the request goes on
  (``synchronous_commit = on``, the default: nothing lost).
* A pool of at most ``POOL_SIZE`` connections per worker, opened on first use; when it
  cannot be opened, requests fail fast (``QuotaStoreUnavailable``) and a new attempt is
  made at most once a second. Every statement has the store's ``timeout``. Windows that
  ended more than a week ago are deleted when the pool opens. Read-only use (``guichet
  usage``) creates and deletes nothing; a missing table reads as zero.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Sequence

from guichet.quotas import Consumed, QuotaKey, QuotaStoreUnavailable, StoreUrl, redact

DEFAULT_TABLE = "guichet_quota_usage"
POOL_SIZE = 4
RETRY_OPEN = 1.0
KEEP_ENDED = "7 days"


class PostgresQuotaStore:
    def __init__(self, parsed: StoreUrl, *, timeout: float = 2.0,
                 read_only: bool = False) -> None:
        self._dsn = parsed.url
        self.url = redact(parsed.url)
        self.table = parsed.options.get("table", DEFAULT_TABLE)  # checked by parse_store_url
        self.timeout = timeout
        self.read_only = read_only  # guichet usage: never creates the table nor deletes rows
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None
        self._failed_at = 0.0
        self._error = ""
        t = self.table
        self._schema = f"""CREATE TABLE IF NOT EXISTS {t} (
            plan text NOT NULL, consumer text NOT NULL, period text NOT NULL,
            period_start date NOT NULL, period_end timestamptz NOT NULL,
            used bigint NOT NULL,
            PRIMARY KEY (plan, consumer, period, period_start))"""
        self._consume_sql = f"""INSERT INTO {t} AS q
            (plan, consumer, period, period_start, period_end, used)
            VALUES ($1, $2, $3, $4, $5, 1)
            ON CONFLICT (plan, consumer, period, period_start)
            DO UPDATE SET used = q.used + 1 WHERE q.used < $6
            RETURNING used"""
        self._read_sql = f"""SELECT used FROM {t}
            WHERE plan = $1 AND consumer = $2 AND period = $3 AND period_start = $4"""

    async def start(self) -> None:
        if self._opening is None:
            self._opening = asyncio.Lock()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except Exception:  # noqa: BLE001
                pool.terminate()

    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            raise QuotaStoreUnavailable("the quota store is not started")
        if time.monotonic() - self._failed_at < RETRY_OPEN:
            raise QuotaStoreUnavailable(self._error)
        async with self._opening:
            if self._pool is not None:
                return self._pool
            import asyncpg

            try:
                pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=POOL_SIZE,
                                                 timeout=self.timeout,
                                                 command_timeout=self.timeout)
                if not self.read_only:
                    async with pool.acquire() as conn:
                        await _create_table(conn, self._schema)
                        await conn.execute(f"DELETE FROM {self.table} WHERE period_end < "
                                           f"now() - interval '{KEEP_ENDED}'")
            except Exception as exc:  # noqa: BLE001 - connection refused, auth, timeout
                self._failed_at = time.monotonic()
                self._error = _describe(exc, self.url)
                raise QuotaStoreUnavailable(self._error) from None
            self._pool = pool
            return pool

    def consume(self, key: QuotaKey, limit: int) -> Any:
        return self._consume(key, limit)

    async def _consume(self, key: QuotaKey, limit: int) -> Consumed:
        pool = await self._get_pool()
        w = key.window
        args = (key.plan, key.consumer, w.period, w.start.date())
        try:
            async with pool.acquire(timeout=self.timeout) as conn:
                used = await conn.fetchval(self._consume_sql, *args, w.end, limit)
                if used is not None:
                    return Consumed(True, int(used), limit, w)
                stored = await conn.fetchval(self._read_sql, *args)
        except Exception as exc:  # noqa: BLE001
            raise QuotaStoreUnavailable(_describe(exc, self.url)) from None
        return Consumed(False, int(stored or 0), limit, w)

    async def read(self, keys: Sequence[QuotaKey]) -> list[int]:
        pool = await self._get_pool()
        out = []
        import asyncpg

        try:
            async with pool.acquire(timeout=self.timeout) as conn:
                for key in keys:
                    w = key.window
                    used = await conn.fetchval(self._read_sql, key.plan, key.consumer,
                                               w.period, w.start.date())
                    out.append(int(used or 0))
        except asyncpg.UndefinedTableError:
            return [0] * len(keys)  # no gateway has counted anything there yet
        except Exception as exc:  # noqa: BLE001
            raise QuotaStoreUnavailable(_describe(exc, self.url)) from None
        return out


async def _create_table(conn: Any, schema: str) -> None:
    """CREATE TABLE IF NOT EXISTS, safe when several workers run it at once (a
    transaction-scoped advisory lock serialises them)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7364021)")
        await conn.execute(schema)


def _describe(exc: Exception, url: str) -> str:
    text = str(exc) or type(exc).__name__
    return f"quota store {url}: {type(exc).__name__}: {text}"[:300]
