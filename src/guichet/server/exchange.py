"""One request/response cycle through the proxy, driven by callbacks (no task per request).

State machine (one :class:`Exchange` per request; the client connection runs them one at a
time, in order, queuing pipelined requests behind the active one)::

    HEAD ──head_complete──► QUEUED ──start──► (answered locally) ─────────────► DONE
                                        └──► CONNECTING ──attach──► SENT ──resp head──► RESPONDING ──► DONE
                                                  ▲                    │
                                                  └──── retry ◄────────┘ (lost before any response byte)

Rules:

* The request keeps the configuration snapshot it started with, whatever reloads happen.
* Bytes reach the upstream only after the whole head was validated and routed (§3).
* Framing is rewritten both ways (§4): Content-Length is passed on as a number, chunked
  bodies are re-chunked chunk by chunk (chunk extensions and trailers are dropped), a
  close-delimited response becomes chunked for HTTP/1.1 clients.
* Retries (§11): a connection that could not be made is retried on another target for any
  method (nothing was sent); a request lost after being sent is retried only for an
  idempotent method whose body (if any) is still held whole (≤ 64 KiB), and only before any
  response byte went to the client; at most ``service.retries`` times. With the service's
  ``retry_backoff`` the retry waits on a timer (``call_later``), dropped if the client
  goes away; the exchange stays CONNECTING meanwhile.
* Health (``guichet.health``): each attempt's outcome goes to the target's record when its
  upstream uses health checks or a circuit breaker: a failed connect (TCP failure), a
  connect or read timeout (timeout), a connection lost before any response byte (TCP
  failure; not when it was a reused keep-alive connection, which an upstream may close
  at any time), an invalid response (status 0) and each response status.
* Timeouts are deadlines checked by the worker's sweeper (``check_timeout``), not timers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from guichet.errors import (
    GuichetError,
    NoHealthyUpstream,
    PayloadTooLarge,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from guichet.plugins import runner
from guichet.plugins.request import ResponseHead
from guichet.server import headers as H
from guichet.server.responses import REQUEST_IDS, status_line
from guichet.server.states import CONNECTING, DONE, HEAD, QUEUED, RESPONDING, SENT
from guichet.server.upstream import UpstreamConnection
from guichet.server.upstream_head import build_upstream_head

__all__ = ["Exchange", "CONNECTING", "DONE", "HEAD", "QUEUED", "RESPONDING", "SENT"]

if TYPE_CHECKING:
    from guichet.server.protocol import ClientProtocol
    from guichet.snapshot import CompiledService, Snapshot

log = logging.getLogger("guichet.proxy")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})
REPLAY_LIMIT = 64 * 1024
BUFFER_HIGH = 256 * 1024

# response body modes toward the client
NO_BODY, RAW, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3


class Exchange:
    """One request and its answer. Attributes default to the class values below; only
    what a request actually changes is written to the instance (cheap to create)."""

    state = HEAD
    url = b""
    method = b""
    http10 = False
    keep_alive = True
    host: bytes | None = None
    content_length: int | None = None
    chunked = False
    has_body = False
    conn_names: list[bytes] | None = None  # Connection header values, when sent
    expect_continue = False
    ws_key: bytes | None = None
    body_pending: list[bytes] | None = None  # body bytes not yet sent upstream
    body_pending_size = 0
    replay: list[bytes] | None = None  # the body, kept for a retry while small
    replay_size = 0
    replayable = True
    body_complete = False
    body_received = 0
    snapshot: "Snapshot | None" = None
    match: Any = None
    service: "CompiledService | None" = None
    path = ""
    raw_path = ""
    query = ""
    tried: tuple[Any, ...] = ()
    upstream: UpstreamConnection | None = None
    peer: Any = None
    resp_status = 0
    resp_headers: list[tuple[bytes, bytes]] = []  # only filled for a 101 (read-only default)
    resp_mode = NO_BODY
    resp_started = False
    out: list[bytes] | None = None
    deadline = 0.0
    request_id: str | None = None
    _lazy_headers: dict[str, str] | None = None
    interim = False
    set_cookie: tuple[str, str, str] | None = None
    peer_held = False
    backoff_timer: asyncio.TimerHandle | None = None  # a retry waiting for its backoff
    # plugins (only set on routes that have some)
    chain: Any = None  # guichet.plugins.chain.Chain
    req: Any = None  # guichet.plugins.request.Request
    resp_head: ResponseHead | None = None
    logged = False
    holding_body = False  # a plugin waits for the whole body (Request.read_body)
    body_limit = 0  # a plugin's limit on the body (Request.limit_body); 0: none

    def __init__(self, client: "ClientProtocol") -> None:
        self.client = client
        self.headers: list[tuple[bytes, bytes, bytes]] = []  # (lower-case name, name, value)

    # ------------------------------------------------------------------ request body
    def body_chunk(self, data: bytes) -> None:
        self.body_received += len(data)
        limit = self.client.rt.settings.client_max_body_size
        if limit and self.body_received > limit:
            self.client.fail(PayloadTooLarge.status, PayloadTooLarge.message, self)
            return
        if self.body_limit and self.body_received > self.body_limit:
            # a plugin's limit (request-size-limiting): Kong's message for it
            self.client.fail(413, "Request size limit exceeded", self)
            return
        if self.replayable:
            if self.replay_size + len(data) <= REPLAY_LIMIT:
                if self.replay is None:
                    self.replay = []
                self.replay.append(data)
                self.replay_size += len(data)
            else:
                self.replayable = False
                self.replay = None
        up = self.upstream
        if up is not None and self.state >= SENT and up.transport is not None:
            up.transport.write(self._frame(data))
        else:
            if self.body_pending is None:
                self.body_pending = []
            self.body_pending.append(data)
            self.body_pending_size += len(data)
            if self.holding_body:
                self.req.body_progress()
            elif self.body_pending_size > BUFFER_HIGH:
                self.client.pause_reading_for_upstream()

    def body_done(self) -> None:
        self.body_complete = True
        if self.holding_body:
            self.holding_body = False
            self.req.body_progress()
        up = self.upstream
        if up is not None and self.state >= SENT:
            # the read timeout counts from here (the request is wholly sent)
            self.deadline = up.clock.now + up.read_timeout
            if self.chunked and up.transport is not None:
                up.transport.write(b"0\r\n\r\n")

    def _frame(self, data: bytes) -> bytes:
        if self.chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    # ------------------------------------------------------------------ hash input (balancer)
    @property
    def consumer_id(self) -> str | None:
        req = self.req
        if req is None or req.consumer is None:
            return None
        return req.consumer.id

    @property
    def client_ip(self) -> str:
        """The peer, or what a trusted peer says in ``real_ip_header`` (Kong's realip)."""
        client = self.client
        if client.trusted:
            value = self.lazy_headers().get(client.rt.settings.real_ip_header)
            if value:
                return value.split(",")[-1].strip()
        return client.peer_ip

    def header(self, name: str) -> str | None:
        return self.lazy_headers().get(name.lower())

    def cookie(self, name: str) -> str | None:
        raw = self.header("cookie")
        if not raw:
            return None
        for part in raw.split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
        return None

    def query_arg(self, name: str) -> str | None:
        """Kong's rule for hashing: repeated arguments sorted and joined by ",". """
        values = parse_qs(self.query, keep_blank_values=True).get(name)
        if not values:
            return None
        return values[0] if len(values) == 1 else ",".join(sorted(values))

    def uri_capture(self, name: str) -> str | None:
        caps = getattr(self.match, "uri_captures", None) or {}
        value = caps.get(name)
        return None if value is None else str(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The request's headers as a mapping for the router (lower-case names; repeated
        fields joined with ", "), built only when a route asks."""
        return self.lazy_headers().get(name, default)

    def lazy_headers(self) -> dict[str, str]:
        d = self._lazy_headers
        if d is None:
            d = {}
            for lname, _, value in self.headers:
                key = lname.decode("latin-1")
                v = value.decode("latin-1")
                d[key] = d[key] + ", " + v if key in d else v
            self._lazy_headers = d
        return d

    # ------------------------------------------------------------------ upstream selection
    def start_upstream(self) -> None:
        """Pick a target and send, from the pool when a connection is idle there."""
        svc = self.service
        assert svc is not None
        sel = svc.balancer.select(self, self.tried)
        if sel is None:
            exc = NoHealthyUpstream()
            self.client.respond_error(self, exc.status, exc.message,
                                      extra=((b"Retry-After", b"%d" % svc.balancer.retry_after()),))
            return
        peer = sel.peer
        self.peer = peer
        if peer.health is not None:
            peer.health.picked()
        if sel.set_cookie is not None:
            self.set_cookie = sel.set_cookie
        self.tried += (peer,)
        if self.ws_key is None:
            conn = self.client.rt.pool.acquire(svc.pool_key(peer))
            if conn is not None:
                self.attach(conn)
                return
        self.state = CONNECTING
        self.client.rt.loop.create_task(self._connect(peer))

    async def _connect(self, peer: Any) -> None:
        svc = self.service
        assert svc is not None
        rt = self.client.rt
        try:
            conn = await rt.pool.connect(svc.pool_key(peer), svc.connect_timeout, rt.loop, svc.verify)
        except asyncio.TimeoutError:
            svc.balancer.mark_refused(peer)
            if peer.health is not None:
                peer.health.timed_out()
            self._connect_failed(UpstreamTimeout)
            return
        except (OSError, ValueError) as exc:
            log.info("connect to %s:%s failed: %s", peer.ip, peer.port, exc)
            svc.balancer.mark_refused(peer)
            if peer.health is not None:
                peer.health.connect_failed()
            self._connect_failed(UpstreamConnectError)
            return
        if self.state != CONNECTING or self.client.closed:
            conn.close() if self.ws_key else rt.pool.release(conn, rt.now)
            return
        self.attach(conn)

    def _connect_failed(self, error: type[GuichetError]) -> None:
        if self.state != CONNECTING:
            return
        if len(self.tried) <= self.service.retries:  # type: ignore[union-attr]
            self._retry()
        else:
            self.client.respond_error(self, error.status, error.message)

    def attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        rt = self.client.rt
        svc = self.service
        conn.expect_response(rt, svc.read_timeout)  # type: ignore[union-attr]
        if self.client.write_paused:
            conn.pause_reading()  # the client is still slow: keep the pair in step
        if not self.peer_held and svc.counts_inflight:  # type: ignore[union-attr]
            self.peer_held = True
            svc.balancer.acquire(self.peer)  # type: ignore[union-attr]
        conn.exchange = self
        self.state = SENT
        self.deadline = rt.now + svc.read_timeout  # type: ignore[union-attr]
        transport = conn.transport
        assert transport is not None
        head = build_upstream_head(self.client, self)
        if self.body_pending:
            parts = [head]
            for chunk in self.body_pending:
                parts.append(self._frame(chunk))
            if self.body_complete and self.chunked:
                parts.append(b"0\r\n\r\n")
            transport.write(b"".join(parts))
            self.body_pending = None
            self.body_pending_size = 0
            self.client.resume_reading_for_upstream()
        else:
            if self.body_complete and self.chunked:
                head += b"0\r\n\r\n"
            transport.write(head)

    # ------------------------------------------------------------------ response
    def resp_headers_complete(self, status: int, head: bytes) -> None:
        """The upstream's head is in (raw bytes, validated by llhttp): write the client's."""
        if status < 200 and (status >= 100):
            if status == 101:
                self.resp_status = 101
                self.resp_headers = H.parse_header_lines(head)
                if self.peer is not None and self.peer.health is not None:
                    self.peer.health.responded(101)
                return  # the upgrade path (resp_upgrade) takes over
            # Interim response (100 Continue, 103): the gateway handles Expect itself.
            self.interim = True
            return
        self.resp_status = status
        kept, cl, te, conns, via, differing_cl = H.parse_response_head(head)
        if cl is not None and (te is not None or differing_cl or not cl.isdigit()):
            raise UpstreamProtocolError("invalid or ambiguous Content-Length")
        peer = self.peer
        if peer is not None and peer.health is not None:
            peer.health.responded(status)
        if conns is not None:
            for value in conns:
                extra = H.connection_extra_names(value)
                if extra:
                    kept = H.drop_named(kept, extra)
        head_req = self.method == b"HEAD"
        if head_req or status == 204 or status == 304:
            mode = NO_BODY
            framing = b"Content-Length: " + cl + b"\r\n" if (cl is not None and status != 204) else b""
        elif cl is not None:
            mode = RAW
            framing = b"Content-Length: " + cl + b"\r\n"
        elif self.http10:
            mode = UNTIL_CLOSE
            framing = b""
            self.keep_alive = False
        else:
            mode = CHUNKED
            framing = b"Transfer-Encoding: chunked\r\n"
        chain = self.chain
        if chain is not None and (chain.response_headers or chain.response_body):
            status, kept, mode, framing = self._plugin_response_head(status, kept, mode, framing)
        self.resp_mode = mode
        # The upstream may answer before the whole request arrived: the rest of the
        # request body cannot be told from a next request, so close after this one.
        if not self.body_complete or self.client.rt.draining:
            self.keep_alive = False
        if self.keep_alive:
            tail = b"Connection: keep-alive\r\n\r\n" if self.http10 else b"\r\n"
        else:
            tail = b"Connection: close\r\n\r\n"
        if self.set_cookie is None and via is None:
            extra_lines = b"Via: 1.1 guichet\r\n"
        else:
            extra_lines = b"Via: " + via + b", 1.1 guichet\r\n" if via else b"Via: 1.1 guichet\r\n"
            if self.set_cookie is not None:
                # consistent-hashing on a cookie the client did not have yet (Kong does this)
                name, value, path = self.set_cookie
                extra_lines += f"Set-Cookie: {name}={value}; Path={path}; Same-Site=Lax; HttpOnly\r\n".encode("latin-1")
        self.out = [b"".join((status_line(status), kept, framing, extra_lines, tail))]
        self.resp_started = True
        self.state = RESPONDING
        if head_req and self.upstream is not None:
            # httptools cannot be told that a HEAD response has no body: finish now and
            # give the connection a fresh parser for its next response.
            conn = self.upstream
            self.flush_client()
            reuse = conn.parser.should_keep_alive() and self.body_complete
            conn.reset_parser()
            self._finish_upstream(conn, reuse=reuse)
            self.client.exchange_done(self)

    def _plugin_response_head(self, status: int, kept: bytes, mode: int,
                              framing: bytes) -> tuple[int, bytes, int, bytes]:
        """Let response_headers plugins change the head; with response_body plugins the
        body's length is unknown in advance, so it goes chunked (or until close)."""
        chain = self.chain
        pairs = H.header_pairs(kept)
        before = tuple(pairs)
        head = ResponseHead(status, pairs)
        if chain.response_headers:
            runner.run_response_headers(self, head)
        else:
            self.resp_head = head
        if head.changed or head.status != status:
            status = self.resp_status = head.status
            headers = head.headers
            n = len(before)
            if headers is pairs and tuple(headers[:n]) == before:
                # only appended to (rate limits, cors...): the upstream's lines stay as
                # they came, the new ones are rendered (and checked) after them
                kept += H.render_pairs(headers[n:])
            else:
                kept = H.render_pairs(headers)
        if chain.response_body and mode == RAW:
            if self.http10:
                mode, framing = UNTIL_CLOSE, b""
                self.keep_alive = False
            else:
                mode, framing = CHUNKED, b"Transfer-Encoding: chunked\r\n"
        return status, kept, mode, framing

    def resp_body(self, data: bytes) -> None:
        if self.interim or self.resp_mode == NO_BODY or self.out is None:
            return
        if self.chain is not None and self.chain.response_body:
            data = runner.run_response_body(self, data, False)
            if not data:
                return
        if self.resp_mode == CHUNKED:
            self.out.append(b"%x\r\n" % len(data))
            self.out.append(data)
            self.out.append(b"\r\n")
        else:
            self.out.append(data)

    def resp_complete(self, upstream_keep_alive: bool) -> None:
        if self.interim:
            self.interim = False
            return
        if self.state != RESPONDING:
            return
        if self.chain is not None and self.chain.response_body and self.resp_mode != NO_BODY:
            tail = runner.run_response_body(self, b"", True)
            if tail and self.out is not None:
                self.out.append(b"%x\r\n%s\r\n" % (len(tail), tail)
                                if self.resp_mode == CHUNKED else tail)
        if self.resp_mode == CHUNKED and self.out is not None:
            self.out.append(b"0\r\n\r\n")
        self.flush_client()
        conn = self.upstream
        if conn is not None:
            self._finish_upstream(conn, reuse=upstream_keep_alive and self.body_complete)
        self.client.exchange_done(self)

    def resp_upgrade(self, rest: bytes) -> None:
        """The upstream switched protocols (101): hand both connections to a tunnel."""
        conn = self.upstream
        if conn is None or self.ws_key is None or self.resp_status != 101:
            self.upstream_protocol_error("unexpected protocol switch")
            return
        self.client.start_tunnel(self, conn, rest)

    def release_peer(self) -> None:
        """End the in-flight count of the current target (least-connections)."""
        if self.peer_held:
            self.peer_held = False
            self.service.balancer.release(self.peer)  # type: ignore[union-attr]

    def _finish_upstream(self, conn: UpstreamConnection, reuse: bool) -> None:
        self.upstream = None
        self.release_peer()
        if reuse and not conn.closed:
            self.client.rt.pool.release(conn, self.client.rt.now)
        else:
            conn.close()

    def flush_client(self) -> None:
        out = self.out
        if out:
            transport = self.client.transport
            if transport is not None and not transport.is_closing():
                transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    # ------------------------------------------------------------------ failures
    def drop_upstream(self) -> None:
        """Let go of the target and close the upstream connection (it is not reusable)."""
        if self.backoff_timer is not None:
            self.backoff_timer.cancel()  # the client went away while a retry waited
            self.backoff_timer = None
        self.release_peer()
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.close()

    def _give_up(self, error: type[GuichetError]) -> None:
        self.drop_upstream()
        if self.resp_started:
            self.client.abort()
        else:
            self.client.respond_error(self, error.status, error.message)

    def upstream_protocol_error(self, reason: str) -> None:
        log.warning("upstream %s sent an invalid response: %s", self.peer and self.peer.address, reason)
        peer = self.peer
        if peer is not None and peer.health is not None and not self.resp_started:
            peer.health.responded(0)
        self._give_up(UpstreamProtocolError)

    def upstream_lost(self, exc: Exception | None) -> None:
        conn = self.upstream
        self.upstream = None
        self.release_peer()
        if self.state == DONE:
            return
        if self.resp_started:
            if self.resp_mode == UNTIL_CLOSE:
                self.flush_client()
                self.client.exchange_done(self)
            else:
                self.flush_client()
                self.client.abort()
            return
        peer = self.peer
        if peer is not None and peer.health is not None and (conn is None or conn.requests == 0):
            peer.health.lost()
        if self.may_retry():
            self.resp_headers = Exchange.resp_headers
            self.state = QUEUED
            self._retry()
            return
        self.client.respond_error(self, UpstreamReset.status, UpstreamReset.message)

    def _retry(self) -> None:
        """Try again (``tried`` steers the balancer elsewhere), at once or after the
        service's backoff."""
        backoff = self.service.backoff  # type: ignore[union-attr]
        if backoff is None:
            self.start_upstream()
            return
        self.state = CONNECTING
        delay = backoff.delay(len(self.tried))
        self.backoff_timer = self.client.rt.loop.call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self.backoff_timer = None
        if self.state == CONNECTING and not self.client.closed:
            self.start_upstream()

    def may_retry(self) -> bool:
        if len(self.tried) > self.service.retries:  # type: ignore[union-attr]
            return False
        if self.method not in IDEMPOTENT or self.ws_key is not None:
            return False
        if not self.has_body:
            return True
        if not self.replayable or not self.body_complete:
            return False
        self.body_pending = list(self.replay or ())
        self.body_pending_size = self.replay_size
        return True

    def timed_out(self) -> None:
        peer = self.peer
        if peer is not None and peer.health is not None and not self.resp_started:
            peer.health.timed_out()
        self._give_up(UpstreamTimeout)

    def rid(self) -> str:
        if self.request_id is None:
            self.request_id = REQUEST_IDS.next()
        return self.request_id


