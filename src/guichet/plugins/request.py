"""What a plugin sees of a request and of its response.

:class:`Request` is a view over the proxy's exchange, made once per request on routes that
have plugins. Reads come from what the client sent (header names are lower-case; repeated
fields are joined with ", "); writes (``set_header``, ``remove_header``, ``set_path``,
``set_query``) change only the request sent upstream, and are applied when its head is
written. Client-sent identity headers (X-Consumer-*, X-Credential-*, X-Anonymous-*,
X-Authenticated-*) never reach the upstream; the ones plugins set do.

:class:`ResponseHead` is the status and header list going to the client, whether it came
from the upstream or from the gateway itself (``local`` is then true).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import parse_qs

from guichet.errors import PayloadTooLarge
from guichet.server.headers import check_field, check_header

if TYPE_CHECKING:
    from guichet.config.model import Consumer, Route, Service
    from guichet.server.exchange import Exchange

_METHODS: dict[bytes, str] = {}
_LOWER_BYTES: dict[str, bytes] = {}


def _lower_bytes(name: str) -> bytes:
    lname = _LOWER_BYTES.get(name)
    if lname is None:
        lname = name.lower().encode("latin-1")
        if len(_LOWER_BYTES) < 4096:
            _LOWER_BYTES[name] = lname
    return lname


class Request:
    """Attributes default to the class values below; a request writes only what changes
    (one is made per proxied request on routes with plugins: it must be cheap)."""

    consumer: "Consumer | None" = None
    credential: Any = None
    # the identity headers set_consumer decided: (block of lines, their lower-case names)
    identity: "tuple[bytes, frozenset[bytes], dict[bytes, list[bytes]]] | None" = None
    # lower-case name -> the header lines to send ([] removes the header), rendered when
    # set: b"x-trace" -> [b"X-Trace: a b\r\n"]
    lines: dict[bytes, list[bytes]] | None = None
    upstream_path: str | None = None
    upstream_query: str | None = None
    _args: dict[str, list[str]] | None = None
    _body_waiter: "asyncio.Future[None] | None" = None
    body_limit = 0

    def __init__(self, ex: "Exchange") -> None:
        self._ex = ex
        self.ctx: dict[str, Any] = {}

    def abandon(self) -> None:
        """The client went away: a plugin waiting for the body stops waiting (its task
        is cancelled rather than left pending forever)."""
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()

    def limit_body(self, max_bytes: int) -> None:
        """Refuse the request with 413 as soon as more than ``max_bytes`` of body arrive,
        while it streams (nothing is held). A Content-Length over it is refused at once."""
        ex = self._ex
        if ex.content_length is not None and ex.content_length > max_bytes:
            raise PayloadTooLarge()
        if not ex.body_limit or max_bytes < ex.body_limit:
            ex.body_limit = max_bytes
        if ex.body_received > max_bytes:
            raise PayloadTooLarge()

    # ------------------------------------------------------------------ reading
    @property
    def method(self) -> str:
        m = self._ex.method
        s = _METHODS.get(m)
        if s is None:
            s = _METHODS[m] = m.decode("latin-1")
        return s

    @property
    def scheme(self) -> str:
        return self._ex.client.scheme

    @property
    def websocket(self) -> bool:
        """A WebSocket handshake the gateway validated: if the upstream answers 101 the
        request becomes a tunnel, and its log phase runs when the tunnel ends."""
        return self._ex.ws_key is not None

    @property
    def host(self) -> str:
        """The Host header without its port."""
        host = (self._ex.host or b"").decode("latin-1")
        if host.startswith("["):
            return host[: host.find("]") + 1]
        return host.split(":", 1)[0]

    @property
    def path(self) -> str:
        """The normalised path (what routes match against)."""
        return self._ex.path

    @property
    def raw_path(self) -> str:
        """The path as the client sent it."""
        return self._ex.raw_path

    @property
    def raw_target(self) -> str:
        """The request target exactly as the client sent it (nginx's ``$request_uri``)."""
        return self._ex.url.decode("latin-1")

    @property
    def http_version(self) -> str:
        """``"1.1"`` or ``"1.0"``."""
        return "1.0" if self._ex.http10 else "1.1"

    @property
    def query(self) -> str:
        """The raw query string, without the "?"."""
        return self._ex.query

    @property
    def query_args(self) -> dict[str, list[str]]:
        args = self._args
        if args is None:
            args = self._args = parse_qs(self._ex.query, keep_blank_values=True)
        return args

    def query_arg(self, name: str) -> str | None:
        values = self.query_args.get(name)
        return values[0] if values else None

    @property
    def headers(self) -> dict[str, str]:
        """Request headers by lower-case name (repeated fields joined with ", "); read-only."""
        return self._ex.lazy_headers()

    def header(self, name: str) -> str | None:
        """One header's value (repeated fields joined with ", "), or None."""
        ex = self._ex
        if ex._lazy_headers is not None:
            return ex._lazy_headers.get(name.lower())
        lname = _lower_bytes(name)
        found = None
        for n, _, v in ex.headers:
            if n == lname:
                found = v if found is None else found + b", " + v
        return None if found is None else found.decode("latin-1")

    def raw_header_values(self, name: str) -> list[bytes]:
        """Every value of a header as the bytes the client sent (for secrets: digest or
        sign what was sent, whatever its encoding)."""
        lname = _lower_bytes(name)
        values = []
        for n, _, v in self._ex.headers:
            if n == lname:
                values.append(v)
        return values

    def header_values(self, name: str) -> list[str]:
        """Every value of a repeated header, in order."""
        lname = _lower_bytes(name)
        values = []
        for n, _, v in self._ex.headers:
            if n == lname:
                values.append(v.decode("latin-1"))
        return values

    @property
    def client_ip(self) -> str:
        """The client's address (the peer, or what a trusted proxy says: Kong's real IP)."""
        return self._ex.client_ip

    @property
    def peer_ip(self) -> str:
        return self._ex.client.peer_ip

    @property
    def route(self) -> "Route":
        return self._ex.match.route

    @property
    def service(self) -> "Service | None":
        svc = self._ex.service
        return None if svc is None else svc.service

    @property
    def uri_captures(self) -> dict[str, Any]:
        return getattr(self._ex.match, "uri_captures", None) or {}

    @property
    def request_id(self) -> str:
        return self._ex.rid()

    @property
    def content_length(self) -> int | None:
        return self._ex.content_length

    @property
    def has_body(self) -> bool:
        return self._ex.has_body

    @property
    def now(self) -> float:
        """The worker's coarse monotonic clock (seconds, updated four times a second)."""
        return self._ex.client.rt.now

    # ------------------------------------------------------------------ the upstream request
    def set_header(self, name: str, value: str) -> None:
        """Replace every value of ``name`` toward the upstream (Kong's ``set_header``)."""
        lname = check_header(name, value)
        if self.lines is None:
            self.lines = {}
        self.lines[lname] = [f"{name}: {value}\r\n".encode("latin-1")]

    def add_header(self, name: str, value: str) -> None:
        """Add a value to ``name`` toward the upstream, keeping what the client sent."""
        lname = check_header(name, value)
        if self.lines is None:
            self.lines = {}
        current = self.lines.get(lname)
        if current is None:
            current = [n + b": " + v + b"\r\n" for ln, n, v in self._ex.headers if ln == lname]
        self.lines[lname] = current + [f"{name}: {value}\r\n".encode("latin-1")]

    def remove_header(self, name: str) -> None:
        """Send no ``name`` header upstream (Kong's ``clear_header``)."""
        lname = check_header(name, "")
        if self.lines is None:
            self.lines = {}
        self.lines[lname] = []

    @property
    def edits(self) -> dict[str, list[tuple[str, str]]] | None:
        """What plugins changed in the upstream headers, by lower-case name: the
        (name, value) pairs to send, ``[]`` for a removed header (for tests and debugging)."""
        merged: dict[bytes, list[bytes]] = {}
        if self.identity is not None:
            merged.update(self.identity[2])
        if self.lines:
            merged.update(self.lines)
        if self.identity is None and self.lines is None:
            return None
        out = {}
        for lname, lines in merged.items():
            pairs = []
            for line in lines:
                name, _, value = line[:-2].decode("latin-1").partition(": ")
                pairs.append((name, value))
            out[lname.decode("latin-1")] = pairs
        return out

    def set_path(self, path: str) -> None:
        """Send this path upstream instead of the one the route computed."""
        if not path.startswith("/"):
            raise ValueError("a path starts with /")
        self.upstream_path = path

    def set_query(self, query: str) -> None:
        """Send this raw query string (without "?") upstream."""
        self.upstream_query = query

    # ------------------------------------------------------------------ identity
    def set_consumer(self, consumer: "Consumer | None", credential: Any = None,
                     credential_identifier: str | None = None) -> None:
        """Kong's ``set_consumer``: authenticate the request and set the identity headers.

        X-Consumer-ID, X-Consumer-Custom-ID and X-Consumer-Username carry the consumer's
        fields (cleared when absent); X-Credential-Identifier the credential's identifier;
        X-Anonymous-Consumer is "true" when there is no credential (the plugin's
        ``anonymous`` consumer), and cleared otherwise.
        """
        self.consumer = consumer
        self.credential = credential
        self.identity = _identity(consumer, credential_identifier if credential is not None
                                  else None, credential is None)
        lines = self.lines
        if lines:  # an identity header set by hand before is replaced by this identity
            for lname in self.identity[1]:
                lines.pop(lname, None)

    @property
    def authenticated(self) -> bool:
        """True once an authentication plugin accepted a credential (not anonymous)."""
        return self.credential is not None

    # ------------------------------------------------------------------ the body
    async def read_body(self, limit: int) -> bytes:
        """Wait for the whole request body and return it.

        Only in ``rewrite`` and ``access``: the body is held until then. A body larger
        than ``limit`` bytes is answered 413 (``PayloadTooLarge`` is raised and turned
        into that answer by the runner).
        """
        ex = self._ex
        if not ex.has_body:
            return b""
        if ex.content_length is not None and ex.content_length > limit:
            raise PayloadTooLarge()
        if not ex.body_complete:
            self.body_limit = limit
            loop = ex.client.rt.loop
            self._body_waiter = loop.create_future()
            ex.client.hold_body(ex)
            try:
                await self._body_waiter
            finally:
                self._body_waiter = None
        if ex.body_received > limit:
            raise PayloadTooLarge()
        return b"".join(ex.body_pending or ())

    def set_body(self, body: bytes) -> None:
        """Send ``body`` upstream instead of the client's (after ``read_body``, or on a
        request without a body). Content-Length follows the new body."""
        ex = self._ex
        if ex.has_body and not ex.body_complete:
            raise RuntimeError("set_body before the body was read (await req.read_body())")
        ex.body_pending = [body] if body else None
        ex.body_pending_size = len(body)
        ex.replay = [body] if body else None
        ex.replay_size = len(body)
        ex.replayable = True
        ex.chunked = False
        ex.has_body = bool(body)
        ex.content_length = len(body) if body else None

    def body_progress(self) -> None:
        """Called by the exchange when body bytes arrive while a plugin waits for them."""
        waiter = self._body_waiter
        if waiter is None or waiter.done():
            return
        ex = self._ex
        if ex.body_complete:
            waiter.set_result(None)
        elif ex.body_received > self.body_limit:
            waiter.set_exception(PayloadTooLarge())


_IDENTITY_CACHE: dict[tuple[Any, ...], tuple[bytes, frozenset[bytes], dict[bytes, list[bytes]]]] = {}
_IDENTITY_NAMES = frozenset({b"x-consumer-id", b"x-consumer-custom-id", b"x-consumer-username",
                             b"x-credential-identifier", b"x-anonymous-consumer"})


def _identity(consumer: "Consumer | None", identifier: str | None,
              anonymous: bool) -> tuple[bytes, frozenset[bytes], dict[bytes, list[bytes]]]:
    """The identity headers of one consumer and credential, rendered once: the block of
    lines sent upstream, the names it governs (a header among them that it does not carry
    is removed), and the same as edits (name -> lines, [] for removed)."""
    key = (consumer.id if consumer else None, consumer.username if consumer else None,
           consumer.custom_id if consumer else None, identifier, anonymous)
    found = _IDENTITY_CACHE.get(key)
    if found is None:
        edits: dict[bytes, list[bytes]] = {}
        for header, value in (
            ("X-Consumer-ID", key[0]), ("X-Consumer-Custom-ID", key[2]),
            ("X-Consumer-Username", key[1]), ("X-Credential-Identifier", identifier),
            ("X-Anonymous-Consumer", "true" if anonymous else None),
        ):
            lname = check_header(header, "")
            if value is not None and any(c in value for c in "\r\n\0"):
                raise ValueError(f"{header} would carry a line break: {value!r}")
            # Names beyond Latin-1 (a Chinese username) go as UTF-8 bytes, as Kong sends them.
            edits[lname] = [f"{header}: {value}\r\n".encode("utf-8")] if value is not None else []
        block = b"".join(line for lines in edits.values() for line in lines)
        found = (block, _IDENTITY_NAMES, edits)
        if len(_IDENTITY_CACHE) >= 4096:
            _IDENTITY_CACHE.clear()
        _IDENTITY_CACHE[key] = found
    return found


class ResponseHead:
    """The status and headers going to the client. Header names keep their case; lookups
    ignore it."""

    __slots__ = ("status", "headers", "local", "body_size", "changed")

    def __init__(self, status: int, headers: list[tuple[str, str]], local: bool = False) -> None:
        self.status = status
        self.headers = headers
        self.local = local
        self.body_size = 0
        self.changed = False

    def get(self, name: str) -> str | None:
        lname = name.lower()
        for n, v in self.headers:
            if n.lower() == lname:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for n, v in self.headers if n.lower() == lname]

    def set(self, name: str, value: str) -> None:
        value = str(value)
        check_field(name, value)
        lname = name.lower()
        self.headers = [(n, v) for n, v in self.headers if n.lower() != lname]
        self.headers.append((name, str(value)))
        self.changed = True

    def add(self, name: str, value: str) -> None:
        value = str(value)
        check_field(name, value)
        self.headers.append((name, value))
        self.changed = True

    def remove(self, name: str) -> None:
        lname = name.lower()
        self.headers = [(n, v) for n, v in self.headers if n.lower() != lname]
        self.changed = True

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.headers)
