"""The usage-plans plugin driven directly: who it counts, its 429s and headers, the
throttle before the quota, restrictions, fault tolerance
(guichet.plugins.bundled.usage_plans)."""

import asyncio
import inspect
import time

import orjson
import pytest

from guichet.config.model import Config, Consumer, Route, Service
from guichet.plugins.api import ErrorResponse, Response
from guichet.plugins.bundled.usage_plans import CTX_HEADERS, UsagePlans
from guichet.plugins.consumers import ConsumerDirectory
from guichet.plugins.env import BuildEnv
from guichet.plugins.request import ResponseHead
from guichet.plugins.stores import Stores
from guichet.quotas import QuotaKey
from guichet.quotas.periods import window
from guichet.settings import Settings
from support.plugin_requests import make_request

ALICE = Consumer(id="alice-id", username="alice")
BOB = Consumer(id="bob-id", username="bob")
CAROL = Consumer(id="carol-id", username="carol")  # in no plan
ROUTE_A = Route(id="route-a", name="a", service_id="svc-1")
ROUTE_B = Route(id="route-b", name="b", service_id="svc-2")
SERVICE_1 = Service(id="svc-1", name="one", host="h")
SERVICE_2 = Service(id="svc-2", name="two", host="h")


def plan(name: str, consumers: list[str], **fields) -> dict:
    return {"id": f"{name}-id", "name": name, "consumer_ids": consumers, **fields}


@pytest.fixture
def runner():
    with asyncio.Runner() as r:
        yield r


@pytest.fixture
def make(tmp_path, runner):
    """A started plugin with these plans on a fresh SQLite store (closed afterwards)."""
    built = []

    def make_plugin(*plans: dict, store: str | None = None, stores: Stores | None = None):
        settings = Settings(workers=1, usage_store=store or f"sqlite:///{tmp_path}/u.db",
                            usage_store_timeout=0.5)
        env = BuildEnv(ConsumerDirectory(Config(consumers=(ALICE, BOB, CAROL))), settings,
                       stores or Stores())
        plugin = UsagePlans(UsagePlans.Config.model_validate({"plans": list(plans)}), env)
        runner.run(plugin.start())
        built.append(plugin)
        return plugin

    yield make_plugin
    for plugin in built:
        runner.run(plugin.close())


def call(runner, plugin, consumer, route=ROUTE_A, service=SERVICE_1):
    """The access hook, run in the test's event loop (as the worker runs it)."""
    req = make_request("/x", route=route, service=service)
    req.consumer = consumer

    async def access():
        result = plugin.access(req)
        return await result if inspect.isawaitable(result) else result

    return runner.run(access()), req


def used(runner, plugin, consumer_id, plan_id, period="day"):
    async def read():
        return await plugin.store.read([QuotaKey(plan_id, consumer_id,
                                                 window(period, time.time()))])
    return runner.run(read())[0]


def test_requests_without_a_consumer_or_a_plan_pass_untouched(make, runner):
    plugin = make(plan("gold", ["alice-id"], quota_limit=1, quota_period="day"))
    for consumer in (None, CAROL):
        for _ in range(3):
            result, req = call(runner, plugin, consumer)
            assert result is None and CTX_HEADERS not in req.ctx
    assert used(runner, plugin, "carol-id", "gold-id") == 0


def test_quota_admits_the_limit_then_answers_429_naming_the_quota(make, runner):
    plugin = make(plan("gold", ["alice-id"], quota_limit=3, quota_period="week"))
    remaining = []
    for _ in range(3):
        result, req = call(runner, plugin, ALICE)
        assert result is None
        headers = dict(req.ctx[CTX_HEADERS])
        assert headers["X-Quota-Limit"] == "3"
        assert 1 <= int(headers["X-Quota-Reset"]) <= 7 * 86400
        remaining.append(headers["X-Quota-Remaining"])
        head = ResponseHead(200, [("Content-Type", "text/plain")])
        plugin.response_headers(req, head)
        assert head.get("X-Quota-Remaining") == headers["X-Quota-Remaining"]
    assert remaining == ["2", "1", "0"]

    result, req = call(runner, plugin, ALICE)
    assert isinstance(result, Response) and not isinstance(result, ErrorResponse)
    assert result.status == 429
    body = orjson.loads(result.body)
    w = window("week", time.time())
    assert body == {"message": "API quota exceeded", "request_id": "rid-1",
                    "quota": {"plan": "gold", "limit": 3, "period": "week", "used": 3,
                              "resets_at": w.resets_at}}
    headers = dict(result.headers)
    assert headers["X-Quota-Limit"] == "3" and headers["X-Quota-Remaining"] == "0"
    assert headers["Retry-After"] == headers["X-Quota-Reset"]
    assert 1 <= int(headers["Retry-After"]) <= 7 * 86400
    assert used(runner, plugin, "alice-id", "gold-id", "week") == 3  # the refusal not counted
    assert call(runner, plugin, BOB)[0] is None  # bob is in no plan


def test_a_consumer_over_quota_is_refused_without_asking_the_store_again(make, runner):
    plugin = make(plan("gold", ["alice-id"], quota_limit=1, quota_period="day"))
    calls = []
    consume = plugin.store.consume
    plugin.store.consume = lambda *a: calls.append(a) or consume(*a)
    assert call(runner, plugin, ALICE)[0] is None
    for _ in range(3):
        assert call(runner, plugin, ALICE)[0].status == 429
    assert len(calls) == 2  # the admitted request and the first refusal


def test_a_count_lowered_by_hand_is_seen_after_the_recheck_delay(make, runner, tmp_path,
                                                                 monkeypatch):
    import sqlite3
    from types import SimpleNamespace

    from guichet.plugins.bundled import usage_plans

    plugin = make(plan("gold", ["alice-id"], quota_limit=1, quota_period="month"))
    assert call(runner, plugin, ALICE)[0] is None
    assert call(runner, plugin, ALICE)[0].status == 429
    with sqlite3.connect(tmp_path / "u.db") as conn:  # an operator resets the count
        conn.execute("UPDATE quota_usage SET used = 0")
    assert call(runner, plugin, ALICE)[0].status == 429  # remembered
    later = time.time() + usage_plans.RECHECK + 1
    if later >= window("month", time.time()).end_ts:
        pytest.skip("too close to the end of the month")
    monkeypatch.setattr(usage_plans, "time", SimpleNamespace(time=lambda: later))
    assert call(runner, plugin, ALICE)[0] is None  # asked the store again


def test_throttle_refuses_past_the_burst_and_uses_no_quota(make, runner):
    plugin = make(plan("gold", ["alice-id"], throttle_rate=0.001, throttle_burst=2,
                       quota_limit=100, quota_period="day"))
    assert [call(runner, plugin, ALICE)[0] for _ in range(2)] == [None, None]
    result, _ = call(runner, plugin, ALICE)
    assert result.status == 429
    assert orjson.loads(result.body) == {
        "message": "API rate limit exceeded", "request_id": "rid-1",
        "throttle": {"plan": "gold", "rate": 0.001, "burst": 2}}
    assert 900 <= int(dict(result.headers)["Retry-After"]) <= 1000  # a token per 1000 s
    assert used(runner, plugin, "alice-id", "gold-id") == 2


def test_a_throttle_only_plan_needs_no_store(make, runner):
    plugin = make(plan("free", ["bob-id"], throttle_rate=1000.0))
    assert plugin.store is None
    assert call(runner, plugin, BOB)[0] is None
    assert plugin.plans["bob-id"].burst == 1000


def test_plans_restricted_to_services_or_routes_count_only_there(make, runner):
    plugin = make(plan("gold", ["alice-id"], quota_limit=1, quota_period="day",
                       route_ids=["route-b"]),
                  plan("silver", ["bob-id"], quota_limit=1, quota_period="day",
                       service_ids=["svc-1"]))
    # alice: route b only
    assert call(runner, plugin, ALICE, ROUTE_A, SERVICE_1)[0] is None
    assert call(runner, plugin, ALICE, ROUTE_A, SERVICE_1)[0] is None
    assert call(runner, plugin, ALICE, ROUTE_B, SERVICE_2)[0] is None
    assert call(runner, plugin, ALICE, ROUTE_B, SERVICE_2)[0].status == 429
    # bob: service 1 only
    assert call(runner, plugin, BOB, ROUTE_B, SERVICE_2)[0] is None
    assert call(runner, plugin, BOB, ROUTE_A, SERVICE_1)[0] is None
    assert call(runner, plugin, BOB, ROUTE_A, SERVICE_1)[0].status == 429
    assert call(runner, plugin, BOB, ROUTE_B, SERVICE_2)[0] is None


def test_hide_client_headers_keeps_retry_after(make, runner):
    plugin = make(plan("gold", ["alice-id"], quota_limit=1, quota_period="month",
                       hide_client_headers=True))
    assert plugin.active_phases() == ("access",)
    result, req = call(runner, plugin, ALICE)
    assert result is None and CTX_HEADERS not in req.ctx
    refusal, _ = call(runner, plugin, ALICE)
    assert refusal.status == 429
    assert [name for name, _ in refusal.headers] == ["Retry-After"]


@pytest.mark.parametrize("fault_tolerant, status", [(True, None), (False, 500)])
def test_an_unreachable_store_follows_fault_tolerant(make, runner, closed_port,
                                                     fault_tolerant, status, caplog):
    stores = Stores()
    plugin = make(plan("gold", ["alice-id"], quota_limit=1, quota_period="day",
                       fault_tolerant=fault_tolerant),
                  store=f"redis://:hunter2@127.0.0.1:{closed_port}/0", stores=stores)
    for _ in range(3):  # over the limit, but nothing can count
        result, req = call(runner, plugin, ALICE)
        if status is None:
            assert result is None and CTX_HEADERS not in req.ctx
        else:
            assert isinstance(result, ErrorResponse)
            assert (result.status, result.message) == (500, "An unexpected error occurred")
    outcome = "passed" if fault_tolerant else "failed"
    assert stores.get("usage-plans").get("tally") == {f"quota_store_unavailable_{outcome}": 3}
    assert "quota store unavailable" in caplog.text
    assert "hunter2" not in caplog.text  # the URL's password never reaches the log


def test_an_unreadable_sqlite_file_fails_open_by_default(make, runner, tmp_path):
    plugin = make(plan("gold", ["alice-id"], quota_limit=1, quota_period="day"),
                  store=f"sqlite:///{tmp_path}/no/such/dir/u.db")
    assert [call(runner, plugin, ALICE)[0] for _ in range(2)] == [None, None]


def test_the_anonymous_consumer_follows_its_plan(make, runner):
    """key-auth's ``anonymous`` consumer (no credential) is a consumer like another."""
    plugin = make(plan("public", ["carol-id"], quota_limit=2, quota_period="day"))
    results = [call(runner, plugin, CAROL)[0] for _ in range(3)]
    assert results[:2] == [None, None] and results[2].status == 429


def test_workers_plugins_share_one_store_across_reloads(make, runner, tmp_path):
    """Two snapshots' plugins in one worker share the store; it closes with the last."""
    stores = Stores()
    spec = plan("gold", ["alice-id"], quota_limit=2, quota_period="day")
    old = make(spec, stores=stores)
    new = make(spec, stores=stores)
    assert old.store is new.store
    assert call(runner, old, ALICE)[0] is None
    runner.run(old.close())
    assert call(runner, new, ALICE)[0] is None  # still open, and the count carried over
    assert call(runner, new, ALICE)[0].status == 429
