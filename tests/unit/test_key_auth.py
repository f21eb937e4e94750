"""key-auth on requests built in memory: where the key is looked for (header, query, body
forms), header precedence and names, lookup by keyed digest only, non-ASCII keys from each
place, credential ttl, hide_credentials, run_on_preflight; the form and multipart helpers;
and the realm rule shared by every authentication plugin."""

from __future__ import annotations

import inspect
import time
from typing import Any

import pytest
from pydantic import ValidationError

from guichet.config.model import Consumer, KeyAuthCredential
from guichet.plugins.bundled.basic_auth import BasicAuth
from guichet.plugins.bundled.hmac_auth import HmacAuth
from guichet.plugins.bundled.jwt_auth import JwtAuth
from guichet.plugins.bundled.jwt_jwks import JwtJwks
from guichet.plugins.bundled.key_auth import (
    KeyAuth,
    header_bytes,
    multipart_fields,
    parse_form,
    remove_form_field,
    remove_multipart_field,
)
from guichet.plugins.consumers import secret_digest
from guichet.plugins.env import BuildEnv
from support.plugin_requests import (assert_refused, await_result, build, make_env, make_request,
                                     run, upstream_headers)

ALICE = Consumer(id="c-alice", username="alice", custom_id="cust-1")
BOB = Consumer(id="c-bob", username="bob")


def default_env() -> BuildEnv:
    return make_env((ALICE, BOB), keyauth_credentials=(
        KeyAuthCredential(id="k-1", consumer_id="c-alice", key="alice-key"),
        KeyAuthCredential(id="k-2", consumer_id="c-bob", key="bob-key",
                          ttl=int(time.time()) + 3600),
        KeyAuthCredential(id="k-3", consumer_id="c-bob", key="clé-密钥")))


def as_sent(text: str) -> str:
    """A header value as the request holds it when the client sent ``text`` as UTF-8:
    Latin-1 text, one character per byte."""
    return text.encode("utf-8").decode("latin-1")


def key_auth(env: BuildEnv | None = None, **conf: Any) -> KeyAuth:
    return build(KeyAuth, env or default_env(), **conf)


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
    assert set(first.keys) == {secret_digest("alice-key"), secret_digest("bob-key"),
                                secret_digest("clé-密钥".encode("utf-8"))}
    assert all(isinstance(k, bytes) and len(k) == 32 for k in first.keys)
    assert key_auth().keys is not first.keys  # a new snapshot builds its own


def test_presented_key_is_only_ever_digested_then_looked_up(monkeypatch):
    """Constant time by construction: the presented key meets the stored ones only as a
    dict lookup of its HMAC digest, never in a comparison of plaintexts."""
    plugin = key_auth()
    digested: list[str | bytes] = []
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
    assert digested == [b"alice-kez", b"alice-key"]  # a header's key: the bytes sent
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
    assert await_result(result) is None and req.consumer == ALICE
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


# ------------------------------------------------------------------ non-ASCII keys
def test_non_ascii_key_matches_from_header_query_and_body():
    plugin = key_auth(key_in_body=True)
    req = make_request(headers=[("apikey", as_sent("clé-密钥"))])
    assert plugin.access(req) is None and req.consumer == BOB  # the fast path
    req = make_request(headers=[("x", "1"), ("apikey", as_sent("clé-密钥"))])
    assert run(key_auth(hide_credentials=True), req) is None and req.consumer == BOB
    req = make_request("/?apikey=cl%C3%A9-%E5%AF%86%E9%92%A5")
    assert run(plugin, req) is None and req.consumer == BOB
    req = make_request("/?apikey=" + as_sent("clé-密钥"))  # raw UTF-8 bytes in the query
    assert run(plugin, req) is None and req.consumer == BOB
    req = make_request(method="POST", headers=[("Content-Type", "application/json")],
                       body='{"apikey": "clé-密钥"}'.encode())
    assert run(plugin, req) is None and req.consumer == BOB
    # the same characters in another encoding are another key
    for wrong in (as_sent(as_sent("clé-密钥")), "clé-" + as_sent("密钥")):
        assert_refused(run(plugin, make_request(headers=[("apikey", wrong)])), 401,
                       "Unauthorized", "Key")
    assert_refused(run(plugin, make_request("/?apikey=cl%E9-%E5%AF%86%E9%92%A5")), 401,
                   "Unauthorized", "Key")


def test_header_bytes_gives_back_what_the_client_sent():
    assert header_bytes(as_sent("clé")) == "clé".encode("utf-8")
    assert header_bytes("caf\xe9") == b"caf\xe9"
    assert header_bytes("密") == "密".encode("utf-8")  # set by a plugin, never received


# ------------------------------------------------------------------ realm (every plugin)
JWKS_REQUIRED = {"issuer": "https://idp.test", "jwks_uri": "https://idp.test/keys",
                 "algorithms": ["RS256"]}
REALM_PLUGINS = [(KeyAuth, {}), (BasicAuth, {}), (HmacAuth, {}), (JwtAuth, {}),
                 (JwtJwks, JWKS_REQUIRED)]


@pytest.mark.parametrize("cls, required", REALM_PLUGINS)
@pytest.mark.parametrize("realm", ['a"b', "a\\b", "李", "café", "a\tb", "a\r\nX-Evil: 1",
                                   "a\x00", "a\x7f"])
def test_realm_refuses_what_a_quoted_string_cannot_hold_as_is(cls, required, realm):
    with pytest.raises(ValidationError, match="printable ASCII"):
        cls.Config.model_validate({**required, "realm": realm})


@pytest.mark.parametrize("cls, required", REALM_PLUGINS)
def test_realm_accepts_printable_ascii_and_spaces(cls, required):
    realm = "My API (v2) <prod> #1 ~'ok'"
    assert cls.Config.model_validate({**required, "realm": realm}).realm == realm


def test_realm_error_names_the_file_line():
    from guichet.config.loader import load_config_text
    from guichet.errors import ConfigError
    from guichet.plugins.registry import default_registry

    text = ('_format_version: "3.0"\nplugins:\n- name: basic-auth\n  config:\n'
            '    realm: "\u674e"\n')
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "kong.yml", plugin_schemas=default_registry().schemas())
    found = [str(issue) for issue in info.value.issues]
    assert len(found) == 1 and found[0].startswith("kong.yml:5:"), found
    assert "realm" in found[0] and "printable ASCII" in found[0]
