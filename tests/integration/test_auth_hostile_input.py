"""Hostile credentials never turn into a 500 or a hang: every authentication plugin answers
a malformed, oversized, non-UTF-8 or nonsensical credential with its 401 (or the parser's
400/431 for a head that breaks the limits), the gateway's JSON body, and keeps serving.
"""

from __future__ import annotations

import base64
import json

import pytest

from support import declarative
from support.rawhttp import RawConnection

KEY = "hostile-test-key-0123456789"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(header: object, claims: object, signature: bytes = b"sig") -> str:
    return ".".join((_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()),
                     _b64(signature)))


@pytest.fixture(scope="module")
def gw(module_gateway_factory, upstream_servers):
    u1 = upstream_servers[0].url
    return module_gateway_factory(declarative(
        services=[{"name": "s", "url": u1, "routes": [
            {"name": "key", "paths": ["/key"], "plugins": [{"name": "key-auth"}]},
            {"name": "basic", "paths": ["/basic"], "plugins": [{"name": "basic-auth"}]},
            {"name": "hmac", "paths": ["/hmac"], "plugins": [{"name": "hmac-auth"}]},
            {"name": "jwt", "paths": ["/jwt"], "plugins": [{"name": "jwt"}]},
        ]}],
        consumers=[{"username": "alice", "keyauth_credentials": [{"key": KEY}],
                    "basicauth_credentials": [{"username": "alice", "password": "pw"}],
                    "hmacauth_credentials": [{"username": "alice", "secret": "s3cret"}],
                    "jwt_secrets": [{"key": "iss-1", "secret": "jwt-secret"}]}],
    ))


NESTED = ('{"alg": "HS256", "typ": "JWT", "x": ' + "[" * 5000 + "]" * 5000 + "}").encode()
HOSTILE: list[tuple[str, bytes]] = [
    ("/key", b"apikey: " + b"k" * 10_000),
    ("/key", b"apikey: \xff\xfe\xc3\x28"),
    ("/key", b"apikey: " + KEY.encode() + b"\r\napikey: " + KEY.encode()),
    ("/key", b"apikey:"),
    ("/basic", b"Authorization: Basic ===="),
    ("/basic", b"Authorization: Basic " + base64.b64encode(b"\xff\xfe:\xc3\x28")),
    ("/basic", b"Authorization: Basic " + base64.b64encode(b"no-colon-at-all")),
    ("/basic", b"Authorization: Basic " + b"A" * 20_000),
    ("/basic", b"Authorization: Basic"),
    ("/basic", b"Authorization: Bearer x"),
    ("/hmac", b'Authorization: hmac username="alice",algorithm="hmac-sha256",'
              b'headers="date",signature="%%%"\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT'),
    ("/hmac", b'Authorization: hmac username="' + b"\xff" * 100 + b'"'),
    ("/hmac", b"Authorization: hmac " + b"," * 5000),
    ("/hmac", b'Authorization: hmac username="alice",algorithm="md5",headers="",signature="x"'),
    ("/jwt", b"Authorization: Bearer " + b"a.b.c"),
    ("/jwt", b"Authorization: Bearer " + _jwt({"alg": "none"}, {"iss": "iss-1"}, b"").encode()),
    ("/jwt", b"Authorization: Bearer " + ".".join(
        (_b64(NESTED), _b64(b'{"iss": "iss-1"}'), _b64(b"sig"))).encode()),
    ("/jwt", b"Authorization: Bearer " + _jwt({"alg": "HS256"}, {"iss": 12345}).encode()),
    ("/jwt", b"Authorization: Bearer " + _jwt({"alg": "HS256"}, ["not", "an", "object"]).encode()),
    ("/jwt", b"Authorization: Bearer " + _jwt({"alg": "HS256"}, {"iss": "x" * 20_000}).encode()),
    ("/jwt", b"Authorization: Bearer \xff\xfe.\xff.\xff"),
    ("/jwt", b"Authorization: Bearer " + b"." * 3000),
]


@pytest.mark.parametrize("path, header", HOSTILE,
                         ids=[f"{p}-{i}" for i, (p, _) in enumerate(HOSTILE)])
def test_hostile_credentials_get_a_clean_refusal(gw, upstream, path, header):
    request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n" + header + b"\r\n\r\n"
    with RawConnection(gw.port) as conn:
        conn.send(request)
        response = conn.read_response(timeout=10)
    assert response.status in (400, 401, 431), (response.status, response.body[:200])
    body = response.json()
    assert set(body) == {"message", "request_id"}
    assert "Traceback" not in response.body.decode("latin-1")
    assert upstream.requests == []


def test_the_gateway_still_serves_and_logged_no_fault(gw, http):
    assert http.get(gw.url + "/key", headers={"apikey": KEY}).status_code == 200
    err = gw.stderr_text(limit=2_000_000)
    assert "Traceback" not in err and "failed in access" not in err
