"""The ``usage_plans`` collection of the declarative file: validation, references, the
plugin the loader adds (guichet.config, docs/usage-plans.md)."""

import pytest

from guichet.config.loader import load_config_text
from guichet.config.references import entity_uuid
from guichet.errors import ConfigError
from guichet.plugins.registry import Registry

HEAD = '_format_version: "3.0"\n'
CONSUMERS = """consumers:
- username: alice
- username: bob
  id: 6a1e1c8e-4d0b-4d8e-9f1e-2b9c8f0f6a11
services:
- name: orders
  host: orders.internal
  routes:
  - name: list-orders
    paths: [/orders]
"""
SCHEMAS = Registry(["bundled"]).schemas()


def load(text: str):
    return load_config_text(HEAD + CONSUMERS + text, "kong.yml", plugin_schemas=SCHEMAS)


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text)
    return [str(issue) for issue in info.value.issues]


def test_a_plan_is_normalised_with_resolved_references_and_the_plugin_is_added():
    config = load("""usage_plans:
- name: gold
  description: paying customers
  throttle: {rate: 2.5}
  quota: {limit: 1000, period: week}
  consumers: [alice, 6A1E1C8E-4D0B-4D8E-9F1E-2B9C8F0F6A11, alice]
  services: [orders]
  routes: [list-orders]
  tags: [billing]
""")
    (plan,) = config.usage_plans
    alice, bob = config.consumers
    assert plan.id == entity_uuid("usage_plans", "gold")
    assert (plan.name, plan.description, plan.tags) == ("gold", "paying customers", ("billing",))
    assert (plan.throttle_rate, plan.throttle_burst) == (2.5, 3)  # burst: ceil(rate)
    assert (plan.quota_limit, plan.quota_period) == (1000, "week")
    assert plan.consumer_ids == (alice.id, bob.id)  # by username or id, duplicates once
    assert plan.service_ids == (config.services[0].id,)
    assert plan.route_ids == (config.routes[0].id,)
    assert (plan.fault_tolerant, plan.hide_client_headers) == (True, False)
    (plugin,) = config.plugins
    assert plugin.name == "usage-plans" and plugin.enabled
    assert (plugin.route_id, plugin.service_id, plugin.consumer_id) == (None, None, None)
    assert plugin.config["plans"][0]["consumer_ids"] == [alice.id, bob.id]
    # the plugin builds from that config as the workers build it
    cls = Registry(["bundled"]).plugin_class("usage-plans")
    assert cls.Config.model_validate(plugin.config).plans[0].quota_limit == 1000


def test_no_plan_no_plugin():
    config = load("")
    assert config.usage_plans == () and config.plugins == ()


def test_a_consumer_in_two_plans_is_refused_where_it_is_listed_again():
    found = issues("""usage_plans:
- name: gold
  quota: {limit: 10, period: day}
  consumers: [alice]
- name: silver
  quota: {limit: 5, period: day}
  consumers: [bob, alice]
""")
    assert found == ["kong.yml:18:20: usage_plans[1].consumers[1]: consumer 'alice' is "
                     "already in usage plan 'gold' (line 15): a consumer belongs to one plan "
                     "at most"]


def test_unknown_references_are_refused_with_their_line():
    found = issues("""usage_plans:
- name: gold
  quota: {limit: 10, period: day}
  consumers: [alice, carol]
  services: [billing]
  routes: [nowhere]
""")
    assert found == [
        "kong.yml:15:22: usage_plans[0].consumers[1]: invalid reference 'consumers: carol' "
        "(no such entry in 'consumers')",
        "kong.yml:16:14: usage_plans[0].services[0]: invalid reference 'services: billing' "
        "(no such entry in 'services')",
        "kong.yml:17:12: usage_plans[0].routes[0]: invalid reference 'routes: nowhere' "
        "(no such entry in 'routes')",
    ]


def test_unknown_keys_and_bad_values_are_refused_with_path_and_line():
    found = issues("""usage_plans:
- name: gold
  quota: {limit: 0, period: year, per: consumer}
  throttle: {rate: 0, burst: 0}
  colour: gold
- name: gold
  quota: {limit: 1, period: day, offset: 1}
- name: empty
  consumers: [alice]
- name: typo
  quota: {limit: 1, period: day}
  consumers: alice
- name: glacial
  throttle: {rate: 1.0e-300}
""")
    assert found == [
        "kong.yml:14:18: usage_plans[0].quota.limit: value should be between 1 and "
        "9007199254740992",
        "kong.yml:14:29: usage_plans[0].quota.period: expected one of: day, week, month",
        "kong.yml:14:35: usage_plans[0].quota.per: unknown field",
        "kong.yml:15:20: usage_plans[0].throttle.rate: value should be a number greater than 0",
        "kong.yml:15:30: usage_plans[0].throttle.burst: value should be between 1 and "
        "2147483647",
        "kong.yml:16:3: usage_plans[0].colour: unknown field",
        "kong.yml:17:9: usage_plans[1].name: uniqueness violation: 'usage_plans' entity with "
        "name set to 'gold' already declared (first at line 13)",
        "kong.yml:18:42: usage_plans[1].quota.offset: 'offset' is not supported: a quota "
        "period starts at 00:00 UTC (weeks on Monday, months on the 1st); AWS documents two "
        "meanings for it",
        "kong.yml:19:3: usage_plans[2]: a usage plan needs a throttle, a quota, or both",
        "kong.yml:23:14: usage_plans[3].consumers: expected an array",
        "kong.yml:25:20: usage_plans[4].throttle.rate: a throttle rate is between one request "
        "a year (3.2e-8) and 1e9 requests per second",
    ]


def test_types_are_strict():
    found = issues("""usage_plans:
- name: gold
  quota: {limit: "10", period: day}
  throttle: {rate: "1"}
  fault_tolerant: "yes please"
""")
    assert [f.split(": ", 1)[1] for f in found] == [
        "usage_plans[0].quota.limit: expected an integer",
        "usage_plans[0].throttle.rate: expected a number",
        "usage_plans[0].fault_tolerant: expected a boolean",
    ]


def test_the_usage_plans_plugin_is_never_written_by_hand():
    found = issues("""plugins:
- name: usage-plans
""")
    assert found == ["kong.yml:13:9: plugins[0].name: plugin 'usage-plans' is added by "
                     "guichet when usage_plans are configured: write usage_plans instead"]


def test_plans_need_the_bundled_plugin_in_the_nodes_plugins_setting():
    schemas = {name: s for name, s in SCHEMAS.items() if name != "usage-plans"}
    with pytest.raises(ConfigError) as info:
        load_config_text(HEAD + CONSUMERS + """usage_plans:
- name: gold
  quota: {limit: 10, period: day}
""", "kong.yml", plugin_schemas=schemas)
    (issue,) = info.value.issues
    assert issue.path == "usage_plans" and issue.line == 12
    assert "add 'bundled'" in issue.message


def test_the_same_plans_give_the_same_ids_and_hash_whatever_the_formatting():
    a = load("""usage_plans:
- {name: gold, quota: {limit: 10, period: day}, consumers: [alice]}
""")
    b = load("""usage_plans:
- name: gold   # a comment
  consumers:
  - alice
  quota:
    period: day
    limit: 10
""")
    assert a.usage_plans == b.usage_plans and a.hash == b.hash
    assert a.plugins[0].id == b.plugins[0].id


# ------------------------------------------------------------------ guichet usage
PLANS = """usage_plans:
- name: gold
  quota: {limit: 10, period: day}
  throttle: {rate: 2, burst: 4}
  consumers: [alice]
- name: free
  throttle: {rate: 0.5}
  consumers: [bob]
"""


def test_guichet_usage_reads_the_store_next_to_the_config(tmp_path, monkeypatch, capsys):
    import asyncio
    import json
    import time

    from guichet.cli import main
    from guichet.quotas import QuotaKey, open_store
    from guichet.quotas.periods import window

    monkeypatch.delenv("GUICHET_USAGE_STORE", raising=False)
    monkeypatch.delenv("GUICHET_SETTINGS", raising=False)
    path = tmp_path / "kong.yml"
    path.write_text(HEAD + CONSUMERS + PLANS)
    config = load_config_text(path.read_text())

    # nothing counted yet: zeros, and the default file is not created by reading
    assert main(["usage", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:5] == ["alice", "gold", "10/day", "0", "10"]
    assert out[2].split()[:3] == ["bob", "free", "-"] and out[2].endswith("0.5/s burst 1")
    assert not (tmp_path / "guichet-usage.db").exists()

    async def count(n: int) -> None:  # as the gateway would, in the default file
        store = open_store(f"sqlite:///{tmp_path}/guichet-usage.db")
        await store.start()
        plan = config.usage_plans[0]
        for _ in range(n):
            await store.consume(QuotaKey(plan.id, plan.consumer_ids[0],
                                         window("day", time.time())), 10)
        await store.close()

    asyncio.run(count(3))
    monkeypatch.chdir("/")  # a relative usage_store is relative to the config, not the cwd
    assert main(["usage", "--config", str(path), "--consumer", "alice", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["consumer"]["username"] == "alice" and row["plan"]["name"] == "gold"
    assert {k: row["quota"][k] for k in ("limit", "period", "used", "remaining")} == \
        {"limit": 10, "period": "day", "used": 3, "remaining": 7}
    assert row["throttle"] == {"rate": 2.0, "burst": 4}

    assert main(["usage", "--config", str(path), "--consumer", "carol"]) == 1
    assert "'carol' is in no usage plan" in capsys.readouterr().err


def test_guichet_usage_reports_an_unreachable_store_without_its_password(
        tmp_path, monkeypatch, capsys, closed_port):
    from guichet.cli import main

    monkeypatch.setenv("GUICHET_USAGE_STORE", f"redis://:hunter2@127.0.0.1:{closed_port}/0")
    monkeypatch.setenv("GUICHET_USAGE_STORE_TIMEOUT", "0.5")
    path = tmp_path / "kong.yml"
    path.write_text(HEAD + CONSUMERS + PLANS)
    assert main(["usage", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "quota store redis://:***@127.0.0.1" in err and "hunter2" not in err
