"""The normalised, validated configuration: what the loader produces and the compiler reads.

Every entity is flat (nested Kong entities are hoisted to top level), every reference is
resolved to the referenced entity's ``id``, every default is filled in, and everything is
immutable. Field names and defaults are Kong 3.x's (``kong/db/schema/entities/*.lua``);
durations are in milliseconds as in Kong.

The loader (``guichet.config.loader``) is the only producer; the snapshot compiler
(``guichet.snapshot``), the router and the balancers are the consumers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str | None
    protocol: str = "http"  # http | https | ws | wss (grpc/tcp/... are load errors)
    host: str = ""
    port: int = 80
    path: str | None = None
    retries: int = 5
    connect_timeout: int = 60000
    write_timeout: int = 60000
    read_timeout: int = 60000
    enabled: bool = True
    tls_verify: bool | None = None
    tags: tuple[str, ...] = ()
    # guichet's extension: {base, max, jitter} seconds between retries; None: at once.
    retry_backoff: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    name: str | None
    service_id: str | None
    protocols: tuple[str, ...] = ("http", "https")
    methods: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    # Paths exactly as written in the 3.0 format (regexes carry the leading "~").
    paths: tuple[str, ...] = ()
    # Header name (lower-case) -> allowed values; a value starting with "~*" is a regex
    # matched case-insensitively, as in Kong.
    headers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    snis: tuple[str, ...] = ()
    strip_path: bool = True
    preserve_host: bool = False
    regex_priority: int = 0
    path_handling: str = "v0"  # v0 | v1
    https_redirect_status_code: int = 426
    request_buffering: bool = True
    response_buffering: bool = True
    tags: tuple[str, ...] = ()
    # Position in the file (0-based, in load order); the last tie-breaker, after created_at
    # in Kong (entities of a declarative file are "created" in file order).
    order: int = 0


@dataclass(frozen=True, slots=True)
class Target:
    id: str
    upstream_id: str
    host: str  # a name, an IPv4 address, or an IPv6 address without brackets
    port: int = 8000
    weight: int = 100
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Upstream:
    id: str
    name: str  # matched against Service.host, as in Kong
    algorithm: str = "round-robin"  # round-robin | least-connections | consistent-hashing
    hash_on: str = "none"  # none | consumer | ip | header | cookie | path | query_arg | uri_capture
    hash_fallback: str = "none"
    hash_on_header: str | None = None
    hash_fallback_header: str | None = None
    hash_on_cookie: str | None = None
    hash_on_cookie_path: str = "/"
    hash_on_query_arg: str | None = None
    hash_fallback_query_arg: str | None = None
    hash_on_uri_capture: str | None = None
    hash_fallback_uri_capture: str | None = None
    slots: int = 10000
    host_header: str | None = None
    use_srv_name: bool = False
    # Kong's healthchecks object, validated and defaulted; acted on by issue 4's code.
    healthchecks: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    targets: tuple[Target, ...] = ()
    # guichet's extension: the circuit breaker per target (guichet.health.breaker).
    circuit_breaker: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Certificate:
    id: str
    cert: str  # PEM
    key: str  # PEM
    cert_alt: str | None = None
    key_alt: str | None = None
    snis: tuple[str, ...] = ()  # names, possibly wildcards ("*.example.com")
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Consumer:
    id: str
    username: str | None = None
    custom_id: str | None = None
    tags: tuple[str, ...] = ()


# Credentials of the authentication plugins (Kong's ``keyauth_credentials`` ...), each
# belonging to one consumer. Secrets that the gateway only compares (basic-auth passwords)
# are held hashed: a plaintext password in the file is hashed while loading.
@dataclass(frozen=True, slots=True)
class KeyAuthCredential:
    id: str
    consumer_id: str
    key: str
    # Kong's declarative ``ttl``: the Unix time (seconds) at which the credential expires
    # (absolute, as Kong's DB-less mode reads it and its export writes it); None: never.
    ttl: int | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BasicAuthCredential:
    id: str
    consumer_id: str
    username: str
    password_hash: str  # bcrypt ("$2b$...") or argon2 ("$argon2id$...")
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JwtSecret:
    id: str
    consumer_id: str
    key: str  # matched against the token's key_claim_name claim ("iss" by default)
    algorithm: str = "HS256"
    secret: str | None = None  # HMAC algorithms
    rsa_public_key: str | None = None  # PEM, for RS/ES/PS/EdDSA algorithms
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HmacAuthCredential:
    id: str
    consumer_id: str
    username: str
    secret: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Acl:
    id: str
    consumer_id: str
    group: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Plugin:
    id: str
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    protocols: tuple[str, ...] = ("grpc", "grpcs", "http", "https")
    service_id: str | None = None
    route_id: str | None = None
    consumer_id: str | None = None
    instance_name: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UsagePlan:
    """guichet's usage plan (AWS API Gateway's): a throttle and/or a quota per consumer.

    ``throttle_rate`` is requests per second and ``throttle_burst`` the bucket size (both
    None without a throttle); ``quota_limit`` requests per ``quota_period`` (day, week or
    month, UTC calendar; both None without a quota). ``consumer_ids`` are the consumers it
    applies to; ``service_ids`` and ``route_ids`` restrict where (both empty: everywhere;
    otherwise a request counts when its route or its service is listed)."""

    id: str
    name: str
    description: str | None = None
    throttle_rate: float | None = None
    throttle_burst: int | None = None
    quota_limit: int | None = None
    quota_period: str | None = None
    consumer_ids: tuple[str, ...] = ()
    service_ids: tuple[str, ...] = ()
    route_ids: tuple[str, ...] = ()
    fault_tolerant: bool = True
    hide_client_headers: bool = False
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """A whole declarative configuration, validated and normalised."""

    format_version: str = "3.0"
    services: tuple[Service, ...] = ()
    routes: tuple[Route, ...] = ()
    upstreams: tuple[Upstream, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    consumers: tuple[Consumer, ...] = ()
    plugins: tuple[Plugin, ...] = ()
    keyauth_credentials: tuple[KeyAuthCredential, ...] = ()
    basicauth_credentials: tuple[BasicAuthCredential, ...] = ()
    jwt_secrets: tuple[JwtSecret, ...] = ()
    hmacauth_credentials: tuple[HmacAuthCredential, ...] = ()
    acls: tuple[Acl, ...] = ()
    usage_plans: tuple[UsagePlan, ...] = ()
    # sha256 hex of the canonical form of the document (after migration), for /status and
    # for "unchanged config: nothing to do" on reload.
    hash: str = ""
    source: str = "<string>"


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One error found while loading: where it is and what is wrong."""

    file: str
    line: int | None  # 1-based, None when the error is about the document as a whole
    column: int | None
    path: str  # e.g. "services[0].routes[2].paths[0]"
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.line is not None and self.column is not None:
            where += f":{self.column}"
        return f"{where}: {self.path or '<root>'}: {self.message}"
