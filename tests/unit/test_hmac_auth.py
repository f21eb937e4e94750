"""hmac-auth on requests built in memory: the Authorization/Proxy-Authorization value,
the signing string (@request-target, request-line, missing headers), each algorithm,
clock skew on Date/X-Date, enforce_headers, the Digest of the body, hide_credentials;
signatures over the bytes the client sent (non-ASCII header values, target, username)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import time
from email.utils import formatdate
from typing import Any

import pytest
from pydantic import ValidationError

from guichet.config.model import Consumer, HmacAuthCredential
from guichet.plugins.bundled.hmac_auth import (
    DATE_REQUIRED,
    SIGNATURE_NOT_SAME,
    SIGNATURE_NOT_VALID,
    HmacAuth,
    parse_authorization,
    signing_string,
)
from guichet.plugins.env import BuildEnv
from guichet.plugins.request import Request
from support.plugin_requests import (assert_refused, await_result, build, make_env, make_request,
                                     run, upstream_headers)

BOB = Consumer(id="c-bob", username="bob")


def default_env() -> BuildEnv:
    return make_env((BOB,), hmacauth_credentials=(
        HmacAuthCredential(id="h-1", consumer_id="c-bob", username="bob-hmac",
                           secret="bob-secret"),))


def hmac_plugin(env: BuildEnv | None = None, **conf: Any) -> HmacAuth:
    return build(HmacAuth, env or default_env(), **conf)


def now_date() -> str:
    return formatdate(usegmt=True)


def sign_request(secret: str, text: str, algorithm: str = "hmac-sha256") -> str:
    digestmod = {"hmac-sha1": hashlib.sha1, "hmac-sha256": hashlib.sha256,
                 "hmac-sha384": hashlib.sha384, "hmac-sha512": hashlib.sha512}[algorithm]
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), digestmod).digest()).decode()


def hmac_header(username: str, algorithm: str, headers: str, signature: str) -> str:
    return (f'hmac username="{username}", algorithm="{algorithm}", headers="{headers}", '
            f'signature="{signature}"')


def signed_request(algorithm: str = "hmac-sha256", secret: str = "bob-secret",
                   username: str = "bob-hmac", target: str = "/resource?a=1",
                   method: str = "GET", extra: list[tuple[str, str]] | None = None,
                   signed: str = "date @request-target", date: str | None = None,
                   header: str = "Authorization", body: bytes = b"") -> Request:
    date = date or now_date()
    headers = [("Date", date)] + (extra or [])
    values = {n.lower(): v for n, v in headers}
    lines = []
    for name in signed.split(" "):
        if name.lower() in values:
            lines.append(f"{name}: {values[name.lower()]}")
        elif name == "@request-target":
            lines.append(f"@request-target: {method.lower()} {target}")
        elif name == "request-line":
            lines.append(f"{method} {target} HTTP/1.1")
        else:
            lines.append(f"{name}:")
    signature = sign_request(secret, "\n".join(lines), algorithm)
    headers.append((header, hmac_header(username, algorithm, signed, signature)))
    return make_request(target, headers, method=method, body=body)


def test_hmac_auth_identity_and_config():
    assert (HmacAuth.name, HmacAuth.priority, HmacAuth.no_consumer) == ("hmac-auth", 1030, True)
    conf = HmacAuth.Config.model_validate({})
    assert conf.clock_skew == 300 and conf.enforce_headers == [] and conf.realm is None
    assert conf.algorithms == ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"]
    assert (conf.hide_credentials, conf.validate_request_body, conf.anonymous) == \
        (False, False, None)
    for bad in ({"algorithms": ["hmac-md5"]}, {"clock_skew": 0}, {"clock_skew": "300"}):
        with pytest.raises(ValidationError):
            HmacAuth.Config.model_validate(bad)


def test_parse_authorization():
    parsed = parse_authorization(hmac_header("u", "hmac-sha1", "date host", "c2ln"))
    assert parsed is not None
    assert (parsed.username, parsed.algorithm, parsed.headers, parsed.signature) == \
        ("u", "hmac-sha1", ["date", "host"], "c2ln")
    reordered = parse_authorization('Hmac signature="c2ln",headers="date",'
                                    'algorithm="hmac-sha1",username="u"')
    assert reordered is not None and reordered.username == "u"
    for bad in ("", "Basic abc", 'hmac username="u", algorithm="hmac-sha1", signature="x"',
                'hmac username="", algorithm="a", headers="date", signature="x"',
                'hmac username="u" algorithm="a"', "hmacusername"):
        assert parse_authorization(bad) is None, bad


def test_signing_string_rules():
    values = {"date": "Tue, 01 Jan 2030 00:00:00 GMT", "x-custom": "v"}
    text = signing_string(["date", "@request-target", "request-line", "x-missing", "X-Custom"],
                          lambda n: values.get(n.lower()), "POST", "/a?b=1", "1.1")
    assert text == ("date: Tue, 01 Jan 2030 00:00:00 GMT\n"
                    "@request-target: post /a?b=1\n"
                    "POST /a?b=1 HTTP/1.1\n"
                    "x-missing:\n"
                    "X-Custom: v")


@pytest.mark.parametrize("algorithm", ["hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512"])
def test_hmac_success_for_each_algorithm(algorithm):
    req = signed_request(algorithm)
    assert run(hmac_plugin(), req) is None
    assert req.consumer == BOB
    assert upstream_headers(req)["x-credential-identifier"] == "bob-hmac"


def test_hmac_request_line_and_proxy_authorization():
    req = signed_request(signed="date request-line x-extra", extra=[("X-Extra", "1")],
                         header="Proxy-Authorization")
    assert run(hmac_plugin(), req) is None and req.consumer == BOB


def test_hmac_refusals():
    plugin = hmac_plugin()
    assert_refused(run(plugin, make_request()), 401, "Unauthorized", "hmac")
    assert_refused(run(plugin, signed_request(secret="wrong")), 401, SIGNATURE_NOT_SAME, "hmac")
    assert_refused(run(plugin, signed_request(username="nobody")), 401, SIGNATURE_NOT_VALID, "hmac")
    tampered = signed_request(target="/resource?a=1")
    tampered._ex.url, tampered._ex.query = b"/resource?a=2", "a=2"  # type: ignore[attr-defined]
    assert_refused(run(plugin, tampered), 401, SIGNATURE_NOT_SAME, "hmac")
    assert_refused(run(hmac_plugin(algorithms=["hmac-sha512"]), signed_request("hmac-sha256")),
                   401, SIGNATURE_NOT_VALID, "hmac")
    assert_refused(run(hmac_plugin(enforce_headers=["date", "host"]), signed_request()),
                   401, SIGNATURE_NOT_VALID, "hmac")
    assert run(hmac_plugin(enforce_headers=["date"]), signed_request()) is None
    garbled = make_request(headers=[("Date", now_date()),
                                    ("Authorization", hmac_header("bob-hmac", "hmac-sha256",
                                                                  "date", "%%%"))])
    assert_refused(run(plugin, garbled), 401, SIGNATURE_NOT_SAME, "hmac")
    assert_refused(run(hmac_plugin(realm="api"), make_request()), 401, "Unauthorized",
                   'hmac realm="api"')


def test_hmac_clock_skew():
    plugin = hmac_plugin(clock_skew=30)
    old = formatdate(time.time() - 120, usegmt=True)
    assert_refused(run(plugin, signed_request(date=old)), 401, DATE_REQUIRED, "hmac")
    assert run(hmac_plugin(clock_skew=300), signed_request(date=old)) is None
    future = formatdate(time.time() + 120, usegmt=True)
    assert_refused(run(plugin, signed_request(date=future)), 401, DATE_REQUIRED, "hmac")
    assert_refused(run(plugin, signed_request(date="not a date")), 401, DATE_REQUIRED, "hmac")
    # X-Date is accepted in place of Date
    req = signed_request(date=old, signed="x-date", extra=[("X-Date", now_date())])
    assert run(plugin, req) is None


def test_hmac_validate_request_body():
    plugin = hmac_plugin(validate_request_body=True)
    body = b'{"a": 1}'
    digest = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
    good = signed_request(method="POST", body=body, extra=[("Digest", digest)],
                          signed="date digest")
    result = plugin.access(good)
    assert inspect.isawaitable(result)
    assert await_result(result) is None and good.consumer == BOB
    wrong = signed_request(method="POST", body=b'{"a": 2}', extra=[("Digest", digest)],
                           signed="date digest")
    assert_refused(run(plugin, wrong), 401, SIGNATURE_NOT_SAME, "hmac")
    no_digest = signed_request(method="POST", body=body)
    assert_refused(run(plugin, no_digest), 401, SIGNATURE_NOT_SAME, "hmac")
    empty = signed_request(method="GET")
    assert run(plugin, empty) is None
    # without validate_request_body the body is not looked at
    assert run(hmac_plugin(), signed_request(method="POST", body=b"x")) is None


def test_hmac_hide_credentials():
    req = signed_request()
    assert run(hmac_plugin(hide_credentials=True), req) is None
    assert upstream_headers(req)["authorization"] is None
    req = signed_request(header="Proxy-Authorization")
    assert run(hmac_plugin(hide_credentials=True), req) is None
    assert upstream_headers(req)["proxy-authorization"] is None


# ------------------------------------------------------------------ non-ASCII bytes
def as_sent(text: str) -> str:
    """What the request holds for ``text`` sent as UTF-8: Latin-1 text, a char per byte."""
    return text.encode("utf-8").decode("latin-1")


def test_signature_covers_the_bytes_sent_for_non_ascii_values():
    """The client signs the bytes it sends (UTF-8 here); the gateway signs the same bytes,
    not a re-encoding of the Latin-1 text it holds."""
    env = make_env((BOB,), hmacauth_credentials=(
        HmacAuthCredential(id="h-2", consumer_id="c-bob", username="zoë-hmac",
                           secret="sécret-密"),))
    date = now_date()
    target = "/café?q=密"
    text = f"date: {date}\nx-name: Zoë 李\n@request-target: get {target}"
    signature = sign_request("sécret-密", text)  # over the UTF-8 bytes
    headers = [("Date", date), ("X-Name", as_sent("Zoë 李")),
               ("Authorization", as_sent(hmac_header("zoë-hmac", "hmac-sha256",
                                                     "date x-name @request-target", signature)))]
    req = make_request(as_sent(target), headers)
    assert run(hmac_plugin(env), req) is None and req.consumer == BOB
    assert req.credential.username == "zoë-hmac"
    # a value whose bytes differ (Latin-1 instead of UTF-8) does not verify
    tampered = make_request(as_sent(target), [headers[0], ("X-Name", "Zoë 李".encode(
        "utf-8").decode("latin-1").replace("\xc3\xab", "\xeb")), headers[2]])
    assert_refused(run(hmac_plugin(env), tampered), 401, SIGNATURE_NOT_SAME, "hmac")
    # a username whose bytes are not UTF-8 names nobody
    latin_user = make_request(as_sent(target), [headers[0], headers[1], (
        "Authorization", hmac_header("zo\xeb-hmac", "hmac-sha256", "date", signature))])
    assert_refused(run(hmac_plugin(env), latin_user), 401, SIGNATURE_NOT_VALID, "hmac")


def test_request_target_is_the_raw_target():
    req = make_request("/a/../b?x=%41", [("Date", now_date())])
    assert req.raw_target == "/a/../b?x=%41"
    signed = signed_request(target="/a/../b?x=%41")
    assert run(hmac_plugin(), signed) is None
