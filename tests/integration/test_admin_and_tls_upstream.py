"""The admin listener's token rules, and services reached over HTTPS."""

from __future__ import annotations

import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from support.gateway import free_port
from test_tls import _cert

SRC = str(Path(__file__).resolve().parents[2] / "src")
CONFIG = """
_format_version: "3.0"
services:
- name: s
  url: http://127.0.0.1:9
  routes:
  - name: r
    paths: ["/"]
"""


def test_admin_off_loopback_without_token_refuses_to_start(tmp_path):
    cfg = tmp_path / "kong.yml"
    cfg.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUICHET_")}
    env["PYTHONPATH"] = SRC
    out = subprocess.run(
        [sys.executable, "-m", "guichet", "run", "--config", str(cfg), "--listen", f"127.0.0.1:{free_port()}",
         "--admin-listen", f"0.0.0.0:{free_port()}", "--workers", "1"],
        capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode != 0
    assert "GUICHET_ADMIN_TOKEN" in out.stderr


def test_admin_token_is_required_when_set():
    # The harness polls /status without a token, so start this one by hand.
    port, admin = free_port(), free_port()
    cfg = Path(os.environ.get("TMPDIR", "/tmp")) / f"guichet-admin-{admin}.yml"
    cfg.write_text(CONFIG)
    env = dict(os.environ, PYTHONPATH=SRC, GUICHET_ADMIN_TOKEN="s3cret-token")
    proc = subprocess.Popen([sys.executable, "-m", "guichet", "run", "--config", str(cfg), "--listen",
                             f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}", "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{admin}/status"
        with httpx.Client(trust_env=False, timeout=2) as client:
            deadline = time.monotonic() + 15
            while True:
                try:
                    r = client.get(url, headers={"Authorization": "Bearer s3cret-token"})
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert r.json()["workers"] == 1
            denied = client.get(url)
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"].startswith("Bearer")
            assert client.get(url, headers={"Authorization": "Bearer s3cret-tokeX"}).status_code == 401
            assert client.get(url, headers={"Kong-Admin-Token": "s3cret-token"}).status_code == 200
            assert "s3cret-token" not in denied.text
    finally:
        proc.terminate()
        proc.wait(15)
        cfg.unlink()
    assert "s3cret-token" not in proc.stderr.read()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        body = json.dumps({"path": self.path, "host": self.headers.get("Host")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def https_upstream(tmp_path):
    cert, key = _cert("localhost", ["localhost"])
    (tmp_path / "u.pem").write_text(cert)
    (tmp_path / "u.key").write_text(key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "u.pem", tmp_path / "u.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_service_over_https(gateway_factory, https_upstream, http):
    gw = gateway_factory(f"""
_format_version: "3.0"
services:
- name: secure-backend
  url: https://127.0.0.1:{https_upstream}/base
  routes:
  - name: r
    paths: ["/s"]
""")
    for _ in range(3):  # pooled TLS connections are reused
        r = http.get(gw.url + "/s/x")
        assert r.status_code == 200
        assert r.json() == {"path": "/base/x", "host": f"127.0.0.1:{https_upstream}"}
