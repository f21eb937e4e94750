"""cors on requests built in memory: origin normalisation and matching (plain, regex
anchored as a whole, by host or by origin), the preflight answer, headers added to the
response, credentials with a wildcard."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from guichet.plugins.api import Response
from guichet.plugins.bundled.cors import Cors, normalize_origin
from guichet.plugins.request import Request, ResponseHead
from support.plugin_requests import build, make_request, run

# ======================================================================== cors
def preflight(origin: str = "http://a.example", **extra: str) -> Request:
    headers = [("Origin", origin), ("Access-Control-Request-Method", "POST")]
    headers += [(k.replace("_", "-"), v) for k, v in extra.items()]
    return make_request(method="OPTIONS", headers=headers)


def response_after(plugin: Cors, req: Request, headers: list[tuple[str, str]] | None = None,
                   ) -> ResponseHead:
    head = ResponseHead(200, list(headers or []))
    plugin.response_headers(req, head)
    return head


@pytest.mark.parametrize("value,domain,host", [
    ("http://a.example", "http://a.example", "a.example"),
    ("http://a.example:80", "http://a.example", "a.example"),
    ("https://a.example:443/path", "https://a.example", "a.example"),
    ("https://a.example:8443", "https://a.example:8443", "a.example"),
    ("http://user@a.example:81", "http://a.example:81", "a.example"),
    ("http://[::1]:8080", "http://[::1]:8080", "[::1]"),
    ("null", "null", "null"),
    ("a.example", "a.example", "a.example"),
])
def test_normalize_origin(value, domain, host):
    assert tuple(normalize_origin(value)) == (domain, host)


def test_cors_config():
    conf = Cors.Config.model_validate({})
    assert conf.methods == ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS",
                            "TRACE", "CONNECT"]
    assert (conf.credentials, conf.preflight_continue, conf.private_network,
            conf.allow_origin_absent, conf.max_age) == (False, False, False, True, None)
    for bad in ({"methods": ["FETCH"]}, {"origins": ["(bad"]}, {"max_age": "10"},
                {"headers": ["X-A\r\nSet-Cookie: a=b"]}, {"exposed_headers": ["\x00"]}):
        with pytest.raises(ValidationError):
            Cors.Config.model_validate(bad)


def test_cors_preflight_answer():
    plugin = build(Cors, origins=["http://a.example"], headers=["X-One", "X-Two"],
                   methods=["GET", "POST"], max_age=3600, credentials=True,
                   private_network=True)
    req = preflight(Access_Control_Request_Private_Network="true")
    result = run(plugin, req)
    assert isinstance(result, Response) and result.status == 200 and result.body == b""
    assert dict(result.headers) == {
        "Access-Control-Allow-Origin": "http://a.example",
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
        "Access-Control-Allow-Headers": "X-One,X-Two",
        "Access-Control-Allow-Methods": "GET,POST",
        "Access-Control-Max-Age": "3600",
        "Access-Control-Allow-Private-Network": "true",
    }
    # the answer gets no second set of headers in response_headers
    head = response_after(plugin, req)
    assert head.headers == []


def test_cors_preflight_echoes_requested_headers_and_defaults():
    plugin = build(Cors)
    result = run(plugin, preflight(Access_Control_Request_Headers="x-a, x-b"))
    headers = dict(result.headers)
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Headers"] == "x-a, x-b"
    assert headers["Access-Control-Allow-Methods"] == \
        "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
    assert "Vary" not in headers and "Access-Control-Max-Age" not in headers
    assert "Access-Control-Allow-Private-Network" not in headers


def test_cors_not_a_preflight_or_continued():
    plugin = build(Cors)
    assert run(plugin, make_request(method="OPTIONS", headers=[("Origin", "http://x")])) is None
    assert run(plugin, make_request(method="GET", headers=[
        ("Origin", "http://x"), ("Access-Control-Request-Method", "GET")])) is None
    cont = build(Cors, preflight_continue=True)
    req = preflight()
    assert run(cont, req) is None
    assert response_after(cont, req, [("Access-Control-Allow-Origin", "up")]).headers == \
        [("Access-Control-Allow-Origin", "up")]


def test_cors_regex_origins_by_host_and_by_origin():
    plugin = build(Cors, origins=[r"(.*\.)?example\.com", r"https://api\.other\.org:\d+",
                                  "http://exact.test:8080"])

    def allowed(origin: str) -> str | None:
        return response_after(plugin, make_request(headers=[("Origin", origin)])).get(
            "Access-Control-Allow-Origin")

    assert allowed("https://www.example.com") == "https://www.example.com"
    assert allowed("http://example.com:8000") == "http://example.com:8000"
    assert allowed("https://example.com.evil.net") is None
    assert allowed("https://evilexample.com") is None
    assert allowed("https://api.other.org:9443") == "https://api.other.org:9443"
    assert allowed("https://api.other.org") is None
    assert allowed("http://exact.test:8080") == "http://exact.test:8080"
    assert allowed("http://exact.test") is None
    head = response_after(plugin, make_request(headers=[("Origin", "https://nope.net")]))
    assert head.get("Vary") == "Origin"


def test_cors_alternation_is_anchored_as_a_whole():
    plugin = build(Cors, origins=[r"a\.com|b\.com", r"(?i)https://UPPER\.test"])
    head = response_after(plugin, make_request(headers=[("Origin", "https://upper.test")]))
    assert head.get("Access-Control-Allow-Origin") == "https://upper.test"
    head = response_after(plugin, make_request(headers=[("Origin", "http://a.com.evil.net")]))
    assert head.get("Access-Control-Allow-Origin") is None
    head = response_after(plugin, make_request(headers=[("Origin", "http://b.com")]))
    assert head.get("Access-Control-Allow-Origin") == "http://b.com"


def test_cors_single_plain_origin_is_sent_as_is():
    plugin = build(Cors, origins=["http://only.example"], exposed_headers=["X-A", "X-B"])
    head = response_after(plugin, make_request(headers=[("Origin", "http://other")]),
                          [("Vary", "Accept-Encoding"), ("Access-Control-Allow-Origin", "*")])
    assert head.get("Access-Control-Allow-Origin") == "http://only.example"
    assert head.get_all("Vary") == ["Accept-Encoding", "Origin"]
    assert head.get("Access-Control-Expose-Headers") == "X-A,X-B"
    head = response_after(plugin, make_request(headers=[("Origin", "http://x")]),
                          [("Vary", "origin, accept")])
    assert head.get_all("Vary") == ["origin, accept"]  # not twice


def test_cors_credentials_with_wildcard_names_the_origin():
    plugin = build(Cors, credentials=True)
    head = response_after(plugin, make_request(headers=[("Origin", "http://c.example")]))
    assert head.get("Access-Control-Allow-Origin") == "http://c.example"
    assert head.get("Access-Control-Allow-Credentials") == "true"
    assert head.get("Vary") == "Origin"
    head = response_after(plugin, make_request())
    assert head.get("Access-Control-Allow-Origin") == "*"
    assert head.get("Access-Control-Allow-Credentials") is None


def test_cors_no_origin():
    plugin = build(Cors, origins=[r".*\.example"])
    head = response_after(plugin, make_request(), [("Access-Control-Allow-Origin", "up")])
    assert head.get("Access-Control-Allow-Origin") is None  # cleared
    silent = build(Cors, allow_origin_absent=False)
    assert response_after(silent, make_request()).headers == []


def test_cors_star_among_others():
    plugin = build(Cors, origins=["http://a.example", "*"])
    head = response_after(plugin, make_request(headers=[("Origin", "http://z.example")]))
    assert head.get("Access-Control-Allow-Origin") == "*"
