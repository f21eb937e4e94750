"""`guichet demo`: the README's first command works and Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.gateway import free_port

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_demo_serves_the_example_and_stops_on_ctrl_c():
    port, admin = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen([sys.executable, "-m", "guichet", "demo", "--port", str(port),
                             "--admin-port", str(admin)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        with httpx.Client(trust_env=False, timeout=2) as client:
            while True:
                try:
                    if client.get(f"http://127.0.0.1:{admin}/status").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "not ready"
                time.sleep(0.1)
            base = f"http://127.0.0.1:{port}"
            first = client.get(base + "/echo/hello").json()
            second = client.get(base + "/echo/hello").json()
            assert first["path"] == "/hello"
            assert {first["instance"], second["instance"]} == {"echo-a", "echo-b"}  # round-robin
            assert client.get(base + "/users/42").json()["path"] == "/users/42"
            assert client.get(base + "/any", headers={"Host": "shop.demo.test"}).status_code == 200
            missing = client.get(base + "/nothing-here")
            assert missing.status_code == 404
            assert missing.json()["message"] == "no Route matched with those values"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does in a terminal
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0
        assert f"curl -i {base}/echo/hello" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
