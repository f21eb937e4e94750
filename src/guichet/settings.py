"""Node settings: how this gateway process runs (not what it routes).

Sources, lowest to highest precedence:

1. the defaults below (GUARANTEES.md's numbers);
2. a settings file (YAML), named by ``--settings FILE`` or ``GUICHET_SETTINGS``;
3. environment variables ``GUICHET_<NAME>`` (``GUICHET_TRUSTED_IPS=10.0.0.0/8,::1/128``);
4. command-line flags of ``guichet run`` (``--listen``, ``--admin-listen``, ``--workers``,
   ``--cert``, ``--key``).

Secrets never come from the command line: the admin token is read from
``GUICHET_ADMIN_TOKEN``, or from the file named by ``GUICHET_ADMIN_TOKEN_FILE`` /
``admin_token_file`` in the settings file.

Durations are seconds (floats), sizes are bytes.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from guichet.errors import ConfigError
from guichet.config.model import ConfigIssue

ENV_PREFIX = "GUICHET_"
_LIST_FIELDS = {"plugins", "listen", "trusted_ips", "dns_resolver", "dns_order", "plugins"}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: tuple[str, ...] = ("127.0.0.1:8000",)
    admin_listen: str = "127.0.0.1:8001"
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    ssl_cert: str | None = None
    ssl_cert_key: str | None = None
    admin_token: str | None = Field(default=None, repr=False)
    admin_token_file: str | None = None

    trusted_ips: tuple[str, ...] = ()
    real_ip_header: str = "x-real-ip"

    client_header_timeout: float = Field(10.0, gt=0)
    client_body_timeout: float = Field(30.0, gt=0)
    keepalive_timeout: float = Field(60.0, gt=0)
    max_request_line: int = Field(8192, ge=256)
    max_header_size: int = Field(32768, ge=1024)
    max_headers: int = Field(100, ge=8)
    # 0 = no limit on a streamed body; a body that must be buffered is capped by
    # client_body_buffer_size regardless.
    client_max_body_size: int = Field(0, ge=0)
    client_body_buffer_size: int = Field(8 * 1024 * 1024, ge=1024)

    upstream_keepalive_pool_size: int = Field(64, ge=0)
    upstream_keepalive_idle_timeout: float = Field(60.0, gt=0)
    upstream_keepalive_max_requests: int = Field(10000, ge=1)
    upstream_max_header_size: int = Field(65536, ge=1024)

    websocket_idle_timeout: float = Field(300.0, gt=0)
    websocket_max_message_size: int = Field(1024 * 1024, ge=125)

    drain_timeout: float = Field(30.0, ge=0)
    config_watch_interval: float = Field(1.0, ge=0)  # 0 disables watching the file

    dns_resolver: tuple[str, ...] = ()  # "ip[:port]"; empty: /etc/resolv.conf
    dns_hostsfile: str = "/etc/hosts"
    dns_order: tuple[str, ...] = ("LAST", "SRV", "A", "AAAA", "CNAME")
    dns_min_ttl: float = Field(1.0, ge=0)
    dns_stale_ttl: float = Field(3600.0, ge=0)
    dns_error_ttl: float = Field(1.0, ge=0)
    dns_not_found_ttl: float = Field(30.0, ge=0)
    # Kong's ``plugins``: "bundled" and module paths of custom plugins ("pkg.mod:Class")
    plugins: tuple[str, ...] = ("bundled",)
    # basic-auth: threads verifying passwords (bcrypt/argon2) per worker, and how many
    # verifications may wait before further attempts get 503
    password_verify_threads: int = Field(2, ge=1, le=64)
    password_verify_max_pending: int = Field(64, ge=1)
    # usage plans' quota counters (docs/usage-plans.md): sqlite:///FILE (relative to the
    # declarative config's directory), redis://HOST:PORT/DB or postgresql://HOST/DB; the
    # URL may hold a password, so it is never shown whole
    usage_store: str = Field("sqlite:///guichet-usage.db", repr=False)
    usage_store_timeout: float = Field(2.0, gt=0, le=60)
    # rate-limit counters of the ``local`` policy, shared by the node's workers: slots of
    # the node table (64 bytes each; 65536 = 4 MiB), see docs/operations.md; at most 4 Mi
    # (256 MiB): a worker's restart scans the whole table under its lock (~0.7 s at 4 Mi)
    limits_node_slots: int = Field(65536, ge=1024, le=4 * 1024 * 1024)

    @field_validator("trusted_ips")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @field_validator("usage_store")
    @classmethod
    def _usage_store(cls, value: str) -> str:
        from guichet.quotas import StoreUrlError, parse_store_url, redact

        try:
            parse_store_url(value)
        except StoreUrlError as exc:
            raise ValueError(f"{exc} (got {redact(value)})") from None
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            address = item.split()[0] if item.split() else item
            for scheme in ("http://", "https://"):
                address = address.removeprefix(scheme)
            parse_hostport(address)
        return value

    @field_validator("admin_listen")
    @classmethod
    def _admin(cls, value: str) -> str:
        parse_hostport(value)
        return value

    def resolved_admin_token(self) -> str | None:
        if self.admin_token:
            return self.admin_token
        if self.admin_token_file:
            with open(self.admin_token_file, encoding="utf-8") as fh:
                return fh.read().strip() or None
        return None


def parse_hostport(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8000"``, ``"[::1]:8000"`` or ``":8000"`` (all interfaces)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        if name == "admin_token":
            continue
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        out[name] = tuple(p.strip() for p in raw.split(",") if p.strip()) if name in _LIST_FIELDS else raw
    token = environ.get(ENV_PREFIX + "ADMIN_TOKEN")
    if token:
        out["admin_token"] = token
    return out


def load_settings(
    settings_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Merge defaults < file < environment < overrides; raise ConfigError naming the source."""
    environ = dict(os.environ if environ is None else environ)
    settings_file = settings_file or environ.get(ENV_PREFIX + "SETTINGS")
    merged: dict[str, Any] = {}
    source = "<environment>"
    if settings_file:
        source = settings_file
        try:
            with open(settings_file, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError([ConfigIssue(settings_file, None, None, "", str(exc))]) from None
        if not isinstance(data, dict):
            raise ConfigError([ConfigIssue(settings_file, None, None, "", "a settings file is a mapping")])
        if "admin_token" in data:
            raise ConfigError([ConfigIssue(settings_file, None, None, "admin_token",
                                           "secrets are read from GUICHET_ADMIN_TOKEN or admin_token_file, not the settings file")])
        merged.update(data)
    merged.update(_from_env(environ))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings(**merged)
    except ValidationError as exc:
        issues = [
            ConfigIssue(source, None, None, ".".join(str(p) for p in err["loc"]), err["msg"])
            for err in exc.errors()
        ]
        raise ConfigError(issues) from None
