"""oauth2-introspection driven directly with requests built in memory, against an
in-process RFC 7662 endpoint (tests/support/jwks.py): credential headers, consumer mapping,
the result cache (bounded by ``exp``, keyed by a digest), one call for concurrent requests,
503 within the timeout when the endpoint fails, header safety (upstream and toward the
endpoint, where values are ASCII); and the pure rules.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import ValidationError

from guichet.config.model import Consumer
from guichet.plugins.bundled.oauth2_introspection import (
    OAuth2Introspection, cache_ttl, header_value, is_active)
from support.jwks import IdentityServer
from support.plugin_requests import (bearer, build, make_env, make_request, request,
                                     upstream_header)

ALICE = Consumer(id="c-alice", username="alice", custom_id="A1")
BOB = Consumer(id="c-bob", username="bob")


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
    return build(OAuth2Introspection, make_env((ALICE, BOB)), **(base | config))


ACTIVE = {"active": True, "scope": "read write", "client_id": "A1", "username": "alice",
          "token_type": "access_token", "sub": "user-1", "aud": ["api", "web"],
          "iss": "https://idp.test", "jti": "j-1", "tenant": "t-9"}


def test_introspection_active_token(resolve, fresh_idp):
    fresh_idp.tokens["opaque-1"] = ACTIVE | {"exp": int(time.time()) + 600, "iat": 1700000000}
    plugin = introspection_plugin(fresh_idp, custom_claims_forward=["tenant"],
                                  token_type_hint="access_token",
                                  custom_introspection_headers={"X-Idp-Tenant": "t"},
                                  introspect_request=True)
    req = bearer("opaque-1")
    assert resolve(plugin.access(req)) is None
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
    assert resolve(by_client.access(req)) is None and req.consumer is ALICE
    assert upstream_header(req, "X-Credential-Identifier") == "A1"


def test_introspection_refusals(resolve, fresh_idp):
    fresh_idp.tokens["expired"] = {"active": True, "exp": time.time() - 1}
    fresh_idp.tokens["truthy"] = {"active": "true"}
    plugin = introspection_plugin(fresh_idp)
    missing = resolve(plugin.access(request()))
    assert (missing.status, missing.message) == (401, "The access token is missing")
    assert dict(missing.headers)["WWW-Authenticate"] == "Bearer"
    for token in ("unknown", "expired", "truthy"):
        answer = resolve(plugin.access(bearer(token)))
        assert (answer.status, answer.message) == \
            (401, "The access token is invalid or has expired"), token
        assert dict(answer.headers)["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    calls = len(fresh_idp.introspections)
    assert resolve(plugin.access(request(authorization="Basic dXNlcjpwdw=="))).status == 401
    assert len(fresh_idp.introspections) == calls  # a Basic credential never leaves


def test_introspection_cache_bounded_by_exp(resolve, fresh_idp):
    fresh_idp.tokens["short"] = {"active": True, "username": "bob", "exp": time.time() + 0.4}
    fresh_idp.tokens["long"] = {"active": True, "username": "bob"}
    plugin = introspection_plugin(fresh_idp, ttl=60)
    for _ in range(3):
        assert resolve(plugin.access(bearer("short"))) is None
        assert resolve(plugin.access(bearer("long"))) is None
    assert len(fresh_idp.introspections) == 2
    assert plugin.access(bearer("long")) is None  # a cached result: no await
    time.sleep(0.45)
    fresh_idp.tokens.pop("short")
    assert resolve(plugin.access(bearer("short"))).status == 401
    assert resolve(plugin.access(bearer("long"))) is None
    assert len(fresh_idp.introspections) == 3
    keys = list(plugin.store._data)
    assert all("short" not in repr(key) and "long" not in repr(key) for key in keys)


def test_introspection_concurrent_requests_share_one_call(resolve, fresh_idp):
    fresh_idp.tokens["shared"] = {"active": True}
    fresh_idp.introspection_delay = 0.2
    plugin = introspection_plugin(fresh_idp)

    async def all_at_once():
        return await asyncio.gather(*(plugin.access(bearer("shared")) for _ in range(10)))

    assert resolve(all_at_once()) == [None] * 10
    assert len(fresh_idp.introspections) == 1


def test_introspection_endpoint_failures(resolve, fresh_idp):
    fresh_idp.tokens["t"] = {"active": True}
    plugin = introspection_plugin(fresh_idp, anonymous="bob", timeout=200)
    fresh_idp.introspection_status = 500
    answer = resolve(plugin.access(bearer("t")))
    assert (answer.status, answer.message) == (503, "The introspection endpoint is unavailable")
    assert dict(answer.headers)["Retry-After"]
    fresh_idp.introspection_status, fresh_idp.introspection_delay = 200, 1.0
    started = time.monotonic()
    assert resolve(plugin.access(bearer("t"))).status == 503
    assert time.monotonic() - started < 0.8
    wrong_client = introspection_plugin(fresh_idp, authorization_value="Basic bm9wZQ==")
    fresh_idp.introspection_delay = 0.0
    assert resolve(wrong_client.access(bearer("t"))).status == 503
    assert resolve(plugin.access(bearer("t"))) is None  # failures were not cached


def test_introspection_hide_credentials_anonymous_and_header_safety(resolve, fresh_idp):
    fresh_idp.tokens["t"] = {"active": True, "username": "nobody", "scope": "a\r\nX-Evil: 1"}
    plugin = introspection_plugin(fresh_idp, hide_credentials=True, anonymous="bob")
    req = bearer("t")
    assert resolve(plugin.access(req)) is None
    assert req.consumer is None and req.authenticated
    assert (req.edits or {}).get("authorization") == []
    assert upstream_header(req, "X-Credential-Scope") is None
    req = request(query="x=1&access_token=t")
    assert resolve(plugin.access(req)) is None and req.upstream_query == "x=1"
    req = bearer("inactive")
    assert resolve(plugin.access(req)) is None and req.consumer is BOB
    assert upstream_header(req, "X-Anonymous-Consumer") == "true"


def test_introspection_request_path_with_bytes_beyond_ascii(resolve, fresh_idp):
    """X-Request-Path carries the path's bytes as the client sent them (httpx would refuse
    a str beyond ASCII)."""
    fresh_idp.tokens["t"] = {"active": True, "username": "alice"}
    plugin = introspection_plugin(fresh_idp, introspect_request=True)
    sent = "/café/李".encode("utf-8").decode("latin-1")  # what the request holds
    req = make_request(sent, [("Authorization", "Bearer t")])
    assert resolve(plugin.access(req)) is None and req.consumer is ALICE
    assert fresh_idp.introspections[-1]["headers"]["x-request-path"] == sent


@pytest.mark.parametrize("config, field", [
    ({"authorization_value": "Basic caf\u00e9"}, "authorization_value"),
    ({"authorization_value": "Basic a\r\nX-Evil: 1"}, "authorization_value"),
    ({"authorization_value": "Basic \u674e"}, "authorization_value"),
    ({"custom_introspection_headers": {"X-T": "caf\u00e9"}}, "custom_introspection_headers"),
    ({"custom_introspection_headers": {"X-T": "a\x00"}}, "custom_introspection_headers"),
    ({"introspection_url": "http://idp.test/i\x00"}, "introspection_url"),
    ({"introspection_url": "http://idp.test/i\x7f"}, "introspection_url"),
])
def test_introspection_outbound_header_values_are_ascii(config, field):
    base = {"introspection_url": "http://idp.test/i", "authorization_value": "Basic eDp5"}
    with pytest.raises(ValidationError) as info:
        OAuth2Introspection.Config.model_validate(base | config)
    assert [e["loc"][0] for e in info.value.errors()] == [field]
    ok = OAuth2Introspection.Config.model_validate(
        base | {"custom_introspection_headers": {"X-T": "a b\tc ~"}})
    assert ok.custom_introspection_headers == {"X-T": "a b\tc ~"}


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
