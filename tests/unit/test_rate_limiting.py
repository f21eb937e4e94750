"""rate-limiting on requests built in memory, against small fake counter backends: Kong's
schema rules and their messages, the identifiers and their fallback to the client
address, what goes to the engine (one ``hit`` with every limit, keys per plugin entity),
the headers (Kong's names and its choice of the most restrictive limit), refusals,
hide_client_headers, and fault tolerance both ways with a failing backend (synchronous and
asynchronous), counted in the backend's tally."""

from __future__ import annotations

import inspect
import math
from types import SimpleNamespace
from typing import Any, Sequence

import pytest
from pydantic import ValidationError

from guichet.config.model import Consumer, KeyAuthCredential, Route, Service
from guichet.limits import PERIODS, CountersUnavailable, Decision, Limit, Outcome
from guichet.plugins.api import ErrorResponse
from guichet.plugins.bundled.rate_limiting import (
    CTX_HEADERS,
    TALLY_FAILED,
    TALLY_PASSED,
    RateLimiting,
    credential_id,
    identifier_getter,
    plugin_key,
)
from guichet.plugins.registry import PluginSchemaAdapter, Registry
from guichet.plugins.request import Request, ResponseHead
from support.plugin_requests import await_result, make_request, refused

ALICE = Consumer(id="c-alice", username="alice")
CRED = KeyAuthCredential(id="k-1", consumer_id="c-alice", key="alice-key")


# ------------------------------------------------------------------ fake engines
class FakeCounters:
    """Exact fixed windows (period names or seconds, aligned on multiples of the period)
    on a clock the test moves; gcra and sliding are counted as fixed windows (their
    arithmetic is the engine's, tested there). Records every call."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.counts: dict[tuple[str, int], int] = {}
        self.calls: list[tuple[Limit, ...]] = []
        self.tally: dict[str, int] = {}

    def _window(self, limit: Limit) -> tuple[float, int]:
        period = PERIODS[limit.period] if isinstance(limit.period, str) else limit.period
        return period, int(self.now // period)

    def hit(self, limits: Sequence[Limit], cost: int = 1) -> Decision:
        self.calls.append(tuple(limits))
        current = []
        for limit in limits:
            period, index = self._window(limit)
            current.append((limit, period, index, self.counts.get((limit.key, index), 0)))
        allowed = all(used + cost <= limit.limit for limit, _, _, used in current)
        outcomes = []
        retry = 0.0
        for limit, period, index, used in current:
            if allowed:
                used = self.counts[(limit.key, index)] = used + cost
            reset = (index + 1) * period - self.now
            if used + (0 if allowed else cost) > limit.limit:
                retry = max(retry, reset)
            outcomes.append(Outcome(limit.limit, max(0, limit.limit - used), reset))
        return Decision(allowed, tuple(outcomes), 0.0 if allowed else retry)

    def acquire(self, key: str, limit: int, queue: int, timeout: float) -> None:
        raise AssertionError("not used by rate-limiting")


class AsyncCounters(FakeCounters):
    """The same, answering with an awaitable as a network backend does."""

    def hit(self, limits: Sequence[Limit], cost: int = 1) -> Any:
        decision = super().hit(limits, cost)

        async def later() -> Decision:
            return decision
        return later()


class DownCounters(FakeCounters):
    """A backend that cannot answer: raises at once, or from its awaitable."""

    def __init__(self, asynchronous: bool) -> None:
        super().__init__()
        self.asynchronous = asynchronous

    def hit(self, limits: Sequence[Limit], cost: int = 1) -> Any:
        self.calls.append(tuple(limits))
        if not self.asynchronous:
            raise CountersUnavailable("redis 127.0.0.1:1: connection refused")

        async def later() -> Decision:
            raise CountersUnavailable("redis 127.0.0.1:1: timed out")
        return later()


class Backends:
    def __init__(self, local: Any = None, redis: Any = None) -> None:
        self._local = local if local is not None else FakeCounters()
        self._redis = redis if redis is not None else AsyncCounters()
        self.redis_settings: list[Any] = []

    def local(self) -> Any:
        return self._local

    def redis(self, settings: Any) -> Any:
        self.redis_settings.append(settings)
        return self._redis


def rate_limiting(backends: Backends | None = None, **conf: Any) -> RateLimiting:
    env = SimpleNamespace(counters=backends or Backends(), consumers=None, settings=None)
    return RateLimiting(RateLimiting.Config.model_validate(conf), env)


def call(plugin: RateLimiting, req: Request) -> Any:
    result = plugin.access(req)
    return await_result(result) if inspect.isawaitable(result) else result


def answer_headers(plugin: RateLimiting, req: Request,
                   upstream: list[tuple[str, str]] | None = None) -> dict[str, str]:
    head = ResponseHead(200, list(upstream or [("Content-Type", "text/plain")]))
    if "response_headers" in plugin.active_phases():
        plugin.response_headers(req, head)
    return dict(head.headers)


def errors_of(conf: dict) -> list[str]:
    with pytest.raises(ValidationError) as info:
        RateLimiting.Config.model_validate(conf)
    return [e["msg"].removeprefix("Value error, ") for e in info.value.errors()]


# ------------------------------------------------------------------ configuration
def test_name_priority_and_defaults_are_kongs():
    assert (RateLimiting.name, RateLimiting.priority, RateLimiting.no_consumer) == \
        ("rate-limiting", 910, False)
    conf = RateLimiting.Config.model_validate({"minute": 5})
    assert (conf.limit_by, conf.policy, conf.fault_tolerant, conf.hide_client_headers,
            conf.error_code, conf.error_message, conf.sync_rate) == \
        ("consumer", "local", True, False, 429, "API rate limit exceeded", -1)
    assert (conf.redis.port, conf.redis.timeout, conf.redis.database, conf.redis.ssl,
            conf.redis.ssl_verify) == (6379, 2000, 0, False, False)
    assert (conf.window_type, conf.limits, conf.token_bucket, conf.retry_after_jitter_max) == \
        ("fixed", None, None, 0)


def test_kong_schema_rules_and_messages():
    assert errors_of({}) == ["at least one of these fields must be non-empty: 'config.second', "
                             "'config.minute', 'config.hour', 'config.day', 'config.month', "
                             "'config.year' (or guichet's 'config.limits', "
                             "'config.token_bucket')"]
    assert errors_of({"second": 10, "hour": 5}) == [
        "The limit for hour(5.0) cannot be lower than the limit for second(10.0)"]
    assert errors_of({"minute": 5, "policy": "redis"}) == [
        "redis.host: required field missing (policy is redis)"]
    assert errors_of({"minute": 5, "limit_by": "header"}) == [
        "header_name: required field missing (limit_by is header)"]
    assert errors_of({"minute": 5, "limit_by": "path"}) == [
        "path: required field missing (limit_by is path)"]
    assert errors_of({"minute": 5, "sync_rate": 10}) == [
        "sync_rate can only be used with the redis policy"]
    assert errors_of({"minute": 5, "policy": "redis", "redis": {"host": "r"}, "sync_rate": 0.01}) \
        == ["sync_rate must be greater than 0.02, or -1 to disable"]
    # accepted: equal limits, sync_rate with redis (counting stays synchronous)
    RateLimiting.Config.model_validate({"second": 5, "minute": 5, "policy": "redis",
                                        "redis": {"host": "r"}, "sync_rate": 1})


@pytest.mark.parametrize("conf, fragment", [
    ({"minute": 0}, "greater than 0"),
    ({"minute": 1.5}, "valid integer"),
    ({"minute": "5"}, "valid integer"),
    ({"minute": 5, "limit_by": "nope"}, "'consumer', 'credential', 'ip', 'service', 'header'"),
    ({"minute": 5, "limit_by": "consumer-group"}, "Kong Enterprise's"),
    ({"minute": 5, "policy": "cluster"}, "policy 'cluster' keeps counters in Kong's database"),
    ({"minute": 5, "policy": "nope"}, "'local' or 'redis'"),
    ({"minute": 5, "limit_by": "header", "header_name": "bad name"}, "bad header name"),
    ({"minute": 5, "limit_by": "path", "path": "nope"}, "should start with: /"),
    ({"minute": 5, "error_code": 99}, "greater than or equal to 100"),
    ({"minute": 5, "redis": {"port": 70000}}, "less than or equal to 65535"),
    ({"minute": 5, "redis": {"host": "a:80"}}, "must not have a port"),
    ({"minute": 5, "bogus": 1}, "Extra inputs"),
    ({"minute": 5, "limits": [{"limit": 1, "window": 10}, {"limit": 2, "window": 10}]},
     "same window"),
    ({"token_bucket": {"rate": 0, "burst": 5}}, "greater than 0"),
    # bounds that keep counts, expiries and headers finite integers (a review found
    # rate: .inf loading fine, then a 500 on every request)
    ({"token_bucket": {"rate": float("inf"), "burst": 5}}, "finite number"),
    ({"token_bucket": {"rate": 1e-300, "burst": 1}}, "more than a year to refill"),
    ({"minute": 2**60}, "less than or equal to 9007199254740992"),
    ({"minute": 5, "retry_after_jitter_max": 10**20}, "less than or equal to 86400"),
    ({"minute": 5, "error_message": ""}, "at least 1 character"),
    ({"window_type": "rolling", "minute": 5}, "'fixed' or 'sliding'"),
])
def test_bad_configurations_are_refused_with_the_reason(conf, fragment):
    assert any(fragment in message for message in errors_of(conf)), errors_of(conf)


def test_kongs_deprecated_flat_redis_fields_fold_into_the_record():
    conf = RateLimiting.Config.model_validate({
        "minute": 5, "policy": "redis", "redis_host": "redis.internal", "redis_port": 6380,
        "redis_password": "s3cret", "redis_database": 3, "redis_timeout": 500,
        "redis_ssl": True, "redis_ssl_verify": True, "redis_server_name": "redis.example",
        "redis_username": "app"})
    r = conf.redis
    assert (r.host, r.port, r.password, r.database, r.timeout, r.ssl, r.ssl_verify,
            r.server_name, r.username) == ("redis.internal", 6380, "s3cret", 3, 500, True, True,
                                           "redis.example", "app")
    assert "s3cret" not in repr(conf)  # the password never shows in a log of the config
    assert errors_of({"minute": 5, "redis_port": 1, "redis": {"port": 2}}) == [
        "redis_port (deprecated) and redis.port disagree: set redis.port only"]
    # the loader's normal form validates again (plugins are built from it)
    dumped = conf.model_dump(mode="python")
    assert "redis_host" not in dumped and dumped["redis"]["host"] == "redis.internal"
    assert RateLimiting.Config.model_validate(dumped) == conf


def test_the_loader_reports_errors_by_field():
    adapter = PluginSchemaAdapter(Registry(["bundled"]), "rate-limiting")
    _, errors = adapter.validate({"minute": 0, "limit_by": "consumer-group"})
    assert errors and all(message for _, message in errors)
    _, errors = adapter.validate({"minute": "x"})
    assert errors == [("minute", "Input should be a valid integer")]


# ------------------------------------------------------------------ identifiers
def routed(**kwargs: Any) -> Request:
    return make_request("/api/items", route=Route(id="r-1", name="r", service_id="s-1"),
                        service=Service(id="s-1", name="svc"), **kwargs)


def test_identifiers_and_kongs_fallback_to_the_client_address():
    anonymous = routed(client_ip="10.0.0.7")
    with_consumer = routed(client_ip="10.0.0.7")
    with_consumer.set_consumer(ALICE, CRED, CRED.id)
    only_credential = routed(client_ip="10.0.0.7")
    only_credential.credential = CRED

    by = {kind: identifier_getter(kind, "X-User_Id", "/api/items") for kind in
          ("consumer", "credential", "ip", "service")}
    assert by["consumer"](with_consumer) == "consumer:c-alice"
    assert by["consumer"](only_credential) == "credential:k-1"
    assert by["consumer"](anonymous) == "ip:10.0.0.7"
    assert by["credential"](with_consumer) == "credential:k-1"
    assert by["credential"](anonymous) == "ip:10.0.0.7"
    assert by["ip"](with_consumer) == "ip:10.0.0.7"
    assert by["service"](anonymous) == "service:s-1"
    assert by["service"](make_request("/", client_ip="10.0.0.8")) == "ip:10.0.0.8"

    header = identifier_getter("header", "X-User_Id")  # "_" stands for "-", as in Kong
    assert header(routed(headers=[("x-user-id", "u1"), ("X-User-Id", "u2")])) == "header:u1"
    assert header(routed(headers=[("X-User-Id", "")])) == "header:"  # empty is a value (Kong)
    assert header(routed(client_ip="10.0.0.9")) == "ip:10.0.0.9"

    path = identifier_getter("path", path="/api/items")
    assert path(routed()) == "path:/api/items"
    assert path(make_request("/api/other", client_ip="10.0.0.9")) == "ip:10.0.0.9"
    # a header value that looks like an address is not that client's counter
    assert header(routed(headers=[("X-User-Id", "10.0.0.9")])) != "ip:10.0.0.9"


def test_credentials_without_an_id_are_told_apart_by_what_they_hold():
    token_a = SimpleNamespace(issuer="i", subject="a")
    token_b = SimpleNamespace(issuer="i", subject="b")
    assert credential_id(CRED) == "k-1"
    assert credential_id(token_a) == credential_id(SimpleNamespace(issuer="i", subject="a"))
    assert credential_id(token_a) != credential_id(token_b)


def test_one_hit_per_request_with_every_limit_keyed_by_plugin_and_identifier():
    backends = Backends()
    plugin = rate_limiting(backends, second=5, minute=10, hour=100, limit_by="ip",
                           limits=[{"limit": 7, "window": 30}],
                           token_bucket={"rate": 2, "burst": 4})
    req = routed(client_ip="10.1.1.1")
    plugin.entity_id = "plug-1"  # what the compiler sets
    assert plugin_key(plugin) == "plug-1"
    assert call(plugin, req) is None
    (limits,) = backends.local().calls
    assert [(lim.key, lim.limit, lim.period, lim.algorithm) for lim in limits] == [
        ("rl:plug-1:ip:10.1.1.1:second:f", 5, "second", "fixed"),
        ("rl:plug-1:ip:10.1.1.1:minute:f", 10, "minute", "fixed"),
        ("rl:plug-1:ip:10.1.1.1:hour:f", 100, "hour", "fixed"),
        ("rl:plug-1:ip:10.1.1.1:w30:f", 7, 30.0, "fixed"),
        ("rl:plug-1:ip:10.1.1.1:bucket:2.0", 4, 1.0, "gcra")]
    assert limits[-1].rate == 2.0
    sliding = rate_limiting(backends, minute=10, window_type="sliding", limit_by="ip")
    call(sliding, make_request("/", client_ip="10.1.1.1"))
    assert backends.local().calls[-1][0].algorithm == "sliding"
    assert backends.local().calls[-1][0].key.endswith(":minute:s")


def test_two_plugins_with_the_same_configuration_never_share_counters():
    backends = Backends()
    first = rate_limiting(backends, minute=1, limit_by="ip")
    second = rate_limiting(backends, minute=1, limit_by="ip")
    first.entity_id, second.entity_id = "plugin-a", "plugin-b"  # what the compiler sets
    for plugin in (first, second):
        req = make_request("/", client_ip="10.0.0.1")
        assert call(plugin, req) is None  # each has its own single request
    keys = [c[0].key for c in backends.local().calls]
    assert keys == ["rl:plugin-a:ip:10.0.0.1:minute:f", "rl:plugin-b:ip:10.0.0.1:minute:f"]


def test_very_long_identifiers_are_keyed_by_their_digest():
    backends = Backends()
    plugin = rate_limiting(backends, minute=5, limit_by="header", header_name="x-k")
    call(plugin, make_request("/", [("x-k", "v" * 5000)]))
    key = backends.local().calls[0][0].key
    assert len(key) < 200 and ":sha256:" in key


# ------------------------------------------------------------------ answers and headers
def test_admits_exactly_the_limit_then_refuses_with_kongs_answer_until_the_window_ends():
    backends = Backends()
    counters = backends.local()
    counters.now = 1_000_040.0  # 20 s into a minute (1_000_020 is a multiple of 60)
    plugin = rate_limiting(backends, minute=3, limit_by="ip")
    seen = []
    for _ in range(3):
        req = make_request("/", client_ip="10.0.0.1")
        assert plugin.access(req) is None  # synchronous backend: synchronous answer
        seen.append(answer_headers(plugin, req))
    assert [h["X-RateLimit-Remaining-Minute"] for h in seen] == ["2", "1", "0"]
    assert seen[0]["X-RateLimit-Limit-Minute"] == "3"
    assert (seen[0]["RateLimit-Limit"], seen[0]["RateLimit-Remaining"],
            seen[0]["RateLimit-Reset"]) == ("3", "2", "40")
    answer = plugin.access(make_request("/", client_ip="10.0.0.1"))
    assert refused(answer) == (429, "API rate limit exceeded")
    headers = dict(answer.headers)
    assert headers == {"X-RateLimit-Limit-Minute": "3", "X-RateLimit-Remaining-Minute": "0",
                       "RateLimit-Limit": "3", "RateLimit-Remaining": "0",
                       "RateLimit-Reset": "40", "Retry-After": "40"}
    # another client is not concerned; the next window admits again
    assert plugin.access(make_request("/", client_ip="10.0.0.2")) is None
    counters.now += 40
    assert plugin.access(make_request("/", client_ip="10.0.0.1")) is None


def test_the_ratelimit_headers_follow_the_most_restrictive_limit_kongs_tie_rule():
    backends = Backends()
    backends.local().now = 1_000_040.5  # 20.5 s into a minute
    plugin = rate_limiting(backends, second=2, minute=2, hour=10, limit_by="ip")
    req = make_request("/", client_ip="10.0.0.1")
    plugin.access(req)
    headers = answer_headers(plugin, req)
    assert {k: v for k, v in headers.items() if k.startswith("X-RateLimit")} == {
        "X-RateLimit-Limit-Second": "2", "X-RateLimit-Remaining-Second": "1",
        "X-RateLimit-Limit-Minute": "2", "X-RateLimit-Remaining-Minute": "1",
        "X-RateLimit-Limit-Hour": "10", "X-RateLimit-Remaining-Hour": "9"}
    # second and minute both have 1 left: the longer window (minute) is shown
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"],
            headers["RateLimit-Reset"]) == ("2", "1", "40")


def test_extension_headers_name_the_window_in_seconds_and_the_bucket():
    backends = Backends()
    plugin = rate_limiting(backends, limits=[{"limit": 7, "window": 30}],
                           token_bucket={"rate": 1, "burst": 4}, limit_by="ip")
    req = make_request("/")
    plugin.access(req)
    headers = answer_headers(plugin, req)
    assert (headers["X-RateLimit-Limit-30"], headers["X-RateLimit-Remaining-30"]) == ("7", "6")
    assert (headers["X-RateLimit-Limit-Bucket"], headers["X-RateLimit-Remaining-Bucket"]) == \
        ("4", "3")
    assert headers["RateLimit-Limit"] == "4"


def test_headers_replace_the_upstreams_and_go_on_answers_of_later_plugins():
    plugin = rate_limiting(minute=5, limit_by="ip")
    req = make_request("/")
    plugin.access(req)
    headers = answer_headers(plugin, req, [("x-ratelimit-limit-minute", "999"),
                                           ("X-Other", "kept")])
    assert headers["X-RateLimit-Limit-Minute"] == "5" and headers["X-Other"] == "kept"
    assert "x-ratelimit-limit-minute" not in headers
    # no decision recorded (the plugin did not run for this request): nothing added
    assert answer_headers(plugin, make_request("/")) == {"Content-Type": "text/plain"}


def test_custom_error_code_message_and_retry_after_jitter():
    backends = Backends()
    backends.local().now = 1_000_000.0  # 40 s into a minute: the window ends in 20 s
    plugin = rate_limiting(backends, minute=1, limit_by="ip", error_code=418,
                           error_message="slow down", retry_after_jitter_max=5)
    plugin.access(make_request("/"))
    retries = set()
    for _ in range(60):
        answer = plugin.access(make_request("/"))
        assert refused(answer) == (418, "slow down")
        retries.add(int(dict(answer.headers)["Retry-After"]))
    assert retries <= set(range(20, 26)) and len(retries) > 1


def test_hide_client_headers_hides_every_rate_limit_header_but_retry_after():
    plugin = rate_limiting(minute=1, limit_by="ip", hide_client_headers=True)
    assert plugin.active_phases() == ("access",)
    req = make_request("/")
    assert plugin.access(req) is None and CTX_HEADERS not in req.ctx
    answer = plugin.access(make_request("/"))
    assert refused(answer) == (429, "API rate limit exceeded")
    (name, value), = answer.headers  # GUARANTEES §15: a 429 always says when to retry
    assert name == "Retry-After" and 1 <= int(value) <= 60


def test_the_redis_policy_answers_through_an_awaitable_with_the_same_rules():
    backends = Backends()
    plugin = rate_limiting(backends, second=1, policy="redis",
                           redis={"host": "127.0.0.1", "port": 6390, "database": 2,
                                  "password": "pw"}, limit_by="ip")
    (settings,) = backends.redis_settings
    assert (settings.host, settings.port, settings.database, settings.password,
            settings.timeout) == ("127.0.0.1", 6390, 2, "pw", 2000)
    first = plugin.access(make_request("/"))
    assert inspect.isawaitable(first)
    assert await_result(first) is None
    assert refused(call(plugin, make_request("/"))) == (429, "API rate limit exceeded")


# ------------------------------------------------------------------ counters unavailable
@pytest.mark.parametrize("asynchronous", [False, True])
def test_fault_tolerant_lets_requests_through_without_headers_and_counts_them(asynchronous):
    down = DownCounters(asynchronous)
    plugin = rate_limiting(Backends(redis=down), minute=1, policy="redis",
                           redis={"host": "127.0.0.1", "port": 1}, limit_by="ip")
    for _ in range(3):
        req = make_request("/")
        assert call(plugin, req) is None
        assert answer_headers(plugin, req) == {"Content-Type": "text/plain"}
    assert down.tally == {TALLY_PASSED: 3}


@pytest.mark.parametrize("asynchronous", [False, True])
def test_not_fault_tolerant_answers_kongs_500_and_counts_it(asynchronous):
    down = DownCounters(asynchronous)
    plugin = rate_limiting(Backends(redis=down), minute=1, policy="redis", fault_tolerant=False,
                           redis={"host": "127.0.0.1", "port": 1}, limit_by="ip")
    for _ in range(2):
        answer = call(plugin, make_request("/"))
        assert isinstance(answer, ErrorResponse)
        assert (answer.status, answer.message, answer.headers) == \
            (500, "An unexpected error occurred", [])
    assert down.tally == {TALLY_FAILED: 2}


def test_unavailable_counters_are_logged_once_per_period(caplog):
    down = DownCounters(False)
    plugin = rate_limiting(Backends(redis=down), minute=1, policy="redis",
                           redis={"host": "127.0.0.1", "port": 1, "password": "hunter2"})
    with caplog.at_level("ERROR", logger="guichet.plugins.rate_limiting"):
        for _ in range(50):
            call(plugin, make_request("/"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "connection refused" in lines[0]
    assert not any("hunter2" in line for line in lines)
    assert down.tally[TALLY_PASSED] == 50


def test_reset_is_at_least_one_second():
    backends = Backends()
    backends.local().now = 1_000_019.99  # 0.01 s before a second ends (and a minute)
    plugin = rate_limiting(backends, second=1, limit_by="ip")
    req = make_request("/")
    plugin.access(req)
    assert answer_headers(plugin, req)["RateLimit-Reset"] == "1"
    answer = plugin.access(make_request("/"))
    assert dict(answer.headers)["Retry-After"] == "1"
    assert math.isclose(backends.local().calls[0][0].limit, 1)


# ------------------------------------------------------------------ with the real engine
def test_with_the_process_engine_exact_counts_and_kongs_headers():
    from guichet.limits.process import ProcessCounters

    clock = [1_000_040.0]  # 20 s into a minute
    engine = ProcessCounters(clock=lambda: clock[0])
    plugin = rate_limiting(Backends(local=engine), second=2, minute=3, limit_by="ip")
    answers = []
    for _ in range(2):
        req = make_request("/")
        assert plugin.access(req) is None
        answers.append(answer_headers(plugin, req))
    assert [(a["X-RateLimit-Remaining-Second"], a["X-RateLimit-Remaining-Minute"])
            for a in answers] == [("1", "2"), ("0", "1")]
    refusal = plugin.access(make_request("/"))  # the second is spent
    headers = dict(refusal.headers)
    assert refused(refusal) == (429, "API rate limit exceeded")
    assert (headers["X-RateLimit-Remaining-Second"], headers["X-RateLimit-Remaining-Minute"],
            headers["Retry-After"]) == ("0", "1", "1")
    clock[0] += 1  # next second: one left in the minute
    req = make_request("/")
    assert plugin.access(req) is None
    assert answer_headers(plugin, req)["X-RateLimit-Remaining-Minute"] == "0"
    refusal = plugin.access(make_request("/"))
    headers = dict(refusal.headers)
    # the minute is spent: Retry-After waits for its end (39 s), not the second's
    assert (headers["RateLimit-Limit"], headers["Retry-After"]) == ("3", "39")


def test_with_the_process_engine_token_bucket_and_sliding_window():
    from guichet.limits.process import ProcessCounters

    clock = [1_000_000.0]
    engine = ProcessCounters(clock=lambda: clock[0])
    bucket = rate_limiting(Backends(local=engine), token_bucket={"rate": 2, "burst": 3},
                           limit_by="ip")
    codes = [bucket.access(make_request("/")) is None for _ in range(5)]
    assert codes == [True, True, True, False, False]
    clock[0] += 0.5  # one token back
    assert bucket.access(make_request("/")) is None
    assert refused(bucket.access(make_request("/")))[0] == 429

    sliding = rate_limiting(Backends(local=engine), second=4, window_type="sliding",
                            limit_by="header", header_name="x-k")
    hdr = [("x-k", "s")]
    clock[0] = 1_000_010.0
    assert [sliding.access(make_request("/", hdr)) is None for _ in range(5)] == \
        [True] * 4 + [False]
    clock[0] = 1_000_011.25  # a quarter into the next second: 4 * 0.75 = 3 still count
    assert [sliding.access(make_request("/", hdr)) is None for _ in range(3)] == \
        [True, False, False]
