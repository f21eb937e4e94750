"""jose rules (pure), and the jwt and jwt-jwks plugins driven directly with requests built
in memory (jwt-jwks against an in-process JWKS server, tests/support/jwks.py).

GUARANTEES.md §13: algorithms from configuration only, no ``none``, key type bound to the
algorithm, ``use: enc`` ignored, exp/nbf/iss/aud, ``crit``, ``jku``/``x5u``/``jwk`` never
used, JWKS cached and refetched at most once per interval, one fetch for concurrent
requests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from guichet.config.model import Consumer, JwtSecret
from guichet.plugins.bundled import jose
from guichet.plugins.bundled.jwt_auth import JwtAuth
from guichet.plugins.bundled.jwt_jwks import JwtJwks
from guichet.plugins.env import BuildEnv
from guichet.plugins.stores import Stores
from support.jwks import (IdentityServer, ec_key, ed25519_key, forge_hs256, rsa_key,
                          unsigned)
from support.plugin_requests import bearer, make_env, request, upstream_header

NOW = time.time()  # for the pure rules, which take "now" as an argument
RSA = rsa_key("rsa-1")
RSA_OTHER = rsa_key("rsa-2")
EC = ec_key("ec-1")
ED = ed25519_key("ed-1")
ATTACKER = rsa_key("evil")
ALICE = Consumer(id="c-alice", username="alice", custom_id="A1")
BOB = Consumer(id="c-bob", username="bob")


def environment(consumers=(ALICE, BOB), secrets=(), stores: Stores | None = None) -> BuildEnv:
    return make_env(consumers, stores, jwt_secrets=tuple(secrets))


def claims(**extra: Any) -> dict[str, Any]:
    return {"iss": "https://idp.test", "aud": "api", "sub": "alice", "exp": NOW + 600, **extra}


# ---------------------------------------------------------------------------- jose
@pytest.mark.parametrize("token,reason", [
    ("a.b", "invalid JSON"),
    ("!!!.e30.", "invalid JSON"),
    (f"{base64.urlsafe_b64encode(b'[1]').decode().rstrip('=')}.e30.", "invalid JSON"),
    (unsigned({}), "invalid alg"),
    (unsigned({}, alg="NONE"), "invalid alg"),
    (unsigned({}, alg="HS1"), "invalid alg"),
    ("eyJhbGciOiJIUzI1NiJ9.W10.", "invalid claims"),
    ("eyJhbGciOiJIUzI1NiJ9.e30.a+b", "invalid signature"),
    ("eyJhbGciOiJIUzI1NiJ9.e30.abc.def", "invalid signature"),
])
def test_parse_compact_refuses_with_kong_reasons(token, reason):
    with pytest.raises(jose.TokenError, match=f"^{reason}$"):
        jose.parse_compact(token)


def test_base64url_is_strict():
    assert jose.b64url_decode("YWI") == b"ab"
    for bad in ("YWI=", "Y+I", "Y/I", "Y"):
        with pytest.raises(ValueError):
            jose.b64url_decode(bad)


@pytest.mark.parametrize("key,fits", [
    (RSA.public_key, {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    (EC.public_key, {"ES256"}),
    (ec_key(curve=ec.SECP384R1()).public_key, {"ES384"}),
    (ED.public_key, {"EdDSA"}),
    (b"secret", {"HS256", "HS384", "HS512"}),
])
def test_key_type_is_bound_to_the_algorithm(key, fits):
    assert {alg for alg in jose.SUPPORTED_ALGORITHMS if jose.key_fits(key, alg)} == fits


def test_verify_signature_uses_the_configured_algorithm_and_key():
    good = jose.parse_compact(RSA.sign(claims()))
    assert jose.verify_signature(good, "RS256", RSA.public_key)
    assert not jose.verify_signature(good, "RS256", RSA_OTHER.public_key)
    assert not jose.verify_signature(good, "PS256", RSA.public_key)
    confused = jose.parse_compact(forge_hs256(claims(), RSA.public_pem.encode()))
    assert not jose.verify_signature(confused, "HS256", RSA.public_key)
    with pytest.raises(ValueError):
        jose.prepare_hmac_key(RSA.public_pem.encode())  # a PEM is never an HMAC secret
    header, _, sig = RSA.sign(claims()).split(".")
    forged_body = jose_b64(b'{"sub":"root"}')
    tampered = jose.parse_compact(f"{header}.{forged_body}.{sig}")
    assert not jose.verify_signature(tampered, "RS256", RSA.public_key)
    p384 = ec_key("p384", "ES384", ec.SECP384R1())
    assert not jose.verify_signature(jose.parse_compact(p384.sign({}, alg="ES384")), "ES256",
                                     p384.public_key)


def jose_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_load_public_key_pem_checks_the_type():
    assert jose.key_fits(jose.load_public_key_pem(EC.public_pem, "ES256"), "ES256")
    with pytest.raises(ValueError):
        jose.load_public_key_pem(EC.public_pem, "RS256")
    with pytest.raises(ValueError):
        jose.load_public_key_pem("not a key", "RS256")


def test_parse_jwks_keeps_only_signature_keys():
    enc = rsa_key("enc")
    short = rsa_key("short", bits=1024)
    p384 = ec_key("p384", curve=ec.SECP384R1())
    private = RSA.public_jwk() | {"kid": "with-d", "d": "AQAB"}
    document = {"keys": [
        RSA.public_jwk(), EC.public_jwk(), ED.public_jwk(),
        enc.public_jwk() | {"use": "enc"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        RSA_OTHER.public_jwk() | {"key_ops": ["encrypt"]},
        short.public_jwk(),
        p384.public_jwk() | {"alg": "ES256"},
        RSA.public_jwk() | {"kid": 7},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not a key", private,
    ]}
    keys = jose.parse_jwks(document)
    assert [k.kid for k in keys.keys] == ["rsa-1", "ec-1", "ed-1", "with-d"]
    assert keys.ignored == 8
    assert [k.kid for k in keys.candidates("RS256", None)] == ["rsa-1", "with-d"]
    assert keys.candidates("ES256", "rsa-1") == []
    assert [k.kid for k in keys.candidates("EdDSA", "ed-1")] == ["ed-1"]
    with pytest.raises(jose.JwksError):
        jose.parse_jwks({"keys": "x"})


@pytest.mark.parametrize("token_claims,violation", [
    (claims(), None),
    (claims(exp=NOW - 9), None),  # within the 10 s leeway below
    (claims(exp=NOW - 10), "token expired"),
    (claims(exp=True), "exp must be a number"),
    (claims(nbf=NOW + 60), "token not valid yet"),
    (claims(nbf=NOW + 5), None),
    (claims(iat=NOW + 60), "token issued in the future"),
    (claims(iss="https://idp.test/"), "issuer not allowed"),
    (claims(aud="other"), "audience not allowed"),
    (claims(aud=["other", "api"]), None),
    ({k: v for k, v in claims().items() if k != "aud"}, "audience not allowed"),
    ({k: v for k, v in claims().items() if k != "exp"}, "missing required claim 'exp'"),
])
def test_claim_rules(token_claims, violation):
    rules = jose.ClaimRules("https://idp.test", ("api",), ("exp",), leeway=10)
    assert rules.violation(token_claims, NOW) == violation


def test_kong_claim_checks():
    check = jose.kong_claim_errors
    assert check({"exp": NOW + 1}, ["exp", "nbf"], NOW) == {"nbf": "must be a number"}
    assert check({"exp": NOW, "nbf": NOW}, ["exp", "nbf"], NOW) == {"exp": "token expired"}
    assert check({"nbf": NOW + 1}, ["nbf"], NOW) == {"nbf": "token not valid yet"}
    assert check({"exp": "soon"}, ["exp"], NOW) == {"exp": "must be a number"}
    limit = jose.kong_maximum_expiration_error
    assert limit({"exp": NOW + 100}, 100, NOW) == {}
    assert limit({"exp": NOW + 101}, 100, NOW) == {"exp": "exceeds maximum allowed expiration"}
    assert limit({}, 100, NOW) == {"exp": "exceeds maximum allowed expiration"}


# ---------------------------------------------------------------------------- jwt (Kong)
SECRETS = (
    JwtSecret(id="s-hs", consumer_id="c-alice", key="hs-key", secret="s3cr3t-s3cr3t-s3cr3t"),
    JwtSecret(id="s-b64", consumer_id="c-alice", key="b64-key", algorithm="HS512",
              secret=base64.b64encode(b"\xfb\xff raw secret bytes \x00").decode()),
    JwtSecret(id="s-rs", consumer_id="c-bob", key="rs-key", algorithm="RS256",
              rsa_public_key=RSA.public_pem),
    JwtSecret(id="s-ps", consumer_id="c-bob", key="ps-key", algorithm="PS256",
              rsa_public_key=RSA.public_pem),
    JwtSecret(id="s-es", consumer_id="c-bob", key="es-key", algorithm="ES256",
              rsa_public_key=EC.public_pem),
    JwtSecret(id="s-ed", consumer_id="c-bob", key="ed-key", algorithm="EdDSA",
              rsa_public_key=ED.public_pem),
    JwtSecret(id="s-wrong", consumer_id="c-bob", key="wrong-type", algorithm="RS256",
              rsa_public_key=EC.public_pem),
    JwtSecret(id="s-orphan", consumer_id="c-gone", key="orphan", secret="orphan-secret-xx"),
)


def jwt_plugin(**config: Any) -> JwtAuth:
    return JwtAuth(JwtAuth.Config.model_validate(config), environment(secrets=SECRETS))


def hs(payload: dict[str, Any], secret: bytes = b"s3cr3t-s3cr3t-s3cr3t", **header: Any) -> str:
    return forge_hs256(payload, secret, **header)


def refusal(plugin, req) -> tuple[int, str, str | None]:
    answer = plugin.access(req)
    assert answer is not None, "the request was let through"
    return answer.status, answer.message, dict(answer.headers).get("WWW-Authenticate")


def test_jwt_hs256_success_sets_consumer_and_claims():
    plugin, token = jwt_plugin(), hs({"iss": "hs-key", "name": "x"})
    req = bearer(token)
    assert plugin.access(req) is None
    assert req.consumer is ALICE and req.credential.id == "s-hs"
    assert upstream_header(req, "X-Consumer-ID") == "c-alice"
    assert upstream_header(req, "X-Credential-Identifier") == "hs-key"
    assert req.ctx["jwt_claims"] == {"iss": "hs-key", "name": "x"}
    assert req.ctx["authenticated_jwt_token"] == token


@pytest.mark.parametrize("key,signer", [
    ("rs-key", lambda c: RSA.sign(c, kid=None)),
    ("ps-key", lambda c: RSA.sign(c, alg="PS256", kid=None)),
    ("es-key", lambda c: EC.sign(c, kid=None)),
    ("ed-key", lambda c: ED.sign(c, kid=None)),
])
def test_jwt_asymmetric_families(key, signer):
    req = bearer(signer({"iss": key}))
    assert jwt_plugin().access(req) is None and req.consumer is BOB


def test_jwt_secret_is_base64():
    raw = b"\xfb\xff raw secret bytes \x00"
    header = jose_b64(b'{"alg":"HS512","typ":"JWT"}')
    body = jose_b64(b'{"iss":"b64-key"}')
    sig = jose_b64(hmac.new(raw, f"{header}.{body}".encode(), hashlib.sha512).digest())
    token = f"{header}.{body}.{sig}"
    assert jwt_plugin(secret_is_base64=True).access(bearer(token)) is None
    assert refusal(jwt_plugin(), bearer(token))[1] == "Invalid signature"


@pytest.mark.parametrize("req_factory,message", [
    (lambda: request(), "Unauthorized"),
    (lambda: request(authorization="Basic abc"), "Unauthorized"),
    (lambda: request(query="jwt"), "Unrecognizable token"),
    (lambda: request(query=f"jwt={hs({'iss': 'hs-key'})}", authorization="Bearer x.y.z"),
     "Multiple tokens provided"),
    (lambda: bearer(unsigned({"iss": "hs-key"})), "Bad token; invalid alg"),
    (lambda: bearer("abc"), "Bad token; invalid JSON"),
    (lambda: bearer(hs({"sub": "x"})), "No mandatory 'iss' in claims"),
    (lambda: bearer(hs({"iss": ""})), "Invalid 'iss' in claims"),
    (lambda: bearer(hs({"iss": 12})), "Invalid 'iss' in claims"),
    (lambda: bearer(hs({"iss": "nobody"})), "No credentials found for given 'iss'"),
    (lambda: bearer(hs({"iss": "rs-key"})), "Invalid algorithm"),
    # RS256 -> HS256 key confusion: an HS256 token "signed" with the RSA public key PEM
    (lambda: bearer(forge_hs256({"iss": "rs-key"}, RSA.public_pem.encode())), "Invalid algorithm"),
    (lambda: bearer(RSA.sign({"iss": "hs-key"}, alg="RS256")), "Invalid algorithm"),
    (lambda: bearer(hs({"iss": "hs-key"}, b"wrong-secret")), "Invalid signature"),
    (lambda: bearer(RSA_OTHER.sign({"iss": "rs-key"})), "Invalid signature"),
    (lambda: bearer(RSA.sign({"iss": "wrong-type"})), "Invalid key/secret"),
    (lambda: bearer(hs({"iss": "hs-key"}, crit=["exp"], exp=1)),
     "Bad token; unsupported 'crit' header"),
])
def test_jwt_refusals(req_factory, message):
    status, got, www = refusal(jwt_plugin(), req_factory())
    assert (status, got) == (401, message)
    assert www == ("Bearer" if message == "Unauthorized" else 'Bearer error="invalid_token"')


def test_jwt_orphan_credential_and_realm():
    answer = jwt_plugin(realm="api").access(bearer(hs({"iss": "orphan"}, b"orphan-secret-xx")))
    assert (answer.status, answer.message) == (401, "Could not find consumer for 'iss=orphan'")
    assert refusal(jwt_plugin(realm="api"), request())[2] == 'Bearer realm="api"'
    assert refusal(jwt_plugin(realm="api"), bearer("x"))[2] == \
        'Bearer realm="api", error="invalid_token"'


def test_jwt_token_sources():
    token = hs({"iss": "hs-key"})
    plugin = jwt_plugin(uri_param_names=["t"], cookie_names=["session"],
                        header_names=["x-token"])
    for req in (request(query=f"a=1&t={token}"), request(cookie=f"x=1; SESSION={token}"),
                request(x_token=f"bearer {token}"), request(query=f"t={token}&t={token}")):
        assert plugin.access(req) is None, req
    assert refusal(plugin, bearer(token))[1] == "Unauthorized"  # authorization not listed


def test_jwt_claims_to_verify_and_maximum_expiration():
    now = time.time()  # the plugin reads the clock: not the module's import-time NOW
    plugin = jwt_plugin(claims_to_verify=["exp", "nbf"])
    assert plugin.access(bearer(hs({"iss": "hs-key", "exp": now + 60, "nbf": now - 1}))) is None
    assert refusal(plugin, bearer(hs({"iss": "hs-key", "exp": now - 1, "nbf": now})))[1] == \
        "token expired"
    assert refusal(plugin, bearer(hs({"iss": "hs-key", "exp": now + 60, "nbf": now + 60})))[1] \
        == "token not valid yet"
    assert refusal(plugin, bearer(hs({"iss": "hs-key"})))[1] == \
        "exp must be a number; nbf must be a number"
    capped = jwt_plugin(claims_to_verify=["exp"], maximum_expiration=100)
    assert capped.access(bearer(hs({"iss": "hs-key", "exp": now + 90}))) is None
    assert refusal(capped, bearer(hs({"iss": "hs-key", "exp": now + 500})))[1] == \
        "exp exceeds maximum allowed expiration"


def test_jwt_always_refuses_a_passed_exp_or_a_future_nbf():
    """GUARANTEES.md §13: a token's exp and nbf are checked whether or not
    claims_to_verify lists them (Kong checks only the listed ones); the list keeps its
    meaning of requiring the claim."""
    plugin = jwt_plugin()  # claims_to_verify unset
    now = time.time()
    assert refusal(plugin, bearer(hs({"iss": "hs-key", "exp": 1000}))) == \
        (401, "token expired", 'Bearer error="invalid_token"')
    assert refusal(plugin, bearer(hs({"iss": "hs-key", "exp": now - 1})))[1] == "token expired"
    assert refusal(plugin, bearer(hs({"iss": "hs-key", "nbf": now + 60})))[1] == \
        "token not valid yet"
    assert refusal(plugin, bearer(hs({"iss": "hs-key", "exp": "2999-01-01"})))[1] == \
        "exp must be a number"
    assert refusal(plugin, bearer(hs({"iss": "hs-key", "exp": now - 1, "nbf": now + 60})))[1] \
        == "token expired; token not valid yet"
    assert plugin.access(bearer(hs({"iss": "hs-key", "exp": now + 60, "nbf": now - 1}))) is None
    assert plugin.access(bearer(hs({"iss": "hs-key", "exp": None}))) is None  # null: absent
    assert plugin.access(bearer(hs({"iss": "hs-key"}))) is None  # absent: not required
    # listed claims are required; unlisted ones still checked when present
    only_nbf = jwt_plugin(claims_to_verify=["nbf"])
    assert refusal(only_nbf, bearer(hs({"iss": "hs-key", "nbf": now - 1, "exp": now - 1})))[1] \
        == "token expired"
    assert refusal(only_nbf, bearer(hs({"iss": "hs-key", "exp": now + 60})))[1] == \
        "nbf must be a number"
    # an expired token with anonymous: the request goes on as the anonymous consumer
    req = bearer(hs({"iss": "hs-key", "exp": now - 1}))
    assert jwt_plugin(anonymous="bob").access(req) is None and req.credential is None


def test_jwt_key_claim_name_reads_claims_then_header():
    plugin = jwt_plugin(key_claim_name="kid")
    assert plugin.access(bearer(hs({"sub": "x"}, kid="hs-key"))) is None
    assert plugin.access(bearer(hs({"kid": "hs-key"}, kid="nope"))) is None
    assert refusal(plugin, bearer(hs({"iss": "hs-key"})))[1] == "No mandatory 'kid' in claims"


def test_jwt_config_validation():
    with pytest.raises(ValidationError, match="requires 'exp'"):
        JwtAuth.Config.model_validate({"maximum_expiration": 10})
    with pytest.raises(ValidationError):
        JwtAuth.Config.model_validate({"claims_to_verify": ["iat"]})
    with pytest.raises(ValidationError):
        JwtAuth.Config.model_validate({"maximum_expiration": 31_536_001,
                                       "claims_to_verify": ["exp"]})
    assert JwtAuth.Config.model_validate({}).header_names == ["authorization"]


def test_jwt_anonymous_and_preflight():
    plugin = jwt_plugin(anonymous="bob")
    req = bearer(hs({"iss": "hs-key"}, b"bad-secret-bad-secret"))
    assert plugin.access(req) is None
    assert req.consumer is BOB and req.credential is None
    assert upstream_header(req, "X-Anonymous-Consumer") == "true"
    authenticated = bearer("garbage")
    authenticated.credential = object()  # an earlier plugin authenticated it
    assert plugin.access(authenticated) is None and upstream_header(authenticated, "X-Consumer-ID") is None
    answer = jwt_plugin(anonymous="ghost").access(request())
    assert answer.status == 500
    assert jwt_plugin(run_on_preflight=False).access(request("OPTIONS")) is None
    assert jwt_plugin().access(request("OPTIONS")).status == 401


# ---------------------------------------------------------------------------- jwt-jwks
@pytest.fixture(scope="module")
def idp():
    with IdentityServer() as server:
        yield server


@pytest.fixture
def fresh_idp(idp):
    idp.rotate(RSA, EC, ED)
    idp.extra_jwks = []
    idp.attacker_keys = [ATTACKER]
    idp.jwks_status, idp.jwks_delay = 200, 0.0
    idp.reset_counters()
    return idp


def jwks_plugin(idp, stores: Stores | None = None, **config: Any) -> JwtJwks:
    base = {"issuer": idp.issuer, "jwks_uri": idp.jwks_uri, "audiences": ["api"],
            "algorithms": ["RS256", "ES256", "EdDSA", "PS256"]}
    return JwtJwks(JwtJwks.Config.model_validate(base | config), environment(stores=stores))


def idp_claims(idp, **extra: Any) -> dict[str, Any]:
    return {"iss": idp.issuer, "aud": "api", "sub": "alice", "exp": time.time() + 600, **extra}


def jwks_refusal(resolve, plugin, req) -> tuple[int, str]:
    answer = resolve(plugin.access(req))
    assert answer is not None, "the request was let through"
    return answer.status, answer.message


@pytest.mark.parametrize("signer", [RSA.sign, EC.sign, ED.sign,
                                    lambda c: RSA.sign(c, alg="PS256")])
def test_jwks_accepts_rsa_ec_ed25519(resolve, fresh_idp, signer):
    plugin = jwks_plugin(fresh_idp)
    req = bearer(signer(idp_claims(fresh_idp)))
    assert resolve(plugin.access(req)) is None
    assert req.authenticated and req.consumer is None
    assert upstream_header(req, "X-Credential-Identifier") == "alice"
    assert req.ctx["jwt_claims"]["sub"] == "alice"


def test_jwks_algorithms_come_from_configuration(resolve, fresh_idp):
    for algorithms in ([], ["none"], ["HS256"], ["RS256", "nOnE"], ["ES256K"]):
        with pytest.raises(ValidationError):
            jwks_plugin(fresh_idp, algorithms=algorithms)
    only_es = jwks_plugin(fresh_idp, algorithms=["ES256"])
    claims_ = idp_claims(fresh_idp)
    assert jwks_refusal(resolve, only_es, bearer(RSA.sign(claims_))) == (401, "Invalid algorithm")
    plugin = jwks_plugin(fresh_idp)
    assert jwks_refusal(resolve, plugin, bearer(unsigned(claims_))) == (401, "Bad token; invalid alg")
    confused = forge_hs256(claims_, RSA.public_pem.encode(), kid=RSA.kid)
    assert jwks_refusal(resolve, plugin, bearer(confused)) == (401, "Invalid algorithm")
    # an RS256 header on a key that is EC: the key type decides, not the header
    assert jwks_refusal(resolve, plugin, bearer(forge_hs256(claims_, b"x", alg="RS256", kid="ec-1"))) \
        == (401, "No key found for the token")


def test_jwks_header_keys_are_never_used(resolve, fresh_idp):
    plugin = jwks_plugin(fresh_idp)
    claims_ = idp_claims(fresh_idp)
    embedded = ATTACKER.sign(claims_, jwk=ATTACKER.public_jwk())
    assert jwks_refusal(resolve, plugin, bearer(embedded)) == (401, "No key found for the token")
    as_victim = ATTACKER.sign(claims_, kid=RSA.kid, jwk=ATTACKER.public_jwk(),
                              jku=fresh_idp.attacker_jwks_uri, x5u=fresh_idp.attacker_jwks_uri)
    assert jwks_refusal(resolve, plugin, bearer(as_victim)) == (401, "Invalid signature")
    jku = ATTACKER.sign(claims_, jku=fresh_idp.attacker_jwks_uri)
    assert jwks_refusal(resolve, plugin, bearer(jku)) == (401, "No key found for the token")
    assert fresh_idp.attacker_fetches == 0


@pytest.mark.parametrize("change,message", [
    ({"exp": -1}, "token expired"),
    ({"nbf": 120}, "token not valid yet"),
    ({"iss": "https://evil.test"}, "issuer not allowed"),
    ({"aud": "other"}, "audience not allowed"),
    ({"aud": ["x", "y"]}, "audience not allowed"),
    ({"exp": None}, "missing required claim 'exp'"),
])
def test_jwks_claims(resolve, fresh_idp, change, message):
    claims_ = idp_claims(fresh_idp)
    for name, value in change.items():
        if value is None:
            claims_.pop(name)
        elif name in ("exp", "nbf"):
            claims_[name] = time.time() + value
        else:
            claims_[name] = value
    answer = resolve(jwks_plugin(fresh_idp).access(bearer(RSA.sign(claims_))))
    assert (answer.status, answer.message) == (401, message)
    assert dict(answer.headers)["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_jwks_leeway_crit_and_no_token(resolve, fresh_idp):
    plugin = jwks_plugin(fresh_idp, leeway=30, realm="api")
    late = idp_claims(fresh_idp, exp=time.time() - 10, nbf=time.time() + 10)
    assert resolve(plugin.access(bearer(RSA.sign(late)))) is None
    crit = RSA.sign(idp_claims(fresh_idp), crit=["urn:x"], **{"urn:x": 1})
    assert jwks_refusal(resolve, plugin, bearer(crit)) == (401, "Bad token; unsupported 'crit' header")
    answer = resolve(plugin.access(request()))
    assert (answer.status, dict(answer.headers)["WWW-Authenticate"]) == \
        (401, 'Bearer realm="api"')
    with pytest.raises(ValidationError):
        jwks_plugin(fresh_idp, leeway=301)


def test_jwks_enc_keys_are_ignored(resolve, fresh_idp):
    enc = rsa_key("enc-1")
    fresh_idp.extra_jwks = [enc.public_jwk() | {"use": "enc"}]
    token = enc.sign(idp_claims(fresh_idp))
    assert jwks_refusal(resolve, jwks_plugin(fresh_idp), bearer(token)) == \
        (401, "No key found for the token")


def test_jwks_rotation_refetches_at_most_once_per_interval(resolve, fresh_idp):
    stores = Stores()
    plugin = jwks_plugin(fresh_idp, stores, rediscovery_lifetime=0.5)
    assert resolve(plugin.access(bearer(RSA.sign(idp_claims(fresh_idp))))) is None
    assert fresh_idp.jwks_fetches == 1
    new = rsa_key("rsa-new")
    fresh_idp.rotate(new, EC)
    token = new.sign(idp_claims(fresh_idp))
    # the first fetch was under 0.5 s ago: an unknown kid does not refetch yet
    assert jwks_refusal(resolve, plugin, bearer(token)) == (401, "No key found for the token")
    for _ in range(20):
        resolve(plugin.access(bearer(ATTACKER.sign(idp_claims(fresh_idp)))))
    assert fresh_idp.jwks_fetches == 1
    time.sleep(0.55)
    assert resolve(plugin.access(bearer(token))) is None
    assert fresh_idp.jwks_fetches == 2
    for _ in range(20):  # unknown kids again: at most one fetch per interval
        resolve(plugin.access(bearer(ATTACKER.sign(idp_claims(fresh_idp)))))
    assert fresh_idp.jwks_fetches == 2
    # a new snapshot (reload) keeps the worker's keys, and uses them without awaiting
    reloaded = jwks_plugin(fresh_idp, stores, rediscovery_lifetime=0.5)
    assert reloaded.access(bearer(token)) is None and fresh_idp.jwks_fetches == 2


def test_jwks_concurrent_requests_share_one_fetch(resolve, fresh_idp):
    fresh_idp.jwks_delay = 0.2
    plugin = jwks_plugin(fresh_idp)
    tokens = [RSA.sign(idp_claims(fresh_idp, sub=f"u{i}")) for i in range(20)]

    async def all_at_once():
        return await asyncio.gather(*(plugin.access(bearer(t)) for t in tokens))

    assert resolve(all_at_once()) == [None] * 20
    assert fresh_idp.jwks_fetches == 1


def test_jwks_endpoint_down(resolve, fresh_idp):
    fresh_idp.jwks_status = 500
    plugin = jwks_plugin(fresh_idp, anonymous="bob", rediscovery_lifetime=0.2)
    answer = resolve(plugin.access(bearer(RSA.sign(idp_claims(fresh_idp)))))
    assert (answer.status, answer.message) == (503, "Unable to verify the token: signing keys "
                                                    "unavailable")
    assert dict(answer.headers)["Retry-After"] == "1"
    assert fresh_idp.jwks_fetches == 1
    resolve(plugin.access(bearer(RSA.sign(idp_claims(fresh_idp)))))
    assert fresh_idp.jwks_fetches == 1  # failures are rate-limited too
    anonymous = request()
    assert resolve(plugin.access(anonymous)) is None and anonymous.consumer is BOB  # no token
    # keys held survive a failing refresh
    fresh_idp.jwks_status = 200
    time.sleep(0.25)
    stale_stores = Stores()
    stale = jwks_plugin(fresh_idp, stale_stores, cache_ttl=0.1, rediscovery_lifetime=0.05)
    assert resolve(stale.access(bearer(RSA.sign(idp_claims(fresh_idp))))) is None
    fresh_idp.jwks_status = 500
    time.sleep(0.15)
    assert resolve(stale.access(bearer(RSA.sign(idp_claims(fresh_idp))))) is None
    assert stale_stores.get("jwks").get(fresh_idp.jwks_uri).fetches == 2


def test_jwks_timeout_is_bounded(resolve, fresh_idp):
    fresh_idp.jwks_delay = 1.0
    plugin = jwks_plugin(fresh_idp, timeout=200)
    started = time.monotonic()
    assert resolve(plugin.access(bearer(RSA.sign(idp_claims(fresh_idp))))).status == 503
    assert time.monotonic() - started < 0.8


def test_jwks_discovery(resolve, fresh_idp):
    plugin = jwks_plugin(fresh_idp, jwks_uri=None)
    assert resolve(plugin.access(bearer(EC.sign(idp_claims(fresh_idp))))) is None
    assert (fresh_idp.discovery_fetches, fresh_idp.jwks_fetches) == (1, 1)
    with pytest.raises(ValidationError):
        jwks_plugin(fresh_idp, jwks_uri=None, issuer="not-a-url")


def test_jwks_consumer_mapping(resolve, fresh_idp):
    plugin = jwks_plugin(fresh_idp, consumer_claim=["preferred_username", "sub"])
    req = bearer(RSA.sign(idp_claims(fresh_idp, sub="A1")))
    assert resolve(plugin.access(req)) is None and req.consumer is ALICE  # by custom_id
    req = bearer(RSA.sign(idp_claims(fresh_idp, sub="zzz", preferred_username="bob")))
    assert resolve(plugin.access(req)) is None and req.consumer is BOB
    assert jwks_refusal(resolve, plugin, bearer(RSA.sign(idp_claims(fresh_idp, sub="nobody")))) == \
        (403, "Consumer not found for the token")
    by_id = jwks_plugin(fresh_idp, consumer_claim=["sub"], consumer_by=["id"])
    req = bearer(RSA.sign(idp_claims(fresh_idp, sub="c-bob")))
    assert resolve(by_id.access(req)) is None and req.consumer is BOB
    optional = jwks_plugin(fresh_idp, consumer_claim=["sub"], consumer_optional=True)
    req = bearer(RSA.sign(idp_claims(fresh_idp, sub="nobody")))
    assert resolve(optional.access(req)) is None and req.authenticated and req.consumer is None
    req = bearer(RSA.sign(idp_claims(fresh_idp, sub="x\r\nX-Evil: 1")))
    assert resolve(optional.access(req)) is None
    assert (req.edits or {}).get("x-credential-identifier") == []  # no identifier sent


def test_jwks_token_sources_and_hide_credentials(resolve, fresh_idp):
    token = RSA.sign(idp_claims(fresh_idp))
    plugin = jwks_plugin(fresh_idp, bearer_token_param_type=["query", "cookie"],
                         bearer_token_cookie_name="at", hide_credentials=True)
    req = request(query=f"a=1&access_token={token}")
    assert resolve(plugin.access(req)) is None and req.upstream_query == "a=1"
    req = request(cookie=f"x=1; at={token}; y=2")
    assert resolve(plugin.access(req)) is None and upstream_header(req, "Cookie") == "x=1; y=2"
    assert resolve(plugin.access(bearer(token))).message == "Unauthorized"
    both = request(query=f"access_token={token}", cookie="at=other")
    assert jwks_refusal(resolve, plugin, both) == (401, "Multiple tokens provided")
    header_plugin = jwks_plugin(fresh_idp, hide_credentials=True)
    req = bearer(token)
    assert resolve(header_plugin.access(req)) is None
    assert (req.edits or {}).get("authorization") == []
    with pytest.raises(ValidationError):
        jwks_plugin(fresh_idp, bearer_token_param_type=["cookie"])

