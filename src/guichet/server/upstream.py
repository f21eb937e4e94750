"""Connections to upstream targets and the keep-alive pool that holds them.

An :class:`UpstreamConnection` is an ``asyncio.Protocol`` that parses responses with
httptools and hands every event to the exchange bound to it (one at a time). The
:class:`UpstreamPool` keeps idle connections per (ip, port, tls, sni) key, last in first
out, bounded per key (``upstream_keepalive_pool_size``), closed after
``upstream_keepalive_idle_timeout`` idle seconds or ``upstream_keepalive_max_requests``
requests. A connection goes back to the pool only after a complete response that allows
keep-alive, to a request that was completely sent; anything else closes it (§5: an
upstream that framed a response badly is never reused).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Any

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

if TYPE_CHECKING:
    from guichet.server.exchange import Exchange

PoolKey = tuple[str, int, bool, str]


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "pool", "key", "transport", "parser", "exchange", "requests", "idle_since",
        "closed", "tunnel", "in_head", "head_buf", "max_head", "paused", "clock",
        "read_timeout",
    )

    def __init__(self, pool: "UpstreamPool", key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.closed = False
        self.tunnel: Any = None
        self.in_head = False
        self.head_buf = b""
        self.max_head = pool.max_head
        self.paused = False  # reading paused because the client cannot keep up
        self.clock: Any = None  # the worker Runtime (its coarse ``now``), set when used
        self.read_timeout = 60.0

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.open_connections += 1

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_upstream(data)
            return
        ex = self.exchange
        if ex is None:
            # Bytes from an idle connection: the upstream is confused; never reuse it.
            self.close()
            return
        ex.deadline = self.clock.now + self.read_timeout
        if self.in_head:
            self.head_buf = self.head_buf + data if self.head_buf else data
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upg:
            ex.resp_upgrade(data[upg.args[0]:])
        except HttpParserError as exc:
            if self.exchange is ex:
                ex.upstream_protocol_error(f"invalid response: {exc.__class__.__name__}")
        else:
            if self.exchange is ex:
                if self.in_head and len(self.head_buf) > self.max_head:
                    ex.upstream_protocol_error("response head too large")
                    return
                ex.flush_client()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.open_connections -= 1
        self.pool.forget(self)
        if self.tunnel is not None:
            self.tunnel.upstream_lost()
            self.tunnel = None
            return
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            if ex.upstream is self:
                ex.upstream_lost(exc)

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.pause_reading_for_upstream()
        elif self.tunnel is not None:
            self.tunnel.upstream_pause_writing()

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.client.resume_reading_for_upstream()
        elif self.tunnel is not None:
            self.tunnel.upstream_resume_writing()

    # -- httptools callbacks -------------------------------------------------------
    def expect_response(self, clock: Any, read_timeout: float) -> None:
        """A request was sent: the next bytes start a response head."""
        self.in_head = True
        self.head_buf = b""
        self.clock = clock
        self.read_timeout = read_timeout

    def on_headers_complete(self) -> None:
        buf = self.head_buf
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end > self.max_head:
            raise ValueError("response head too large")
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.head_buf = buf[end + 4:]  # an interim response: the real head follows
        else:
            self.in_head = False
            self.head_buf = b""
        self.exchange.resp_headers_complete(status, buf[: end + 2])  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.resp_body(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.resp_complete(self.parser.should_keep_alive())

    # -- flow control toward the client ------------------------------------------
    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # -- life cycle --------------------------------------------------------------
    def reset_parser(self) -> None:
        self.parser = HttpResponseParser(self)

    def close(self) -> None:
        self.exchange = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class UpstreamPool:
    """Idle keep-alive connections per target, LIFO, bounded and aged."""

    __slots__ = ("_idle", "size", "idle_timeout", "max_requests", "open_connections", "_tls",
                 "max_head")

    def __init__(self, size: int, idle_timeout: float, max_requests: int,
                 max_head: int = 65536) -> None:
        self.max_head = max_head
        self._idle: dict[PoolKey, list[UpstreamConnection]] = {}
        self.size = size
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests
        self.open_connections = 0
        self._tls: dict[bool, ssl.SSLContext] = {}

    def acquire(self, key: PoolKey) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def release(self, conn: UpstreamConnection, now: float) -> None:
        conn.exchange = None
        conn.requests += 1
        # A connection may come back while paused for a slow client (its response ended
        # while the client's buffer was full): it must idle, and serve next, unpaused.
        conn.resume_reading()
        if conn.closed or self.size == 0 or conn.requests >= self.max_requests:
            conn.close()
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        if len(idle) >= self.size:
            conn.close()
            return
        conn.idle_since = now
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than the idle timeout."""
        limit = now - self.idle_timeout
        for key in list(self._idle):
            idle = self._idle[key]
            keep = [c for c in idle if c.idle_since > limit and not c.closed]
            for conn in idle:
                if conn not in keep:
                    conn.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def close_all(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def tls_context(self, verify: bool) -> ssl.SSLContext:
        ctx = self._tls.get(verify)
        if ctx is None:
            ctx = ssl.create_default_context()
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._tls[verify] = ctx
        return ctx

    async def connect(
        self, key: PoolKey, timeout: float, loop: asyncio.AbstractEventLoop, verify: bool
    ) -> UpstreamConnection:
        ip, port, tls, sni = key
        kwargs: dict[str, Any] = {}
        if tls:
            kwargs["ssl"] = self.tls_context(verify)
            kwargs["server_hostname"] = sni or ip
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamConnection(self, key), ip, port, **kwargs),
            timeout,
        )
        return proto  # type: ignore[return-value]
