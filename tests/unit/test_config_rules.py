"""Kong's value rules (guichet.config.rules, guichet.config.pcre, url shorthand)."""

import re

import pytest

from guichet.config import rules
from guichet.config.checks import parse_service_url
from guichet.config.pcre import compile_pcre, translate_pcre


def _fails(check, value):
    with pytest.raises(ValueError) as info:
        check(value)
    return str(info.value)


@pytest.mark.parametrize("host", ["example.com", "a-b.c_d.example.", "10.0.0.1", "::1",
                                  "[2001:db8::1]", "localhost"])
def test_service_host_accepts(host):
    assert rules.check_host(host) == host


@pytest.mark.parametrize("host, message", [
    ("example.com:80", "must not have a port"),
    ("10.0.0.1:80", "must not have a port"),
    ("exa mple.com", "invalid value: exa mple.com"),
    ("a-.example.com", "invalid value: a-.example.com"),
    ("a..b", "invalid value: a..b"),
    ("300.1.1.1", "invalid value: 300.1.1.1"),
    ("host:99999", "must not have a port"),
])
def test_service_host_refuses(host, message):
    assert _fails(rules.check_host, host) == message


def test_parse_host_normalises_addresses():
    v4 = rules.parse_host("010.000.000.001:8080")
    assert (v4.kind, v4.host, v4.port) == ("ipv4", "10.0.0.1", 8080)
    v6 = rules.parse_host("[2001:0db8:0000::0001]:443")
    assert (v6.kind, v6.host, v6.port) == ("ipv6", "2001:db8::1", 443)
    name = rules.parse_host("api.internal:81")
    assert (name.kind, name.host, name.port) == ("name", "api.internal", 81)


@pytest.mark.parametrize("host", ["*.example.com", "example.*", "api.example.com:8443",
                                  "*.example.com:80"])
def test_route_hosts_accept_one_edge_wildcard(host):
    assert rules.check_route_host(host) == host


@pytest.mark.parametrize("host, fragment", [
    ("*.*.example.com", "at most one wildcard"),
    ("api.*.com", "leftmost or rightmost"),
    ("*example.com", "leftmost or rightmost"),
])
def test_route_hosts_refuse_bad_wildcards(host, fragment):
    assert fragment in _fails(rules.check_route_host, host)


def test_sni_rules():
    assert rules.check_sni("*.example.com") == "*.example.com"
    assert _fails(rules.check_sni, "10.0.0.1") == "must not be an IP"
    assert _fails(rules.check_sni, "example.com:443") == "must not have a port"
    assert "only one wildcard" in _fails(rules.check_sni, "*.a.*")
    assert _fails(lambda v: rules.check_sni(v, wildcard=False), "*.a") == "invalid value: *.a"


@pytest.mark.parametrize("path", ["/", "/api", "/a/b-c_d.e~f", "/a%2Fb", "~/users/\\d+",
                                  "~/users/(?<id>\\d+)$", "/caf\u00e9", "~/a|b"])
def test_router_paths_accept(path):
    assert rules.check_router_path(path) == path


@pytest.mark.parametrize("path, fragment", [
    ("api", "should start with: / (fixed path) or ~/ (regex path)"),
    ("~api", "should start with"),
    ("/a//b", "must not have empty segments"),
    ("/a/../b", "non-normalized path, consider use '/b' instead"),
    ("/x%7E", "non-normalized path, consider use '/x~' instead"),
    ("/a%20b", "non-normalized path, consider use '/a b' instead"),  # as in Kong
    ("/a%2fb", "non-normalized path, consider use '/a%2Fb' instead"),
    ("/x%zz", "invalid url-encoded value: '%zz'"),
    ("~/(unclosed", "invalid regex"),
])
def test_router_paths_refuse(path, fragment):
    assert fragment in _fails(rules.check_router_path, path)


def test_service_path_rules():
    assert rules.check_path("/v1/items") == "/v1/items"
    assert "RFC 3986" in _fails(rules.check_path, "/a b")
    assert _fails(rules.check_path, "v1") == "should start with: /"


def test_names_tags_headers_methods_uuids():
    assert rules.check_utf8_name("svc-1.a_b~c") == "svc-1.a_b~c"
    assert rules.check_utf8_name("café") == "café"
    assert "only accepted ascii" in _fails(rules.check_utf8_name, "my service")
    assert rules.check_tag("tier: 1") == "tier: 1"
    assert "invalid tag" in _fails(rules.check_tag, "a,b")
    assert "invalid tag" in _fails(rules.check_tag, "a/b")
    assert rules.check_header_name("X-Api_Key") == "X-Api_Key"
    assert "bad header name" in _fails(rules.check_header_name, "X Api")
    assert rules.check_method("PATCH") == "PATCH"
    assert "HTTP method" in _fails(rules.check_method, "get")
    assert rules.check_uuid("4F4C2A7E-9B0E-4D34-A5A4-3F1A0C1F6B11") == \
        "4f4c2a7e-9b0e-4d34-a5a4-3f1a0c1f6b11"
    assert _fails(rules.check_uuid, "not-a-uuid") == "expected a valid UUID"
    assert "invalid characters" in _fails(rules.check_cookie_name, "a;b")


def test_upstream_names_and_targets():
    assert rules.check_upstream_name("backend.internal") == "backend.internal"
    assert "no ip addresses allowed" in _fails(rules.check_upstream_name, "10.0.0.1")
    assert "no port allowed" in _fails(rules.check_upstream_name, "backend:80")
    assert rules.check_target("[::1]:8080") == "[::1]:8080"
    assert "not a valid hostname" in _fails(rules.check_target, "bad host")


def test_normalize_uri_matches_kong():
    assert rules.normalize_uri("/a/./b/../c//d", merge_slashes=True) == "/a/c/d"
    assert rules.normalize_uri("/a//b", merge_slashes=False) == "/a//b"
    assert rules.normalize_uri("/%41%2f", merge_slashes=True) == "/A%2F"
    assert rules.normalize_uri("/../..", merge_slashes=True) == "/"


def test_pcre_named_groups_are_translated():
    assert translate_pcre(r"/u/(?<id>\d+)\z") == r"/u/(?P<id>\d+)\Z"
    assert translate_pcre(r"(?<=a)b(?<!c)") == r"(?<=a)b(?<!c)"
    assert translate_pcre(r"[(?<x>]") == r"[(?<x>]"
    assert translate_pcre(r"(?'n'a)\k<n>") == r"(?P<n>a)(?P=n)"
    assert compile_pcre(r"/users/(?<id>\d+)$").match("/users/42").group("id") == "42"
    with pytest.raises(re.error):
        compile_pcre(r"\K")


@pytest.mark.parametrize("url, fields", [
    ("http://rest:3000", {"protocol": "http", "host": "rest", "port": 3000}),
    ("https://api.example.com/v1/", {"protocol": "https", "host": "api.example.com",
                                     "port": 443, "path": "/v1/"}),
    ("http://[::1]/x", {"protocol": "http", "host": "[::1]", "port": 80, "path": "/x"}),
    ("wss://chat.internal", {"protocol": "wss", "host": "chat.internal", "port": 443}),
])
def test_service_url_shorthand(url, fields):
    assert parse_service_url(url) == fields


@pytest.mark.parametrize("url, fragment", [
    ("rest:3000", "could not parse url"),
    ("http://h/x?a=1", "query string"),
    ("http://user:pw@h", "user information"),
    ("http://:80", "missing host"),
    ("http://h:port", "invalid port"),
])
def test_service_url_shorthand_refuses(url, fragment):
    assert fragment in _fails(parse_service_url, url)
