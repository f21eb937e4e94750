"""GUARANTEES.md §7-8 and forwarding behaviour through real sockets.

Hop-by-hop headers both ways, X-Forwarded-* and X-Real-IP with and without a trusted peer,
identity headers stripped, Host rewriting, strip_path, Via, keep-alive reuse toward the
upstream, and 64 MiB streamed through in both directions (Content-Length and chunked).
"""

from __future__ import annotations

import hashlib
import time

import pytest

from support import declarative
from support.rawhttp import RawConnection
from support.upstream import pattern_chunks, pattern_sha256

BIG = 64 << 20
FORGED = {
    "X-Real-IP": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "forged.example",
    "X-Forwarded-Port": "9999",
    "X-Forwarded-Path": "/forged",
}
IDENTITY = {
    "X-Consumer-ID": "c1", "X-Consumer-Username": "alice", "X-Consumer-Custom-ID": "a",
    "X-Credential-Identifier": "k", "X-Anonymous-Consumer": "false",
    "X-Anonymous-Groups": "g", "X-Authenticated-Userid": "alice",
    "X-Authenticated-Scope": "admin",
    # look-alikes: CGI/WSGI/PHP read X_Consumer_ID as the same variable as X-Consumer-ID
    "X_Consumer_ID": "c1", "x_consumer-username": "alice", "X-Credential_Identifier": "k",
    "X_Forwarded_For": "6.6.6.6", "X_Real_IP": "6.6.6.6",
}
IDENTITY_PREFIXES = ("x-consumer-", "x-credential-", "x-anonymous-", "x-authenticated-")


def forwarding_config(u1_url: str) -> str:
    return declarative(services=[
        {"name": "plain", "url": u1_url,
         "routes": [{"name": "plain", "paths": ["/"], "strip_path": False}]},
        {"name": "based", "url": u1_url + "/base",
         "routes": [{"name": "strip", "paths": ["/api"]},
                    {"name": "nostrip", "paths": ["/keep"], "strip_path": False},
                    {"name": "preserve", "paths": ["/preserve"], "preserve_host": True}]},
    ])


@pytest.fixture(scope="module")
def gw(module_gateway_factory, upstream_servers):
    return module_gateway_factory(forwarding_config(upstream_servers[0].url),
                                  env={"GUICHET_CLIENT_MAX_BODY_SIZE": str(BIG * 2)})


def echoed_headers(response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


# ---- §7 hop-by-hop ---------------------------------------------------------------------
def test_hop_by_hop_request_headers_removed(gw, upstream):
    request = (b"GET /echo HTTP/1.1\r\nHost: gw.test\r\n"
               b"Connection: keep-alive, X-Hop-A, x-hop-b\r\nX-Hop-A: 1\r\nX-Hop-B: 2\r\n"
               b"Keep-Alive: timeout=77\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n"
               b"Trailer: X-Late\r\nUpgrade: h2c\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n"
               b"X-Keep: yes\r\n\r\n")
    with RawConnection(gw.port) as conn:
        conn.send(request)
        assert conn.read_response().status == 200
    received = upstream.requests[0]
    names = received.header_names()
    for hop in ("x-hop-a", "x-hop-b", "keep-alive", "proxy-connection", "te", "trailer",
                "upgrade", "proxy-authorization", "transfer-encoding"):
        assert hop not in names, f"{hop} reached the upstream"
    for value in received.header_values("connection"):
        assert {t.strip().lower() for t in value.split(",")} <= {"keep-alive", "close"}
    assert received.header("x-keep") == "yes"
    assert b"timeout=77" not in received.raw and b"Zm9vOmJhcg" not in received.raw


def test_hop_by_hop_response_headers_removed(gw, upstream):
    query = ("Connection=X-Hop-B&X-Hop-B=1&Keep-Alive=timeout%3D7%2C%20max%3D77"
             "&Proxy-Connection=keep-alive&Proxy-Authenticate=Basic%20realm%3D%22x%22"
             "&Trailer=X-Late&Upgrade=h2c&X-Keep=yes")
    with RawConnection(gw.port) as conn:
        conn.send(f"GET /response-headers?{query} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
        response = conn.read_response()
    assert response.status == 200
    names = response.header_names()
    for hop in ("x-hop-b", "proxy-connection", "proxy-authenticate", "trailer", "upgrade"):
        assert hop not in names, f"{hop} reached the client"
    assert "timeout=7, max=77" not in response.header_values("keep-alive")
    for value in response.header_values("connection"):
        assert {t.strip().lower() for t in value.split(",")} <= {"keep-alive", "close"}
    assert response.header("x-keep") == "yes"


def test_upgrade_outside_a_websocket_handshake_not_forwarded(gw, upstream):
    request = (b"GET /echo HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\n"
               b"Upgrade: websocket\r\n\r\n")  # no Sec-WebSocket-Key / Version
    with RawConnection(gw.port) as conn:
        conn.send(request)
        response = conn.read_response()
    assert response.status in (200, 400)
    for received in upstream.requests:
        assert "upgrade" not in received.header_names()
        assert all("upgrade" not in v.lower() for v in received.header_values("connection"))


# ---- §8 forwarded identity -------------------------------------------------------------
def forwarded_request(port: int, host: str = "client.example") -> dict[str, list[str]]:
    lines = ["GET /echo?x=1 HTTP/1.1", f"Host: {host}", "X-Forwarded-For: 10.1.1.1"]
    lines += [f"{k}: {v}" for k, v in {**FORGED, **IDENTITY}.items()]
    with RawConnection(port) as conn:
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = conn.read_response()
    assert response.status == 200
    return echoed_headers(response)


def assert_identity_stripped(headers: dict[str, list[str]]) -> None:
    leaked = [name for name in headers
              if name.replace("_", "-").startswith(IDENTITY_PREFIXES)
              or name.replace("_", "-") in ("x-forwarded-for", "x-real-ip") and "_" in name]
    assert not leaked, f"client identity headers reached the upstream: {leaked}"


def test_untrusted_peer_forwarded_headers_overwritten(gw, upstream):
    headers = forwarded_request(gw.port)
    assert headers["x-forwarded-for"] == ["10.1.1.1, 127.0.0.1"]
    assert headers["x-real-ip"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["client.example"]
    assert headers["x-forwarded-port"] == [str(gw.port)]
    assert headers["x-forwarded-path"] == ["/echo"]
    assert_identity_stripped(headers)


def test_forwarded_for_added_when_client_sent_none(gw, upstream, http):
    response = http.get(gw.url + "/echo")
    assert echoed_headers(response)["x-forwarded-for"] == ["127.0.0.1"]


def test_trusted_peer_forwarded_headers_kept(gateway_factory, upstream):
    gw = gateway_factory(forwarding_config(upstream.url),
                         env={"GUICHET_TRUSTED_IPS": "127.0.0.1/32"})
    headers = forwarded_request(gw.port)
    assert headers["x-forwarded-for"][-1].split(",")[-1].strip() == "127.0.0.1"
    assert headers["x-forwarded-for"] == ["10.1.1.1, 127.0.0.1"]
    assert headers["x-real-ip"] == [FORGED["X-Real-IP"]]
    assert headers["x-forwarded-proto"] == ["https"]
    assert headers["x-forwarded-host"] == ["forged.example"]
    assert headers["x-forwarded-port"] == ["9999"]
    assert headers["x-forwarded-path"] == ["/forged"]
    assert_identity_stripped(headers)


def test_untrusted_when_trusted_list_excludes_peer(gateway_factory, upstream):
    gw = gateway_factory(forwarding_config(upstream.url),
                         env={"GUICHET_TRUSTED_IPS": "10.0.0.0/8"})
    headers = forwarded_request(gw.port)
    assert headers["x-real-ip"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["client.example"]


# ---- Host, paths, Via --------------------------------------------------------------------
def test_host_rewritten_to_service_host(gw, upstream, http):
    response = http.get(gw.url + "/echo", headers={"Host": "client.example"})
    assert echoed_headers(response)["host"] in (
        [f"127.0.0.1:{upstream.port}"], ["127.0.0.1"])


def test_preserve_host_keeps_client_host(gw, upstream, http):
    response = http.get(gw.url + "/preserve/x", headers={"Host": "client.example"})
    assert echoed_headers(response)["host"] == ["client.example"]


@pytest.mark.parametrize("path, forwarded", [
    ("/api/things?q=1", "/base/things?q=1"),
    ("/api", "/base"),
    ("/keep/things", "/base/keep/things"),
])
def test_strip_path_and_service_path(gw, upstream, http, path, forwarded):
    response = http.get(gw.url + path)
    assert response.status_code == 200
    assert response.json()["target"] == forwarded


def test_via_added_both_ways_without_version(gw, upstream, http):
    response = http.get(gw.url + "/echo")
    assert response.headers.get_list("via") == ["1.1 guichet"]
    assert echoed_headers(response)["via"] == ["1.1 guichet"]


# ---- keep-alive and streaming ------------------------------------------------------------
def test_upstream_connection_reused_across_sequential_requests(gateway_factory, upstream, http):
    gw = gateway_factory(forwarding_config(upstream.url))
    for i in range(20):
        response = http.get(f"{gw.url}/echo?i={i}")
        assert response.status_code == 200
    assert upstream.connections_accepted == 1
    assert len({r.conn_id for r in upstream.requests}) == 1


def test_64mib_upload_with_content_length(gw, upstream, http):
    body = b"".join(pattern_chunks(BIG))
    response = http.post(gw.url + "/upload", content=body, timeout=20)
    assert response.status_code == 200
    assert response.json()["body_length"] == BIG
    assert response.json()["body_sha256"] == pattern_sha256(BIG)


def test_64mib_upload_chunked(gw, upstream, http):
    response = http.post(gw.url + "/upload", content=pattern_chunks(BIG), timeout=20)
    assert response.status_code == 200
    assert response.json()["body_length"] == BIG
    assert response.json()["body_sha256"] == pattern_sha256(BIG)
    assert upstream.requests[0].header("content-length") in (None, str(BIG))


@pytest.mark.parametrize("kind", ["bytes", "chunked"])
def test_64mib_download(gw, upstream, http, kind):
    digest = hashlib.sha256()
    length = 0
    with http.stream("GET", f"{gw.url}/{kind}/{BIG}", timeout=20) as response:
        assert response.status_code == 200
        for piece in response.iter_raw():
            digest.update(piece)
            length += len(piece)
    assert length == BIG
    assert digest.hexdigest() == pattern_sha256(BIG)


def test_back_pressure_never_stalls_a_download(gw, upstream):
    """Downloads read a little late make the gateway pause the upstream side; every pause
    must be undone, including when the response ends while paused and the upstream
    connection goes back to the pool (a later request on it must not hang)."""
    size = 8 << 20
    for attempt in range(12):
        with RawConnection(gw.port, timeout=5) as conn:
            conn.send(f"GET /bytes/{size}?attempt={attempt} HTTP/1.1\r\nHost: gw.test\r\n"
                      "Connection: close\r\n\r\n".encode())
            time.sleep(0.05)
            try:
                response = conn.read_response(timeout=5)
            except TimeoutError:
                sent = [(c.conn_id, c.body_bytes_sent) for c in upstream.connections]
                pytest.fail(f"attempt {attempt}: stalled after {len(conn.buffer)} bytes; "
                            f"upstream connections (id, bytes sent): {sent}")
        assert len(response.body) == size
