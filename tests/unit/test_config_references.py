"""Ids, uniqueness and references between entities (guichet.config.references)."""

import pytest

from guichet.config.loader import load_config_text
from guichet.config.references import entity_uuid
from guichet.errors import ConfigError

HEAD = '_format_version: "3.0"\n'
SERVICE_ID = "4f4c2a7e-9b0e-4d34-a5a4-3f1a0c1f6b11"


class AnyPlugin:
    def validate(self, config):
        return dict(config), []


PLUGINS = {"p": AnyPlugin(), "q": AnyPlugin()}


def messages(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, plugin_schemas=PLUGINS)
    return [f"{i.path}: {i.message}" for i in info.value.issues]


def test_entity_uuid_matches_jit_uuid_v5_vectors():
    # lua-resty-jit-uuid's own documented v5 outputs, namespace e6ebd542-...: the same
    # construction Kong uses for declarative ids.
    import uuid
    ns = uuid.UUID("e6ebd542-06ae-11e6-8e82-bba81706b27d")
    assert str(uuid.uuid5(ns, "hello")) == "4850816f-1658-5890-8bfd-1ed14251f1f0"
    expected = uuid.uuid5(uuid.uuid5(uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5"),
                                     "services"), "orders")
    assert entity_uuid("services", "orders") == str(expected)


def test_references_by_name_id_and_mapping_forms():
    config = load_config_text(HEAD + f"""services:
- {{name: svc, host: h, id: {SERVICE_ID.upper()}}}
routes:
- {{name: by-name, paths: [/a], service: svc}}
- {{name: by-id, paths: [/b], service: {SERVICE_ID}}}
- {{name: by-id-map, paths: [/c], service: {{id: {SERVICE_ID}}}}}
- {{name: by-name-map, paths: [/d], service: {{name: svc}}}}
""")
    assert config.services[0].id == SERVICE_ID
    assert {r.service_id for r in config.routes} == {SERVICE_ID}


def test_plugin_scopes_nested_and_explicit():
    config = load_config_text(HEAD + """services:
- name: s
  host: h
  routes:
  - name: r
    paths: [/]
    plugins:
    - name: p
    - name: q
      consumer: c
consumers:
- username: c
  plugins:
  - name: p
    service: s
""", plugin_schemas=PLUGINS)
    service, route, consumer = config.services[0], config.routes[0], config.consumers[0]
    scopes = [(p.name, p.service_id, p.route_id, p.consumer_id) for p in config.plugins]
    assert scopes == [("p", None, route.id, None), ("q", None, route.id, consumer.id),
                      ("p", service.id, None, consumer.id)]
    assert config.plugins[0].id == entity_uuid("plugins", f"plugins:*:p:{route.id}::")


def test_unnamed_entities_get_positional_ids_that_survive_reloads():
    text = HEAD + "services:\n- host: a\n- host: b\ncertificates: []\n"
    first = load_config_text(text)
    assert first.services[0].id == entity_uuid("services", "#services[0]")
    assert first.services[0].id != first.services[1].id
    assert load_config_text(text) == first


@pytest.mark.parametrize("text, expected", [
    (HEAD + "consumers:\n- {username: a, custom_id: x}\n- {username: b, custom_id: x}\n",
     "consumers[1].custom_id: uniqueness violation: 'consumers' entity with custom_id set to "
     "'x' already declared (first at line 3)"),
    (HEAD + "routes:\n- {name: r, paths: [/]}\nservices:\n- name: s\n  host: h\n  routes:\n"
     "  - {name: r, paths: [/x]}\n",
     "services[0].routes[0].name: uniqueness violation: 'routes' entity with name set to 'r' "
     "already declared (first at line 3)"),
    (HEAD + f"services:\n- {{host: a, id: {SERVICE_ID}}}\n- {{host: b, id: {SERVICE_ID}}}\n",
     f"services[1].id: uniqueness violation: 'services' entity with primary key set to "
     f"'{SERVICE_ID}' already declared (first at line 3)"),
    (HEAD + "plugins:\n- {name: p, instance_name: one}\n- {name: q, instance_name: one}\n",
     "plugins[1].instance_name: uniqueness violation: 'plugins' entity with instance_name "
     "set to 'one' already declared (first at line 3)"),
    (HEAD + f"certificates:\n- {{id: {SERVICE_ID}, cert: c, key: k, snis: [a.test]}}\n"
     "snis:\n- {name: a.test, certificate: " + SERVICE_ID + "}\n",
     "snis[0].name: uniqueness violation: 'snis' entity with name set to 'a.test' already "
     "declared (first at line 3)"),
])
def test_uniqueness(text, expected):
    assert expected in messages(text)


def test_certificates_are_referenced_by_id_only():
    found = messages(HEAD + "snis:\n- {name: a.test, certificate: my-cert}\n")
    assert found == ["snis[0].certificate: invalid reference 'certificate: my-cert' (no such "
                     "entry in 'certificates')"]


def test_top_level_targets_need_their_upstream():
    assert messages(HEAD + "targets:\n- target: t\n") == [
        "targets[0].upstream: required field missing"]
