"""jwt: authenticate a request by a signed JWT (Kong's ``jwt`` plugin, priority 1450).

Rules (Kong 3.x ``kong/plugins/jwt``: ``schema.lua``, ``handler.lua``, ``jwt_parser.lua``):

- Where the token is looked for: every query argument named in ``uri_param_names`` (all
  values of a repeated one), every cookie named in ``cookie_names``, then the first value
  of every header named in ``header_names``, from which the text after ``Bearer `` is
  taken (``\\s*[Bb]earer\\s+(.+)``, found anywhere in the value, as Kong's regex). Equal
  tokens found in several places count once. None: 401 "Unauthorized"; several different
  ones: 401 "Multiple tokens provided"; a query argument without ``=``: 401
  "Unrecognizable token".
- The token is decoded (:func:`~guichet.plugins.bundled.jose.parse_compact`); a bad one is
  401 "Bad token; <reason>" (``invalid JSON``, ``invalid alg``, ``invalid claims``,
  ``invalid signature``). A token with a ``crit`` header is refused the same way
  (GUARANTEES.md §13; Kong does not look at ``crit``).
- The credential is found by the ``key_claim_name`` claim (``iss`` by default), read from
  the claims, then from the header: missing is 401 "No mandatory 'iss' in claims", empty or
  not a string 401 "Invalid 'iss' in claims", unknown 401 "No credentials found for given
  'iss'".
- The algorithm is the credential's (``HS256`` by default), never the token's: a token whose
  ``alg`` differs is 401 "Invalid algorithm". HS algorithms use the credential's
  ``secret`` (base64-decoded when ``secret_is_base64``), the others its
  ``rsa_public_key`` PEM, which must hold a key of the algorithm's type (RSA for RS/PS, EC
  on the algorithm's curve for ES, Ed25519/Ed448 for EdDSA); a missing or unfit key is 401
  "Invalid key/secret" (such credentials are also logged when the plugin is built). A bad
  signature is 401 "Invalid signature". Signatures are checked by PyJWT's algorithms
  (HMAC compared in constant time).
- ``exp`` and ``nbf``, whenever the token has them (GUARANTEES.md §13; Kong checks them
  only when listed in ``claims_to_verify``): each must be a number; ``exp`` later than
  now, ``nbf`` not later than now (no leeway, as Kong). ``claims_to_verify`` makes the
  listed claims required: a token without one is refused ("exp must be a number", as
  Kong). ``maximum_expiration`` > 0 (which requires ``exp`` in ``claims_to_verify``):
  ``exp`` at most that many seconds ahead. Refusals are 401 with Kong's texts as the
  message ("token expired", "token not valid yet", "exp must be a number", "exp exceeds
  maximum allowed expiration").
- Every 401 but "Unauthorized" (no token) carries ``WWW-Authenticate: Bearer
  error="invalid_token"`` (``Bearer realm="<realm>", error="invalid_token"`` with a
  ``realm``); "Unauthorized" carries ``Bearer`` (``Bearer realm="<realm>"``). A credential
  whose consumer does not exist: 401 "Could not find consumer for '<claim>=<key>'".
- Success: ``req.set_consumer(consumer, credential, credential.key)``; the claims go to
  ``req.ctx["jwt_claims"]`` and the token to ``req.ctx["authenticated_jwt_token"]``.
- ``anonymous`` and ``run_on_preflight`` as every Kong authentication plugin
  (:class:`~guichet.plugins.bundled.key_auth.AnonymousFallback`).
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from guichet.plugins.api import ErrorResponse, Plugin, PluginConfig, Response, error
from guichet.plugins.bundled import jose
from guichet.plugins.bundled.key_auth import AnonymousFallback, Realm, parse_form
from guichet.plugins.consumers import ConsumerDirectory

if TYPE_CHECKING:
    from guichet.config.model import Consumer, JwtSecret
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

log = logging.getLogger("guichet.plugins.auth")

_BEARER = re.compile(r"\s*[Bb]earer\s+(.+)")
_UNRECOGNIZABLE = object()  # a query argument without a value (Kong's boolean ``true``)
MAX_EXPIRATION = 31_536_000  # 365 days, Kong's bound
TIME_CLAIMS = ("exp", "nbf")  # checked whenever present


class JwtConfig(PluginConfig):
    uri_param_names: list[str] = Field(default_factory=lambda: ["jwt"])
    cookie_names: list[str] = Field(default_factory=list)
    header_names: list[str] = Field(default_factory=lambda: ["authorization"])
    key_claim_name: str = "iss"
    secret_is_base64: bool = False
    claims_to_verify: list[Literal["exp", "nbf"]] | None = None
    anonymous: str | None = None
    run_on_preflight: bool = True
    maximum_expiration: float = Field(default=0, ge=0, le=MAX_EXPIRATION)
    realm: Realm | None = None

    @model_validator(mode="after")
    def _maximum_expiration_needs_exp(self) -> "JwtConfig":
        if self.maximum_expiration > 0 and "exp" not in (self.claims_to_verify or ()):
            raise ValueError("maximum_expiration > 0 requires 'exp' in claims_to_verify")
        return self


class JwtEntry:
    """One ``jwt_secrets`` credential, its consumer and its verification key (loaded once
    per snapshot; HMAC keys prepared on first use for each ``secret_is_base64`` value)."""

    __slots__ = ("credential", "consumer", "public_key", "hmac_keys")

    def __init__(self, credential: "JwtSecret", consumer: "Consumer | None") -> None:
        self.credential = credential
        self.consumer = consumer
        self.public_key: Any = None
        self.hmac_keys: dict[bool, bytes | None] = {}
        alg = credential.algorithm or "HS256"
        if alg in jose.ASYMMETRIC_ALGORITHMS and credential.rsa_public_key:
            try:
                self.public_key = jose.load_public_key_pem(credential.rsa_public_key, alg)
            except ValueError as exc:
                log.warning("jwt: credential %s: rsa_public_key unusable for %s: %s",
                            credential.id, alg, exc)

    def key(self, secret_is_base64: bool) -> Any:
        """The key that verifies this credential's algorithm, or None."""
        alg = self.credential.algorithm or "HS256"
        if alg in jose.ASYMMETRIC_ALGORITHMS:
            return self.public_key
        if secret_is_base64 not in self.hmac_keys:
            self.hmac_keys[secret_is_base64] = self._hmac_key(secret_is_base64)
        return self.hmac_keys[secret_is_base64]

    def _hmac_key(self, secret_is_base64: bool) -> bytes | None:
        secret = self.credential.secret
        if not secret:
            return None
        raw = jose.b64_decode_any(secret) if secret_is_base64 else secret.encode("utf-8")
        if raw is None:
            return None
        try:
            return jose.prepare_hmac_key(raw)
        except ValueError:
            return None


def build_jwt_index(directory: ConsumerDirectory) -> dict[str, JwtEntry]:
    """credential key -> entry, for every ``jwt_secrets`` credential (the first of a key)."""
    index: dict[str, JwtEntry] = {}
    for credential in directory.credentials("jwt_secrets"):
        if credential.key not in index:
            index[credential.key] = JwtEntry(credential, directory.get(credential.consumer_id))
    return index


class JwtAuth(Plugin):
    name = "jwt"
    priority = 1450
    Config = JwtConfig
    no_consumer = True

    def __init__(self, config: JwtConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.secrets: dict[str, JwtEntry] = env.consumers.index("jwt-secrets", build_jwt_index)
        self.anonymous = AnonymousFallback(self.name, config.anonymous, env.consumers)
        self.www_authenticate, self.www_invalid = jose.bearer_challenges(config.realm)
        self.claims_to_verify: tuple[str, ...] = tuple(dict.fromkeys(config.claims_to_verify or ()))
        self.header_names = tuple(config.header_names)
        self.cookie_names = tuple(config.cookie_names)

    def access(self, req: "Request") -> Response | None:
        if not self.config.run_on_preflight and req.method == "OPTIONS":
            return None
        if self.anonymous.skip(req):
            return None
        return self.anonymous.conclude(req, self._authenticate(req))

    # ------------------------------------------------------------------ the token
    def _tokens(self, req: "Request") -> list[Any]:
        found: dict[Any, None] = {}
        if self.config.uri_param_names and req.query:
            args = parse_form(req.query)
            for name in self.config.uri_param_names:
                for value in args.get(name, ()):
                    if value is None:
                        found[_UNRECOGNIZABLE] = None
                    elif value:
                        found[value] = None
        if self.cookie_names:
            for name in self.cookie_names:
                value = request_cookie(req, name)
                if value:
                    found[value] = None
        for name in self.header_names:
            values = req.header_values(name)
            if values:
                match = _BEARER.search(values[0])
                if match and match.group(1):
                    found[match.group(1)] = None
        return list(found)

    def _claims_checked(self, claims: dict[str, Any]) -> tuple[str, ...]:
        """``claims_to_verify`` (required, in their order), then ``exp`` and ``nbf`` when
        the token has them though they are not listed."""
        present = tuple(name for name in TIME_CLAIMS
                        if name not in self.claims_to_verify and claims.get(name) is not None)
        return self.claims_to_verify + present if present else self.claims_to_verify

    def _refuse(self, message: str) -> ErrorResponse:
        return error(401, message, {"WWW-Authenticate": self.www_invalid})

    def _authenticate(self, req: "Request") -> ErrorResponse | None:
        tokens = self._tokens(req)
        if not tokens:
            return error(401, "Unauthorized", {"WWW-Authenticate": self.www_authenticate})
        if len(tokens) > 1:
            return self._refuse("Multiple tokens provided")
        token = tokens[0]
        if not isinstance(token, str):
            return self._refuse("Unrecognizable token")
        try:
            jws = jose.parse_compact(token)
        except jose.TokenError as exc:
            return self._refuse(f"Bad token; {exc}")
        if jose.has_critical_extensions(jws.header):
            return self._refuse("Bad token; unsupported 'crit' header")

        claim = self.config.key_claim_name
        key_value = jws.claims.get(claim)
        if key_value is None or key_value is False:
            key_value = jws.header.get(claim)
        if key_value is None or key_value is False:
            return self._refuse(f"No mandatory '{claim}' in claims")
        if not isinstance(key_value, str) or key_value == "":
            return self._refuse(f"Invalid '{claim}' in claims")
        entry = self.secrets.get(key_value)
        if entry is None:
            return self._refuse(f"No credentials found for given '{claim}'")

        algorithm = entry.credential.algorithm or "HS256"
        if jws.alg != algorithm:
            return self._refuse("Invalid algorithm")
        key = entry.key(self.config.secret_is_base64)
        if key is None:
            return self._refuse("Invalid key/secret")
        if not jose.verify_signature(jws, algorithm, key):
            return self._refuse("Invalid signature")

        now = time.time()
        errors = jose.kong_claim_errors(jws.claims, self._claims_checked(jws.claims), now)
        if not errors and self.config.maximum_expiration > 0:
            errors = jose.kong_maximum_expiration_error(jws.claims,
                                                        self.config.maximum_expiration, now)
        if errors:
            return self._refuse(_claim_message(errors))

        if entry.consumer is None:
            return error(401, f"Could not find consumer for '{claim}={key_value}'")
        req.set_consumer(entry.consumer, entry.credential, entry.credential.key)
        req.ctx["jwt_claims"] = jws.claims
        req.ctx["authenticated_jwt_token"] = token
        return None


def _claim_message(errors: dict[str, str]) -> str:
    """Kong answers ``{"exp": "token expired"}``; guichet's error body has one message."""
    parts = []
    for claim, text in errors.items():
        parts.append(text if text.startswith("token ") else f"{claim} {text}")
    return "; ".join(parts)


def request_cookie(req: "Request", name: str) -> str | None:
    """The first cookie called ``name`` (compared without case, as nginx's ``$cookie_``)."""
    lname = name.lower()
    for header in req.header_values("cookie"):
        for pair in header.split(";"):
            key, eq, value = pair.strip().partition("=")
            if eq and key.strip().lower() == lname:
                return value.strip()
    return None
