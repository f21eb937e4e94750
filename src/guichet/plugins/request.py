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
from guichet.server.headers import header_line

if TYPE_CHECKING:
    from guichet.config.model import Consumer, Route, Service
    from guichet.server.exchange import Exchange

_FORBIDDEN = frozenset({"content-length", "transfer-encoding", "connection", "upgrade",
                        "keep-alive", "te", "trailer"})
_METHODS: dict[bytes, str] = {}


class Request:
    __slots__ = ("_ex", "ctx", "consumer", "credential", "edits", "upstream_path",
                 "upstream_query", "_args", "_body_waiter", "body_limit")

    def __init__(self, ex: "Exchange") -> None:
        self._ex = ex
        self.ctx: dict[str, Any] = {}
        self.consumer: "Consumer | None" = None
        self.credential: Any = None
        # lower-case name -> [(name, value), ...]; an empty list removes the header
        self.edits: dict[str, list[tuple[str, str]]] | None = None
        self.upstream_path: str | None = None
        self.upstream_query: str | None = None
        self._args: dict[str, list[str]] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self.body_limit = 0

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
        return self._ex.lazy_headers().get(name.lower())

    def header_values(self, name: str) -> list[str]:
        """Every value of a repeated header, in order."""
        lname = name.lower().encode("latin-1")
        return [v.decode("latin-1") for n, _, v in self._ex.headers if n == lname]

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
        lname = name.lower()
        if lname in _FORBIDDEN:
            raise ValueError(f"the gateway writes {name} itself")
        value = str(value)
        header_line(name, value)  # refuses CR, LF, NUL and bad names now, in the plugin
        if self.edits is None:
            self.edits = {}
        self.edits[lname] = [(name, value)]

    def add_header(self, name: str, value: str) -> None:
        """Add a value to ``name`` toward the upstream, keeping what the client sent."""
        lname = name.lower()
        if lname in _FORBIDDEN:
            raise ValueError(f"the gateway writes {name} itself")
        value = str(value)
        header_line(name, value)
        if self.edits is None:
            self.edits = {}
        current = self.edits.get(lname)
        if current is None:
            lb = lname.encode("latin-1")
            current = [(n.decode("latin-1"), v.decode("latin-1"))
                       for ln, n, v in self._ex.headers if ln == lb]
        self.edits[lname] = current + [(name, value)]

    def remove_header(self, name: str) -> None:
        """Send no ``name`` header upstream (Kong's ``clear_header``)."""
        lname = name.lower()
        if lname in _FORBIDDEN:
            raise ValueError(f"the gateway writes {name} itself")
        if self.edits is None:
            self.edits = {}
        self.edits[lname] = []

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
        for header, value in (
            ("X-Consumer-ID", consumer.id if consumer else None),
            ("X-Consumer-Custom-ID", consumer.custom_id if consumer else None),
            ("X-Consumer-Username", consumer.username if consumer else None),
            ("X-Credential-Identifier", credential_identifier if credential is not None else None),
        ):
            if value is None:
                self.remove_header(header)
            else:
                self.set_header(header, value)
        if credential is None:
            self.set_header("X-Anonymous-Consumer", "true")
        else:
            self.remove_header("X-Anonymous-Consumer")

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
        lname = name.lower()
        self.headers = [(n, v) for n, v in self.headers if n.lower() != lname]
        self.headers.append((name, str(value)))
        self.changed = True

    def add(self, name: str, value: str) -> None:
        self.headers.append((name, str(value)))
        self.changed = True

    def remove(self, name: str) -> None:
        lname = name.lower()
        self.headers = [(n, v) for n, v in self.headers if n.lower() != lname]
        self.changed = True

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.headers)
