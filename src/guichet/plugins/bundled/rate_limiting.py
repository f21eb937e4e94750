"""rate-limiting: at most so many requests per second, minute, hour, day, month or year,
per consumer, credential, client address, service, header value or path (Kong's
``rate-limiting``, priority 910, access and response_headers phases).

Rules (Kong 3.x's handler and schema, then guichet's extensions):

* Limits: ``second`` .. ``year`` (positive integers; a longer period's limit may not be
  lower than a shorter one's, with Kong's message). Each request counts once in every
  configured limit, and is admitted only if **every** limit admits it: all the limits of
  one request go to the counter engine in one ``hit``, which checks and increments them
  atomically (``guichet.limits``). A refused request is not counted. Windows are Kong's:
  aligned on UTC second, minute, hour, day, calendar month and year.
* Extensions (not in Kong's open-source plugin): ``window_type: sliding`` (Kong
  Enterprise's name: the weighted two-window estimate instead of fixed windows);
  ``limits: [{limit, window}]`` (more windows, in seconds, aligned on multiples of
  themselves since the Unix epoch); ``token_bucket: {rate, burst}`` (a GCRA bucket of
  ``burst`` tokens refilled at ``rate`` per second); ``retry_after_jitter_max`` (Kong
  Enterprise's: up to that many random seconds added to Retry-After).
* Who is counted (``limit_by``), falling back to the client address as Kong does:
  ``consumer`` (the consumer's id, else the credential's), ``credential``, ``ip``,
  ``service`` (the routed service's id), ``header`` (the first value of ``header_name``;
  an empty value is a value, as in Kong), ``path`` (the normalised path, only when it is
  exactly ``path``). The client address is Kong's forwarded address (``req.client_ip``).
  Identifiers are tagged by kind, so a header value equal to some client's address does
  not share that client's counters.
* Counters belong to one plugin entity: the key holds the plugin's id (which the loader
  derives from its name and scope, as Kong keys by the plugin's route and service), the
  identifier and the limit; two plugins never share a counter.
* ``policy``: ``local`` (one node, exact across all its workers) or ``redis`` (nodes
  sharing one Redis; the check-and-increment is one server-side script). Kong's
  ``cluster`` needs Kong's database and is refused with the reason. ``sync_rate`` is
  accepted with Kong's rules, but counting is always synchronous (exact).
* Counters unavailable (Redis down, timed out): ``fault_tolerant: true`` lets the request
  through without rate-limit headers (Kong), ``false`` answers 500 "An unexpected error
  occurred" (Kong's ``error(err)``). Each such decision is counted in the backend's
  ``tally`` (``fault_tolerant_passed`` / ``fault_tolerant_failed``) and logged at most once
  per 10 s per plugin with the number of requests it concerned.
* Headers (unless ``hide_client_headers``), on the answer to an admitted request (the
  upstream's, or a later plugin's) and on the refusal: ``X-RateLimit-Limit-<Period>`` and
  ``X-RateLimit-Remaining-<Period>`` for every limit (``<Period>`` is ``Second`` ..
  ``Year``, the window in seconds for ``limits`` entries, ``Bucket`` for the token
  bucket); ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` of the
  most restrictive limit (the least remaining; on a tie, the longest window: Kong's rule);
  ``Retry-After`` on a refusal (seconds until every limit admits a request again, at least
  1). ``hide_client_headers`` hides them all, Retry-After included (Kong).
* A refusal is ``error_code`` (429) with ``{"message": error_message, "request_id": ...}``.

Cost: identifiers, keys and header names are built at load; each identifier's tuple of
:class:`~guichet.limits.Limit` is remembered (up to 4,096, then forgotten at once). With
the ``local`` policy the engine answers synchronously and so does the hook (no coroutine);
only ``redis`` returns an awaitable.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from typing import TYPE_CHECKING, Annotated, Any, Awaitable, Callable, Literal, Sequence

from pydantic import AfterValidator, Field, field_validator, model_validator

from guichet.config import rules
from guichet.limits import PERIODS, CountersUnavailable, Decision, Limit
from guichet.plugins.api import Plugin, PluginConfig, Response, error
from guichet.plugins.bundled.correlation_id import HeaderName
from guichet.plugins.faultlog import FaultLog

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request, ResponseHead

log = logging.getLogger("guichet.plugins.rate_limiting")

ORDERED_PERIODS = ("second", "minute", "hour", "day", "month", "year")
LIMIT_BY = ("consumer", "credential", "ip", "service", "header", "path")
UNEXPECTED = "An unexpected error occurred"
TALLY_PASSED = "fault_tolerant_passed"
TALLY_FAILED = "fault_tolerant_failed"
CTX_HEADERS = "rate-limiting.headers"
IDENTIFIER_CACHE_SIZE = 4096
LONG_IDENTIFIER = 200  # longer identifiers are keyed by their SHA-256
# Bounds that keep every count, rate and expiry representable exactly (floats in the node
# table and in Redis' Lua) and every header a plain integer.
MAX_LIMIT = 2**53
MAX_RATE = 1e9  # tokens per second


# ------------------------------------------------------------------------ configuration
def _check_path(value: str) -> str:
    return rules.check_path(value)


def _check_host(value: str) -> str:
    return rules.check_host(value)


def _check_sni(value: str) -> str:
    return rules.check_sni(value, wildcard=False)


class RedisConfig(PluginConfig):
    """Kong's shared ``redis`` record (``kong/tools/redis/schema.lua``)."""

    host: Annotated[str, AfterValidator(_check_host)] | None = None
    port: int = Field(default=6379, ge=0, le=65535)
    timeout: int = Field(default=2000, ge=0, le=2**31 - 2)  # milliseconds
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    database: int = Field(default=0, ge=0)
    ssl: bool = False
    ssl_verify: bool = False
    server_name: Annotated[str, AfterValidator(_check_sni)] | None = None


# Kong 3.x's deprecated flat fields, folded into ``redis`` (removed in Kong 4.0)
FLAT_REDIS_FIELDS = ("host", "port", "password", "username", "ssl", "ssl_verify",
                     "server_name", "timeout", "database")


class WindowLimit(PluginConfig):
    """One more window (guichet's extension): ``limit`` requests per ``window`` seconds."""

    limit: int = Field(gt=0, le=MAX_LIMIT)
    window: int = Field(gt=0, le=PERIODS["year"])


class TokenBucket(PluginConfig):
    """A token bucket (guichet's extension): ``burst`` tokens, refilled at ``rate`` per
    second; a request takes one."""

    rate: float = Field(gt=0, le=MAX_RATE, allow_inf_nan=False)
    burst: int = Field(gt=0, le=MAX_LIMIT)

    @field_validator("rate", mode="before")
    @classmethod
    def _int_rate(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _refill_time(self) -> "TokenBucket":
        if self.burst / self.rate > PERIODS["year"]:
            raise ValueError("the bucket would take more than a year to refill (burst / rate): "
                             "use a larger rate or a smaller burst")
        return self


class RateLimitingConfig(PluginConfig):
    second: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    minute: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    hour: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    day: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    month: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    year: int | None = Field(default=None, gt=0, le=MAX_LIMIT)
    limit_by: Literal["consumer", "credential", "ip", "service", "header", "path"] = "consumer"
    header_name: HeaderName | None = None
    path: Annotated[str, AfterValidator(_check_path)] | None = None
    policy: Literal["local", "redis"] = "local"
    fault_tolerant: bool = True
    redis: RedisConfig = Field(default_factory=RedisConfig)
    hide_client_headers: bool = False
    error_code: int = Field(default=429, ge=100, le=599)
    error_message: str = Field(default="API rate limit exceeded", min_length=1)
    sync_rate: float = -1.0
    # guichet's extensions (names from Kong Enterprise's rate-limiting-advanced where it has them)
    window_type: Literal["fixed", "sliding"] = "fixed"
    limits: list[WindowLimit] | None = None
    token_bucket: TokenBucket | None = None
    retry_after_jitter_max: int = Field(default=0, ge=0, le=86400)

    @model_validator(mode="before")
    @classmethod
    def _kong_shorthands(cls, data: Any) -> Any:
        """Kong 3.x's deprecated ``redis_<field>`` become ``redis.<field>``."""
        if not isinstance(data, dict):
            return data
        flat = [f for f in FLAT_REDIS_FIELDS if f"redis_{f}" in data]
        if flat:
            data = dict(data)
            nested = data.get("redis")
            nested = dict(nested) if isinstance(nested, dict) else {}
            for field in flat:
                value = data.pop(f"redis_{field}")
                if field in nested and nested[field] != value:
                    raise ValueError(f"redis_{field} (deprecated) and redis.{field} disagree: "
                                     f"set redis.{field} only")
                nested[field] = value
            data["redis"] = nested
        return data

    @field_validator("policy", mode="before")
    @classmethod
    def _no_cluster(cls, value: Any) -> Any:
        if value == "cluster":
            raise ValueError("policy 'cluster' keeps counters in Kong's database, which guichet "
                             "does not have: use 'local' (exact across the workers of one node) "
                             "or 'redis' (exact across nodes sharing one Redis)")
        return value

    @field_validator("limit_by", mode="before")
    @classmethod
    def _no_consumer_group(cls, value: Any) -> Any:
        if value == "consumer-group":
            raise ValueError("limit_by 'consumer-group' is Kong Enterprise's "
                             "(rate-limiting-advanced); guichet has no consumer groups: use "
                             f"one of {', '.join(LIMIT_BY)}")
        return value

    @field_validator("sync_rate", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _kong_rules(self) -> "RateLimitingConfig":
        periods = [(p, getattr(self, p)) for p in ORDERED_PERIODS if getattr(self, p) is not None]
        if not periods and not self.limits and self.token_bucket is None:
            raise ValueError("at least one of these fields must be non-empty: 'config.second', "
                             "'config.minute', 'config.hour', 'config.day', 'config.month', "
                             "'config.year' (or guichet's 'config.limits', "
                             "'config.token_bucket')")
        for i, (lower, v1) in enumerate(periods):
            for upper, v2 in periods[i + 1:]:
                if v2 < v1:
                    raise ValueError(f"The limit for {upper}({v2:.1f}) cannot be lower than "
                                     f"the limit for {lower}({v1:.1f})")
        if self.policy != "redis" and self.sync_rate != -1:
            raise ValueError("sync_rate can only be used with the redis policy")
        if self.policy == "redis" and self.sync_rate != -1 and self.sync_rate < 0.02:
            raise ValueError("sync_rate must be greater than 0.02, or -1 to disable")
        if self.policy == "redis" and not self.redis.host:
            raise ValueError("redis.host: required field missing (policy is redis)")
        if self.limit_by == "header" and self.header_name is None:
            raise ValueError("header_name: required field missing (limit_by is header)")
        if self.limit_by == "path" and self.path is None:
            raise ValueError("path: required field missing (limit_by is path)")
        if self.limits:
            windows = [w.window for w in self.limits]
            if len(set(windows)) != len(windows):
                raise ValueError("limits: two entries have the same window")
        return self


# ------------------------------------------------------------------------ identifiers
def credential_id(credential: Any) -> str:
    """A credential's identity: its ``id``, else (a token credential, which has none) a
    digest of what it holds."""
    cid = getattr(credential, "id", None)
    if isinstance(cid, str) and cid:
        return cid
    return hashlib.sha256(repr(credential).encode("utf-8", "replace")).hexdigest()[:32]


def identifier_getter(limit_by: str, header_name: str | None = None,
                      path: str | None = None) -> Callable[["Request"], str]:
    """The function giving a request's identifier for ``limit_by``, with Kong's fallback
    to the client address; each identifier is tagged by its kind."""
    if limit_by == "ip":
        return lambda req: "ip:" + req.client_ip
    if limit_by == "consumer":
        def by_consumer(req: "Request") -> str:
            consumer = req.consumer
            if consumer is not None:
                return "consumer:" + consumer.id
            if req.credential is not None:
                return "credential:" + credential_id(req.credential)
            return "ip:" + req.client_ip
        return by_consumer
    if limit_by == "credential":
        def by_credential(req: "Request") -> str:
            if req.credential is not None:
                return "credential:" + credential_id(req.credential)
            return "ip:" + req.client_ip
        return by_credential
    if limit_by == "service":
        def by_service(req: "Request") -> str:
            service = req.service
            return "service:" + service.id if service is not None else "ip:" + req.client_ip
        return by_service
    if limit_by == "header":
        assert header_name is not None
        # Kong's get_header: the first value; "_" stands for "-"
        lname = header_name.lower().replace("_", "-")

        def by_header(req: "Request") -> str:
            values = req.header_values(lname)
            return "header:" + values[0] if values else "ip:" + req.client_ip
        return by_header
    if limit_by == "path":
        assert path is not None

        def by_path(req: "Request") -> str:
            return "path:" + path if req.path == path else "ip:" + req.client_ip
        return by_path
    raise ValueError(f"unknown limit_by {limit_by!r}")


def plugin_key(plugin: Plugin) -> str:
    """The id of the plugin entity ``plugin`` was built from (stable across workers,
    nodes and reloads: the loader derives it from the plugin's name and scope); a digest
    of its configuration for an instance built outside a snapshot (unit tests)."""
    if plugin.entity_id:
        return plugin.entity_id
    dump = plugin.config.model_dump_json() if hasattr(plugin.config, "model_dump_json") \
        else repr(plugin.config)
    return "cfg-" + hashlib.sha256(f"{plugin.name}:{dump}".encode()).hexdigest()[:24]


# ------------------------------------------------------------------------ the plugin
class _Spec:
    """One configured limit: how to make its :class:`Limit` for an identifier, and its
    header names."""

    __slots__ = ("tag", "limit", "period", "algorithm", "rate", "window", "limit_text",
                 "limit_header", "remaining_header")

    def __init__(self, tag: str, suffix: str, limit: int, period: str | float,
                 algorithm: str, rate: float, window: float) -> None:
        self.tag = tag
        self.limit = limit
        self.period = period
        self.algorithm = algorithm
        self.rate = rate
        self.window = window  # for Kong's tie rule (the longer window wins)
        self.limit_text = str(limit)
        self.limit_header = "X-RateLimit-Limit-" + suffix
        self.remaining_header = "X-RateLimit-Remaining-" + suffix


def _specs(config: RateLimitingConfig) -> tuple[_Spec, ...]:
    algorithm = config.window_type
    specs = []
    for period in ORDERED_PERIODS:
        limit = getattr(config, period)
        if limit is not None:
            specs.append(_Spec(f"{period}:{algorithm[0]}", period.capitalize(), limit, period,
                               algorithm, 0.0, PERIODS[period]))
    for entry in sorted(config.limits or (), key=lambda e: e.window):
        specs.append(_Spec(f"w{entry.window}:{algorithm[0]}", str(entry.window), entry.limit,
                           float(entry.window), algorithm, 0.0, entry.window))
    bucket = config.token_bucket
    if bucket is not None:
        specs.append(_Spec(f"bucket:{bucket.rate!r}", "Bucket", bucket.burst, 1.0, "gcra",
                           bucket.rate, bucket.burst / bucket.rate))
    return tuple(specs)


def redis_settings(config: RedisConfig) -> Any:
    """The engine's ``RedisSettings`` for Kong's ``redis`` record."""
    from guichet.limits.redis import RedisSettings

    return RedisSettings(host=config.host or "", port=config.port, username=config.username,
                         password=config.password, database=config.database,
                         timeout=config.timeout, ssl=config.ssl, ssl_verify=config.ssl_verify,
                         server_name=config.server_name)


class RateLimiting(Plugin):
    name = "rate-limiting"
    priority = 910
    Config = RateLimitingConfig

    def __init__(self, config: RateLimitingConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        if config.policy == "redis":
            self.counters = env.counters.redis(redis_settings(config.redis))
        else:
            self.counters = env.counters.local()
        self.identify = identifier_getter(config.limit_by, config.header_name, config.path)
        self.specs = _specs(config)
        # every header name the answers may carry, lower-case (made once, not per request)
        self.header_names = frozenset(
            [n.lower() for s in self.specs for n in (s.limit_header, s.remaining_header)]
            + ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"])
        self.hide = config.hide_client_headers
        self.fault_tolerant = config.fault_tolerant
        self.error_code = config.error_code
        self.error_message = config.error_message
        self.jitter = config.retry_after_jitter_max
        self.faults = FaultLog(log, self.name)
        self._prefix: str | None = None
        self._limits: dict[str, tuple[Limit, ...]] = {}

    def active_phases(self) -> tuple[str, ...]:
        # hidden headers: nothing to add to the answer, no response_headers hook
        return ("access",) if self.hide else ("access", "response_headers")

    # ---------------------------------------------------------------- access
    def limits_for(self, req: "Request", identifier: str) -> tuple[Limit, ...]:
        """The limits counting ``identifier`` (made once per identifier)."""
        found = self._limits.get(identifier)
        if found is None:
            prefix = self._prefix
            if prefix is None:
                prefix = self._prefix = "rl:" + plugin_key(self) + ":"
            ident = identifier if len(identifier) <= LONG_IDENTIFIER else \
                "sha256:" + hashlib.sha256(identifier.encode("utf-8", "surrogatepass")).hexdigest()
            found = tuple(Limit(key=f"{prefix}{ident}:{s.tag}", limit=s.limit, period=s.period,
                                algorithm=s.algorithm, rate=s.rate) for s in self.specs)
            if len(self._limits) >= IDENTIFIER_CACHE_SIZE:
                self._limits.clear()
            self._limits[identifier] = found
        return found

    def access(self, req: "Request") -> "Response | Awaitable[Response | None] | None":
        limits = self.limits_for(req, self.identify(req))
        try:
            result = self.counters.hit(limits)
        except CountersUnavailable as exc:
            return self.unavailable(exc)
        if isinstance(result, Decision):
            return self.decide(req, result)
        return self._wait(req, result)

    async def _wait(self, req: "Request", pending: Awaitable[Decision]) -> Response | None:
        try:
            decision = await pending
        except CountersUnavailable as exc:
            return self.unavailable(exc)
        return self.decide(req, decision)

    def unavailable(self, exc: CountersUnavailable) -> Response | None:
        """Kong's rule when the counters cannot answer, counted and logged."""
        tally = self.counters.tally
        if self.fault_tolerant:
            tally[TALLY_PASSED] = tally.get(TALLY_PASSED, 0) + 1
            self.faults.record("counters", exc, "let through (fault_tolerant)")
            return None
        tally[TALLY_FAILED] = tally.get(TALLY_FAILED, 0) + 1
        self.faults.record("counters", exc, "answered 500 (fault_tolerant is false)")
        return error(500, UNEXPECTED)

    def decide(self, req: "Request", decision: Decision) -> Response | None:
        if self.faults.pending:
            self.faults.recovered()
        if decision.allowed:
            if not self.hide:
                req.ctx[CTX_HEADERS] = self.headers(decision.outcomes)
            return None
        # Retry-After even with hide_client_headers (Kong hides it too): GUARANTEES §15,
        # a refused client is always told when to come back
        headers = [] if self.hide else self.headers(decision.outcomes)
        retry_after = max(1, math.ceil(decision.retry_after))
        if self.jitter:
            retry_after += random.randint(0, self.jitter)
        headers.append(("Retry-After", str(retry_after)))
        return error(self.error_code, self.error_message, headers)

    def headers(self, outcomes: Sequence[Any]) -> list[tuple[str, str]]:
        """X-RateLimit-* of every limit, and RateLimit-* of the most restrictive one."""
        out: list[tuple[str, str]] = []
        best = None
        best_remaining = best_window = 0
        for spec, outcome in zip(self.specs, outcomes):
            remaining = outcome.remaining if outcome.remaining > 0 else 0
            out.append((spec.limit_header, spec.limit_text))
            out.append((spec.remaining_header, str(remaining)))
            if best is None or remaining < best_remaining or (
                    remaining == best_remaining and spec.window > best_window):
                best, best_remaining, best_window = (spec, outcome), remaining, spec.window
        if best is not None:
            spec, outcome = best
            out.append(("RateLimit-Limit", spec.limit_text))
            out.append(("RateLimit-Remaining", str(best_remaining)))
            out.append(("RateLimit-Reset", str(max(1, math.ceil(outcome.reset)))))
        return out

    # ---------------------------------------------------------------- response
    def response_headers(self, req: "Request", resp: "ResponseHead") -> None:
        headers = req.ctx.get(CTX_HEADERS)
        if headers is not None:
            set_headers(resp, headers, self.header_names)


def set_headers(resp: "ResponseHead", headers: list[tuple[str, str]],
                names: frozenset[str]) -> None:
    """Replace these headers (whose lower-case names are ``names``) in ``resp`` in one
    pass (names and values are the plugin's own: digits and fixed names, nothing to
    check)."""
    current = resp.headers
    if any(n.lower() in names for n, _ in current):
        resp.headers = [(n, v) for n, v in current if n.lower() not in names] + headers
    else:
        current.extend(headers)
    resp.changed = True
