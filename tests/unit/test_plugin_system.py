"""The plugin system's pure parts: registry, precedence, per-phase chains, stores."""

from __future__ import annotations

import pytest

from guichet.config.loader import load_config_text
from guichet.plugins.api import Plugin, PluginConfig, Response, implemented_phases
from guichet.plugins.chain import EMPTY, ChainTable, build_instances
from guichet.plugins.consumers import ConsumerDirectory, constant_time_equal, secret_digest
from guichet.plugins.env import BuildEnv
from guichet.plugins.registry import BUNDLED, PluginLoadError, Registry, import_plugin
from guichet.plugins.stores import MemoryStore, Stores

CUSTOM = [f"support.test_plugins:{n}" for n in ("TraceA", "TraceB", "TestAuth", "Decorate")]


def compiled(text: str) -> tuple[ChainTable, object]:
    registry = Registry(["bundled", *CUSTOM])
    config = load_config_text('_format_version: "3.0"\n' + text, plugin_schemas=registry.schemas())
    env = BuildEnv(ConsumerDirectory(config), None, Stores())
    return ChainTable(config, build_instances(config, registry, env)), config


def tags(chain, phase="access"):
    return [(hook.__self__.name, hook.__self__.config.tag) for hook in getattr(chain, phase)
            if hasattr(hook.__self__.config, "tag")]


PRECEDENCE = """
services:
- name: s
  url: http://127.0.0.1:1
  routes:
  - {name: r, paths: [/r]}
  - {name: r2, paths: [/r2]}
consumers:
- username: c
plugins:
- {name: trace-a, config: {tag: global}}
- {name: trace-a, service: s, config: {tag: service}}
- {name: trace-a, route: r, config: {tag: route}}
- {name: trace-a, consumer: c, config: {tag: consumer}}
- {name: trace-a, route: r, service: s, config: {tag: route+service}}
- {name: trace-a, consumer: c, service: s, config: {tag: consumer+service}}
- {name: trace-a, consumer: c, route: r, config: {tag: consumer+route}}
- {name: trace-a, consumer: c, route: r, service: s, config: {tag: consumer+route+service}}
"""


def _drop(text: str, tag: str) -> str:
    return "\n".join(line for line in text.splitlines() if f"tag: {tag}}}" not in line)


@pytest.mark.parametrize("removed, expected", [
    ([], "consumer+route+service"),
    (["consumer+route+service"], "consumer+route"),
    (["consumer+route+service", "consumer+route"], "consumer+service"),
    (["consumer+route+service", "consumer+route", "consumer+service"], "route+service"),
    (["consumer+route+service", "consumer+route", "consumer+service", "route+service"], "consumer"),
    (["consumer+route+service", "consumer+route", "consumer+service", "route+service",
      "consumer"], "route"),
    (["consumer+route+service", "consumer+route", "consumer+service", "route+service",
      "consumer", "route"], "service"),
    (["consumer+route+service", "consumer+route", "consumer+service", "route+service",
      "consumer", "route", "service"], "global"),
])
def test_kong_precedence_most_specific_first(removed, expected):
    text = PRECEDENCE
    for tag in removed:
        text = _drop(text, tag)
    table, config = compiled(text)
    route = next(r for r in config.routes if r.name == "r")
    consumer = config.consumers[0]
    assert tags(table.chain(route, "http", consumer.id)) == [("trace-a", expected)]


def test_without_consumer_the_consumer_scopes_never_apply():
    table, config = compiled(PRECEDENCE)
    r, r2 = config.routes
    assert tags(table.chain(r, "http")) == [("trace-a", "route+service")]
    assert tags(table.chain(r2, "http")) == [("trace-a", "service")]
    assert table.consumer_scoped


def test_chains_are_sorted_by_priority_and_split_by_phase():
    table, config = compiled("""
services:
- name: s
  url: http://127.0.0.1:1
  routes:
  - name: r
    paths: [/r]
    plugins:
    - {name: decorate}
    - {name: trace-b, config: {tag: b}}
    - {name: test-auth}
    - {name: trace-a, config: {tag: a}}
""")
    chain = table.chain(config.routes[0], "http")
    assert [h.__self__.name for h in chain.access] == ["trace-a", "test-auth", "trace-b"]
    assert [h.__self__.name for h in chain.response_headers] == ["decorate"]
    assert chain.rewrite == () and chain.log == ()
    assert table.chain(config.routes[0], "http") is chain  # cached


def test_no_plugins_gives_the_empty_chain_and_it_is_false():
    table, config = compiled("services:\n- {name: s, url: 'http://127.0.0.1:1', routes: "
                             "[{name: r, paths: [/r]}]}\n")
    assert table.chain(config.routes[0], "http") is EMPTY
    assert not EMPTY and not table


def test_protocols_select_per_request_protocol():
    table, config = compiled("""
services:
- name: s
  url: http://127.0.0.1:1
  routes:
  - name: r
    paths: [/r]
    plugins: [{name: trace-a, protocols: [https], config: {tag: tls}}]
plugins:
- {name: trace-a, config: {tag: global}}
""")
    route = config.routes[0]
    assert tags(table.chain(route, "https")) == [("trace-a", "tls")]
    assert table.chain(route, "http") is EMPTY


def test_resume_index_goes_on_after_the_authenticating_plugin():
    table, config = compiled("""
services:
- name: s
  url: http://127.0.0.1:1
  routes:
  - name: r
    paths: [/r]
    plugins: [{name: test-auth}, {name: trace-a, config: {tag: a}}]
consumers:
- username: c
  plugins: [{name: trace-b, config: {tag: c}}]
""")
    route = config.routes[0]
    base = table.chain(route, "http")
    with_consumer = table.chain(route, "http", config.consumers[0].id)
    auth = next(h for h in base.access if h.__self__.name == "test-auth")
    index = with_consumer.resume_index((-auth.__self__.priority, "test-auth"))
    assert [h.__self__.name for h in with_consumer.access[index:]] == ["trace-b"]


def test_every_bundled_plugin_has_its_kong_priority_and_they_are_unique():
    expected = {"correlation-id": 100001, "bot-detection": 2500, "cors": 2000,
                "oauth2-introspection": 1700, "jwt": 1450, "key-auth": 1250,
                "basic-auth": 1100, "jwt-jwks": 1050, "hmac-auth": 1030,
                "ip-restriction": 990, "request-size-limiting": 951, "acl": 950,
                "request-termination": 2, "rate-limiting": 910, "concurrency-limiting": 907,
                "usage-plans": 905}
    registry = Registry(["bundled"])
    found = {name: registry.plugin_class(name).priority for name in BUNDLED}
    assert found == expected
    assert len(set(found.values())) == len(found)


def test_authentication_plugins_cannot_be_scoped_to_consumers():
    registry = Registry(["bundled"])
    auth = {"key-auth", "basic-auth", "hmac-auth", "jwt", "jwt-jwks", "oauth2-introspection"}
    for name in auth:  # (Kong's bot-detection and cors are no_consumer too)
        assert registry.plugin_class(name).no_consumer, name


def test_registry_refuses_bad_custom_plugins():
    with pytest.raises(PluginLoadError, match="cannot import plugin module 'nope'"):
        Registry(["bundled", "nope:X"])
    with pytest.raises(PluginLoadError, match="has no attribute 'Missing'"):
        Registry(["support.test_plugins:Missing"])
    with pytest.raises(PluginLoadError, match="not a subclass"):
        import_plugin("support.test_plugins:plugin_env")


def test_registry_refuses_a_name_or_priority_clash(tmp_path, monkeypatch):
    module = tmp_path / "clash_plugins.py"
    module.write_text(
        "from guichet.plugins import Plugin\n"
        "class Named(Plugin):\n    name = 'key-auth'\n    priority = 7\n"
        "class Tied(Plugin):\n    name = 'tied'\n    priority = 1250\n"
        "class One(Plugin):\n    name = 'one'\n    priority = 11\n"
        "class Two(Plugin):\n    name = 'two'\n    priority = 11\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError, match="name of a bundled plugin"):
        Registry(["bundled", "clash_plugins:Named"])
    with pytest.raises(PluginLoadError, match="same priority 1250"):
        Registry(["bundled", "clash_plugins:Tied"])
    with pytest.raises(PluginLoadError, match="same priority 11"):
        Registry(["clash_plugins:One", "clash_plugins:Two"])


def test_only_overridden_hooks_are_phases():
    class OnlyLog(Plugin):
        name = "only-log"

        def log(self, req, resp):
            return None

    assert implemented_phases(OnlyLog) == ("log",)
    assert implemented_phases(Plugin) == ()


def test_schema_adapter_reports_paths_inside_config():
    class Limits(PluginConfig):
        minute: int
        names: list[str] = []

    class Limited(Plugin):
        name = "limited"
        Config = Limits

    registry = Registry([])
    registry._specs["limited"] = "x"
    registry._classes["limited"] = Limited
    adapter = registry.schemas()["limited"]
    assert adapter.validate({"minute": 5}) == ({"minute": 5, "names": []}, [])
    _, problems = adapter.validate({"minute": "5", "names": [1], "extra": True})
    assert ("minute", "Input should be a valid integer") in problems
    assert any(path == "names[0]" for path, _ in problems)
    assert ("extra", "unknown field") in problems


def test_response_body_kinds():
    assert Response(200, {"a": 1}).body == b'{"a":1}'
    assert Response(200, {"a": 1}).content_type.startswith("application/json")
    assert Response(200, "hi").content_type.startswith("text/plain")
    assert Response(204).body == b"" and Response(204).content_type is None


def test_secret_digest_is_keyed_and_comparison_constant_time_api():
    assert secret_digest("abc") == secret_digest(b"abc")
    assert secret_digest("abc") != secret_digest("abd")
    import hashlib

    assert secret_digest("abc") != hashlib.sha256(b"abc").digest()  # keyed, not a bare hash
    assert constant_time_equal("abc", b"abc") and not constant_time_equal("abc", "abd")


def test_memory_store_ttl_eviction_and_incr():
    now = [100.0]
    store = MemoryStore("t", max_entries=3, clock=lambda: now[0])
    store.set("a", 1, ttl=10)
    store.set("b", 2)
    assert store.get("a") == 1
    now[0] += 11
    assert store.get("a") is None and store.get("b") == 2
    assert store.incr("n", ttl=5) == 1 and store.incr("n", 2) == 3
    now[0] += 6
    assert store.incr("n", ttl=5) == 1  # expired: a new window
    store.set("c", 3)
    store.set("d", 4)  # over max_entries: the oldest ("b") goes
    assert store.get("b") is None and len(store) == 3
    now[0] += 100
    store.sweep()
    assert store.get("n") is None


def test_stores_are_shared_by_name():
    stores = Stores()
    assert stores.get("x") is stores.get("x")
    assert stores.get("x") is not stores.get("y")


def test_each_instance_knows_its_entity_id_and_ids_are_stable_across_loads():
    """Plugins that name shared counters (rate-limiting) key them by ``entity_id``: two
    identical plugins on two routes get two ids, and loading the same text again (another
    worker, another node, a reload) gives the same ids."""
    text = """
services:
- name: s
  url: http://127.0.0.1:1
  routes:
  - {name: a, paths: [/a], plugins: [{name: rate-limiting, config: {minute: 5}}]}
  - {name: b, paths: [/b], plugins: [{name: rate-limiting, config: {minute: 5}}]}
"""
    ids = []
    for _ in range(2):
        table, config = compiled(text)
        instances = table._instances
        assert all(inst.entity_id == eid for eid, inst in instances.items())
        ids.append(sorted(instances))
    assert len(ids[0]) == 2 and ids[0] == ids[1]
