"""request-size-limiting and request-termination on requests built in memory: size units,
Content-Length and counted chunked bodies, Expect: 100-continue, the required
Content-Length; termination answers, the trigger, and the echo document."""

from __future__ import annotations

import os

import orjson
import pytest
from pydantic import ValidationError

from guichet.config.model import Route, Service
from guichet.plugins.api import Response
from guichet.plugins.bundled.request_size_limiting import RequestSizeLimiting, allowed_bytes
from guichet.plugins.bundled.request_termination import (
    RequestTermination,
    parse_body,
    query_table,
)
from support.plugin_requests import build, make_request, refused, run

ROUTE = Route(id="r-1", name="orders", service_id="s-1", paths=("/orders",),
              headers=(("x-version", ("1", "2")),))
SERVICE = Service(id="s-1", name="orders-svc", host="orders.internal", port=8080)

# ======================================================================== request-size-limiting
def test_size_units():
    assert allowed_bytes(128, "megabytes") == 128 * 1048576
    assert allowed_bytes(3, "kilobytes") == 3072
    assert allowed_bytes(10, "bytes") == 10
    conf = RequestSizeLimiting.Config.model_validate({})
    assert (conf.allowed_payload_size, conf.size_unit, conf.require_content_length) == \
        (128, "megabytes", False)
    with pytest.raises(ValidationError):
        RequestSizeLimiting.Config.model_validate({"size_unit": "gigabytes"})


def test_request_size_by_content_length():
    plugin = build(RequestSizeLimiting, allowed_payload_size=10, size_unit="bytes")
    assert plugin.access(make_request(method="POST", body=b"x" * 10)) is None
    assert refused(plugin.access(make_request(method="POST", body=b"x" * 11))) == \
        (413, "Request size limit exceeded")
    expect = make_request(method="POST", body=b"x" * 11, headers=[("Expect", " 100-Continue ")])
    assert refused(plugin.access(expect)) == (417, "Request size limit exceeded")
    assert plugin.access(make_request()) is None


def test_request_size_chunked_is_counted():
    plugin = build(RequestSizeLimiting, allowed_payload_size=1, size_unit="kilobytes")
    small = make_request(method="POST", body=b"x" * 1024, chunked=True,
                         headers=[("Transfer-Encoding", "chunked")])
    assert run(plugin, small) is None
    big = make_request(method="POST", body=b"x" * 1025, chunked=True,
                       headers=[("Transfer-Encoding", "chunked")])
    assert refused(run(plugin, big)) == (413, "Request size limit exceeded")


def test_request_size_chunked_is_limited_while_streaming_not_held():
    plugin = build(RequestSizeLimiting, allowed_payload_size=128)
    req = make_request(method="POST", body=b"x" * 10, chunked=True,
                       headers=[("Transfer-Encoding", "chunked")])
    assert plugin.access(req) is None  # synchronous: nothing is awaited, nothing held
    assert req._ex.body_limit == 128 << 20
    assert not req._ex.holding_body


def test_request_size_require_content_length():
    plugin = build(RequestSizeLimiting, require_content_length=True)
    assert refused(plugin.access(make_request(method="POST"))) == \
        (411, "A valid Content-Length header is required")
    chunked = make_request(method="POST", body=b"abc", chunked=True,
                           headers=[("Transfer-Encoding", "chunked")])
    assert run(plugin, chunked) is None


# ======================================================================== request-termination
def test_request_termination_config_rules():
    conf = RequestTermination.Config.model_validate({})
    assert (conf.status_code, conf.echo, conf.message, conf.trigger) == (503, False, None, None)
    for bad, text in (({"message": "m", "body": "b"}, "message cannot be used"),
                      ({"content_type": "text/html"}, "content_type requires a body"),
                      ({"echo": True, "body": "b"}, "echo cannot be used"),
                      ({"status_code": 600}, "less than or equal"),
                      ({"trigger": "bad header"}, "bad header name"),
                      ({"body": "b", "content_type": "text/html\nX: y"}, "control characters")):
        with pytest.raises(ValidationError, match=text):
            RequestTermination.Config.model_validate(bad)


def test_request_termination_answers():
    assert refused(run(build(RequestTermination), make_request())) == (503, "Service unavailable")
    assert refused(run(build(RequestTermination, status_code=404), make_request())) == \
        (404, "Not found")
    assert refused(run(build(RequestTermination, status_code=418, message="teapot"),
                       make_request())) == (418, "teapot")
    for status in (204, 304):
        empty = run(build(RequestTermination, status_code=status, message="m"), make_request())
        assert type(empty) is Response and (empty.status, empty.body) == (status, b"")
    plain = run(build(RequestTermination, status_code=418), make_request())
    assert type(plain) is Response and plain.status == 418 and plain.body == b""
    raw = run(build(RequestTermination, status_code=200, body="<h1>hi</h1>",
                    content_type="text/html"), make_request())
    assert (raw.status, raw.body, raw.content_type) == (200, b"<h1>hi</h1>", "text/html")


def test_request_termination_trigger():
    plugin = build(RequestTermination, trigger="X-Stop")
    assert run(plugin, make_request()) is None
    assert refused(run(plugin, make_request(headers=[("x-stop", "")])))[0] == 503
    assert refused(run(plugin, make_request("/?X-Stop")))[0] == 503
    assert run(plugin, make_request("/?x-stop=1")) is None  # query names are exact


def test_request_termination_echo_document():
    plugin = build(RequestTermination, status_code=200, echo=True)
    req = make_request("/orders/42?a=1&a=2&flag&e=", method="POST", body=b'{"k": [1, 2]}',
                       headers=[("Host", "api.test:8000"), ("Content-Type", "application/json"),
                                ("X-Twice", "1"), ("X-Twice", "2")],
                       route=ROUTE, service=SERVICE, uri_captures={"id": "42"})
    result = run(plugin, req)
    assert isinstance(result, Response) and result.status == 200
    doc = orjson.loads(result.body)
    assert doc["message"] is None
    assert doc["kong"]["worker_pid"] == os.getpid() and doc["kong"]["node_id"]
    request = doc["request"]
    assert (request["scheme"], request["host"], request["port"], request["method"],
            request["path"]) == ("http", "api.test", 8000, "POST", "/orders/42")
    assert request["query"] == {"a": ["1", "2"], "flag": True, "e": ""}
    assert request["headers"]["x-twice"] == ["1", "2"]
    assert request["body"] == {"k": [1, 2]} and request["raw_body"] == '{"k": [1, 2]}'
    assert request["uri_captures"] == {"id": "42"}
    assert doc["matched_route"]["id"] == "r-1"
    assert doc["matched_route"]["headers"] == {"x-version": ["1", "2"]}
    assert doc["matched_route"]["service"] == {"id": "s-1"}
    assert doc["matched_service"]["host"] == "orders.internal"


def test_echo_helpers():
    assert query_table("a=1&b=%20x+y&c&a=3&&") == {"a": ["1", "3"], "b": " x y", "c": True}
    assert parse_body("application/x-www-form-urlencoded; charset=utf-8", b"x=1&y=2&y=3") == \
        {"x": "1", "y": ["2", "3"]}
    assert parse_body("application/json", b"{not json") is None
    assert parse_body("text/plain", b"hello") is None
