"""Rate-limit counters in Redis: the ``redis`` policy, exact across gateway nodes.

* One Lua script (:data:`HIT_SCRIPT`, run with EVALSHA, loaded again on NOSCRIPT) reads
  every limit of a request, decides, and increments all of them or none, on the server in
  one step: nothing can come between the check and the increment, whichever node asks.
  Its clock is the server's (``TIME``), so nodes with skewed clocks agree on windows.
  It implements the same arithmetic as :mod:`guichet.limits.algorithms` (calendar months
  and years included); the script returns what it read and Python computes the headers'
  numbers with :func:`~guichet.limits.algorithms.describe`.
* Keys: ``prefix + Limit.key`` (default prefix ``guichet:rl:``), a hash (fields ``s``, ``c``,
  ``p`` for window start, count, previous count; ``t`` for the GCRA time), expiring when
  its state is no longer needed. Every key of one request is touched by one script, so a
  Redis Cluster is not supported (one server, or a primary behind Sentinel's address).
* Faults: a connection error, a timeout (``timeout`` ms, Kong's ``redis.timeout``) or an
  error reply raises :class:`~guichet.limits.CountersUnavailable` (counted as
  ``redis_errors``). A failure starts a backoff during which the client fails fast,
  without trying (counted as ``redis_skipped``): 0.5 s, doubling with each failed attempt
  to 5 s. **One incident counts once**: the calls that were already in flight when the
  backoff began (started before it) and fail too do not lengthen it, so a short stall
  under many concurrent requests costs 0.5 s, not 5 s. When the backoff ends **one**
  call probes Redis while the others keep failing fast until it answers (a probe lost
  without an answer, e.g. never awaited, is replaced after three times the timeout).
  An answer ends the incident (``redis_recoveries``). The password is never logged.
* Connections: a pool of at most ``MAX_CONNECTIONS`` (128) per :class:`RedisSettings` and
  worker, opened on first use (never at build time), at most ``OPENING_AT_ONCE`` at a
  time, shared by every plugin instance of the worker through
  :class:`~guichet.limits.backends.CounterBackends`, named ``guichet-rl-<pid>`` (``CLIENT
  LIST``), closed when no configuration snapshot uses these settings any more or when the
  worker exits. A call waits for a free connection at most ``timeout``; a busy pool is
  load, not an outage: that call raises ``CountersUnavailable`` (counted as
  ``redis_pool_busy``) and no backoff starts.
* Concurrency slots are not kept in Redis: the concurrency limit is per node
  (``CounterBackends.local()``, :class:`guichet.limits.NodeSlots`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from guichet.limits import PERIODS, CountersUnavailable, Decision, Limit
from guichet.limits.algorithms import State, describe

log = logging.getLogger("guichet.limits.redis")

DEFAULT_PREFIX = "guichet:rl:"
MAX_CONNECTIONS = 128  # per RedisSettings and worker
OPENING_AT_ONCE = 16  # connections being opened at once (per pool)
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0
_ALGORITHM_CODES = {"fixed": "f", "sliding": "s", "gcra": "g"}


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Kong 3.x ``rate-limiting`` ``config.redis`` fields (``timeout`` in milliseconds)."""

    host: str = "127.0.0.1"
    port: int = 6379
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    database: int = 0
    timeout: float = 2000
    ssl: bool = False
    ssl_verify: bool = False
    server_name: Optional[str] = None

    @property
    def address(self) -> str:
        """``host:port/database``, for messages (never the password)."""
        return f"{self.host}:{self.port}/{self.database}"


HIT_SCRIPT = r"""
local function fmt(x) return string.format('%.17g', x) end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end
local function window(period, t)
  if period == 'month' or period == 'year' then
    local y, m = civil_from_days(math.floor(t / 86400))
    if period == 'year' then
      return days_from_civil(y, 1, 1) * 86400, days_from_civil(y + 1, 1, 1) * 86400
    end
    local ny, nm = y, m + 1
    if nm == 13 then ny, nm = y + 1, 1 end
    return days_from_civil(y, m, 1) * 86400, days_from_civil(ny, nm, 1) * 86400
  end
  local len = tonumber(period)
  local s = math.floor(t / len) * len
  return s, s + len
end
local function previous_start(period, s)
  if period == 'month' or period == 'year' then
    local p = window(period, s - 0.5)
    return p
  end
  return s - tonumber(period)
end

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local cost = tonumber(ARGV[2])
local allowed = true
local out = {0, fmt(now)}
local plan = {}
for i = 1, #KEYS do
  local at = 2 + (i - 1) * 4
  local alg, limit, period, rate = ARGV[at + 1], tonumber(ARGV[at + 2]), ARGV[at + 3],
                                   tonumber(ARGV[at + 4])
  local key = KEYS[i]
  if alg == 'g' then
    local tat = tonumber(redis.call('HGET', key, 't')) or 0
    local base = tat > now and tat or now
    local new = base + cost / rate
    if new - now > limit / rate + 1e-9 then allowed = false end
    plan[i] = {'g', new, new}
    out[#out + 1] = '0'; out[#out + 1] = '0'; out[#out + 1] = fmt(base)
  else
    local s, e = window(period, now)
    local h = redis.call('HMGET', key, 's', 'c', 'p')
    local ss, c, p = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
    local cur, prev = 0, 0
    if ss == s then
      cur, prev = c, p
    elseif alg == 's' and ss ~= nil and ss == previous_start(period, s) then
      prev = c
    end
    local expires = e
    if alg == 'f' then
      prev = 0
      if cur + cost > limit then allowed = false end
    else
      local est = cur
      if prev ~= 0 then est = prev * (1.0 - (now - s) / (e - s)) + cur end
      if est + cost > limit + 1e-9 then allowed = false end
      local _, next_end = window(period, e)
      expires = next_end
    end
    plan[i] = {alg, s, expires, cur + cost, prev}
    out[#out + 1] = fmt(cur); out[#out + 1] = fmt(prev); out[#out + 1] = '0'
  end
end
if allowed then
  out[1] = 1
  for i = 1, #KEYS do
    local key, step = KEYS[i], plan[i]
    if step[1] == 'g' then
      redis.call('HSET', key, 't', fmt(step[2]))
    else
      redis.call('HSET', key, 's', fmt(step[2]), 'c', fmt(step[4]), 'p', fmt(step[5]))
    end
    redis.call('PEXPIRE', key, string.format('%.0f', math.ceil((step[3] - now) * 1000) + 1000))
  end
end
return out
"""


def limit_args(limit: Limit) -> tuple[str, str, str, str]:
    """The script's four arguments for ``limit``: algorithm, limit, period, rate."""
    period = limit.period
    if period in ("month", "year"):
        spec = period
    elif isinstance(period, str):
        spec = repr(float(PERIODS[period]))
    else:
        spec = repr(float(period))
    return (_ALGORITHM_CODES[limit.algorithm], repr(limit.limit), spec, repr(float(limit.rate)))


class RedisCounters:
    """The ``redis`` backend for one :class:`RedisSettings` (see the module docstring)."""

    kind = "redis"

    def __init__(self, settings: RedisSettings, prefix: str = DEFAULT_PREFIX) -> None:
        self.settings = settings
        self.prefix = prefix
        self.tally: dict[str, int] = {}
        self.timeout = max(0.001, settings.timeout / 1000.0)
        self._client: Any = None
        self._script: Any = None
        self._args: dict[Limit, tuple[str, str, str, str]] = {}
        self._failures = 0  # backoff level: failed attempts in a row, one per incident
        self._down_since = 0.0  # monotonic: when the latest backoff began
        self._down_until = 0.0  # monotonic; fail fast before it
        self._probe_at = 0.0  # monotonic: when the call probing Redis began (0: none)
        self._gate: Optional[asyncio.Semaphore] = None  # at most MAX_CONNECTIONS calls
        self._clock_override: Optional[float] = None  # tests: evaluate at this instant

    # -- the client ------------------------------------------------------------------
    def _connect(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.connection import BlockingConnectionPool, Connection, SSLConnection
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        s = self.settings
        kwargs: dict[str, Any] = dict(
            host=s.host, port=s.port, db=s.database, username=s.username or None,
            password=s.password or None, socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 0),
            max_connections=MAX_CONNECTIONS, timeout=self.timeout,
            client_name=f"guichet-rl-{os.getpid()}", connection_class=Connection)
        if s.ssl:
            kwargs.update(connection_class=_sni_connection(SSLConnection, s.server_name),
                          ssl_cert_reqs="required" if s.ssl_verify else "none",
                          ssl_check_hostname=bool(s.ssl_verify))
        kwargs["connection_class"] = _paced_connection(kwargs["connection_class"],
                                                       asyncio.Semaphore(OPENING_AT_ONCE))
        pool = BlockingConnectionPool(**kwargs)
        self._gate = asyncio.Semaphore(MAX_CONNECTIONS)  # a call holds a pool connection
        self._client = aioredis.Redis(connection_pool=pool)
        self._script = self._client.register_script(HIT_SCRIPT)

    async def close(self) -> None:
        client, self._client, self._script = self._client, None, None
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()

    # -- hits ------------------------------------------------------------------------
    def hit(self, limits: Sequence[Limit], cost: int = 1) -> Any:
        """An awaitable Decision; raises CountersUnavailable at once while backing off,
        and after it while the one probing call has not answered."""
        if self._failures:
            now = time.monotonic()
            if now < self._down_until:
                self._skip(f"next attempt in {self._down_until - now:.1f}s")
            if self._probe_at and now - self._probe_at < self.timeout * 3 + 1.0:
                self._skip("another request is probing it")
            self._probe_at = now
            return self._hit(limits, cost, True)
        return self._hit(limits, cost, False)

    def _skip(self, why: str) -> None:
        self.tally["redis_skipped"] = self.tally.get("redis_skipped", 0) + 1
        raise CountersUnavailable(f"redis {self.settings.address} is unavailable ({why})")

    async def _hit(self, limits: Sequence[Limit], cost: int, probe: bool) -> Decision:
        try:
            return await self._call(limits, cost)
        finally:
            if probe:
                self._probe_at = 0.0

    async def _call(self, limits: Sequence[Limit], cost: int) -> Decision:
        if self._client is None:
            self._connect()
        keys = [self.prefix + limit.key for limit in limits]
        args: list[Any] = ["" if self._clock_override is None else repr(self._clock_override),
                           cost]
        cache = self._args
        for limit in limits:
            spec = cache.get(limit)
            if spec is None:
                if len(cache) >= 4096:
                    cache.clear()
                spec = cache[limit] = limit_args(limit)
            args.extend(spec)
        gate = self._gate
        assert gate is not None
        started = time.monotonic()
        if gate.locked():  # every pool connection is in use: wait for one, not for Redis
            try:
                async with asyncio.timeout(self.timeout):
                    await gate.acquire()
            except TimeoutError:
                self.tally["redis_pool_busy"] = self.tally.get("redis_pool_busy", 0) + 1
                raise CountersUnavailable(
                    f"redis {self.settings.address}: all {MAX_CONNECTIONS} connections of the "
                    f"pool stayed busy for {self.timeout:.3g}s") from None
        else:
            await gate.acquire()  # free: returns at once
        if self._failures and started < self._down_since:  # an incident began meanwhile
            gate.release()
            self._skip("it failed while this request waited for a connection")
        try:
            async with asyncio.timeout(self.timeout * 2):
                reply = await self._script(keys=keys, args=args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is "unavailable"
            await self._failed(exc, started)
            raise CountersUnavailable(
                f"redis {self.settings.address}: {type(exc).__name__}: {_short(exc)}") from None
        finally:
            gate.release()
        if self._failures:
            log.info("redis %s is answering again", self.settings.address)
            self.tally["redis_recoveries"] = self.tally.get("redis_recoveries", 0) + 1
            self._failures = 0
        now = float(reply[1])
        states = [State(0.0, float(reply[2 + 3 * i]), float(reply[3 + 3 * i]),
                        float(reply[4 + 3 * i])) for i in range(len(limits))]
        return describe(limits, states, now, cost, int(reply[0]) == 1)

    async def _failed(self, exc: BaseException, started: float) -> None:
        self.tally["redis_errors"] = self.tally.get("redis_errors", 0) + 1
        if started < self._down_since:
            return  # in flight when this incident's backoff began: already counted
        self._failures += 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._failures - 1))
        now = time.monotonic()
        self._down_since = now
        self._down_until = now + delay
        if self._failures == 1:
            log.warning("redis %s unavailable (%s: %s); failing fast for %.1fs, then retrying",
                        self.settings.address, type(exc).__name__, _short(exc), delay)
        client = self._client
        if client is not None:  # idle connections may be dead too: reconnect next time
            try:
                await client.connection_pool.disconnect(inuse_connections=False)
            except Exception:  # noqa: BLE001
                pass


def _short(exc: BaseException) -> str:
    text = str(exc).replace("\n", " ")
    return text[:200]


def _paced_connection(base: Any, opening: asyncio.Semaphore) -> Any:
    """A connection class that opens at most ``opening``'s value connections of its pool at
    once: a burst of requests on a cold pool would otherwise start every handshake at once
    and the last ones would exceed the connect timeout while the event loop works through
    the others, which would look like a Redis outage."""

    class PacedConnection(base):  # type: ignore[misc, valid-type]
        async def connect(self) -> None:
            if self.is_connected:
                return
            async with opening:
                await super().connect()

    return PacedConnection


def _sni_connection(base: Any, server_name: Optional[str]) -> Any:
    """An SSL connection class presenting ``server_name`` (Kong's ``redis.server_name``)
    as SNI and checking the certificate against it, instead of the host."""
    if not server_name:
        return base

    class SNIConnection(base):  # type: ignore[misc, valid-type]
        def _connection_arguments(self) -> Any:
            kwargs = dict(super()._connection_arguments())
            kwargs["server_hostname"] = server_name
            return kwargs

    return SNIConnection
