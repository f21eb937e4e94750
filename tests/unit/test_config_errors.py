"""Every class of configuration error, with its exact line and column."""

import pathlib

import pytest
import yaml

from guichet.config.loader import load_config_text
from guichet.errors import ConfigError


class StubPlugin:
    def validate(self, config):
        problems = []
        if "minute" in config and not isinstance(config["minute"], int):
            problems.append(("minute", "expected an integer"))
        for index, limit in enumerate(config.get("limits", [])):
            if limit < 0:
                problems.append((f"limits[{index}]", "must be positive"))
        return dict(config), problems


PLUGINS = {"rate-limiting": StubPlugin()}
HEAD = '_format_version: "3.0"\n'


def issues(text: str, plugin_schemas=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "kong.yml", plugin_schemas=plugin_schemas)
    return [str(issue) for issue in info.value.issues]


def one(text: str, plugin_schemas=None) -> str:
    found = issues(text, plugin_schemas)
    assert len(found) == 1, found
    return found[0]


def test_unknown_key_points_at_the_key():
    assert one(HEAD + "services:\n- name: a\n  host: h\n  hots: x\n") == \
        "kong.yml:5:3: services[0].hots: unknown field"


def test_unknown_root_key():
    assert one(HEAD + "servces: []\n") == "kong.yml:2:1: servces: unknown field"


def test_wrong_type_points_at_the_value():
    assert one(HEAD + "services:\n- host: h\n  port: '80'\n") == \
        "kong.yml:4:9: services[0].port: expected an integer"


def test_out_of_range_and_enum_values():
    found = issues(HEAD + "services:\n- host: h\n  retries: 40000\n  routes:\n"
                   "  - paths: [/]\n    https_redirect_status_code: 303\n")
    assert found == [
        "kong.yml:4:12: services[0].retries: value should be between 0 and 32767",
        "kong.yml:7:33: services[0].routes[0].https_redirect_status_code: expected one of: "
        "426, 301, 302, 307, 308",
    ]


def test_missing_required_field_points_at_the_mapping():
    assert one(HEAD + "services:\n- name: a\n  port: 80\n") == \
        "kong.yml:3:3: services[0].host: required field missing"


def test_bad_reference_points_at_the_reference():
    assert one(HEAD + "services:\n- {name: a, host: h}\nroutes:\n- paths: [/]\n"
               "  service: b\n") == \
        "kong.yml:6:12: routes[0].service: invalid reference 'service: b' (no such entry " \
        "in 'services')"


def test_bad_reference_forms():
    found = issues(HEAD + "routes:\n- paths: [/]\n  service: {host: x}\n"
                   "snis:\n- name: a.test\n")
    assert found == [
        "kong.yml:4:12: routes[0].service: a reference is a name or an id, or a mapping "
        "{id: <uuid>} or {name: <name>}",
        "kong.yml:6:3: snis[0].certificate: required field missing",
    ]


def test_nested_entity_naming_another_parent():
    assert one(HEAD + "services:\n- {name: a, host: h}\n- name: b\n  host: h\n  routes:\n"
               "  - paths: [/]\n    service: a\n") == \
        "kong.yml:8:14: services[1].routes[0].service: 'service' must be omitted inside " \
        "services (it is implied) or name the enclosing one"


def test_unknown_plugin_is_an_error_even_when_disabled():
    assert issues(HEAD + "plugins:\n- name: key-auth\n- name: acme\n  enabled: false\n") == [
        "kong.yml:3:9: plugins[0].name: plugin 'key-auth' is not implemented by guichet yet",
        "kong.yml:4:9: plugins[1].name: plugin 'acme' is not implemented by guichet yet",
    ]


def test_plugin_config_errors_are_located_inside_config():
    found = issues(HEAD + "plugins:\n- name: rate-limiting\n  config:\n    minute: many\n"
                   "    limits: [1, -2]\n", PLUGINS)
    assert found == [
        "kong.yml:5:13: plugins[0].config.minute: expected an integer",
        "kong.yml:6:17: plugins[0].config.limits[1]: must be positive",
    ]


def test_unsupported_protocols():
    found = issues(HEAD + "services:\n- host: h\n  protocol: grpc\nroutes:\n"
                   "- protocols: [tcp]\n  sources: [{ip: 10.0.0.1}]\n")
    assert found == [
        "kong.yml:4:13: services[0].protocol: protocol 'grpc' is not supported by guichet yet",
        "kong.yml:6:15: routes[0].protocols[0]: protocol 'tcp' is not supported by guichet "
        "yet",
        "kong.yml:7:3: routes[0].sources: 'sources' is not supported by guichet yet",
    ]


@pytest.mark.parametrize("snippet, message", [
    ("services:\n- host: h\n  client_certificate: {id: 4f4c2a7e-9b0e-4d34-a5a4-3f1a0c1f6b11}",
     "services[0].client_certificate: 'client_certificate' is not supported by guichet yet"),
    ("services:\n- host: h\n  protocol: https\n  tls_verify_depth: 3",
     "services[0].tls_verify_depth: 'tls_verify_depth' is not supported by guichet yet"),
    ("routes:\n- expression: 'http.path == \"/\"'",
     "routes[0].expression: 'expression' is not supported by guichet yet"),
    ("upstreams:\n- name: u\n  algorithm: latency",
     "upstreams[0].algorithm: algorithm 'latency' is not supported by guichet yet"),
    ("consumers:\n- username: u\n  oauth2_credentials: [{name: app}]",
     "consumers[0].oauth2_credentials: 'oauth2_credentials' (entities of the oauth2 "
     "plugin) is not supported by guichet yet"),
    ("oauth2_tokens:\n- access_token: t",
     "oauth2_tokens: 'oauth2_tokens' (entities of the oauth2 plugin) is not supported by "
     "guichet yet"),
    ("ca_certificates:\n- cert: x",
     "ca_certificates: 'ca_certificates' (CA certificates for upstream TLS verification) "
     "is not supported by guichet yet"),
    ("_workspace: default",
     "_workspace: '_workspace' belongs to decK's file format, not to Kong's declarative "
     "configuration (Kong refuses it too)"),
    ("certificates:\n- cert: c\n  key: k\n  services: [{host: h}]",
     "certificates[0].services: 'services' (services using this certificate as "
     "client_certificate) is not supported by guichet yet"),
    ("services:\n- host: h\n  filter_chains: [{filters: []}]",
     "services[0].filter_chains: 'filter_chains' (WebAssembly filter chains) is not "
     "supported by guichet yet"),
    ("upstreams:\n- name: u\n  healthchecks: {active: {type: grpc}}",
     "upstreams[0].healthchecks.active.type: health check type 'grpc' is not supported by "
     "guichet yet"),
])
def test_kong_features_guichet_lacks_are_refused(snippet, message):
    found = issues(HEAD + snippet + "\n")
    assert any(issue.endswith(message) for issue in found), found


def test_kong_defaults_of_unsupported_fields_are_accepted():
    config = load_config_text(HEAD + "routes:\n- paths: [/]\n  sources: null\n"
                              "  destinations: []\n  priority: 0\n  expression: null\n"
                              "consumers:\n- username: u\n  oauth2_credentials: []\n")
    assert len(config.routes) == 1


@pytest.mark.parametrize("path, message", [
    ("api", "should start with: / (fixed path) or ~/ (regex path)"),
    ("/a//b", "must not have empty segments"),
    ("~/(x", "invalid regex: '/(x'"),
    ("/a/../b", "non-normalized path, consider use '/b' instead"),
])
def test_bad_route_path(path, message):
    found = one(HEAD + f"routes:\n- name: r\n  paths:\n  - /ok\n  - '{path}'\n")
    assert found.startswith("kong.yml:6:5: routes[0].paths[1]: " + message), found


def test_route_needs_a_matching_criterion():
    assert one(HEAD + "routes:\n- name: r\n  protocols: [https]\n") == \
        "kong.yml:3:3: routes[0]: must set one of 'methods', 'hosts', 'headers', 'paths', " \
        "'snis' when 'protocols' is 'https'"


def test_route_cross_field_rules():
    found = issues(HEAD + "routes:\n- paths: [/]\n  protocols: [http, ws]\n"
                   "- paths: [/]\n  snis: [a.test]\n  protocols: [http]\n"
                   "- headers:\n    X-A: [a]\n    x-a: [b]\n    Host: [h]\n"
                   "    X-B: []\n    X-C: ['~*(']\n")
    assert found == [
        "kong.yml:4:14: routes[0].protocols: 'http'/'https' and 'ws'/'wss' cannot be mixed "
        "in one route",
        "kong.yml:6:9: routes[1].snis: 'snis' can only be set when 'protocols' contains "
        "'https' or 'wss'",
        "kong.yml:10:10: routes[2].headers.x-a: header 'x-a' is also given as 'X-A' (names "
        "are case-insensitive)",
        "kong.yml:11:11: routes[2].headers.Host: cannot contain 'host' header, which must be "
        "specified in the 'hosts' attribute",
        "kong.yml:12:10: routes[2].headers.X-B: must have at least one value",
        "kong.yml:13:11: routes[2].headers.X-C[0]: invalid regex: '(' (missing ), "
        "unterminated subpattern at position 0)",
    ]


def test_yaml_syntax_error_has_its_line():
    found = one(HEAD + "services:\n- name: a\n  host: [h\n")
    assert found.startswith("kong.yml:5:1: <root>: YAML syntax error")


def test_duplicate_names_and_ids():
    found = issues(HEAD + "services:\n- {name: a, host: h}\n- {name: a, host: h}\n"
                   "consumers:\n- {username: u, id: 4f4c2a7e-9b0e-4d34-a5a4-3f1a0c1f6b11}\n"
                   "- {username: v, id: 4F4C2A7E-9B0E-4D34-A5A4-3F1A0C1F6B11}\n"
                   "upstreams:\n- name: up\n  targets:\n  - target: t\n  - target: t:8000\n")
    assert found == [
        "kong.yml:4:10: services[1].name: uniqueness violation: 'services' entity with name "
        "set to 'a' already declared (first at line 3)",
        "kong.yml:7:21: consumers[1].id: uniqueness violation: 'consumers' entity with "
        "primary key set to '4f4c2a7e-9b0e-4d34-a5a4-3f1a0c1f6b11' already declared "
        "(first at line 6)",
        "kong.yml:12:13: upstreams[0].targets[1].target: target 't:8000' is already declared "
        "for this upstream (first at line 11)",
    ]


def test_same_plugin_twice_on_one_scope():
    found = one(HEAD + "services:\n- name: s\n  host: h\n  plugins:\n"
                "  - name: rate-limiting\nplugins:\n- name: rate-limiting\n  service: s\n",
                PLUGINS)
    assert found.startswith("kong.yml:8:9: plugins[0].name: plugin 'rate-limiting' is "
                            "already configured for this same route, service and consumer")


def test_format_version_problems():
    assert one("services: []\n") == \
        'kong.yml:1:1: _format_version: required field missing: add _format_version: "3.0" at ' \
        'the top of the file'
    assert one("_format_version: 3.0\n") == \
        'kong.yml:1:18: _format_version: expected a string: write it quoted, e.g. "3.0"'
    assert one('_format_version: "4.0"\n') == \
        "kong.yml:1:18: _format_version: unsupported format version '4.0': expected one of " \
        '"1.1", "2.1", "3.0"'


def test_document_shape_problems():
    assert one("- a\n- b\n") == "kong.yml:1:1: <root>: expected a mapping at the top " \
        "level, with _format_version and the entity collections"
    assert one("") == "kong.yml: <root>: the configuration is empty: expected a mapping " \
        "with _format_version and the entities"
    assert one(HEAD + "services: {name: a}\n") == "kong.yml:2:11: services: expected an array"
    assert one(HEAD + "services:\n- just-a-string\n") == \
        "kong.yml:3:3: services[0]: expected a record"


def test_service_url_problems():
    found = issues(HEAD + "services:\n- url: http://h:99999\n- url: ftp://h\n"
                   "- url: http://h\n  port: 80\n")
    assert found == [
        "kong.yml:3:8: services[0].url: port from url: value should be between 0 and 65535",
        "kong.yml:4:8: services[1].url: protocol from url: expected one of: http, https, ws, "
        "wss",
        "kong.yml:5:3: services[2].url: 'url' cannot be combined with 'port'",
    ]


def test_upstream_hash_rules():
    found = issues(HEAD + "upstreams:\n- name: a\n  hash_on: header\n"
                   "- name: b\n  hash_on: ip\n  hash_fallback: ip\n"
                   "- name: c\n  algorithm: least-connections\n  hash_on: consumer\n")
    assert found == [
        "kong.yml:3:3: upstreams[0].hash_on_header: required field missing (needed when "
        "hash_on is 'header')",
        "kong.yml:7:18: upstreams[1].hash_fallback: must differ from hash_on ('ip')",
        "kong.yml:10:12: upstreams[2].hash_on: cannot be used with algorithm "
        "'least-connections' (Kong would ignore it); use 'consistent-hashing'",
    ]


def _fixture_pems():
    text = (pathlib.Path(__file__).parent.parent / "fixtures" / "config" / "valid" /
            "certificates.yml").read_text()
    cert = yaml.safe_load(text)["certificates"][0]
    return cert["cert"], cert["key"], cert["cert_alt"], cert["key_alt"]


def test_certificate_problems():
    rsa_cert, rsa_key, ec_cert, ec_key = _fixture_pems()
    found = issues(HEAD + "certificates:\n" + yaml.safe_dump([
        {"cert": rsa_cert, "key": ec_key},
        {"cert": rsa_cert, "key": rsa_key, "cert_alt": ec_cert},
        {"cert": rsa_cert, "key": rsa_key, "cert_alt": rsa_cert, "key_alt": rsa_key},
        {"cert": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
         "key": rsa_key},
        {"cert": rsa_cert, "key": "{vault://env/tls-key}"},
    ]))
    messages = [issue.split(": ", 2)[1:] for issue in found]
    assert messages[0] == ["certificates[0]", "certificate does not match key"]
    assert messages[1] == ["certificates[1].key_alt", "all or none of these fields must be "
                                                      "set: 'cert_alt', 'key_alt'"]
    assert messages[2][0] == "certificates[2].cert_alt"
    assert "need to have different type" in messages[2][1]
    assert messages[3][0] == "certificates[3].cert"
    assert messages[3][1].startswith("invalid certificate")
    assert messages[4] == ["certificates[4].key", "vault references are not supported by "
                                                  "guichet yet"]


def test_duplicate_yaml_key_is_an_error():
    assert one(HEAD + "services:\n- host: a\n  host: b\n") == \
        "kong.yml:4:3: services[0].host: duplicate key 'host' (first defined at line 3)"


def test_crlf_errors_have_the_same_lines():
    text = (HEAD + "services:\n- host: h\n  port: x\n").replace("\n", "\r\n")
    assert one(text) == "kong.yml:4:9: services[0].port: expected an integer"


def test_every_error_is_reported_at_once_sorted_by_line():
    text = HEAD + """services:
- name: bad name
  host: h
  retries: -1
  routes:
  - paths: [nope]
    plugins:
    - name: key-auth
routes:
- service: missing
  paths: [/]
upstreams:
- name: 10.0.0.1
consumers:
- tags: [ok]
"""
    found = issues(text)
    assert [line.split(": ", 1)[0] for line in found] == [
        "kong.yml:3:9", "kong.yml:5:12", "kong.yml:7:13", "kong.yml:9:13", "kong.yml:11:12",
        "kong.yml:14:9", "kong.yml:16:3",
    ]
    assert "at least one of these fields must be non-empty" in found[-1]
