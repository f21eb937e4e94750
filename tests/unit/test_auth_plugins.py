"""key-auth, basic-auth and hmac-auth: the logic of each plugin on requests built in
memory (header parsing, key lookup, signing strings, clock skew, anonymous fallback)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import time
from email.utils import formatdate
from typing import Any

import bcrypt
import pytest
from pydantic import ValidationError

from guichet.config.model import (
    BasicAuthCredential,
    Config,
    Consumer,
    HmacAuthCredential,
    KeyAuthCredential,
)
from guichet.plugins.api import ErrorResponse
from guichet.plugins.bundled import basic_auth as basic_auth_module
from guichet.plugins.bundled.basic_auth import BasicAuth, VerifiedPasswords, parse_basic
from guichet.plugins.bundled.hmac_auth import (
    DATE_REQUIRED,
    SIGNATURE_NOT_SAME,
    SIGNATURE_NOT_VALID,
    HmacAuth,
    parse_authorization,
    signing_string,
)
from guichet.plugins.bundled.key_auth import (
    KeyAuth,
    multipart_fields,
    parse_form,
    remove_form_field,
    remove_multipart_field,
)
from guichet.plugins.consumers import ConsumerDirectory, secret_digest
from guichet.plugins.env import BuildEnv
from guichet.plugins.request import Request
from guichet.plugins.stores import Stores

ALICE = Consumer(id="c-alice", username="alice", custom_id="cust-1")
BOB = Consumer(id="c-bob", username="bob")
GUEST = Consumer(id="c-guest", username="guest")
PASSWORD_HASH = bcrypt.hashpw(b"open sesame", bcrypt.gensalt(4)).decode()


def make_env(**credentials: Any) -> BuildEnv:
    config = Config(consumers=(ALICE, BOB, GUEST), **credentials)
    return BuildEnv(ConsumerDirectory(config), None, Stores())


def default_env() -> BuildEnv:
    return make_env(
        keyauth_credentials=(KeyAuthCredential(id="k-1", consumer_id="c-alice", key="alice-key"),
                             KeyAuthCredential(id="k-2", consumer_id="c-bob", key="bob-key",
                                               ttl=int(time.time()) + 3600)),
        basicauth_credentials=(BasicAuthCredential(id="b-1", consumer_id="c-alice",
                                                   username="alice-basic",
                                                   password_hash=PASSWORD_HASH),),
        hmacauth_credentials=(HmacAuthCredential(id="h-1", consumer_id="c-bob",
                                                 username="bob-hmac", secret="bob-secret"),),
    )


class FakeExchange:
    """The part of the server's Exchange that Request reads."""

    _lazy_headers = None  # Request reads it before scanning the headers

    def __init__(self, method: str, target: str, headers: list[tuple[str, str]],
                 body: bytes, http10: bool) -> None:
        self.method = method.encode()
        path, _, query = target.partition("?")
        self.raw_path = self.path = path
        self.query = query
        self.headers = [(n.lower().encode("latin-1"), n.encode("latin-1"), v.encode("latin-1"))
                        for n, v in headers]
        self.has_body = bool(body)
        self.content_length = len(body) if body else None
        self.body_complete = True
        self.body_pending = [body] if body else None
        self.body_received = len(body)
        self.http10 = http10
        self.request_id = "rid-1"

    def lazy_headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for lname, _, value in self.headers:
            key = lname.decode()
            out[key] = out[key] + ", " + value.decode() if key in out else value.decode()
        return out

    def rid(self) -> str:
        return self.request_id


def make_request(target: str = "/", headers: list[tuple[str, str]] | None = None,
                 method: str = "GET", body: bytes = b"", http10: bool = False) -> Request:
    return Request(FakeExchange(method, target, headers or [], body, http10))  # type: ignore[arg-type]


def run(plugin: Any, req: Request) -> Any:
    """Call the access hook; wait for it when it returned an awaitable."""
    result = plugin.access(req)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def upstream_headers(req: Request) -> dict[str, str | None]:
    """What the plugins asked to send upstream: name -> value, None when removed."""
    return {name: (values[-1][1] if values else None) for name, values in (req.edits or {}).items()}


def key_auth(env: BuildEnv | None = None, **conf: Any) -> KeyAuth:
    return KeyAuth(KeyAuth.Config.model_validate(conf), env or default_env())


def basic(env: BuildEnv | None = None, **conf: Any) -> BasicAuth:
    return BasicAuth(BasicAuth.Config.model_validate(conf), env or default_env())


def hmac_plugin(env: BuildEnv | None = None, **conf: Any) -> HmacAuth:
    return HmacAuth(HmacAuth.Config.model_validate(conf), env or default_env())


def assert_refused(result: Any, status: int, message: str, www_authenticate: str | None) -> None:
    assert isinstance(result, ErrorResponse), result
    assert (result.status, result.message) == (status, message)
    assert dict(result.headers).get("WWW-Authenticate") == www_authenticate


# ======================================================================== key-auth
def test_key_auth_identity():
    assert (KeyAuth.name, KeyAuth.priority, KeyAuth.no_consumer) == ("key-auth", 1250, True)
    conf = KeyAuth.Config.model_validate({})
    assert conf.key_names == ["apikey"]
    assert (conf.key_in_header, conf.key_in_query, conf.key_in_body) == (True, True, False)
    assert (conf.hide_credentials, conf.run_on_preflight, conf.anonymous, conf.realm) == \
        (False, True, None, None)


@pytest.mark.parametrize("conf", [{"key_names": ["bad name"]}, {"key_names": ["a:b"]},
                                  {"unknown": 1}, {"hide_credentials": "yes"},
                                  {"realm": "a\r\nSet-Cookie: x"}])
def test_key_auth_config_refused(conf):
    with pytest.raises(ValidationError):
        KeyAuth.Config.model_validate(conf)


def test_key_in_header_authenticates_and_sets_identity_headers():
    req = make_request(headers=[("apikey", "alice-key")])
    assert run(key_auth(), req) is None
    assert req.consumer == ALICE and req.credential.id == "k-1" and req.authenticated
    sent = upstream_headers(req)
    assert sent["x-consumer-id"] == "c-alice"
    assert sent["x-consumer-username"] == "alice"
    assert sent["x-consumer-custom-id"] == "cust-1"
    assert sent["x-credential-identifier"] == "k-1"  # key-auth: the credential id
    assert sent["x-anonymous-consumer"] is None
    assert "apikey" not in sent  # not hidden by default


def test_key_in_query_and_header_precedence():
    req = make_request("/p?apikey=bob-key")
    assert run(key_auth(), req) is None and req.consumer == BOB
    req = make_request("/p?apikey=bob-key", [("apikey", "alice-key")])
    assert run(key_auth(), req) is None and req.consumer == ALICE  # header first
    req = make_request("/p?apikey=bob-key", [("apikey", "alice-key")])
    assert run(key_auth(key_in_header=False), req) is None and req.consumer == BOB
    req = make_request("/p?apikey=bob-key")
    assert_refused(run(key_auth(key_in_query=False), req), 401,
                   "No API key found in request", "Key")


def test_key_names_in_order_and_underscore_header_alias():
    plugin = key_auth(key_names=["x_api_key", "apikey"])
    req = make_request(headers=[("X-Api-Key", "bob-key"), ("apikey", "alice-key")])
    assert run(plugin, req) is None and req.consumer == BOB


def test_missing_wrong_empty_and_duplicate_keys():
    plugin = key_auth()
    assert_refused(run(plugin, make_request()), 401, "No API key found in request", "Key")
    assert_refused(run(plugin, make_request(headers=[("apikey", "nope")])), 401,
                   "Unauthorized", "Key")
    assert_refused(run(plugin, make_request("/?apikey=")), 401,
                   "No API key found in request", "Key")
    assert_refused(run(plugin, make_request(headers=[("apikey", "alice-key"),
                                                     ("apikey", "bob-key")])),
                   401, "Duplicate API key found", "Key")
    assert_refused(run(plugin, make_request("/?apikey=a&apikey=b")), 401,
                   "Duplicate API key found", "Key")
    # "?apikey" without "=" is not a string value for Kong: ignored
    assert_refused(run(plugin, make_request("/?apikey")), 401,
                   "No API key found in request", "Key")
    refused = run(key_auth(realm="kong"), make_request(headers=[("apikey", "nope")]))
    assert_refused(refused, 401, "Unauthorized", 'Key realm="kong"')


def test_wrong_key_with_right_prefix_is_just_unauthorized():
    plugin = key_auth()
    for guess in ("alice-ke", "alice-keyy", "alice-kez", "Alice-key"):
        assert_refused(run(plugin, make_request(headers=[("apikey", guess)])), 401,
                       "Unauthorized", "Key")


def test_keys_are_indexed_by_keyed_digest_once_per_snapshot():
    env = default_env()
    first, second = key_auth(env), key_auth(env, key_names=["other"])
    assert first.keys is second.keys  # one index per snapshot, shared
    assert set(first.keys) == {secret_digest("alice-key"), secret_digest("bob-key")}
    assert all(isinstance(k, bytes) and len(k) == 32 for k in first.keys)
    assert key_auth().keys is not first.keys  # a new snapshot builds its own


def test_presented_key_is_only_ever_digested_then_looked_up(monkeypatch):
    """Constant time by construction: the presented key meets the stored ones only as a
    dict lookup of its HMAC digest, never in a comparison of plaintexts."""
    plugin = key_auth()
    digested: list[str] = []
    real = secret_digest
    monkeypatch.setattr("guichet.plugins.bundled.key_auth.secret_digest",
                        lambda key: digested.append(key) or real(key))
    looked_up: list[bytes] = []

    class SpyIndex(dict):
        def get(self, key, default=None):
            looked_up.append(key)
            return super().get(key, default)

        def __eq__(self, other):  # pragma: no cover - must not be used
            raise AssertionError("index compared")

    plugin.keys = SpyIndex(plugin.keys)
    assert_refused(run(plugin, make_request(headers=[("apikey", "alice-kez")])), 401,
                   "Unauthorized", "Key")
    assert run(plugin, make_request(headers=[("apikey", "alice-key")])) is None
    assert digested == ["alice-kez", "alice-key"]
    assert looked_up == [real("alice-kez"), real("alice-key")]


def test_credential_ttl_is_the_unix_time_it_expires(monkeypatch):
    plugin = key_auth()
    req = make_request(headers=[("apikey", "bob-key")])
    assert run(plugin, req) is None and req.consumer == BOB
    later = time.time() + 3601
    monkeypatch.setattr("guichet.plugins.bundled.key_auth.time.time", lambda: later)
    assert_refused(run(plugin, make_request(headers=[("apikey", "bob-key")])), 401,
                   "Unauthorized", "Key")
    req = make_request(headers=[("apikey", "alice-key")])  # no ttl: never expires
    assert run(plugin, req) is None


def test_hide_credentials_removes_header_and_query_arg():
    plugin = key_auth(hide_credentials=True)
    req = make_request("/p?a=1&apikey=alice-key&b=%20x", [("apikey", "nothing")])
    assert_refused(run(plugin, req), 401, "Unauthorized", "Key")
    assert upstream_headers(req)["apikey"] is None
    assert req.upstream_query == "a=1&b=%20x"
    req = make_request("/p?apikey=alice-key")
    assert run(plugin, req) is None and req.upstream_query == ""


def test_run_on_preflight():
    assert run(key_auth(run_on_preflight=False), make_request(method="OPTIONS")) is None
    assert_refused(run(key_auth(), make_request(method="OPTIONS")), 401,
                   "No API key found in request", "Key")


@pytest.mark.parametrize("content_type, body", [
    ("application/x-www-form-urlencoded", b"x=1&apikey=alice-key"),
    ("application/json; charset=utf-8", b'{"x": 1, "apikey": "alice-key"}'),
    ("multipart/form-data; boundary=XyZ",
     b'--XyZ\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n'
     b'--XyZ\r\nContent-Disposition: form-data; name="apikey"\r\n\r\nalice-key\r\n--XyZ--\r\n'),
])
def test_key_in_body(content_type, body):
    plugin = key_auth(key_in_body=True)
    req = make_request(method="POST", headers=[("Content-Type", content_type)], body=body)
    result = plugin.access(req)
    assert inspect.isawaitable(result)  # the body must be read first
    assert asyncio.run(_await(result)) is None and req.consumer == ALICE
    # without key_in_body the body is not read
    refused = run(key_auth(), make_request(method="POST", headers=[("Content-Type", content_type)],
                                           body=body))
    assert_refused(refused, 401, "No API key found in request", "Key")


def test_key_in_body_json_values_kong_way():
    plugin = key_auth(key_in_body=True)

    def post(body: bytes) -> Any:
        return run(plugin, make_request(method="POST", body=body,
                                        headers=[("Content-Type", "application/json")]))

    assert_refused(post(b'{"apikey": ["a", "b"]}'), 401, "Duplicate API key found", "Key")
    assert_refused(post(b'{"apikey": 12}'), 401, "No API key found in request", "Key")
    assert_refused(post(b'["alice-key"]'), 401, "No API key found in request", "Key")
    assert_refused(post(b"{not json"), 401, "No API key found in request", "Key")


def test_key_found_in_first_header_needs_no_body_read():
    plugin = key_auth(key_in_body=True)
    req = make_request(method="POST", headers=[("apikey", "alice-key"),
                                               ("Content-Type", "application/json")],
                       body=b'{"apikey": "bob-key"}')
    assert plugin.access(req) is None and req.consumer == ALICE


def test_form_and_multipart_helpers():
    assert parse_form("a=1&b&a=2&c=x+y%21") == {"a": ["1", "2"], "b": [None], "c": ["x y!"]}
    assert remove_form_field("a=1&api%6Bey=k&b=2&apikey", "apikey") == "a=1&b=2"
    ctype = 'multipart/form-data; boundary="B"'
    body = (b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n'
            b'--B\r\nContent-Disposition: form-data; name="apikey"\r\n\r\nk\r\n--B--\r\n')
    assert multipart_fields(ctype, body) == [("a", "1"), ("apikey", "k")]
    stripped = remove_multipart_field(ctype, body, "apikey")
    assert multipart_fields(ctype, stripped) == [("a", "1")]
    with pytest.raises(ValueError):
        multipart_fields("multipart/form-data", body)


# ---------------------------------------------------------------- anonymous (all plugins)
def test_anonymous_fallback_sets_anonymous_consumer():
    for plugin in (key_auth(anonymous="guest"), basic(anonymous="c-guest"),
                   hmac_plugin(anonymous="guest")):
        req = make_request()
        assert run(plugin, req) is None, plugin.name
        assert req.consumer == GUEST and req.credential is None and not req.authenticated
        sent = upstream_headers(req)
        assert sent["x-anonymous-consumer"] == "true"
        assert sent["x-consumer-username"] == "guest"
        assert sent["x-credential-identifier"] is None


def test_anonymous_naming_no_consumer_is_a_500():
    for plugin in (key_auth(anonymous="ghost"), basic(anonymous="ghost"),
                   hmac_plugin(anonymous="ghost")):
        result = run(plugin, make_request())
        assert isinstance(result, ErrorResponse)
        assert result.status == 500
        assert result.message == "anonymous consumer ghost is configured but doesn't exist"


def test_logical_or_skips_when_already_authenticated_and_logical_and_does_not():
    req = make_request(headers=[("apikey", "alice-key")])
    assert run(key_auth(), req) is None and req.consumer == ALICE
    # basic-auth with anonymous: already authenticated by key-auth -> nothing to do
    assert run(basic(anonymous="guest"), req) is None and req.consumer == ALICE
    # basic-auth without anonymous: it must authenticate as well (logical AND)
    assert_refused(run(basic(), req), 401, "Unauthorized", 'Basic realm="service"')
    # an anonymous consumer set earlier does not count as authenticated
    req = make_request(headers=[("apikey", "alice-key")])
    assert run(hmac_plugin(anonymous="guest"), req) is None and req.consumer == GUEST
    assert run(key_auth(anonymous="guest"), req) is None and req.consumer == ALICE


# ======================================================================== basic-auth
def basic_header(username: str, password: str, scheme: str = "Basic") -> str:
    return f"{scheme} " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_basic_auth_identity_and_config():
    assert (BasicAuth.name, BasicAuth.priority, BasicAuth.no_consumer) == ("basic-auth", 1100, True)
    conf = BasicAuth.Config.model_validate({})
    assert (conf.anonymous, conf.hide_credentials, conf.realm) == (None, False, "service")
    with pytest.raises(ValidationError):  # Kong's basic-auth has no run_on_preflight
        BasicAuth.Config.model_validate({"run_on_preflight": False})


@pytest.mark.parametrize("value, expected", [
    (basic_header("u", "p"), ("u", "p")),
    (basic_header("u", ""), ("u", "")),
    (basic_header("u", "a:b"), ("u", "a:b")),
    (basic_header("u", "p", "basic"), ("u", "p")),
    ("Basic   " + base64.b64encode(b"u:p").decode() + "  ", ("u", "p")),
    ("Basic " + base64.b64encode(b"ab:c").decode().rstrip("="), ("ab", "c")),
    (basic_header("", "p"), None),
    ("Basic " + base64.b64encode(b"no-colon").decode(), None),
    ("Basic !!!notbase64", None),
    ("Basic ", None),
    ("Bearer abc", None),
    ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), None),
    (None, None),
])
def test_parse_basic(value, expected):
    assert parse_basic(value) == expected


def test_basic_auth_success_then_cached(monkeypatch):
    plugin = basic()
    req = make_request(headers=[("Authorization", basic_header("alice-basic", "open sesame"))])
    result = plugin.access(req)
    assert inspect.isawaitable(result)  # first time: verified in a thread
    assert asyncio.run(_await(result)) is None
    assert req.consumer == ALICE and req.credential.id == "b-1"
    sent = upstream_headers(req)
    assert sent["x-credential-identifier"] == "alice-basic"  # basic-auth: the username
    assert sent["x-consumer-id"] == "c-alice"

    def no_verification(*_: Any) -> bool:
        raise AssertionError("verified again")

    monkeypatch.setattr(basic_auth_module, "verify_password", no_verification)
    again = make_request(headers=[("Authorization", basic_header("alice-basic", "open sesame"))])
    assert plugin.access(again) is None and again.consumer == ALICE  # cached, synchronous
    # another instance of the same snapshot shares the cache
    other = BasicAuth(plugin.config, plugin.env)
    assert other.verified is plugin.verified


def test_basic_auth_refusals_do_not_reveal_which_part_failed(monkeypatch):
    plugin = basic(realm="kong")
    dummy_calls: list[str] = []
    real_dummy = basic_auth_module.verify_against_dummy
    monkeypatch.setattr(basic_auth_module, "verify_against_dummy",
                        lambda p: dummy_calls.append(p) or real_dummy(p))
    www = 'Basic realm="kong"'
    assert_refused(run(plugin, make_request()), 401, "Unauthorized", www)
    assert_refused(run(plugin, make_request(headers=[("Authorization", "Basic ???")])), 401,
                   "Unauthorized", www)
    wrong_password = make_request(headers=[("Authorization", basic_header("alice-basic", "x"))])
    assert_refused(run(plugin, wrong_password), 401, "Unauthorized", www)
    assert dummy_calls == []
    unknown_user = make_request(headers=[("Authorization", basic_header("mallory", "x"))])
    assert_refused(run(plugin, unknown_user), 401, "Unauthorized", www)
    assert dummy_calls == ["x"]  # an unknown user still costs one verification
    # failures are not cached: the right password still works afterwards
    ok = make_request(headers=[("Authorization", basic_header("alice-basic", "open sesame"))])
    assert run(plugin, ok) is None


def test_basic_auth_proxy_authorization_first_then_authorization():
    plugin = basic()
    good = basic_header("alice-basic", "open sesame")
    req = make_request(headers=[("Proxy-Authorization", good)])
    assert run(plugin, req) is None and req.consumer == ALICE
    # unknown user in Proxy-Authorization: Authorization is tried
    req = make_request(headers=[("Proxy-Authorization", basic_header("nobody", "x")),
                                ("Authorization", good)])
    assert run(plugin, req) is None and req.consumer == ALICE
    # known user with a wrong password in Proxy-Authorization: refused (as Kong)
    req = make_request(headers=[("Proxy-Authorization", basic_header("alice-basic", "bad")),
                                ("Authorization", good)])
    assert_refused(run(plugin, req), 401, "Unauthorized", 'Basic realm="service"')


def test_basic_auth_hide_credentials():
    plugin = basic(hide_credentials=True)
    req = make_request(headers=[("Authorization", basic_header("alice-basic", "open sesame"))])
    assert run(plugin, req) is None
    assert upstream_headers(req)["authorization"] is None
    req = make_request(headers=[("Authorization", basic_header("alice-basic", "open sesame"))])
    assert run(basic(), req) is None and "authorization" not in upstream_headers(req)


def test_basic_auth_argon2_credential():
    from argon2 import PasswordHasher

    hashed = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("pw")
    env = make_env(basicauth_credentials=(
        BasicAuthCredential(id="b-2", consumer_id="c-bob", username="bob", password_hash=hashed),))
    req = make_request(headers=[("Authorization", basic_header("bob", "pw"))])
    assert run(basic(env), req) is None and req.consumer == BOB


def test_verified_cache_is_bounded_and_keyed_by_digest():
    cache = VerifiedPasswords(size=3)
    keys = [VerifiedPasswords.key(f"user{i}", "pw") for i in range(5)]
    for i, key in enumerate(keys):
        cache.add(key, f"cred{i}")
    assert len(cache.entries) == 3
    assert cache.get(keys[0]) is None and cache.get(keys[4]) == "cred4"
    assert VerifiedPasswords.key("a:b", "c") != VerifiedPasswords.key("a", "b:c")
    assert all(b"pw" not in k for k in cache.entries)


# ======================================================================== hmac-auth
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
    tampered._ex.query = "a=2"  # type: ignore[attr-defined]
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
    assert asyncio.run(_await(result)) is None and good.consumer == BOB
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
