"""Header rules applied in both directions (GUARANTEES.md §3, §4, §7, §8).

Rules, in the order they are applied:

* Field values may not contain NUL, bare CR/LF or other controls except HTAB (§3); the
  parser (llhttp, strict mode) already refuses bad names, whitespace before the colon and
  obs-fold; the checks here cover what it lets through.
* Hop-by-hop fields are dropped toward the upstream and toward the client: Connection and
  every field it names, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding,
  Upgrade (kept only inside a validated WebSocket handshake), Proxy-Authorization and
  Proxy-Authenticate (§7).
* Framing fields (Content-Length, Transfer-Encoding) are never copied: the gateway writes
  its own (§4).
* Identity fields a client could forge are dropped before the gateway sets its own:
  X-Consumer-*, X-Credential-*, X-Anonymous-*, X-Authenticated-* (§8).
* X-Forwarded-For gets the peer address appended; X-Real-IP, X-Forwarded-Proto, -Host,
  -Port, -Path and -Prefix are overwritten with what the gateway saw unless the peer is a
  trusted address, in which case the client's values are kept (Kong's ``trusted_ips``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable

# Values: no controls except HTAB (obs-text 0x80-0xFF is allowed, RFC 9110 §5.5).
BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search

HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
    }
)
IDENTITY_PREFIXES = (b"x-consumer-", b"x-credential-", b"x-anonymous-", b"x-authenticated-")
FORWARDED = frozenset(
    {
        b"x-forwarded-for", b"x-real-ip", b"x-forwarded-proto", b"x-forwarded-host",
        b"x-forwarded-port", b"x-forwarded-path", b"x-forwarded-prefix",
    }
)
# Fields the gateway rewrites itself toward the upstream: never copied from the client.
REWRITTEN_UPSTREAM = HOP_BY_HOP | FORWARDED | {b"host", b"content-length", b"expect", b"via"}
REWRITTEN_DOWNSTREAM = HOP_BY_HOP | {b"content-length", b"via"}
WEBSOCKET_PASS = frozenset({b"upgrade", b"connection"})

VIA = b"1.1 guichet"


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """The lower-case field names listed by Connection header values."""
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


class TrustedNetworks:
    """Kong's ``trusted_ips``: is a peer allowed to tell us who the client is?"""

    __slots__ = ("_networks", "_cache", "all")

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self._cache: dict[str, bool] = {}
        self.all = any(n.prefixlen == 0 for n in self._networks)

    def __contains__(self, ip: str) -> bool:
        hit = self._cache.get(ip)
        if hit is None:
            if not self._networks:
                return False
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            hit = any(addr in n for n in self._networks)
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[ip] = hit
        return hit
