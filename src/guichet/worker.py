"""A worker process: its event loop, listeners, current snapshot and reload handling.

Each worker binds every proxy listener itself with SO_REUSEPORT, so the kernel spreads
connections over workers. The master talks to it over a pipe:

* master → worker: ``{"op": "reload", "text": ..., "source": ...}``; the worker compiles
  the text into a new snapshot and swaps one reference (no ``await`` between the check and
  the swap). Requests that started on the old snapshot finish on it; the old snapshot is
  closed when none is left.
* worker → master: ``{"op": "ready"}`` once listening, ``{"op": "reloaded", "hash": ...,
  "error": ...}`` after each reload.
* worker → master: ``{"op": "tally", "counters": ...}`` when the rate-limit counters'
  tally changed (at most once a second): what ``/status`` shows under ``rate_limiting``.
* health checks, both ways: ``health_state``, ``health_report``, ``health_sync`` (see
  ``guichet.health.relay``); worker 0 leads (probes and counters), the master relays.

SIGTERM/SIGINT: stop accepting, answer what is in flight with ``Connection: close``, close
idle keep-alive connections, and exit when no connection is left or after
``drain_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import sys
from typing import Any

from guichet.config.loader import load_config_text
from guichet.balancing.dns_files import parse_nameservers
from guichet.dns import Resolver
from guichet.errors import ConfigError
from guichet.health.registry import HealthRegistry
from guichet.limits.backends import CounterBackends
from guichet.plugins.bundled.usage_plans import STORE_NAME as USAGE_PLANS_STORE
from guichet.plugins.registry import Registry
from guichet.plugins.stores import Stores
from guichet.server.headers import TrustedNetworks
from guichet.server.protocol import ClientProtocol
from guichet.server.upstream import UpstreamPool
from guichet.settings import Settings, parse_hostport
from guichet.snapshot import Snapshot, compile_snapshot
from guichet.tls import CertificateStore

log = logging.getLogger("guichet.worker")
# Deadlines are checked, and the coarse clock ``Runtime.now`` is advanced, this often: a
# timeout fires within SWEEP_INTERVAL of its nominal time, and the hot path reads a float
# instead of calling loop.time() several times per request.
SWEEP_INTERVAL = 0.25
STORES_SWEEP_INTERVAL = 30.0
TALLY_EVERY = 4  # sweeps between reports of the counters' tally to the master (1 s)


class Runtime:
    """Everything a worker's connections share; passed in, never global."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, snapshot: Snapshot,
                 resolver: Resolver, stats: Any = None, index: int = 0, *,
                 registry: Registry | None = None, stores: Stores | None = None,
                 counters: CounterBackends | None = None,
                 health: HealthRegistry | None = None) -> None:
        self.settings = settings
        # upstream health and circuits: outlive reloads; worker 0 leads (probes, counters)
        self.health = health if health is not None else HealthRegistry(leader=index == 0)
        self.registry = registry if registry is not None else Registry(settings.plugins)
        self.stores = stores if stores is not None else Stores()
        # rate-limit counters (node table, Redis clients): like stores, they outlive reloads
        self.counters = counters if counters is not None else CounterBackends()
        self.stores_sweep_at = loop.time() + STORES_SWEEP_INTERVAL
        self.loop = loop
        self.now = loop.time()
        self.snapshot = snapshot
        self.resolver = resolver
        self.pool = UpstreamPool(settings.upstream_keepalive_pool_size,
                                 settings.upstream_keepalive_idle_timeout,
                                 settings.upstream_keepalive_max_requests,
                                 settings.upstream_max_header_size)
        self.trusted = TrustedNetworks(settings.trusted_ips)
        self.clients: set[ClientProtocol] = set()
        self.draining = False
        self.stats = stats
        self.index = index
        self.retired: list[Snapshot] = []
        self.certs = CertificateStore(settings)
        self.certs.update(snapshot.certificates)

    def connection_opened(self, client: ClientProtocol) -> None:
        self.clients.add(client)
        if self.stats is not None:
            self.stats[self.index] += 1

    def connection_closed(self, client: ClientProtocol) -> None:
        if client in self.clients:
            self.clients.discard(client)
            if self.stats is not None:
                self.stats[self.index] -= 1

    def compile(self, config: Any) -> Snapshot:
        return compile_snapshot(config, self.resolver, registry=self.registry,
                                settings=self.settings, stores=self.stores,
                                counters=self.counters, health=self.health)

    def sni_of(self, sslobj: Any) -> str | None:
        return getattr(sslobj, "guichet_sni", None)

    # -- reload ------------------------------------------------------------------
    async def reload(self, text: str, source: str) -> tuple[str | None, str | None]:
        """Compile and swap; return (hash, None) or (None, error text)."""
        try:
            config = load_config_text(text, source, plugin_schemas=self.registry.schemas())
        except ConfigError as exc:
            return None, str(exc)
        if config.hash == self.snapshot.hash:
            return config.hash, None
        try:
            snap = self.compile(config)
        except Exception as exc:  # noqa: BLE001 - a plugin that cannot be built: keep the old
            log.exception("reload refused: the configuration cannot be compiled")
            return None, f"{source}: cannot compile the configuration: {exc}"
        await snap.start()
        old = self.snapshot
        self.snapshot = snap  # the swap: one reference, no await since the check
        self.health.adopt(snap.balancers())  # its upstreams' health becomes current
        self.certs.update(snap.certificates)
        self.retired.append(old)
        return config.hash, None

    def sweep(self) -> None:
        now = self.now = self.loop.time()
        in_use: set[int] = set()
        for client in list(self.clients):
            client.check_timeout(now)
            if self.retired:
                for ex in (client.active, *client.queue):
                    if ex is not None and ex.snapshot is not None:
                        in_use.add(id(ex.snapshot))
        self.pool.sweep(now)
        if now >= self.stores_sweep_at:  # twice a minute: expired entries nobody asked for
            self.stores_sweep_at = now + STORES_SWEEP_INTERVAL
            self.stores.sweep()
        if self.retired:
            keep, done = [], []
            for snap in self.retired:
                (keep if id(snap) in in_use else done).append(snap)
            self.retired = keep
            if done:
                self.loop.create_task(self._release(done))

    async def _release(self, snapshots: list[Snapshot]) -> None:
        """Close retired snapshots, then collect their reference cycles now rather than
        at the next full collection, so memory returns to its level after each reload."""
        for snap in snapshots:
            await snap.close()
        snapshots.clear()
        # Redis counter clients that no serving snapshot uses any more: closed
        keep: set = set(getattr(self.snapshot, "redis_settings", ()))
        for snap in self.retired:
            keep.update(getattr(snap, "redis_settings", ()))
        await self.counters.prune(keep)
        gc.collect()


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(settings: Settings, config_text: str, source: str, control: Any,
                stats: Any, index: int, counters_path: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    resolver = Resolver(
        nameservers=parse_nameservers(",".join(settings.dns_resolver)) if settings.dns_resolver else None,
        hostsfile=settings.dns_hostsfile or None,
        order=tuple(settings.dns_order),
        min_ttl=settings.dns_min_ttl,
        stale_ttl=settings.dns_stale_ttl,
        error_ttl=settings.dns_error_ttl,
        not_found_ttl=settings.dns_not_found_ttl,
    )
    registry = Registry(settings.plugins)
    stores = Stores()
    counters = CounterBackends.for_node(counters_path)  # the master's node table
    health = HealthRegistry(leader=index == 0, send=control.send)
    config = load_config_text(config_text, source, plugin_schemas=registry.schemas())
    snapshot = compile_snapshot(config, resolver, registry=registry, settings=settings,
                                stores=stores, counters=counters, health=health)
    await snapshot.start()
    health.adopt(snapshot.balancers())
    rt = Runtime(settings, loop, snapshot, resolver, stats, index, registry=registry,
                 stores=stores, counters=counters, health=health)

    servers = []
    for item in settings.listen:
        host, port, tls = _parse_listener(item)
        ctx: ssl.SSLContext | None = rt.certs.server_context() if tls else None
        sock = _listen_socket(host, port)
        scheme = "https" if ctx is not None else "http"
        srv = await loop.create_server(
            lambda scheme=scheme, port=port: ClientProtocol(rt, scheme, port), sock=sock, ssl=ctx,
            ssl_handshake_timeout=settings.client_header_timeout if ctx else None)
        servers.append(srv)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the master coordinates reloads

    async def on_message(msg: dict[str, Any]) -> None:
        if msg.get("op") == "reload":
            digest, error = await rt.reload(msg["text"], msg["source"])
            control.send({"op": "reloaded", "hash": digest, "error": error, "index": index})
        elif msg.get("op") == "stop":
            stop.set()
        elif str(msg.get("op")).startswith("health_"):
            rt.health.on_message(msg)  # target states from worker 0, or events for it

    def readable() -> None:
        try:
            while control.poll():
                loop.create_task(on_message(control.recv()))
        except (EOFError, OSError):
            stop.set()  # the master is gone: drain and exit

    loop.add_reader(control.fileno(), readable)

    async def sweeper() -> None:
        sent: dict[str, dict[str, int]] = {}
        ticks = 0
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            rt.sweep()
            ticks += 1
            if ticks % TALLY_EVERY == 0:  # counter decisions, for the master's /status
                tally = rt.counters.tally()
                plans = rt.stores.get(USAGE_PLANS_STORE).get("tally")
                if plans:  # quota store / throttle decisions of usage plans
                    tally["usage-plans"] = dict(plans)
                if tally != sent:
                    sent = tally
                    control.send({"op": "tally", "index": index, "counters": tally})

    sweep_task = loop.create_task(sweeper())
    control.send({"op": "ready", "index": index, "pid": os.getpid()})
    await stop.wait()

    # -- drain -----------------------------------------------------------------
    rt.draining = True
    for srv in servers:
        srv.close()
    for client in list(rt.clients):
        client.close_if_idle()
    deadline = loop.time() + settings.drain_timeout
    while rt.clients and loop.time() < deadline:
        await asyncio.sleep(0.05)
        for client in list(rt.clients):
            client.close_if_idle()
    for client in list(rt.clients):
        if client.transport is not None:
            client.transport.abort()
    sweep_task.cancel()
    rt.pool.close_all()
    try:
        loop.remove_reader(control.fileno())
    except (OSError, ValueError):
        pass
    rt.health.close()
    await rt.snapshot.close()
    await resolver.close()
    await counters.close()


def _parse_listener(item: str) -> tuple[str, int, bool]:
    """``HOST:PORT``, ``HOST:PORT ssl`` (Kong's ``proxy_listen`` flag) or ``https://HOST:PORT``."""
    parts = item.split()
    address = parts[0]
    tls = "ssl" in parts[1:]
    for scheme in ("http://", "https://"):
        if address.startswith(scheme):
            address = address[len(scheme):]
            tls = tls or scheme == "https://"
    host, port = parse_hostport(address)
    return host, port, tls


def worker_main(settings: Settings, config_text: str, source: str, control: Any, stats: Any,
                index: int, log_level: int, counters_path: str | None = None) -> None:
    """Entry point of a worker process (spawned by the master)."""
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format=f"%(asctime)s worker[{index}] %(levelname)s %(name)s: %(message)s")
    # Plugins' outbound calls (JWKS, introspection): one INFO line per call would flood the
    # log and could carry URLs with query secrets; their failures are logged by the plugins.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    import uvloop

    try:
        uvloop.run(serve(settings, config_text, source, control, stats, index, counters_path))
    except ConfigError as exc:
        control.send({"op": "failed", "index": index, "error": str(exc)})
        sys.exit(1)
    except OSError as exc:
        control.send({"op": "failed", "index": index, "error": f"cannot listen: {exc}"})
        sys.exit(1)
