"""The node table: rate-limit counters and concurrency slots shared by every worker of one
node, exact however concurrent the clients.

The master creates the table before it spawns workers (:meth:`NodeTable.create`): a file
in ``/dev/shm`` (else the temporary directory) that every worker maps
(:meth:`NodeTable.open`). It is a fixed-capacity open-addressing hash table of 64-byte
slots after a 64-byte header::

    header: magic "GUICHETL", version, slot size, capacity, 16-byte random salt
    slot:   digest (16)  kind (1) pad (3) pid (4)  expires (8, Unix seconds)  payload (32)
            kind 1 rate:   window start, count, previous count, GCRA TAT (4 doubles)
            kind 2 slots:  active, queued (node totals of one concurrency key)
            kind 3 holder: digest of its kind-2 slot, active, queued (one pid's share)

* A key is found by its salted 16-byte BLAKE2b digest (the salt is random per table, so
  clients cannot aim their keys at one probe chain), probing at most ``MAX_PROBE``
  consecutive slots from its home. Slots are never emptied: an expired slot (``expires``
  passed; idle concurrency slots have ``expires`` 0) is reused by the next new key of its
  chain, which keeps every chain intact. A new key that finds no empty or expired slot in
  its ``MAX_PROBE`` slots **evicts** the rate counter (kind 1) of its chain whose
  ``expires`` comes first (counted as ``table_evictions``): under a flood of distinct keys
  the evicted counters start again from zero (limits become lenient for them, never
  stricter), and every new key, a concurrency key included, still gets a slot. Busy
  concurrency slots and holders (active or queued > 0; ``expires`` infinite) are never
  evicted; only when the whole chain is made of them does the operation raise
  ``CountersUnavailable`` (counted as ``table_full``), and the caller's ``fault_tolerant``
  decides. Size the table well above the number of live keys (``limits_node_slots``; 64
  bytes each).
* Files of masters that died without deleting theirs (``kill -9``) are removed by the next
  :meth:`NodeTable.create` in the same directory (:func:`remove_stale_tables`: only
  ``guichet-limits-<pid>-*`` files of this user whose ``<pid>`` is no running process).
* Every operation (one ``hit`` of several limits, one slot change) holds an exclusive
  ``flock`` on the file from read to write: nothing can come between the check and the
  increment in any worker. The kernel drops the lock of a process that dies, so a crashed
  worker never blocks the others (it may leave the slots it was writing half-updated).
  Threads of one process also serialise on a ``threading.Lock`` (``flock`` does not
  exclude them: they share the open file).
* Concurrency slots are counted twice: a node total (kind 2) and the share of each holder
  process (kind 3, by pid). When a worker dies the master calls :meth:`NodeTable.reclaim`
  with its pid, which gives back that worker's slots and queue places. It scans the whole
  table under the lock, pausing every check of the node meanwhile (about 0.15 s per Mi
  slots; hence ``limits_node_slots`` at most 4 Mi).
* Time is the wall clock (``time.time()``), since windows follow the UTC calendar.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import re
import secrets
import stat
import struct
import tempfile
import threading
import time
from typing import Optional, Sequence

from guichet.limits import CountersUnavailable, Decision, Limit
from guichet.limits.algorithms import State, evaluate
from guichet.limits.slots import FULL, QUEUED, TAKEN, Slots

MAGIC = b"GUICHETL"
VERSION = 1
SLOT_SIZE = 64
HEADER_SIZE = 64
MAX_PROBE = 64
EMPTY_DIGEST = bytes(16)
INFINITY = float("inf")
FILE_PREFIX = "guichet-limits-"
_FILE_NAME = re.compile(r"guichet-limits-([0-9]{1,10})-[0-9a-f]+")

KIND_RATE, KIND_SLOTS, KIND_HOLDER = 1, 2, 3

_HEADER = struct.Struct("<8sIIQ16s")
_HEAD = struct.Struct("<16sB3xid")  # digest, kind, pid, expires  (32 bytes)
_RATE = struct.Struct("<dddd")
_SLOTS = struct.Struct("<qq")
_HOLDER = struct.Struct("<16sqq")
_EXPIRES = struct.Struct("<d")


def default_directory() -> str:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def remove_stale_tables(directory: str) -> list[str]:
    """Delete the table files left in ``directory`` by masters that died without deleting
    theirs (``kill -9``): ``guichet-limits-<pid>-<hex>`` files owned by this user whose
    ``<pid>`` is no running process. Returns the paths removed."""
    removed: list[str] = []
    uid = os.getuid()
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = _FILE_NAME.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid <= 0:
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
            if st.st_uid != uid or not stat.S_ISREG(st.st_mode):
                continue
            os.kill(pid, 0)
        except ProcessLookupError:  # its master is gone: nobody maps it any more
            try:
                os.unlink(path)
                removed.append(path)
            except OSError:
                pass
        except (OSError, OverflowError, ValueError):  # alive (maybe another user's), or odd
            continue
    return removed


class NodeTable:
    """One mapping of the node table file (see the module docstring)."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, capacity: int, salt: bytes) -> None:
        self.path = path
        self.capacity = capacity
        self._fd = fd
        self._mm = mm
        self._salt = salt
        self._tlock = threading.Lock()
        self._digests: dict[str, bytes] = {}
        self.pid = os.getpid()
        # this process's counts (table_evictions here; NodeCounters adds its own)
        self.tally: dict[str, int] = {}

    # -- life cycle ----------------------------------------------------------------
    @classmethod
    def create(cls, slots: int = 65536, directory: str | None = None) -> "NodeTable":
        """Create a new table file (owner-only) and map it; the creator unlinks it."""
        if slots < 16:
            raise ValueError("a node table needs at least 16 slots")
        directory = directory or default_directory()
        remove_stale_tables(directory)
        path = os.path.join(directory, f"{FILE_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, HEADER_SIZE + slots * SLOT_SIZE)
            salt = secrets.token_bytes(16)
            os.pwrite(fd, _HEADER.pack(MAGIC, VERSION, SLOT_SIZE, slots, salt), 0)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return cls.open(path, _fd=fd)

    @classmethod
    def open(cls, path: str, _fd: int | None = None) -> "NodeTable":
        fd = os.open(path, os.O_RDWR) if _fd is None else _fd
        try:
            size = os.fstat(fd).st_size
            magic, version, slot_size, capacity, salt = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
            if magic != MAGIC or version != VERSION or slot_size != SLOT_SIZE \
                    or size != HEADER_SIZE + capacity * SLOT_SIZE:
                raise ValueError(f"{path} is not a guichet node table (version {VERSION})")
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mm, capacity, salt)

    def close(self) -> None:
        if self._fd >= 0:
            self._mm.close()
            os.close(self._fd)
            self._fd = -1

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    @property
    def memory(self) -> int:
        return HEADER_SIZE + self.capacity * SLOT_SIZE

    # -- locking and probing ---------------------------------------------------------
    def lock(self) -> None:
        self._tlock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._tlock.release()
            raise

    def unlock(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._tlock.release()

    def digest(self, key: str) -> bytes:
        d = self._digests.get(key)
        if d is None:
            if len(self._digests) >= 8192:
                self._digests.clear()
            d = self._digests[key] = hashlib.blake2b(
                key.encode("utf-8", "surrogatepass"), digest_size=16, key=self._salt).digest()
        return d

    def find(self, digest: bytes, now: float, create: bool, taken: Sequence[int] = ()) -> int:
        """Offset of the slot holding ``digest``; else, with ``create``, of a slot it may
        take (empty or expired; else the live rate counter of the chain expiring first,
        evicted; never one in ``taken``); else -1. Call with the lock held."""
        mm = self._mm
        cap = self.capacity
        home = int.from_bytes(digest[:8], "little") % cap
        free = -1
        victim, victim_expires = -1, INFINITY
        for i in range(MAX_PROBE if MAX_PROBE < cap else cap):
            off = HEADER_SIZE + ((home + i) % cap) * SLOT_SIZE
            current = mm[off:off + 16]
            if current == digest:
                return off
            if off in taken:  # taken by this operation, written when it commits
                continue
            if current == EMPTY_DIGEST:
                if not create:
                    return -1
                return free if free >= 0 else off
            if create and free < 0:
                expires = _EXPIRES.unpack_from(mm, off + 24)[0]
                if expires <= now:
                    free = off
                elif mm[off + 16] == KIND_RATE and expires < victim_expires:
                    victim, victim_expires = off, expires
        if not create:
            return -1
        if free < 0 and victim >= 0:
            self.tally["table_evictions"] = self.tally.get("table_evictions", 0) + 1
            return victim
        return free

    # -- rate counters ----------------------------------------------------------------
    def read_rate(self, off: int, digest: bytes, now: float) -> Optional[State]:
        d, kind, _, expires = _HEAD.unpack_from(self._mm, off)
        if d != digest or kind != KIND_RATE or expires <= now:
            return None
        return State(*_RATE.unpack_from(self._mm, off + 32))

    def write_rate(self, off: int, digest: bytes, state: State, expires: float) -> None:
        _HEAD.pack_into(self._mm, off, digest, KIND_RATE, 0, expires)
        _RATE.pack_into(self._mm, off + 32, *state)

    # -- concurrency slots --------------------------------------------------------------
    def slot_counts(self, off: int, digest: bytes) -> tuple[int, int]:
        d, kind, _, _ = _HEAD.unpack_from(self._mm, off)
        if d != digest or kind != KIND_SLOTS:
            return 0, 0
        return _SLOTS.unpack_from(self._mm, off + 32)

    def set_slot_counts(self, off: int, digest: bytes, active: int, queued: int) -> None:
        active, queued = max(0, active), max(0, queued)
        _HEAD.pack_into(self._mm, off, digest, KIND_SLOTS, 0,
                        INFINITY if active or queued else 0.0)
        _SLOTS.pack_into(self._mm, off + 32, active, queued)

    def holder_counts(self, off: int, digest: bytes) -> tuple[int, int]:
        d, kind, _, _ = _HEAD.unpack_from(self._mm, off)
        if d != digest or kind != KIND_HOLDER:
            return 0, 0
        return _HOLDER.unpack_from(self._mm, off + 32)[1:]

    def set_holder_counts(self, off: int, digest: bytes, parent: bytes, pid: int,
                          active: int, queued: int) -> None:
        active, queued = max(0, active), max(0, queued)
        _HEAD.pack_into(self._mm, off, digest, KIND_HOLDER, pid,
                        INFINITY if active or queued else 0.0)
        _HOLDER.pack_into(self._mm, off + 32, parent, active, queued)

    def reclaim(self, pid: int) -> int:
        """Give back the slots and queue places held by process ``pid`` (dead); returns
        how many were given back."""
        mm = self._mm
        freed = 0
        self.lock()
        try:
            for i in range(self.capacity):
                off = HEADER_SIZE + i * SLOT_SIZE
                if mm[off + 16] != KIND_HOLDER:
                    continue
                digest, _, owner, _ = _HEAD.unpack_from(mm, off)
                parent, active, queued = _HOLDER.unpack_from(mm, off + 32)
                if owner != pid or not (active or queued):
                    continue
                poff = self.find(parent, 0.0, create=False)
                if poff >= 0:
                    total_active, total_queued = self.slot_counts(poff, parent)
                    self.set_slot_counts(poff, parent, total_active - active, total_queued - queued)
                self.set_holder_counts(off, digest, parent, pid, 0, 0)
                freed += active + queued
        finally:
            self.unlock()
        return freed

    def holders(self) -> dict[int, tuple[int, int]]:
        """``{pid: (active, queued)}`` of the processes holding concurrency slots."""
        mm = self._mm
        out: dict[int, tuple[int, int]] = {}
        self.lock()
        try:
            for i in range(self.capacity):
                off = HEADER_SIZE + i * SLOT_SIZE
                if mm[off + 16] != KIND_HOLDER:
                    continue
                pid = _HEAD.unpack_from(mm, off)[2]
                _, active, queued = _HOLDER.unpack_from(mm, off + 32)
                if active or queued:
                    a, q = out.get(pid, (0, 0))
                    out[pid] = (a + active, q + queued)
        finally:
            self.unlock()
        return out

    def live_keys(self, now: float | None = None) -> int:
        """How many slots hold something live (for status and tests)."""
        now = time.time() if now is None else now
        mm = self._mm
        count = 0
        for i in range(self.capacity):
            off = HEADER_SIZE + i * SLOT_SIZE
            if mm[off + 16] and _EXPIRES.unpack_from(mm, off + 24)[0] > now:
                count += 1
        return count


class NodeSlotBook:
    """The :class:`~guichet.limits.slots.SlotBook` of the node table, for this process."""

    def __init__(self, table: NodeTable, tally: dict[str, int]) -> None:
        self.table = table
        self.tally = tally

    def _offsets(self, key: str, now: float) -> tuple[int, bytes, int, bytes]:
        table = self.table
        pid = os.getpid()
        total = table.digest("c\0" + key)
        holder = table.digest(f"h\0{pid}\0{key}")
        toff = table.find(total, now, True)
        hoff = table.find(holder, now, True, (toff,)) if toff >= 0 else -1
        if hoff < 0:
            self.tally["table_full"] = self.tally.get("table_full", 0) + 1
            raise CountersUnavailable("the node counter table is full (raise limits_node_slots)")
        return toff, total, hoff, holder

    def _change(self, key: str, limit: int, queue: int, op: str) -> int:
        table = self.table
        table.lock()
        try:
            toff, total, hoff, holder = self._offsets(key, time.time())
            active, queued = table.slot_counts(toff, total)
            mine_active, mine_queued = table.holder_counts(hoff, holder)
            if op == "take":
                if active < limit:
                    result, active, mine_active = TAKEN, active + 1, mine_active + 1
                elif queued < queue:
                    result, queued, mine_queued = QUEUED, queued + 1, mine_queued + 1
                else:
                    return FULL
            elif op == "take_queued":
                if active >= limit or mine_queued <= 0:
                    return FULL
                result = TAKEN
                active, mine_active = active + 1, mine_active + 1
                queued, mine_queued = queued - 1, mine_queued - 1
            elif op == "leave_queue":
                if mine_queued <= 0:
                    return FULL
                result, queued, mine_queued = TAKEN, queued - 1, mine_queued - 1
            else:  # release
                if mine_active <= 0:
                    return FULL
                result, active, mine_active = TAKEN, active - 1, mine_active - 1
            table.set_slot_counts(toff, total, active, queued)
            table.set_holder_counts(hoff, holder, total, os.getpid(), mine_active, mine_queued)
            return result
        finally:
            table.unlock()

    def take(self, key: str, limit: int, queue: int) -> int:
        return self._change(key, limit, queue, "take")

    def take_queued(self, key: str, limit: int) -> bool:
        return self._change(key, limit, 0, "take_queued") == TAKEN

    def leave_queue(self, key: str) -> None:
        self._change(key, 0, 0, "leave_queue")

    def release(self, key: str) -> None:
        self._change(key, 0, 0, "release")

    def counts(self, key: str) -> tuple[int, int]:
        """Node-wide ``(active, queued)`` of ``key``."""
        table = self.table
        table.lock()
        try:
            total = table.digest("c\0" + key)
            off = table.find(total, 0.0, False)
            return table.slot_counts(off, total) if off >= 0 else (0, 0)
        finally:
            table.unlock()


class NodeCounters:
    """The ``local`` policy of a worker: exact across every worker of the node."""

    kind = "node"

    def __init__(self, table: NodeTable) -> None:
        self.table = table
        self.tally = table.tally  # one dict: the table counts evictions in it
        self.book = NodeSlotBook(table, self.tally)
        self._slots = Slots(self.book, self.tally)

    def hit(self, limits: Sequence[Limit], cost: int = 1) -> Decision:
        table = self.table
        digests = [table.digest("r\0" + limit.key) for limit in limits]
        table.lock()
        try:
            now = time.time()
            offsets: list[int] = []
            for i, digest in enumerate(digests):
                if digest in digests[:i]:  # the same key twice: one slot (keys should differ)
                    offsets.append(offsets[digests.index(digest)])
                    continue
                off = table.find(digest, now, True, offsets)
                if off < 0:
                    self.tally["table_full"] = self.tally.get("table_full", 0) + 1
                    raise CountersUnavailable(
                        "the node counter table is full (raise limits_node_slots)")
                offsets.append(off)
            states = [table.read_rate(off, digest, now) for off, digest in zip(offsets, digests)]
            decision, new = evaluate(limits, states, now, cost)
            if new is not None:
                for off, digest, (state, expires) in zip(offsets, digests, new):
                    table.write_rate(off, digest, state, expires)
        finally:
            table.unlock()
        return decision

    def acquire(self, key: str, limit: int, queue: int, timeout: float):
        return self._slots.acquire(key, limit, queue, timeout)
