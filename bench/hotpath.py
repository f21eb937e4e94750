"""Python cost of one proxied request, without sockets: ``python3 bench/hotpath.py``.

Drives a real ClientProtocol and UpstreamConnection with in-memory transports: a client
request goes in, the head the gateway writes upstream is checked, an upstream response
goes in, the answer the gateway writes back is checked. What is left is the gateway's
own per-request work (parsing, routing, balancing, head building), which is what the
nginx benchmark's CPU-per-request ratio is most sensitive to. Use it to compare changes
to the hot path; it is not a substitute for bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from guichet.config.loader import load_config_text  # noqa: E402
from guichet.dns import Resolver  # noqa: E402
from guichet.limits.backends import CounterBackends  # noqa: E402
from guichet.limits.node import NodeTable  # noqa: E402
from guichet.plugins.registry import Registry  # noqa: E402
from guichet.server.protocol import ClientProtocol  # noqa: E402
from guichet.server.upstream import UpstreamConnection  # noqa: E402
from guichet.settings import load_settings  # noqa: E402
from guichet.snapshot import compile_snapshot  # noqa: E402
from guichet.worker import Runtime  # noqa: E402

CONFIG = """
_format_version: "3.0"
services:
- name: bench
  url: http://127.0.0.1:9
  routes:
  - name: bare
    paths: ["/"]
"""
# --route auth: the benchmark's plugin route (issue 3's cost target)
AUTH_CONFIG = """
_format_version: "3.0"
services:
- name: bench
  url: http://127.0.0.1:9
  routes:
  - name: auth
    paths: ["/"]
    plugins:
    - name: key-auth
    - name: correlation-id
    - name: ip-restriction
      config: {allow: ["127.0.0.0/8", "::1/128"]}
consumers:
- username: bench
  keyauth_credentials: [{key: bench-key-0123456789abcdef}]
"""
# --route ratelimit: rate-limiting, local policy, on the node table the workers share
RATELIMIT_CONFIG = """
_format_version: "3.0"
services:
- name: bench
  url: http://127.0.0.1:9
  routes:
  - name: limited
    paths: ["/"]
    plugins:
    - name: rate-limiting
      config: {second: 1000000000, minute: 1000000000, policy: local}
"""
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
AUTH_REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
                b"apikey: bench-key-0123456789abcdef\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 21 Nov 2026 23:59:59 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
            b"hello world\n")


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data) -> None:  # type: ignore[override]
        self.out.append(bytes(data))

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 50000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def main(n: int, rounds: int = 3, route: str = "bare") -> None:
    loop = asyncio.get_running_loop()
    settings = load_settings(environ={})
    resolver = Resolver(nameservers=[("127.0.0.1", 53)], hostsfile=None)
    registry = Registry(["bundled"])
    config_text, request = {"auth": (AUTH_CONFIG, AUTH_REQUEST),
                            "ratelimit": (RATELIMIT_CONFIG, REQUEST)}.get(route, (CONFIG, REQUEST))
    table = NodeTable.create(settings.limits_node_slots)
    counters = CounterBackends(NodeTable.open(table.path))
    snap = compile_snapshot(load_config_text(config_text, plugin_schemas=registry.schemas()),
                            resolver, registry=registry, counters=counters)
    await snap.start()
    rt = Runtime(settings, loop, snap, resolver, counters=counters)
    client = ClientProtocol(rt, "http", 8000)
    ct = FakeTransport()
    client.connection_made(ct)
    svc = next(iter(snap.services.values()))
    peer = svc.balancer.addresses[0]
    conn = UpstreamConnection(rt.pool, svc.pool_key(peer))
    ut = FakeTransport()
    conn.connection_made(ut)
    rt.pool.release(conn, loop.time())
    conn.requests = 0
    rt.pool.max_requests = 1 << 60

    def one() -> None:
        client.data_received(request)
        conn.data_received(RESPONSE)

    one()
    assert ut.out and ut.out[0].startswith(b"GET / HTTP/1.1\r\n"), ut.out
    assert b"".join(ct.out).startswith(b"HTTP/1.1 200 OK"), ct.out
    assert b"hello world\n" in b"".join(ct.out)
    for _ in range(rounds):
        ct.out.clear()
        ut.out.clear()
        start = time.process_time()
        for _ in range(n):
            one()
        elapsed = time.process_time() - start
        ct.out.clear()
        ut.out.clear()
        print(f"{elapsed / n * 1e6:.2f} µs per proxied request (CPU time of the Python work, {n} requests)")
    await snap.close()
    await counters.close()
    table.close()
    table.unlink()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--route", choices=["bare", "auth", "ratelimit"], default="bare",
                        help="auth: key-auth + correlation-id + ip-restriction; ratelimit: "
                             "rate-limiting (local policy, two limits) on the node table")
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.n, args.rounds, args.route))
