"""Weighted round-robin over a precomputed wheel (Kong's ``round_robin.lua``).

Rules:

- Each peer of weight ``w`` gets ``w / gcd(all weights)`` slots on the wheel, as in Kong,
  so over one turn of the wheel every peer is picked exactly in proportion to its weight.
  Weights 0 get no slot. A wheel over ``MAX_WHEEL`` slots (weights with a small gcd, such
  as 17 and 31) is scaled down proportionally, every peer keeping at least one slot.
- Kong shuffles its wheel at random; here the slots are interleaved evenly instead (peer
  ``i``'s ``k``-th slot sits at ``(k + 1/2) / slots_i`` of the turn, ties in peer order),
  which honours the same proportions and never sends a burst to one peer. The starting
  position is random so gateway instances do not move in lock-step.
- ``select`` advances one slot: O(1), no allocation. A slot whose peer was already tried
  or is marked refused is passed over (see ``peers.pick_usable``), scanning the wheel
  onward from there.
- The wheel holds only available peers (the balancer rebuilds it when a target turns
  unhealthy or healthy, or a circuit opens or closes): no per-request health check.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Collection, Sequence

from guichet.balancing.peers import HashInput, Peer, Selection, pick_usable

MAX_WHEEL = 10_000


def wheel_points(weights: Sequence[int]) -> list[int]:
    """Slots per weight: proportional, reduced by the gcd, capped at ``MAX_WHEEL``."""
    divisor = 0
    for weight in weights:
        divisor = math.gcd(divisor, weight)
    if divisor == 0:
        return [0] * len(weights)
    points = [w // divisor for w in weights]
    total = sum(points)
    if total > MAX_WHEEL:
        points = [max(1, round(p * MAX_WHEEL / total)) if p else 0 for p in points]
    return points


def build_wheel(peers: Sequence[Peer]) -> list[Peer]:
    """The peers spread evenly over one turn, each as often as its weight says."""
    points = wheel_points([p.weight for p in peers])
    spots = [
        ((2 * k + 1) / (2 * count), index)
        for index, count in enumerate(points)
        for k in range(count)
    ]
    spots.sort()
    return [peers[index] for _, index in spots]


class RoundRobin:
    __slots__ = ("_wheel", "_pointer")

    def __init__(self) -> None:
        self._wheel: list[Peer] = []
        self._pointer = 0

    def update(self, peers: Sequence[Peer]) -> None:
        wheel = build_wheel(peers)
        self._pointer = random.randrange(len(wheel)) if wheel else 0
        self._wheel = wheel

    def select(
        self, key_source: HashInput | None = None, tried: Collection[Peer] = ()
    ) -> Selection | None:
        wheel = self._wheel
        size = len(wheel)
        if not size:
            return None
        index = self._pointer + 1
        if index >= size:
            index = 0
        self._pointer = index
        peer = wheel[index]
        if peer.down_until or (tried and peer in tried):
            onwards = (wheel[(index + step) % size] for step in range(size))
            peer = pick_usable(onwards, tried, time.monotonic())
        return peer.selection

    def acquired(self, peer: Peer) -> None:
        """In-flight counts do not steer round-robin."""

    def released(self, peer: Peer) -> None:
        """In-flight counts do not steer round-robin."""
