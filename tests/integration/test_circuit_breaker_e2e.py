"""Circuit breakers and retry backoff end to end, against upstream processes.

Circuit breakers are per worker: each scenario keeps one client connection, so one worker
sees every outcome (the gateway runs two workers all the same).
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from support import declarative
from support.gateway import free_port
from support.upstream import UpstreamProcess

CLOSE = {"Connection": "close"}
KONG_NO_PEER = "failure to get a peer from the ring-balancer"


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("upstreams")
    made = {name: UpstreamProcess(name, workdir).start() for name in ("c1", "c2", "r1", "r2")}
    yield made
    for proc in made.values():
        proc.kill()


@pytest.fixture(scope="module")
def gw(module_gateway_factory, procs):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there

    def service(name, **fields):
        return {"name": name, "host": f"{name}.up",
                "routes": [{"name": name, "paths": [f"/{name}"]}], **fields}

    def upstream(name, *targets, **fields):
        return {"name": f"{name}.up", "targets": [{"target": t} for t in targets], **fields}

    p = procs
    config = declarative(
        services=[
            service("cb"),
            service("cbone", retries=0),
            service("bo", retries=3, retry_backoff={"base": 0.05, "max": 0.2}),
            service("boidem", retries=3, retry_backoff={"base": 0.02, "max": 0.1}),
            service("slow", retries=1, retry_backoff={"base": 2, "max": 2, "jitter": False}),
        ],
        upstreams=[
            upstream("cb", p["c1"].address, p["c2"].address, circuit_breaker={
                "failures": 3, "open_timeout": 1, "half_open_requests": 1}),
            upstream("cbone", dead, circuit_breaker={"failures": 2, "open_timeout": 3}),
            upstream("bo", dead, p["r1"].address),
            upstream("boidem", p["r1"].address, p["r2"].address),
            upstream("slow", dead),
        ])
    return module_gateway_factory(config, workers=2)


def test_circuit_opens_after_consecutive_5xx_and_half_opens_after_open_timeout(gw, procs):
    c1 = procs["c1"]
    c1.start(fail=503)  # every answer a 503
    with httpx.Client(trust_env=False, timeout=10.0) as client:  # one connection, one worker
        failures = 0
        for _ in range(10):
            r = client.get(gw.url + "/cb")
            if r.json()["upstream_id"] == "c1":
                assert r.status_code == 503  # the upstream's own answer, relayed
                failures += 1
                if failures == 3:
                    break
            else:
                assert r.status_code == 200
        assert failures == 3
        reached = len(c1.requests())
        # open: c1 gets nothing, every request goes to c2
        for _ in range(10):
            r = client.get(gw.url + "/cb")
            assert r.status_code == 200 and r.json()["upstream_id"] == "c2"
        assert len(c1.requests()) == reached
        # c1 recovers; after open_timeout a trial request reaches it and closes the circuit
        c1.start()
        deadline = time.monotonic() + 10
        while client.get(gw.url + "/cb").json()["upstream_id"] != "c1":
            assert time.monotonic() < deadline, "no trial request reached c1"
            time.sleep(0.05)
        ids = [client.get(gw.url + "/cb").json()["upstream_id"] for _ in range(10)]
        assert set(ids) == {"c1", "c2"}
    log = gw.stderr_text()
    target = f"circuit of target {c1.address} of upstream cb.up is now"
    assert f"{target} open for 1s (3 failures in a row)" in log
    assert f"{target} half-open" in log and f"{target} closed" in log


def test_all_circuits_open_answer_503_with_retry_after_until_half_open(gw):
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        for _ in range(2):  # refused twice (no retries): the circuit opens
            r = client.get(gw.url + "/cbone")
            assert r.status_code == 502 and r.json()["request_id"]
        r = client.get(gw.url + "/cbone")
        assert r.status_code == 503
        assert r.json()["message"] == KONG_NO_PEER
        assert 1 <= int(r.headers["Retry-After"]) <= 3  # open_timeout 3 s


def test_retries_with_backoff_reach_the_live_target(gw, procs, http):
    r1 = procs["r1"]
    r1.clear()
    for _ in range(6):
        r = http.get(gw.url + "/bo", headers=CLOSE)
        assert r.status_code == 200 and r.json()["upstream_id"] == "r1"
    # nothing was sent to the dead target, so a POST is retried too, and sent once
    for _ in range(4):
        r = http.post(gw.url + "/bo/form", content=b"x=1", headers=CLOSE)
        assert r.status_code == 200 and r.json()["method"] == "POST"
    assert r1.requests().count("POST /form") == 4


def test_a_post_is_never_sent_twice_and_a_get_retries_within_the_count(gw, procs, http):
    r1, r2 = procs["r1"], procs["r2"]
    r1.clear()
    r2.clear()
    r = http.post(gw.url + "/boidem/close-before-response", content=b"once", headers=CLOSE)
    assert r.status_code == 502 and r.json()["request_id"]
    posts = [line for p in (r1, r2) for line in p.requests() if line.startswith("POST")]
    assert posts == ["POST /close-before-response"]
    r = http.get(gw.url + "/boidem/close-before-response", headers=CLOSE)
    assert r.status_code == 502
    gets = [line for p in (r1, r2) for line in p.requests() if line.startswith("GET")]
    assert len(gets) == 4  # the first attempt and retries: 3


def test_a_client_leaving_during_a_backoff_wait_does_not_disturb_the_gateway(gw, http, procs):
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)  # the first connect was refused; the retry waits 2 s
    time.sleep(0.1)
    r = http.get(gw.url + "/bo", headers=CLOSE)
    assert r.status_code == 200
    assert "Traceback" not in gw.stderr_text()
