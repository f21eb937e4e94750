"""Header rules applied in both directions (GUARANTEES.md §3, §4, §7, §8).

Rules, in the order they are applied:

* Field names and values are checked by the parser (llhttp in strict mode: token names,
  no control but HTAB in values, no obs-fold, no whitespace before the colon) (§3).
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
from typing import Iterable

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

VIA = b"1.1 guichet"

# Response heads are rewritten from their raw bytes (llhttp has validated them). Each line
# is classified once and the answer cached by the whole line: upstreams send the same
# lines again and again ("Server: nginx", "Connection: keep-alive"), so most lines cost
# one dict lookup. Lines whose values vary (Date, Content-Length) only add entries; the
# cache is emptied when it holds _LINE_CACHE_MAX of them.
PASS, CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION, VIA_FIELD, DROP = range(6)
_KIND_BY_NAME = {
    b"content-length": CONTENT_LENGTH, b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION, b"via": VIA_FIELD,
}
_LINE_KINDS: dict[bytes, int] = {}
_LINE_CACHE_MAX = 8192


def _line_kind(line: bytes) -> int:
    name = line.partition(b":")[0].strip().lower()
    kind = _KIND_BY_NAME.get(name)
    if kind is None:
        kind = DROP if name in HOP_BY_HOP else PASS
    if len(line) <= 200:  # long lines (cookies, tokens) are classified, never kept
        if len(_LINE_KINDS) >= _LINE_CACHE_MAX:
            _LINE_KINDS.clear()
        _LINE_KINDS[line] = kind
    return kind


class ResponseHead:
    """The parts of an upstream response head the gateway needs, and the rest as bytes."""

    __slots__ = ("kept", "content_length", "transfer_encoding", "connection", "via", "differing_cl")

    def __init__(self, head: bytes) -> None:
        # ``head`` is "HTTP/1.1 200 OK\r\nName: value\r\n...Name: value\r\n" (no blank line).
        self.content_length: bytes | None = None
        self.transfer_encoding: bytes | None = None
        self.connection: list[bytes] = []
        self.via: bytes | None = None
        self.differing_cl = False
        lines = head.split(b"\r\n")
        last = len(lines) - 1  # the empty string after the final CRLF
        kinds = _LINE_KINDS
        kept = []
        for i in range(1, last):
            line = lines[i]
            kind = kinds.get(line)
            if kind is None:
                kind = _line_kind(line)
            if kind == PASS:
                kept.append(line)
                continue
            if kind == DROP:
                continue
            value = line.partition(b":")[2].strip()
            if kind == CONTENT_LENGTH:
                if self.content_length is not None and self.content_length != value:
                    self.differing_cl = True
                self.content_length = value
            elif kind == CONNECTION:
                self.connection.append(value)
            elif kind == TRANSFER_ENCODING:
                self.transfer_encoding = value
            else:
                self.via = value if self.via is None else self.via + b", " + value
        if kept:
            kept.append(b"")
            self.kept = b"\r\n".join(kept)
        else:
            self.kept = b""

    def drop_named(self, named: frozenset[bytes]) -> None:
        """Remove the fields a Connection header listed (rare: the slow path)."""
        lines = self.kept.split(b"\r\n")
        self.kept = b"\r\n".join(
            line for line in lines if line and line.split(b":", 1)[0].strip().lower() not in named)
        if self.kept:
            self.kept += b"\r\n"


def parse_header_lines(head: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs of a raw head (for the WebSocket handshake checks)."""
    pairs = []
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            pairs.append((name.strip(), value.strip()))
    return pairs


_CONNECTION_EXTRA: dict[bytes, frozenset[bytes]] = {}


def connection_extra_names(value: bytes) -> frozenset[bytes]:
    """Field names a Connection value lists beyond the ones dropped anyway, cached."""
    names = _CONNECTION_EXTRA.get(value)
    if names is None:
        names = connection_tokens((value,)) - HOP_BY_HOP - {b"close"}
        if len(_CONNECTION_EXTRA) < 1024:
            _CONNECTION_EXTRA[value] = names
    return names


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
