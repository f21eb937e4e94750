"""Durable quota counters: the store behind usage plans' quotas (``usage_plans``).

The contract every backend keeps:

* :meth:`QuotaStore.consume` ``(key, limit)`` counts one request for ``key`` (a plan, a
  consumer and a window: ``guichet.quotas.periods``) **only if** fewer than ``limit`` were
  counted in that window, atomically: no other consume of the same key, from any worker
  or any node sharing the store, comes between the check and the increment. It answers
  a :class:`Consumed` (allowed, the count, the limit, the window), or raises
  :class:`QuotaStoreUnavailable` (the caller applies the plan's ``fault_tolerant``). A
  refused request is not counted. The answer comes once the count is durable as the
  backend makes it durable (below): a request is admitted only after its count is.
* :meth:`QuotaStore.read` gives the counts of some keys (0 for a key never counted), for
  ``guichet usage``.
* Durability. ``sqlite``: every admitted request is committed (one transaction per
  turn of the event loop, WAL) before it is let through: a crash of the gateway
  (kill -9, OOM) loses no count; with ``synchronous=normal`` (the default) a power loss
  or OS crash may lose the counts since the last WAL checkpoint (every 0.5 s),
  ``?synchronous=full`` loses none. ``redis``: as durable as the Redis server's persistence (AOF ``everysec``:
  up to a second of counts on a Redis crash; none on a gateway crash). ``postgresql``:
  one committed statement per request (none lost with ``synchronous_commit=on``).

The store is named by the node setting ``usage_store`` (a URL, see :func:`open_store`):
``sqlite:///relative/path.db`` (relative to the declarative config's directory),
``sqlite:////absolute/path.db``, ``redis://[:password@]host:port/db[?prefix=...]``,
``postgresql://user@host:port/db[?table=...]``. Backends are imported lazily by scheme
(``STORES``), so a node pays only for the one it uses. URLs are shown redacted
(:func:`redact`): a password never reaches a log line.

One store object serves every usage-plans plugin instance of a worker, across reloads:
:class:`SharedStores` lends it out by URL and closes it when the last borrower gives it
back.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Protocol, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from guichet.quotas.periods import Window

__all__ = ["DEFAULT_STORE", "Consumed", "QuotaKey", "QuotaStore", "QuotaStoreUnavailable",
           "SharedStores", "StoreUrlError", "open_store", "parse_store_url", "redact",
           "resolve_store_url"]

DEFAULT_STORE = "sqlite:///guichet-usage.db"
STORES: dict[str, str] = {
    "sqlite": "guichet.quotas.sqlite:SqliteQuotaStore",
    "redis": "guichet.quotas.redis:RedisQuotaStore",
    "rediss": "guichet.quotas.redis:RedisQuotaStore",
    "postgresql": "guichet.quotas.postgres:PostgresQuotaStore",
    "postgres": "guichet.quotas.postgres:PostgresQuotaStore",
}
_SQL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_OPTIONS = {"sqlite": {"synchronous"}, "redis": {"prefix"}, "rediss": {"prefix"},
            "postgresql": {"table"}, "postgres": {"table"}}


@dataclass(frozen=True, slots=True)
class QuotaKey:
    plan: str  # the plan's id
    consumer: str  # the consumer's id
    window: Window


@dataclass(frozen=True, slots=True)
class Consumed:
    allowed: bool
    used: int  # counted in the window, this request included when allowed
    limit: int
    window: Window

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


class QuotaStoreUnavailable(Exception):
    """The store could not answer (the message says why, without secrets)."""


class StoreUrlError(ValueError):
    """A ``usage_store`` URL that names no usable store."""


class QuotaStore(Protocol):
    url: str  # redacted

    async def start(self) -> None: ...

    def consume(self, key: QuotaKey, limit: int) -> Awaitable[Consumed]: ...

    async def read(self, keys: Sequence[QuotaKey]) -> list[int]: ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------------------- URLs
@dataclass(frozen=True, slots=True)
class StoreUrl:
    scheme: str
    url: str  # the URL without guichet's own options (what the client library gets)
    path: str  # sqlite: the file; others: ""
    options: dict[str, str]


def parse_store_url(url: str) -> StoreUrl:
    """Split a ``usage_store`` URL; :class:`StoreUrlError` says what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in STORES:
        raise StoreUrlError(f"usage_store: unknown scheme '{parts.scheme}' (expected "
                            "sqlite:///FILE, redis://HOST:PORT/DB or postgresql://HOST/DB)")
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in query if k in _OPTIONS[scheme]}
    rest = [(k, v) for k, v in query if k not in _OPTIONS[scheme]]
    path = ""
    if scheme == "sqlite":
        if rest:
            raise StoreUrlError("usage_store: sqlite takes only ?synchronous=normal|full")
        if parts.netloc:
            raise StoreUrlError("usage_store: write sqlite:///relative.db or "
                                "sqlite:////absolute/path.db (three or four slashes)")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise StoreUrlError("usage_store: sqlite needs a file name (sqlite:///usage.db)")
        if options.get("synchronous", "normal").lower() not in ("normal", "full"):
            raise StoreUrlError("usage_store: synchronous is normal or full")
    elif scheme.startswith("postgres"):
        if not _SQL_NAME.fullmatch(options.get("table", "guichet_quota_usage")):
            raise StoreUrlError("usage_store: table is a lower-case SQL name "
                                "([a-z_][a-z0-9_]*, 63 characters at most)")
    elif not parts.hostname:
        raise StoreUrlError("usage_store: redis needs a host (redis://127.0.0.1:6379/0)")
    clean = url if scheme == "sqlite" else urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
    if scheme.startswith("redis") and rest:
        _check_redis_options(clean)
    return StoreUrl(scheme, clean, path, options)


def _check_redis_options(url: str) -> None:
    """redis-py takes the URL's other options as connection arguments: build (without
    connecting) one connection, so a misspelt option is a settings error at start, not a
    failure of every request (PostgreSQL's options are checked by the server on connect)."""
    import redis.asyncio

    try:
        redis.asyncio.ConnectionPool.from_url(url).make_connection()
    except (TypeError, ValueError) as exc:
        raise StoreUrlError(f"usage_store: {redact(url)}: {exc}") from None


def resolve_store_url(url: str, base_dir: str) -> str:
    """``url`` with a relative sqlite path made absolute against ``base_dir`` (the
    directory of the declarative configuration); other URLs unchanged."""
    parsed = parse_store_url(url)
    if parsed.scheme != "sqlite" or os.path.isabs(parsed.path):
        return url
    query = urlsplit(url).query
    absolute = os.path.normpath(os.path.join(os.path.abspath(base_dir), parsed.path))
    return f"sqlite:///{absolute}" + (f"?{query}" if query else "")


def redact(url: str) -> str:
    """``url`` without its password (for logs and messages): the one in ``user:pw@`` and
    any query option that may hold a secret (``?password=``, which asyncpg and redis-py
    accept too, ``sslpassword``, tokens)."""
    try:
        parts = urlsplit(url)
        netloc, query = parts.netloc, parts.query
        if parts.password is not None:
            user = parts.username or ""
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(_SECRET_OPTION.search(k) for k, _ in pairs):
                query = "&".join(f"{k}=***" if _SECRET_OPTION.search(k) else urlencode([(k, v)])
                                 for k, v in pairs)
        if netloc == parts.netloc and query == parts.query:
            return url
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable URL>"


_SECRET_OPTION = re.compile(r"pass|secret|token|key", re.IGNORECASE)


def open_store(url: str, timeout: float = 2.0, *, read_only: bool = False) -> QuotaStore:
    """A store for ``url`` (not started: call ``await store.start()``). ``read_only``
    (``guichet usage``): the store creates nothing (no file, no table) and writes nothing."""
    parsed = parse_store_url(url)
    module_name, _, attr = STORES[parsed.scheme].partition(":")
    cls: Any = getattr(importlib.import_module(module_name), attr)
    return cls(parsed, timeout=timeout, read_only=read_only)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- sharing
class SharedStores:
    """The stores of one worker, lent out by URL; kept in the worker's named store
    (``env.store("usage-plans")``) so they outlive configuration reloads."""

    def __init__(self) -> None:
        self._stores: dict[tuple[str, float], list[Any]] = {}  # -> [store, borrowers]

    def acquire(self, url: str, timeout: float) -> QuotaStore:
        entry = self._stores.get((url, timeout))
        if entry is None:
            entry = self._stores[(url, timeout)] = [open_store(url, timeout), 0]
        entry[1] += 1
        return entry[0]  # type: ignore[no-any-return]

    async def release(self, store: QuotaStore) -> None:
        for key, entry in list(self._stores.items()):
            if entry[0] is store:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._stores[key]
                    await store.close()
                return
