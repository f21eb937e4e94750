"""acl, ip-restriction, bot-detection, cors, request-size-limiting, request-termination and
correlation-id through a real gateway and a real upstream.

One gateway serves the module. It listens on 127.0.0.1 and on [::1] (an IPv6 client), and
trusts 127.0.0.1 as a proxy, so a test can also present any client address (IPv4 or IPv6)
in X-Real-IP the way a load balancer in front would.
"""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest

from support import declarative
from support.gateway import Gateway


def _free_ipv6_port() -> int:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        return sock.getsockname()[1]


def _ipv6_loopback() -> bool:
    try:
        _free_ipv6_port()
        return True
    except OSError:
        return False


def route(name: str, *plugins: dict, **extra) -> dict:
    return {"name": name, "paths": [f"/{name}"], "plugins": list(plugins), **extra}


def plugin(name: str, **config) -> dict:
    return {"name": name, "config": config}


KEY_AUTH = plugin("key-auth", key_names=["apikey"])
CONSUMERS = [
    {"username": "alice", "keyauth_credentials": [{"key": "alice-key"}],
     "acls": [{"group": "admins"}, {"group": "staff"}]},
    {"username": "bob", "keyauth_credentials": [{"key": "bob-key"}],
     "acls": [{"group": "guests"}]},
    {"username": "guest"},
]


@pytest.fixture(scope="module")
def gw(module_gateway_factory, upstream_servers) -> Gateway:
    u1 = upstream_servers[0].url
    routes = [
        # ip-restriction
        route("ip-allow", plugin("ip-restriction", allow=["127.0.0.1", "2001:db8::/32"])),
        route("ip-deny", plugin("ip-restriction", deny=["::1", "10.0.0.0/8"], status=418,
                                message="Go away")),
        # acl
        route("acl", KEY_AUTH, plugin("acl", allow=["admins"])),
        route("acl-deny", KEY_AUTH, plugin("acl", deny=["guests"], hide_groups_header=True)),
        route("acl-anon", plugin("key-auth", anonymous="guest"), plugin("acl", allow=["admins"])),
        route("acl-alone", plugin("acl", allow=["admins"])),
        # bot-detection
        route("bots", plugin("bot-detection", allow=["facebookexternalhit"], deny=["HelloWorld"])),
        # cors
        route("cors", KEY_AUTH,
              plugin("cors", origins=[r"(.*\.)?good\.test", "http://exact.test:8080"],
                     exposed_headers=["X-Upstream-Id"], max_age=600, credentials=True,
                     headers=["Content-Type", "apikey"], methods=["GET", "POST"],
                     private_network=True)),
        route("cors-continue", plugin("cors", preflight_continue=True)),
        # request-size-limiting
        route("size", plugin("request-size-limiting", allowed_payload_size=1,
                             size_unit="kilobytes")),
        route("size-cl", plugin("request-size-limiting", require_content_length=True)),
        route("size-big", plugin("request-size-limiting", allowed_payload_size=20)),
        # request-termination
        route("term", plugin("request-termination")),
        route("term-trigger", plugin("request-termination", status_code=403,
                                     message="maintenance", trigger="X-Stop")),
        route("term-body", plugin("request-termination", status_code=200, body="<b>hi</b>",
                                  content_type="text/html")),
        route("term-echo", plugin("request-termination", status_code=200, echo=True)),
        route("term-after-auth", KEY_AUTH, plugin("request-termination", status_code=410,
                                                  message="gone")),
        # correlation-id
        route("corr", plugin("correlation-id", generator="uuid", echo_downstream=True)),
        route("corr-default", plugin("correlation-id")),
        route("corr-auth", KEY_AUTH, plugin("correlation-id", echo_downstream=True)),
        # the benchmark's route
        route("bench", KEY_AUTH, plugin("correlation-id"),
              plugin("ip-restriction", allow=["127.0.0.0/8", "::1"])),
    ]
    config = declarative(services=[{"name": "main", "url": u1, "routes": routes}],
                         consumers=CONSUMERS)
    extra: tuple[str, ...] = ()
    port6 = None
    if _ipv6_loopback():
        port6 = _free_ipv6_port()
        extra = ("--listen", f"[::1]:{port6}")
    gateway = module_gateway_factory(config, env={"GUICHET_TRUSTED_IPS": "127.0.0.1"},
                                     extra_args=extra)
    gateway.url6 = f"http://[::1]:{port6}" if port6 else None
    return gateway


def url(gw: Gateway, path: str) -> str:
    return f"{gw.url}{path}"


def assert_error(resp: httpx.Response, status: int, message: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["message"] == message
    assert body["request_id"]


# ======================================================================== ip-restriction
def test_ip_restriction_allow(gw, upstream, http):
    assert http.get(url(gw, "/ip-allow")).status_code == 200
    assert len(upstream.requests) == 1
    resp = http.get(url(gw, "/ip-allow"), headers={"X-Real-IP": "10.1.2.3"})
    assert_error(resp, 403, "IP address not allowed: 10.1.2.3")
    assert http.get(url(gw, "/ip-allow"), headers={"X-Real-IP": "2001:db8::7"}).status_code == 200
    assert_error(http.get(url(gw, "/ip-allow"), headers={"X-Real-IP": "2001:db9::7"}),
                 403, "IP address not allowed: 2001:db9::7")
    assert len(upstream.requests) == 2  # refusals never reach the upstream


def test_ip_restriction_deny_with_status_and_message(gw, upstream, http):
    assert http.get(url(gw, "/ip-deny")).status_code == 200
    assert_error(http.get(url(gw, "/ip-deny"), headers={"X-Real-IP": "10.9.9.9"}), 418, "Go away")


def test_ip_restriction_ipv6_client(gw, upstream, http):
    if gw.url6 is None:
        pytest.skip("no IPv6 loopback on this machine")
    assert http.get(f"{gw.url6}/ip-allow").status_code == 403  # ::1 is not allowed
    assert_error(http.get(f"{gw.url6}/ip-deny"), 418, "Go away")
    resp = http.get(f"{gw.url6}/ip-allow", headers={"X-Real-IP": "2001:db8::1"})
    assert resp.status_code == 403  # [::1] is not a trusted proxy: X-Real-IP is ignored
    assert http.get(f"{gw.url6}/bench", headers={"apikey": "alice-key"}).status_code == 200


# ======================================================================== acl
def test_acl_allowed_consumer_gets_groups_header(gw, upstream, http):
    resp = http.get(url(gw, "/acl"), headers={"apikey": "alice-key",
                                             "X-Consumer-Groups": "forged"})
    assert resp.status_code == 200
    assert upstream.requests[-1].header("x-consumer-groups") == "admins, staff"
    assert upstream.requests[-1].header("x-consumer-username") == "alice"


def test_acl_refusals(gw, upstream, http):
    assert_error(http.get(url(gw, "/acl"), headers={"apikey": "bob-key"}),
                 403, "You cannot consume this service")
    assert http.get(url(gw, "/acl")).status_code == 401  # key-auth refuses first
    assert_error(http.get(url(gw, "/acl-alone")), 401, "Unauthorized")
    # the anonymous consumer has no group: 401, as in Kong
    assert_error(http.get(url(gw, "/acl-anon")), 401, "Unauthorized")
    assert upstream.requests == []


def test_acl_deny_and_hidden_header(gw, upstream, http):
    assert http.get(url(gw, "/acl-deny"), headers={"apikey": "alice-key",
                                                  "X-Consumer-Groups": "forged"}).status_code == 200
    assert upstream.requests[-1].header("x-consumer-groups") is None
    assert_error(http.get(url(gw, "/acl-deny"), headers={"apikey": "bob-key"}),
                 403, "You cannot consume this service")


# ======================================================================== bot-detection
@pytest.mark.parametrize("agent,status", [
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36", 200),
    ("curl/8.5.0", 200),
    ("Googlebot/2.1 (+http://www.google.com/bot.html)", 403),
    ("HelloWorld", 403),
    ("facebookexternalhit/1.1", 200),  # a bad bot, but allowed by the config
])
def test_bot_detection(gw, upstream, http, agent, status):
    resp = http.get(url(gw, "/bots"), headers={"User-Agent": agent})
    assert resp.status_code == status
    if status == 403:
        assert_error(resp, 403, "Forbidden")


def test_bot_detection_two_user_agents(gw, http):
    resp = http.get(url(gw, "/bots"), headers=[("User-Agent", "a"), ("User-Agent", "b")])
    assert_error(resp, 400, "Only one User-Agent header allowed")


# ======================================================================== cors
def test_cors_preflight_answered_before_authentication(gw, upstream, http):
    resp = http.options(url(gw, "/cors"), headers={
        "Origin": "https://app.good.test", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Private-Network": "true"})
    assert resp.status_code == 200 and resp.content == b""
    h = resp.headers
    assert h["access-control-allow-origin"] == "https://app.good.test"
    assert h["access-control-allow-credentials"] == "true"
    assert h["access-control-allow-methods"] == "GET,POST"
    assert h["access-control-allow-headers"] == "Content-Type,apikey"
    assert h["access-control-max-age"] == "600"
    assert h["access-control-allow-private-network"] == "true"
    assert h["vary"] == "Origin"
    assert upstream.requests == []


def test_cors_headers_on_upstream_answers(gw, upstream, http):
    resp = http.get(url(gw, "/cors"), headers={"Origin": "http://exact.test:8080",
                                              "apikey": "alice-key"})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "http://exact.test:8080"
    assert resp.headers["access-control-expose-headers"] == "X-Upstream-Id"
    assert "Origin" in resp.headers.get_list("vary")
    resp = http.get(url(gw, "/cors"), headers={"Origin": "https://evil.test",
                                              "apikey": "alice-key"})
    assert "access-control-allow-origin" not in resp.headers


def test_cors_headers_on_gateway_refusals(gw, upstream, http):
    resp = http.get(url(gw, "/cors"), headers={"Origin": "https://good.test"})
    assert resp.status_code == 401  # key-auth's answer carries CORS headers too
    assert resp.headers["access-control-allow-origin"] == "https://good.test"
    assert resp.headers["access-control-allow-credentials"] == "true"


def test_cors_preflight_continue(gw, upstream, http):
    resp = http.options(url(gw, "/cors-continue"), headers={
        "Origin": "https://x.test", "Access-Control-Request-Method": "GET"})
    assert resp.status_code == 200
    assert upstream.requests[-1].method == "OPTIONS"
    assert "access-control-allow-origin" not in resp.headers
    resp = http.get(url(gw, "/cors-continue"), headers={"Origin": "https://x.test"})
    assert resp.headers["access-control-allow-origin"] == "*"


# ======================================================================== request-size-limiting
def test_request_size_by_content_length(gw, upstream, http):
    assert http.post(url(gw, "/size"), content=b"x" * 1024).status_code == 200
    assert upstream.requests[-1].body_length == 1024
    assert_error(http.post(url(gw, "/size"), content=b"x" * 1025), 413,
                 "Request size limit exceeded")
    assert len(upstream.requests) == 1


def test_request_size_chunked(gw, upstream, http):
    def chunks(total: int, size: int = 100):
        sent = 0
        while sent < total:
            n = min(size, total - sent)
            sent += n
            yield b"y" * n

    resp = http.post(url(gw, "/size"), content=chunks(1000))
    assert resp.status_code == 200
    assert upstream.requests[-1].body == b"y" * 1000
    resp = http.post(url(gw, "/size"), content=chunks(5000))
    assert_error(resp, 413, "Request size limit exceeded")
    assert len(upstream.requests) == 1


def test_request_size_chunked_under_a_large_limit_streams_whole(gw, upstream, http):
    total = 10 << 20  # more than client_body_buffer_size: it must stream, not be held

    def chunks():
        block = b"z" * 65536
        for _ in range(total // len(block)):
            yield block

    resp = http.post(url(gw, "/size-big"), content=chunks())
    assert resp.status_code == 200, resp.text
    assert upstream.requests[-1].body_length == total


def test_request_size_expect_continue(gw, upstream):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /size HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 417"), head
    assert upstream.requests == []


def test_request_size_requires_content_length(gw, upstream, http):
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"DELETE /size-cl HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 411"), data
    assert b"A valid Content-Length header is required" in data
    assert http.post(url(gw, "/size-cl"), content=b"abc").status_code == 200


# ======================================================================== request-termination
def test_request_termination_default(gw, upstream, http):
    assert_error(http.get(url(gw, "/term")), 503, "Service unavailable")
    assert upstream.requests == []


def test_request_termination_trigger(gw, upstream, http):
    assert http.get(url(gw, "/term-trigger")).status_code == 200
    assert_error(http.get(url(gw, "/term-trigger"), headers={"X-Stop": "1"}), 403, "maintenance")
    assert_error(http.get(url(gw, "/term-trigger?X-Stop")), 403, "maintenance")
    assert len(upstream.requests) == 1


def test_request_termination_body_and_echo(gw, upstream, http):
    resp = http.get(url(gw, "/term-body"))
    assert (resp.status_code, resp.text) == (200, "<b>hi</b>")
    assert resp.headers["content-type"] == "text/html"
    resp = http.post(url(gw, "/term-echo?a=1&a=2&flag"), json={"k": "v"},
                     headers={"X-Probe": "p"})
    assert resp.status_code == 200
    doc = resp.json()
    request = doc["request"]
    assert request["method"] == "POST" and request["path"] == "/term-echo"
    assert request["query"] == {"a": ["1", "2"], "flag": True}
    assert request["headers"]["x-probe"] == "p"
    assert request["body"] == {"k": "v"}
    assert doc["matched_route"]["name"] == "term-echo"
    assert doc["matched_service"]["name"] == "main"
    assert upstream.requests == []


def test_request_termination_runs_after_authentication(gw, upstream, http):
    assert http.get(url(gw, "/term-after-auth")).status_code == 401
    assert_error(http.get(url(gw, "/term-after-auth"), headers={"apikey": "bob-key"}), 410, "gone")


# ======================================================================== correlation-id
def test_correlation_id_generated_and_echoed(gw, upstream, http):
    resp = http.get(url(gw, "/corr"))
    sent = upstream.requests[-1].header("kong-request-id")
    assert str(uuid.UUID(sent)) == sent
    assert resp.headers["kong-request-id"] == sent
    resp = http.get(url(gw, "/corr"), headers={"Kong-Request-ID": "from-client"})
    assert upstream.requests[-1].header("kong-request-id") == "from-client"
    assert resp.headers["kong-request-id"] == "from-client"


def test_correlation_id_echoed_on_a_gateway_refusal(gw, upstream, http):
    resp = http.get(url(gw, "/corr-auth"))
    assert resp.status_code == 401
    prefix, _, counter = resp.headers["kong-request-id"].rpartition("#")
    assert str(uuid.UUID(prefix)) == prefix and int(counter) >= 1


def test_correlation_id_counter_default(gw, upstream, http):
    http.get(url(gw, "/corr-default"))
    resp = http.get(url(gw, "/corr-default"))
    first, second = (r.header("kong-request-id") for r in upstream.requests[-2:])
    prefix1, _, n1 = first.rpartition("#")
    prefix2, _, n2 = second.rpartition("#")
    assert prefix1 == prefix2 and int(n2) > int(n1)
    assert "kong-request-id" not in resp.headers  # echo_downstream is off by default


def test_bench_route(gw, upstream, http):
    resp = http.get(url(gw, "/bench"), headers={"apikey": "alice-key"})
    assert resp.status_code == 200
    assert upstream.requests[-1].header("kong-request-id")
    assert upstream.requests[-1].header("x-consumer-username") == "alice"
    assert http.get(url(gw, "/bench")).status_code == 401
    assert http.get(url(gw, "/bench"), headers={"apikey": "alice-key",
                                               "X-Real-IP": "192.0.2.1"}).status_code == 403
