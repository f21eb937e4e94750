"""The declarative format's entities as pydantic models (Kong 3.x ``kong/db/schema/entities``).

One model per entity with Kong's field names, types, ranges and defaults; ``extra="forbid"``
(an unknown key is an error, never ignored) and ``strict=True`` (``port: "80"`` is an error,
as in Kong). Every string must be non-empty, as in Kong. Field-level rules come from
``guichet.config.rules``; rules that relate several fields are in
``guichet.config.checks``. The models do not hold references (``service:``, ``route:`` ...)
nor nested collections (``routes:`` inside a service): the loader takes those out first,
as described by ``KINDS``.

Consumers' credentials (``keyauth_credentials``, ``basicauth_credentials``,
``jwt_secrets``, ``hmacauth_credentials``, ``acls``) follow Kong 3.x's
``kong/plugins/<plugin>/daos.lua``: each belongs to one consumer (``consumer:`` at top
level, implied when nested in a consumer); values Kong generates when absent (a key-auth
key, a JWT key and secret, an HMAC secret) are absent here and drawn by
``guichet.config.build``; a ``ttl`` (key-auth only) is Kong's absolute expiry time in Unix
seconds, as Kong's own declarative export writes it. Values the gateway sends to the
upstream in identity headers (consumer ``username`` and ``custom_id``, basic-auth and
hmac-auth ``username``, ACL ``group``, JWT ``key``) hold no control character
(``rules.check_header_text``).

``usage_plans`` is guichet's own collection (AWS API Gateway's usage plans, see
``docs/usage-plans.md``): a throttle and/or a quota per plan, and the consumers it
applies to, by username or id.

Two fields are guichet's own as well (``docs/load-balancing.md``): ``retry_backoff`` on a
service (the wait between retries) and ``circuit_breaker`` on an upstream.

Kong features guichet does not implement are refused by name, never ignored:
``UNSUPPORTED_FIELDS`` (accepted only with Kong's default value or null),
``UNSUPPORTED_COLLECTIONS`` (accepted only empty or null), protocols other than
http/https/ws/wss, the ``latency`` algorithm and gRPC health checks. Plugins are validated
by a ``PluginSchema`` supplied by the caller; an unknown plugin is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Protocol

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StringConstraints,
                      model_validator)

from guichet.config import rules


class PluginSchema(Protocol):
    """What the loader needs from a plugin: validate its ``config`` and fill defaults.

    ``validate`` returns the defaulted config and a list of (sub-path inside ``config``
    such as ``"limits[0].minute"``, message); an empty list means valid. A schema may also
    carry ``no_consumer = True`` (Kong's ``typedefs.no_consumer``, set by authentication
    plugins): such a plugin cannot be configured on a consumer; the loader reads it with
    ``getattr(schema, "no_consumer", False)``.
    """

    def validate(self, config: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        ...


GUICHET_PROTOCOLS = ("http", "https", "ws", "wss")
KONG_ONLY_PROTOCOLS = ("grpc", "grpcs", "tcp", "tls", "tls_passthrough", "udp")
HTTP_PLUGIN_PROTOCOLS = ("grpc", "grpcs", "http", "https")


def _between(low: int, high: int) -> AfterValidator:
    def check(value: float) -> float:
        if not low <= value <= high:
            raise ValueError(f"value should be between {low} and {high}")
        return value
    return AfterValidator(check)


def _one_of(allowed: tuple[str, ...], unsupported: tuple[str, ...] = (),
            what: str = "value") -> AfterValidator:
    def check(value: str) -> str:
        if value in allowed:
            return value
        if value in unsupported:
            raise ValueError(f"{what} '{value}' is not supported by guichet yet")
        raise ValueError("expected one of: " + ", ".join(allowed))
    return AfterValidator(check)


def _rule(check: Callable[[str], str]) -> AfterValidator:
    return AfterValidator(check)


def _no_vault(value: str) -> str:
    if value.startswith("{vault://"):
        raise ValueError("vault references are not supported by guichet yet")
    return value


Str = Annotated[str, StringConstraints(min_length=1)]
Uuid = Annotated[str, _rule(rules.check_uuid)]
Name = Annotated[Str, _rule(rules.check_utf8_name)]
Tag = Annotated[Str, _rule(rules.check_tag)]
HeaderText = Annotated[Str, _rule(rules.check_header_text)]  # sent upstream in a header
Tags = list[Tag]
Port = Annotated[int, _between(0, 65535)]
Timeout = Annotated[int, _between(1, 2**31 - 2)]
HeaderName = Annotated[Str, _rule(rules.check_header_name)]
UrlPath = Annotated[Str, _rule(rules.check_path)]
Sni = Annotated[Str, _rule(rules.check_sni)]
GuichetProtocol = Annotated[Str, _one_of(GUICHET_PROTOCOLS, KONG_ONLY_PROTOCOLS, "protocol")]
PluginProtocol = Annotated[Str, _one_of(GUICHET_PROTOCOLS + KONG_ONLY_PROTOCOLS)]
Pem = Annotated[Str, _rule(_no_vault)]
Seconds = Annotated[float, _between(0, 65535)]
OneByte = Annotated[int, _between(0, 255)]
HttpStatus = Annotated[int, _between(100, 999)]
HashOn = Literal["none", "consumer", "ip", "header", "cookie", "path", "query_arg",
                 "uri_capture"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Entity(Record):
    id: Uuid | None = None
    tags: Tags = []


class RetryBackoff(Record):
    """guichet's extension on a service: the wait between retries
    (``guichet.health.backoff``); ``base: 0`` retries at once, as Kong does."""

    base: Annotated[float, _between(0, 60)] = 0
    max: Annotated[float, _between(0, 3600)] = 1
    jitter: bool = True

    @model_validator(mode="after")
    def _max_not_below_base(self) -> "RetryBackoff":
        if self.base > 0 and self.max < self.base:
            raise ValueError("'max' must not be below 'base'")
        return self


class Service(Entity):
    name: Name | None = None
    retries: Annotated[int, _between(0, 32767)] = 5
    protocol: GuichetProtocol = "http"
    host: Annotated[Str, _rule(rules.check_host)]
    port: Port = 80
    path: UrlPath | None = None
    connect_timeout: Timeout = 60000
    write_timeout: Timeout = 60000
    read_timeout: Timeout = 60000
    tls_verify: bool | None = None
    enabled: bool = True
    retry_backoff: RetryBackoff | None = None  # guichet's extension


class Route(Entity):
    name: Name | None = None
    protocols: Annotated[list[GuichetProtocol], Field(min_length=1)] = ["http", "https"]
    methods: list[Annotated[Str, _rule(rules.check_method)]] = []
    hosts: list[Annotated[Str, _rule(rules.check_route_host)]] = []
    paths: list[Annotated[Str, _rule(rules.check_router_path)]] = []
    headers: dict[HeaderName, list[Str]] = {}
    snis: list[Sni] = []
    https_redirect_status_code: Literal[426, 301, 302, 307, 308] = 426
    strip_path: bool = True
    preserve_host: bool = False
    request_buffering: bool = True
    response_buffering: bool = True
    regex_priority: int = 0
    path_handling: Literal["v0", "v1"] = "v0"


CheckType = Annotated[Str, _one_of(("http", "https", "tcp"), ("grpc", "grpcs"),
                                   "health check type")]


class ActiveHealthy(Record):
    interval: Seconds = 0
    http_statuses: list[HttpStatus] = [200, 302]
    successes: OneByte = 0


class ActiveUnhealthy(Record):
    interval: Seconds = 0
    http_statuses: list[HttpStatus] = [429, 404, 500, 501, 502, 503, 504, 505]
    tcp_failures: OneByte = 0
    timeouts: OneByte = 0
    http_failures: OneByte = 0


class PassiveHealthy(Record):
    http_statuses: list[HttpStatus] = [200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                                       300, 301, 302, 303, 304, 305, 306, 307, 308]
    successes: OneByte = 0


class PassiveUnhealthy(Record):
    http_statuses: list[HttpStatus] = [429, 500, 503]
    tcp_failures: OneByte = 0
    timeouts: OneByte = 0
    http_failures: OneByte = 0


class ActiveChecks(Record):
    type: CheckType = "http"
    timeout: Seconds = 1
    concurrency: Annotated[int, _between(1, 2**31)] = 10
    http_path: UrlPath = "/"
    https_sni: Annotated[Str, _rule(lambda v: rules.check_sni(v, wildcard=False))] | None = None
    https_verify_certificate: bool = True
    headers: dict[HeaderName, list[Str]] | None = None
    healthy: ActiveHealthy = Field(default_factory=ActiveHealthy)
    unhealthy: ActiveUnhealthy = Field(default_factory=ActiveUnhealthy)


class PassiveChecks(Record):
    type: CheckType = "http"
    healthy: PassiveHealthy = Field(default_factory=PassiveHealthy)
    unhealthy: PassiveUnhealthy = Field(default_factory=PassiveUnhealthy)


class Healthchecks(Record):
    active: ActiveChecks = Field(default_factory=ActiveChecks)
    passive: PassiveChecks = Field(default_factory=PassiveChecks)
    threshold: Annotated[float, _between(0, 100)] = 0


class CircuitBreaker(Record):
    """guichet's extension on an upstream: a circuit breaker per target and worker
    (``guichet.health.breaker``); off unless ``failures`` or ``failure_ratio`` is set."""

    failures: Annotated[int, _between(0, 10000)] = 0
    failure_ratio: Annotated[float, _between(0, 1)] = 0
    window: Annotated[float, _between(0.001, 3600)] = 10
    min_requests: Annotated[int, _between(1, 1000000)] = 20
    open_timeout: Annotated[float, _between(0.001, 86400)] = 30
    half_open_requests: Annotated[int, _between(1, 1000)] = 1
    http_statuses: list[HttpStatus] = [502, 503, 504]


class Upstream(Entity):
    name: Annotated[Str, _rule(rules.check_upstream_name)]
    algorithm: Annotated[Str, _one_of(("round-robin", "least-connections",
                                       "consistent-hashing"), ("latency",),
                                      "algorithm")] = "round-robin"
    hash_on: HashOn = "none"
    hash_fallback: HashOn = "none"
    hash_on_header: HeaderName | None = None
    hash_fallback_header: HeaderName | None = None
    hash_on_cookie: Annotated[Str, _rule(rules.check_cookie_name)] | None = None
    hash_on_cookie_path: UrlPath = "/"
    hash_on_query_arg: Str | None = None
    hash_fallback_query_arg: Str | None = None
    hash_on_uri_capture: Str | None = None
    hash_fallback_uri_capture: Str | None = None
    slots: Annotated[int, _between(10, 2**16)] = 10000
    healthchecks: Healthchecks = Field(default_factory=Healthchecks)
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)  # guichet's
    host_header: Annotated[Str, _rule(rules.check_host_with_optional_port)] | None = None
    use_srv_name: bool = False


class Target(Entity):
    target: Annotated[Str, _rule(rules.check_target)]
    weight: Annotated[int, _between(0, 65535)] = 100


class Certificate(Entity):
    cert: Pem
    key: Pem
    cert_alt: Pem | None = None
    key_alt: Pem | None = None


class SniEntity(Entity):
    name: Sni


class Consumer(Entity):
    username: HeaderText | None = None  # X-Consumer-Username
    custom_id: HeaderText | None = None  # X-Consumer-Custom-ID


class KeyAuthCredential(Entity):
    key: Str | None = None  # Kong's ``auto``: drawn at random when absent
    ttl: Annotated[int, _between(0, 2**53)] | None = None  # expiry, Unix seconds


class BasicAuthCredential(Entity):
    username: HeaderText  # X-Credential-Identifier
    password: Str  # plaintext, or a bcrypt/argon2 hash when ``_transform: false``


JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384",
                  "ES512", "PS256", "PS384", "PS512", "EdDSA")


class JwtSecret(Entity):
    key: HeaderText | None = None  # Kong's ``auto``; X-Credential-Identifier
    secret: Str | None = None  # Kong's ``auto``; drawn for HS* algorithms when absent
    rsa_public_key: Str | None = None  # PEM; required for RS*, ES*, PS* and EdDSA
    algorithm: Annotated[Str, _one_of(JWT_ALGORITHMS)] = "HS256"


class HmacAuthCredential(Entity):
    username: HeaderText  # X-Credential-Identifier
    secret: Str | None = None  # Kong's ``auto``


class Acl(Entity):
    group: HeaderText  # X-Consumer-Groups


class Plugin(Entity):
    name: Str
    instance_name: Name | None = None
    config: dict[str, Any] | None = None
    protocols: Annotated[list[PluginProtocol], Field(min_length=1)] = list(HTTP_PLUGIN_PROTOCOLS)
    enabled: bool = True


QUOTA_PERIODS = ("day", "week", "month")


def _positive(value: float) -> float:
    if not (value > 0 and value < float("inf")):
        raise ValueError("value should be a number greater than 0")
    return value


def _no_offset(value: Any) -> Any:
    if value is None:
        return None
    raise ValueError("'offset' is not supported: a quota period starts at 00:00 UTC (weeks "
                     "on Monday, months on the 1st); AWS documents two meanings for it")


def _throttle_rate(value: float) -> float:
    if not 1 / 31_536_000 <= value <= 1e9:
        raise ValueError("a throttle rate is between one request a year (3.2e-8) and 1e9 "
                         "requests per second")
    return value


class PlanThrottle(Record):
    # requests per second
    rate: Annotated[float, AfterValidator(_positive), AfterValidator(_throttle_rate)]
    burst: Annotated[int, _between(1, 2**31 - 1)] | None = None  # default: ceil(rate)


class PlanQuota(Record):
    limit: Annotated[int, _between(1, 2**53)]
    period: Annotated[Str, _one_of(QUOTA_PERIODS)]
    offset: Annotated[Any, AfterValidator(_no_offset)] = None


class UsagePlan(Entity):
    """guichet's own entity (AWS API Gateway's usage plans): ``consumers``, ``services``
    and ``routes`` are lists of references, resolved by ``guichet.config.references``."""

    name: Name
    description: Str | None = None
    throttle: PlanThrottle | None = None
    quota: PlanQuota | None = None
    consumers: list[Str] = []
    services: list[Str] = []
    routes: list[Str] = []
    fault_tolerant: bool = True
    hide_client_headers: bool = False

    @model_validator(mode="after")
    def _throttle_or_quota(self) -> "UsagePlan":
        if self.throttle is None and self.quota is None:
            raise ValueError("a usage plan needs a throttle, a quota, or both")
        return self


# The plugin the build adds to enforce usage plans; it is never written by hand.
USAGE_PLANS_PLUGIN = "usage-plans"


@dataclass(frozen=True, slots=True)
class Kind:
    """How one entity type appears in the file: model, references and nestable children."""

    name: str
    model: type[Entity]
    references: dict[str, str]  # field -> referenced kind
    children: tuple[str, ...] = ()
    endpoint_key: str | None = None  # the unique field a reference may name
    unique: tuple[str, ...] = ()  # other fields unique across every entity of the kind
    secrets: tuple[str, ...] = ()  # fields whose value no message may show
    list_references: tuple[tuple[str, str], ...] = ()  # (field, kind): lists of references


# Consumers' credentials, in Kong's order; each may be nested in a consumer.
CREDENTIALS = ("keyauth_credentials", "basicauth_credentials", "jwt_secrets",
               "hmacauth_credentials", "acls")
_OWNER = {"consumer": "consumers"}

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("services", Service, {}, ("routes", "plugins"), "name"),
    Kind("routes", Route, {"service": "services"}, ("plugins",), "name"),
    Kind("consumers", Consumer, {}, ("plugins", *CREDENTIALS), "username", ("custom_id",)),
    Kind("keyauth_credentials", KeyAuthCredential, _OWNER, (), None, ("key",), ("key",)),
    Kind("basicauth_credentials", BasicAuthCredential, _OWNER, (), None, ("username",),
         ("password",)),
    Kind("jwt_secrets", JwtSecret, _OWNER, (), None, ("key",), ("secret",)),
    Kind("hmacauth_credentials", HmacAuthCredential, _OWNER, (), None, ("username",),
         ("secret",)),
    Kind("acls", Acl, _OWNER),
    Kind("plugins", Plugin, {"service": "services", "route": "routes",
                             "consumer": "consumers"}, (), "instance_name"),
    Kind("upstreams", Upstream, {}, ("targets",), "name"),
    Kind("targets", Target, {"upstream": "upstreams"}),
    Kind("certificates", Certificate, {}, ("snis",)),
    Kind("snis", SniEntity, {"certificate": "certificates"}, (), "name"),
    Kind("usage_plans", UsagePlan, {}, (), "name", list_references=(
        ("consumers", "consumers"), ("services", "services"), ("routes", "routes"))),
)}

# Keys Kong accepts on an entity that guichet does not implement; the value listed (and
# null) means "not used" and is accepted.
UNSUPPORTED_FIELDS: dict[str, dict[str, tuple[Any, ...]]] = {
    "services": {"client_certificate": (), "ca_certificates": ([],),
                 "tls_verify_depth": ()},
    "routes": {"sources": ([],), "destinations": ([],), "expression": (),
               "priority": (0,)},
    "upstreams": {"client_certificate": ()},
    "plugins": {"ordering": ({},), "consumer_group": ()},
    "consumers": {"groups": ([],)},  # decK's consumer group membership
}

# Collections of Kong entities guichet does not implement (top level or nested).
UNSUPPORTED_COLLECTIONS: dict[str, str] = {
    "oauth2_credentials": "entities of the oauth2 plugin",
    "oauth2_authorization_codes": "entities of the oauth2 plugin",
    "oauth2_tokens": "entities of the oauth2 plugin",
    "ca_certificates": "CA certificates for upstream TLS verification",
    "vaults": "vaults", "keys": "keys", "key_sets": "key sets",
    "workspaces": "workspaces", "parameters": "parameters",
    "filter_chains": "WebAssembly filter chains", "consumer_groups": "consumer groups",
    "partials": "plugin partials",
}
# Services or upstreams nested in a certificate: Kong sets their client_certificate.
CLIENT_CERTIFICATE_NESTING = ("services", "upstreams")

# Root keys of decK files that Kong's own loader refuses as well.
DECK_KEYS = ("_info", "_konnect", "_plugin_configs", "_workspace")
