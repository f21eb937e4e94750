"""oauth2-introspection driven directly with requests built in memory, against an
in-process RFC 7662 endpoint (tests/support/jwks.py): credential headers, consumer mapping,
the result cache (bounded by ``exp``, keyed by a digest), one call for concurrent requests,
503 within the timeout when the endpoint fails, header safety; and the pure rules.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from guichet.config.model import Config, Consumer
from guichet.plugins.bundled.oauth2_introspection import (
    OAuth2Introspection, cache_ttl, header_value, is_active)
from guichet.plugins.consumers import ConsumerDirectory
from guichet.plugins.env import BuildEnv
from guichet.plugins.request import Request
from guichet.plugins.stores import Stores
from support.jwks import IdentityServer

ALICE = Consumer(id="c-alice", username="alice", custom_id="A1")
BOB = Consumer(id="c-bob", username="bob")


class FakeExchange:
    """What :class:`Request` reads of the proxy's exchange."""

    _lazy_headers = None  # Request reads it before scanning the headers

    def __init__(self, method: str, query: str, headers: list[tuple[str, str]]) -> None:
        self.method = method.encode()
        self.path = self.raw_path = "/api"
        self.query = query
        self.headers = [(n.lower().encode(), n.encode(), v.encode()) for n, v in headers]
        self.client = SimpleNamespace(rt=SimpleNamespace(now=0.0))

    def lazy_headers(self) -> dict[str, str]:
        return {lname.decode(): value.decode() for lname, _, value in self.headers}

    def rid(self) -> str:
        return "rid-1"


def request(method: str = "GET", query: str = "", **headers: str) -> Request:
    return Request(FakeExchange(method, query, list(headers.items())))


def bearer(token: str) -> Request:
    return request(authorization=f"Bearer {token}")


def upstream_header(req: Request, name: str) -> str | None:
    values = (req.edits or {}).get(name.lower())
    return values[-1][1] if values else None


@pytest.fixture(scope="module")
def run():
    """Resolve a hook's result: run it in the module's event loop when it is a coroutine."""
    with asyncio.Runner() as runner:
        yield lambda result: runner.run(result) if asyncio.iscoroutine(result) else result


@pytest.fixture(scope="module")
def idp():
    with IdentityServer() as server:
        yield server


@pytest.fixture
def fresh_idp(idp):
    idp.tokens = {}
    idp.introspection_status, idp.introspection_delay = 200, 0.0
    idp.reset_counters()
    return idp


def introspection_plugin(idp, **config: Any) -> OAuth2Introspection:
    base = {"introspection_url": idp.introspection_url,
            "authorization_value": idp.introspection_authorization}
    env = BuildEnv(ConsumerDirectory(Config(consumers=(ALICE, BOB))), None, Stores())
    return OAuth2Introspection(OAuth2Introspection.Config.model_validate(base | config), env)


ACTIVE = {"active": True, "scope": "read write", "client_id": "A1", "username": "alice",
          "token_type": "access_token", "sub": "user-1", "aud": ["api", "web"],
          "iss": "https://idp.test", "jti": "j-1", "tenant": "t-9"}


def test_introspection_active_token(run, fresh_idp):
    fresh_idp.tokens["opaque-1"] = ACTIVE | {"exp": int(time.time()) + 600, "iat": 1700000000}
    plugin = introspection_plugin(fresh_idp, custom_claims_forward=["tenant"],
                                  token_type_hint="access_token",
                                  custom_introspection_headers={"X-Idp-Tenant": "t"},
                                  introspect_request=True)
    req = bearer("opaque-1")
    assert run(plugin.access(req)) is None
    assert req.consumer is ALICE and req.credential.client_id == "A1"
    expected = {"X-Consumer-Username": "alice", "X-Credential-Identifier": "alice",
                "X-Credential-Scope": "read write", "X-Credential-Client-ID": "A1",
                "X-Credential-Username": "alice", "X-Credential-Token-Type": "access_token",
                "X-Credential-Sub": "user-1", "X-Credential-Aud": "api, web",
                "X-Credential-Iss": "https://idp.test", "X-Credential-Jti": "j-1",
                "X-Credential-Iat": "1700000000", "X-Credential-tenant": "t-9"}
    for name, value in expected.items():
        assert upstream_header(req, name) == value, name
    call = fresh_idp.introspections[-1]
    assert call["form"] == {"token": "opaque-1", "token_type_hint": "access_token"}
    assert call["headers"]["x-idp-tenant"] == "t"
    assert call["headers"]["x-request-path"] == "/api"
    assert call["headers"]["x-request-http-method"] == "GET"
    by_client = introspection_plugin(fresh_idp, consumer_by="client_id")
    req = bearer("opaque-1")
    assert run(by_client.access(req)) is None and req.consumer is ALICE
    assert upstream_header(req, "X-Credential-Identifier") == "A1"


def test_introspection_refusals(run, fresh_idp):
    fresh_idp.tokens["expired"] = {"active": True, "exp": time.time() - 1}
    fresh_idp.tokens["truthy"] = {"active": "true"}
    plugin = introspection_plugin(fresh_idp)
    missing = run(plugin.access(request()))
    assert (missing.status, missing.message) == (401, "The access token is missing")
    assert dict(missing.headers)["WWW-Authenticate"] == "Bearer"
    for token in ("unknown", "expired", "truthy"):
        answer = run(plugin.access(bearer(token)))
        assert (answer.status, answer.message) == \
            (401, "The access token is invalid or has expired"), token
        assert dict(answer.headers)["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    calls = len(fresh_idp.introspections)
    assert run(plugin.access(request(authorization="Basic dXNlcjpwdw=="))).status == 401
    assert len(fresh_idp.introspections) == calls  # a Basic credential never leaves


def test_introspection_cache_bounded_by_exp(run, fresh_idp):
    fresh_idp.tokens["short"] = {"active": True, "username": "bob", "exp": time.time() + 0.4}
    fresh_idp.tokens["long"] = {"active": True, "username": "bob"}
    plugin = introspection_plugin(fresh_idp, ttl=60)
    for _ in range(3):
        assert run(plugin.access(bearer("short"))) is None
        assert run(plugin.access(bearer("long"))) is None
    assert len(fresh_idp.introspections) == 2
    assert plugin.access(bearer("long")) is None  # a cached result: no await
    time.sleep(0.45)
    fresh_idp.tokens.pop("short")
    assert run(plugin.access(bearer("short"))).status == 401
    assert run(plugin.access(bearer("long"))) is None
    assert len(fresh_idp.introspections) == 3
    keys = list(plugin.store._data)
    assert all("short" not in repr(key) and "long" not in repr(key) for key in keys)


def test_introspection_concurrent_requests_share_one_call(run, fresh_idp):
    fresh_idp.tokens["shared"] = {"active": True}
    fresh_idp.introspection_delay = 0.2
    plugin = introspection_plugin(fresh_idp)

    async def all_at_once():
        return await asyncio.gather(*(plugin.access(bearer("shared")) for _ in range(10)))

    assert run(all_at_once()) == [None] * 10
    assert len(fresh_idp.introspections) == 1


def test_introspection_endpoint_failures(run, fresh_idp):
    fresh_idp.tokens["t"] = {"active": True}
    plugin = introspection_plugin(fresh_idp, anonymous="bob", timeout=200)
    fresh_idp.introspection_status = 500
    answer = run(plugin.access(bearer("t")))
    assert (answer.status, answer.message) == (503, "The introspection endpoint is unavailable")
    assert dict(answer.headers)["Retry-After"]
    fresh_idp.introspection_status, fresh_idp.introspection_delay = 200, 1.0
    started = time.monotonic()
    assert run(plugin.access(bearer("t"))).status == 503
    assert time.monotonic() - started < 0.8
    wrong_client = introspection_plugin(fresh_idp, authorization_value="Basic bm9wZQ==")
    fresh_idp.introspection_delay = 0.0
    assert run(wrong_client.access(bearer("t"))).status == 503
    assert run(plugin.access(bearer("t"))) is None  # failures were not cached


def test_introspection_hide_credentials_anonymous_and_header_safety(run, fresh_idp):
    fresh_idp.tokens["t"] = {"active": True, "username": "nobody", "scope": "a\r\nX-Evil: 1"}
    plugin = introspection_plugin(fresh_idp, hide_credentials=True, anonymous="bob")
    req = bearer("t")
    assert run(plugin.access(req)) is None
    assert req.consumer is None and req.authenticated
    assert (req.edits or {}).get("authorization") == []
    assert upstream_header(req, "X-Credential-Scope") is None
    req = request(query="x=1&access_token=t")
    assert run(plugin.access(req)) is None and req.upstream_query == "x=1"
    req = bearer("inactive")
    assert run(plugin.access(req)) is None and req.consumer is BOB
    assert upstream_header(req, "X-Anonymous-Consumer") == "true"


def test_introspection_pure_rules():
    now = 1000.0
    assert is_active({"active": True}, now) and not is_active({"active": 1}, now)
    assert not is_active({"active": True, "exp": 1000}, now)
    assert cache_ttl(True, {"exp": 1010}, 30, now) == 10
    assert cache_ttl(True, {"exp": 1100}, 30, now) == 30
    assert cache_ttl(True, {}, 0, now) is None
    assert cache_ttl(True, {"exp": 1005}, 0, now) == 5
    assert cache_ttl(True, {"exp": 999}, 30, now) == 0.0
    assert header_value(["a", 1]) == "a, 1" and header_value(3.0) == "3"
    assert header_value({"k": "v"}) == '{"k":"v"}' and header_value("a\nb") is None
    assert header_value("caf\u00e9") == "caf\u00e9" and header_value("\u2603") is None
    with pytest.raises(ValidationError):
        OAuth2Introspection.Config.model_validate({"introspection_url": "ftp://x",
                                                   "authorization_value": "x"})
    with pytest.raises(ValidationError):
        OAuth2Introspection.Config.model_validate({"introspection_url": "http://x/i"})
    assert OAuth2Introspection.Config.model_validate(
        {"introspection_url": "http://x/i", "authorization_value": "v", "anonymous": ""}
    ).anonymous is None
