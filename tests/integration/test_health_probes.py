"""Active probes on their own, against in-process servers: what each probe type sends and
how its outcome is classified (no gateway)."""

from __future__ import annotations

import asyncio
import ssl
from types import SimpleNamespace

from test_tls import _cert

from guichet.config.schema import Healthchecks
from guichet.health.probes import ActiveProber
from guichet.health.state import HTTP_FAILURE, SUCCESS, TCP_FAILURE, TIMEOUT, compile_healthchecks
from support.gateway import free_port


def prober(**changes) -> ActiveProber:
    """A prober for Kong's default healthchecks with ``active.x.y`` keys changed."""
    config = Healthchecks().model_dump()
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = config
        for key in path:
            node = node[key]
        node[last] = value
    return ActiveProber(SimpleNamespace(checks=compile_healthchecks(config)))


async def serve(answer: bytes | None, seen: list[bytes], ctx: ssl.SSLContext | None = None):
    async def handle(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        if answer is None:
            await asyncio.sleep(10)  # never answers
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1]


def test_http_probes_send_kongs_request_and_classify_the_status():
    async def run():
        seen: list[bytes] = []
        ok, ok_port = await serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", seen)
        bad, bad_port = await serve(b"HTTP/1.1 500 Oops\r\n\r\n", seen)
        odd, odd_port = await serve(b"HTTP/1.1 418 Teapot\r\n\r\n", seen)
        junk, junk_port = await serve(b"garbage\r\n\r\n", seen)
        silent, silent_port = await serve(None, seen)
        p = prober(**{"active.http_path": "/healthz", "active.timeout": 0.3,
                      "active.headers": {"X-Probe": ["a", "b"]}})
        try:
            assert await p.probe("127.0.0.1", ok_port, "api.internal") == SUCCESS
            assert seen[0] == (b"GET /healthz HTTP/1.0\r\nX-Probe: a\r\nX-Probe: b\r\n"
                               b"Host: api.internal\r\n\r\n")
            assert await p.probe("127.0.0.1", bad_port, "127.0.0.1") == HTTP_FAILURE
            assert await p.probe("127.0.0.1", odd_port, "127.0.0.1") is None  # in no list
            assert await p.probe("127.0.0.1", junk_port, "127.0.0.1") == HTTP_FAILURE
            assert await p.probe("127.0.0.1", silent_port, "127.0.0.1") == TIMEOUT
            assert await p.probe("127.0.0.1", free_port(), "127.0.0.1") == TCP_FAILURE
        finally:
            for server in (ok, bad, odd, junk, silent):
                server.close()

    asyncio.run(run())


def test_tcp_probes_only_connect():
    async def run():
        seen: list[bytes] = []
        server, port = await serve(b"", seen)
        p = prober(**{"active.type": "tcp"})
        try:
            assert await p.probe("127.0.0.1", port, "127.0.0.1") == SUCCESS
            assert await p.probe("127.0.0.1", free_port(), "127.0.0.1") == TCP_FAILURE
            await asyncio.sleep(0.05)
            assert seen == []  # nothing was sent
        finally:
            server.close()

    asyncio.run(run())


def test_https_probes_use_sni_and_verify_unless_told_not_to(tmp_path):
    cert, key = _cert("health.test", ["health.test"])
    (tmp_path / "c.pem").write_text(cert)
    (tmp_path / "k.pem").write_text(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    names: list[str | None] = []
    ctx.sni_callback = lambda sock, name, _ctx: names.append(name)

    async def run():
        seen: list[bytes] = []
        server, port = await serve(b"HTTP/1.1 302 Found\r\n\r\n", seen, ctx)
        try:
            lax = prober(**{"active.type": "https", "active.https_verify_certificate": False,
                            "active.https_sni": "health.test"})
            assert await lax.probe("127.0.0.1", port, "127.0.0.1") == SUCCESS
            assert names == ["health.test"] and b"Host: 127.0.0.1\r\n" in seen[0]
            strict = prober(**{"active.type": "https"})  # self-signed: the handshake fails
            assert await strict.probe("127.0.0.1", port, "health.test") == TCP_FAILURE
            assert names[-1] == "health.test"  # the target's name is the SNI by default
        finally:
            server.close()

    asyncio.run(run())
