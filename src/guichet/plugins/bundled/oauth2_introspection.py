"""oauth2-introspection: authenticate a request by asking an OAuth 2.0 authorization server
about its access token (RFC 7662; Kong Enterprise's ``oauth2-introspection``, priority 1700).

Rules:

- The token is the credentials of ``Authorization: Bearer <token>`` (scheme ``Bearer`` or
  ``Token``, any case), or else the ``access_token`` query argument. An Authorization
  header of another scheme is never sent to the authorization server (Kong would send its
  whole value as the token). No token: 401 "The access token is missing" with
  ``WWW-Authenticate: Bearer``.
- The token is introspected by ``POST introspection_url`` with the form ``token=<token>``
  (and ``token_type_hint`` when configured), ``Authorization: <authorization_value>``,
  the ``custom_introspection_headers``, and, with ``introspect_request``,
  ``X-Request-Path`` and ``X-Request-Http-Method`` of the request being authenticated.
  ``authorization_value`` and the custom header values must be printable ASCII (spaces
  and tabs allowed), checked when the configuration is loaded; the URL holds no control
  character.
- A response that is not 200 with a JSON object, no response within ``timeout`` ms, or a
  connection failure: 503 "The introspection endpoint is unavailable" with Retry-After
  (Kong Enterprise answers 500; the token was not judged, so it is neither a 401 nor a
  gateway fault, and the ``anonymous`` fallback does not apply). Nothing is cached.
- ``"active": true`` (exactly) and an ``exp``, if any, still in the future: accepted.
  Anything else: 401 "The access token is invalid or has expired" with ``WWW-Authenticate:
  Bearer error="invalid_token", error_description="The access token is invalid or has
  expired"``.
- Results are cached in the worker's ``oauth2-introspection`` store under a keyed digest of
  the token (with the endpoint, a digest of ``authorization_value``, the hint, and the
  request path and method when ``introspect_request``): for ``ttl`` seconds (0: no
  expiry), and never past the token's ``exp``. The token itself is never a key and never
  logged. Concurrent requests with the same token wait for one introspection. A cached
  result is used synchronously (the hook awaits only when the endpoint is asked).
- Success: the consumer is the one whose ``username`` equals the response's ``username``
  (``consumer_by: username``) or whose ``custom_id`` equals its ``client_id``
  (``consumer_by: client_id``); none matching, the request goes on authenticated without
  a consumer. ``req.set_consumer(consumer, IntrospectionCredential, <that value, or
  sub>)``; the upstream request gets X-Credential-Scope, -Client-ID, -Username,
  -Token-Type, -Exp, -Iat, -Nbf, -Sub, -Aud, -Iss, -Jti from the response fields of those
  names when present, and X-Credential-<claim> for each of ``custom_claims_forward``
  (lists joined with ", ", objects as JSON; a value with control characters or characters
  outside Latin-1 is dropped, and so is such an identifier).
  The response goes to ``req.ctx["oauth2_introspection"]``. ``hide_credentials`` removes
  the header or query argument that held the token.
- ``anonymous`` and ``run_on_preflight`` as Kong's authentication plugins.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Literal

import httpx
import orjson
from pydantic import Field, field_validator

from guichet.plugins.api import ErrorResponse, Plugin, PluginConfig, Response, error
from guichet.plugins.bundled.jose import header_safe
from guichet.plugins.bundled.key_auth import AnonymousFallback, header_bytes, remove_form_field
from guichet.plugins.consumers import secret_digest

if TYPE_CHECKING:
    from guichet.config.model import Consumer
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

log = logging.getLogger("guichet.plugins.auth")

MISSING = "The access token is missing"
INVALID = "The access token is invalid or has expired"
UNAVAILABLE = "The introspection endpoint is unavailable"
QUERY_PARAM = "access_token"
MAX_TIMEOUT_MS = 60_000
MAX_RESPONSE_BYTES = 256 * 1024
RETRY_AFTER = "5"
# response field -> upstream header (Kong Enterprise's list)
CREDENTIAL_HEADERS = (
    ("scope", "X-Credential-Scope"), ("client_id", "X-Credential-Client-ID"),
    ("username", "X-Credential-Username"), ("token_type", "X-Credential-Token-Type"),
    ("exp", "X-Credential-Exp"), ("iat", "X-Credential-Iat"), ("nbf", "X-Credential-Nbf"),
    ("sub", "X-Credential-Sub"), ("aud", "X-Credential-Aud"), ("iss", "X-Credential-Iss"),
    ("jti", "X-Credential-Jti"),
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# a header value sent to the authorization server: ASCII without controls (HTAB allowed)
_OUTBOUND_VALUE = re.compile(r"[\t\x20-\x7e]*")
_URL_PATTERN = r"^https?://[^\s/?#\x00-\x1f\x7f]+[^\s\x00-\x1f\x7f]*$"


class OAuth2IntrospectionConfig(PluginConfig):
    introspection_url: str = Field(pattern=_URL_PATTERN)
    authorization_value: str = Field(min_length=1)
    token_type_hint: str | None = None
    ttl: float = Field(default=30, ge=0)
    hide_credentials: bool = False
    consumer_by: Literal["username", "client_id"] = "username"
    anonymous: str | None = None
    timeout: int = Field(default=10_000, ge=1, le=MAX_TIMEOUT_MS)
    keepalive: int = Field(default=60_000, ge=0)
    introspect_request: bool = False
    custom_introspection_headers: dict[str, str] = Field(default_factory=dict)
    custom_claims_forward: list[str] = Field(default_factory=list)
    run_on_preflight: bool = True

    @field_validator("anonymous")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None  # Kong's default is ""

    @field_validator("authorization_value")
    @classmethod
    def _authorization_header(cls, value: str) -> str:
        if not _OUTBOUND_VALUE.fullmatch(value):
            raise ValueError("may hold only printable ASCII characters, spaces and tabs "
                             "(it is sent in the Authorization header)")
        return value

    @field_validator("custom_introspection_headers")
    @classmethod
    def _header_fields(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"'{name}' is not a valid header name")
            if not _OUTBOUND_VALUE.fullmatch(value):
                raise ValueError(f"the value of '{name}' may hold only printable ASCII "
                                 "characters, spaces and tabs (it is sent in a header)")
        return headers

    @field_validator("custom_claims_forward")
    @classmethod
    def _claim_names(cls, claims: list[str]) -> list[str]:
        for claim in claims:
            if not _HEADER_NAME.match(claim):
                raise ValueError(f"'{claim}' cannot be part of a header name")
        return claims


@dataclass(frozen=True, slots=True)
class IntrospectionCredential:
    """What ``req.credential`` holds after a token was found active."""

    client_id: str | None
    username: str | None
    subject: str | None
    scope: str | None


class IntrospectionFailed(Exception):
    """The endpoint gave no usable answer; the message is safe to log (no token)."""


_CLIENTS: dict[tuple[int], tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = {}
_INFLIGHT: dict[tuple[Any, ...], "asyncio.Future[tuple[bool, dict[str, Any]]]"] = {}


def _client(keepalive_ms: int) -> httpx.AsyncClient:
    """The worker's client for introspection calls (one per event loop and keepalive)."""
    loop = asyncio.get_running_loop()
    key = (keepalive_ms,)
    held = _CLIENTS.get(key)
    if held is None or held[0] is not loop:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16,
                              keepalive_expiry=keepalive_ms / 1000)
        client = httpx.AsyncClient(trust_env=False, follow_redirects=False, limits=limits)
        _CLIENTS[key] = held = (loop, client)
    return held[1]


def header_value(value: Any) -> str | None:
    """A response field as an upstream header value, or None when it cannot be one."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, (str, int, float)):
        text = str(value)
    elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        text = ", ".join(str(v) for v in value)
    else:
        text = orjson.dumps(value).decode("utf-8")
    return text if header_safe(text) else None



def cache_ttl(active: bool, result: dict[str, Any], ttl: float, now: float) -> float | None:
    """Seconds to keep a result: ``ttl`` (0: no expiry), never past an active token's
    ``exp``. 0.0 means do not cache (already expired)."""
    limit = ttl if ttl > 0 else None
    exp = result.get("exp")
    if active and isinstance(exp, (int, float)) and not isinstance(exp, bool):
        remaining = exp - now
        if remaining <= 0:
            return 0.0
        limit = remaining if limit is None else min(limit, remaining)
    return limit


def is_active(result: dict[str, Any], now: float) -> bool:
    """RFC 7662 §2.2: ``active`` is exactly true; an ``exp`` in the past overrides it."""
    if result.get("active") is not True:
        return False
    exp = result.get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp <= now:
        return False
    return True


class OAuth2Introspection(Plugin):
    name = "oauth2-introspection"
    priority = 1700
    Config = OAuth2IntrospectionConfig
    no_consumer = True

    def __init__(self, config: OAuth2IntrospectionConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.store = env.store("oauth2-introspection")
        self.consumers = env.consumers
        self.anonymous = AnonymousFallback(self.name, config.anonymous, env.consumers)
        self.cache_scope = (config.introspection_url, secret_digest(config.authorization_value),
                            config.token_type_hint)
        self.timeout = config.timeout / 1000
        self.www_invalid = f'Bearer error="invalid_token", error_description="{INVALID}"'
        headers = {"Accept": "application/json", **config.custom_introspection_headers,
                   "Authorization": config.authorization_value}
        self.request_headers = headers
        self.forwarded = CREDENTIAL_HEADERS + tuple(
            (claim, f"X-Credential-{claim}") for claim in config.custom_claims_forward)

    def access(self, req: "Request") -> Response | None | Awaitable[Response | None]:
        """Synchronous when the result is cached; a coroutine when the endpoint is asked."""
        if not self.config.run_on_preflight and req.method == "OPTIONS":
            return None
        if self.anonymous.skip(req):
            return None
        token, source = self._token(req)
        if token is None:
            return self.anonymous.conclude(req, error(401, MISSING, {"WWW-Authenticate": "Bearer"}))
        key = self._cache_key(req, token)
        cached = self.store.get(key)
        if cached is not None:
            return self.anonymous.conclude(req, self._judge(req, source, cached))
        return self._access_introspecting(req, token, source, key)

    async def _access_introspecting(self, req: "Request", token: str, source: str | None,
                                    key: tuple[Any, ...]) -> Response | None:
        try:
            result = await self._introspect(req, token, key)
        except IntrospectionFailed as exc:
            log.warning("oauth2-introspection: %s", exc)
            return error(503, UNAVAILABLE, {"Retry-After": RETRY_AFTER})
        return self.anonymous.conclude(req, self._judge(req, source, result))

    def _token(self, req: "Request") -> tuple[str | None, str | None]:
        """(token, where it was: "header" or "query")."""
        values = req.header_values("authorization")
        if values:
            parts = values[0].split()
            if len(parts) == 2 and parts[0].lower() in ("bearer", "token"):
                return parts[1], "header"
        value = req.query_arg(QUERY_PARAM)
        if value:
            return value, "query"
        return None, None

    def _judge(self, req: "Request", source: str | None,
               result: dict[str, Any]) -> ErrorResponse | None:
        """Accept the request by an introspection result, or refuse it."""
        if not is_active(result, time.time()):
            return error(401, INVALID, {"WWW-Authenticate": self.www_invalid})
        consumer = self._consumer(result)
        field = "username" if self.config.consumer_by == "username" else "client_id"
        identifier = _string(result.get(field)) or _string(result.get("sub"))
        if identifier is not None and not header_safe(identifier):
            identifier = None
        credential = IntrospectionCredential(_string(result.get("client_id")),
                                             _string(result.get("username")),
                                             _string(result.get("sub")),
                                             _string(result.get("scope")))
        req.set_consumer(consumer, credential, identifier)
        for claim, header in self.forwarded:
            text = header_value(result.get(claim))
            if text is not None:
                req.set_header(header, text)
        req.ctx["oauth2_introspection"] = result
        if self.config.hide_credentials:
            if source == "header":
                req.remove_header("Authorization")
            else:
                req.set_query(remove_form_field(req.query, QUERY_PARAM))
        return None

    def _consumer(self, result: dict[str, Any]) -> "Consumer | None":
        if self.config.consumer_by == "username":
            value = _string(result.get("username"))
            return self.consumers.by_username.get(value) if value else None
        value = _string(result.get("client_id"))
        return self.consumers.by_custom_id.get(value) if value else None

    # ------------------------------------------------------------------ introspection
    def _cache_key(self, req: "Request", token: str) -> tuple[Any, ...]:
        key: tuple[Any, ...] = (*self.cache_scope, secret_digest(token))
        if self.config.introspect_request:
            key += (req.method, req.path)
        return key

    async def _introspect(self, req: "Request", token: str,
                          key: tuple[Any, ...]) -> dict[str, Any]:
        """Ask the endpoint (one call for concurrent requests with the same key) and cache
        the answer. Raises :class:`IntrospectionFailed`."""
        pending = _INFLIGHT.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._call(req, token))
            _INFLIGHT[key] = pending
            pending.add_done_callback(lambda _f: _INFLIGHT.pop(key, None))
        result = await asyncio.shield(pending)
        now = time.time()
        keep = cache_ttl(is_active(result, now), result, self.config.ttl, now)
        if keep != 0.0:
            self.store.set(key, result, keep)
        return result

    async def _call(self, req: "Request", token: str) -> dict[str, Any]:
        form = {"token": token}
        if self.config.token_type_hint:
            form["token_type_hint"] = self.config.token_type_hint
        headers: dict[str, str | bytes] = {**self.request_headers}
        if self.config.introspect_request:
            # the path as bytes: it may hold bytes beyond ASCII, which httpx would not encode
            headers["X-Request-Path"] = header_bytes(req.path)
            headers["X-Request-Http-Method"] = req.method
        url = self.config.introspection_url
        try:
            async with asyncio.timeout(self.timeout):
                async with _client(self.config.keepalive).stream(
                        "POST", url, data=form, headers=headers,
                        timeout=httpx.Timeout(self.timeout)) as response:
                    if response.status_code != 200:
                        raise IntrospectionFailed(f"{url} answered {response.status_code}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_RESPONSE_BYTES:
                            raise IntrospectionFailed(f"{url} sent more than "
                                                      f"{MAX_RESPONSE_BYTES} bytes")
        except TimeoutError:
            raise IntrospectionFailed(f"{url} did not answer within "
                                      f"{self.config.timeout} ms") from None
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            raise IntrospectionFailed(f"{url}: {type(exc).__name__}") from None
        try:
            result = orjson.loads(body)
        except ValueError:
            raise IntrospectionFailed(f"{url} sent no valid JSON") from None
        if not isinstance(result, dict):
            raise IntrospectionFailed(f"{url} sent JSON that is not an object")
        return result


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
