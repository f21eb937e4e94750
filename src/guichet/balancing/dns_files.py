"""Reading the resolver's static inputs: ``resolv.conf``, the hosts file, ``dns_resolver``.

Rules (glibc's ``resolv.conf(5)`` and ``hosts(5)``, as Kong's DNS client reads them):

- ``resolv.conf``: ``nameserver IP`` lines (port 53, at most the first three are kept, as
  glibc does), ``search`` (the last ``search``/``domain`` line wins), ``options`` with
  ``ndots:N``, ``timeout:N`` (seconds) and ``attempts:N``. Unreadable file: defaults
  (no nameserver, no search, ``ndots`` 1), the caller falls back to ``127.0.0.1:53``.
- Hosts file: ``IP name [aliases...]``, ``#`` starts a comment, names are case-insensitive.
  Like Kong, the first IPv4 and the first IPv6 address seen for a name win; later lines do
  not override them. The file is read once; a reload of the gateway re-reads it.
- Search: a name with fewer dots than ``ndots`` is tried with each search domain first,
  then bare; other names bare first; an absolute name (final dot) is never extended.
- ``dns_resolver`` (Kong's setting): comma-separated ``ip[:port]`` entries, IPv6 written
  bracketed when a port follows (``[::1]:5353``); port 53 when omitted.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DNS_PORT = 53
MAX_NAMESERVERS = 3  # glibc's MAXNS


@dataclass(frozen=True, slots=True)
class ResolvConf:
    nameservers: tuple[tuple[str, int], ...] = ()
    search: tuple[str, ...] = ()
    ndots: int = 1
    timeout: float | None = None
    attempts: int | None = None


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_resolv_conf(path: str) -> ResolvConf:
    nameservers: list[tuple[str, int]] = []
    search: tuple[str, ...] = ()
    ndots = 1
    timeout: float | None = None
    attempts: int | None = None
    for raw in _read_lines(path):
        fields = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not fields:
            continue
        keyword, args = fields[0], fields[1:]
        if keyword == "nameserver" and args:
            ip = args[0].split("%", 1)[0]  # drop an IPv6 zone index
            if is_ip(ip) and len(nameservers) < MAX_NAMESERVERS:
                nameservers.append((ip, DNS_PORT))
        elif keyword in ("search", "domain") and args:
            search = tuple(a.lower().rstrip(".") for a in args if a.strip("."))
        elif keyword == "options":
            for opt in args:
                name, _, value = opt.partition(":")
                if not value.isdigit():
                    continue
                if name == "ndots":
                    ndots = min(int(value), 15)
                elif name == "timeout":
                    timeout = float(max(int(value), 1))
                elif name == "attempts":
                    attempts = max(int(value), 1)
    return ResolvConf(tuple(nameservers), search, ndots, timeout, attempts)


def parse_hosts(path: str) -> dict[str, tuple[str | None, str | None]]:
    """Map each lower-case name to its (first IPv4, first IPv6) address."""
    found: dict[str, list[str | None]] = {}
    for raw in _read_lines(path):
        fields = raw.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ip = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        family = 0 if ip.version == 4 else 1
        for name in fields[1:]:
            entry = found.setdefault(name.lower().rstrip("."), [None, None])
            if entry[family] is None:
                entry[family] = str(ip)
    return {name: (v[0], v[1]) for name, v in found.items()}


def hosts_address(
    hosts: dict[str, tuple[str | None, str | None]], name: str, prefer_v6: bool
) -> str | None:
    """The hosts-file address of ``name``: its IPv4 one unless IPv6 is preferred or alone."""
    entry = hosts.get(name)
    if entry is None:
        return None
    v4, v6 = entry
    return (v6 or v4) if prefer_v6 else (v4 or v6)


def search_names(name: str, absolute: bool, search: tuple[str, ...], ndots: int) -> tuple[str, ...]:
    """The names to ask for ``name``: with the search domains, in ``resolv.conf`` order."""
    if absolute or not search:
        return (name,)
    searched = tuple(f"{name}.{domain}" for domain in search)
    if name.count(".") >= ndots:
        return (name, *searched)
    return (*searched, name)


def parse_nameservers(value: str) -> list[tuple[str, int]]:
    """Parse Kong's ``dns_resolver`` value; raise ValueError naming the bad entry."""
    result: list[tuple[str, int]] = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        host, port = entry, DNS_PORT
        if entry.startswith("["):
            host, sep, rest = entry[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"invalid nameserver {entry!r}")
            if rest:
                port = _port(rest[1:], entry)
        elif entry.count(":") == 1:
            host, _, text = entry.partition(":")
            port = _port(text, entry)
        if not is_ip(host):
            raise ValueError(f"invalid nameserver {entry!r}: not an IP address")
        result.append((host, port))
    return result


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid nameserver {entry!r}: bad port")
    return int(text)
