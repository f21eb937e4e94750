"""hmac-auth: authenticate a request by an HMAC signature of its headers (Kong's
``hmac-auth``, priority 1030; the draft-cavage HTTP signatures scheme).

Rules (Kong 3.x ``kong/plugins/hmac-auth``), checked in this order:

1. Neither ``Proxy-Authorization`` nor ``Authorization``: 401 "Unauthorized".
2. ``X-Date`` (else ``Date``) must be an HTTP date within ``clock_skew`` seconds of the
   gateway's clock, else 401 "HMAC signature cannot be verified, a valid date or x-date
   header is required for HMAC Authentication".
3. The signature parameters come from Proxy-Authorization, else from Authorization:
   ``hmac username="..", algorithm="..", headers="h1 h2 ..", signature="<base64>"``. All
   four are required (Kong requires that order; any order is accepted here). Missing
   parameters, a header of ``enforce_headers`` not among the signed ones, an algorithm not
   in ``algorithms``, or an unknown username: 401 "HMAC signature cannot be verified".
4. The signing string is, for each signed header name in order, joined by "\\n":
   ``name: value`` (the header's first value; ``name:`` when absent), except that when no
   such header was sent, ``@request-target`` gives ``@request-target: <method lower-case>
   <request-uri>`` and ``request-line`` gives ``<METHOD> <request-uri> HTTP/<version>``.
   The request-uri is the path and query as the client sent them. The HMAC is computed
   over the bytes the client sent (header values and the target byte for byte, so values
   with non-ASCII bytes verify), under the credential's secret encoded as UTF-8, and
   compared in constant time with the decoded signature; a mismatch: 401 "HMAC signature
   does not match". The ``username`` parameter is read as UTF-8 (as configuration
   holds usernames).
5. ``validate_request_body``: the body's ``Digest`` header must be
   ``SHA-256=<base64 of sha256(body)>``; without a Digest header the body must be empty.
   Otherwise 401 "HMAC signature does not match".

Every 401 carries ``WWW-Authenticate: hmac realm="<realm>"`` (``hmac`` without a realm).
``hide_credentials`` removes the header the parameters were read from. Success:
``req.set_consumer(consumer, credential, credential.username)``. ``anonymous``: as in
key-auth (:class:`~guichet.plugins.bundled.key_auth.AnonymousFallback`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from email.utils import mktime_tz, parsedate_tz
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal, NamedTuple

from pydantic import Field

from guichet.plugins.api import ErrorResponse, Plugin, PluginConfig, Response, error
from guichet.plugins.bundled.key_auth import (DEFAULT_BODY_LIMIT, AnonymousFallback, Realm,
                                              header_bytes)

if TYPE_CHECKING:
    from guichet.config.model import Consumer
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

Algorithm = Literal["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"]
ALGORITHMS: dict[str, Callable[..., Any]] = {
    "hmac-sha1": hashlib.sha1,
    "hmac-sha256": hashlib.sha256,
    "hmac-sha384": hashlib.sha384,
    "hmac-sha512": hashlib.sha512,
}

UNAUTHORIZED = "Unauthorized"
DATE_REQUIRED = ("HMAC signature cannot be verified, a valid date or x-date header is "
                 "required for HMAC Authentication")
SIGNATURE_NOT_VALID = "HMAC signature cannot be verified"
SIGNATURE_NOT_SAME = "HMAC signature does not match"

_PARAM = re.compile(r'\s*([A-Za-z]+)\s*=\s*"([^"]*)"\s*(?:,|$)')


class HmacAuthConfig(PluginConfig):
    hide_credentials: bool = False
    clock_skew: float = Field(default=300, gt=0)
    anonymous: str | None = None
    validate_request_body: bool = False
    enforce_headers: list[str] = Field(default_factory=list)
    algorithms: list[Algorithm] = Field(
        default_factory=lambda: ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"])
    realm: Realm | None = None


class SignatureParams(NamedTuple):
    username: str
    algorithm: str
    headers: list[str]
    signature: str


def parse_authorization(value: str | None) -> SignatureParams | None:
    """The signature parameters of an ``hmac ...`` authorization header, or None when it
    is not one or lacks a non-empty username, algorithm, headers or signature."""
    if not value:
        return None
    text = value.strip()
    if text[:4].lower() != "hmac" or len(text) < 5 or not text[4].isspace():
        return None
    rest = text[5:]
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None:
            return None
        params.setdefault(match.group(1).lower(), match.group(2))
        position = match.end()
    fields = [params.get(k) for k in ("username", "algorithm", "headers", "signature")]
    if not all(fields):
        return None
    username, algorithm, headers, signature = fields  # type: ignore[misc]
    return SignatureParams(username, algorithm, headers.split(" "), signature)


def signing_string(signed_headers: list[str], header: Callable[[str], str | None],
                   method: str, request_uri: str, http_version: str) -> str:
    """Kong's signing string for ``signed_headers``; ``header(name)`` gives a request
    header's first value or None."""
    lines = []
    for name in signed_headers:
        value = header(name)
        if value is not None:
            lines.append(f"{name}: {value}")
        elif name == "@request-target":
            lines.append(f"{name}: {method.lower()} {request_uri}")
        elif name == "request-line":
            lines.append(f"{method} {request_uri} HTTP/{http_version}")
        else:
            lines.append(f"{name}:")
    return "\n".join(lines)


def sign(algorithm: str, secret: str, data: bytes) -> bytes:
    """The HMAC of ``data`` (the signing string's bytes) under ``secret`` (UTF-8)."""
    return hmac.new(secret.encode("utf-8"), data, ALGORITHMS[algorithm]).digest()


def signature_matches(expected: bytes, given_base64: str) -> bool:
    try:
        given = base64.b64decode(given_base64, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(expected, given)


def http_date(value: str | None) -> float | None:
    """Seconds since the epoch of an HTTP date (RFC 1123, RFC 850 or asctime), or None."""
    if not value:
        return None
    parsed = parsedate_tz(value)
    if parsed is None:
        return None
    try:
        return float(mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def within_skew(value: str | None, clock_skew: float, now: float) -> bool:
    sent = http_date(value)
    return sent is not None and abs(now - sent) <= clock_skew


def body_digest_matches(body: bytes, digest_header: str | None) -> bool:
    if digest_header is None:
        return body == b""
    expected = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    return hmac.compare_digest(expected.encode("latin-1"), digest_header.encode("latin-1"))


def _text(value: str) -> str | None:
    """A header-borne name (Latin-1 text, one character per byte) as the UTF-8 text the
    client meant, as configuration holds names; None when its bytes are not UTF-8."""
    if value.isascii():
        return value
    try:
        return header_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _first_header(req: "Request") -> Callable[[str], str | None]:
    def header(name: str) -> str | None:
        values = req.header_values(name)
        if not values and "_" in name:
            values = req.header_values(name.replace("_", "-"))
        return values[0] if values else None
    return header


class HmacAuth(Plugin):
    name = "hmac-auth"
    priority = 1030
    Config = HmacAuthConfig
    no_consumer = True

    def __init__(self, config: HmacAuthConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.users: dict[str, tuple[Any, "Consumer"]] = env.consumers.by_field("hmacauth_credentials", "username")
        self.anonymous = AnonymousFallback(self.name, config.anonymous, env.consumers)
        self.www_authenticate = f'hmac realm="{config.realm}"' if config.realm else "hmac"
        self.algorithms = frozenset(config.algorithms)
        self.enforce_headers = tuple(config.enforce_headers)
        self.body_limit = getattr(env.settings, "client_body_buffer_size", DEFAULT_BODY_LIMIT)

    def access(self, req: "Request") -> Response | None | Awaitable[Response | None]:
        if self.anonymous.skip(req):
            return None
        refusal, identity = self._check_signature(req)
        if refusal is not None:
            return self.anonymous.conclude(req, refusal)
        assert identity is not None
        if self.config.validate_request_body:
            return self._check_body(req, identity)
        credential, consumer = identity
        req.set_consumer(consumer, credential, credential.username)
        return None

    async def _check_body(self, req: "Request", identity: tuple[Any, "Consumer"]) -> Response | None:
        body = await req.read_body(self.body_limit)
        if not body_digest_matches(body, req.header("digest")):
            return self.anonymous.conclude(req, self._refusal(SIGNATURE_NOT_SAME))
        credential, consumer = identity
        req.set_consumer(consumer, credential, credential.username)
        return None

    def _check_signature(self, req: "Request") -> tuple[ErrorResponse | None,
                                                        tuple[Any, "Consumer"] | None]:
        conf = self.config
        authorization = req.header("authorization")
        proxy_authorization = req.header("proxy-authorization")
        if authorization is None and proxy_authorization is None:
            return self._refusal(UNAUTHORIZED), None
        now = time.time()
        if not (within_skew(req.header("x-date"), conf.clock_skew, now)
                or within_skew(req.header("date"), conf.clock_skew, now)):
            return self._refusal(DATE_REQUIRED), None

        params = parse_authorization(proxy_authorization)
        if params is None:
            params = parse_authorization(authorization)
            if conf.hide_credentials:
                req.remove_header("authorization")
        elif conf.hide_credentials:
            req.remove_header("proxy-authorization")

        if (params is None or params.algorithm not in self.algorithms
                or any(h not in params.headers for h in self.enforce_headers)):
            return self._refusal(SIGNATURE_NOT_VALID), None
        identity = self.users.get(_text(params.username))
        if identity is None:
            return self._refusal(SIGNATURE_NOT_VALID), None
        credential = identity[0]
        text = signing_string(params.headers, _first_header(req), req.method,
                              req.raw_target, req.http_version)
        if not signature_matches(sign(params.algorithm, credential.secret, header_bytes(text)),
                                 params.signature):
            return self._refusal(SIGNATURE_NOT_SAME), None
        return None, identity

    def _refusal(self, message: str) -> ErrorResponse:
        return error(401, message, {"WWW-Authenticate": self.www_authenticate})
