"""Target health in one worker: who holds the state, who counts, who is told.

Rules:

- One ``HealthRegistry`` per worker (``Runtime.health``), outside any snapshot, so health
  survives reloads. It holds one ``UpstreamHealth`` per upstream that uses health checks
  or a circuit breaker, by upstream name. A reload keeps an upstream's object when its
  ``healthchecks`` and ``circuit_breaker`` are unchanged; otherwise the new snapshot gets
  a fresh one (every target healthy, circuits closed, as Kong starts a new checker) and
  the old one is stopped once the swap is done (``adopt``). Removed upstreams are stopped
  and forgotten, so nothing grows with reloads.
- One ``TargetRecord`` per ``ip:port`` of the upstream, shared by the peers of every
  balancer (old and new snapshot) for that address; a peer finds it as ``peer.health``.
  Records follow the addresses of the current balancer: an address that is gone is
  dropped (its record no longer counts anything).
- **Health (Kong's counters) is per node.** Worker 0 is the *leader*: it holds the
  authoritative counters (``guichet.health.state``), runs the active probes
  (``guichet.health.probes``), and publishes every change of an upstream's target states
  to the master, which relays them to the other workers (``guichet.health.relay``).
  Other workers (*followers*) forward their passive events to the leader through the
  master, and only events that can change something (a failure on a target not fully
  unhealthy, a success on one not fully healthy, with a limit that is not 0), at most
  ``limit`` of a kind per target and second. With one worker there is no relay at all.
- **Circuit breakers are per worker**: each worker counts the outcomes of its own
  requests (no message per request); see ``guichet.health.breaker``.
- A target is *available* when its health is up and its circuit lets requests through.
  Whenever that changes, every balancer sharing the record is told
  (``Balancer.refresh_health``) and rebuilds its view of usable peers.
- Changes between up and down are logged at WARNING (health: by the leader only;
  circuits: by the worker whose circuit it is).
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from guichet.health.breaker import CLOSED, HALF_OPEN, OPEN, BreakerConfig, CircuitBreaker
from guichet.health.state import (
    ACTIVE,
    HEALTHY,
    PASSIVE,
    STATES,
    SUCCESS,
    TCP_FAILURE,
    TIMEOUT,
    HealthChecks,
    UNHEALTHY,
    TargetHealth,
    Transition,
    compile_healthchecks,
    is_up,
)

if TYPE_CHECKING:
    from guichet.balancer import Balancer
    from guichet.balancing.peers import Peer
    from guichet.config.model import Upstream

log = logging.getLogger("guichet.health")

DNS_ERROR = "dns_error"
FORWARD_WINDOW = 1.0  # seconds over which a follower forwards at most `limit` events of a kind

Send = Callable[[dict[str, Any]], None]
Schedule = Callable[[float, Callable[[], None]], Any]


def address_key(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class TargetRecord:
    """Health and circuit of one address of an upstream, in this worker."""

    __slots__ = ("owner", "ip", "port", "key", "hostname", "health", "breaker", "alive",
                 "_sent", "_sent_since", "_timer")

    def __init__(self, owner: "UpstreamHealth", ip: str, port: int, hostname: str,
                 state: str = HEALTHY) -> None:
        self.owner = owner
        self.ip = ip
        self.port = port
        self.key = address_key(ip, port)
        self.hostname = hostname
        self.health = TargetHealth(state)
        config = owner.breaker_config
        self.breaker = CircuitBreaker(config) if config.enabled else None
        self.alive = True
        self._sent = [0, 0, 0, 0]
        self._sent_since = 0.0
        self._timer: Any = None

    @property
    def available(self) -> bool:
        breaker = self.breaker
        return self.health.up and (breaker is None or breaker.available)

    # -- what the proxy reports (hot path: cheap when nothing changes) -----------------
    def picked(self) -> None:
        """A request goes to this target (half-open circuits count their trials)."""
        breaker = self.breaker
        if breaker is not None and breaker.state == HALF_OPEN:
            if breaker.picked(self.owner.clock()):
                self.owner.availability_changed()
                self._schedule()

    def connect_failed(self) -> None:
        self._failure(TCP_FAILURE)

    def lost(self) -> None:
        """Closed or reset before any response: Kong counts a TCP failure."""
        self._failure(TCP_FAILURE)

    def timed_out(self) -> None:
        self._failure(TIMEOUT)

    def responded(self, status: int) -> None:
        """A response head (status 0: an invalid response)."""
        owner = self.owner
        if owner.checks_enabled:
            kind = owner.checks.passive.classify(status)
            if kind is not None:
                owner.passive(self, kind)
        if self.breaker is not None:
            self._outcome(status == 0 or status in owner.breaker_config.http_statuses)

    def _failure(self, kind: int) -> None:
        owner = self.owner
        if owner.checks_enabled:
            owner.passive(self, kind)
        if self.breaker is not None:
            self._outcome(True)

    # -- circuit -------------------------------------------------------------------------
    def _outcome(self, failed: bool) -> None:
        breaker = self.breaker
        assert breaker is not None
        if not self.alive:
            return
        was = breaker.available
        change = breaker.record(failed, self.owner.clock())
        if change is not None:
            self.owner.circuit_changed(self, change)
        if breaker.available != was:
            self.owner.availability_changed()
        if change is not None:
            self._schedule()

    def _schedule(self) -> None:
        breaker = self.breaker
        if breaker is None or not self.alive:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = breaker.deadline()
        if deadline is not None:
            delay = max(0.0, deadline - self.owner.clock())
            self._timer = self.owner.registry.schedule(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        breaker = self.breaker
        if breaker is None or not self.alive:
            return
        was = breaker.available
        change = breaker.tick(self.owner.clock())
        if change is not None:
            self.owner.circuit_changed(self, change)
        if breaker.available != was:
            self.owner.availability_changed()
        self._schedule()

    def retry_after(self, now: float) -> float:
        """Seconds until this target may take requests again (0: it may now)."""
        if not self.health.up:
            checks = self.owner.checks
            return checks.unhealthy_interval if checks.unhealthy_interval > 0 else 1.0
        if self.breaker is not None and not self.breaker.available:
            return self.breaker.retry_after(now)
        return 0.0

    def stop(self) -> None:
        self.alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- follower forwarding -----------------------------------------------------------
    def may_forward(self, kind: int, limit: int, now: float) -> bool:
        if now - self._sent_since > FORWARD_WINDOW:
            self._sent = [0, 0, 0, 0]
            self._sent_since = now
        if self._sent[kind] >= limit:
            return False
        self._sent[kind] += 1
        return True

    def reset_forwarding(self) -> None:
        self._sent = [0, 0, 0, 0]


class UpstreamHealth:
    """The health checker and circuit breakers of one upstream, in this worker."""

    def __init__(self, registry: "HealthRegistry", name: str, checks: HealthChecks,
                 breaker_config: BreakerConfig) -> None:
        self.registry = registry
        self.name = name
        self.checks = checks
        self.checks_enabled = checks.enabled
        self.breaker_config = breaker_config
        self.fingerprint = (checks, breaker_config)
        self.records: dict[tuple[str, int], TargetRecord] = {}
        self.unresolved: tuple[str, ...] = ()
        self.listeners: "weakref.WeakSet[Balancer]" = weakref.WeakSet()
        self.current: "weakref.ReferenceType[Balancer] | None" = None
        self.clock = registry.clock
        self.prober: Any = None
        self.started = False
        self.stopped = False

    # -- addresses ---------------------------------------------------------------------
    def attach(self, balancer: "Balancer", peers: Iterable["Peer"],
               unresolved: Iterable[str] = ()) -> None:
        """A balancer (re)built its peers: give each its record; the current balancer's
        addresses decide which records exist."""
        self.listeners.add(balancer)
        records = self.records
        current = self.current() if self.current is not None else None
        # Only the serving balancer (or, before the first swap, the one being compiled)
        # decides which records exist; another one (a snapshot being compiled, or one
        # retired) gets records of its own for addresses the serving one lacks.
        owns = current is None or current is balancer
        seen = set()
        added = False
        for peer in peers:
            key = (peer.ip, peer.port)
            seen.add(key)
            record = records.get(key)
            if record is None or not record.alive:
                record = TargetRecord(self, peer.ip, peer.port, peer.hostname,
                                      self.registry.remembered(self.name, peer.ip, peer.port))
                if owns:
                    records[key] = record
                    added = True
            elif owns:
                record.hostname = peer.hostname
            peer.health = record
            peer.available = record.available
        if current is balancer:
            removed = [k for k in records if k not in seen]
            for key in removed:
                records.pop(key).stop()
            unresolved = tuple(unresolved)
            changed = added or bool(removed) or unresolved != self.unresolved
            self.unresolved = unresolved
            if changed and self.started:
                self.publish()

    def detach(self, balancer: "Balancer") -> None:
        self.listeners.discard(balancer)

    def make_current(self, balancer: "Balancer") -> None:
        self.current = weakref.ref(balancer)
        balancer.attach_health()

    # -- passive and active events -----------------------------------------------------
    def passive(self, record: TargetRecord, kind: int) -> None:
        rules = self.checks.passive
        limit = rules.limit(kind)
        if limit <= 0 or not record.alive:
            return
        state = record.health.state
        if (state == HEALTHY) if kind == SUCCESS else (state == UNHEALTHY):
            return  # Kong's no-op: nothing to count
        registry = self.registry
        if registry.leader:
            self._apply(record, record.health.report(kind, limit, PASSIVE))
        elif record.may_forward(kind, limit, self.clock()):
            registry.send({"op": "health_report", "upstream": self.name,
                           "target": record.key, "kind": kind})

    def active(self, record: TargetRecord, kind: int) -> None:
        if not record.alive:
            return
        limit = self.checks.active.limit(kind)
        self._apply(record, record.health.report(kind, limit, ACTIVE))

    def forwarded(self, key: str, kind: int) -> None:
        """The leader receives a follower's passive event."""
        for record in self.records.values():
            if record.key == key:
                limit = self.checks.passive.limit(kind)
                self._apply(record, record.health.report(kind, limit, PASSIVE + ", another worker"))
                return

    def _apply(self, record: TargetRecord, transition: Transition | None) -> None:
        if transition is None:
            return
        if transition.flipped:
            word = "healthy" if is_up(transition.new) else "unhealthy"
            log.warning("target %s of upstream %s is now %s (%s)", record.key, self.name, word,
                        transition.reason())
            self.availability_changed()
        self.publish()

    def apply_remote(self, states: dict[str, str]) -> None:
        """States from the leader (or, in the leader, the master's copy after a restart)."""
        changed = False
        for record in self.records.values():
            state = states.get(record.key)
            if state in STATES and state != record.health.state:
                was = record.health.up
                record.health.force(state)
                changed = changed or was != record.health.up
            record.reset_forwarding()
        if changed:
            self.availability_changed()

    # -- circuits ----------------------------------------------------------------------
    def circuit_changed(self, record: TargetRecord, change: tuple[str, str]) -> None:
        old, new = change
        if new == OPEN:
            breaker = record.breaker
            log.warning("circuit of target %s of upstream %s is now open for %gs (%s)",
                        record.key, self.name, self.breaker_config.open_timeout,
                        breaker.last_reason if breaker is not None else "")
        elif new == HALF_OPEN:
            log.warning("circuit of target %s of upstream %s is now half-open", record.key,
                        self.name)
        elif new == CLOSED:
            log.warning("circuit of target %s of upstream %s is now closed", record.key,
                        self.name)

    # -- views -------------------------------------------------------------------------
    def availability_changed(self) -> None:
        for balancer in list(self.listeners):
            balancer.refresh_health()

    def states(self) -> dict[str, str]:
        out = {r.key: r.health.state for r in self.records.values()}
        for name in self.unresolved:
            out[name] = DNS_ERROR
        return out

    def publish(self, boot: bool = False) -> None:
        if self.registry.leader and self.checks_enabled and not self.stopped:
            self.registry.send({"op": "health_state", "upstream": self.name,
                                "targets": self.states(), "boot": boot})

    def retry_after(self, peers: Iterable["Peer"]) -> int:
        now = self.clock()
        waits = [r.retry_after(now) for p in peers if (r := p.health) is not None]
        waits = [w for w in waits if w > 0]
        return max(1, math.ceil(min(waits))) if waits else 1

    # -- life --------------------------------------------------------------------------
    def start(self, boot: bool = False) -> None:
        if self.started or self.stopped:
            return
        self.started = True
        registry = self.registry
        if registry.leader and self.checks_enabled:
            self.publish(boot=boot)
            if self.checks.active_enabled and registry.probes_enabled:
                from guichet.health.probes import ActiveProber

                self.prober = ActiveProber(self)
                self.prober.start()

    def stop(self) -> None:
        self.stopped = True
        if self.prober is not None:
            self.prober.stop()
            self.prober = None
        for record in self.records.values():
            record.stop()
        self.listeners = weakref.WeakSet()


class HealthRegistry:
    """Every upstream's health in this worker (``Runtime.health``)."""

    def __init__(self, *, leader: bool = True, send: Send | None = None,
                 schedule: Schedule | None = None, clock: Callable[[], float] = time.monotonic,
                 probes: bool = True) -> None:
        self.leader = leader
        self._send = send
        self._schedule = schedule
        self.clock = clock
        self.probes_enabled = probes
        self.upstreams: dict[str, UpstreamHealth] = {}
        # The leader's last word per upstream ("ip:port" -> state), so a record created
        # later (a reload, a DNS change) starts from it rather than from "healthy".
        self.mirror: dict[str, dict[str, str]] = {}
        self.booted = False

    # -- plumbing ----------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        if self._send is not None:
            try:
                self._send(message)
            except (OSError, ValueError, EOFError):
                pass  # the master is gone: the worker is about to stop anyway

    def schedule(self, delay: float, callback: Callable[[], None]) -> Any:
        if self._schedule is not None:
            return self._schedule(delay, callback)
        import asyncio

        return asyncio.get_running_loop().call_later(delay, callback)

    def remembered(self, name: str, ip: str, port: int) -> str:
        """The state a new record starts in: the leader's last word (followers), else
        healthy (Kong adds targets healthy; the leader's own word is its records)."""
        if self.leader:
            return HEALTHY
        state = self.mirror.get(name, {}).get(address_key(ip, port), HEALTHY)
        return state if state in STATES else HEALTHY

    # -- compile and swap --------------------------------------------------------------
    def lookup(self, upstream: "Upstream") -> UpstreamHealth | None:
        """The health object a new balancer for ``upstream`` uses (None: not checked).
        Nothing is registered until ``adopt``: a compile that fails changes nothing."""
        checks = compile_healthchecks(upstream.healthchecks)
        breaker = BreakerConfig.from_dict(getattr(upstream, "circuit_breaker", None))
        if not checks.enabled and not breaker.enabled:
            return None
        current = self.upstreams.get(upstream.name)
        if current is not None and not current.stopped and current.fingerprint == (checks, breaker):
            return current
        return UpstreamHealth(self, upstream.name, checks, breaker)

    def adopt(self, balancers: Iterable["Balancer"]) -> None:
        """The snapshot holding ``balancers`` now serves: its health objects become the
        registry's; the others stop (probes cancelled, timers dropped)."""
        adopted: dict[str, UpstreamHealth] = {}
        for balancer in balancers:
            health = balancer.health
            if health is not None:
                adopted[health.name] = health
                health.make_current(balancer)
        for name, old in self.upstreams.items():
            if adopted.get(name) is not old:
                old.stop()
                if name not in adopted and self.leader and old.checks_enabled:
                    self.send({"op": "health_state", "upstream": name, "targets": None})
        self.upstreams = adopted
        for name in [n for n in self.mirror if n not in adopted]:
            del self.mirror[name]
        boot = not self.booted
        self.booted = True
        for health in adopted.values():
            health.start(boot=boot)

    def close(self) -> None:
        for health in self.upstreams.values():
            health.stop()
        self.upstreams = {}

    # -- messages from the master ------------------------------------------------------
    def on_message(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "health_state":
            self.apply_states(message.get("upstream", ""), message.get("targets"))
        elif op == "health_sync":
            for name, states in (message.get("upstreams") or {}).items():
                self.apply_states(name, states)
        elif op == "health_report" and self.leader:
            health = self.upstreams.get(message.get("upstream", ""))
            kind = message.get("kind")
            if health is not None and health.checks_enabled and kind in (0, 1, 2, 3):
                health.forwarded(str(message.get("target")), int(kind))

    def apply_states(self, name: str, states: dict[str, str] | None) -> None:
        if states is None:
            self.mirror.pop(name, None)
            return
        if not self.leader:
            self.mirror[name] = dict(states)
        health = self.upstreams.get(name)
        if health is not None and health.checks_enabled:
            health.apply_remote(states)

    # -- observation -------------------------------------------------------------------
    def snapshot(self) -> dict[str, dict[str, str]]:
        return {name: h.states() for name, h in self.upstreams.items() if h.checks_enabled}
