"""GUARANTEES.md §5 and §9-12 through real sockets: bad upstreams, timeouts, retries, errors.

One gateway serves the module with 1 s client timeouts and a 1024-byte body limit. Its
services: ``/main`` (upstream u1), ``/slow`` (read_timeout 300 ms), ``/refused`` (a closed
port), ``/empty`` (an upstream without targets), ``/pair`` (targets: a closed port and u1)
``/resetpair`` (targets u1 and u2, retries 2) and ``/blackhole`` (a port that never completes
a connection; connect_timeout 300 ms). Nothing routes ``/``.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from support import declarative
from support.gateway import free_port
from support.rawhttp import RawConnection, exchange

RETRIES = 2


@pytest.fixture(scope="module")
def closed() -> int:
    return free_port()


@pytest.fixture(scope="module")
def blackhole():
    """A port whose accept queue is full, so a new connection attempt hangs (SYN dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    yield port
    for sock in fillers + [listener]:
        sock.close()


@pytest.fixture(scope="module")
def gw(module_gateway_factory, upstream_servers, closed, blackhole):
    u1, u2 = upstream_servers
    config = declarative(
        services=[
            {"name": "main", "url": u1.url, "retries": 0,
             "routes": [{"name": "main", "paths": ["/main"], "strip_path": False}]},
            {"name": "slow", "url": u1.url, "read_timeout": 300, "retries": 0,
             "routes": [{"name": "slow", "paths": ["/slow"], "strip_path": False}]},
            {"name": "refused", "url": f"http://127.0.0.1:{closed}", "retries": 0,
             "routes": [{"name": "refused", "paths": ["/refused"]}]},
            {"name": "blackhole", "url": f"http://127.0.0.1:{blackhole}", "retries": 0,
             "connect_timeout": 300,
             "routes": [{"name": "blackhole", "paths": ["/blackhole"]}]},
            {"name": "empty", "host": "empty.upstream", "port": 80, "protocol": "http",
             "routes": [{"name": "empty", "paths": ["/empty"]}]},
            {"name": "pair", "host": "pair.upstream", "port": 80, "protocol": "http",
             "retries": 5, "routes": [{"name": "pair", "paths": ["/pair"]}]},
            {"name": "resetpair", "host": "reset.upstream", "port": 80, "protocol": "http",
             "retries": RETRIES,
             "routes": [{"name": "resetpair", "paths": ["/resetpair"]}]},
        ],
        upstreams=[
            {"name": "empty.upstream", "targets": []},
            {"name": "pair.upstream", "targets": [{"target": f"127.0.0.1:{closed}"},
                                                  {"target": f"127.0.0.1:{u1.port}"}]},
            {"name": "reset.upstream", "targets": [{"target": f"127.0.0.1:{u1.port}"},
                                                   {"target": f"127.0.0.1:{u2.port}"}]},
        ],
    )
    return module_gateway_factory(config, env={
        "GUICHET_CLIENT_HEADER_TIMEOUT": "1", "GUICHET_CLIENT_BODY_TIMEOUT": "1",
        "GUICHET_KEEPALIVE_TIMEOUT": "1", "GUICHET_CLIENT_MAX_BODY_SIZE": "1024"})


def assert_error_body(status: int, body: bytes, headers: list[tuple[str, str]],
                      version: str) -> None:
    """§12: JSON with a message and the request id; no traceback, no version anywhere."""
    document = json.loads(body)
    assert isinstance(document, dict), body
    assert isinstance(document.get("message"), str) and document["message"], body
    assert isinstance(document.get("request_id"), str) and document["request_id"], body
    assert b"Traceback" not in body and b'File "' not in body
    assert version.encode() not in body
    for name, value in headers:
        assert version not in value, f"{name}: {value} shows the version"


# ---- §5 bad upstream answers -------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["bad-status-line", "cl-and-te", "huge-header"])
def test_bad_upstream_answer_is_502_and_connection_not_reused(gw, upstream, http, endpoint):
    response = http.get(f"{gw.url}/main/{endpoint}")
    assert response.status_code == 502
    bad = {r.conn_id for r in upstream.requests_to(endpoint)}
    assert len(bad) == 1
    for conn_id in bad:
        assert upstream.wait_for_close(conn_id, timeout=2), "the gateway kept it open"
    follow = http.get(f"{gw.url}/main/echo")
    assert follow.status_code == 200
    assert follow.json()["conn_id"] not in bad
    assert all(r.conn_id not in bad for r in upstream.requests if r.path.endswith("/echo"))


# ---- §9 timeouts ---------------------------------------------------------------------------
def test_incomplete_head_times_out(gw, upstream):
    with RawConnection(gw.port) as conn:
        started = time.monotonic()
        conn.send(b"GET /main/echo HTTP/1.1\r\nHost: gw.test\r\n")
        assert conn.wait_closed(4), "half a head kept the connection open"
        elapsed = time.monotonic() - started
        data = conn.read_until_close(0.1)
    assert 0.5 < elapsed < 2.5
    assert data == b"" or data.startswith(b"HTTP/1.1 408")
    assert upstream.requests == []


def test_trickled_head_times_out_as_a_whole(gw, upstream):
    with RawConnection(gw.port) as conn:
        started = time.monotonic()
        conn.send(b"GET /main/echo HTTP/1.1\r\n")
        while not conn.closed and time.monotonic() - started < 4:
            if not conn.send(b"X"):  # one byte of header name every 100 ms
                break
            conn.wait_closed(0.1)
        elapsed = time.monotonic() - started
    assert conn.closed and elapsed < 2.5, "a slowloris head was allowed to continue"


def test_idle_body_is_408(gw, upstream):
    with RawConnection(gw.port) as conn:
        started = time.monotonic()
        conn.send(b"POST /main/echo HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n"
                  + b"x" * 10)
        response = conn.read_response(timeout=4)
        elapsed = time.monotonic() - started
    assert response.status == 408
    assert 0.5 < elapsed < 2.5
    assert upstream.requests == []
    assert_error_body(408, response.body, response.headers, gw.status()["version"])


def test_idle_keepalive_connection_closed(gw, upstream):
    with RawConnection(gw.port) as conn:
        conn.send(b"GET /main/echo HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        assert conn.read_response().status == 200
        answered = time.monotonic()
        assert conn.wait_closed(4)
        assert time.monotonic() - answered < 2.5


def test_upstream_read_timeout_is_504(gw, upstream, http):
    started = time.monotonic()
    response = http.get(gw.url + "/slow/delay/2000")
    assert response.status_code == 504
    assert time.monotonic() - started < 1.8


def test_upstream_connect_timeout_is_504(gw, http):
    started = time.monotonic()
    response = http.get(gw.url + "/blackhole/echo")
    assert response.status_code == 504
    assert time.monotonic() - started < 1.5


# ---- §10 upstream failures -----------------------------------------------------------------
def test_connection_refused_is_502(gw, http):
    assert http.get(gw.url + "/refused/echo").status_code == 502


@pytest.mark.parametrize("endpoint", ["close-before-response", "reset"])
def test_upstream_gone_before_response_is_502(gw, upstream, http, endpoint):
    assert http.get(f"{gw.url}/main/{endpoint}").status_code == 502


def test_no_healthy_target_is_503_with_retry_after(gw, http):
    response = http.get(gw.url + "/empty/echo")
    assert response.status_code == 503
    assert response.headers.get("retry-after", "").isdigit()


# ---- §11 retries ---------------------------------------------------------------------------
def test_get_retried_on_another_target_when_one_refuses(gw, upstream, http):
    for i in range(20):
        response = http.get(f"{gw.url}/pair/echo?i={i}")
        assert response.status_code == 200, f"request {i}: {response.text}"
        assert response.headers["x-upstream-id"] == "u1"
    assert len(upstream.requests) == 20


@pytest.mark.parametrize("endpoint", ["reset", "close-before-response"])
def test_post_never_sent_twice(gw, upstream, upstream2, http, endpoint):
    response = http.post(f"{gw.url}/resetpair/{endpoint}", content=b"pay once")
    assert response.status_code == 502
    time.sleep(0.3)  # a retry, if any, would land meanwhile
    seen = upstream.requests_to(endpoint, "POST") + upstream2.requests_to(endpoint, "POST")
    assert len(seen) == 1


def test_get_retries_stay_within_the_configured_count(gw, upstream, upstream2, http):
    response = http.get(f"{gw.url}/resetpair/reset")
    assert response.status_code == 502
    time.sleep(0.3)
    seen = upstream.requests_to("reset") + upstream2.requests_to("reset")
    assert 1 <= len(seen) <= 1 + RETRIES


def test_no_retry_once_response_bytes_were_relayed(gw, upstream, upstream2):
    result = exchange(gw.port, b"GET /resetpair/truncated HTTP/1.1\r\nHost: gw.test\r\n\r\n",
                      timeout=3)
    time.sleep(0.3)
    seen = upstream.requests_to("truncated") + upstream2.requests_to("truncated")
    assert result.closed, "a truncated upstream answer left the client connection open"
    if result.data.startswith(b"HTTP/1.1 200"):
        assert len(seen) == 1, "retried after relaying part of a response"
        assert result.responses == [], "a truncated body was presented as complete"
    else:
        assert result.response.status == 502
        assert 1 <= len(seen) <= 1 + RETRIES


# ---- §12 error bodies ----------------------------------------------------------------------
BAD_REQUESTS = {
    "404": (404, b"GET /nowhere HTTP/1.1\r\nHost: gw.test\r\n\r\n"),
    "400": (400, b"POST /main/echo HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "405": (405, b"TRACE /main/echo HTTP/1.1\r\nHost: gw.test\r\n\r\n"),
    "413": (413, b"POST /main/echo HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5000\r\n\r\n"),
    "414": (414, b"GET /main/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n"),
    "431": (431, b"GET /main/echo HTTP/1.1\r\nHost: gw.test\r\n"
                 + b"".join(b"X-%d: v\r\n" % i for i in range(120)) + b"\r\n"),
    "502": (502, b"GET /refused/echo HTTP/1.1\r\nHost: gw.test\r\n\r\n"),
    "502-protocol": (502, b"GET /main/bad-status-line HTTP/1.1\r\nHost: gw.test\r\n\r\n"),
    "503": (503, b"GET /empty/echo HTTP/1.1\r\nHost: gw.test\r\n\r\n"),
    "504": (504, b"GET /slow/delay/1000 HTTP/1.1\r\nHost: gw.test\r\n\r\n"),
}


@pytest.mark.parametrize("status, request_bytes", list(BAD_REQUESTS.values()),
                         ids=list(BAD_REQUESTS))
def test_error_bodies_are_json_without_internals(gw, upstream, status, request_bytes):
    version = gw.status()["version"]
    with RawConnection(gw.port) as conn:
        conn.send(request_bytes)
        response = conn.read_response(timeout=4)
    assert response.status == status
    assert_error_body(status, response.body, response.headers, version)
    if status == 404:
        assert json.loads(response.body)["message"] == "no Route matched with those values"
