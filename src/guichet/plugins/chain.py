"""Compile the configured plugins into per-route, per-phase chains.

Which plugin configuration applies to a request (Kong's precedence, most specific first;
for each plugin name, the first scope that has one wins):

1. consumer + route + service    5. consumer
2. consumer + route              6. route
3. consumer + service            7. service
4. route + service               8. global (no route, service nor consumer)

A plugin with ``enabled: false`` is not there at all (it does not hide a less specific
one, as in Kong). A plugin runs only when the request's protocol (``http`` or ``https``)
is in the ``protocols`` of the configuration that applies; a less specific configuration
does not stand in for it.

A :class:`Chain` holds, for each phase, the bound hooks of the plugins that implement it,
highest ``priority`` first (ties broken by name), so running a phase is a loop over a
tuple. Chains are built on first use and cached per (route, protocol, consumer): the
consumer is known only once an authentication plugin has run, so the runner switches to
the consumer's chain in the middle of the access phase (Kong's rule: the plugins after
the authenticating one use the consumer-specific configuration).

The plugin instances themselves are built once per snapshot, one per plugin entity, by
:func:`build_instances`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from guichet.config.model import Config, Plugin as PluginEntity, Route
from guichet.plugins.api import PHASES, Plugin

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.registry import Registry

Scope = tuple[str | None, str | None, str | None]  # (consumer, route, service)


class Chain:
    """The hooks one request runs, per phase, in order."""

    __slots__ = ("rewrite", "access", "upstream_request", "response_headers",
                 "response_body", "log", "access_keys", "plugins", "consumer_id")

    def __init__(self, plugins: list[Plugin], consumer_id: str | None) -> None:
        ordered = sorted(plugins, key=sort_key)
        self.plugins: tuple[Plugin, ...] = tuple(ordered)
        self.consumer_id = consumer_id
        per_phase: dict[str, list[Callable[..., Any]]] = {phase: [] for phase in PHASES}
        access_keys: list[tuple[int, str]] = []
        for plugin in ordered:
            for phase in plugin.active_phases():
                per_phase[phase].append(getattr(plugin, phase))
                if phase == "access":
                    access_keys.append(sort_key(plugin))
        self.rewrite = tuple(per_phase["rewrite"])
        self.access = tuple(per_phase["access"])
        self.upstream_request = tuple(per_phase["upstream_request"])
        self.response_headers = tuple(per_phase["response_headers"])
        self.response_body = tuple(per_phase["response_body"])
        self.log = tuple(per_phase["log"])
        self.access_keys = tuple(access_keys)

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def resume_index(self, after: tuple[int, str]) -> int:
        """Where the access phase goes on in this chain after the plugin whose sort key is
        ``after`` ran in another chain (used when the consumer becomes known)."""
        for index, key in enumerate(self.access_keys):
            if key > after:
                return index
        return len(self.access_keys)


def sort_key(plugin: Plugin) -> tuple[int, str]:
    return (-plugin.priority, plugin.name)


EMPTY = Chain([], None)


def build_instances(config: Config, registry: "Registry", env: "BuildEnv") -> dict[str, Plugin]:
    """One instance per enabled plugin entity, keyed by the entity's id."""
    instances: dict[str, Plugin] = {}
    for entity in config.plugins:
        if not entity.enabled:
            continue
        cls = registry.plugin_class(entity.name)
        conf = cls.Config.model_validate(entity.config)
        instance = instances[entity.id] = cls(conf, env)
        instance.entity_id = entity.id
    return instances


class ChainTable:
    """Every chain of one snapshot, built on first use."""

    def __init__(self, config: Config, instances: dict[str, Plugin]) -> None:
        self._entities: dict[str, PluginEntity] = {p.id: p for p in config.plugins if p.id in instances}
        self._instances = instances
        # (consumer, route, service) -> [(name, entity id)]
        self._by_scope: dict[Scope, list[str]] = {}
        for entity in self._entities.values():
            scope = (entity.consumer_id, entity.route_id, entity.service_id)
            self._by_scope.setdefault(scope, []).append(entity.id)
        self.consumer_scoped = any(e.consumer_id for e in self._entities.values())
        self.active = bool(self._entities)  # False: no request needs a chain
        self._cache: dict[tuple[str | None, str, str | None], Chain] = {}
        self.by_route: dict[tuple[str, str], Chain] = {}  # (route id, protocol) -> chain, no consumer yet

    def __len__(self) -> int:
        return len(self._instances)

    def instances(self) -> list[Plugin]:
        return list(self._instances.values())

    def for_route(self, route: Route, protocol: str) -> Chain:
        """The chain of a route before any consumer is known (the hot path reads
        ``by_route`` itself and calls this only on a miss)."""
        found = self.by_route.get((route.id, protocol))
        if found is None:
            found = self.by_route[(route.id, protocol)] = self._build(
                route.id, route.service_id, protocol, None)
        return found

    def chain(self, route: Route | None, protocol: str, consumer_id: str | None = None) -> Chain:
        if consumer_id is None and route is not None:
            return self.for_route(route, protocol)
        route_id = route.id if route is not None else None
        key = (route_id, protocol, consumer_id)
        found = self._cache.get(key)
        if found is None:
            service_id = route.service_id if route is not None else None
            found = self._build(route_id, service_id, protocol, consumer_id)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[key] = found
        return found

    def _build(self, route_id: str | None, service_id: str | None, protocol: str,
               consumer_id: str | None) -> Chain:
        if not self._entities:
            return EMPTY
        c, r, s = consumer_id, route_id, service_id
        scopes: list[Scope] = []
        if route_id is not None or service_id is not None:
            if c is not None:
                scopes += [(c, r, s), (c, r, None), (c, None, s)]
            scopes.append((None, r, s))
            if c is not None:
                scopes.append((c, None, None))
            scopes += [(None, r, None), (None, None, s)]
        elif c is not None:
            scopes.append((c, None, None))
        scopes.append((None, None, None))
        chosen: dict[str, Plugin | None] = {}
        seen_scopes: set[Scope] = set()
        for scope in scopes:
            if scope in seen_scopes:
                continue
            seen_scopes.add(scope)
            for entity_id in self._by_scope.get(scope, ()):
                entity = self._entities[entity_id]
                if entity.name in chosen:
                    continue
                # The most specific configuration applies; when its protocols exclude
                # the request's, the plugin does not run (no other scope stands in).
                chosen[entity.name] = (self._instances[entity_id]
                                       if protocol in entity.protocols else None)
        plugins = [p for p in chosen.values() if p is not None]
        return Chain(plugins, consumer_id) if plugins else EMPTY
