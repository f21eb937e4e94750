"""Peers (one resolved address of a target), selections, and the skip rules shared by pickers.

Rules:

- A ``Peer`` is one ``ip:port`` the gateway may connect to, born from a target (or from the
  service host for the implicit balancer of a plain service). Its identity is the object:
  equality and hashing are by identity, so a ``tried`` set of peers is cheap and a DNS
  refresh that keeps an address keeps the same ``Peer`` (and its in-flight count).
- ``hostname`` is what Kong calls the balancer's hostname: the upstream's ``host_header``
  when set, else the target's name (the SRV record's target name with ``use_srv_name``),
  else the IP itself. The proxy uses it for ``Host`` (unless ``preserve_host``) and SNI.
- A peer whose target is unhealthy or whose circuit is open (``available`` false) is
  never picked: round-robin and least-connections leave it out of their wheel or heap,
  consistent hashing walks past it on the ring.
- Skipping, in order of preference (``pick_usable``): a peer neither in ``tried`` nor
  marked refused; else one not in ``tried`` even if marked refused (every peer marked:
  still try rather than fail); else one already tried and not marked; else any peer (a
  single-target upstream is retried on its only target, as Kong does).
- ``Selection`` is what ``Balancer.select`` returns: the peer plus, for cookie hashing, the
  cookie Kong asks the response to set. Each peer owns a prebuilt ``Selection`` without a
  cookie so the common path allocates nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from guichet.config.model import Target
    from guichet.health.registry import TargetRecord


@dataclass(slots=True, eq=False)
class Peer:
    ip: str
    port: int
    hostname: str
    target: "Target | None"
    weight: int
    inflight: int = 0
    # Monotonic time until which ``mark_refused`` keeps the peer out of selection; 0 = never.
    down_until: float = 0.0
    # Prebuilt cookie-less selection (set by the balancer; dropped when it closes).
    selection: "Selection | None" = field(default=None, repr=False)
    # Least-connections bookkeeping: position in the heap (-1 when absent) and the
    # tick of the last time the peer was picked (ties go to the least recently picked).
    heap_index: int = field(default=-1, repr=False)
    picked: int = field(default=0, repr=False)
    # Health checks and circuit breaker (``guichet.health.registry.TargetRecord``), set
    # when the upstream uses either; ``available`` mirrors it for the pickers: an
    # unavailable peer is never picked (unlike one marked refused).
    health: "TargetRecord | None" = field(default=None, repr=False)
    available: bool = True

    @property
    def address(self) -> str:
        """``ip:port`` with IPv6 addresses bracketed, for logs and connect errors."""
        if ":" in self.ip:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class Selection:
    peer: Peer
    # (cookie name, value, path) to send with Set-Cookie, when hash_on=cookie generated it.
    set_cookie: tuple[str, str, str] | None = None

    @property
    def ip(self) -> str:
        return self.peer.ip

    @property
    def port(self) -> int:
        return self.peer.port

    @property
    def hostname(self) -> str:
        return self.peer.hostname


class HashInput(Protocol):
    """What consistent hashing may read from a request (the proxy's request context)."""

    consumer_id: str | None  # authenticated consumer id, else the credential id, else None
    client_ip: str
    path: str  # the normalised request path

    def header(self, name: str) -> str | None: ...  # lower-case name; values joined by ", "

    def cookie(self, name: str) -> str | None: ...

    def query_arg(self, name: str) -> str | None: ...  # repeated args: sorted, joined by ","

    def uri_capture(self, name: str) -> str | None: ...  # a route regex group, by name or index


def pick_usable(candidates: Iterable[Peer], tried: Collection[Peer], now: float) -> Peer | None:
    """The first candidate by the skip preference order above; None only when empty."""
    refused_untried = tried_up = first = None
    for peer in candidates:
        if first is None:
            first = peer
        down = peer.down_until
        if down:
            if down <= now:
                peer.down_until = down = 0.0
        if peer in tried:
            if not down and tried_up is None:
                tried_up = peer
            continue
        if not down:
            return peer
        if refused_untried is None:
            refused_untried = peer
    if refused_untried is not None:
        return refused_untried
    return tried_up if tried_up is not None else first
