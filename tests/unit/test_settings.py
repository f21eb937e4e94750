"""Node settings: defaults < settings file < environment < command line; secrets rules."""

from __future__ import annotations

import pytest

from guichet.errors import ConfigError
from guichet.settings import load_settings, parse_hostport


def test_defaults_are_the_guarantees():
    s = load_settings(environ={})
    assert s.listen == ("127.0.0.1:8000",)
    assert s.admin_listen == "127.0.0.1:8001"
    assert (s.max_request_line, s.max_header_size, s.max_headers) == (8192, 32768, 100)
    assert (s.client_header_timeout, s.client_body_timeout, s.keepalive_timeout) == (10, 30, 60)
    assert s.websocket_idle_timeout == 300 and s.websocket_max_message_size == 1 << 20
    assert s.workers >= 1


def test_environment_wins_over_file_and_flags_win_over_environment(tmp_path):
    f = tmp_path / "node.yml"
    f.write_text("keepalive_timeout: 5\nworkers: 3\ntrusted_ips: [10.0.0.0/8]\n")
    env = {"GUICHET_KEEPALIVE_TIMEOUT": "7", "GUICHET_TRUSTED_IPS": "192.168.0.0/16, ::1/128"}
    s = load_settings(str(f), environ=env)
    assert s.keepalive_timeout == 7
    assert s.workers == 3
    assert s.trusted_ips == ("192.168.0.0/16", "::1/128")
    s = load_settings(str(f), overrides={"workers": 1, "listen": None}, environ=env)
    assert s.workers == 1 and s.listen == ("127.0.0.1:8000",)
    env["GUICHET_SETTINGS"] = str(f)
    assert load_settings(environ=env).workers == 3


def test_bad_values_name_their_source(tmp_path):
    f = tmp_path / "node.yml"
    f.write_text("max_headers: lots\nunknown_knob: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(f), environ={})
    text = str(info.value)
    assert str(f) in text and "max_headers" in text and "unknown_knob" in text
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"GUICHET_TRUSTED_IPS": "not-a-cidr"})
    assert "trusted_ips" in str(info.value)


def test_admin_token_only_from_environment_or_file(tmp_path):
    f = tmp_path / "node.yml"
    f.write_text("admin_token: hunter2\n")
    with pytest.raises(ConfigError) as info:
        load_settings(str(f), environ={})
    assert "GUICHET_ADMIN_TOKEN" in str(info.value)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    assert load_settings(environ={"GUICHET_ADMIN_TOKEN_FILE": str(token_file)}).resolved_admin_token() == "s3cret"
    s = load_settings(environ={"GUICHET_ADMIN_TOKEN": "t0ken"})
    assert s.resolved_admin_token() == "t0ken"
    assert "t0ken" not in repr(s)


@pytest.mark.parametrize("value,expected", [
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),
    ("[::1]:8443", ("::1", 8443)),
    (":9000", ("0.0.0.0", 9000)),
])
def test_parse_hostport(value, expected):
    assert parse_hostport(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1", "host:0", "host:99999", "host:http"])
def test_parse_hostport_rejects(value):
    with pytest.raises(ValueError):
        parse_hostport(value)
