"""Consistent hashing on a ring of ``slots`` positions (Kong's ``consistent_hashing.lua``).

Rules:

- The ring has ``slots`` positions (Kong's continuum: ``upstream.slots`` when between 1,000
  and 65,536, else 1,000). Each peer of weight ``w`` owns ``floor(w / W * budget)``
  points, at least one, where ``W`` is the total weight and the budget is 160 points per
  peer (Kong's ``SERVER_POINTS``), capped at half the ring. Point ``i`` of a peer sits at
  ``hash("ip:port i") mod slots``: it depends on nothing but the peer itself.
- Peers are placed in ``(ip, port)`` order. A point landing on a position already taken
  is dropped (Kong instead moves the point on, which shifts other peers' points when one
  leaves); a peer left with no point at all takes more indices until it has one. So
  removing a peer frees exactly its own points: only the keys it owned move, spread over
  the others, and adding a peer only takes keys from the points it gains.
- A key hashes to ``hash(value) mod slots`` and belongs to the nearest point at or below
  it, wrapping around (Kong walks its continuum downwards): O(log n) with bisection on
  the sorted point positions, built once per address-set change.
- A key whose peer was already tried or is marked refused goes on downwards to the next
  usable peer (see ``peers.pick_usable``). An unavailable peer (unhealthy, open circuit)
  stays on the ring and is walked past, as Kong does: when it comes back, its keys come
  back to it.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Collection, Sequence

from guichet.balancing.hashing import HashKey, hash64
from guichet.balancing.peers import HashInput, Peer, Selection, pick_usable

SERVER_POINTS = 160
MIN_SLOTS = 1000
MAX_SLOTS = 65536


def ring_size(slots: int) -> int:
    return slots if MIN_SLOTS <= slots <= MAX_SLOTS else MIN_SLOTS


def build_ring(peers: Sequence[Peer], slots: int) -> tuple[list[int], list[Peer]]:
    """Sorted point positions and, in parallel, the peer owning each point."""
    live = sorted((p for p in peers if p.weight > 0), key=lambda p: (p.ip, p.port))
    if not live:
        return [], []
    total = sum(p.weight for p in live)
    budget = min(SERVER_POINTS * len(live), slots // 2)
    owner: dict[int, Peer] = {}
    for peer in live:
        wanted = max(1, int(peer.weight / total * budget))
        placed = 0
        index = 1
        while index <= wanted or (placed == 0 and index <= slots):
            position = hash64(f"{peer.ip}:{peer.port} {index}") % slots
            if position not in owner:
                owner[position] = peer
                placed += 1
            index += 1
    positions = sorted(owner)
    return positions, [owner[p] for p in positions]


class ConsistentHashing:
    __slots__ = ("_slots", "_key", "_positions", "_owners")

    def __init__(self, key: HashKey, slots: int) -> None:
        self._slots = ring_size(slots)
        self._key = key
        self._positions: list[int] = []
        self._owners: list[Peer] = []

    def update(self, peers: Sequence[Peer]) -> None:
        positions, owners = build_ring(peers, self._slots)
        # Both lists change together: no await in between, select never sees a mix.
        self._positions, self._owners = positions, owners

    def select(
        self, key_source: HashInput | None = None, tried: Collection[Peer] = ()
    ) -> Selection | None:
        owners = self._owners
        if not owners:
            return None
        value, cookie = self._key.read(key_source)
        index = bisect_right(self._positions, hash64(value) % self._slots) - 1
        peer = owners[index]
        if not peer.available or peer.down_until or (tried and peer in tried):
            count = len(owners)
            onwards = (p for p in (owners[(index - step) % count] for step in range(count))
                       if p.available)
            found = pick_usable(onwards, tried, time.monotonic())
            if found is None:
                return None
            peer = found
        if cookie is None:
            return peer.selection
        return Selection(peer, cookie)

    def acquired(self, peer: Peer) -> None:
        """In-flight counts do not steer consistent hashing."""

    def released(self, peer: Peer) -> None:
        """In-flight counts do not steer consistent hashing."""
