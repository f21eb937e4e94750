"""The Redis quota store: nodes sharing one Redis server share their quota counts.

Rules:

* One key per (plan, consumer, window): ``<prefix><plan id>:<consumer id>:<period>:<start
  date>`` (prefix ``guichet:quota:`` unless the URL says ``?prefix=...``), an integer.
* A consume is one Lua script, so Redis runs the check and the increment with nothing in
  between, whoever else is counting: read the count; at or over the limit, refuse (and
  count nothing); else ``INCR``, and give a new key an ``EXPIREAT`` a day after its
  window ends (the key outlives its window a little so ``guichet usage`` can be read
  just after a reset without surprise; Redis then frees it).
* Durability is the Redis server's: with AOF ``appendfsync everysec`` a Redis crash may
  lose up to a second of counts, with RDB snapshots whatever came after the last one; a
  gateway crash loses none (the count is in Redis before the request goes on).
* At most ``MAX_CONNECTIONS`` connections per worker. Any Redis error, a reply later than
  ``timeout`` seconds, or no free connection within it raises
  ``QuotaStoreUnavailable``; the client reconnects by itself on the next request. The
  URL's password is never shown (``redact``).
"""

from __future__ import annotations

from typing import Any, Sequence

from guichet.quotas import Consumed, QuotaKey, QuotaStoreUnavailable, StoreUrl, redact

DEFAULT_PREFIX = "guichet:quota:"
GRACE = 86400  # seconds a key outlives its window
MAX_CONNECTIONS = 16  # per worker; a request waits (up to the timeout) for a free one

CONSUME = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then
  return {0, used}
end
used = redis.call('INCR', KEYS[1])
if used == 1 then
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
end
return {1, used}
"""


class RedisQuotaStore:
    def __init__(self, parsed: StoreUrl, *, timeout: float = 2.0,
                 read_only: bool = False) -> None:
        self._url = parsed.url
        self.url = redact(parsed.url)
        self.prefix = parsed.options.get("prefix", DEFAULT_PREFIX)
        self.timeout = timeout
        self._client: Any = None
        self._script: Any = None

    def key(self, key: QuotaKey) -> str:
        w = key.window
        return f"{self.prefix}{key.plan}:{key.consumer}:{w.period}:{w.label}"

    async def start(self) -> None:
        if self._client is not None:
            return
        from redis.asyncio import BlockingConnectionPool, Redis

        pool = BlockingConnectionPool.from_url(
            self._url, max_connections=MAX_CONNECTIONS, timeout=self.timeout,
            socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry_on_timeout=False, health_check_interval=30)
        self._client = Redis.from_pool(pool)  # the client owns (and closes) the pool
        self._script = self._client.register_script(CONSUME)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def consume(self, key: QuotaKey, limit: int) -> Any:
        return self._consume(key, limit)

    async def _consume(self, key: QuotaKey, limit: int) -> Consumed:
        if self._script is None:
            raise QuotaStoreUnavailable("the quota store is not started")
        expire_at = int(key.window.end_ts) + GRACE
        try:
            allowed, used = await self._script(keys=[self.key(key)], args=[limit, expire_at])
        except Exception as exc:  # noqa: BLE001 - redis errors, OSError, timeouts
            raise QuotaStoreUnavailable(_describe(exc, self.url)) from None
        return Consumed(bool(allowed), int(used), limit, key.window)

    async def read(self, keys: Sequence[QuotaKey]) -> list[int]:
        if self._client is None:
            raise QuotaStoreUnavailable("the quota store is not started")
        if not keys:
            return []
        try:
            values = await self._client.mget([self.key(k) for k in keys])
        except Exception as exc:  # noqa: BLE001
            raise QuotaStoreUnavailable(_describe(exc, self.url)) from None
        return [int(v) if v is not None else 0 for v in values]


def _describe(exc: Exception, url: str) -> str:
    """What went wrong, without the URL's password (redis-py's messages name the host
    and port, never the password)."""
    text = str(exc) or type(exc).__name__
    return f"quota store {url}: {type(exc).__name__}: {text}"[:300]
