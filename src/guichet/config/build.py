"""Turns validated, linked items into the immutable ``guichet.config.model.Config``.

Rules: entities are listed in load order (file order, nested ones where they are nested);
targets go into their upstream's ``targets``, SNIs into their certificate's ``snis``
(names only); every reference is the referenced entity's id; sets (tags, methods,
protocols, SNIs) lose their duplicates, keeping the first occurrence (Kong's sets); route
header names are lower-cased; a bracketed IPv6 service host loses its brackets; a target
becomes host (IPv4 normalised, IPv6 compressed without brackets, names as written) and
port (8000 when absent, as in Kong); an upstream's ``algorithm`` is the one Kong's
``hash_on`` shorthand yields.
"""

from __future__ import annotations

from typing import Any, Iterable, TypeVar

from guichet.config import checks, model, rules, schema
from guichet.config.walker import Item

DEFAULT_TARGET_PORT = 8000
_M = TypeVar("_M", bound=schema.Entity)


def _fields(item: Item, cls: type[_M]) -> tuple[str, _M]:
    """The item's id and validated model (every item reaching the build has both)."""
    assert item.id is not None and isinstance(item.model, cls)
    return item.id, item.model


def build_config(items: list[Item], *, format_version: str, hash_: str,
                 source: str) -> model.Config:
    """The Config of items that all validated and linked without an issue."""
    by_kind: dict[str, list[Item]] = {}
    for item in items:
        by_kind.setdefault(item.kind, []).append(item)
    targets: dict[str, list[model.Target]] = {}
    for item in by_kind.get("targets", []):
        target = _target(item)
        targets.setdefault(target.upstream_id, []).append(target)
    snis: dict[str | None, list[str]] = {}
    for item in by_kind.get("snis", []):
        name = _fields(item, schema.SniEntity)[1].name
        snis.setdefault(item.resolved["certificate"], []).append(name)
    return model.Config(
        format_version=format_version,
        services=tuple(_service(i) for i in by_kind.get("services", [])),
        routes=tuple(_route(i) for i in by_kind.get("routes", [])),
        upstreams=tuple(_upstream(i, targets.get(i.id or "", []))
                        for i in by_kind.get("upstreams", [])),
        certificates=tuple(_certificate(i, snis.get(i.id, []))
                           for i in by_kind.get("certificates", [])),
        consumers=tuple(_consumer(i) for i in by_kind.get("consumers", [])),
        plugins=tuple(_plugin(i) for i in by_kind.get("plugins", [])),
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
        tls_verify=m.tls_verify, tags=_unique(m.tags))


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
        targets=tuple(targets))


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
