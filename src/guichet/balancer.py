"""Balancers: which peer a request to a service goes to (Kong's ``kong/runloop/balancer``).

Rules:

- A service whose ``host`` is an Upstream's ``name`` is balanced over that upstream's
  targets with its ``algorithm`` (``round-robin``, ``least-connections``,
  ``consistent-hashing``; pickers in ``guichet.balancing``). Targets of weight 0 are left
  out. Any other host (a name, a hosts-file name, an IP) gets an implicit round-robin
  balancer over the addresses it resolves to, on the service's port.
- A target whose host is an IP is one peer. A named target is watched through the shared
  ``Resolver``: every A/AAAA address becomes a peer carrying the target's full weight
  (Kong's ``addAddress``: the weight is not divided), every SRV record a peer with the
  record's port and weight. Changes arrive in the background and rebuild the picker's
  structure (wheel, heap or ring) once per change; a kept address keeps its ``Peer``,
  so its in-flight count and refusal mark survive the refresh.
- A name that does not resolve contributes no peer (and is retried by the resolver);
  ``select`` returns None when there is no peer at all: the proxy answers
  ``NoHealthyUpstream`` (503).
- ``select`` is synchronous and allocates nothing but a cookie selection; ``tried``
  holds the peers already attempted for this request, so a retry goes elsewhere when
  it can; ``mark_refused`` keeps a peer out for a moment (``peers.pick_usable``).
- ``acquire``/``release`` count in-flight requests per peer (least-connections uses them).
- ``close()`` cancels every DNS watch and drops the resolver, so a closed balancer is
  garbage as soon as the last request using it ends; selection keeps working on the last
  known peers meanwhile (a request that outlives a reload can still retry).
- Health checks and circuit breakers (``guichet.health``): an upstream that uses either
  gets an ``UpstreamHealth`` (``health``) from the worker's registry, shared with the
  balancers of other snapshots. Each peer then carries its ``TargetRecord`` and an
  ``available`` flag; ``refresh_health`` (called when a target turns healthy or
  unhealthy, or a circuit opens or closes) rebuilds the picker over available peers
  only (consistent hashing keeps its ring and walks past unavailable peers). As in Kong,
  the balancer as a whole is unhealthy, and ``select`` returns None, when the weight of
  healthy peers is not above ``healthchecks.threshold`` percent of the total weight (with
  the default 0: when no peer is healthy). ``retry_after`` says when a peer may be back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

from guichet.balancing.consistent_hashing import ConsistentHashing
from guichet.balancing.dns_files import is_ip
from guichet.balancing.hashing import HashKey
from guichet.balancing.least_connections import LeastConnections
from guichet.balancing.peers import HashInput, Peer, Selection
from guichet.balancing.round_robin import RoundRobin
from guichet.config.model import Service, Target, Upstream
from guichet.dns import Address, Resolver, Watch
from guichet.health.registry import HealthRegistry, UpstreamHealth

__all__ = [
    "Balancer",
    "HashInput",
    "Peer",
    "Selection",
    "build_balancer",
    "build_balancers",
]

IMPLICIT_WEIGHT = 100  # weight of the implicit target of a plain service (irrelevant: alone)


@dataclass(slots=True)
class _TargetState:
    host: str  # a name, or an IP without brackets
    port: int
    weight: int
    target: Target | None
    peers: tuple[Peer, ...] = ()
    watch: Watch | None = None


def _make_picker(upstream: Upstream) -> RoundRobin | LeastConnections | ConsistentHashing:
    if upstream.algorithm == "round-robin":
        return RoundRobin()
    if upstream.algorithm == "least-connections":
        return LeastConnections()
    if upstream.algorithm == "consistent-hashing":
        return ConsistentHashing(HashKey(upstream), upstream.slots)
    raise ValueError(f"upstream {upstream.name!r}: unknown algorithm {upstream.algorithm!r}")


class Balancer:
    __slots__ = (
        "name", "upstream", "_picker", "_targets", "_resolver", "_peers", "_state", "health",
        "_serving", "__weakref__"
    )

    def __init__(
        self,
        name: str,
        picker: RoundRobin | LeastConnections | ConsistentHashing,
        targets: list[_TargetState],
        resolver: Resolver,
        upstream: Upstream | None = None,
        health: UpstreamHealth | None = None,
    ) -> None:
        self.name = name
        self.upstream = upstream
        self._picker = picker
        self._targets = targets
        self._resolver: Resolver | None = resolver
        self._peers: tuple[Peer, ...] = ()
        self._state = "new"  # new -> started -> closed
        self.health = health
        self._serving = True  # False: the threshold says the whole upstream is unhealthy
        for state in targets:
            if is_ip(state.host):
                itself = Address(state.host, state.port, None, math.inf)
                state.peers = self._peers_for(state, [itself])
        self._rebuild()

    @property
    def addresses(self) -> tuple[Peer, ...]:
        return self._peers

    def select(
        self, key_source: HashInput | None = None, tried: Collection[Peer] = ()
    ) -> Selection | None:
        if not self._serving:
            return None
        return self._picker.select(key_source, tried)

    def retry_after(self) -> int:
        """Seconds a client should wait after ``select`` found nothing (Retry-After)."""
        health = self.health
        return 1 if health is None else health.retry_after(self._peers)

    def acquire(self, peer: Peer) -> None:
        peer.inflight += 1
        self._picker.acquired(peer)

    def release(self, peer: Peer) -> None:
        if peer.inflight > 0:
            peer.inflight -= 1
            self._picker.released(peer)

    def mark_refused(self, peer: Peer, seconds: float = 1.0) -> None:
        peer.down_until = time.monotonic() + seconds

    async def start(self, wait: float | None = None) -> None:
        """Start the DNS watches; wait up to ``wait`` s (resolver timeout) for first answers."""
        if self._state != "new" or self._resolver is None:
            return
        self._state = "started"
        resolver = self._resolver
        for state in self._targets:
            if not is_ip(state.host):
                on_change = partial(self._on_addresses, state)
                state.watch = resolver.watch(state.host, state.port, on_change)
        pending = [
            asyncio.ensure_future(s.watch.ready()) for s in self._targets if s.watch is not None
        ]
        if not pending:
            return
        try:
            await asyncio.wait(pending, timeout=resolver.timeout if wait is None else wait)
        finally:
            for task in pending:
                task.cancel()

    async def close(self) -> None:
        self._state = "closed"
        if self.health is not None:
            self.health.detach(self)
        for state in self._targets:
            if state.watch is not None:
                state.watch.cancel()
                state.watch = None
        self._resolver = None

    # -- address changes -------------------------------------------------------------

    def _on_addresses(self, state: _TargetState, addresses: list[Address]) -> None:
        if self._state == "closed":
            return
        state.peers = self._peers_for(state, addresses)
        self._rebuild()

    def _peers_for(self, state: _TargetState, addresses: Iterable[Address]) -> tuple[Peer, ...]:
        kept = {(p.ip, p.port): p for p in state.peers}
        upstream = self.upstream
        host_header = upstream.host_header if upstream is not None else None
        use_srv_name = upstream is not None and upstream.use_srv_name
        peers = []
        for address in addresses:
            weight = state.weight if address.weight is None else address.weight
            if host_header:
                hostname = host_header
            elif is_ip(state.host):
                hostname = address.ip
            elif use_srv_name and address.name:
                hostname = address.name
            else:
                hostname = state.host
            peer = kept.pop((address.ip, address.port), None)
            if peer is None:
                peer = Peer(address.ip, address.port, hostname, state.target, weight)
            else:
                peer.weight, peer.hostname = weight, hostname
            peers.append(peer)
        return tuple(peers)

    def _rebuild(self) -> None:
        peers = tuple(p for state in self._targets for p in state.peers)
        for peer in peers:
            if peer.selection is None:
                peer.selection = Selection(peer)
        self._peers = peers
        if self.health is None:
            self._picker.update(peers)
            return
        self.health.attach(self, peers, self._unresolved())
        if isinstance(self._picker, ConsistentHashing):
            self._picker.update(peers)  # the ring holds every peer; select walks past
        self.refresh_health()

    # -- health ----------------------------------------------------------------------

    def _unresolved(self) -> list[str]:
        return [f"{s.host}:{s.port}" for s in self._targets if not s.peers and not is_ip(s.host)]

    def attach_health(self) -> None:
        """This balancer is now the one serving its upstream: its addresses decide which
        target records exist."""
        if self.health is not None and self._state != "closed":
            self.health.attach(self, self._peers, self._unresolved())
            self.refresh_health()

    def refresh_health(self) -> None:
        """Rebuild the view of available peers and the upstream's overall health."""
        health = self.health
        if health is None:
            return
        peers = self._peers
        total = up = 0
        live = []
        for peer in peers:
            record = peer.health
            peer.available = available = record is None or record.available
            if available:
                live.append(peer)
            if peer.weight > 0:
                total += peer.weight
                if record is None or record.health.up:
                    up += peer.weight
        if health.checks_enabled:
            self._serving = total > 0 and up * 100 > health.checks.threshold * total
        else:
            self._serving = True
        if not isinstance(self._picker, ConsistentHashing):
            self._picker.update(live)


def _target_host(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def build_balancer(
    service: Service, upstreams_by_name: Mapping[str, Upstream], resolver: Resolver,
    health: HealthRegistry | None = None,
) -> Balancer:
    """The balancer for ``service`` (not started: ``await balancer.start()`` next); with
    ``health``, an upstream's balancer is health-checked as its config says."""
    upstream = upstreams_by_name.get(service.host)
    if upstream is None:
        host = _target_host(service.host)
        state = _TargetState(host, service.port, IMPLICIT_WEIGHT, None)
        return Balancer(service.host, RoundRobin(), [state], resolver)
    targets = [
        _TargetState(_target_host(t.host), t.port, t.weight, t)
        for t in upstream.targets
        if t.weight > 0
    ]
    checker = health.lookup(upstream) if health is not None else None
    return Balancer(upstream.name, _make_picker(upstream), targets, resolver, upstream, checker)


def build_balancers(
    services: Iterable[Service], upstreams_by_name: Mapping[str, Upstream], resolver: Resolver,
    health: HealthRegistry | None = None,
) -> dict[str, Balancer]:
    """One balancer per service id; services naming the same upstream share one, as in
    Kong (so least-connections counts and the round-robin position are per upstream)."""
    shared: dict[str, Balancer] = {}
    result: dict[str, Balancer] = {}
    for service in services:
        if service.host in upstreams_by_name:
            if service.host not in shared:
                shared[service.host] = build_balancer(service, upstreams_by_name, resolver,
                                                      health)
            result[service.id] = shared[service.host]
        else:
            result[service.id] = build_balancer(service, upstreams_by_name, resolver)
    return result
