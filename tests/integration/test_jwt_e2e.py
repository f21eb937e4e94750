"""jwt (Kong's) and jwt-jwks through a real gateway, a real upstream and a JWKS server.

Tokens are signed with PyJWT using RSA, EC P-256 and Ed25519 keys served by the identity
server the module starts. GUARANTEES.md §13: ``alg: none``, RS256→HS256 key confusion, an
embedded ``jwk``, a ``jku`` pointing at an attacker's JWKS, expired / not yet valid / wrong
issuer / wrong audience tokens (for Kong's jwt also with ``claims_to_verify`` unset), an unknown ``crit``, a ``use: enc`` key, and keys rotated
while the gateway runs (the new kid is fetched; refetches are rate-limited: counted).
"""

from __future__ import annotations

import base64
import time

import pytest

from support import declarative
from support.jwks import (IdentityServer, ec_key, ed25519_key, forge_hs256, rsa_key,
                          unsigned)

HS_SECRET = "kong-hs256-secret-0123456789"
B64_RAW = b"\x00\xffraw-bytes-secret\x10\x80"
RSA = rsa_key("rsa-1")
EC = ec_key("ec-1")
ED = ed25519_key("ed-1")
ATTACKER = rsa_key("attacker")
ENC = rsa_key("enc-1")
ROTATION_WINDOW = 1.0  # rediscovery_lifetime of the rotation route
FORGED = {"X-Consumer-ID": "forged", "X-Consumer-Username": "mallory",
          "X-Credential-Identifier": "forged", "X-Anonymous-Consumer": "false"}


@pytest.fixture(scope="module")
def idp():
    server = IdentityServer().start()
    server.rotate(RSA, EC, ED)
    server.extra_jwks = [ENC.public_jwk() | {"use": "enc"}]
    server.attacker_keys = [ATTACKER]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rotating_idp():
    server = IdentityServer().start()
    server.rotate(rsa_key("old"))
    yield server
    server.stop()


def route(name: str, *plugins: dict) -> dict:
    return {"name": name, "paths": [f"/{name}"], "strip_path": False, "plugins": list(plugins)}


def plugin(name: str, **config) -> dict:
    return {"name": name, "config": config}


def jwks(server: IdentityServer, **config) -> dict:
    base = {"issuer": server.issuer, "jwks_uri": server.jwks_uri, "audiences": ["api"],
            "algorithms": ["RS256", "ES256", "EdDSA"]}
    return plugin("jwt-jwks", **(base | config))


def gateway_config(upstream_url: str, idp: IdentityServer, rotating_idp: IdentityServer,
                   closed_port: int, *extra_routes: dict) -> str:
    return declarative(
        services=[{"name": "svc", "url": upstream_url, "routes": [
            route("kong", plugin("jwt")),
            route("kong-b64", plugin("jwt", secret_is_base64=True)),
            route("kong-max", plugin("jwt", claims_to_verify=["exp"], maximum_expiration=60)),
            route("kong-sources", plugin("jwt", uri_param_names=["token"],
                                         cookie_names=["jwt_session"], header_names=[],
                                         key_claim_name="kid", realm="kong")),
            route("jwks", jwks(idp)),
            route("jwks-consumer", jwks(idp, consumer_claim=["sub"], realm="api")),
            route("jwks-discovery", jwks(idp, jwks_uri=None)),
            route("jwks-rotation", jwks(rotating_idp, rediscovery_lifetime=ROTATION_WINDOW)),
            route("jwks-down", jwks(idp, jwks_uri=f"http://127.0.0.1:{closed_port}/jwks",
                                    timeout=1000)),
            *extra_routes,
        ]}],
        consumers=[
            {"username": "alice", "custom_id": "cust-alice",
             "jwt_secrets": [{"key": "hs-issuer", "secret": HS_SECRET},
                             {"key": "b64-issuer", "algorithm": "HS256",
                              "secret": base64.b64encode(B64_RAW).decode()}]},
            {"username": "bob",
             "jwt_secrets": [{"key": "rs-issuer", "algorithm": "RS256",
                              "rsa_public_key": RSA.public_pem},
                             {"key": "ed-issuer", "algorithm": "EdDSA",
                              "rsa_public_key": ED.public_pem}]},
        ],
    )


@pytest.fixture(scope="module")
def config_args(upstream_servers, idp, rotating_idp, unused_port):
    return (upstream_servers[0].url, idp, rotating_idp, unused_port)


@pytest.fixture(scope="module")
def gw(module_gateway_factory, config_args):
    return module_gateway_factory(gateway_config(*config_args))


@pytest.fixture(scope="module")
def unused_port():
    from support.gateway import free_port
    return free_port()


def hs256(claims: dict, secret: bytes = HS_SECRET.encode(), **header) -> str:
    return forge_hs256(claims, secret, **header)


def get(http, gw, path: str, token: str | None = None, **kwargs):
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http.get(gw.url + path, headers=headers, **kwargs)


def assert_refused(response, status: int, message: str, www: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["message"] == message and body["request_id"]
    if www is not None:
        assert response.headers["www-authenticate"] == www


def idp_claims(server: IdentityServer, **extra) -> dict:
    return {"iss": server.issuer, "aud": "api", "sub": "alice", "exp": time.time() + 300,
            **extra}


# ---- jwt (Kong) -------------------------------------------------------------------------
def test_kong_hs256_sets_identity(gw, http, upstream):
    response = get(http, gw, "/kong", hs256({"iss": "hs-issuer"}), headers=FORGED)
    assert response.status_code == 200, response.text
    sent = upstream.requests[-1]
    assert sent.header("x-consumer-username") == "alice"
    assert sent.header("x-consumer-custom-id") == "cust-alice"
    assert sent.header("x-consumer-id") not in (None, "forged")
    assert sent.header("x-credential-identifier") == "hs-issuer"
    assert sent.header("x-anonymous-consumer") is None
    # the uri parameter "jwt" is a source by default
    assert http.get(gw.url + "/kong", params={"jwt": hs256({"iss": "hs-issuer"})}).status_code == 200


def test_kong_refusals(gw, http, upstream):
    invalid = 'Bearer error="invalid_token"'
    assert_refused(get(http, gw, "/kong"), 401, "Unauthorized", "Bearer")
    assert_refused(get(http, gw, "/kong", unsigned({"iss": "hs-issuer"})), 401,
                   "Bad token; invalid alg", invalid)
    assert_refused(get(http, gw, "/kong", hs256({"iss": "hs-issuer"}, b"wrong")), 401,
                   "Invalid signature", invalid)
    assert_refused(get(http, gw, "/kong", hs256({"iss": "nobody"})), 401,
                   "No credentials found for given 'iss'", invalid)
    assert_refused(get(http, gw, "/kong", hs256({"sub": "x"})), 401,
                   "No mandatory 'iss' in claims", invalid)
    assert upstream.requests == []


def test_kong_rs256_credential_and_key_confusion(gw, http, upstream):
    assert get(http, gw, "/kong", RSA.sign({"iss": "rs-issuer"}, kid=None)).status_code == 200
    assert upstream.requests[-1].header("x-consumer-username") == "bob"
    assert get(http, gw, "/kong", ED.sign({"iss": "ed-issuer"}, kid=None)).status_code == 200
    confused = forge_hs256({"iss": "rs-issuer"}, RSA.public_pem.encode())
    assert_refused(get(http, gw, "/kong", confused), 401, "Invalid algorithm")
    other = rsa_key("other").sign({"iss": "rs-issuer"}, kid=None)
    assert_refused(get(http, gw, "/kong", other), 401, "Invalid signature")


def test_kong_secret_is_base64(gw, http):
    token = hs256({"iss": "b64-issuer"}, B64_RAW)
    assert get(http, gw, "/kong-b64", token).status_code == 200
    # the same token where the secret is taken as written does not verify
    assert_refused(get(http, gw, "/kong", token), 401, "Invalid signature")


def test_kong_maximum_expiration(gw, http):
    assert get(http, gw, "/kong-max", hs256({"iss": "hs-issuer", "exp": time.time() + 30})
               ).status_code == 200
    assert_refused(get(http, gw, "/kong-max", hs256({"iss": "hs-issuer",
                                                     "exp": time.time() + 3600})),
                   401, "exp exceeds maximum allowed expiration")
    assert_refused(get(http, gw, "/kong-max", hs256({"iss": "hs-issuer",
                                                     "exp": time.time() - 1})),
                   401, "token expired")
    assert_refused(get(http, gw, "/kong-max", hs256({"iss": "hs-issuer"})), 401,
                   "exp must be a number")


def test_kong_expired_or_early_token_is_refused_with_the_default_config(gw, http, upstream):
    """GUARANTEES.md §13: with claims_to_verify unset (Kong would accept these), a passed
    exp or a future nbf is refused."""
    invalid = 'Bearer error="invalid_token"'
    assert_refused(get(http, gw, "/kong", hs256({"iss": "hs-issuer", "exp": 1000})), 401,
                   "token expired", invalid)
    assert_refused(get(http, gw, "/kong", hs256({"iss": "hs-issuer",
                                                 "exp": time.time() - 1})),
                   401, "token expired", invalid)
    assert_refused(get(http, gw, "/kong", hs256({"iss": "hs-issuer",
                                                 "nbf": time.time() + 300})),
                   401, "token not valid yet", invalid)
    assert upstream.requests == []
    fresh = hs256({"iss": "hs-issuer", "exp": time.time() + 60, "nbf": time.time() - 1})
    assert get(http, gw, "/kong", fresh).status_code == 200


def test_kong_key_claim_name_uri_param_and_cookie(gw, http, upstream):
    token = hs256({"sub": "x"}, kid="hs-issuer")
    assert http.get(gw.url + "/kong-sources", params={"token": token}).status_code == 200
    assert upstream.requests[-1].header("x-credential-identifier") == "hs-issuer"
    response = http.get(gw.url + "/kong-sources", headers={"Cookie": f"jwt_session={token}"})
    assert response.status_code == 200, response.text
    # header_names is empty on this route: a bearer header is not looked at
    assert_refused(get(http, gw, "/kong-sources", token), 401, "Unauthorized",
                   'Bearer realm="kong"')
    assert_refused(http.get(gw.url + "/kong-sources", params={"token": hs256({"iss": "x"})}),
                   401, "No mandatory 'kid' in claims", 'Bearer realm="kong", error="invalid_token"')


# ---- jwt-jwks ---------------------------------------------------------------------------
@pytest.mark.parametrize("signer", [RSA.sign, EC.sign, ED.sign], ids=["RS256", "ES256", "EdDSA"])
def test_jwks_accepts_keys_from_the_jwks(gw, http, upstream, idp, signer):
    response = get(http, gw, "/jwks", signer(idp_claims(idp)), headers=FORGED)
    assert response.status_code == 200, response.text
    sent = upstream.requests[-1]
    assert sent.header("x-credential-identifier") == "alice"
    assert sent.header("x-consumer-id") is None and sent.header("x-anonymous-consumer") is None


def test_jwks_attacks_are_refused(gw, http, upstream, idp):
    claims = idp_claims(idp)
    invalid = 'Bearer error="invalid_token"'
    cases = [
        (unsigned(claims), "Bad token; invalid alg"),
        (unsigned(claims, alg="None"), "Bad token; invalid alg"),
        (forge_hs256(claims, RSA.public_pem.encode(), kid=RSA.kid), "Invalid algorithm"),
        (ATTACKER.sign(claims, jwk=ATTACKER.public_jwk()), "No key found for the token"),
        (ATTACKER.sign(claims, kid=RSA.kid, jwk=ATTACKER.public_jwk()), "Invalid signature"),
        (ATTACKER.sign(claims, kid=RSA.kid, jku=idp.attacker_jwks_uri), "Invalid signature"),
        (ATTACKER.sign(claims, kid=RSA.kid, x5u=idp.attacker_jwks_uri), "Invalid signature"),
        (RSA.sign(claims, crit=["urn:example"], **{"urn:example": True}),
         "Bad token; unsupported 'crit' header"),
        (ENC.sign(claims), "No key found for the token"),
    ]
    for token, message in cases:
        assert_refused(get(http, gw, "/jwks", token), 401, message, invalid)
    assert idp.attacker_fetches == 0
    assert upstream.requests == []


@pytest.mark.parametrize("change,message", [
    ({"exp": -5}, "token expired"),
    ({"nbf": 300}, "token not valid yet"),
    ({"iss": "https://evil.example"}, "issuer not allowed"),
    ({"aud": "someone-else"}, "audience not allowed"),
])
def test_jwks_claims(gw, http, idp, change, message):
    claims = idp_claims(idp)
    for name, value in change.items():
        claims[name] = time.time() + value if name in ("exp", "nbf") else value
    assert_refused(get(http, gw, "/jwks", RSA.sign(claims)), 401, message,
                   'Bearer error="invalid_token"')


def test_jwks_consumer_mapping(gw, http, upstream, idp):
    response = get(http, gw, "/jwks-consumer", EC.sign(idp_claims(idp, sub="bob")))
    assert response.status_code == 200, response.text
    assert upstream.requests[-1].header("x-consumer-username") == "bob"
    assert_refused(get(http, gw, "/jwks-consumer", EC.sign(idp_claims(idp, sub="zed"))), 403,
                   "Consumer not found for the token")
    assert_refused(get(http, gw, "/jwks-consumer"), 401, "Unauthorized", 'Bearer realm="api"')


def test_jwks_discovery(gw, http, idp):
    before = idp.discovery_fetches
    assert get(http, gw, "/jwks-discovery", ED.sign(idp_claims(idp))).status_code == 200
    assert get(http, gw, "/jwks-discovery", ED.sign(idp_claims(idp))).status_code == 200
    assert idp.discovery_fetches - before <= 1


def test_jwks_endpoint_down_is_503(gw, http, idp):
    response = get(http, gw, "/jwks-down", RSA.sign(idp_claims(idp)))
    assert_refused(response, 503, "Unable to verify the token: signing keys unavailable")
    assert int(response.headers["retry-after"]) >= 1


def test_jwks_keys_rotated_while_running(gw, http, rotating_idp):
    server = rotating_idp
    old = server.keys[0]
    assert get(http, gw, "/jwks-rotation", old.sign(idp_claims(server))).status_code == 200
    assert server.jwks_fetches == 1
    new = rsa_key("new")
    server.rotate(new)
    token = new.sign(idp_claims(server))
    # within the window the unknown kid is not fetched, however many requests ask
    started = time.monotonic()
    refused = 0
    while time.monotonic() - started < ROTATION_WINDOW * 0.6:
        refused += get(http, gw, "/jwks-rotation", token).status_code == 401
        get(http, gw, "/jwks-rotation", ATTACKER.sign(idp_claims(server)))
    assert refused >= 3 and server.jwks_fetches == 1
    time.sleep(ROTATION_WINDOW * 0.5)
    response = get(http, gw, "/jwks-rotation", token)
    assert response.status_code == 200, response.text
    assert server.jwks_fetches == 2
    for _ in range(10):  # unknown kids right after a fetch: no new fetch
        get(http, gw, "/jwks-rotation", ATTACKER.sign(idp_claims(server)))
    assert server.jwks_fetches == 2
    # the old key left the JWKS: its tokens are refused now
    assert_refused(get(http, gw, "/jwks-rotation", old.sign(idp_claims(server))), 401,
                   "No key found for the token")



def test_jwks_keys_survive_a_reload(gw, http, idp, config_args):
    """Keys live in the worker's store: a new configuration (a new plugin instance on a new
    route, same JWKS URL) verifies without fetching again."""
    assert get(http, gw, "/jwks", RSA.sign(idp_claims(idp))).status_code == 200
    fetches = idp.jwks_fetches
    gw.reload_config(gateway_config(*config_args, route("jwks-reloaded", jwks(idp))))
    token = EC.sign(idp_claims(idp))
    deadline = time.monotonic() + 5
    while (response := get(http, gw, "/jwks-reloaded", token)).status_code == 404:
        assert time.monotonic() < deadline, "the reload was not applied"
        time.sleep(0.05)
    assert response.status_code == 200, response.text
    assert get(http, gw, "/jwks", token).status_code == 200
    assert idp.jwks_fetches == fetches
