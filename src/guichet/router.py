"""Route matching with Kong 3.x ``traditional_compatible`` priorities, precompiled once.

A route matches when every field it sets matches (values of one field are OR-ed):

* ``methods``: exact, case-sensitive. ``hosts``: the Host header, lower-cased, without its
  port and one trailing dot; ``example.com`` (any port), ``example.com:8080`` (that port
  only; a Host without a port counts as 80 for http/ws and 443 for https/wss),
  ``*.example.com`` (suffix ``.example.com``), ``example.*`` (prefix ``example.``), IPv6
  literals with or without brackets. ``headers``: every named header present with one of
  the values, compared case-insensitively; ``~*re`` is a case-insensitive regex search;
  a joined value ``a, b`` also matches per element. ``snis``: checked on https/wss
  only, as Kong does (exact or one leading/trailing ``*``). ``paths``: plain string
  prefixes of the normalised path, or ``~regex`` anchored at the start of the path.
* ``protocols``: ws/wss count as http/https. A route without the request's scheme does not
  match, except an https-only route hit over http: it matches with ``redirect_https`` set
  (the server answers ``https_redirect_status_code``, 426 by default).

A route with several paths is split, as Kong does, into one entry per prefix length and
one entry for all its regexes. Entries are tried in this order (first match wins):

1. more fields set (methods, hosts, headers, snis, paths) first;
2. hosts all plain (no wildcard) before the others (a route without hosts is not "plain");
3. more header names first;
4. a regex entry before a prefix entry;
5. regex entries: higher ``regex_priority`` first; prefix entries: longer prefix first;
6. Kong leaves the rest undefined; we continue with Kong's traditional router field rank
   (hosts > headers > paths > methods > snis, compared as a bit set), then a route with a
   port-specific host first, then ``Route.order`` (file order), then path group order.

Speed: hosts are split into exact-name buckets and one bucket for wildcard/host-less
routes; each bucket indexes prefix entries by the first characters of their prefix. A
request only scans its candidate lists, stopping at the best rank found so far. Results
are cached on ``(method, host, path, scheme, sni)`` unless a header condition was
evaluated while deciding; the cache is cleared when it reaches ``cache_size``. Cached
``RouteMatch`` objects are shared: treat them (and ``uri_captures``) as read-only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

from guichet.config.model import ConfigIssue, Route
from guichet.config.pcre import compile_pcre
from guichet.errors import BadRequest, ConfigError
from guichet.uri import normalize_path

__all__ = ["RouteMatch", "RouteTable", "upstream_path"]

_HTTPS_SCHEMES = frozenset(("https", "wss"))
_MISS = object()
# Kong's traditional router ranks fields as bits; used here only to break ties.
_RANK_HOSTS, _RANK_HEADERS, _RANK_PATHS, _RANK_METHODS, _RANK_SNIS = 64, 32, 16, 8, 4
_INDEX_MIN = 8  # a bucket with fewer entries is scanned whole
_INDEX_MAX_KEY = 8


class RouteMatch:
    """The route a request matched and what the match produced."""

    __slots__ = ("route", "uri_captures", "matched_path", "redirect_https")

    def __init__(self, route: Route, uri_captures: dict[str, str], matched_path: str | None,
                 redirect_https: bool) -> None:
        self.route = route
        self.uri_captures = uri_captures  # "0" (whole match), "1".., and names; {} if none
        self.matched_path = matched_path  # the prefix or the regex match text; None: no path
        self.redirect_https = redirect_https

    def __repr__(self) -> str:
        return (f"RouteMatch(route={self.route.name or self.route.id!r}, "
                f"matched_path={self.matched_path!r}, uri_captures={self.uri_captures!r}, "
                f"redirect_https={self.redirect_https})")


class _Entry:
    """One route with one group of its paths, compiled."""

    __slots__ = ("route", "rank", "methods", "has_hosts", "names", "name_ports", "wild",
                 "snis", "sni_wild", "has_snis", "prefixes", "regexes", "headers",
                 "http_ok", "https_ok")


class _Bucket:
    """Entries in rank order: those findable by ``path[1:1+key_len]``, and the rest."""

    __slots__ = ("key_len", "by_key", "rest")

    def __init__(self, entries: list[_Entry]) -> None:
        self.key_len = key_len = _choose_key_len(entries)
        by_key: dict[str, list[_Entry]] = {}
        rest: list[_Entry] = []
        for e in entries:
            if key_len and e.prefixes and all(len(p) > key_len for p in e.prefixes):
                for key in dict.fromkeys(p[1:1 + key_len] for p in e.prefixes):
                    by_key.setdefault(key, []).append(e)
            else:
                rest.append(e)
        self.by_key = {k: tuple(v) for k, v in by_key.items()}
        self.rest = tuple(rest)


class RouteTable:
    """All routes of a snapshot, compiled for ``match``."""

    __slots__ = ("_by_host", "_any", "_cache", "_cache_size")

    def __init__(self, routes: Iterable[Route], *, cache_size: int = 4096) -> None:
        entries = _compile(routes)
        by_host: dict[str, list[_Entry]] = {}
        anywhere: list[_Entry] = []
        for e in entries:
            if e.has_hosts and not e.wild:
                for name in dict.fromkeys([*e.names, *e.name_ports]):
                    by_host.setdefault(name, []).append(e)
            else:
                anywhere.append(e)
        self._by_host = {name: _Bucket(group) for name, group in by_host.items()}
        self._any = _Bucket(anywhere)
        self._cache: dict[tuple, RouteMatch | None] = {}
        self._cache_size = max(0, cache_size)

    @property
    def cache_entries(self) -> int:
        """How many decisions the cache holds now (never more than ``cache_size``)."""
        return len(self._cache)

    def match(self, method: str, host: str | None, path: str, headers: Mapping[str, str],
              scheme: str, sni: str | None = None) -> RouteMatch | None:
        """The best route for a request, or None (Kong then answers 404)."""
        key = (method, host, path, scheme, sni)
        hit = self._cache.get(key, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        https = scheme in _HTTPS_SCHEMES
        name, port = _request_host(host, 443 if https else 80) if host else ("", None)
        if sni:
            sni = _strip_dot(sni.lower())
        found = None
        limit = 1 << 62
        header_seen = False
        for bucket in (self._by_host.get(name), self._any):
            if bucket is None:
                continue
            for entries in (bucket.by_key.get(path[1:1 + bucket.key_len], ()) if bucket.key_len
                            else (), bucket.rest):
                got, seen = _scan(entries, limit, method, name, port, path, headers, https, sni)
                header_seen = header_seen or seen
                if got is not None:
                    found, limit = got, got[0].rank
        result = None
        if found is not None:
            entry, matched, m = found
            caps = _captures(m) if m is not None else {}
            result = RouteMatch(entry.route, caps, matched, not https and not entry.http_ok)
        if not header_seen and self._cache_size:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = result
        return result


def upstream_path(match: RouteMatch, service_path: str | None, request_path: str) -> str:
    """The path sent upstream: Kong's ``strip_path`` x ``path_handling`` table (v0, v1)."""
    route = match.route
    base = service_path or "/"
    strip = route.strip_path
    prefix = match.matched_path if strip and match.matched_path is not None else "/"
    postfix = _sanitize_postfix(request_path[len(prefix):])
    if route.path_handling == "v1":
        if not strip:
            return base + request_path[1:]
        if base[-1:] == "/" and postfix[:1] == "/":
            return base[:-1] + postfix
        return base + postfix
    if base[-1:] == "/":
        if not strip:
            return base + request_path[1:]
        if postfix == "":
            if base == "/" or request_path[-1:] == "/":
                return base
            return base[:-1]
        if postfix[:1] == "/":
            return base[:-1] + postfix
        return base + postfix
    if not strip:
        return base if request_path == "/" else base + request_path
    if postfix == "":
        return base + "/" if len(request_path) > 1 and request_path[-1:] == "/" else base
    if postfix[:1] == "/":
        return base + postfix
    return base + "/" + postfix


def _sanitize_postfix(postfix: str) -> str:
    if postfix in (".", ".."):
        return ""
    if postfix[:2] == "./":
        return postfix[2:]
    if postfix[:3] == "../":
        return postfix[3:]
    return postfix


def _scan(entries: tuple[_Entry, ...], limit: int, method: str, name: str, port: int | None,
          path: str, headers: Mapping[str, str], https: bool, sni: str | None):
    """First entry of ``entries`` (ranked below ``limit``) that matches; and whether a
    header condition was evaluated on the way."""
    seen = False
    for e in entries:
        if e.rank >= limit:
            break
        if e.methods is not None and method not in e.methods:
            continue
        if e.has_hosts and not _host_ok(e, name, port):
            continue
        if https:
            if not e.https_ok or (e.has_snis and not _sni_ok(e, sni)):
                continue
        elif not e.http_ok and not e.https_ok:
            continue
        m = None
        matched = None
        if e.prefixes:
            for p in e.prefixes:
                if path.startswith(p):
                    matched = p
                    break
            else:
                continue
        elif e.regexes:
            for rx in e.regexes:
                m = rx.match(path)
                if m is not None:
                    matched = m.group(0)
                    break
            else:
                continue
        if e.headers:
            seen = True
            if not _headers_ok(e.headers, headers):
                continue
        return (e, matched, m), seen
    return None, seen


def _host_ok(e: _Entry, name: str, port: int | None) -> bool:
    if name in e.names:
        return True
    ports = e.name_ports.get(name)
    if ports is not None and port in ports:
        return True
    for suffix, text, wport in e.wild:
        if (wport is None or wport == port) and (
                name.endswith(text) if suffix else name.startswith(text)):
            return True
    return False


def _sni_ok(e: _Entry, sni: str | None) -> bool:
    if not sni:
        return False
    if sni in e.snis:
        return True
    for suffix, text in e.sni_wild:
        if sni.endswith(text) if suffix else sni.startswith(text):
            return True
    return False


def _headers_ok(conditions: tuple, headers: Mapping[str, str]) -> bool:
    for hname, exact, regexes in conditions:
        value = headers.get(hname)
        if value is None or not (_value_ok(value, exact, regexes) or (
                "," in value and any(_value_ok(part.strip(), exact, regexes)
                                     for part in value.split(",")))):
            return False
    return True


def _value_ok(value: str, exact: frozenset[str], regexes: tuple[re.Pattern[str], ...]) -> bool:
    if value.lower() in exact:
        return True
    return any(rx.search(value) is not None for rx in regexes)


def _captures(m: re.Match[str]) -> dict[str, str]:
    if m.re.groups == 0:
        return {}
    caps = {"0": m.group(0)}
    for i, value in enumerate(m.groups(), 1):
        if value is not None:
            caps[str(i)] = value
    for gname, value in m.groupdict().items():
        if value is not None:
            caps[gname] = value
    return caps


def _request_host(host: str, default_port: int) -> tuple[str, int | None]:
    host = host.lower()
    if host[:1] == "[":
        end = host.find("]")
        rest = host[end + 1:] if end > 0 else None
        if rest == "":
            return _ipv6(host[1:end]), default_port
        if rest and rest[0] == ":" and rest[1:].isdigit() and rest.isascii():
            return _ipv6(host[1:end]), int(rest[1:])
        return host, None
    colon = host.find(":")
    if colon == -1:
        return _strip_dot(host), default_port
    if host.count(":") > 1:
        return _ipv6(host), default_port
    digits = host[colon + 1:]
    if digits.isdigit() and digits.isascii():
        return _strip_dot(host[:colon]), int(digits)
    return host, None


def _route_host(host: str) -> tuple[str, int | None]:
    """A route's host as (name, port or None); a non-numeric port stays part of the name."""
    host = host.lower()
    if host[:1] == "[" and "]" in host:
        end = host.index("]")
        rest = host[end + 1:]
        port = int(rest[1:]) if rest[:1] == ":" and rest[1:].isdigit() else None
        return _ipv6(host[1:end]), port
    if host.count(":") > 1:
        return _ipv6(host), None
    name, sep, digits = host.partition(":")
    if sep and not digits.isdigit():
        return host, None
    return _strip_dot(name), int(digits) if sep else None


def _ipv6(text: str) -> str:
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        return text


def _strip_dot(name: str) -> str:
    return name[:-1] if len(name) > 1 and name[-1] == "." else name


def _choose_key_len(entries: list[_Entry]) -> int:
    """The prefix key length that leaves the fewest entries to scan at worst (0: no index)."""
    if len(entries) < _INDEX_MIN:
        return 0
    best, best_cost = 0, len(entries)
    for key_len in range(1, _INDEX_MAX_KEY + 1):
        sizes: dict[str, int] = {}
        rest = 0
        for e in entries:
            if e.prefixes and all(len(p) > key_len for p in e.prefixes):
                for key in {p[1:1 + key_len] for p in e.prefixes}:
                    sizes[key] = sizes.get(key, 0) + 1
            else:
                rest += 1
        cost = rest + max(sizes.values(), default=0)
        if cost < best_cost:
            best, best_cost = key_len, cost
    return best


def _compile(routes: Iterable[Route]) -> list[_Entry]:
    """Every route split into its path groups, compiled, ranked; ConfigError on bad input."""
    issues: list[ConfigIssue] = []
    keyed: list[tuple[tuple, _Entry]] = []
    for route in routes:
        where = f"routes[{route.name or route.id}]"
        protocols = set(route.protocols) or {"http", "https"}
        http_ok = bool(protocols & {"http", "ws"})
        https_ok = bool(protocols & {"https", "wss"})
        if not (http_ok or https_ok):
            continue  # grpc / stream routes never match an HTTP request
        names: set[str] = set()
        name_ports: dict[str, set[int]] = {}
        wild: list[tuple[bool, str, int | None]] = []
        for h in route.hosts:
            hname, port = _route_host(h)
            if hname.startswith("*"):
                wild.append((True, hname[1:], port))
            elif hname.endswith("*"):
                wild.append((False, hname[:-1], port))
            elif port is None:
                names.add(hname)
            else:
                name_ports.setdefault(hname, set()).add(port)
        snis: set[str] = set()
        sni_wild: list[tuple[bool, str]] = []
        for s in route.snis:
            s = s.lower()
            if s.startswith("*"):
                sni_wild.append((True, _strip_dot(s[1:])))
            elif s.endswith("*"):
                sni_wild.append((False, s[:-1]))
            else:
                snis.add(_strip_dot(s))
        headers = []
        for i, (hname, values) in enumerate(route.headers):
            exact = frozenset(v.lower() for v in values if not v.startswith("~*"))
            regexes = []
            for v in values:
                if v.startswith("~*"):
                    try:
                        regexes.append(compile_pcre(v[2:], re.IGNORECASE))
                    except re.error as exc:
                        issues.append(_issue(f"{where}.headers.{hname}", f"invalid regex: {exc}"))
            headers.append((hname.lower(), exact, tuple(regexes)))
        groups: dict[object, list] = {}  # "re" or a prefix length -> paths, in first-seen order
        for i, raw in enumerate(route.paths):
            if raw.startswith("~"):
                try:
                    rx = compile_pcre(raw[1:])
                except re.error as exc:
                    issues.append(_issue(f"{where}.paths[{i}]", f"invalid regex: {exc}"))
                    continue
                groups.setdefault("re", []).append(rx)
            else:
                try:
                    prefix = normalize_path(raw)
                except BadRequest:
                    issues.append(_issue(f"{where}.paths[{i}]", f"invalid path: '{raw}'"))
                    continue
                groups.setdefault(len(prefix), []).append(prefix)
        fields = (route.methods, route.hosts, route.headers, route.snis, route.paths)
        weight = sum(1 for f in fields if f)
        plain_hosts = bool(route.hosts) and not wild
        field_rank = sum(r for f, r in zip(fields, (_RANK_METHODS, _RANK_HOSTS, _RANK_HEADERS,
                                                     _RANK_SNIS, _RANK_PATHS)) if f)
        port_host = bool(name_ports) or any(w[2] is not None for w in wild)
        for gi, (group, paths) in enumerate(groups.items() if route.paths else [(0, [])]):
            e = _Entry()
            e.route, e.methods = route, frozenset(route.methods) or None
            e.has_hosts, e.names, e.wild = bool(route.hosts), frozenset(names), tuple(wild)
            e.name_ports = {n: frozenset(p) for n, p in name_ports.items()}
            e.snis, e.sni_wild, e.has_snis = frozenset(snis), tuple(sni_wild), bool(route.snis)
            e.headers, e.http_ok, e.https_ok = tuple(headers), http_ok, https_ok
            is_regex = group == "re"
            e.regexes = tuple(paths) if is_regex else ()
            e.prefixes = () if is_regex else tuple(dict.fromkeys(paths))
            key = (-weight, -plain_hosts, -len(headers), -is_regex,
                   -route.regex_priority if is_regex else 0,
                   0 if is_regex else -int(group),  # type: ignore[call-overload]
                   -field_rank, -port_host, route.order, gi)
            keyed.append((key, e))
    if issues:
        raise ConfigError(issues)
    keyed.sort(key=lambda pair: pair[0])
    for rank, (_, e) in enumerate(keyed):
        e.rank = rank
    return [e for _, e in keyed]


def _issue(path: str, message: str) -> ConfigIssue:
    return ConfigIssue(file="<routes>", line=None, column=None, path=path, message=message)
