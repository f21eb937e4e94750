"""GUARANTEES.md §1-4 and §6 through real sockets: limits, smuggling, framing, targets.

One gateway serves the module (client_max_body_size 1024): ``/`` goes to upstream u1 and
``/admin`` to upstream u2, both with strip_path false. Malformed requests go over raw
sockets; each smuggling form is followed by a pipelined valid request in the same write,
and the upstreams must see no byte at all.
"""

from __future__ import annotations

import re
import time

import pytest

from support import declarative
from support.rawhttp import RawConnection, exchange
from support.upstream import UpstreamServer

MAX_BODY = 1024
PIPELINED = b"GET /echo?pipelined=1 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
POST = b"POST /echo HTTP/1.1\r\nHost: gw.test\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
GET = b"GET /echo HTTP/1.1\r\nHost: gw.test\r\n"

SMUGGLING = {
    "cl-then-te": POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-then-cl": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "cl-differing": POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl-list-differing": POST + b"Content-Length: 5, 6\r\n\r\nhello!",
    "cl-plus-sign": POST + b"Content-Length: +5\r\n\r\nhello",
    "cl-negative": POST + b"Content-Length: -5\r\n\r\nhello",
    "cl-hex": POST + b"Content-Length: 0x5\r\n\r\nhello",
    "cl-trailing-junk": POST + b"Content-Length: 5x\r\n\r\nhello",
    "cl-inner-space": POST + b"Content-Length: 1 0\r\n\r\nhellohello",
    "cl-empty": POST + b"Content-Length: \r\n\r\n",
    "te-gzip-chunked": POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te-chunked-twice": POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "te-two-fields": POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"
                            b"\r\n\r\n0\r\n\r\n",
    "te-identity": POST + b"Transfer-Encoding: identity\r\n\r\n",
    "te-chunked-identity": POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-vertical-tab": POST + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    "te-on-http10": b"POST /echo HTTP/1.0\r\nHost: gw.test\r\nTransfer-Encoding: chunked"
                    b"\r\n\r\n0\r\n\r\n",
    "obs-fold-space": GET + b"X-Folded: a\r\n b\r\n\r\n",
    "obs-fold-tab": GET + b"X-Folded: a\r\n\tb\r\n\r\n",
    "obs-fold-te": POST + b"Transfer-Encoding: gzip\r\n chunked\r\n\r\n0\r\n\r\n",
    "space-before-colon": GET + b"X-Foo : bar\r\n\r\n",
    "space-before-colon-te": POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "tab-before-colon": GET + b"X-Foo\t: bar\r\n\r\n",
    "space-in-name": GET + b"X Foo: bar\r\n\r\n",
    "bare-cr-in-value": GET + b"X-Foo: a\rb\r\n\r\n",
    "bare-cr-in-name": GET + b"X\rFoo: b\r\n\r\n",
    "nul-in-value": GET + b"X-Foo: a\x00b\r\n\r\n",
    "nul-in-name": GET + b"X-F\x00oo: b\r\n\r\n",
    "ctl-in-value": GET + b"X-Foo: a\x01b\r\n\r\n",
    "del-in-value": GET + b"X-Foo: a\x7fb\r\n\r\n",
    "ctl-in-name": GET + b"X-F\x1boo: b\r\n\r\n",
    "chunk-size-not-hex": CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-negative": CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-0x": CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": CHUNKED + b"1000000000000000000000005\r\nhello\r\n0\r\n\r\n",
    "chunk-size-empty": CHUNKED + b"\r\nhello\r\n0\r\n\r\n",
    "chunk-data-too-long": CHUNKED + b"5\r\nhelloXX\r\n0\r\n\r\n",
    "chunk-ext-ctl": CHUNKED + b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
    "chunk-ext-bare-lf": CHUNKED + b"5;a\nb\r\nhello\r\n0\r\n\r\n",
    "chunk-ext-no-name": CHUNKED + b"5;\r\nhello\r\n0\r\n\r\n",
    "chunk-ext-open-quote": CHUNKED + b'5;a="x\r\nhello\r\n0\r\n\r\n',
    "missing-host": b"GET /echo HTTP/1.1\r\n\r\n",
    "duplicate-host": b"GET /echo HTTP/1.1\r\nHost: gw.test\r\nHost: other.test\r\n\r\n",
    "duplicate-host-same": b"GET /echo HTTP/1.1\r\nHost: gw.test\r\nHost: gw.test\r\n\r\n",
}


@pytest.fixture(scope="module")
def gw(module_gateway_factory, upstream_servers):
    u1, u2 = upstream_servers
    config = declarative(services=[
        {"name": "default", "url": u1.url,
         "routes": [{"name": "catch-all", "paths": ["/"], "strip_path": False}]},
        {"name": "admin", "url": u2.url,
         "routes": [{"name": "admin", "paths": ["/admin"], "strip_path": False}]},
    ])
    return module_gateway_factory(config, env={"GUICHET_CLIENT_MAX_BODY_SIZE": str(MAX_BODY)})


def assert_nothing_forwarded(*servers: UpstreamServer) -> None:
    time.sleep(0.05)  # anything forwarded would have been written before the gateway answered
    for server in servers:
        assert server.requests == [], f"{server.upstream_id} got {server.requests}"
        assert server.bytes_received == 0, f"{server.upstream_id} received bytes"


# ---- §1 size limits ------------------------------------------------------------------------
def test_request_line_over_8k_is_414(gw, upstream):
    line = b"GET /echo?q=" + b"a" * 9000 + b" HTTP/1.1\r\n"
    result = exchange(gw.port, line + b"Host: gw.test\r\n\r\n")
    assert result.response.status == 414
    assert_nothing_forwarded(upstream)


def test_request_line_under_8k_is_served(gw, upstream):
    target = b"/echo?q=" + b"a" * 8000
    with RawConnection(gw.port) as conn:
        conn.send(b"GET " + target + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        response = conn.read_response()
    assert response.status == 200
    assert response.json()["target"] == target.decode()


@pytest.mark.parametrize("headers", [
    [b"X-Big-%d: %s" % (i, b"b" * 8000) for i in range(5)],  # 40 KB section
    [b"X-Many-%d: v" % i for i in range(100)],  # 101 fields with Host
], ids=["section-over-32k", "101-fields"])
def test_header_section_over_limits_is_431(gw, upstream, headers):
    head = GET + b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    result = exchange(gw.port, head)
    assert result.response.status == 431
    assert_nothing_forwarded(upstream)


@pytest.mark.parametrize("headers", [
    [b"X-Big-%d: %s" % (i, b"b" * 7000) for i in range(4)],  # 28 KB section
    [b"X-Many-%d: v" % i for i in range(99)],  # exactly 100 fields with Host
], ids=["section-28k", "100-fields"])
def test_header_section_within_limits_is_served(gw, upstream, headers):
    with RawConnection(gw.port) as conn:
        conn.send(GET + b"".join(h + b"\r\n" for h in headers) + b"\r\n")
        assert conn.read_response().status == 200
    received = upstream.requests[0]
    assert received.header(headers[-1].split(b":")[0].decode()) is not None


def test_limits_follow_the_settings(gateway_factory, upstream):
    gw = gateway_factory(declarative(services=[
        {"name": "default", "url": upstream.url,
         "routes": [{"name": "catch-all", "paths": ["/"], "strip_path": False}]}]),
        env={"GUICHET_MAX_REQUEST_LINE": "1024", "GUICHET_MAX_HEADERS": "20",
             "GUICHET_MAX_HEADER_SIZE": "4096"})
    line = b"GET /echo?q=" + b"a" * 1100 + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    assert exchange(gw.port, line).response.status == 414
    fields = b"".join(b"X-F-%d: v\r\n" % i for i in range(25))
    assert exchange(gw.port, GET + fields + b"\r\n").response.status == 431
    big = b"X-Big: " + b"b" * 5000 + b"\r\n"
    assert exchange(gw.port, GET + big + b"\r\n").response.status == 431
    with RawConnection(gw.port) as conn:
        conn.send(GET + b"".join(b"X-F-%d: v\r\n" % i for i in range(10)) + b"\r\n")
        assert conn.read_response().status == 200
    assert len(upstream.requests) == 1, "a refused request reached the upstream"


# ---- §2 body limit and streaming -----------------------------------------------------------
def test_body_over_limit_with_content_length_refused_before_forwarding(gw, upstream):
    with RawConnection(gw.port) as conn:
        # Only the head is sent: the refusal must not wait for the body.
        conn.send(POST + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
        assert conn.read_response(timeout=3).status == 413
    assert_nothing_forwarded(upstream)


def test_body_at_limit_is_forwarded(gw, upstream):
    with RawConnection(gw.port) as conn:
        conn.send(POST + b"Content-Length: %d\r\n\r\n" % MAX_BODY + b"x" * MAX_BODY)
        response = conn.read_response()
    assert response.status == 200
    assert response.json()["body_length"] == MAX_BODY


def test_chunked_body_over_limit_is_413(gw, upstream):
    chunk = b"x" * 600
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    with RawConnection(gw.port) as conn:
        conn.send(CHUNKED + body)
        assert conn.read_response(timeout=3).status == 413
    assert all(r.body_length < 3 * len(chunk) for r in upstream.requests)


def test_body_is_streamed_to_the_upstream(gw, upstream):
    with RawConnection(gw.port) as conn:
        conn.send(b"POST /streamed HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1000\r\n\r\n"
                  + b"s" * 500)
        assert upstream.wait_for_raw(b"POST /streamed", timeout=3), \
            "the head did not reach the upstream before the body was complete"
        conn.send(b"s" * 500)
        response = conn.read_response()
    assert response.status == 200
    assert response.json()["body_length"] == 1000


# ---- §3 smuggling forms --------------------------------------------------------------------
@pytest.mark.parametrize("payload", list(SMUGGLING.values()), ids=list(SMUGGLING))
def test_smuggling_form_rejected_and_connection_closed(gw, upstream, upstream2, payload):
    result = exchange(gw.port, payload + PIPELINED, timeout=3)
    assert result.responses, f"no answer; closed={result.closed} data={result.data!r}"
    assert result.response.status == 400, result.data[:300]
    assert len(result.responses) == 1, "the pipelined request was answered"
    assert result.closed, "the connection was left open after a 400"
    assert_nothing_forwarded(upstream, upstream2)


def test_request_pipelined_in_a_later_packet_is_not_processed(gw, upstream):
    result = exchange(gw.port, [SMUGGLING["cl-then-te"], PIPELINED], pause=0.2, timeout=3)
    assert result.response.status == 400
    assert len(result.responses) == 1
    assert result.closed
    assert_nothing_forwarded(upstream)


# ---- §4 framing rewritten ------------------------------------------------------------------
CANONICAL_CHUNK_LINE = re.compile(rb"^(0|[1-9a-fA-F][0-9a-fA-F]*)\r\n$")


def test_chunk_extensions_and_trailers_are_not_copied(gw, upstream):
    body = (b"0005;ext=1\r\nhello\r\n6;foo=\"bar\"\r\n world\r\n0\r\n"
            b"X-Trailer: t\r\n\r\n")
    with RawConnection(gw.port) as conn:
        conn.send(CHUNKED + body)
        response = conn.read_response()
    assert response.status == 200
    received = upstream.requests[0]
    assert received.body == b"hello world"
    assert b"ext=1" not in received.raw and b"foo=" not in received.raw
    assert all(CANONICAL_CHUNK_LINE.match(line) for line in received.chunk_lines), \
        received.chunk_lines
    assert "x-trailer" not in received.header_names(), "a trailer was promoted to a header"
    if received.header("content-length") is not None:
        assert received.header("content-length") == "11"


def test_content_length_is_rewritten(gw, upstream):
    with RawConnection(gw.port) as conn:
        conn.send(POST + b"Content-Length: 005\r\n\r\nhello")
        assert conn.read_response().status == 200
    received = upstream.requests[0]
    assert received.body == b"hello"
    assert b"005" not in received.raw
    assert received.header_values("content-length") in (["5"], [])


# ---- §6 targets, methods and path normalisation --------------------------------------------
@pytest.mark.parametrize("path", [b"/a/../admin", b"//admin", b"/%61dmin", b"/./admin",
                                  b"/x/%2e%2e/admin"])
def test_path_is_normalised_before_matching(gw, upstream, upstream2, path):
    with RawConnection(gw.port) as conn:
        conn.send(b"GET " + path + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        response = conn.read_response()
    assert response.status == 200
    assert response.header("x-upstream-id") == "u2", "did not match the /admin route"
    forwarded = response.json()["path"]
    assert ".." not in forwarded and "//" not in forwarded and "%2e" not in forwarded.lower()
    assert upstream.requests == []


def test_dot_segments_cannot_leave_a_route(gw, upstream, upstream2):
    with RawConnection(gw.port) as conn:
        conn.send(b"GET /admin/../echo HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        response = conn.read_response()
    assert response.status == 200
    assert response.header("x-upstream-id") == "u1"
    assert upstream2.requests == []


def test_absolute_form_never_selects_an_unconfigured_upstream(gw, upstream, upstream2):
    with UpstreamServer("stranger") as stranger:
        for target in (f"http://127.0.0.1:{stranger.port}/echo",
                       f"http://127.0.0.1:{stranger.port}/admin"):
            result = exchange(gw.port, f"GET {target} HTTP/1.1\r\nHost: gw.test\r\n"
                                       "Connection: close\r\n\r\n".encode(), timeout=3)
            assert result.response.status in (200, 400, 404), result.data[:300]
            if result.response.status == 200:
                assert result.response.header("x-upstream-id") in ("u1", "u2")
        assert stranger.connections_accepted == 0 and stranger.requests == []


def test_absolute_form_host_does_not_escape_routing(gw, upstream, upstream2):
    result = exchange(gw.port, b"GET http://evil.example/admin HTTP/1.1\r\nHost: gw.test\r\n"
                               b"Connection: close\r\n\r\n", timeout=3)
    assert result.response.status in (200, 400, 404), result.data[:300]
    if result.response.status == 200:
        assert result.response.header("x-upstream-id") in ("u1", "u2")
        for request in upstream.requests + upstream2.requests:
            assert "evil.example" not in request.target
            forwarded_path = request.header("x-forwarded-path")
            assert forwarded_path is None or forwarded_path.startswith("/"), \
                f"X-Forwarded-Path is {forwarded_path!r}"


@pytest.mark.parametrize("request_bytes", [
    b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
    b"TRACE /echo HTTP/1.1\r\nHost: gw.test\r\n\r\n",
], ids=["CONNECT", "TRACE"])
def test_connect_and_trace_are_405(gw, upstream, request_bytes):
    if b"%d" in request_bytes:
        request_bytes = request_bytes % (upstream.port, upstream.port)
    result = exchange(gw.port, request_bytes, timeout=3)
    assert result.response.status == 405
    assert_nothing_forwarded(upstream)
