"""cors: Cross-Origin Resource Sharing headers, and answers to preflight requests (Kong's
``cors``, priority 2000: access phase for preflights, response_headers for the rest).

Rules (Kong 3.x's handler):

* A preflight is an ``OPTIONS`` request with a non-empty ``Origin`` and an
  ``Access-Control-Request-Method`` header. With ``preflight_continue`` it goes to the
  upstream untouched (and its answer gets no CORS header from the plugin); otherwise the
  plugin answers it 200 with an empty body and:
  ``Access-Control-Allow-Origin`` (below), ``Access-Control-Allow-Credentials: true``
  (``credentials``), ``Access-Control-Allow-Headers`` (``headers`` joined with ",", or the
  request's ``Access-Control-Request-Headers`` echoed when ``headers`` is empty),
  ``Access-Control-Allow-Methods`` (``methods`` joined with ","), ``Access-Control-Max-Age``
  (``max_age``, when set) and ``Access-Control-Allow-Private-Network: true`` (when
  ``private_network`` and the request says ``Access-Control-Request-Private-Network:
  true``). Preflights are answered before authentication plugins run (priority 2000).
* Every other answer, the upstream's or one the gateway made (a 401 from an
  authentication plugin too), gets ``Access-Control-Allow-Origin``,
  ``Access-Control-Allow-Credentials`` and ``Access-Control-Expose-Headers``
  (``exposed_headers`` joined with ","), replacing the upstream's. When the request has no
  Origin and ``allow_origin_absent`` is false, nothing is added.
* ``Access-Control-Allow-Origin``:
  - no ``origins``, or only ``"*"``: ``*``;
  - otherwise ``Vary: Origin`` is added (not twice), and: a single origin made only of
    ``A-Za-z0-9.:/-`` is sent as is, whatever the request's Origin; else the request's
    Origin, normalised (``scheme://host[:port]``, default ports dropped), is sent back when
    an entry matches it, and no header is sent when none does (nor when there is no
    Origin);
  - an entry made only of ``A-Za-z0-9.:/-`` is compared, normalised, for equality with
    the normalised Origin; any other entry is a regex (Kong's PCRE syntax), matched
    against the whole of the Origin's host when the entry has no ":", or the whole
    normalised Origin otherwise. Kong anchors such a regex at the start and appends "$";
    guichet matches the entire subject (``fullmatch``), which is the same for ordinary
    entries and does not let an alternation (``a\\.com|b\\.com``) match a prefix;
  - a ``"*"`` entry among others allows every origin.
* With ``credentials`` and ``*``: ``*`` is replaced by the request's Origin (and
  ``Vary: Origin`` added), because browsers refuse credentials with ``*``; without an
  Origin, no credentials header is sent.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, NamedTuple

from pydantic import AfterValidator

from guichet.config.pcre import compile_pcre
from guichet.plugins.api import Plugin, PluginConfig, Response
from guichet.plugins.bundled.correlation_id import HeaderValue

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request, ResponseHead

METHODS = ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT")
SKIP_CTX = "cors.skip_response_headers"

_PLAIN_ORIGIN = re.compile(r"[A-Za-z0-9.:/-]+")
_SCHEME = re.compile(r"([A-Za-z0-9][A-Za-z0-9+.-]*):")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _check_origin(value: str) -> str:
    if value == "*":
        return value
    try:
        compile_pcre(value)
    except (re.error, RecursionError, OverflowError):
        raise ValueError(f"'{value}' is not a valid regex") from None
    return value


def _check_method(value: str) -> str:
    if value not in METHODS:
        raise ValueError(f"expected one of: {', '.join(METHODS)}")
    return value


Origin = Annotated[str, AfterValidator(_check_origin)]
Method = Annotated[str, AfterValidator(_check_method)]


class CorsConfig(PluginConfig):
    origins: list[Origin] | None = None
    headers: list[HeaderValue] | None = None
    exposed_headers: list[HeaderValue] | None = None
    methods: list[Method] | None = list(METHODS)
    max_age: int | float | None = None
    credentials: bool = False
    private_network: bool = False
    preflight_continue: bool = False
    allow_origin_absent: bool = True


class NormalizedOrigin(NamedTuple):
    domain: str  # scheme://host[:port], or the value itself when it has no host
    host: str


@lru_cache(maxsize=10_000)
def normalize_origin(value: str) -> NormalizedOrigin:
    """``scheme://host[:port]`` without userinfo, path or default port (Kong's
    ``normalize_origin``); a value without an authority (``null``) stays as it is."""
    rest = value
    scheme = ""
    m = _SCHEME.match(rest)
    if m:
        scheme = m.group(1)
        rest = rest[m.end():]
    if not rest.startswith("//"):
        return NormalizedOrigin(value, value)
    authority = rest[2:].split("/", 1)[0]
    authority = authority.rpartition("@")[2]
    port = None
    colon = authority.rfind(":")
    if colon != -1 and "]" not in authority[colon:]:
        authority, port = authority[:colon], authority[colon + 1:]
    host = authority
    if not host:
        return NormalizedOrigin(value, value)
    if port is not None and _DEFAULT_PORTS.get(scheme) == port:
        port = None
    domain = (f"{scheme}://" if scheme else "") + host + (f":{port}" if port is not None else "")
    return NormalizedOrigin(domain, host)


class OriginRule(NamedTuple):
    exact: str | None  # normalised origin to compare with
    regex: re.Pattern[str] | None
    by_host: bool  # the regex sees the Origin's host, not the whole origin


def compile_origin(entry: str) -> OriginRule:
    by_host = ":" not in entry
    if _PLAIN_ORIGIN.fullmatch(entry):
        return OriginRule(normalize_origin(entry).domain, None, by_host)
    # matched with fullmatch: the whole subject, whatever alternation the entry holds
    pattern = entry[1:] if entry.startswith("^") else entry
    return OriginRule(None, compile_pcre(pattern), by_host)


def _number(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


class Cors(Plugin):
    name = "cors"
    priority = 2000
    Config = CorsConfig
    no_consumer = True

    def __init__(self, config: CorsConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        origins = config.origins or []
        self.any_origin = not origins or origins == ["*"]
        self.star_among_others = "*" in origins
        # a lone plain origin is sent as is (Kong), whatever the request's Origin
        self.fixed_origin = (origins[0] if len(origins) == 1 and not self.any_origin
                             and _PLAIN_ORIGIN.fullmatch(origins[0]) else None)
        self.rules = tuple(compile_origin(o) for o in origins if o != "*")
        self.credentials = config.credentials
        self.allow_headers = ",".join(config.headers) if config.headers else None
        self.allow_methods = ",".join(config.methods if config.methods is not None else METHODS)
        self.max_age = _number(config.max_age) if config.max_age is not None else None
        self.expose_headers = ",".join(config.exposed_headers) if config.exposed_headers else None
        self.private_network = config.private_network
        self.preflight_continue = config.preflight_continue
        self.allow_origin_absent = config.allow_origin_absent

    # ------------------------------------------------------------------ origin decision
    def cors_headers(self, req_origin: str | None) -> tuple[list[tuple[str, str]], bool]:
        """The Access-Control-Allow-Origin and -Credentials headers for a request with this
        Origin (None: none sent), and whether ``Vary: Origin`` is due."""
        vary = False
        allow_all = False
        origin: str | None = None
        if self.any_origin:
            origin, allow_all = "*", True
        else:
            vary = True
            if self.fixed_origin is not None:
                origin = self.fixed_origin
            elif req_origin and self.star_among_others:
                origin, allow_all = "*", True
            elif req_origin:
                origin = self.match_origin(req_origin)
        out: list[tuple[str, str]] = []
        if self.credentials and (not allow_all or req_origin):
            if allow_all:  # browsers refuse credentials with "*": name the origin
                origin, vary = req_origin, True
            out.append(("Access-Control-Allow-Credentials", "true"))
        if origin is not None:
            out.insert(0, ("Access-Control-Allow-Origin", origin))
        return out, vary

    def match_origin(self, req_origin: str) -> str | None:
        """The normalised Origin when an entry allows it, else None."""
        normalized = normalize_origin(req_origin)
        for rule in self.rules:
            if rule.regex is not None:
                subject = normalized.host if rule.by_host else normalized.domain
                if rule.regex.fullmatch(subject) is not None:
                    return normalized.domain
            elif normalized.domain == rule.exact:
                return normalized.domain
        return None

    # ------------------------------------------------------------------ hooks
    def access(self, req: "Request") -> Response | None:
        if req.method != "OPTIONS":
            return None
        headers = req.headers
        req_origin = headers.get("origin")
        if not req_origin or headers.get("access-control-request-method") is None:
            return None
        req.ctx[SKIP_CTX] = True
        if self.preflight_continue:
            return None
        out, vary = self.cors_headers(req_origin)
        if vary:
            out.append(("Vary", "Origin"))
        if self.allow_headers is not None:
            out.append(("Access-Control-Allow-Headers", self.allow_headers))
        else:
            requested = headers.get("access-control-request-headers")
            if requested is not None:
                out.append(("Access-Control-Allow-Headers", requested))
        out.append(("Access-Control-Allow-Methods", self.allow_methods))
        if self.max_age is not None:
            out.append(("Access-Control-Max-Age", self.max_age))
        if self.private_network and \
                headers.get("access-control-request-private-network") == "true":
            out.append(("Access-Control-Allow-Private-Network", "true"))
        return Response(200, b"", out)

    def response_headers(self, req: "Request", resp: "ResponseHead") -> None:
        if req.ctx.get(SKIP_CTX):
            return
        req_origin = req.headers.get("origin")
        if not req_origin and not self.allow_origin_absent:
            return
        out, vary = self.cors_headers(req_origin)
        if vary:
            _add_vary_origin(resp)
        if not any(name == "Access-Control-Allow-Origin" for name, _ in out):
            resp.remove("Access-Control-Allow-Origin")
        for name, value in out:
            resp.set(name, value)
        if self.expose_headers is not None:
            resp.set("Access-Control-Expose-Headers", self.expose_headers)


def _add_vary_origin(resp: "ResponseHead") -> None:
    for value in resp.get_all("Vary"):
        tokens = [t.strip().lower() for t in value.split(",")]
        if "origin" in tokens or "*" in tokens:
            return
    resp.add("Vary", "Origin")
