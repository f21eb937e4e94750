"""Route matching with Kong 3.x ``traditional_compatible`` priorities, precompiled once.

A route matches when every field it sets matches (values of one field are OR-ed):

* ``methods``: exact, case-sensitive. ``hosts``: the Host header, lower-cased, without its
  port and one trailing dot; ``example.com`` (any port), ``example.com:8080`` (that port
  only; a Host without a port counts as 80 for http/ws and 443 for https/wss),
  ``*.example.com`` (suffix ``.example.com``), ``example.*`` (prefix ``example.``), IPv6
  literals with or without brackets. ``headers``: every named header present with one of
  the values, compared case-insensitively; ``~*re`` is a case-insensitive regex search;
  a joined value ``a, b`` also matches per element. ``snis``: checked on https/wss only,
  as Kong does (exact, or one leading/trailing ``*``). ``paths``: plain string prefixes of
  the normalised path, or ``~regex`` anchored at the start of the path.
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

Speed: routes whose hosts are all plain sit in one bucket per host name, the others in a
shared bucket; a bucket indexes entries by the literal text their paths start with (the
prefix, or a regex's literal head), one dict per length. A request scans only the lists its
host and path select, each stopping at the best rank found so far. Results are cached on
``(method, host, path, scheme, sni)`` unless a header condition was evaluated while
deciding; the cache is emptied when it reaches ``cache_size``. Cached ``RouteMatch``
objects are shared: treat them (and ``uri_captures``) as read-only.
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
# Kong's traditional router ranks fields as bits (hosts 64, headers 32, paths 16, methods 8,
# snis 4); used here only to break ties. Same order as ``fields`` in ``_compile_route``.
_FIELD_RANKS = (8, 64, 32, 4, 16)
_INDEX_MIN = 8  # a bucket with fewer entries is scanned whole
# Characters that stand for themselves in a regex (verbose mode would need a leading "(?x)",
# which has no literal head anyway).
_REGEX_LITERAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                           "/-_~%,;:@=&!'")


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
                 "has_snis", "snis", "sni_wild", "headers", "http_ok", "https_ok",
                 "prefixes", "regexes", "heads")


class _Bucket:
    """Entries as lists in rank order: ``indexes`` is ``(length, {head: entries})`` by
    descending length (longer heads tend to rank better, so the scans stop sooner), length
    0 (head ``""``) holding the entries that have no literal head (no paths, a regex
    starting with a meta-character), or all entries of a small bucket."""

    __slots__ = ("indexes",)

    def __init__(self, entries: list[_Entry]) -> None:
        by_len: dict[int, dict[str, list[_Entry]]] = {}
        for e in entries:
            for head in e.heads if len(entries) >= _INDEX_MIN else ("",):
                by_len.setdefault(len(head), {}).setdefault(head, []).append(e)
        self.indexes = tuple((n, {h: tuple(v) for h, v in heads.items()})
                             for n, heads in sorted(by_len.items(), reverse=True))


class RouteTable:
    """All routes of a snapshot, compiled for ``match``."""

    __slots__ = ("_by_host", "_any", "_cache", "_cache_size")

    def __init__(self, routes: Iterable[Route], *, cache_size: int = 4096) -> None:
        issues: list[ConfigIssue] = []
        keyed = [pair for route in routes for pair in _compile_route(route, issues)]
        if issues:
            raise ConfigError(issues)
        keyed.sort(key=lambda pair: pair[0])
        by_host: dict[str, list[_Entry]] = {}
        anywhere: list[_Entry] = []
        for rank, (_, e) in enumerate(keyed):
            e.rank = rank
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
        name, port = _split_host(host) if host else ("", None)
        if port is None:
            port = 443 if https else 80
        if sni:
            sni = _strip_dot(sni.lower())
        found = None
        limit = 1 << 62
        header_seen = False
        size = len(path)
        for bucket in (self._by_host.get(name), self._any):
            if bucket is None:
                continue
            for n, heads in bucket.indexes:
                if n > size:
                    continue
                entries = heads.get(path[:n])
                if entries is not None and entries[0].rank < limit:
                    got, seen = _scan(entries, limit, method, name, port, path, headers,
                                      https, sni)
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
            return base if base == "/" or request_path[-1:] == "/" else base[:-1]
        return base[:-1] + postfix if postfix[:1] == "/" else base + postfix
    if not strip:
        return base if request_path == "/" else base + request_path
    if postfix == "":
        return base + "/" if len(request_path) > 1 and request_path[-1:] == "/" else base
    return base + postfix if postfix[:1] == "/" else base + "/" + postfix


def _sanitize_postfix(postfix: str) -> str:
    """Kong's ``sanitize_uri_postfix``: a leftover "." or ".." segment start is dropped."""
    if postfix in (".", ".."):
        return ""
    if postfix[:2] == "./":
        return postfix[2:]
    if postfix[:3] == "../":
        return postfix[3:]
    return postfix


def _scan(entries: tuple[_Entry, ...], limit: int, method: str, name: str, port: int,
          path: str, headers: Mapping[str, str], https: bool, sni: str | None):
    """``((entry, matched_path, regex_match) or None, header_condition_evaluated)`` for the
    first entry ranked below ``limit`` that matches."""
    seen = False
    for e in entries:
        if e.rank >= limit:
            break
        if e.methods is not None and method not in e.methods:
            continue
        if e.has_hosts and not _host_ok(e, name, port):
            continue
        if https and (not e.https_ok or (e.has_snis and not _sni_ok(e, sni))):
            continue
        m = matched = None
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


def _host_ok(e: _Entry, name: str, port: int) -> bool:
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
    return any(sni.endswith(text) if suffix else sni.startswith(text)
               for suffix, text in e.sni_wild)


def _headers_ok(conditions: tuple, headers: Mapping[str, str]) -> bool:
    for hname, exact, regexes in conditions:
        value = headers.get(hname)
        if value is None or not (_value_ok(value, exact, regexes) or (
                "," in value and any(_value_ok(part.strip(), exact, regexes)
                                     for part in value.split(",")))):
            return False
    return True


def _value_ok(value: str, exact: frozenset[str], regexes: tuple[re.Pattern[str], ...]) -> bool:
    return value.lower() in exact or any(rx.search(value) is not None for rx in regexes)


def _captures(m: re.Match[str]) -> dict[str, str]:
    """Kong's ``uri_captures``: nothing without groups, else the whole match as "0", the
    groups by position ("1"...) and by name; groups that did not take part are absent."""
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


def _split_host(host: str) -> tuple[str, int | None]:
    """``(name, port)`` of a Host value or a route host: lower-cased, IPv6 canonical, one
    trailing dot dropped; a port that is not a number stays part of the name, as in Kong."""
    host = host.lower()
    if host[:1] == "[" and "]" in host:
        end = host.index("]")
        rest = host[end + 1:]
        if rest[:1] == ":" and rest[1:].isdigit() and rest.isascii():
            return _ipv6(host[1:end]), int(rest[1:])
        return (_ipv6(host[1:end]), None) if not rest else (host, None)
    if host.count(":") > 1:
        return _ipv6(host), None
    name, sep, digits = host.partition(":")
    if sep and not (digits.isdigit() and digits.isascii()):
        return host, None
    return _strip_dot(name), int(digits) if sep else None


def _ipv6(text: str) -> str:
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        return text


def _strip_dot(name: str) -> str:
    return name[:-1] if len(name) > 1 and name[-1] == "." else name


def _literal_head(pattern: str) -> str:
    """The text every match of ``pattern`` (anchored at the start) begins with; may be ""."""
    if "|" in pattern:
        return ""  # an alternative may start anywhere
    head: list[str] = []
    for ch in pattern:
        if ch in _REGEX_LITERAL:
            head.append(ch)
            continue
        if ch in "?*{" and head:
            head.pop()  # the character before an optional quantifier may be absent
        break
    return "".join(head)


def _compile_route(route: Route, issues: list[ConfigIssue]) -> list[tuple[tuple, _Entry]]:
    """The entries of one route, each with its sort key (the priority rules, in order)."""
    where = f"routes[{route.name or route.id}]"
    protocols = set(route.protocols) or {"http", "https"}
    http_ok, https_ok = bool(protocols & {"http", "ws"}), bool(protocols & {"https", "wss"})
    if not (http_ok or https_ok):
        return []  # grpc / stream routes never match an HTTP request
    names: set[str] = set()
    name_ports: dict[str, set[int]] = {}
    wild: list[tuple[bool, str, int | None]] = []
    for h in route.hosts:
        hname, port = _split_host(h)
        if hname[:1] == "*" or hname[-1:] == "*":
            wild.append((hname[0] == "*", hname.strip("*"), port))
        elif port is None:
            names.add(hname)
        else:
            name_ports.setdefault(hname, set()).add(port)
    snis: set[str] = set()
    sni_wild: list[tuple[bool, str]] = []
    for sni in (s.lower() for s in route.snis):
        if sni[:1] == "*":
            sni_wild.append((True, _strip_dot(sni[1:])))
        elif sni[-1:] == "*":
            sni_wild.append((False, sni[:-1]))
        else:
            snis.add(_strip_dot(sni))
    headers = []
    for hname, values in route.headers:
        regexes = []
        for v in values:
            if v.startswith("~*"):
                try:
                    regexes.append(compile_pcre(v[2:], re.IGNORECASE))
                except re.error as exc:
                    issues.append(_issue(f"{where}.headers.{hname}", f"invalid regex: {exc}"))
        exact = frozenset(v.lower() for v in values if not v.startswith("~*"))
        headers.append((hname.lower(), exact, tuple(regexes)))
    groups: dict[object, list] = {}  # "re", or a prefix length -> its paths, in file order
    for i, raw in enumerate(route.paths):
        try:
            if raw.startswith("~"):
                rx = compile_pcre(raw[1:])
                groups.setdefault("re", []).append((rx, _literal_head(raw[1:])))
            else:
                prefix = normalize_path(raw)
                groups.setdefault(len(prefix), []).append((None, prefix))
        except (re.error, BadRequest) as exc:
            issues.append(_issue(f"{where}.paths[{i}]", f"invalid path '{raw}': {exc}"))
    fields = (route.methods, route.hosts, route.headers, route.snis, route.paths)
    weight = sum(1 for f in fields if f)
    field_rank = sum(r for f, r in zip(fields, _FIELD_RANKS) if f)
    port_host = bool(name_ports) or any(w[2] is not None for w in wild)
    out = []
    for gi, (group, paths) in enumerate(groups.items() if route.paths else [(0, [])]):
        e = _Entry()
        e.route, e.methods = route, frozenset(route.methods) or None
        e.http_ok, e.https_ok, e.headers = http_ok, https_ok, tuple(headers)
        e.has_hosts, e.names, e.wild = bool(route.hosts), frozenset(names), tuple(wild)
        e.name_ports = {n: frozenset(p) for n, p in name_ports.items()}
        e.has_snis, e.snis, e.sni_wild = bool(route.snis), frozenset(snis), tuple(sni_wild)
        is_regex = group == "re"
        e.regexes = tuple(rx for rx, _ in paths) if is_regex else ()
        e.prefixes = () if is_regex else tuple(dict.fromkeys(p for _, p in paths))
        heads = tuple(dict.fromkeys(head for _, head in paths))
        e.heads = heads if heads and all(heads) else ("",)
        key = (-weight, -(bool(route.hosts) and not wild), -len(headers), -is_regex,
               -route.regex_priority if is_regex else 0, 0 if is_regex else -group,
               -field_rank, -port_host, route.order, gi)
        out.append((key, e))
    return out


def _issue(path: str, message: str) -> ConfigIssue:
    return ConfigIssue(file="<routes>", line=None, column=None, path=path, message=message)
