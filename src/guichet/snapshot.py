"""Compile a validated :class:`~guichet.config.model.Config` into an immutable snapshot.

A snapshot is everything the hot path reads for one configuration version: the route
table, one :class:`CompiledService` per service (its balancer, timeouts in seconds, TLS
choice, Host header rule), and the TLS certificates by SNI. Compiling does all the work
that does not depend on the request, once.

Life cycle (one worker): ``compile_snapshot`` → ``await snap.start()`` (DNS watches) →
``runtime.snapshot = snap`` (one reference swap, no ``await`` in between) → the previous
snapshot is closed once the requests that started on it are done (``close()`` cancels
its DNS watches and drops its balancers), so reloads do not accumulate memory.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from guichet.balancer import Balancer, build_balancers
from guichet.config.model import Config, Service
from guichet.dns import Resolver
from guichet.health.backoff import RetryBackoff
from guichet.health.registry import HealthRegistry
from guichet.plugins.chain import ChainTable, build_instances
from guichet.plugins.consumers import ConsumerDirectory
from guichet.plugins.env import BuildEnv
from guichet.plugins.registry import Registry, default_registry
from guichet.plugins.stores import Stores
from guichet.router import RouteTable, upstream_path

log = logging.getLogger("guichet.snapshot")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_versions = itertools.count(1)


class CompiledService:
    __slots__ = ("service", "balancer", "tls", "verify", "connect_timeout", "read_timeout",
                 "write_timeout", "retries", "_host_header", "_hosts", "_default_port",
                 "_pool_keys", "path", "counts_inflight", "_paths", "backoff")

    def __init__(self, service: Service, balancer: Balancer, host_header: str | None,
                 counts_inflight: bool = False) -> None:
        self.service = service
        self.balancer = balancer
        # Only least-connections reads in-flight counts; others skip the bookkeeping.
        self.counts_inflight = counts_inflight
        self.tls = service.protocol in ("https", "wss")
        self.verify = bool(service.tls_verify)
        self.connect_timeout = service.connect_timeout / 1000.0
        self.read_timeout = service.read_timeout / 1000.0
        self.write_timeout = service.write_timeout / 1000.0
        self.retries = service.retries
        # the wait before each retry (guichet's retry_backoff); None: retry at once
        self.backoff = RetryBackoff.from_dict(getattr(service, "retry_backoff", None))
        self.path = service.path
        self._host_header = host_header.encode() if host_header else None
        self._default_port = _DEFAULT_PORTS.get(service.protocol, 80)
        # Caches keyed by the Peer object itself (peers hash by identity).
        self._hosts: dict[Any, bytes] = {}
        self._pool_keys: dict[Any, tuple[str, int, bool, str]] = {}
        self._paths: dict[tuple[str, str | None, str], str] = {}

    def host_header(self, peer: Any) -> bytes:
        """Kong's rule: the upstream's host_header, else the target's name (plus a port
        that is not the protocol's default)."""
        if self._host_header is not None:
            return self._host_header
        value = self._hosts.get(peer)
        if value is None:
            name = peer.hostname
            if ":" in name and not name.startswith("["):
                name = f"[{name}]"
            value = name if peer.port == self._default_port else f"{name}:{peer.port}"
            value = value.encode()
            if len(self._hosts) > 4096:
                self._hosts.clear()
            self._hosts[peer] = value
        return value

    def pool_key(self, peer: Any) -> tuple[str, int, bool, str]:
        pk = self._pool_keys.get(peer)
        if pk is None:
            pk = (peer.ip, peer.port, self.tls, peer.hostname if self.tls else "")
            if len(self._pool_keys) > 4096:
                self._pool_keys.clear()
            self._pool_keys[peer] = pk
        return pk

    def upstream_path(self, match: Any, request_path: str) -> str:
        """Kong's strip_path / path_handling result, cached per (route, matched prefix,
        request path): clients repeat their URLs."""
        key = (match.route.id, match.matched_path, request_path)
        path = self._paths.get(key)
        if path is None:
            path = upstream_path(match, self.path, request_path)
            if len(self._paths) >= 4096:
                self._paths.clear()
            self._paths[key] = path
        return path


class Snapshot:
    __slots__ = ("config", "router", "services", "hash", "version", "certificates", "_closed",
                 "chains", "redis_settings")

    def __init__(self, config: Config, router: RouteTable, services: dict[str, CompiledService],
                 chains: ChainTable | None = None) -> None:
        self.config = config
        self.router = router
        self.services = services
        self.chains = chains if chains is not None else ChainTable(config, {})
        self.hash = config.hash
        self.version = next(_versions)
        self.certificates = config.certificates
        self._closed = False
        # the Redis counter settings its plugins use (the worker closes the clients that
        # no serving snapshot uses: CounterBackends.prune)
        self.redis_settings: set[Any] | frozenset[Any] = frozenset()

    def balancers(self) -> list[Balancer]:
        """Each balancer once (services naming one upstream share its balancer)."""
        return list({id(s.balancer): s.balancer for s in self.services.values()}.values())

    async def start(self) -> None:
        for balancer in {id(s.balancer): s.balancer for s in self.services.values()}.values():
            await balancer.start()
        for plugin in self.chains.instances():
            await plugin.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for balancer in {id(s.balancer): s.balancer for s in self.services.values()}.values():
            await balancer.close()
        for plugin in self.chains.instances():
            try:
                await plugin.close()
            except Exception:  # noqa: BLE001 - one plugin's failure must not stop the rest
                log.exception("plugin %r failed to close", plugin.name)
        self.services = {}
        self.chains = ChainTable(self.config, {})


def compile_snapshot(config: Config, resolver: Resolver, *, registry: Registry | None = None,
                     settings: Any = None, stores: Stores | None = None,
                     counters: Any = None, health: HealthRegistry | None = None) -> Snapshot:
    """Compile ``config``; plugins come from ``registry`` (bundled ones by default) and
    keep their long-lived state in the worker's ``stores``; upstreams' health checks and
    circuit breakers keep theirs in the worker's ``health`` registry (none without it)."""
    env = BuildEnv(ConsumerDirectory(config), settings, stores if stores is not None else Stores(),
                   counters)
    redis_settings = env.counters.start_build()  # filled while the plugins are built
    chains = ChainTable(config, build_instances(config, registry or default_registry(), env))
    upstreams = {u.name: u for u in config.upstreams}
    services: dict[str, CompiledService] = {}
    enabled = [s for s in config.services if s.enabled]
    # Services naming the same upstream share one balancer (Kong), so least-connections
    # counts are per upstream.
    balancers = build_balancers(enabled, upstreams, resolver, health)
    for service in enabled:
        upstream = upstreams.get(service.host)
        services[service.id] = CompiledService(
            service, balancers[service.id], upstream.host_header if upstream else None,
            counts_inflight=upstream is not None and upstream.algorithm == "least-connections")
    # Routes of a disabled service are not matched (Kong).
    router = RouteTable(r for r in config.routes if r.service_id is None or r.service_id in services)
    snapshot = Snapshot(config, router, services, chains)
    snapshot.redis_settings = redis_settings
    return snapshot
