"""The client side of the data plane: one ``asyncio.Protocol`` per client connection.

Connection rules (GUARANTEES.md §1–3, §6, §9):

* Bytes are parsed by httptools (llhttp, strict) plus the checks below; a request is
  rejected before any byte of it is forwarded, and a rejected request closes the
  connection: nothing pipelined after it is processed.
* Request line ≤ ``max_request_line`` (414); header section ≤ ``max_header_size`` and
  ≤ ``max_headers`` fields (431).
* 400 for: Content-Length with Transfer-Encoding; non-digit or differing Content-Length;
  Transfer-Encoding other than exactly ``chunked``; Transfer-Encoding on HTTP/1.0; control
  characters in values; missing or repeated Host; a target that is not origin-form,
  absolute-form or ``*`` (for OPTIONS). CONNECT and TRACE: 405.
* Requests are answered in order; a pipelined request waits (its body buffered up to a
  bound, then reading pauses) until the one before it is answered.
* Deadlines: the head within ``client_header_timeout`` (408), the body idle for at most
  ``client_body_timeout`` (408), a keep-alive connection idle for ``keepalive_timeout``
  (closed silently). The worker's sweeper calls :meth:`check_timeout` twice a second.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import orjson

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from guichet import websocket
from guichet.errors import (
    BadRequest,
    ClientError,
    HeaderFieldsTooLarge,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
    URITooLong,
    VersionNotSupported,
)
from guichet.server import headers as H
from guichet.plugins import runner
from guichet.plugins.request import ResponseHead
from guichet.server.exchange import DONE, HEAD, QUEUED, RESPONDING, SENT, Exchange
from guichet.server.responses import error_response, render_local
from guichet.uri import parse_target

if TYPE_CHECKING:
    from guichet.server.upstream import UpstreamConnection
    from guichet.worker import Runtime

log = logging.getLogger("guichet.server")

# what the read deadline means when it passes
R_NONE, R_IDLE, R_HEAD, R_BODY = 0, 1, 2, 3
_SPECIAL = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"expect"})
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}


class ClientProtocol(asyncio.Protocol):
    def __init__(self, rt: "Runtime", scheme: str, port: int) -> None:
        self.rt = rt
        self.max_head = rt.settings.max_header_size
        self.max_headers = rt.settings.max_headers
        self.scheme = scheme
        self.scheme_b = scheme.encode()
        self.port_b = str(port).encode()
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.peer_ip = ""
        self.trusted = False
        self.sni: str | None = None
        self.current: Exchange | None = None  # being parsed
        self.active: Exchange | None = None  # being answered
        self.queue: list[Exchange] = []
        self.closed = False
        self.read_deadline = 0.0
        self.read_kind = R_NONE
        self.head_size = 0
        self.header_count = 0
        self.pending_error: tuple[int, str] | None = None
        self.paused_for_upstream = False
        self.reading_paused = False
        self.paused_since = 0.0
        self.paused_for_pipeline = False
        self.write_paused = False
        self.tunnel = None
        self.tunnel_exchange: Exchange | None = None  # its log phase runs when the tunnel ends
        self.ws_early: list[bytes] = []
        self.upgrading = False
        self.to_dispatch: Exchange | None = None

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.peer_b = self.peer_ip.encode()
        self.trusted = self.peer_ip in self.rt.trusted
        self.forwarded_block = (b"X-Forwarded-For: " + self.peer_b + b"\r\nX-Real-IP: " + self.peer_b
                                + b"\r\nX-Forwarded-Proto: " + self.scheme_b
                                + b"\r\nX-Forwarded-Port: " + self.port_b + b"\r\n")
        self.block_host: bytes | None = None
        self.block = b""
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.sni = self.rt.sni_of(sslobj)
        self.read_deadline = self.rt.now + self.rt.settings.client_header_timeout
        self.read_kind = R_IDLE
        self.rt.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.rt.connection_closed(self)
        if self.tunnel is not None:
            self.tunnel.client_lost()
            self.tunnel = None
        if self.tunnel_exchange is not None:
            _plugins_done(self.tunnel_exchange)  # the WebSocket's request ends with it
            self.tunnel_exchange = None
        ex = self.active
        self.active = None
        self.queue.clear()
        if ex is not None and ex.state != DONE:
            ex.state = DONE
            ex.drop_upstream()
            if ex.req is not None:
                _plugins_done(ex)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self.upgrading:
            self.ws_early.append(data)
            return
        if self.closed or self.pending_error is not None:
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upg:
            self._upgrade(data[upg.args[0]:])
        except HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, ClientError):
                self.fail(cause.status, cause.message)
            elif cause is not None and not isinstance(cause, HttpParserError):
                log.error("internal error while handling a request", exc_info=cause)
                self.fail(500, "An unexpected error occurred")
            else:
                self.fail(400, "Bad request")
        except Exception:  # a fault of ours: answer 500, never a traceback to the client
            log.exception("internal error while handling a request")
            self.fail(500, "An unexpected error occurred")
        # Dispatch only once this packet is parsed: a request whose first body bytes are
        # malformed in the same packet is refused before any byte of it went upstream.
        ex = self.to_dispatch
        if ex is not None:
            self.to_dispatch = None
            if ex.state == HEAD and not self.closed and self.active is ex:
                try:
                    self.dispatch(ex)
                except Exception:  # a fault of ours (a plugin, later): 500 for this request
                    log.exception("internal error while routing %r", ex.url[:200])
                    self.respond_error(ex, 500, "An unexpected error occurred", close=True)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.client_pause_writing()
            return
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.client_resume_writing()
            return
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    def _apply_reading(self) -> None:
        """Reading pauses for several reasons at once; it resumes when none is left."""
        want_paused = (self.paused_for_upstream or self.paused_for_pipeline or self.upgrading
                       or self.pending_error is not None)
        if want_paused != self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = want_paused
            if want_paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def pause_reading_for_upstream(self) -> None:
        if not self.paused_for_upstream:
            self.paused_for_upstream = True
            self.paused_since = self.rt.now
            self._apply_reading()

    def resume_reading_for_upstream(self) -> None:
        if self.paused_for_upstream:
            self.paused_for_upstream = False
            if self.read_kind == R_BODY:
                self.read_deadline = self.rt.now + self.rt.settings.client_body_timeout
            self._apply_reading()

    # ------------------------------------------------------------------ httptools callbacks
    def on_message_begin(self) -> None:
        self.current = Exchange(self)
        self.head_size = 0
        self.header_count = 0
        if self.read_kind != R_HEAD:
            self.read_kind = R_HEAD
            self.read_deadline = self.rt.now + self.rt.settings.client_header_timeout

    def on_url(self, url: bytes) -> None:
        ex = self.current
        ex.url += url  # type: ignore[union-attr]
        if len(ex.url) > self.rt.settings.max_request_line:  # type: ignore[union-attr]
            raise URITooLong()

    def on_header(self, name: bytes, value: bytes) -> None:
        # Names and values were validated by llhttp in strict mode (tokens only in names;
        # no NUL, CR, LF or other control but HTAB in values; no obs-fold; no space before
        # the colon); tests/integration/test_parsing_guarantees.py holds it to that.
        self.head_size += len(name) + len(value) + 4
        self.header_count += 1
        if self.head_size > self.max_head or self.header_count > self.max_headers:
            raise HeaderFieldsTooLarge()
        ex = self.current
        if ex.method:  # type: ignore[union-attr]
            return  # a trailer field (after a chunked body): counted, checked, dropped
        lname = name.lower()
        ex.headers.append((lname, name, value))  # type: ignore[union-attr]
        if lname in _SPECIAL:
            if lname == b"host":
                if ex.host is not None:  # type: ignore[union-attr]
                    raise BadRequest("Bad request: repeated Host header")
                ex.host = value.strip()  # type: ignore[union-attr]
            elif lname == b"content-length":
                v = value.strip()
                if not v.isdigit():
                    raise BadRequest("Bad request: invalid Content-Length")
                if ex.content_length is not None and ex.content_length != int(v):  # type: ignore[union-attr]
                    raise BadRequest("Bad request: differing Content-Length values")
                ex.content_length = int(v)  # type: ignore[union-attr]
            elif lname == b"transfer-encoding":
                if ex.chunked or value.strip().lower() != b"chunked":  # type: ignore[union-attr]
                    raise BadRequest("Bad request: unsupported Transfer-Encoding")
                ex.chunked = True  # type: ignore[union-attr]
            elif lname == b"connection":
                if ex.conn_names is None:  # type: ignore[union-attr]
                    ex.conn_names = []  # type: ignore[union-attr]
                ex.conn_names.append(value)  # type: ignore[union-attr]
            elif lname == b"expect":
                ex.expect_continue = value.strip().lower() == b"100-continue"  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        ex = self.current
        assert ex is not None
        parser = self.parser
        ex.method = method = parser.get_method()
        version = parser.get_http_version()
        if version != "1.1":
            if version[0] != "1":
                raise VersionNotSupported()
            ex.http10 = version == "1.0"
        ex.keep_alive = parser.should_keep_alive()
        if ex.host is None:
            raise BadRequest("Bad request: missing Host header")
        if method in (b"CONNECT", b"TRACE"):
            raise MethodNotAllowed()
        if ex.chunked:
            if ex.content_length is not None:
                raise BadRequest("Bad request: Content-Length with Transfer-Encoding")
            if ex.http10:
                raise BadRequest("Bad request: Transfer-Encoding on HTTP/1.0")
            ex.has_body = True
        elif ex.content_length:
            ex.has_body = True
            limit = self.rt.settings.client_max_body_size
            if limit and ex.content_length > limit:
                raise PayloadTooLarge()
        if parser.should_upgrade():
            ex.ws_key = websocket.check_upgrade_request(
                method, 1, 0 if ex.http10 else 1, [(n, v) for n, _, v in ex.headers])
            if ex.ws_key is not None:
                ex.keep_alive = False
        if ex.has_body:
            self.read_kind = R_BODY
            self.read_deadline = self.rt.now + self.rt.settings.client_body_timeout
        else:
            ex.body_complete = True
            self.read_kind = R_NONE
        if self.active is None:
            self.active = self.to_dispatch = ex
        else:
            ex.state = QUEUED
            self.queue.append(ex)

    def on_body(self, body: bytes) -> None:
        self.read_deadline = self.rt.now + self.rt.settings.client_body_timeout
        ex = self.current
        if ex is not None and ex.state != DONE:
            ex.body_chunk(body)

    def on_message_complete(self) -> None:
        ex = self.current
        self.current = None
        if self.read_kind == R_BODY:
            self.read_kind = R_NONE
        if self.active is None and not self.queue and not self.closed:
            self.read_kind = R_IDLE
            self.read_deadline = self.rt.now + self.rt.settings.keepalive_timeout
        if ex is not None:
            if ex.state == DONE:
                ex.body_complete = True
            else:
                ex.body_done()
        if self.queue and not self.paused_for_pipeline:
            # A pipelined request is waiting: read no further until it is answered.
            self.paused_for_pipeline = True
            self._apply_reading()

    # ------------------------------------------------------------------ routing
    def dispatch(self, ex: Exchange) -> None:
        """Route a request whose head is complete and start its upstream exchange."""
        rt = self.rt
        snap = rt.snapshot
        ex.snapshot = snap
        try:
            ex.raw_path, ex.query, ex.path = parse_target(ex.url)
        except BadRequest as exc:
            self.respond_error(ex, 400, exc.message, close=True)
            return
        if ex.path == "*":
            if ex.method != b"OPTIONS":
                self.respond_error(ex, 400, "Bad request: invalid request target", close=True)
            else:
                self.respond_error(ex, 404, "no Route matched with those values")
            return
        host = ex.host.decode("latin-1")  # type: ignore[union-attr]
        method = _METHODS.get(ex.method) or ex.method.decode("latin-1")
        match = snap.router.match(method, host, ex.path, ex, self.scheme, self.sni)
        if match is None:
            self.respond_error(ex, 404, "no Route matched with those values")
            return
        ex.match = match
        if match.redirect_https:
            self._redirect_https(ex, match.route.https_redirect_status_code)
            return
        svc = snap.services.get(match.route.service_id)
        if svc is None:
            self.respond_error(ex, 503, "no Service found with those values")
            return
        ex.service = svc
        chains = snap.chains
        if chains.active:
            chain = chains.by_route.get((match.route.id, self.scheme))
            if chain is None:
                chain = chains.for_route(match.route, self.scheme)
            if chain.plugins:
                runner.start(ex, chain)
                return
        self.proceed(ex)

    def proceed(self, ex: Exchange) -> None:
        """The request may go: on to the balancer and the upstream."""
        if ex.expect_continue:
            self._send_continue(ex)
        ex.state = QUEUED
        ex.start_upstream()

    def _send_continue(self, ex: Exchange) -> None:
        if ex.expect_continue and ex.has_body and not ex.http10 and not ex.body_complete:
            ex.expect_continue = False
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def hold_body(self, ex: Exchange) -> None:
        """A plugin waits for the whole request body before the request goes on."""
        ex.holding_body = True
        self._send_continue(ex)
        self.resume_reading_for_upstream()

    def _redirect_https(self, ex: Exchange, code: int) -> None:
        if code == 426:
            self.respond_error(ex, 426, "Please use HTTPS protocol",
                               extra=((b"Connection", b"Upgrade"), (b"Upgrade", b"TLS/1.2, HTTP/1.1")))
            return
        location = b"https://" + ex.host.split(b":")[0] + ex.url  # type: ignore[union-attr]
        self.respond_error(ex, code, "Moved", extra=((b"Location", location),))

    # ------------------------------------------------------------------ answers
    def respond_error(self, ex: Exchange, status: int, message: str, *,
                      extra: tuple[tuple[bytes, bytes], ...] = (), close: bool = False) -> None:
        if ex.resp_started:
            self.abort()
            return
        chain = ex.chain
        if chain is not None and chain.response_headers:
            rid = ex.rid()
            headers = [("Content-Type", "application/json; charset=utf-8"), ("X-Request-Id", rid)]
            headers += [(n.decode("latin-1"), v.decode("latin-1")) for n, v in extra]
            self.respond_local(ex, status, headers, orjson.dumps({"message": message,
                                                                  "request_id": rid}), close=close)
            return
        keep = ex.keep_alive and ex.body_complete and not close and not self.rt.draining
        ex.keep_alive = keep
        ex.resp_status = status
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(error_response(status, message, ex.rid(), keep_alive=keep,
                                                extra=extra, head_only=ex.method == b"HEAD"))
        ex.resp_started = True
        self.exchange_done(ex)

    def respond_local(self, ex: Exchange, status: int, headers: list[tuple[str, str]],
                      body: bytes, *, close: bool = False) -> None:
        """An answer made by the gateway (a plugin's, or an error on a route with
        response_headers plugins): those plugins see and may change its head."""
        if ex.resp_started:
            self.abort()
            return
        head = ResponseHead(status, headers, local=True)
        if ex.chain is not None and ex.chain.response_headers:
            runner.run_response_headers(ex, head)
        else:
            ex.resp_head = head
        keep = ex.keep_alive and ex.body_complete and not close and not self.rt.draining
        ex.keep_alive = keep
        ex.resp_status = head.status
        try:
            data = render_local(head.status, head.headers, body, keep_alive=keep,
                                head_only=ex.method == b"HEAD")
        except ValueError:
            log.error("a plugin set an invalid response header; answering 500")
            data = error_response(500, "An unexpected error occurred", ex.rid(), keep_alive=keep)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        ex.resp_started = True
        self.exchange_done(ex)

    def fail(self, status: int, message: str, ex: Exchange | None = None) -> None:
        """A request is at fault (bad bytes, too large, too slow): refuse it and close.

        ``ex`` is the exchange at fault, by default the one being parsed. When an earlier
        request is still being answered, its answer finishes first, then the refusal.
        """
        if self.closed:
            return
        if ex is None:
            ex = self.current
        active = self.active
        self.pending_error = (status, message)
        if active is not None and active is not ex and active.state != DONE:
            self._apply_reading()
            return
        if active is not None:
            if active.resp_started:
                self.abort()
                return
            active.drop_upstream()
            active.state = DONE
        self._write_pending_error_and_close()

    def _write_pending_error_and_close(self) -> None:
        status, message = self.pending_error or (400, "Bad request")
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(error_response(status, message, keep_alive=False))
            self.transport.close()

    def abort(self) -> None:
        """Something failed after the response started: the only honest signal is a close."""
        self.closed = True
        ex = self.active
        if ex is not None:
            ex.state = DONE
            ex.drop_upstream()
            if ex.req is not None:
                _plugins_done(ex)
        if self.transport is not None:
            self.transport.abort()

    def exchange_done(self, ex: Exchange) -> None:
        if ex.req is not None:
            _plugins_done(ex)
        ex.state = DONE
        if self.active is ex:
            self.active = None
        if self.closed:
            return
        if self.pending_error is not None:
            self._write_pending_error_and_close()
            return
        if not ex.keep_alive:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            return
        if self.queue:
            nxt = self.queue.pop(0)
            self.active = nxt
            if self.paused_for_pipeline and not self.queue:
                self.paused_for_pipeline = False
                self._apply_reading()
            self.dispatch(nxt)
            return
        if self.paused_for_pipeline:
            self.paused_for_pipeline = False
            self._apply_reading()
        if self.current is None:
            self.read_kind = R_IDLE
            self.read_deadline = self.rt.now + self.rt.settings.keepalive_timeout

    # ------------------------------------------------------------------ websocket
    def _upgrade(self, rest: bytes) -> None:
        ex = self.active if self.active is not None and self.active.ws_key else None
        if ex is None:
            # An Upgrade we do not tunnel (h2c, ...): the request was handled as plain
            # HTTP; go on parsing the bytes after it with a fresh parser.
            self.parser = HttpRequestParser(self)
            if rest:
                self.data_received(rest)
            return
        self.upgrading = True
        if rest:
            self.ws_early.append(rest)
        self._apply_reading()

    def start_tunnel(self, ex: Exchange, conn: "UpstreamConnection", upstream_rest: bytes) -> None:
        from guichet.server.tunnel import Tunnel

        lowered = [(n.lower(), v) for n, v in ex.resp_headers]
        reason = websocket.check_upgrade_response(101, lowered, ex.ws_key)  # type: ignore[arg-type]
        if reason is not None:
            log.warning("upstream refused the WebSocket handshake: %s", reason)
            ex.upstream_protocol_error(reason)
            return
        lines = [b"HTTP/1.1 101 Switching Protocols\r\n"]
        for (name, value), (lname, _) in zip(ex.resp_headers, lowered):
            if lname not in H.REWRITTEN_DOWNSTREAM:
                lines.append(name + b": " + value + b"\r\n")
        lines.append(b"Upgrade: websocket\r\nConnection: Upgrade\r\nVia: 1.1 guichet\r\n\r\n")
        assert self.transport is not None
        self.transport.write(b"".join(lines))
        ex.release_peer()
        ex.state = DONE
        if ex.req is not None:
            self.tunnel_exchange = ex
        ex.upstream = None
        conn.exchange = None
        self.active = None
        self.upgrading = False
        self.paused_for_upstream = self.paused_for_pipeline = False
        early = b"".join(self.ws_early)
        self.ws_early = []
        self.tunnel = Tunnel(self, conn, self.rt,
                             allow_rsv1=websocket.allows_rsv1(lowered))
        conn.tunnel = self.tunnel
        self.read_kind = R_NONE
        self.tunnel.start(early, upstream_rest)

    # ------------------------------------------------------------------ timeouts
    def check_timeout(self, now: float) -> None:
        if self.closed:
            return
        if self.tunnel is not None:
            self.tunnel.check_timeout(now)
            return
        ex = self.active
        # The upstream read timeout runs once the request is wholly sent (nginx's rule).
        if ex is not None and ex.state in (SENT, RESPONDING) and ex.body_complete and now > ex.deadline:
            if not (ex.state == RESPONDING and self.write_paused):
                ex.timed_out()
                return
        kind = self.read_kind
        if self.paused_for_upstream and ex is not None and ex.service is not None:
            # The upstream is not taking the body: its write timeout applies, not the
            # client's body timeout (the client is waiting on us).
            if now - self.paused_since > ex.service.write_timeout:
                ex.timed_out()
            return
        if kind and now > self.read_deadline:
            if kind == R_IDLE:
                self.closed = True
                if self.transport is not None:
                    self.transport.close()
            else:
                self.fail(RequestTimeout.status, RequestTimeout.message)

    def close_if_idle(self) -> None:
        """Draining: close a keep-alive connection that has nothing in flight."""
        if self.active is None and self.current is None and self.tunnel is None and not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


def _plugins_done(ex: Exchange) -> None:
    """The exchange is over, however it ended: a plugin still waiting for the body stops
    waiting, the log hooks run, and the exchange lets go of its ``Request`` (the two refer
    to each other; without this the cyclic collector would have to free them)."""
    if ex.holding_body:  # only then can a plugin be waiting
        ex.req.abandon()
    if ex.chain.log:
        runner.run_log(ex)
    ex.req = None
