"""The plugin system through a real gateway: order, precedence, phases, faults.

Custom plugins from ``tests/support/test_plugins.py`` are loaded the way a user loads
theirs (the ``plugins`` setting, here ``GUICHET_PLUGINS``).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time

import pytest

from support import declarative
from support.test_plugins import plugin_env
from support.upstream import pattern_bytes


@pytest.fixture(scope="module")
def chain_gateway(module_gateway_factory, upstream_servers, tmp_path_factory):
    u1 = upstream_servers[0].url
    log_path = tmp_path_factory.mktemp("plugin-log") / "requests.log"
    config = declarative(
        services=[
            {"name": "main", "url": u1,
             "plugins": [{"name": "trace-a", "config": {"tag": "service"}}],
             "routes": [
                 {"name": "specific", "paths": ["/specific"],
                  "plugins": [{"name": "trace-a", "config": {"tag": "route"}},
                              {"name": "trace-b", "config": {"tag": "route"}}]},
                 {"name": "plain", "paths": ["/plain"]},
                 {"name": "disabled", "paths": ["/disabled"],
                  "plugins": [{"name": "trace-a", "enabled": False, "config": {"tag": "off"}}]},
                 {"name": "https-only-plugin", "paths": ["/proto"],
                  "plugins": [{"name": "trace-b", "protocols": ["https"],
                               "config": {"tag": "tls"}}]},
             ]},
            {"name": "other", "url": u1, "routes": [
                {"name": "other", "paths": ["/other"]},
                {"name": "authed", "paths": ["/authed"],
                 "plugins": [{"name": "test-auth"}, {"name": "decorate"},
                             {"name": "file-log-test", "config": {"path": str(log_path)}}]},
                {"name": "faulty", "paths": ["/faulty"],
                 "plugins": [{"name": "boom"}, {"name": "decorate"},
                             {"name": "file-log-test", "config": {"path": str(log_path)}}]},
                {"name": "faulty-late", "paths": ["/late"],
                 "plugins": [{"name": "boom", "config": {"phase": "response_headers"}},
                             {"name": "decorate"}]},
                {"name": "slow", "paths": ["/slow"], "plugins": [{"name": "slow-check"}]},
                {"name": "upper", "paths": ["/upper"], "strip_path": True,
                 "plugins": [{"name": "decorate", "config": {"upper": True}}]},
                {"name": "body", "paths": ["/body"],
                 "plugins": [{"name": "body-length", "config": {"limit": 100}}]},
            ]},
        ],
        consumers=[
            {"username": "alice", "custom_id": "a-1",
             "plugins": [{"name": "trace-b", "config": {"tag": "alice"}}]},
            {"username": "bob"},
        ],
        plugins=[
            {"name": "trace-a", "config": {"tag": "global"}},
            {"name": "trace-b", "config": {"tag": "global"}},
            {"name": "trace-b", "route": "authed", "consumer": "bob", "config": {"tag": "bob-on-authed"}},
        ],
    )
    gw = module_gateway_factory(config, env=plugin_env())
    gw.log_path = log_path
    return gw


def trace_of(upstream) -> str | None:
    return upstream.requests[-1].header("x-trace")


def test_priority_order_and_most_specific_scope(chain_gateway, upstream, http):
    r = http.get(chain_gateway.url + "/specific")
    assert r.status_code == 200
    # trace-a (priority 5000) before trace-b (4000); the route's configurations win
    assert trace_of(upstream) == "trace-a=route trace-b=route"


def test_service_then_global_scope(chain_gateway, upstream, http):
    http.get(chain_gateway.url + "/plain")
    assert trace_of(upstream) == "trace-a=service trace-b=global"
    http.get(chain_gateway.url + "/other")
    assert trace_of(upstream) == "trace-a=global trace-b=global"


def test_disabled_plugin_does_not_hide_a_less_specific_one(chain_gateway, upstream, http):
    http.get(chain_gateway.url + "/disabled")
    assert trace_of(upstream) == "trace-a=service trace-b=global"


def test_plugin_runs_only_for_its_protocols(chain_gateway, upstream, http):
    http.get(chain_gateway.url + "/proto")
    # the route's trace-b is for https only; over http it does not run, and the global
    # trace-b does not stand in for it
    assert trace_of(upstream) == "trace-a=service"


def test_consumer_scoped_plugins_apply_after_authentication(chain_gateway, upstream, http):
    r = http.get(chain_gateway.url + "/authed", headers={"X-Test-User": "alice"})
    assert r.status_code == 200
    seen = upstream.requests[-1]
    assert seen.header("x-trace") == "trace-a=global trace-b=alice"
    assert seen.header("x-consumer-username") == "alice"
    assert seen.header("x-consumer-custom-id") == "a-1"
    assert seen.header("x-credential-identifier") == "alice"
    assert seen.header("x-anonymous-consumer") is None
    http.get(chain_gateway.url + "/authed", headers={"X-Test-User": "bob"})
    seen = upstream.requests[-1]
    assert seen.header("x-trace") == "trace-a=global trace-b=bob-on-authed"
    assert seen.header("x-consumer-custom-id") is None


def test_forged_identity_headers_never_reach_the_upstream(chain_gateway, upstream, http):
    http.get(chain_gateway.url + "/authed", headers={
        "X-Test-User": "bob", "X-Consumer-ID": "forged", "X-Consumer-Custom-ID": "forged",
        "X-Anonymous-Consumer": "true", "X-Authenticated-Userid": "forged",
        "X_Consumer_Custom_ID": "forged", "x_credential_identifier": "forged"})
    seen = upstream.requests[-1]
    assert not [n for n in seen.header_names() if "_" in n and "consumer" in n or "credential_" in n]
    assert len(seen.header_values("x-consumer-id")) == 1
    assert seen.header("x-consumer-id") != "forged"
    assert seen.header("x-consumer-custom-id") is None
    assert seen.header("x-anonymous-consumer") is None
    assert seen.header("x-authenticated-userid") is None


def test_refusal_is_an_answer_seen_by_response_plugins(chain_gateway, upstream, http):
    before = len(upstream.requests)
    r = http.get(chain_gateway.url + "/authed")
    assert r.status_code == 401
    assert r.json()["message"] == "Unauthorized"
    assert r.json()["request_id"] == r.headers["x-request-id"]
    assert r.headers["www-authenticate"] == 'Test realm="guichet"'
    assert r.headers["x-decorated"] == "401 local"
    assert len(upstream.requests) == before
    ok = http.get(chain_gateway.url + "/authed", headers={"X-Test-User": "alice"})
    assert ok.headers["x-decorated"] == "200 upstream"
    assert "x-upstream-id" not in ok.headers  # removed by the response_headers hook


def test_a_plugin_that_raises_costs_one_request_a_500(chain_gateway, upstream, http):
    before = len(upstream.requests)
    r = http.get(chain_gateway.url + "/faulty/boom")
    assert r.status_code == 500
    body = r.json()
    assert body["message"] == "An unexpected error occurred"
    assert body["request_id"]
    assert "Traceback" not in r.text and "boom" not in r.text
    assert r.headers["x-decorated"] == "500 local"
    assert len(upstream.requests) == before
    # the gateway keeps serving, on the same route too
    assert http.get(chain_gateway.url + "/faulty/fine").status_code == 200
    deadline = time.monotonic() + 5
    while "boom in access" not in chain_gateway.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    err = chain_gateway.stderr_text()
    line = next(l for l in err.splitlines() if "failed in access" in l)
    assert "'boom'" in line and "'faulty'" in line and body["request_id"] in line


def test_a_fault_after_the_answer_started_is_logged_and_the_answer_goes_on(chain_gateway, http):
    r = http.get(chain_gateway.url + "/late/boom")
    assert r.status_code == 200
    assert r.headers["x-decorated"] == "200 upstream"  # the next hook still ran
    assert "boom in response_headers" in chain_gateway.stderr_text() or _wait_for(
        chain_gateway, "boom in response_headers")


def _wait_for(gw, text: str) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if text in gw.stderr_text():
            return True
        time.sleep(0.05)
    return False


def test_async_access_hook_waits_then_goes_on_or_answers(chain_gateway, upstream, http):
    r = http.get(chain_gateway.url + "/slow")
    assert r.status_code == 200
    assert upstream.requests[-1].header("x-slow-checked") == "yes"
    r = http.get(chain_gateway.url + "/slow", headers={"X-Deny": "1"})
    assert r.status_code == 403
    assert r.json() == {"denied": True}
    assert r.headers["x-denied-by"] == "slow-check"
    assert r.headers["content-type"].startswith("application/json")


def test_async_hooks_of_pipelined_requests_answer_in_order(chain_gateway):
    with socket.create_connection(("127.0.0.1", chain_gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Deny: 1\r\n\r\n"
                     b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Deny: 1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
    assert statuses == [403, 200, 403]


def test_response_body_hook_rewrites_the_stream(chain_gateway, http):
    r = http.get(chain_gateway.url + "/upper/bytes/5000")
    assert r.status_code == 200
    assert r.content == pattern_bytes(5000).upper() + b"<END>"
    assert "content-length" not in r.headers or int(r.headers["content-length"]) == len(r.content)


def test_read_body_holds_the_body_and_still_forwards_it(chain_gateway, upstream, http):
    r = http.post(chain_gateway.url + "/body", content=b"x" * 60)
    assert r.status_code == 200
    seen = upstream.requests[-1]
    assert seen.header("x-body-length") == "60"
    assert seen.body_length == 60
    def chunks():
        yield b"a" * 30
        yield b"b" * 30
    r = http.post(chain_gateway.url + "/body", content=chunks())
    assert r.status_code == 200
    assert upstream.requests[-1].header("x-body-length") == "60"
    assert upstream.requests[-1].body == b"a" * 30 + b"b" * 30


def test_read_body_over_the_limit_is_413(chain_gateway, upstream, http):
    before = len(upstream.requests)
    assert http.post(chain_gateway.url + "/body", content=b"x" * 101).status_code == 413
    def chunks():
        for _ in range(5):
            yield b"y" * 30
    assert http.post(chain_gateway.url + "/body", content=chunks()).status_code == 413
    assert len(upstream.requests) == before


def test_client_gone_while_a_plugin_waits_for_the_body_leaves_nothing_pending(chain_gateway, http):
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", chain_gateway.port), timeout=5) as sock:
            sock.sendall(b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n")
            time.sleep(0.02)
    assert http.get(chain_gateway.url + "/plain").status_code == 200
    time.sleep(0.3)
    err = chain_gateway.stderr_text()
    assert "Task was destroyed" not in err and "never retrieved" not in err


def test_expect_continue_is_answered_only_when_the_body_is_wanted(chain_gateway, upstream):
    with socket.create_connection(("127.0.0.1", chain_gateway.port), timeout=5) as sock:
        sock.sendall(b"POST /authed HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 401 ")  # refused without asking for the body
    with socket.create_connection(("127.0.0.1", chain_gateway.port), timeout=5) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 ")
    assert upstream.requests[-1].header("x-body-length") == "5"


def test_log_phase_sees_every_finished_request(chain_gateway, http):
    path = chain_gateway.log_path
    start = path.read_text().count("\n") if path.exists() else 0
    http.get(chain_gateway.url + "/authed", headers={"X-Test-User": "alice"})
    http.get(chain_gateway.url + "/authed")
    http.get(chain_gateway.url + "/faulty/boom")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines()[start:] if path.exists() else []
        if len(lines) >= 3:
            break
        time.sleep(0.05)
    assert lines[:3] == ["200 authed alice", "401 authed -", "500 faulty -"]


def test_unknown_plugin_field_is_a_config_error_with_its_line(tmp_path):
    bad = tmp_path / "kong.yml"
    bad.write_text('_format_version: "3.0"\nplugins:\n- name: trace-a\n  config:\n'
                   '    tag: x\n    colour: red\n')
    env = dict(plugin_env())
    out = subprocess.run([sys.executable, "-m", "guichet", "check", "--config", str(bad)],
                         capture_output=True, text=True, env={**_base_env(), **env}, timeout=60)
    assert out.returncode == 1
    assert f"{bad}:6" in out.stderr and "plugins[0].config.colour: unknown field" in out.stderr


def test_auth_plugin_cannot_be_scoped_to_a_consumer(tmp_path):
    bad = tmp_path / "kong.yml"
    bad.write_text('_format_version: "3.0"\nconsumers:\n- username: a\n  plugins:\n'
                   '  - name: test-auth\n')
    out = subprocess.run([sys.executable, "-m", "guichet", "check", "--config", str(bad)],
                         capture_output=True, text=True, env={**_base_env(), **plugin_env()},
                         timeout=60)
    assert out.returncode == 1
    assert f"{bad}:5" in out.stderr and "test-auth" in out.stderr


def test_a_custom_plugin_that_cannot_be_imported_stops_the_node(tmp_path):
    cfg = tmp_path / "kong.yml"
    cfg.write_text('_format_version: "3.0"\n')
    env = {**_base_env(), **plugin_env(), "GUICHET_PLUGINS": "bundled,no_such_module:Thing"}
    out = subprocess.run([sys.executable, "-m", "guichet", "check", "--config", str(cfg)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 1
    assert "cannot import plugin module 'no_such_module'" in out.stderr


def _base_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_echo_of_upstream_json_is_unchanged_without_body_plugins(chain_gateway, http):
    r = http.get(chain_gateway.url + "/other/echo")
    assert json.loads(r.content)["path"] == "/echo"


def test_non_latin1_username_goes_upstream_as_utf8(gateway_factory, upstream, http):
    from guichet.config.loader import load_config_text
    from guichet.plugins.registry import Registry

    config = declarative(
        services=[{"name": "s", "url": upstream.url, "routes": [
            {"name": "authed", "paths": ["/authed"], "plugins": [{"name": "test-auth"}]}]}],
        consumers=[{"username": "李雷", "custom_id": "é-1"}])
    registry = Registry(["bundled", "support.test_plugins:TestAuth"])
    consumer_id = load_config_text(config, plugin_schemas=registry.schemas()).consumers[0].id
    gw = gateway_factory(config, env=plugin_env("TestAuth"))
    r = http.get(gw.url + "/authed", headers={"X-Test-User": consumer_id})
    assert r.status_code == 200
    seen = upstream.requests[-1]
    assert seen.header_values("x-consumer-username") == ["李雷".encode().decode("latin-1")]
    assert seen.header("x-consumer-custom-id") == "é-1".encode().decode("latin-1")
