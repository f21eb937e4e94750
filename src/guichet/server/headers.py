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
  X-Consumer-*, X-Credential-*, X-Anonymous-*, X-Authenticated-* (§8), and so are their
  look-alikes with underscores (``X_Consumer_ID``), which CGI-style servers read as the
  same variable; likewise ``X_Forwarded_*`` and ``X_Real_IP``.
* X-Forwarded-For gets the peer address appended; X-Real-IP, X-Forwarded-Proto, -Host,
  -Port, -Path and -Prefix are overwritten with what the gateway saw unless the peer is a
  trusted address, in which case the client's values are kept (Kong's ``trusted_ips``).
"""

from __future__ import annotations

import ipaddress
import re
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
CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION, VIA_FIELD, DROP = range(1, 6)
_KIND_BY_NAME = {
    b"content-length": CONTENT_LENGTH, b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION, b"via": VIA_FIELD,
}
_PASS = (0, b"")
_LINE_INFO: dict[bytes, tuple[int, bytes]] = {}
_LINE_CACHE_MAX = 8192


def _line_info(line: bytes) -> tuple[int, bytes]:
    name, _, value = line.partition(b":")
    name = name.strip().lower()
    kind = _KIND_BY_NAME.get(name)
    if kind is None and name not in HOP_BY_HOP:
        info = _PASS
    else:
        info = (kind or DROP, value.strip())
    if len(line) <= 200:  # long lines (cookies, tokens) are classified, never kept
        if len(_LINE_INFO) >= _LINE_CACHE_MAX:
            _LINE_INFO.clear()
        _LINE_INFO[line] = info
    return info


def parse_response_head(
    head: bytes,
) -> tuple[bytes, bytes | None, bytes | None, list[bytes] | None, bytes | None, bool]:
    """Split an upstream head ("HTTP/1.1 200 OK\\r\\nName: value\\r\\n...", no blank
    line) into what the client gets as it came (``kept``: lines ending in CRLF) and what
    the gateway handles itself: Content-Length, Transfer-Encoding, Connection values, Via,
    and whether Content-Length fields differ. A plain tuple: this runs per response."""
    lines = head.split(b"\r\n")
    kept = []
    cl = te = via = None
    conns: list[bytes] | None = None
    differing = False
    get = _LINE_INFO.get
    for i in range(1, len(lines) - 1):
        line = lines[i]
        info = get(line)
        if info is None:
            info = _line_info(line)
        if info is _PASS:
            kept.append(line)
            continue
        kind, value = info
        if kind == CONTENT_LENGTH:
            if cl is not None and cl != value:
                differing = True
            cl = value
        elif kind == CONNECTION:
            conns = [value] if conns is None else conns + [value]
        elif kind == TRANSFER_ENCODING:
            te = value
        elif kind == VIA_FIELD:
            via = value if via is None else via + b", " + value
    if kept:
        kept.append(b"")
        return b"\r\n".join(kept), cl, te, conns, via, differing
    return b"", cl, te, conns, via, differing


def drop_named(kept: bytes, named: frozenset[bytes]) -> bytes:
    """Remove from ``kept`` the fields a Connection header listed (rare: the slow path)."""
    lines = [line for line in kept.split(b"\r\n")
             if line and line.split(b":", 1)[0].strip().lower() not in named]
    return b"\r\n".join(lines) + b"\r\n" if lines else b""


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


def underscore_lookalike(lname: bytes) -> bool:
    """Whether a field name with underscores reads, once ``_`` is taken for ``-`` (as
    CGI, WSGI, PHP and Rack do when they make variables of headers), as an identity or
    forwarding field the gateway controls: ``X_Consumer_ID``, ``x_forwarded_for``. Such
    fields are dropped toward the upstream like the originals (nginx, and so Kong, drops
    every field with an underscore by default)."""
    dashed = lname.replace(b"_", b"-")
    return dashed.startswith(IDENTITY_PREFIXES) or dashed in FORWARDED or dashed == b"host"


def header_pairs(block: bytes) -> list[tuple[str, str]]:
    """``b"Name: value\\r\\n..."`` (a kept response head) as (name, value) strings, for
    the plugins' ``ResponseHead``."""
    pairs = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            pairs.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return pairs


def render_pairs(pairs: Iterable[tuple[str, str]]) -> bytes:
    """The inverse of :func:`header_pairs`. Values set by plugins are checked: a CR, LF or
    NUL would split the response (response splitting), so it is refused."""
    out = []
    for name, value in pairs:
        line = f"{name}: {value}\r\n"
        if "\r" in line[:-2] or "\n" in line[:-2] or "\0" in line:
            raise ValueError(f"invalid character in response header {name!r}")
        out.append(line.encode("latin-1"))
    return b"".join(out)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHECKED_NAMES: dict[str, bytes] = {}
# Framing and connection fields are the gateway's: plugins cannot set them.
_NOT_SETTABLE = frozenset({"content-length", "transfer-encoding", "connection", "upgrade",
                           "keep-alive", "te", "trailer"})


def check_field(name: str, value: str) -> None:
    """Check a header field a plugin sets, either way: the name is a token, the value holds
    no CR, LF or NUL (which would forge fields) and is Latin-1. Raises ValueError."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name set by a plugin: {name!r}")
    _check_value(name, value)


def _check_value(name: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"invalid character in the value of header {name!r} set by a plugin")
    if not value.isascii():
        value.encode("latin-1")  # raises UnicodeEncodeError (a ValueError) beyond Latin-1


def check_header(name: str, value: str) -> bytes:
    """Check a header a plugin sets toward the upstream (:func:`check_field`, and not a
    framing field: the gateway writes those); return its lower-case name."""
    lname = _CHECKED_NAMES.get(name)
    if lname is None:
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name set by a plugin: {name!r}")
        if name.lower() in _NOT_SETTABLE:
            raise ValueError(f"the gateway writes {name} itself")
        lname = name.lower().encode("latin-1")
        if len(_CHECKED_NAMES) < 4096:
            _CHECKED_NAMES[name] = lname
    _check_value(name, value)
    return lname
