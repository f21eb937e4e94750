"""``guichet demo``: the gateway on an example configuration, in front of built-in upstreams.

Two small echo services (each answers JSON describing the request it received, and says
which instance it is) run in a thread of this process on free loopback ports; the
gateway runs with one worker on ``--port`` (default 8000) and its status listener on
``--admin-port`` (default 8001). Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import tempfile
import threading

import orjson
from httptools import HttpParserError, HttpRequestParser

DEMO_CONFIG = """\
# guichet demo configuration (Kong declarative format 3.0)
_format_version: "3.0"

upstreams:
- name: echo-pool                 # balanced over two instances
  algorithm: round-robin
  targets:
  - target: 127.0.0.1:{port_a}
    weight: 100
  - target: 127.0.0.1:{port_b}
    weight: 100

services:
- name: echo
  url: http://echo-pool/          # the host names the upstream above
  retries: 2
  routes:
  - name: echo-prefix
    paths: ["/echo"]              # /echo/anything -> upstream /anything (strip_path)
  - name: users-by-id
    paths: ['~/users/(?<id>\\d+)$']  # a regex route with a named capture
    strip_path: false
  - name: by-host
    hosts: ["api.example.test", "*.demo.test"]
    strip_path: false
"""


class _EchoProtocol(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserError:
            if self.transport:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1")] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += len(body)

    def on_message_complete(self) -> None:
        payload = orjson.dumps({
            "instance": self.name,
            "method": self.parser.get_method().decode(),
            "path": self.url.decode("latin-1"),
            "headers": self.headers,
            "body_bytes": self.body,
        }, option=orjson.OPT_INDENT_2) + b"\n"
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(payload))
        if self.transport is not None:
            self.transport.write(head + payload)
            if not self.parser.should_keep_alive():
                self.transport.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_echo_upstreams(names: list[str]) -> tuple[list[int], threading.Event]:
    """Run echo services in a background thread; returns their ports and a stop event."""
    ports = [_free_port() for _ in names]
    started = threading.Event()
    stop = threading.Event()

    def serve() -> None:
        loop = asyncio.new_event_loop()
        servers = []
        for name, port in zip(names, ports):
            servers.append(loop.run_until_complete(
                loop.create_server(lambda n=name: _EchoProtocol(n), "127.0.0.1", port)))
        started.set()

        async def wait() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.2)

        loop.run_until_complete(wait())
        for srv in servers:
            srv.close()
        loop.close()

    threading.Thread(target=serve, name="guichet-demo-upstream", daemon=True).start()
    started.wait(5)
    return ports, stop


def run_demo(port: int, admin_port: int) -> int:
    from guichet.master import run_master
    from guichet.settings import load_settings

    ports, stop = start_echo_upstreams(["echo-a", "echo-b"])
    fd, path = tempfile.mkstemp(prefix="guichet-demo-", suffix=".yml")
    with os.fdopen(fd, "w") as fh:
        fh.write(DEMO_CONFIG.format(port_a=ports[0], port_b=ports[1]))
    base = f"http://127.0.0.1:{port}"
    print(f"""guichet demo: the gateway listens on {base} (status: http://127.0.0.1:{admin_port}/status)
configuration: {path}

Try:
  curl -i {base}/echo/hello                      # prefix route, strip_path: the upstream sees /hello
  curl -s {base}/echo/ | grep instance            # run it twice: round-robin over two instances
  curl -i {base}/users/42                        # regex route with a named capture
  curl -i -H 'Host: shop.demo.test' {base}/any   # wildcard host route
  curl -i {base}/nothing-here                    # no route: Kong's 404
  curl -s http://127.0.0.1:{admin_port}/status
Edit the configuration file and save it: the gateway reloads it by itself.
Ctrl-C stops everything.
""", flush=True)
    settings = load_settings(overrides={
        "listen": (f"127.0.0.1:{port}",), "admin_listen": f"127.0.0.1:{admin_port}",
        "workers": 1, "drain_timeout": 2.0})
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_master(settings, path, logging.WARNING)
    finally:
        stop.set()
        os.unlink(path)
