"""Loading whole documents (guichet.config.loader): fixtures, normalisation, ids, hash."""

import dataclasses
import pathlib
import uuid

import pytest

from guichet.config.loader import load_config_file, load_config_text
from guichet.config.model import Config
from guichet.errors import ConfigError

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "config" / "valid"


class StubPlugin:
    """A plugin schema that accepts any config and adds one default."""

    def validate(self, config):
        return {"defaulted": True, **config}, []


PLUGINS = {name: StubPlugin() for name in ("key-auth", "rate-limiting", "correlation-id")}


def load(name: str) -> Config:
    return load_config_file(str(FIXTURES / name), plugin_schemas=PLUGINS)


def kong_id(kind: str, key: str) -> str:
    namespace = uuid.uuid5(uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5"), kind)
    return str(uuid.uuid5(namespace, key))


@pytest.mark.parametrize("path", sorted(FIXTURES.iterdir()), ids=lambda p: p.name)
def test_every_fixture_loads(path):
    config = load_config_file(str(path), plugin_schemas=PLUGINS)
    assert config.format_version == "3.0"
    assert config.source == str(path)
    assert len(config.hash) == 64
    assert config.services or config.consumers or config.certificates


def test_nested_and_flat_forms_give_the_same_config():
    nested, flat = load("nested.yml"), load("flat.yml")
    assert dataclasses.replace(nested, hash="", source="") == \
        dataclasses.replace(flat, hash="", source="")
    assert nested.hash != flat.hash  # different documents


def test_nested_entities_are_hoisted_with_resolved_ids():
    config = load("nested.yml")
    orders, users = config.services
    assert (orders.protocol, orders.host, orders.port, orders.path) == \
        ("http", "orders.internal", 8080, "/v1")
    assert (orders.retries, orders.read_timeout, orders.connect_timeout) == (3, 15000, 60000)
    route = config.routes[0]
    assert route.service_id == orders.id
    assert route.paths == ("/orders", "~/orders/(?<id>\\d+)$")
    assert route.headers == (("x-api-version", ("2",)),)
    route_plugin, service_plugin, consumer_plugin, global_plugin = config.plugins
    assert (route_plugin.route_id, route_plugin.service_id) == (route.id, None)
    assert service_plugin.service_id == orders.id
    assert consumer_plugin.consumer_id == config.consumers[0].id
    assert (global_plugin.route_id, global_plugin.service_id, global_plugin.consumer_id) == \
        (None, None, None)
    assert route_plugin.config == {"defaulted": True, "minute": 60}
    assert [t.host for t in config.upstreams[0].targets] == ["10.0.0.11", "10.0.0.12"]
    assert all(t.upstream_id == config.upstreams[0].id for t in config.upstreams[0].targets)
    assert users.id == config.routes[1].service_id


def test_ids_are_kongs_and_stable_across_reloads():
    first, second = load("nested.yml"), load("nested.yml")
    assert first == second
    orders = first.services[0]
    assert orders.id == kong_id("services", "orders")
    assert first.routes[0].id == kong_id("routes", "orders-api")
    assert first.consumers[0].id == kong_id("consumers", "alice")
    key_auth = first.plugins[1]
    assert key_auth.id == kong_id("plugins", f"plugins:*:key-auth::{orders.id}:")


def test_route_order_is_file_order_with_nested_routes_in_place():
    text = """_format_version: "3.0"
routes:
- {name: first, paths: [/a]}
services:
- name: s
  host: s.internal
  routes:
  - {name: second, paths: [/b]}
  - {name: third, paths: [/c]}
"""
    config = load_config_text(text)
    assert [(r.name, r.order) for r in config.routes] == [("first", 0), ("second", 1),
                                                          ("third", 2)]


def test_crlf_file_loads_like_lf():
    crlf = (FIXTURES / "crlf.yml").read_bytes()
    assert b"\r\n" in crlf
    from_crlf = load("crlf.yml")
    from_lf = load_config_text(crlf.decode().replace("\r\n", "\n"), str(FIXTURES / "crlf.yml"))
    assert from_crlf == from_lf
    assert from_crlf.upstreams[0].targets[0].port == 9000


def test_legacy_formats_migrate_regex_paths_only():
    v11 = load("legacy-1.1.yml")
    assert [r.paths for r in v11.routes] == [
        ("~/users/\\d+/profile", "~/static/.*\\.css"),
        ("/plain/prefix", "/with-dash_and~tilde", "/encoded~user"),
        ("~/v(1|2)/items",),
    ]
    v21 = load("legacy-2.1.yml")
    assert v21.routes[0].paths == ("~/catalog/items/(?<sku>[A-Z0-9-]+)$", "/catalog")
    assert v21.format_version == "3.0"


def test_migrated_document_hashes_like_its_3_0_equivalent():
    legacy = load_config_text('_format_version: "2.1"\nroutes:\n- paths: [/a.+]\n')
    modern = load_config_text('_format_version: "3.0"\nroutes:\n- paths: ["~/a.+"]\n')
    assert legacy.hash == modern.hash
    assert legacy.routes == modern.routes


def test_hash_ignores_formatting_and_comments_but_not_content():
    a = load_config_text('_format_version: "3.0"\nservices:\n- {name: s, host: h}\n')
    b = load_config_text('# comment\n_format_version: "3.0"\nservices:\n  - host: h\n'
                         '    name: s   # same\n')
    c = load_config_text('_format_version: "3.0"\nservices:\n- {name: s, host: h2}\n')
    assert a.hash == b.hash != c.hash


def test_defaults_are_kongs():
    config = load_config_text('_format_version: "3.0"\nservices:\n- host: h\n  routes:\n'
                              '  - paths: [/]\nupstreams:\n- name: up\n  targets:\n'
                              '  - target: t\nplugins:\n- name: key-auth\n',
                              plugin_schemas=PLUGINS)
    service, route, upstream, plugin = (config.services[0], config.routes[0],
                                        config.upstreams[0], config.plugins[0])
    assert (service.protocol, service.port, service.retries, service.write_timeout,
            service.enabled, service.tls_verify) == ("http", 80, 5, 60000, True, None)
    assert (route.protocols, route.strip_path, route.preserve_host, route.regex_priority,
            route.https_redirect_status_code, route.path_handling) == \
        (("http", "https"), True, False, 0, 426, "v0")
    assert (upstream.algorithm, upstream.slots, upstream.hash_on) == ("round-robin", 10000,
                                                                      "none")
    checks = upstream.healthchecks
    assert checks["active"]["http_path"] == "/" and checks["active"]["concurrency"] == 10
    assert checks["active"]["unhealthy"]["http_statuses"] == [429, 404, 500, 501, 502, 503,
                                                              504, 505]
    assert checks["passive"]["unhealthy"]["http_statuses"] == [429, 500, 503]
    assert (upstream.targets[0].port, upstream.targets[0].weight) == (8000, 100)
    assert plugin.protocols == ("grpc", "grpcs", "http", "https") and plugin.enabled


def test_sets_lose_duplicates_and_ipv6_hosts_lose_brackets():
    config = load_config_text('_format_version: "3.0"\nservices:\n- host: "[::1]"\n'
                              '  tags: [a, b, a]\n  routes:\n  - methods: [GET, GET, POST]\n')
    assert config.services[0].host == "::1"
    assert config.services[0].tags == ("a", "b")
    assert config.routes[0].methods == ("GET", "POST")


def test_upstream_hash_on_shorthand():
    config = load("upstreams.yml")
    cart, session, tenant = config.upstreams
    assert cart.algorithm == "least-connections"
    assert (session.algorithm, session.hash_on, session.hash_on_cookie_path) == \
        ("consistent-hashing", "cookie", "/app")
    assert (tenant.hash_fallback, tenant.hash_fallback_query_arg) == ("query_arg", "tenant")
    assert [(t.host, t.port, t.weight) for t in cart.targets] == [
        ("10.0.1.1", 8000, 100), ("2001:db8::1", 8443, 0), ("cart-3.internal", 8080, 100)]
    assert cart.healthchecks["passive"]["unhealthy"]["tcp_failures"] == 0  # null -> default
    assert cart.healthchecks["active"]["headers"] == {"X-Health-Check": ["guichet"]}
    explicit_round_robin = load_config_text(
        '_format_version: "3.0"\nupstreams:\n- name: u\n  algorithm: consistent-hashing\n'
        '  hash_on: none\n')
    assert explicit_round_robin.upstreams[0].algorithm == "round-robin"  # as in Kong


def test_certificates_collect_their_snis():
    config = load("certificates.yml")
    (cert,) = config.certificates
    assert cert.snis == ("guichet.test", "*.guichet.test", "api.example.test", "www.example.*")
    assert cert.cert_alt is not None and cert.tags == ("tls",)
    assert config.services[0].tls_verify is True


def test_comments_ignore_and_nulls():
    config = load("comments.yml")
    route = config.routes[0]
    assert (route.path_handling, route.https_redirect_status_code) == ("v1", 308)
    assert route.headers == (("x-region", ("eu", "us")),)
    assert config.consumers[0].custom_id == "partner-42"
    assert config.consumers[0].username is None


def test_json_and_anchors_fixtures():
    json_config = load("config.json")
    assert json_config.services[0].port == 443 and json_config.services[0].path == "/base"
    anchors = load("anchors.yml")
    assert [s.retries for s in anchors.services] == [2, 4]
    assert all(s.tags == ("team-b", "generated") for s in anchors.services)
    assert anchors.routes[1].methods == ("GET", "HEAD")


def test_disabled_known_plugin_is_kept_disabled():
    config = load_config_text('_format_version: "3.0"\nplugins:\n- name: key-auth\n'
                              '  enabled: false\n', plugin_schemas=PLUGINS)
    assert config.plugins[0].enabled is False


def test_file_level_problems_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config_file(str(tmp_path / "missing.yml"))
    assert "cannot read the file" in info.value.issues[0].message
    bad = tmp_path / "latin1.yml"
    bad.write_bytes(b'_format_version: "3.0"\n_comment: caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        load_config_file(str(bad))
    assert (info.value.issues[0].line, info.value.issues[0].message) == (
        2, "the file is not valid UTF-8")
    bom = tmp_path / "bom.yml"
    bom.write_bytes(b'\xef\xbb\xbf_format_version: "3.0"\n')
    assert load_config_file(str(bom)).services == ()
