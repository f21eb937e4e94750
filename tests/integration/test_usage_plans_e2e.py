"""Usage plans through real gateways (two workers each) on one SQLite usage store.

Exactness across workers and across a restart: a quota of N, k requests used, the gateway
stopped and started again on the same store, exactly N - k more admitted. Durability
across a crash: the master and its workers killed with SIGKILL in the middle of traffic,
and the store still holds every request a client saw admitted (at most the requests in
flight at the kill more). A reload keeps the counts and applies the new limit. The
throttle answers 429 past its burst. ``guichet usage`` reads the same counts while the
gateway runs.

Every test uses plans named after a fresh run id and a store file of its own; a test
close to midnight UTC waits for the next day, so a burst never straddles two windows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx

from support import declarative
from support.bursts import burst, statuses
from support.gateway import REPO_ROOT
from support.rawhttp import RawResponse

WORKERS = 2
KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789",
        "carol": "carol-key-0123456789"}


def config(upstream_url: str, run: str, quota: int, *, throttle: dict | None = None) -> str:
    return declarative(
        services=[{"name": "main", "url": upstream_url,
                   "routes": [{"name": "api", "paths": ["/api"]}],
                   "plugins": [{"name": "key-auth"}]}],
        consumers=[{"username": name, "keyauth_credentials": [{"key": key}]}
                   for name, key in KEYS.items()],
        usage_plans=[
            {"name": f"quota-{run}", "quota": {"limit": quota, "period": "day"},
             "consumers": ["alice"]},
            {"name": f"throttle-{run}",
             "throttle": throttle or {"rate": 0.01, "burst": 3}, "consumers": ["bob"]},
        ])


def store_env(tmp_path) -> dict[str, str]:
    return {"GUICHET_USAGE_STORE": f"sqlite:///{tmp_path}/usage.db"}


def away_from_midnight(margin: float = 30.0) -> None:
    left = 86400 - (time.time() % 86400)
    if left < margin:
        time.sleep(left + 0.5)


def as_user(name: str) -> list[tuple[str, str]]:
    return [("apikey", KEYS[name])]


def ok(results) -> list[RawResponse]:
    for r in results:
        assert isinstance(r, RawResponse), f"a connection failed: {r!r}"
    return list(results)


def usage(gateway, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``guichet usage`` on the gateway's configuration and store, as an operator runs it."""
    full = dict(os.environ, **env)
    src = str(REPO_ROOT / "src")
    full["PYTHONPATH"] = src + (os.pathsep + full["PYTHONPATH"] if full.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "guichet", "usage", "--config",
                           str(gateway.config_path), *args], env=full, capture_output=True,
                          text=True, timeout=30)


def alice_usage(gateway, env) -> dict:
    done = usage(gateway, env, "--json", "--consumer", "alice")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    return row


# ------------------------------------------------------------------ exactness
def test_quota_is_exact_across_workers_and_a_restart(gateway_factory, upstream, tmp_path):
    away_from_midnight()
    run, n, k = uuid.uuid4().hex[:8], 12, 5
    text, env = config(upstream.url, run, n), store_env(tmp_path)
    first = gateway_factory(text, workers=WORKERS, env=env)
    results = ok(burst(first.port, "/api", k, as_user("alice")))
    assert statuses(results) == {200: k}
    assert alice_usage(first, env)["quota"]["used"] == k  # read while it runs
    assert first.stop() == 0

    second = gateway_factory(text, workers=WORKERS, env=env)
    results = ok(burst(second.port, "/api", 20, as_user("alice")))
    assert statuses(results) == {200: n - k, 429: 20 - (n - k)}
    assert len(upstream.requests) == n  # k before the restart, n - k after
    admitted = [r for r in results if r.status == 200]
    # each admitted request took its own place in the quota: n-k-1 ... 0 remaining
    assert sorted(int(r.header("X-Quota-Remaining")) for r in admitted) == list(range(n - k))
    for r in admitted:
        assert r.header("X-Quota-Limit") == str(n)
        assert 1 <= int(r.header("X-Quota-Reset")) <= 86400
    for r in results:
        if r.status != 429:
            continue
        body = r.json()
        assert body["message"] == "API quota exceeded" and body["request_id"]
        quota = body["quota"]
        assert (quota["plan"], quota["limit"], quota["period"], quota["used"]) == \
            (f"quota-{run}", n, "day", n)
        assert quota["resets_at"].endswith("T00:00:00Z")
        assert r.header("X-Quota-Remaining") == "0" and r.header("X-Quota-Limit") == str(n)
        assert 1 <= int(r.header("Retry-After")) <= 86400
        assert r.header("Content-Type").startswith("application/json")

    # a consumer in no plan is not counted; the usage report agrees with the gateway
    others = ok(burst(second.port, "/api", 3, as_user("carol")))
    assert statuses(others) == {200: 3}
    assert all(r.header("X-Quota-Limit") is None for r in others)
    row = alice_usage(second, env)
    assert (row["plan"]["name"], row["quota"]["used"], row["quota"]["remaining"]) == \
        (f"quota-{run}", n, 0)
    refusal = next(r for r in results if r.status == 429)
    assert row["quota"]["resets_at"] == refusal.json()["quota"]["resets_at"]
    table = usage(second, env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["CONSUMER", "PLAN", "QUOTA", "USED"]
    assert lines[1].split()[:5] == ["alice", f"quota-{run}", f"{n}/day", str(n), "0"]
    assert lines[2].split()[:3] == ["bob", f"throttle-{run}", "-"]
    assert "0.01/s burst 3" in lines[2]


def test_throttle_refuses_past_the_burst(gateway_factory, upstream, tmp_path):
    run = uuid.uuid4().hex[:8]
    gateway = gateway_factory(config(upstream.url, run, 100), workers=WORKERS,
                              env=store_env(tmp_path))
    results = ok(burst(gateway.port, "/api", 8, as_user("bob")))
    assert statuses(results) == {200: 3, 429: 5}  # burst 3, one more every 100 s
    for r in results:
        if r.status == 429:
            assert r.json()["message"] == "API rate limit exceeded"
            assert r.json()["throttle"] == {"plan": f"throttle-{run}", "rate": 0.01,
                                            "burst": 3}
            assert 1 <= int(r.header("Retry-After")) <= 100
    assert len(upstream.requests) == 3


def test_a_reload_keeps_the_counts_and_applies_the_new_limit(gateway_factory, upstream,
                                                              tmp_path):
    away_from_midnight()
    run = uuid.uuid4().hex[:8]
    gateway = gateway_factory(config(upstream.url, run, 3), workers=WORKERS,
                              env=store_env(tmp_path))
    assert statuses(ok(burst(gateway.port, "/api", 5, as_user("alice")))) == {200: 3, 429: 2}
    gateway.reload_config(config(upstream.url, run, 5))  # the same plan, a higher limit
    results = ok(burst(gateway.port, "/api", 5, as_user("alice")))
    assert statuses(results) == {200: 2, 429: 3}  # 3 already used of the 5
    assert {r.header("X-Quota-Limit") for r in results} == {"5"}
    assert len(upstream.requests) == 5


# ------------------------------------------------------------------ crash
def test_sigkill_mid_traffic_loses_no_admitted_count(gateway_factory, upstream, tmp_path):
    away_from_midnight()
    run, limit, clients = uuid.uuid4().hex[:8], 1_000_000, 6
    text, env = config(upstream.url, run, limit), store_env(tmp_path)
    gateway = gateway_factory(text, workers=WORKERS, env=env)
    pids = gateway.status()["worker_pids"] + [gateway.pid]
    admitted = [0] * clients
    stop = threading.Event()

    def client(index: int) -> None:
        with httpx.Client(base_url=gateway.url, trust_env=False, timeout=5.0,
                          headers={"apikey": KEYS["alice"]}) as http:
            while not stop.is_set():
                try:
                    answer = http.get("/api")
                except httpx.HTTPError:
                    return  # the gateway is gone
                assert answer.status_code == 200, answer.text
                admitted[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while sum(admitted) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(gateway.pid, signal.SIGKILL)  # the master and every worker, mid-traffic
    for thread in threads:
        thread.join(10)
    stop.set()
    acknowledged = sum(admitted)
    assert acknowledged >= 300
    time.sleep(0.2)
    for pid in pids:  # nothing was left to flush anything
        assert not _alive(pid), pid

    counted = alice_usage(gateway, env)["quota"]["used"]
    # every admitted request is in the store; at most one per client more (counted,
    # then killed before its answer left)
    assert acknowledged <= counted <= acknowledged + clients

    # a new gateway on the same store goes on from there
    again = gateway_factory(text, workers=WORKERS, env=env)
    (answer,) = ok(burst(again.port, "/api", 1, as_user("alice")))
    assert answer.status == 200
    assert int(answer.header("X-Quota-Remaining")) == limit - counted - 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by its parent) is dead too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_store_file_locked_by_another_process_never_stalls_the_event_loop(
        gateway_factory, upstream, tmp_path):
    """A review found a worker that could not open the SQLite file (another process held
    its lock) waiting for it on the event loop, up to the store's timeout every second:
    routes without any plan answered in 3-7 s. Now only the first open waits, in a thread;
    later attempts never wait. The store's timeout here is 8 s; a stalled loop would make
    the unplanned route miss its 4 s client timeout."""
    db = tmp_path / "usage.db"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys, time\n"
         f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        text = declarative(
            services=[{"name": "main", "url": upstream.url, "routes": [
                {"name": "api", "paths": ["/api"], "plugins": [{"name": "key-auth"}]},
                {"name": "open", "paths": ["/open"]}]}],
            consumers=[{"username": "alice", "keyauth_credentials": [{"key": KEYS["alice"]}]}],
            usage_plans=[{"name": "locked-out", "quota": {"limit": 5, "period": "day"},
                          "consumers": ["alice"]}])
        gw = gateway_factory(text, workers=1, env={"GUICHET_USAGE_STORE": f"sqlite:///{db}",
                                                   "GUICHET_USAGE_STORE_TIMEOUT": "8"})
        with httpx.Client(timeout=4.0, trust_env=False) as client:
            for _ in range(3):
                # the planned route: decided by fault_tolerant (passes, uncounted) ...
                assert client.get(f"{gw.url}/api", headers={"apikey": KEYS["alice"]}
                                  ).status_code == 200
                # ... and a route without plans is not held up by the store
                for _ in range(5):
                    assert client.get(f"{gw.url}/open").status_code == 200
    finally:
        holder.kill()
        holder.wait(5)
