"""The anonymous fallback and the logical OR/AND of authentication plugins, the same for
key-auth, basic-auth and hmac-auth (Kong's ``anonymous`` and ``set_consumer`` rules)."""

from __future__ import annotations

from typing import Any

from guichet.config.model import Consumer, KeyAuthCredential
from guichet.plugins.api import ErrorResponse
from guichet.plugins.bundled.basic_auth import BasicAuth
from guichet.plugins.bundled.hmac_auth import HmacAuth
from guichet.plugins.bundled.key_auth import KeyAuth
from guichet.plugins.env import BuildEnv
from support.plugin_requests import (assert_refused, build, make_env, make_request, run,
                                     upstream_headers)

ALICE = Consumer(id="c-alice", username="alice", custom_id="cust-1")
GUEST = Consumer(id="c-guest", username="guest")


def default_env() -> BuildEnv:
    return make_env((ALICE, GUEST), keyauth_credentials=(
        KeyAuthCredential(id="k-1", consumer_id="c-alice", key="alice-key"),))


def key_auth(**conf: Any) -> KeyAuth:
    return build(KeyAuth, default_env(), **conf)


def basic(**conf: Any) -> BasicAuth:
    return build(BasicAuth, default_env(), **conf)


def hmac_plugin(**conf: Any) -> HmacAuth:
    return build(HmacAuth, default_env(), **conf)


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
