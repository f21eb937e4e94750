"""WebSocket through the gateway: handshake checks, tunnelling, limits, idle timeout, close."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import serve

from support.gateway import free_port
from support.rawhttp import RawConnection
from support.test_plugins import plugin_env


class WsUpstream:
    """A websockets echo server in a thread; records close codes it received."""

    def __init__(self) -> None:
        self.port = free_port()
        self.closes: list[int | None] = []
        self.paths: list[str] = []
        self._server = serve(self._handler, "127.0.0.1", self.port, max_size=None)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handler(self, ws) -> None:
        self.paths.append(ws.request.path)
        try:
            for message in ws:
                if message == "close-please":
                    ws.close(4000, "bye")
                    break
                ws.send(message)
        except ConnectionClosed:
            pass
        self.closes.append(ws.close_code)

    def stop(self) -> None:
        self._server.shutdown()


@pytest.fixture
def ws_upstream():
    server = WsUpstream()
    yield server
    server.stop()


def _config(port: int) -> str:
    return f"""
_format_version: "3.0"
services:
- name: ws
  url: http://127.0.0.1:{port}
  routes:
  - name: ws
    paths: ["/ws"]
"""


def test_messages_tunnel_both_ways(gateway_factory, ws_upstream):
    gw = gateway_factory(_config(ws_upstream.port))
    with connect(f"ws://127.0.0.1:{gw.port}/ws/chat", open_timeout=5) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        blob = os.urandom(200_000)
        ws.send(blob)
        assert ws.recv(timeout=5) == blob
    assert ws_upstream.paths == ["/chat"]


def test_message_over_limit_closes_1009_both_sides(gateway_factory, ws_upstream):
    gw = gateway_factory(_config(ws_upstream.port), env={"GUICHET_WEBSOCKET_MAX_MESSAGE_SIZE": "1000"})
    # Without compression: the limit applies to the size on the wire (docs/websocket.md).
    with connect(f"ws://127.0.0.1:{gw.port}/ws", open_timeout=5, max_size=None, compression=None) as ws:
        ws.send("x" * 1000)  # exactly the limit passes
        assert ws.recv(timeout=5) == "x" * 1000
        ws.send("y" * 1001)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    deadline = time.monotonic() + 5
    while not ws_upstream.closes and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ws_upstream.closes == [1009]


def test_idle_tunnel_is_closed_1001(gateway_factory, ws_upstream):
    gw = gateway_factory(_config(ws_upstream.port), env={"GUICHET_WEBSOCKET_IDLE_TIMEOUT": "1"})
    with connect(f"ws://127.0.0.1:{gw.port}/ws", open_timeout=5, ping_interval=None) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=6)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001


def test_upstream_close_reaches_client(gateway_factory, ws_upstream):
    gw = gateway_factory(_config(ws_upstream.port))
    with connect(f"ws://127.0.0.1:{gw.port}/ws", open_timeout=5) as ws:
        ws.send("close-please")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4000


def test_invalid_handshake_is_refused_without_reaching_upstream(gateway_factory, ws_upstream):
    gw = gateway_factory(_config(ws_upstream.port))
    with RawConnection(gw.port) as conn:
        conn.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n")
        resp = conn.read_response()
    assert resp.status == 400
    assert ws_upstream.paths == []


def test_upstream_with_wrong_accept_is_a_502(gateway_factory):
    # A fake upstream that answers 101 with a wrong Sec-WebSocket-Accept.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]

    def fake() -> None:
        conn, _ = lsock.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + base64.b64encode(b"0" * 20) + b"\r\n\r\n")
        time.sleep(1)
        conn.close()

    threading.Thread(target=fake, daemon=True).start()
    gw = gateway_factory(_config(port))
    key = base64.b64encode(os.urandom(16))
    with RawConnection(gw.port) as conn:
        conn.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
        resp = conn.read_response()
    assert resp.status == 502
    lsock.close()


def test_log_phase_runs_once_when_the_tunnel_ends(gateway_factory, ws_upstream, tmp_path):
    """A WebSocket's request ends with its tunnel: the log hooks run then (not at the 101,
    not never), once, with status 101 — so a plugin releasing something there (a
    concurrency slot) gets it back."""
    log_path = tmp_path / "requests.log"
    config = _config(ws_upstream.port) + f"""
plugins:
- name: file-log-test
  config: {{path: "{log_path}"}}
"""
    gw = gateway_factory(config, env=plugin_env("FileLog"))
    with connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        time.sleep(0.2)
        assert not log_path.exists() or log_path.read_text() == ""  # still open: not logged
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (log_path.exists() and log_path.read_text()):
        time.sleep(0.05)
    time.sleep(0.2)
    assert log_path.read_text().splitlines() == ["101 ws -"]


def test_an_open_websocket_holds_its_concurrency_slot_until_the_tunnel_closes(
        gateway_factory, ws_upstream):
    config = _config(ws_upstream.port) + """
plugins:
- name: concurrency-limiting
  config: {limit: 1, queue: 0}
"""
    gw = gateway_factory(config)
    handshake = {"Upgrade": "websocket", "Connection": "Upgrade",
                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    with connect(f"ws://127.0.0.1:{gw.port}/ws") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        # the slot is the tunnel's: a plain request and another handshake are refused
        for headers in ({}, handshake):
            with RawConnection(gw.port) as conn:
                lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                conn.send(f"GET /ws HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
                status = conn.read_response().status
            assert status == 503
    deadline = time.monotonic() + 5
    while True:  # the tunnel closed: its log phase gave the slot back
        with RawConnection(gw.port) as conn:
            conn.send(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            status = conn.read_response().status
        if status != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status != 503
