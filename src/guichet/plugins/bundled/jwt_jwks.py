"""jwt-jwks: authenticate a request by a JWT signed with a key from a JWKS URL (priority 1050).

Beyond Kong's open-source edition; the configuration names follow Kong Enterprise's
``openid-connect`` plugin in bearer-only mode where one fits (``issuer``,
``bearer_token_param_type``, ``bearer_token_cookie_name``, ``leeway``, ``consumer_claim``,
``consumer_by``, ``consumer_optional``, ``cache_ttl``, ``rediscovery_lifetime``,
``timeout``, ``ssl_verify``, ``hide_credentials``). docs/plugins/jwt-jwks.md has the table.

Rules (GUARANTEES.md §13):

- The token is taken from ``Authorization: Bearer <token>``, the ``access_token`` query
  argument and/or the cookie ``bearer_token_cookie_name``, as ``bearer_token_param_type``
  lists. None: 401 "Unauthorized"; different tokens in several places: 401 "Multiple
  tokens provided".
- The header's ``alg`` must be one of the configured ``algorithms`` (asymmetric only:
  ``none`` and HS* cannot be configured); otherwise 401 "Invalid algorithm". A ``crit``
  header refuses the token. ``jku``, ``x5u``, ``jwk`` and ``x5c`` are ignored: keys come
  only from ``jwks_uri`` (or, without it, from the ``jwks_uri`` of
  ``<issuer>/.well-known/openid-configuration``, whose ``issuer`` must equal ours).
- The key is chosen by ``kid`` among the JWKS keys that fit the algorithm (type, curve,
  ``use``/``key_ops``/``alg`` of the JWK: :mod:`~guichet.plugins.bundled.jose`); a token
  without ``kid`` is tried against every fitting key (at most :data:`MAX_CANDIDATES`).
- JWKS are cached per URI in the worker's ``jwks`` store, so they survive configuration
  reloads; they are fetched on first use, refreshed once older than ``cache_ttl``, and
  refetched when a token names an unknown ``kid`` (or no fitting key exists), but a URI is
  never fetched twice within ``rediscovery_lifetime`` seconds (30 by default). Concurrent
  requests wait for the same fetch. A failed fetch keeps the keys already held. When the
  keys held decide (no fetch due), the hook is synchronous; it awaits only for a fetch.
- Claims after the signature: ``required_claims`` (``exp`` by default) must be present;
  ``exp``/``nbf``/``iat`` checked with ``leeway`` (≤ 300 s); ``iss`` must equal ``issuer``;
  with ``audiences``, ``aud`` must contain one of them. Refusals are 401 with the reason.
- Every 401 carries ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750; with
  ``realm="<realm>", `` first when configured), except "Unauthorized" (no token), which
  carries ``Bearer`` or ``Bearer realm="<realm>"``.
- Keys unavailable (the JWKS or discovery endpoint failed and no keys are held): 503
  "Unable to verify the token: signing keys unavailable", with Retry-After. The token was
  not judged, so a 401 would wrongly tell the client to discard it; the ``anonymous``
  fallback does not apply to a 503.
- Consumer: with ``consumer_claim``, the first of those claims present (a string) is looked
  up by each of ``consumer_by`` in order (``id``, ``username``, ``custom_id``); no match is
  403 "Consumer not found for the token" unless ``consumer_optional``, when the request goes
  on authenticated without a consumer. Without ``consumer_claim`` there is no consumer.
  Success calls ``req.set_consumer(consumer or None, TokenCredential, <sub>)`` (no
  identifier when ``sub`` cannot be a header value); claims go to ``req.ctx["jwt_claims"]``.
- ``anonymous`` and ``run_on_preflight`` as Kong's authentication plugins; a refusal (401,
  403) lets the request go on as the anonymous consumer when ``anonymous`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal

import httpx
import orjson
from pydantic import Field, field_validator, model_validator

from guichet.plugins.api import ErrorResponse, Plugin, PluginConfig, Response, error
from guichet.plugins.bundled import jose
from guichet.plugins.bundled.jwt_auth import request_cookie
from guichet.plugins.bundled.key_auth import AnonymousFallback, Realm, remove_form_field

if TYPE_CHECKING:
    from guichet.config.model import Consumer
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

log = logging.getLogger("guichet.plugins.auth")

MAX_LEEWAY = 300
MAX_TIMEOUT_MS = 60_000
MAX_DOCUMENT_BYTES = 1 << 20
MAX_CANDIDATES = 10
QUERY_PARAM = "access_token"
UNAVAILABLE = "Unable to verify the token: signing keys unavailable"
_URL_PATTERN = r"^https?://[^\s/?#\x00-\x1f\x7f]+[^\s\x00-\x1f\x7f]*$"


class JwtJwksConfig(PluginConfig):
    issuer: str = Field(min_length=1)
    jwks_uri: str | None = Field(default=None, pattern=_URL_PATTERN)
    algorithms: list[str] = Field(min_length=1)
    audiences: list[str] = Field(default_factory=list)
    required_claims: list[str] = Field(default_factory=lambda: ["exp"])
    leeway: float = Field(default=0, ge=0, le=MAX_LEEWAY)
    bearer_token_param_type: list[Literal["header", "query", "cookie"]] = Field(
        default_factory=lambda: ["header"], min_length=1)
    bearer_token_cookie_name: str | None = Field(default=None, min_length=1)
    consumer_claim: list[str] | None = None
    consumer_by: list[Literal["id", "username", "custom_id"]] = Field(
        default_factory=lambda: ["username", "custom_id"], min_length=1)
    consumer_optional: bool = False
    anonymous: str | None = None
    run_on_preflight: bool = True
    hide_credentials: bool = False
    realm: Realm | None = None
    timeout: int = Field(default=10_000, ge=1, le=MAX_TIMEOUT_MS)
    cache_ttl: float = Field(default=3600, gt=0, le=86_400 * 7)
    rediscovery_lifetime: float = Field(default=30, gt=0, le=86_400)
    ssl_verify: bool = True

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, algorithms: list[str]) -> list[str]:
        for alg in algorithms:
            if alg.lower() == "none":
                raise ValueError("'none' is never accepted")
            if alg.startswith("HS"):
                raise ValueError(f"'{alg}': HMAC keys are never taken from a JWKS")
            if alg not in jose.ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"'{alg}' is not one of "
                                 f"{', '.join(sorted(jose.ASYMMETRIC_ALGORITHMS))}")
        return list(dict.fromkeys(algorithms))

    @model_validator(mode="after")
    def _sources(self) -> "JwtJwksConfig":
        if "cookie" in self.bearer_token_param_type and not self.bearer_token_cookie_name:
            raise ValueError("bearer_token_param_type 'cookie' needs bearer_token_cookie_name")
        if self.jwks_uri is None and not self.issuer.startswith(("https://", "http://")):
            raise ValueError("without jwks_uri, issuer must be an http(s) URL (its "
                             "/.well-known/openid-configuration names the JWKS)")
        return self


@dataclass(frozen=True, slots=True)
class TokenCredential:
    """What ``req.credential`` holds after jwt-jwks accepted a token."""

    issuer: str | None
    subject: str | None
    key_id: str | None


class FetchError(Exception):
    """An outbound fetch that gave nothing usable; the message is safe to log."""


# ---------------------------------------------------------------------------- fetching
_CLIENTS: dict[bool, tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = {}


def _client(verify: bool) -> httpx.AsyncClient:
    """The worker's client for JWKS and discovery fetches (one per event loop)."""
    loop = asyncio.get_running_loop()
    held = _CLIENTS.get(verify)
    if held is None or held[0] is not loop:
        client = httpx.AsyncClient(verify=verify, trust_env=False, follow_redirects=False,
                                   limits=httpx.Limits(max_connections=16,
                                                       max_keepalive_connections=4))
        _CLIENTS[verify] = held = (loop, client)
    return held[1]


async def fetch_json(url: str, timeout: float, verify: bool) -> Any:
    """GET ``url`` and decode its JSON body (at most :data:`MAX_DOCUMENT_BYTES`), all
    within ``timeout`` seconds. Raises :class:`FetchError`."""
    try:
        async with asyncio.timeout(timeout):
            async with _client(verify).stream(
                    "GET", url, headers={"Accept": "application/json"},
                    timeout=httpx.Timeout(timeout)) as response:
                if response.status_code != 200:
                    raise FetchError(f"{url} answered {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise FetchError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
    except TimeoutError:
        raise FetchError(f"{url} did not answer within {timeout:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
        raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
    try:
        return orjson.loads(body)
    except ValueError:
        raise FetchError(f"{url} sent no valid JSON") from None


class RemoteDocument:
    """A document fetched from one URL and shared by the worker (it lives in a store):
    its parsed value, when it was last fetched and tried, and the one fetch in flight."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.value: Any = None
        self.fetched_at = float("-inf")  # monotonic time of the last success
        self.attempted_at = float("-inf")  # monotonic time the last fetch started
        self.fetches = 0
        self._inflight: asyncio.Future[None] | None = None

    def stale(self, now: float, ttl: float) -> bool:
        return self.value is None or now - self.fetched_at >= ttl

    def refresh_due(self, min_interval: float) -> bool:
        """Whether :meth:`refresh` would fetch (or join a fetch in flight) now."""
        task = self._inflight
        if task is not None and not task.done():
            return True
        return time.monotonic() - self.attempted_at >= min_interval

    async def refresh(self, fetch: Callable[[], Awaitable[Any]], min_interval: float) -> None:
        """Join the fetch in flight, or start one unless the last started less than
        ``min_interval`` seconds ago. Never raises for a failed fetch."""
        task = self._inflight
        if task is None or task.done():
            if time.monotonic() - self.attempted_at < min_interval:
                return
            self.attempted_at = time.monotonic()
            self.fetches += 1
            task = self._inflight = asyncio.ensure_future(self._run(fetch))
        await asyncio.shield(task)

    async def _run(self, fetch: Callable[[], Awaitable[Any]]) -> None:
        try:
            self.value = await fetch()
            self.fetched_at = time.monotonic()
        except FetchError as exc:
            log.warning("jwt-jwks: fetch failed, %s (keeping %s)", exc,
                        "the keys held" if self.value is not None else "nothing")
        except jose.JwksError as exc:
            log.warning("jwt-jwks: %s: %s", self.url, exc)


# ---------------------------------------------------------------------------- the plugin
class JwtJwks(Plugin):
    name = "jwt-jwks"
    priority = 1050
    Config = JwtJwksConfig
    no_consumer = True

    def __init__(self, config: JwtJwksConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.store = env.store("jwks")
        self.consumers = env.consumers
        self.anonymous = AnonymousFallback(self.name, config.anonymous, env.consumers)
        self.algorithms = frozenset(config.algorithms)
        self.rules = jose.ClaimRules(issuer=config.issuer, audiences=tuple(config.audiences),
                                     required=tuple(config.required_claims),
                                     leeway=config.leeway)
        self.timeout = config.timeout / 1000
        self.www_authenticate, self.www_invalid = jose.bearer_challenges(config.realm)
        self.discovery_url = (None if config.jwks_uri else
                              config.issuer.rstrip("/") + "/.well-known/openid-configuration")

    def access(self, req: "Request") -> Response | None | Awaitable[Response | None]:
        """Synchronous when the keys held can decide (the common case); a coroutine when
        keys must be fetched first."""
        if not self.config.run_on_preflight and req.method == "OPTIONS":
            return None
        if self.anonymous.skip(req):
            return None
        presented = self._presented(req)
        if isinstance(presented, ErrorResponse):
            return self._conclude(req, presented)
        keys = self._held_keys(presented[2])
        if keys is not None:
            return self._conclude(req, self._verify(req, presented, keys))
        return self._access_after_fetch(req, presented)

    async def _access_after_fetch(self, req: "Request",
                                  presented: tuple[str, str, jose.CompactJws]) -> Response | None:
        keys = await self._keys(presented[2])
        if keys is None:
            return error(503, UNAVAILABLE,
                         {"Retry-After": str(max(1, int(self.config.rediscovery_lifetime)))})
        return self._conclude(req, self._verify(req, presented, keys))

    def _conclude(self, req: "Request", refusal: ErrorResponse | None) -> Response | None:
        if refusal is not None and refusal.status >= 500:
            return refusal  # not judged: no anonymous fallback
        return self.anonymous.conclude(req, refusal)

    # ------------------------------------------------------------------ the token
    def _tokens(self, req: "Request") -> list[tuple[str, str]]:
        """(source, token) pairs, one per distinct token."""
        found: dict[str, str] = {}
        for source in self.config.bearer_token_param_type:
            if source == "header":
                values = req.header_values("authorization")
                if values:
                    scheme, _, token = values[0].strip().partition(" ")
                    token = token.strip()
                    if scheme.lower() == "bearer" and token:
                        found.setdefault(token, source)
            elif source == "query":
                value = req.query_arg(QUERY_PARAM)
                if value:
                    found.setdefault(value, source)
            else:
                value = request_cookie(req, self.config.bearer_token_cookie_name or "")
                if value:
                    found.setdefault(value, source)
        return [(source, token) for token, source in found.items()]

    def _refuse(self, message: str) -> ErrorResponse:
        return error(401, message, {"WWW-Authenticate": self.www_invalid})

    def _presented(self, req: "Request") -> ErrorResponse | tuple[str, str, jose.CompactJws]:
        """(source, token, decoded token), or the refusal of a token unfit to be verified."""
        tokens = self._tokens(req)
        if not tokens:
            return error(401, "Unauthorized", {"WWW-Authenticate": self.www_authenticate})
        if len(tokens) > 1:
            return self._refuse("Multiple tokens provided")
        source, token = tokens[0]
        try:
            jws = jose.parse_compact(token)
        except jose.TokenError as exc:
            return self._refuse(f"Bad token; {exc}")
        if jose.has_critical_extensions(jws.header):
            return self._refuse("Bad token; unsupported 'crit' header")
        if jws.alg not in self.algorithms:
            return self._refuse("Invalid algorithm")
        return source, token, jws

    def _verify(self, req: "Request", presented: tuple[str, str, jose.CompactJws],
                keys: jose.KeySet) -> ErrorResponse | None:
        source, token, jws = presented
        candidates = keys.candidates(jws.alg, jws.kid)
        if not candidates:
            return self._refuse("No key found for the token")
        if not any(jose.verify_signature(jws, jws.alg, c.key)
                   for c in candidates[:MAX_CANDIDATES]):
            return self._refuse("Invalid signature")
        violation = self.rules.violation(jws.claims, time.time())
        if violation is not None:
            return self._refuse(violation)

        consumer: "Consumer | None" = None
        if self.config.consumer_claim:
            consumer = self._consumer(jws.claims)
            if consumer is None and not self.config.consumer_optional:
                return error(403, "Consumer not found for the token")
        subject = jws.claims.get("sub")
        subject = subject if isinstance(subject, str) and jose.header_safe(subject) else None
        issuer = jws.claims.get("iss")
        credential = TokenCredential(issuer if isinstance(issuer, str) else None, subject,
                                     jws.kid)
        req.set_consumer(consumer, credential, subject)
        req.ctx["jwt_claims"] = jws.claims
        req.ctx["authenticated_jwt_token"] = token
        if self.config.hide_credentials:
            self._hide(req, source)
        return None

    def _consumer(self, claims: dict[str, Any]) -> "Consumer | None":
        value = None
        for claim in self.config.consumer_claim or ():
            value = claims.get(claim)
            if value is not None:
                break
        if not isinstance(value, str) or not value:
            return None
        directory = self.consumers
        for field in self.config.consumer_by:
            if field == "id":
                consumer = directory.get(value)
            elif field == "username":
                consumer = directory.by_username.get(value)
            else:
                consumer = directory.by_custom_id.get(value)
            if consumer is not None:
                return consumer
        return None

    def _hide(self, req: "Request", source: str) -> None:
        if source == "header":
            req.remove_header("Authorization")
        elif source == "query":
            req.set_query(remove_form_field(req.query, QUERY_PARAM))
        else:
            name = (self.config.bearer_token_cookie_name or "").lower()
            kept = [pair.strip() for header in req.header_values("cookie")
                    for pair in header.split(";")
                    if pair.strip() and pair.strip().partition("=")[0].strip().lower() != name]
            if kept:
                req.set_header("Cookie", "; ".join(kept))
            else:
                req.remove_header("Cookie")

    # ------------------------------------------------------------------ the keys
    def _document(self, url: str) -> RemoteDocument:
        doc = self.store.get(url)
        if doc is None:
            doc = RemoteDocument(url)
            self.store.set(url, doc)
        return doc

    async def _jwks_uri(self) -> str | None:
        if self.config.jwks_uri:
            return self.config.jwks_uri
        assert self.discovery_url is not None
        doc = self._document(self.discovery_url)
        if doc.stale(time.monotonic(), self.config.cache_ttl):
            await doc.refresh(self._discover, self.config.rediscovery_lifetime)
        return doc.value

    async def _discover(self) -> str:
        assert self.discovery_url is not None
        metadata = await fetch_json(self.discovery_url, self.timeout, self.config.ssl_verify)
        if not isinstance(metadata, dict):
            raise FetchError(f"{self.discovery_url} is not a JSON object")
        if metadata.get("issuer") != self.config.issuer:
            raise FetchError(f"{self.discovery_url} names another issuer")
        uri = metadata.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise FetchError(f"{self.discovery_url} has no http(s) jwks_uri")
        return uri

    def _held_keys(self, jws: jose.CompactJws) -> jose.KeySet | None:
        """The keys already held, when no fetch is due for this token; else None."""
        now = time.monotonic()
        ttl, min_interval = self.config.cache_ttl, self.config.rediscovery_lifetime
        uri = self.config.jwks_uri
        if uri is None:
            discovered = self.store.get(self.discovery_url)
            if discovered is None or discovered.value is None or (
                    discovered.stale(now, ttl) and discovered.refresh_due(min_interval)):
                return None
            uri = discovered.value
        doc = self.store.get(uri)
        if doc is None or doc.value is None:
            return None
        if doc.stale(now, ttl) and doc.refresh_due(min_interval):
            return None
        keys: jose.KeySet = doc.value
        if not keys.candidates(jws.alg, jws.kid) and doc.refresh_due(min_interval):
            return None
        return keys

    async def _keys(self, jws: jose.CompactJws) -> jose.KeySet | None:
        """The key set to verify ``jws`` with: fetched if never fetched or stale, refetched
        when it has no fitting key for the token (rate-limited); None when no keys are held."""
        uri = await self._jwks_uri()
        if uri is None:
            return None
        doc = self._document(uri)
        min_interval = self.config.rediscovery_lifetime

        async def fetch() -> jose.KeySet:
            return jose.parse_jwks(await fetch_json(uri, self.timeout, self.config.ssl_verify))

        if doc.stale(time.monotonic(), self.config.cache_ttl):
            await doc.refresh(fetch, min_interval)
        keys: jose.KeySet | None = doc.value
        if keys is not None and not keys.candidates(jws.alg, jws.kid):
            await doc.refresh(fetch, min_interval)
            keys = doc.value
        return keys

