"""oauth2-introspection (RFC 7662) through a real gateway, a real upstream and an
introspection endpoint the module starts.

Active tokens reach the upstream with X-Consumer-* and X-Credential-* headers; results are
cached (one introspection for repeated requests, never past the token's ``exp``);
inactive tokens are 401 with RFC 6750's header; an endpoint that fails or is too slow is a
503 within the configured timeout; the token never appears in the gateway's logs.
"""

from __future__ import annotations

import time

import pytest

from support import declarative
from support.gateway import free_port
from support.jwks import IdentityServer

TOKEN_ALICE = "opaque-alice-7c1f0e9a"
TOKEN_SERVICE = "opaque-service-2b8d"
TOKEN_SHORT = "opaque-short-lived-55"
INVALID_WWW = ('Bearer error="invalid_token", '
               'error_description="The access token is invalid or has expired"')


@pytest.fixture(scope="module")
def idp():
    server = IdentityServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_idp():
    server = IdentityServer().start()
    server.introspection_delay = 2.0
    yield server
    server.stop()


def route(name: str, **config) -> dict:
    return {"name": name, "paths": [f"/{name}"], "strip_path": False,
            "plugins": [{"name": "oauth2-introspection", "config": config}]}


def introspection(server: IdentityServer, **config) -> dict:
    return {"introspection_url": server.introspection_url,
            "authorization_value": server.introspection_authorization, "ttl": 60, **config}


@pytest.fixture(scope="module")
def gw(module_gateway_factory, upstream_servers, idp, slow_idp):
    config = declarative(
        services=[{"name": "svc", "url": upstream_servers[0].url, "routes": [
            route("intro", **introspection(idp, custom_claims_forward=["tenant"])),
            route("intro-client", **introspection(idp, consumer_by="client_id",
                                                  hide_credentials=True,
                                                  token_type_hint="access_token")),
            route("intro-anon", **introspection(idp, anonymous="guest")),
            route("intro-down", introspection_url=f"http://127.0.0.1:{free_port()}/introspect",
                  authorization_value="Basic eDp5", timeout=1000),
            route("intro-slow", **introspection(slow_idp, timeout=300)),
        ]}],
        consumers=[{"username": "alice", "custom_id": "cust-alice"},
                   {"username": "svc-user", "custom_id": "client-42"},
                   {"username": "guest"}],
    )
    return module_gateway_factory(config)


@pytest.fixture
def tokens(idp):
    idp.tokens = {
        TOKEN_ALICE: {"active": True, "username": "alice", "client_id": "web", "scope": "read",
                      "token_type": "Bearer", "sub": "u-1", "exp": int(time.time()) + 3600,
                      "tenant": "acme"},
        TOKEN_SERVICE: {"active": True, "client_id": "client-42", "scope": "batch"},
    }
    idp.reset_counters()
    return idp.tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_refused(response, status: int, message: str, www: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["message"] == message and body["request_id"]
    if www is not None:
        assert response.headers["www-authenticate"] == www


def test_active_token_reaches_upstream_with_credential_headers(gw, http, upstream, idp, tokens):
    forged = {"X-Credential-Scope": "admin", "X-Consumer-Username": "mallory"}
    response = http.get(gw.url + "/intro", headers=bearer(TOKEN_ALICE) | forged)
    assert response.status_code == 200, response.text
    sent = upstream.requests[-1]
    assert sent.header("x-consumer-username") == "alice"
    assert sent.header("x-consumer-custom-id") == "cust-alice"
    assert sent.header_values("x-credential-scope") == ["read"]
    assert sent.header("x-credential-client-id") == "web"
    assert sent.header("x-credential-username") == "alice"
    assert sent.header("x-credential-token-type") == "Bearer"
    assert sent.header("x-credential-sub") == "u-1"
    assert sent.header("x-credential-tenant") == "acme"
    assert sent.header("x-credential-identifier") == "alice"
    assert sent.header("authorization") == f"Bearer {TOKEN_ALICE}"  # not hidden by default
    call = idp.introspections[-1]
    assert call["form"] == {"token": TOKEN_ALICE}
    assert call["headers"]["authorization"] == idp.introspection_authorization


def test_results_are_cached(gw, http, idp, tokens):
    tokens["opaque-cached"] = {"active": True, "username": "alice"}
    for _ in range(5):
        assert http.get(gw.url + "/intro", headers=bearer("opaque-cached")).status_code == 200
    assert len(idp.introspections) == 1
    # a token whose exp comes before the ttl is asked about again once it expired
    tokens[TOKEN_SHORT] = {"active": True, "username": "alice", "exp": time.time() + 1}
    assert http.get(gw.url + "/intro", headers=bearer(TOKEN_SHORT)).status_code == 200
    assert http.get(gw.url + "/intro", headers=bearer(TOKEN_SHORT)).status_code == 200
    assert len(idp.introspections) == 2
    time.sleep(1.1)
    tokens[TOKEN_SHORT] = {"active": False}
    assert_refused(http.get(gw.url + "/intro", headers=bearer(TOKEN_SHORT)), 401,
                   "The access token is invalid or has expired", INVALID_WWW)
    assert len(idp.introspections) == 3


def test_consumer_by_client_id_and_hide_credentials(gw, http, upstream, idp, tokens):
    response = http.get(gw.url + "/intro-client?access_token=" + TOKEN_SERVICE + "&x=1")
    assert response.status_code == 200, response.text
    sent = upstream.requests[-1]
    assert sent.header("x-consumer-username") == "svc-user"
    assert sent.target.endswith("/intro-client?x=1")
    assert http.get(gw.url + "/intro-client", headers=bearer(TOKEN_SERVICE)).status_code == 200
    assert upstream.requests[-1].header("authorization") is None
    assert idp.introspections[-1]["form"]["token_type_hint"] == "access_token"


def test_refusals(gw, http, upstream, tokens):
    assert_refused(http.get(gw.url + "/intro"), 401, "The access token is missing", "Bearer")
    assert_refused(http.get(gw.url + "/intro", headers=bearer("not-a-token")), 401,
                   "The access token is invalid or has expired", INVALID_WWW)
    assert upstream.requests == []


def test_anonymous_fallback(gw, http, upstream, tokens):
    response = http.get(gw.url + "/intro-anon", headers=bearer("revoked") |
                        {"X-Credential-Scope": "admin"})
    assert response.status_code == 200, response.text
    sent = upstream.requests[-1]
    assert sent.header("x-consumer-username") == "guest"
    assert sent.header("x-anonymous-consumer") == "true"
    assert sent.header("x-credential-scope") is None


def test_endpoint_failures_are_503_within_the_timeout(gw, http, upstream, tokens):
    assert_refused(http.get(gw.url + "/intro-down", headers=bearer(TOKEN_ALICE)), 503,
                   "The introspection endpoint is unavailable")
    started = time.monotonic()
    response = http.get(gw.url + "/intro-slow", headers=bearer(TOKEN_ALICE))
    assert_refused(response, 503, "The introspection endpoint is unavailable")
    assert response.headers["retry-after"]
    assert time.monotonic() - started < 1.5
    assert upstream.requests == []


def test_tokens_never_logged(gw, http, tokens):
    http.get(gw.url + "/intro-down", headers=bearer("secret-token-in-logs-check"))
    http.get(gw.url + "/intro", headers=bearer("secret-token-in-logs-check"))
    time.sleep(0.1)
    assert "secret-token-in-logs-check" not in gw.stderr_text()
    assert TOKEN_ALICE not in gw.stderr_text()
