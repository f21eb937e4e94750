"""The DNS resolver balancers use: a shared cache, Kong's record-type order, background refresh.

Rules (Kong 3.x ``kong/resty/dns/client.lua`` and ``kong.conf`` ``dns_*`` settings):

- IP literals (IPv6 with or without brackets) and hosts-file names never reach DNS; they
  resolve to themselves / their hosts entry (the first of A, AAAA in ``order``) forever.
- Other names are tried type by type in ``order`` (default ``LAST, SRV, A, AAAA, CNAME``;
  ``LAST`` is the type that last succeeded for that name), and within a type over the
  ``search`` list of ``resolv.conf`` (bare name first when it has at least ``ndots`` dots).
  A type that is not found falls through to the next one; a nameserver that does not
  answer at all stops the walk (Kong: never answer A when the SRV question went unheard).
- SRV: only the records of the best (lowest) priority are used; each target is resolved to
  addresses (types of ``order`` without SRV; additional-section records are used first);
  the record's port replaces the caller's unless it is 0; weight 0 counts as 1 (Kong's
  ``SRV_0_WEIGHT``). An SRV set whose every record points at the name itself is ignored
  (Kubernetes' self-pointing records). CNAME: the target is resolved with the full order.
- Cache by (name, type), shared by every user of one Resolver. A record set is kept for
  ``max(ttl, min_ttl)`` (``min_ttl`` also replaces TTL 0: nothing is ever resolved on the
  request path). NXDOMAIN or an empty answer is kept ``not_found_ttl`` and replaces the
  old records: a definitive "gone" is followed. A failed refresh (timeout, unreachable
  server, SERVFAIL, REFUSED) keeps serving the previous records, re-asking every
  ``error_ttl``, until ``stale_ttl`` seconds past their expiry; then they are dropped.
- ``watch`` runs one background task per watched name whatever the number of watchers
  (reference counted; the last ``Watch.cancel`` stops it). Each refresh happens when the
  earliest record of the answer expires; watchers are called only when the address set
  changed, and a new watcher of an already watched name is called at once. Concurrent
  questions for the same (name, type) share one query.
- Address expiries are ``time.monotonic()`` seconds; ``math.inf`` for literals and hosts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import NamedTuple

from guichet.balancing import dns_query
from guichet.balancing.dns_files import (
    hosts_address,
    is_ip,
    parse_hosts,
    parse_resolv_conf,
    search_names,
)

log = logging.getLogger("guichet.dns")

ORDER_TYPES = ("LAST", "SRV", "A", "AAAA", "CNAME")
MAX_CHAIN = 8  # CNAME / SRV indirections followed before giving up
EARLY = 0.05  # an entry this close to expiry is refreshed rather than served
SLEEP_SLACK = 0.02
MAX_SLEEP = 3600.0
PRUNE_INTERVAL = 10.0
SRV_0_WEIGHT = 1

OK, NOT_FOUND, ERROR = "ok", "not_found", "error"


class Address(NamedTuple):
    ip: str
    port: int
    weight: int | None  # from an SRV record; None: the target's own weight applies
    expires: float  # monotonic time at which the record's TTL runs out
    name: str | None = None  # the SRV record's target name, when from SRV


# A resolved record before a caller's port is applied: (ip, port or None, weight, srv name).
Record = tuple[str, "int | None", "int | None", "str | None"]


class _Entry:
    __slots__ = ("answer", "expires", "stale_until")

    def __init__(self, answer: dns_query.Answer, expires: float, stale_until: float) -> None:
        self.answer = answer
        self.expires = expires
        self.stale_until = stale_until


class _Resolution:
    __slots__ = ("status", "records", "expires", "error")

    def __init__(self, status: str, records: tuple, expires: float, error: str = "") -> None:
        self.status = status
        self.records: tuple[Record, ...] = records
        self.expires = expires
        self.error = error


class Watch:
    """One watcher of a name; ``cancel()`` stops its callbacks (idempotent)."""

    __slots__ = ("_resolver", "name", "port", "_callback", "_ready")

    def __init__(self, resolver: Resolver, name: str, port: int, callback: Callable) -> None:
        self._resolver: Resolver | None = resolver
        self.name = name
        self.port = port
        self._callback: Callable[[list[Address]], None] | None = callback
        self._ready = asyncio.Event()

    async def ready(self) -> None:
        """Wait until the first resolution (success or failure) was delivered."""
        await self._ready.wait()

    def _deliver(self, records: tuple[Record, ...], expires: float) -> None:
        callback = self._callback
        self._ready.set()
        if callback is None:
            return
        port = self.port
        addresses = [Address(ip, p or port, w, expires, n) for ip, p, w, n in records]
        try:
            callback(addresses)
        except Exception:  # a watcher's bug must not stop the refresh loop
            log.exception("DNS watch callback for %s failed", self.name)

    def cancel(self) -> None:
        resolver, self._resolver, self._callback = self._resolver, None, None
        if resolver is not None:
            resolver._unwatch(self)


class _NameWatch:
    __slots__ = ("name", "watches", "task", "published", "expires", "status")

    def __init__(self, name: str) -> None:
        self.name = name
        self.watches: list[Watch] = []
        self.task: asyncio.Task | None = None
        self.published: tuple[Record, ...] | None = None
        self.expires = 0.0
        self.status = OK


class Resolver:
    def __init__(
        self,
        nameservers: list[tuple[str, int]] | None = None,
        hostsfile: str | None = "/etc/hosts",
        order: tuple[str, ...] = ("LAST", "SRV", "A", "AAAA", "CNAME"),
        min_ttl: float = 1.0,
        stale_ttl: float = 3600.0,
        error_ttl: float = 1.0,
        timeout: float = 2.0,
        *,
        not_found_ttl: float = 30.0,
        resolv_conf: str | None = "/etc/resolv.conf",
        attempts: int | None = None,
    ) -> None:
        conf = parse_resolv_conf(resolv_conf) if resolv_conf else None
        if nameservers:
            self.nameservers = [(ip.strip("[]"), int(port)) for ip, port in nameservers]
        elif conf is not None and conf.nameservers:
            self.nameservers = list(conf.nameservers)
        else:
            self.nameservers = [("127.0.0.1", 53)]
        self.search = conf.search if conf is not None else ()
        self.ndots = conf.ndots if conf is not None else 1
        self.attempts = attempts or (conf.attempts if conf and conf.attempts else 2)
        self.order = tuple(t.upper() for t in order)
        bad = [t for t in self.order if t not in ORDER_TYPES]
        if bad or not self.order:
            raise ValueError(f"invalid dns_order {order!r}: allowed types are {ORDER_TYPES}")
        self.hosts = parse_hosts(hostsfile) if hostsfile else {}
        order = self.order
        self._prefer_v6 = "AAAA" in order and (
            "A" not in order or order.index("AAAA") < order.index("A")
        )
        self.min_ttl = min_ttl
        self.stale_ttl = stale_ttl
        self.error_ttl = error_ttl
        self.not_found_ttl = not_found_ttl
        self.timeout = timeout
        self._cache: dict[tuple[str, str], _Entry] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}
        self._last_type: dict[str, str] = {}
        self._watches: dict[str, _NameWatch] = {}
        self._last_prune = time.monotonic()
        self._closed = False

    # -- public API ------------------------------------------------------------------

    async def resolve(self, name: str, port: int) -> list[Address]:
        """Addresses of ``name`` now (cache first); ``[]`` when it does not resolve."""
        result = await self._lookup(name)
        if result.status != OK:
            log.warning("DNS resolution of %s failed: %s", name, result.error)
        self._maybe_prune()
        return [Address(ip, p or port, w, result.expires, n) for ip, p, w, n in result.records]

    def watch(self, name: str, port: int, callback: Callable[[list[Address]], None]) -> Watch:
        """Call ``callback(addresses)`` now if known, then on every change, until cancelled."""
        if self._closed:
            raise RuntimeError("Resolver is closed")
        key = _normalise(name)
        watch = Watch(self, key, port, callback)
        static = self._static(key.rstrip("."))
        if static is not None:
            watch._deliver(static.records, static.expires)
            return watch
        named = self._watches.get(key)
        if named is None:
            named = self._watches[key] = _NameWatch(key)
            named.task = asyncio.get_running_loop().create_task(self._refresh_loop(named))
        named.watches.append(watch)
        if named.published is not None:
            watch._deliver(named.published, named.expires)
        return watch

    async def close(self) -> None:
        self._closed = True
        tasks = [n.task for n in self._watches.values() if n.task is not None]
        tasks += list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for named in self._watches.values():
            for watch in named.watches:
                watch._resolver = watch._callback = None
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()
        self._inflight.clear()
        self._cache.clear()
        self._last_type.clear()

    # -- watches ---------------------------------------------------------------------

    def _unwatch(self, watch: Watch) -> None:
        named = self._watches.get(watch.name)
        if named is None or watch not in named.watches:
            return
        named.watches.remove(watch)
        if not named.watches:
            del self._watches[watch.name]
            if named.task is not None:
                named.task.cancel()
            self._maybe_prune()

    async def _refresh_loop(self, named: _NameWatch) -> None:
        while True:
            try:
                result = await self._lookup(named.name)
            except Exception as exc:  # never let one name's bug stop its refreshes
                log.exception("DNS refresh of %s failed", named.name)
                result = _Resolution(ERROR, (), time.monotonic() + self.error_ttl, str(exc))
            if result.status != named.status:
                if result.status == OK:
                    log.info("DNS name %s resolves again", named.name)
                else:
                    log.warning("DNS resolution of %s failed: %s", named.name, result.error)
                named.status = result.status
            named.expires = result.expires
            if result.records != named.published:
                named.published = result.records
                for watch in list(named.watches):
                    watch._deliver(result.records, result.expires)
            self._maybe_prune()
            delay = result.expires - time.monotonic() + SLEEP_SLACK
            await asyncio.sleep(min(max(delay, EARLY), MAX_SLEEP))

    # -- resolution ------------------------------------------------------------------

    def _static(self, name: str) -> _Resolution | None:
        ip = name if is_ip(name) else hosts_address(self.hosts, name, self._prefer_v6)
        return None if ip is None else _Resolution(OK, ((ip, None, None, None),), math.inf)

    def _types(self, name: str, address_only: bool) -> list[str]:
        types: list[str] = []
        for rdtype in self.order:
            if rdtype == "LAST":
                rdtype = self._last_type.get(name, "")
            if rdtype and rdtype not in types and not (address_only and rdtype == "SRV"):
                types.append(rdtype)
        return types

    async def _lookup(self, name: str, address_only: bool = False, depth: int = 0) -> _Resolution:
        name = _normalise(name)
        absolute = name.endswith(".")
        name = name.rstrip(".")
        static = self._static(name)
        if static is not None:
            return static
        now = time.monotonic()
        if depth > MAX_CHAIN or not name:
            return _Resolution(ERROR, (), now + self.error_ttl, f"cannot resolve {name!r}")
        status, error, expires = NOT_FOUND, "", math.inf
        for rdtype in self._types(name, address_only):
            for candidate in search_names(name, absolute, self.search, self.ndots):
                entry = await self._ask(candidate, rdtype)
                answer = entry.answer
                expires = min(expires, entry.expires)
                if answer.status == dns_query.OK:
                    result = await self._expand(candidate, answer, entry.expires, depth)
                    if result.status == OK:
                        if not address_only:
                            self._last_type[name] = rdtype
                        return result
                    expires = min(expires, result.expires)
                    error = result.error
                    if result.status == ERROR:
                        status = ERROR
                    continue
                error = f"{candidate}:{rdtype}: {answer.error}"
                if answer.status == dns_query.NO_ANSWER:
                    return _Resolution(ERROR, (), expires, error)
                if answer.status == dns_query.SERVER_ERROR:
                    status = ERROR
        self._last_type.pop(name, None)
        if expires == math.inf:
            expires = now + self.error_ttl
        return _Resolution(status, (), expires, error or f"{name}: no usable record type")

    async def _expand(
        self, name: str, answer: dns_query.Answer, expires: float, depth: int
    ) -> _Resolution:
        if answer.rdtype in ("A", "AAAA"):
            return _Resolution(OK, tuple((ip, None, None, None) for ip in answer.records), expires)
        if answer.rdtype == "CNAME":
            result = await self._lookup(answer.records[0] + ".", depth=depth + 1)
            result.expires = min(result.expires, expires)
            return result
        records = answer.records  # SRV, sorted by priority
        if all(target == name for _, _, _, target in records):
            return _Resolution(NOT_FOUND, (), expires, f"{name}: SRV records point at itself")
        best = records[0][0]
        chosen = [r for r in records if r[0] == best and r[3] not in ("", ".")]
        results = await asyncio.gather(
            *(self._lookup(r[3] + ".", address_only=True, depth=depth + 1) for r in chosen)
        )
        out: list[Record] = []
        failed: _Resolution | None = None
        for (_prio, weight, port, target), result in zip(chosen, results):
            expires = min(expires, result.expires)
            if result.status != OK:
                failed = result
                continue
            for ip, _p, _w, _n in result.records:
                out.append((ip, port or None, weight or SRV_0_WEIGHT, target))
        if out:
            return _Resolution(OK, tuple(out), expires)
        if failed is not None:
            return _Resolution(failed.status, (), expires, failed.error)
        return _Resolution(NOT_FOUND, (), expires, f"{name}: no usable SRV target")

    async def _ask(self, name: str, rdtype: str) -> _Entry:
        key = (name, rdtype)
        entry = self._cache.get(key)
        if entry is not None and entry.expires > time.monotonic() + EARLY:
            return entry
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key, entry))
            self._inflight[key] = task
            task.add_done_callback(lambda done, key=key: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: tuple[str, str], task: asyncio.Future) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _fetch(self, key: tuple[str, str], old: _Entry | None) -> _Entry:
        name, rdtype = key
        answer = await dns_query.query(
            name, rdtype, self.nameservers, self.timeout, self.attempts
        )
        now = time.monotonic()
        if answer.status == dns_query.OK:
            ttl = max(self.min_ttl, answer.ttl)
            entry = _Entry(answer, now + ttl, now + ttl + self.stale_ttl)
            for glue_name, kind, glue_ttl, ips in answer.glue:
                known = self._cache.get((glue_name, kind))
                if known is None or known.expires <= now + EARLY:
                    glue_ttl = max(self.min_ttl, glue_ttl)
                    glued = dns_query.Answer(dns_query.OK, kind, ips, glue_ttl)
                    self._cache[(glue_name, kind)] = _Entry(
                        glued, now + glue_ttl, now + glue_ttl + self.stale_ttl
                    )
        elif answer.status == dns_query.NOT_FOUND:
            entry = _Entry(answer, now + self.not_found_ttl, 0.0)
        elif old is not None and old.answer.status == dns_query.OK and now < old.stale_until:
            log.debug("DNS %s %s: %s; serving stale records", name, rdtype, answer.error)
            entry = _Entry(old.answer, now + self.error_ttl, old.stale_until)
        else:
            entry = _Entry(answer, now + self.error_ttl, 0.0)
        if not self._closed:
            self._cache[key] = entry
        return entry

    def _maybe_prune(self) -> None:
        """Drop cache entries past use (expired and past stale) so memory stays flat."""
        now = time.monotonic()
        if now - self._last_prune < PRUNE_INTERVAL:
            return
        self._last_prune = now
        dead = [k for k, e in self._cache.items() if now > max(e.expires, e.stale_until)]
        for key in dead:
            del self._cache[key]
        watched = {name.rstrip(".") for name in self._watches}
        for name in [n for n in self._last_type if n not in watched]:
            del self._last_type[name]


def _normalise(name: str) -> str:
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name
