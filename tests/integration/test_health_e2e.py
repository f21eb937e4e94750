"""Health checks end to end: real upstream processes killed (SIGKILL) and restarted on their
port behind a gateway with two workers.

One gateway for the module, one upstream (with its own processes) per scenario:
``act`` active http probes, ``pas`` passive checks only, ``thr`` active tcp probes and a
50 % threshold, ``mix`` active and passive together under continuous traffic.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from support import declarative
from support.upstream import UpstreamProcess

INTERVAL = 0.1
CLOSE = {"Connection": "close"}  # a new connection per request: both workers serve
DOCUMENTED_ERRORS = {502, 503, 504}
KONG_NO_PEER = "failure to get a peer from the ring-balancer"


def _active(kind: str = "http", **unhealthy) -> dict:
    return {"type": kind, "http_path": "/health", "timeout": 0.5,
            "healthy": {"interval": INTERVAL, "successes": 1},
            "unhealthy": {"interval": INTERVAL, **unhealthy}}


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("upstreams")
    names = ["a1", "a2", "p1", "p2", "h1", "h2", "h3", "m1", "m2", "m3"]
    made = {name: UpstreamProcess(name, workdir).start() for name in names}
    yield made
    for proc in made.values():
        proc.kill()


@pytest.fixture(scope="module")
def gw(module_gateway_factory, procs):
    def targets(*names):
        return [{"target": procs[n].address} for n in names]

    def service(name):
        return {"name": name, "host": f"{name}.up", "retries": 5,
                "routes": [{"name": name, "paths": [f"/{name}"]}]}

    config = declarative(
        services=[service(n) for n in ("act", "pas", "thr", "mix")],
        upstreams=[
            {"name": "act.up", "targets": targets("a1", "a2"), "healthchecks": {
                "active": _active(tcp_failures=1, http_failures=1, timeouts=1)}},
            {"name": "pas.up", "targets": targets("p1", "p2"), "healthchecks": {
                "passive": {"unhealthy": {"tcp_failures": 2, "http_failures": 2}}}},
            {"name": "thr.up", "targets": targets("h1", "h2", "h3"), "healthchecks": {
                "threshold": 50, "active": _active("tcp", tcp_failures=1, timeouts=1)}},
            {"name": "mix.up", "targets": targets("m1", "m2", "m3"), "healthchecks": {
                "active": _active(tcp_failures=1, http_failures=1, timeouts=1),
                "passive": {"unhealthy": {"tcp_failures": 1, "timeouts": 1}}}},
        ])
    return module_gateway_factory(config, workers=2)


@pytest.fixture(scope="module")
def client():
    with httpx.Client(trust_env=False, timeout=10.0) as c:
        yield c


def wait_for(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def health(gw, upstream: str) -> dict[str, str]:
    return gw.status().get("upstreams", {}).get(upstream, {})


def wait_health(gw, upstream: str, proc: UpstreamProcess, word: str) -> None:
    wait_for(lambda: health(gw, upstream).get(proc.address) == word,
             f"{proc.upstream_id} {word} in /status")


def answered_by(client, gw, path: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        r = client.get(gw.url + path, headers=CLOSE)
        assert r.status_code == 200, r.text
        ids.append(r.json()["upstream_id"])
    return ids


def assert_no_peer_503(r: httpx.Response) -> None:
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) >= 1
    body = r.json()
    assert body["message"] == KONG_NO_PEER and body["request_id"]


def test_active_http_probes_take_a_dead_target_out_and_bring_it_back(gw, procs, client):
    a1 = procs["a1"]
    wait_health(gw, "act.up", a1, "HEALTHY")
    a1.kill()
    wait_health(gw, "act.up", a1, "UNHEALTHY")
    assert set(answered_by(client, gw, "/act", 20)) == {"a2"}
    # back, but its health endpoint fails: probed, still out of the rotation
    a1.start(health=500)
    a1.clear()
    wait_for(lambda: len(a1.requests()) >= 3, "probes of a1")
    assert health(gw, "act.up")[a1.address] == "UNHEALTHY"
    assert set(answered_by(client, gw, "/act", 20)) == {"a2"}
    assert a1.proxied() == [] and set(a1.requests()) == {"GET /health"}
    # healthy again: traffic returns
    a1.start()
    wait_health(gw, "act.up", a1, "HEALTHY")
    assert "a1" in answered_by(client, gw, "/act", 20)


def test_active_probes_run_once_per_node_not_once_per_worker(gw, procs):
    a2 = procs["a2"]
    wait_health(gw, "act.up", a2, "HEALTHY")
    before, started = len(a2.requests()), time.monotonic()
    time.sleep(1.5)
    probes = [r for r in a2.requests()[before:] if r.endswith("/health")]
    elapsed = time.monotonic() - started
    # one prober sends at most one probe per interval; one per worker would send twice that
    assert 1 <= len(probes) <= 1.4 * elapsed / INTERVAL + 2, len(probes)


def test_passive_checks_take_a_target_out_and_never_bring_it_back(gw, procs, client):
    p1, p2 = procs["p1"], procs["p2"]
    p1.kill()
    # every request is answered: a refused connect is retried on the other target
    assert set(answered_by(client, gw, "/pas", 10)) == {"p2"}
    wait_health(gw, "pas.up", p1, "UNHEALTHY")
    # restarted, p1 gets nothing: passive checks never re-enable a target (Kong)
    p1.start()
    p1.clear()
    assert set(answered_by(client, gw, "/pas", 20)) == {"p2"}
    assert p1.requests() == []
    # two 500s from p2 (a passive unhealthy status) take the last target out: 503
    statuses = []
    while len(statuses) < 20:
        r = client.get(gw.url + "/pas/status/500", headers=CLOSE)
        statuses.append(r.status_code)
        if r.status_code == 503:
            assert_no_peer_503(r)
            break
        assert r.status_code == 500 and r.json()["upstream_id"] == "p2"
    assert statuses[-1] == 503 and 2 <= len(statuses) - 1 <= 12  # a relay takes a moment
    assert health(gw, "pas.up") == {p1.address: "UNHEALTHY", p2.address: "UNHEALTHY"}


def test_tcp_probes_and_the_threshold(gw, procs, client):
    h1, h2, h3 = procs["h1"], procs["h2"], procs["h3"]
    for proc in (h1, h2, h3):
        wait_health(gw, "thr.up", proc, "HEALTHY")
    h1.kill()
    wait_health(gw, "thr.up", h1, "UNHEALTHY")
    assert set(answered_by(client, gw, "/thr", 20)) == {"h2", "h3"}  # 66 % > 50 %
    h2.kill()
    wait_health(gw, "thr.up", h2, "UNHEALTHY")
    h3.clear()
    # 33 % of the weight is healthy, not above the threshold: the whole upstream is down,
    # although h3 answers
    for _ in range(5):
        assert_no_peer_503(client.get(gw.url + "/thr", headers=CLOSE))
    assert h3.proxied() == []
    h1.start()
    wait_health(gw, "thr.up", h1, "HEALTHY")
    assert set(answered_by(client, gw, "/thr", 20)) == {"h1", "h3"}
    h2.start()
    wait_health(gw, "thr.up", h2, "HEALTHY")


def test_every_request_gets_the_right_answer_or_a_documented_status_while_targets_die(
        gw, procs):
    m = [procs["m1"], procs["m2"], procs["m3"]]
    for proc in m:
        wait_health(gw, "mix.up", proc, "HEALTHY")
    results: list[tuple[int, dict, str | None]] = []
    stop = threading.Event()

    def traffic(keep_alive: bool) -> None:
        with httpx.Client(trust_env=False, timeout=10.0) as c:
            while not stop.is_set():
                r = c.get(gw.url + "/mix/item", headers={} if keep_alive else CLOSE)
                results.append((r.status_code, r.json(), r.headers.get("Retry-After")))

    threads = [threading.Thread(target=traffic, args=(k,)) for k in (True, False, False)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        m[0].kill()
        time.sleep(0.4)
        m[1].kill()
        time.sleep(0.4)
        m[0].start()
        time.sleep(0.4)
        m[2].kill()  # m1 alone
        time.sleep(0.4)
        m[0].kill()  # nothing left
        time.sleep(0.4)
        for proc in m:
            proc.start()
        for proc in m:
            wait_health(gw, "mix.up", proc, "HEALTHY")
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert len(results) > 50
    for status, body, retry_after in results:
        if status == 200:
            assert body["upstream_id"] in {"m1", "m2", "m3"} and body["path"] == "/item"  # strip_path
        else:
            assert status in DOCUMENTED_ERRORS, (status, body)
            assert body["message"] and body["request_id"]
            if status == 503:
                assert body["message"] == KONG_NO_PEER and int(retry_after) >= 1
    statuses = {s for s, _, _ in results}
    assert 503 in statuses  # the moment nothing was left
    assert results[-1][0] == 200  # and it came back by itself


def test_health_survives_reloads_and_a_restart_of_worker_0(gateway_factory, tmp_path, client):
    q1 = UpstreamProcess("q1", tmp_path).start()
    q2 = UpstreamProcess("q2", tmp_path).start()
    try:
        def config(tcp_failures: int, extra_route: bool = False, upstream: bool = True) -> str:
            routes = [{"name": "q", "paths": ["/q"]}]
            if extra_route:
                routes.append({"name": "extra", "paths": ["/extra"]})
            host = "q.up" if upstream else "127.0.0.1"
            service = {"name": "q", "host": host, "port": q2.port, "routes": routes}
            ups = [{"name": "q.up", "targets": [{"target": q1.address}, {"target": q2.address}],
                    "healthchecks": {"passive": {"unhealthy": {"tcp_failures": tcp_failures}}}}]
            return declarative(services=[service], upstreams=ups if upstream else [])

        gw2 = gateway_factory(config(1), workers=2)
        q1.kill()
        assert set(answered_by(client, gw2, "/q", 6)) == {"q2"}
        wait_health(gw2, "q.up", q1, "UNHEALTHY")
        q1.start()
        q1.clear()
        gw2.reload_config(config(1, extra_route=True))  # healthchecks unchanged: state kept
        assert set(answered_by(client, gw2, "/q", 20)) == {"q2"}
        assert q1.requests() == [] and health(gw2, "q.up")[q1.address] == "UNHEALTHY"
        # worker 0 (the health leader) crashes; its successor takes the node's states
        before = gw2.status()["worker_pids"]
        os.kill(before[0], signal.SIGKILL)
        def restarted() -> bool:
            try:
                pids = gw2.status()["worker_pids"]  # raises while the master answers 503
            except OSError:
                return False
            return len(pids) == 2 and pids[0] not in before

        wait_for(restarted, "worker 0 restarted")
        assert set(answered_by(client, gw2, "/q", 20)) == {"q2"}
        assert q1.requests() == [] and health(gw2, "q.up")[q1.address] == "UNHEALTHY"
        gw2.reload_config(config(3))  # changed healthchecks: a fresh checker, all healthy
        wait_health(gw2, "q.up", q1, "HEALTHY")
        wait_for(lambda: "q1" in answered_by(client, gw2, "/q", 4), "traffic back on q1")
        gw2.reload_config(config(3, upstream=False))  # the upstream is gone, and its state
        wait_for(lambda: "q.up" not in gw2.status()["upstreams"], "q.up gone from /status")
    finally:
        q1.kill()
        q2.kill()
