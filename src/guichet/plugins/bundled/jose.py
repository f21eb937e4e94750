"""JOSE rules shared by the token plugins (``jwt``, ``jwt-jwks``, ``oauth2-introspection``):
pure functions, no I/O.

Parsing a compact JWS (Kong's ``jwt_parser``):

- the token is split on its first two dots: header, claims, signature (a third dot stays in
  the signature segment, which then fails to decode);
- segments are base64url without padding; anything outside that alphabet is refused;
- the header and the claims must be JSON objects; the header's ``alg`` must be one of
  :data:`SUPPORTED_ALGORITHMS` (``none`` is not one of them, whatever the case).

Which key may verify which algorithm (GUARANTEES.md §13: no algorithm confusion):

- ``HS*`` only an HMAC secret given by configuration (never a key from a JWKS, never a PEM);
- ``RS*`` and ``PS*`` only an RSA public key;
- ``ES256``/``ES384``/``ES512`` only an EC public key on P-256/P-384/P-521 respectively;
- ``EdDSA`` only an Ed25519 or Ed448 public key.
The algorithm used is always the one the configuration allows; a token's header only
chooses among those, and the key's type must fit it (:func:`key_fits`).

Header parameters: ``crit`` names extensions the recipient must understand; guichet
understands none, so any ``crit`` refuses the token. ``jku``, ``x5u``, ``jwk`` and ``x5c``
are never used to find a key (keys come from configuration or the configured JWKS only).

JWKS (RFC 7517): keys with ``use`` other than ``sig``, with ``key_ops`` lacking ``verify``,
of type ``oct`` (symmetric), of an unknown type or curve, RSA keys under 2048 bits, and
malformed keys are ignored; only public members are read. A key's ``alg``, when present,
restricts it to that algorithm.

Claims (RFC 7519 §4.1, RFC 8725): times are NumericDate numbers (booleans are not);
``exp``: the token is refused once ``now >= exp + leeway``; ``nbf``: refused while
``now + leeway < nbf``; ``iat`` in the future by more than the leeway is refused; ``iss``
must equal the configured issuer exactly; ``aud`` (a string or a list of strings) must
contain one of the configured audiences exactly. Kong's ``jwt`` plugin checks are in
:func:`kong_claim_errors` and :func:`kong_maximum_expiration_error` (no leeway, Kong's
messages).

A claim forwarded to the upstream as a header value (:func:`header_safe`) must hold no
control character and only Latin-1 characters (what the upstream request carries).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Iterable

import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import Algorithm, ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms
from jwt.exceptions import InvalidKeyError

# alg -> (key family, EC curve name or None)
ALGORITHM_KEYS: dict[str, tuple[str, str | None]] = {
    "HS256": ("oct", None), "HS384": ("oct", None), "HS512": ("oct", None),
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "secp256r1"), "ES384": ("EC", "secp384r1"), "ES512": ("EC", "secp521r1"),
    "EdDSA": ("OKP", None),
}
SUPPORTED_ALGORITHMS = frozenset(ALGORITHM_KEYS)
ASYMMETRIC_ALGORITHMS = frozenset(a for a, (kty, _) in ALGORITHM_KEYS.items() if kty != "oct")
_PYJWT: dict[str, Algorithm] = {name: alg for name, alg in get_default_algorithms().items()
                                if name in SUPPORTED_ALGORITHMS}
_JWK_CURVES = {"P-256": "secp256r1", "P-384": "secp384r1", "P-521": "secp521r1"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MIN_RSA_BITS = 2048
MAX_JWKS_KEYS = 100


class TokenError(Exception):
    """A token that cannot be used; ``str(exc)`` is the reason given to the client."""


class JwksError(Exception):
    """A JWKS document that cannot be used at all."""


def bearer_challenges(realm: str | None) -> tuple[str, str]:
    """The ``WWW-Authenticate`` values of a Bearer plugin (RFC 6750): for a missing token,
    and for an invalid one."""
    if realm:
        challenge = f'Bearer realm="{realm}"'
        return challenge, f'{challenge}, error="invalid_token"'
    return "Bearer", 'Bearer error="invalid_token"'


# ---------------------------------------------------------------------------- parsing
def b64url_decode(segment: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2). Raises ``ValueError``."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64_decode_any(value: str) -> bytes | None:
    """A base64 secret in either alphabet, padding optional (Kong's ``secret_is_base64``)."""
    text = value.strip().rstrip("=")
    if len(text) % 4 == 1:
        return None
    text = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class CompactJws:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return self.header["alg"]

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def parse_compact(token: str) -> CompactJws:
    """Decode a compact JWS without verifying it. Raises :class:`TokenError` with Kong's
    reasons: ``invalid JSON``, ``invalid alg``, ``invalid claims``, ``invalid signature``."""
    parts = token.split(".", 2)
    if len(parts) != 3:
        raise TokenError("invalid JSON")
    header_64, claims_64, signature_64 = parts
    try:
        header = orjson.loads(b64url_decode(header_64))
        claims = orjson.loads(b64url_decode(claims_64))
    except ValueError:  # orjson.JSONDecodeError is a ValueError
        raise TokenError("invalid JSON") from None
    if not isinstance(header, dict):
        raise TokenError("invalid JSON")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
        raise TokenError("invalid alg")
    if not isinstance(claims, dict):
        raise TokenError("invalid claims")
    try:
        signature = b64url_decode(signature_64)
    except ValueError:
        raise TokenError("invalid signature") from None
    return CompactJws(header, claims, f"{header_64}.{claims_64}".encode("ascii"), signature)


def has_critical_extensions(header: dict[str, Any]) -> bool:
    """True when the header has ``crit``: guichet understands no JWS extension."""
    return "crit" in header


# ---------------------------------------------------------------------------- keys
def key_fits(key: Any, alg: str) -> bool:
    """Whether ``key`` (a cryptography public key, or bytes for HMAC) may verify ``alg``."""
    family, curve = ALGORITHM_KEYS.get(alg, (None, None))
    if family == "oct":
        return isinstance(key, bytes)
    if family == "RSA":
        return isinstance(key, rsa.RSAPublicKey)
    if family == "EC":
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == curve
    if family == "OKP":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


def load_public_key_pem(pem: str, alg: str) -> Any:
    """The public key in a PEM ``PUBLIC KEY`` block (or an X.509 certificate), checked to
    fit ``alg``. Raises ``ValueError`` when it does not load or does not fit."""
    data = pem.strip().encode("utf-8")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except (ValueError, TypeError):
            raise ValueError("not a PEM public key or certificate") from None
    if not key_fits(key, alg):
        raise ValueError(f"a {type(key).__name__} cannot verify {alg}")
    return key


def prepare_hmac_key(secret: bytes) -> bytes:
    """An HMAC secret accepted by PyJWT (not empty, not a PEM/DER key). Raises ``ValueError``."""
    try:
        return _PYJWT["HS256"].prepare_key(secret)
    except InvalidKeyError as exc:
        raise ValueError(str(exc)) from None


def verify_signature(jws: CompactJws, alg: str, key: Any) -> bool:
    """Check ``jws``'s signature with ``alg`` (chosen by configuration) and ``key``, which
    must fit ``alg``. False on any mismatch, never an exception for a bad signature."""
    if alg not in _PYJWT or not key_fits(key, alg):
        return False
    try:
        return bool(_PYJWT[alg].verify(jws.signing_input, key, jws.signature))
    except (ValueError, TypeError, InvalidKeyError):
        return False


# ---------------------------------------------------------------------------- JWKS
@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    kty: str
    alg: str | None  # the JWK's own "alg", when it names one
    key: Any

    def fits(self, alg: str) -> bool:
        return (self.alg is None or self.alg == alg) and key_fits(self.key, alg)


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[VerificationKey, ...]
    ignored: int = 0  # keys in the document that were not usable

    def has_kid(self, kid: str) -> bool:
        return any(k.kid == kid for k in self.keys)

    def candidates(self, alg: str, kid: str | None) -> list[VerificationKey]:
        """Keys that may verify a token with this ``alg`` and ``kid`` (every fitting key
        when the token names no kid)."""
        return [k for k in self.keys if (kid is None or k.kid == kid) and k.fits(alg)]


def parse_jwks(document: Any) -> KeySet:
    """The usable signature-verification keys of a JWKS document (see module rules)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWK set (no 'keys' list)")
    keys: list[VerificationKey] = []
    ignored = 0
    for jwk in document["keys"][:MAX_JWKS_KEYS]:
        parsed = _parse_jwk(jwk)
        if parsed is None:
            ignored += 1
        else:
            keys.append(parsed)
    ignored += max(0, len(document["keys"]) - MAX_JWKS_KEYS)
    return KeySet(tuple(keys), ignored)


def _parse_jwk(jwk: Any) -> VerificationKey | None:
    if not isinstance(jwk, dict):
        return None
    use = jwk.get("use")
    if use is not None and use != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    alg = jwk.get("alg")
    if alg is not None and (not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS):
        return None
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk({"kty": "RSA", "n": jwk["n"], "e": jwk["e"]})
            if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
                return None
        elif kty == "EC":
            if jwk.get("crv") not in _JWK_CURVES:
                return None
            key = ECAlgorithm.from_jwk({"kty": "EC", "crv": jwk["crv"], "x": jwk["x"],
                                        "y": jwk["y"]})
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return None
        elif kty == "OKP":
            if jwk.get("crv") not in _OKP_CURVES:
                return None
            key = OKPAlgorithm.from_jwk({"kty": "OKP", "crv": jwk["crv"], "x": jwk["x"]})
            if not isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
                return None
        else:  # "oct" (never from a JWKS) and unknown types
            return None
    except (KeyError, TypeError, ValueError, InvalidKeyError):
        return None
    entry = VerificationKey(kid, kty, alg, key)
    if alg is not None and not entry.fits(alg):
        return None  # e.g. an EC P-384 key that says ES256
    return entry


# ---------------------------------------------------------------------------- claims
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """What ``jwt-jwks`` requires of a verified token's claims."""

    issuer: str | None
    audiences: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    leeway: float = 0.0

    def violation(self, claims: dict[str, Any], now: float) -> str | None:
        """Why these claims are refused, or None when they pass."""
        for name in self.required:
            if claims.get(name) is None:
                return f"missing required claim '{name}'"
        leeway = self.leeway
        exp = claims.get("exp")
        if exp is not None:
            if not _is_number(exp):
                return "exp must be a number"
            if now >= exp + leeway:
                return "token expired"
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _is_number(nbf):
                return "nbf must be a number"
            if now + leeway < nbf:
                return "token not valid yet"
        iat = claims.get("iat")
        if iat is not None:
            if not _is_number(iat):
                return "iat must be a number"
            if now + leeway < iat:
                return "token issued in the future"
        if self.issuer is not None and claims.get("iss") != self.issuer:
            return "issuer not allowed"
        if self.audiences and not audience_matches(claims.get("aud"), self.audiences):
            return "audience not allowed"
        return None


def audience_matches(aud: Any, allowed: Iterable[str]) -> bool:
    """``aud`` (a string or a list of strings) contains one of ``allowed``, exactly."""
    if isinstance(aud, str):
        values = [aud]
    elif isinstance(aud, list):
        values = [a for a in aud if isinstance(a, str)]
    else:
        return False
    allowed_set = set(allowed)
    return any(a in allowed_set for a in values)


def kong_claim_errors(claims: dict[str, Any], claims_to_verify: Iterable[str],
                      now: float) -> dict[str, str]:
    """Kong's ``verify_registered_claims``: for each of ``exp``/``nbf`` listed, the claim
    must be a number, ``exp`` later than now and ``nbf`` not later than now."""
    errors: dict[str, str] = {}
    for name in claims_to_verify:
        value = claims.get(name)
        if not _is_number(value):
            errors[name] = "must be a number"
        elif name == "exp" and value <= now:
            errors[name] = "token expired"
        elif name == "nbf" and value > now:
            errors[name] = "token not valid yet"
    return errors


def kong_maximum_expiration_error(claims: dict[str, Any], maximum: float,
                                  now: float) -> dict[str, str]:
    """Kong's ``check_maximum_expiration``: ``exp`` at most ``maximum`` seconds ahead."""
    if maximum <= 0:
        return {}
    exp = claims.get("exp")
    if not _is_number(exp) or exp - now > maximum:
        return {"exp": "exceeds maximum allowed expiration"}
    return {}


def header_safe(text: str) -> bool:
    """Whether ``text`` (a claim) can be sent upstream as a header value as it is."""
    if _CONTROL.search(text):
        return False
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
