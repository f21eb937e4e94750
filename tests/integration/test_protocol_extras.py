"""Protocol corners not covered elsewhere: versions, pipelining order, HEAD."""

from __future__ import annotations

import pytest

from support.rawhttp import RawConnection, parse_responses


@pytest.fixture
def gw(gateway_factory, upstream):
    return gateway_factory(f"""
_format_version: "3.0"
services:
- name: s
  url: {upstream.url}
  routes:
  - name: r
    paths: ["/"]
    strip_path: false
""")


# llhttp knows HTTP/2.0 (answered 505) but not 3.0 (a malformed request line: 400).
@pytest.mark.parametrize("version,status", [(b"HTTP/2.0", b"505"), (b"HTTP/3.0", b"400")])
def test_http_versions_other_than_1_are_refused(gw, upstream, version, status):
    with RawConnection(gw.port) as conn:
        conn.send(b"GET /echo " + version + b"\r\nHost: x\r\n\r\n")
        data = conn.read_until_close(timeout=3)
    assert data.startswith(b"HTTP/1.1 " + status + b" ")
    assert upstream.requests == []


def test_pipelined_requests_are_answered_in_order(gw, upstream):
    with RawConnection(gw.port) as conn:
        conn.send(b"GET /delay/300 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /bytes/5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = conn.read_until_close(timeout=5)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [200, 201, 200]
    assert len(responses[2].body) == 5


def test_head_response_body_is_not_read_and_connection_reused(gw, upstream):
    with RawConnection(gw.port) as conn:
        conn.send(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = conn.read_response(head_request=True)
        assert head.status == 200 and head.header("content-length") == "1000" and head.body == b""
        conn.send(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n")
        nxt = conn.read_response()
    assert nxt.status == 200 and len(nxt.body) == 10
    assert upstream.connections_accepted == 1
