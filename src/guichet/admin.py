"""The admin listener (master process): ``GET /status`` for now.

Rules (GUARANTEES.md §19):

* It listens on loopback by default (``admin_listen = 127.0.0.1:8001``).
* Bound to anything else, it refuses to start unless an admin token is configured
  (``GUICHET_ADMIN_TOKEN`` or ``GUICHET_ADMIN_TOKEN_FILE``); there is no default
  credential.
* With a token configured, every request must carry it as ``Authorization: Bearer
  <token>`` or ``Kong-Admin-Token: <token>``, compared in constant time; otherwise 401.
* ``/status`` answers 503 until every worker is listening, then 200.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from typing import Any, Callable

import orjson
from httptools import HttpParserError, HttpRequestParser

from guichet.server.responses import error_response, render

log = logging.getLogger("guichet.admin")
Handler = Callable[[bytes, bytes], tuple[int, Any]]
MAX_ADMIN_HEAD = 32 * 1024


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminProtocol(asyncio.Protocol):
    def __init__(self, routes: dict[bytes, Handler], token: str | None) -> None:
        self.routes = routes
        self.token = token.encode() if token else None
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.auth: bytes | None = None
        self.size = 0
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserError:
            self._send(error_response(400, "Bad request", keep_alive=False), close=True)

    def on_message_begin(self) -> None:
        self.url = b""
        self.auth = None
        self.size = 0
        self.body = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.size += len(name) + len(value)
        if self.size > MAX_ADMIN_HEAD:
            raise ValueError("head too large")
        lname = name.lower()
        if lname == b"authorization" and value[:7].lower() == b"bearer ":
            self.auth = value[7:].strip()
        elif lname == b"kong-admin-token":
            self.auth = value.strip()

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) <= 1024 * 1024:
            self.body += body

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()
        method = self.parser.get_method()
        if self.token is not None and (self.auth is None or not hmac.compare_digest(self.auth, self.token)):
            self._send(error_response(401, "Unauthorized", keep_alive=keep,
                                      extra=((b"WWW-Authenticate", b'Bearer realm="guichet-admin"'),)), not keep)
            return
        path = self.url.split(b"?", 1)[0]
        handler = self.routes.get(path)
        if handler is None:
            self._send(error_response(404, "Not found", keep_alive=keep), not keep)
            return
        try:
            status, payload = handler(method, self.body)
        except Exception:
            log.exception("admin handler failed")
            self._send(error_response(500, "An unexpected error occurred", keep_alive=keep), not keep)
            return
        self._send(render(status, orjson.dumps(payload), keep_alive=keep,
                          head_only=method == b"HEAD"), not keep)

    def _send(self, data: bytes, close: bool) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            if close:
                self.transport.close()
