"""Process life cycle: readiness, reloads (SIGHUP and file change), draining, workers."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx


def _config(upstream_port: int, path: str = "/a", extra_route: str = "") -> str:
    return f"""
_format_version: "3.0"
services:
- name: s1
  url: http://127.0.0.1:{upstream_port}
  routes:
  - name: r1
    paths: ["{path}"]
{extra_route}
"""


def _status(gw) -> dict:
    try:
        return gw.status()
    except Exception:  # 503 while a worker starts, or a refused connection
        return {}


def _wait(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_status_reports_version_hash_workers_connections(gateway_factory, upstream, http):
    gw = gateway_factory(_config(upstream.port), workers=2)
    status = gw.status()
    assert status["status"] == "ok"
    assert status["workers"] == 2
    assert len(status["worker_pids"]) == 2
    assert len(status["config_hash"]) == 64
    with httpx.Client(trust_env=False) as client:
        assert client.get(gw.url + "/a/echo").status_code == 200
        # an open keep-alive connection is counted
        assert _wait(lambda: gw.status()["connections"] >= 1)
    assert _wait(lambda: gw.status()["connections"] == 0)


def test_sighup_reload_switches_routes(gateway_factory, upstream, http):
    gw = gateway_factory(_config(upstream.port, "/old"))
    assert http.get(gw.url + "/old/echo").status_code == 200
    status = gw.reload_config(_config(upstream.port, "/new"))
    assert status["reloads"] == 1
    # config_hash changes once every worker serves the new configuration, not before
    assert status["pending_config_hash"] is None
    assert http.get(gw.url + "/new/echo").status_code == 200
    r = http.get(gw.url + "/old/echo")
    assert r.status_code == 404
    assert r.json()["message"] == "no Route matched with those values"


def test_file_change_is_picked_up_without_signal(gateway_factory, upstream, http):
    gw = gateway_factory(_config(upstream.port, "/before"), env={"GUICHET_CONFIG_WATCH_INTERVAL": "0.2"})
    before = gw.status()["config_hash"]
    gw.config_path.write_text(_config(upstream.port, "/after"))
    assert _wait(lambda: gw.status()["config_hash"] != before)
    assert _wait(lambda: http.get(gw.url + "/after/echo").status_code == 200)


def test_invalid_reload_keeps_old_config_and_status_says_why(gateway_factory, upstream, http):
    gw = gateway_factory(_config(upstream.port, "/kept"))
    before = gw.status()["config_hash"]
    gw.config_path.write_text(_config(upstream.port, "/kept") + "bogus_key: 1\n")
    gw.send_signal(signal.SIGHUP)
    assert _wait(lambda: gw.status()["last_reload"]["ok"] is False)
    status = gw.status()
    assert status["config_hash"] == before
    assert "bogus_key" in status["last_reload"]["error"]
    assert str(gw.config_path) in status["last_reload"]["error"]
    assert http.get(gw.url + "/kept/echo").status_code == 200


def _get_in_background(url: str) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def get() -> None:
        with httpx.Client(trust_env=False, timeout=10) as client:
            result["r"] = client.get(url)

    thread = threading.Thread(target=get)
    thread.start()
    return thread, result


def test_in_flight_request_survives_reload(gateway_factory, upstream, http):
    gw = gateway_factory(_config(upstream.port, "/slow"))
    t, result = _get_in_background(gw.url + "/slow/delay/1500")
    assert upstream.wait_for_requests(1, timeout=5)
    gw.reload_config(_config(upstream.port, "/other"))
    t.join(10)
    assert result["r"].status_code == 200
    assert http.get(gw.url + "/other/echo").status_code == 200


def test_sigterm_drains_in_flight_then_exits_zero(gateway_factory, upstream):
    gw = gateway_factory(_config(upstream.port, "/d"), env={"GUICHET_DRAIN_TIMEOUT": "10"})
    t, result = _get_in_background(gw.url + "/d/delay/1000")
    assert upstream.wait_for_requests(1, timeout=5)
    gw.send_signal(signal.SIGTERM)
    t.join(10)
    assert result["r"].status_code == 200
    assert result["r"].headers.get("connection") == "close"
    assert gw.proc.wait(15) == 0


def test_dead_worker_is_replaced(gateway_factory, upstream, http):
    gw = gateway_factory(_config(upstream.port), workers=1)
    (pid,) = gw.status()["worker_pids"]
    os.kill(pid, signal.SIGKILL)
    def replaced() -> bool:
        status = _status(gw)
        return status.get("status") == "ok" and status["worker_pids"] != [pid]

    assert _wait(replaced, 15)
    assert _wait(lambda: http.get(gw.url + "/a/echo").status_code == 200)


def test_check_command_reports_every_error_with_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "kong.yml"
    bad.write_text(
        '_format_version: "3.0"\n'
        "services:\n"
        "- name: s1\n"
        "  url: http://127.0.0.1:9\n"
        "  retries: lots\n"
        "  routes:\n"
        "  - name: r1\n"
        "    paths: [\"/x\"]\n"
        "    strip_paths: true\n"
        "plugins:\n"
        "- name: zipkin\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), "..", "..", "src"))
    out = subprocess.run([sys.executable, "-m", "guichet", "check", "--config", str(bad)],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 1
    err = out.stderr
    assert f"{bad}:5" in err and "retries" in err
    assert f"{bad}:9" in err and "strip_paths" in err
    assert f"{bad}:11" in err and "zipkin" in err

    good = tmp_path / "good.yml"
    good.write_text(_config(9))
    out = subprocess.run([sys.executable, "-m", "guichet", "check", "--config", str(good)],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
