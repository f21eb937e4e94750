"""Weighted least-connections (Kong's ``least_connections.lua``) on an indexed binary heap.

Rules:

- A peer's load is ``(inflight + 1) / weight``, Kong's formula: the ``+ 1`` makes the
  heaviest peer go first when all are idle instead of treating every idle peer alike.
  The lightest load is picked; peers of weight 0 are not in the heap.
- Ties go to the peer picked least recently (a pick tick), so equal peers take turns:
  round-robin among equals even when the caller never reports connections.
- ``acquired``/``released`` (one connection more or less on a peer) and every pick move
  that one peer in the heap: O(log n), no allocation. Loads are compared by
  cross-multiplication, in integers, so there are no float ties.
- A top peer already tried or marked refused is passed over for the next lightest one
  (see ``peers.pick_usable``); that slower path sorts the peers by load.
- The heap holds only available peers (rebuilt by the balancer when health or a circuit
  changes), so an unhealthy peer costs nothing per request.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

from guichet.balancing.peers import HashInput, Peer, Selection, pick_usable


def _lighter(a: Peer, b: Peer) -> bool:
    left = (a.inflight + 1) * b.weight
    right = (b.inflight + 1) * a.weight
    return left < right or (left == right and a.picked < b.picked)


class LeastConnections:
    __slots__ = ("_heap", "_tick")

    def __init__(self) -> None:
        self._heap: list[Peer] = []
        self._tick = 0

    def update(self, peers: Sequence[Peer]) -> None:
        for peer in self._heap:
            peer.heap_index = -1
        heap = [p for p in peers if p.weight > 0]
        for index, peer in enumerate(heap):
            peer.heap_index = index
        self._heap = heap
        for index in range(len(heap) // 2 - 1, -1, -1):
            self._sift_down(index)

    def select(
        self, key_source: HashInput | None = None, tried: Collection[Peer] = ()
    ) -> Selection | None:
        heap = self._heap
        if not heap:
            return None
        peer = heap[0]
        if peer.down_until or (tried and peer in tried):
            by_load = sorted(heap, key=lambda p: ((p.inflight + 1) / p.weight, p.picked))
            peer = pick_usable(by_load, tried, time.monotonic())
        self._tick += 1
        peer.picked = self._tick
        self._sift_down(peer.heap_index)
        return peer.selection

    def acquired(self, peer: Peer) -> None:
        index = peer.heap_index
        if 0 <= index < len(self._heap) and self._heap[index] is peer:
            self._sift_down(index)

    def released(self, peer: Peer) -> None:
        index = peer.heap_index
        if 0 <= index < len(self._heap) and self._heap[index] is peer:
            self._sift_up(index)

    def _sift_up(self, index: int) -> None:
        heap = self._heap
        peer = heap[index]
        while index > 0:
            parent_index = (index - 1) >> 1
            parent = heap[parent_index]
            if not _lighter(peer, parent):
                break
            heap[index] = parent
            parent.heap_index = index
            index = parent_index
        heap[index] = peer
        peer.heap_index = index

    def _sift_down(self, index: int) -> None:
        heap = self._heap
        size = len(heap)
        peer = heap[index]
        while True:
            child = 2 * index + 1
            if child >= size:
                break
            right = child + 1
            if right < size and _lighter(heap[right], heap[child]):
                child = right
            if not _lighter(heap[child], peer):
                break
            heap[index] = heap[child]
            heap[index].heap_index = index
            index = child
        heap[index] = peer
        peer.heap_index = index
