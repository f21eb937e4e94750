"""Turns validated, linked items into the immutable ``guichet.config.model.Config``.

Rules: entities are listed in load order (file order, nested ones where they are nested);
targets go into their upstream's ``targets``, SNIs into their certificate's ``snis``
(names only); every reference is the referenced entity's id; sets (tags, methods,
protocols, SNIs) lose their duplicates, keeping the first occurrence (Kong's sets); route
header names are lower-cased; a bracketed IPv6 service host loses its brackets; a target
becomes host (IPv4 normalised, IPv6 compressed without brackets, names as written) and
port (8000 when absent, as in Kong); an upstream's ``algorithm`` is the one Kong's
``hash_on`` shorthand yields.

Credentials: each gets its consumer's id. Values Kong generates when absent (a key-auth
key, a JWT key, a JWT secret for HS* algorithms, an HMAC secret) are drawn like Kong's
``random_string``: 32 random letters and digits (from ``secrets``), anew on every load
and in every process. guichet never shows them, so no client can present a drawn
secret: write it in the file for a credential meant to be used.

Usage plans: each lists the resolved ids of its consumers, services and routes; a
throttle without ``burst`` gets ``ceil(rate)``. When there is at least one plan, a global
``usage-plans`` plugin entity (``guichet.plugins.bundled.usage_plans``) is appended to
``plugins``, its config holding the plans, so every route enforces them.

Basic-auth passwords: when the file's secrets are transformed (``_transform``, true by
default) the plaintext is replaced by its bcrypt hash (``guichet.passwords``), hashed in
parallel threads. Each hash is remembered for the process by (consumer id, HMAC-SHA256
of the plaintext under a random per-process key), so an unchanged password is not hashed
again on reload and no plaintext is kept; the memory holds only the latest build's
entries. With ``_transform: false`` the password already is a hash (the walker checked)
and is stored as is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import os
import secrets
import string
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, TypeVar

from guichet import passwords
from guichet.config import checks, model, rules, schema
from guichet.config.references import entity_uuid
from guichet.config.walker import Item

DEFAULT_TARGET_PORT = 8000
_M = TypeVar("_M", bound=schema.Entity)


def _fields(item: Item, cls: type[_M]) -> tuple[str, _M]:
    """The item's id and validated model (every item reaching the build has both)."""
    assert item.id is not None and isinstance(item.model, cls)
    return item.id, item.model


def build_config(items: list[Item], *, format_version: str, hash_: str,
                 source: str, transform: bool = True) -> model.Config:
    """The Config of items that all validated and linked without an issue."""
    by_kind: dict[str, list[Item]] = {}
    for item in items:
        by_kind.setdefault(item.kind, []).append(item)
    basic = by_kind.get("basicauth_credentials", [])
    plaintexts = [(_consumer_id(i), _fields(i, schema.BasicAuthCredential)[1].password)
                  for i in basic]
    hashes = _PASSWORD_HASHES.hash_all(plaintexts) if transform else \
        [password for _, password in plaintexts]
    targets: dict[str, list[model.Target]] = {}
    for item in by_kind.get("targets", []):
        target = _target(item)
        targets.setdefault(target.upstream_id, []).append(target)
    snis: dict[str | None, list[str]] = {}
    for item in by_kind.get("snis", []):
        name = _fields(item, schema.SniEntity)[1].name
        snis.setdefault(item.resolved["certificate"], []).append(name)
    usage_plans = tuple(_usage_plan(i) for i in by_kind.get("usage_plans", []))
    return model.Config(
        format_version=format_version,
        services=tuple(_service(i) for i in by_kind.get("services", [])),
        routes=tuple(_route(i) for i in by_kind.get("routes", [])),
        upstreams=tuple(_upstream(i, targets.get(i.id or "", []))
                        for i in by_kind.get("upstreams", [])),
        certificates=tuple(_certificate(i, snis.get(i.id, []))
                           for i in by_kind.get("certificates", [])),
        consumers=tuple(_consumer(i) for i in by_kind.get("consumers", [])),
        plugins=tuple(_plugin(i) for i in by_kind.get("plugins", [])) +
        _usage_plans_plugin(usage_plans),
        keyauth_credentials=tuple(_keyauth(i) for i in by_kind.get("keyauth_credentials", [])),
        basicauth_credentials=tuple(_basicauth(i, password_hash)
                                    for i, password_hash in zip(basic, hashes)),
        jwt_secrets=tuple(_jwt_secret(i) for i in by_kind.get("jwt_secrets", [])),
        hmacauth_credentials=tuple(_hmacauth(i)
                                   for i in by_kind.get("hmacauth_credentials", [])),
        acls=tuple(_acl(i) for i in by_kind.get("acls", [])),
        usage_plans=usage_plans,
        hash=hash_,
        source=source,
    )


def _unique(values: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(values))


def _service(item: Item) -> model.Service:
    id_, m = _fields(item, schema.Service)
    host = m.host[1:-1] if m.host.startswith("[") else m.host
    return model.Service(
        id=id_, name=m.name, protocol=m.protocol, host=host, port=m.port,
        path=m.path, retries=m.retries, connect_timeout=m.connect_timeout,
        write_timeout=m.write_timeout, read_timeout=m.read_timeout, enabled=m.enabled,
        tls_verify=m.tls_verify, tags=_unique(m.tags),
        retry_backoff=m.retry_backoff.model_dump() if m.retry_backoff is not None else None)


def _route(item: Item) -> model.Route:
    id_, m = _fields(item, schema.Route)
    headers = tuple((name.lower(), tuple(values)) for name, values in m.headers.items())
    return model.Route(
        id=id_, name=m.name, service_id=item.resolved["service"],
        protocols=_unique(m.protocols), methods=_unique(m.methods), hosts=tuple(m.hosts),
        paths=tuple(m.paths), headers=headers, snis=_unique(m.snis), strip_path=m.strip_path,
        preserve_host=m.preserve_host, regex_priority=m.regex_priority,
        path_handling=m.path_handling, https_redirect_status_code=m.https_redirect_status_code,
        request_buffering=m.request_buffering, response_buffering=m.response_buffering,
        tags=_unique(m.tags), order=item.order)


def _target(item: Item) -> model.Target:
    id_, m = _fields(item, schema.Target)
    parsed = rules.parse_host(m.target)
    return model.Target(
        id=id_, upstream_id=item.resolved["upstream"] or "", host=parsed.host,
        port=parsed.port if parsed.port is not None else DEFAULT_TARGET_PORT,
        weight=m.weight, tags=_unique(m.tags))


def _upstream(item: Item, targets: list[model.Target]) -> model.Upstream:
    id_, m = _fields(item, schema.Upstream)
    return model.Upstream(
        id=id_, name=m.name, algorithm=checks.upstream_algorithm(m),
        hash_on=m.hash_on, hash_fallback=m.hash_fallback, hash_on_header=m.hash_on_header,
        hash_fallback_header=m.hash_fallback_header, hash_on_cookie=m.hash_on_cookie,
        hash_on_cookie_path=m.hash_on_cookie_path, hash_on_query_arg=m.hash_on_query_arg,
        hash_fallback_query_arg=m.hash_fallback_query_arg,
        hash_on_uri_capture=m.hash_on_uri_capture,
        hash_fallback_uri_capture=m.hash_fallback_uri_capture, slots=m.slots,
        host_header=m.host_header, use_srv_name=m.use_srv_name,
        healthchecks=m.healthchecks.model_dump(), tags=_unique(m.tags),
        targets=tuple(targets), circuit_breaker=m.circuit_breaker.model_dump())


def _certificate(item: Item, snis: list[str]) -> model.Certificate:
    id_, m = _fields(item, schema.Certificate)
    return model.Certificate(id=id_, cert=m.cert, key=m.key, cert_alt=m.cert_alt,
                             key_alt=m.key_alt, snis=_unique(snis), tags=_unique(m.tags))


def _consumer(item: Item) -> model.Consumer:
    id_, m = _fields(item, schema.Consumer)
    return model.Consumer(id=id_, username=m.username, custom_id=m.custom_id,
                          tags=_unique(m.tags))


def _plugin(item: Item) -> model.Plugin:
    id_, m = _fields(item, schema.Plugin)
    r = item.resolved
    return model.Plugin(
        id=id_, name=m.name, config=item.plugin_config or {}, enabled=m.enabled,
        protocols=_unique(m.protocols), service_id=r["service"], route_id=r["route"],
        consumer_id=r["consumer"], instance_name=m.instance_name, tags=_unique(m.tags))


def _usage_plan(item: Item) -> model.UsagePlan:
    id_, m = _fields(item, schema.UsagePlan)
    lists = item.resolved_lists
    throttle, quota = m.throttle, m.quota
    return model.UsagePlan(
        id=id_, name=m.name, description=m.description,
        throttle_rate=throttle.rate if throttle else None,
        throttle_burst=(throttle.burst or max(1, math.ceil(throttle.rate))) if throttle else None,
        quota_limit=quota.limit if quota else None, quota_period=quota.period if quota else None,
        consumer_ids=lists.get("consumers", ()), service_ids=lists.get("services", ()),
        route_ids=lists.get("routes", ()), fault_tolerant=m.fault_tolerant,
        hide_client_headers=m.hide_client_headers, tags=_unique(m.tags))


def _usage_plans_plugin(plans: tuple[model.UsagePlan, ...]) -> tuple[model.Plugin, ...]:
    """The global ``usage-plans`` plugin enforcing ``plans`` on every route (none without
    plans); its config is the plans themselves, with resolved ids."""
    if not plans:
        return ()
    specs = [{name: list(value) if isinstance(value, tuple) else value
              for name, value in dataclasses.asdict(plan).items()
              if name not in ("description", "tags")} for plan in plans]
    name = schema.USAGE_PLANS_PLUGIN
    return (model.Plugin(id=entity_uuid("plugins", f"plugins:*:{name}:::"), name=name,
                         config={"plans": specs}),)


# -- credentials ---------------------------------------------------------------------------

_RANDOM_ALPHABET = string.ascii_letters + string.digits


def random_secret() -> str:
    """32 random letters and digits: Kong's ``random_string`` (~190 bits)."""
    return "".join(secrets.choice(_RANDOM_ALPHABET) for _ in range(32))


class _PasswordHashes:
    """bcrypt hashes of plaintext passwords, remembered by (consumer id, keyed digest)."""

    def __init__(self) -> None:
        self._digest_key = os.urandom(32)
        self._lock = threading.Lock()
        self._known: dict[tuple[str, bytes], str] = {}

    def _key(self, consumer_id: str, plain: str) -> tuple[str, bytes]:
        digest = hmac.new(self._digest_key, plain.encode("utf-8"), hashlib.sha256).digest()
        return consumer_id, digest

    def hash_all(self, wanted: list[tuple[str, str]]) -> list[str]:
        """The hash of each (consumer id, plaintext), in order."""
        with self._lock:
            keys = [self._key(consumer_id, plain) for consumer_id, plain in wanted]
            used = {key: self._known[key] for key in keys if key in self._known}
            missing = {key: plain for key, (_, plain) in zip(keys, wanted) if key not in used}
            if len(missing) > 1:
                workers = min(len(missing), os.cpu_count() or 1, 8)
                with ThreadPoolExecutor(workers, thread_name_prefix="bcrypt") as pool:
                    used.update(zip(missing, pool.map(passwords.hash_password,
                                                      missing.values())))
            else:
                used.update((key, passwords.hash_password(plain))
                            for key, plain in missing.items())
            self._known = used
            return [used[key] for key in keys]


_PASSWORD_HASHES = _PasswordHashes()


def _consumer_id(item: Item) -> str:
    consumer_id = item.resolved["consumer"]
    assert consumer_id is not None
    return consumer_id


def _keyauth(item: Item) -> model.KeyAuthCredential:
    id_, m = _fields(item, schema.KeyAuthCredential)
    return model.KeyAuthCredential(
        id=id_, consumer_id=_consumer_id(item), key=m.key or random_secret(),
        ttl=m.ttl, tags=_unique(m.tags))


def _basicauth(item: Item, password_hash: str) -> model.BasicAuthCredential:
    id_, m = _fields(item, schema.BasicAuthCredential)
    return model.BasicAuthCredential(id=id_, consumer_id=_consumer_id(item),
                                     username=m.username, password_hash=password_hash,
                                     tags=_unique(m.tags))


def _jwt_secret(item: Item) -> model.JwtSecret:
    id_, m = _fields(item, schema.JwtSecret)
    secret = m.secret
    if secret is None and m.algorithm.startswith("HS"):
        secret = random_secret()
    return model.JwtSecret(
        id=id_, consumer_id=_consumer_id(item), key=m.key or random_secret(),
        algorithm=m.algorithm, secret=secret, rsa_public_key=m.rsa_public_key,
        tags=_unique(m.tags))


def _hmacauth(item: Item) -> model.HmacAuthCredential:
    id_, m = _fields(item, schema.HmacAuthCredential)
    return model.HmacAuthCredential(
        id=id_, consumer_id=_consumer_id(item), username=m.username,
        secret=m.secret or random_secret(), tags=_unique(m.tags))


def _acl(item: Item) -> model.Acl:
    id_, m = _fields(item, schema.Acl)
    return model.Acl(id=id_, consumer_id=_consumer_id(item), group=m.group,
                     tags=_unique(m.tags))
