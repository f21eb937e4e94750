"""Shared fixtures: upstream servers, gateway processes, HTTP clients, external services.

- ``upstream`` / ``upstream2``: two session-wide raw upstream servers (ids ``u1``, ``u2``),
  their records cleared before each test that asks for them.
- ``gateway_factory(config_text, workers=1, env=None, extra_args=())``: starts a gateway
  subprocess for this test; every one is stopped at teardown. ``module_gateway_factory`` is
  the same for gateways shared by a module. When a test fails, the stderr of every gateway
  it used is attached to its report.
- ``http``: an ``httpx.Client`` that ignores proxy settings from the environment.
- ``closed_port``: a loopback port nothing listens on.
- ``requires_services("redis", "postgres")``: returns the URLs from ``REDIS_URL`` (default
  redis://127.0.0.1:6379/0) and ``POSTGRES_DSN`` (default
  postgresql://postgres@127.0.0.1:5432/test); skips the test with the reason when a service
  does not accept TCP connections, or fails it when ``GUICHET_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.gateway import GatewayFactory, GatewayStartError, free_port  # noqa: E402

# the plugin unit tests' ``resolve`` fixture (one event loop per module)
pytest_plugins = ["support.plugin_requests"]
from support.upstream import UpstreamServer  # noqa: E402

SERVICE_URLS = {
    "redis": ("REDIS_URL", "redis://127.0.0.1:6379/0", 6379),
    "postgres": ("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test", 5432),
}


# ---- upstreams -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def upstream_servers():
    servers = [UpstreamServer("u1").start(), UpstreamServer("u2").start()]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def upstream(upstream_servers) -> UpstreamServer:
    upstream_servers[0].clear()
    return upstream_servers[0]


@pytest.fixture
def upstream2(upstream_servers) -> UpstreamServer:
    upstream_servers[1].clear()
    return upstream_servers[1]


@pytest.fixture
def closed_port() -> int:
    return free_port()


# ---- gateways --------------------------------------------------------------------------
class _FailingFactory(GatewayFactory):
    """A start failure fails the test with the gateway's stderr, not a harness traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except GatewayStartError as exc:
            failure = str(exc)
        pytest.fail(failure, pytrace=False)


def _attach(node, factory: GatewayFactory) -> None:
    factories = getattr(node, "_guichet_gateway_factories", None)
    if factories is None:
        factories = []
        node._guichet_gateway_factories = factories
    factories.append(factory)


@pytest.fixture
def gateway_factory(request, tmp_path):
    factory = _FailingFactory(tmp_path / "gateways")
    _attach(request.node, factory)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_gateway_factory(request, tmp_path_factory):
    factory = _FailingFactory(tmp_path_factory.mktemp("gateways"))
    _attach(request.node, factory)
    yield factory
    factory.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for node in item.listchain():
        for factory in getattr(node, "_guichet_gateway_factories", ()):
            if factory.gateways:
                report.sections.append(("gateway stderr", factory.stderr_report()))


# ---- clients ---------------------------------------------------------------------------
@pytest.fixture
def http():
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        yield client


# ---- external services -----------------------------------------------------------------
def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1",
                                       parts.port or default_port), timeout=1.0):
            return True
    except OSError:
        return False


def requires_services(*names: str) -> dict[str, str]:
    """URLs of the named services; skip (or fail under GUICHET_REQUIRE_SERVICES=1) when
    one is unreachable."""
    urls = {}
    for name in names:
        variable, default, port = SERVICE_URLS[name]
        url = os.environ.get(variable, default)
        if not _reachable(url, port):
            reason = f"{name} is not reachable at {url} (set {variable})"
            if os.environ.get("GUICHET_REQUIRE_SERVICES") == "1":
                pytest.fail(f"{reason}; GUICHET_REQUIRE_SERVICES=1 requires it", pytrace=False)
            pytest.skip(reason)
        urls[name] = url
    return urls


@pytest.fixture(name="requires_services")
def requires_services_fixture():
    return requires_services
