"""The example plugin of ``examples/plugins`` works as its tutorial says, loaded by module
name through the ``plugins`` setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import declarative

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
SRC = Path(__file__).resolve().parents[2] / "src"


def example_env() -> dict[str, str]:
    return {"GUICHET_PLUGINS": "bundled,tenant_header",
            "PYTHONPATH": f"{EXAMPLES}{os.pathsep}{SRC}"}


@pytest.fixture(scope="module")
def tenant_gateway(module_gateway_factory, upstream_servers):
    config = declarative(services=[{
        "name": "orders", "url": upstream_servers[0].url,
        "routes": [{"name": "orders", "paths": ["/orders"],
                    "plugins": [{"name": "tenant-header",
                                 "config": {"tenants": ["acme", "globex"]}}]}]}])
    return module_gateway_factory(config, env=example_env())


def test_tenant_is_required_and_checked(tenant_gateway, upstream, http):
    r = http.get(tenant_gateway.url + "/orders")
    assert r.status_code == 400
    assert r.json()["message"] == "missing X-Tenant header"
    r = http.get(tenant_gateway.url + "/orders", headers={"X-Tenant": "initech"})
    assert r.status_code == 403
    assert upstream.requests == []


def test_tenant_goes_upstream_and_is_counted(tenant_gateway, upstream, http):
    first = http.get(tenant_gateway.url + "/orders", headers={"X-Tenant": "ACME"})
    second = http.get(tenant_gateway.url + "/orders", headers={"X-Tenant": "acme"})
    assert first.status_code == second.status_code == 200
    assert upstream.requests[-1].header("x-tenant-id") == "acme"
    assert second.headers["x-tenant"] == "acme"
    assert int(second.headers["x-tenant-requests"]) == int(first.headers["x-tenant-requests"]) + 1


def test_log_phase_writes_its_line(tenant_gateway, http):
    import time

    http.get(tenant_gateway.url + "/orders", headers={"X-Tenant": "globex"})
    deadline = time.monotonic() + 5
    while "tenant=globex route=orders status=200" not in tenant_gateway.stderr_text():
        assert time.monotonic() < deadline, tenant_gateway.stderr_text()
        time.sleep(0.05)


def test_bad_example_config_is_reported_with_its_line(tmp_path):
    bad = tmp_path / "kong.yml"
    bad.write_text((EXAMPLES / "kong.yml").read_text().replace("[acme, globex]", "[acme, 'not ok']"))
    out = subprocess.run([sys.executable, "-m", "guichet", "check", "--config", str(bad)],
                         capture_output=True, text=True, env={**os.environ, **example_env()},
                         timeout=60)
    assert out.returncode == 1
    line = next(i for i, l in enumerate(bad.read_text().splitlines(), 1) if "not ok" in l)
    assert f"{bad}:{line}" in out.stderr and "not a simple name" in out.stderr


def test_the_shipped_example_file_is_valid():
    out = subprocess.run([sys.executable, "-m", "guichet", "check", "--config",
                          str(EXAMPLES / "kong.yml")],
                         capture_output=True, text=True, env={**os.environ, **example_env()},
                         timeout=60)
    assert out.returncode == 0, out.stderr
