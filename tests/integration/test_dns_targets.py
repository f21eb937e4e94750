"""Targets named by DNS are followed while the gateway runs, without a reload."""

from __future__ import annotations

import time

from support.dnsserver import DNSServer


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_srv_target_moves_when_the_record_changes(gateway_factory, upstream, upstream2, http, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("")  # nothing answered from a hosts file
    with DNSServer() as dns:
        dns.set("api.svc.test", "SRV", [f"10 100 {upstream.port} node.svc.test."], ttl=1)
        dns.set("node.svc.test", "A", ["127.0.0.1"], ttl=1)
        config = """
_format_version: "3.0"
upstreams:
- name: api-pool
  targets:
  - target: api.svc.test
services:
- name: api
  url: http://api-pool
  routes:
  - name: api
    paths: ["/api"]
"""
        gw = gateway_factory(config, env={
            "GUICHET_DNS_RESOLVER": f"{dns.address[0]}:{dns.address[1]}",
            "GUICHET_DNS_HOSTSFILE": str(hosts),
            "GUICHET_DNS_MIN_TTL": "0.2",
        })
        assert _wait_for(lambda: http.get(gw.url + "/api/echo").headers.get("x-upstream-id") == "u1")
        before = gw.status()["config_hash"]
        dns.set("api.svc.test", "SRV", [f"10 100 {upstream2.port} node.svc.test."], ttl=1)
        assert _wait_for(lambda: http.get(gw.url + "/api/echo").headers.get("x-upstream-id") == "u2")
        # every request now goes to the new instance, and no reload happened
        assert {http.get(gw.url + "/api/echo").headers.get("x-upstream-id") for _ in range(10)} == {"u2"}
        assert gw.status()["config_hash"] == before
        assert gw.status()["reloads"] == 0


def test_service_host_name_resolved_by_a_record(gateway_factory, upstream, http, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    with DNSServer() as dns:
        dns.set("plain.svc.test", "A", ["127.0.0.1"], ttl=1)
        config = f"""
_format_version: "3.0"
services:
- name: plain
  url: http://plain.svc.test:{upstream.port}
  routes:
  - name: plain
    paths: ["/plain"]
"""
        gw = gateway_factory(config, env={
            "GUICHET_DNS_RESOLVER": f"{dns.address[0]}:{dns.address[1]}",
            "GUICHET_DNS_HOSTSFILE": str(hosts),
        })
        assert _wait_for(lambda: http.get(gw.url + "/plain/echo").status_code == 200)
        seen = upstream.requests[-1]
        assert seen.header("host") == f"plain.svc.test:{upstream.port}"
