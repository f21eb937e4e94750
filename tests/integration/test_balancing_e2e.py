"""Load balancing through the gateway: round-robin spread and consistent hashing."""

from __future__ import annotations

from collections import Counter


def _config(u1, u2, upstream_extra: str = "") -> str:
    return f"""
_format_version: "3.0"
upstreams:
- name: pool
{upstream_extra}
  targets:
  - target: 127.0.0.1:{u1.port}
    weight: 100
  - target: 127.0.0.1:{u2.port}
    weight: 100
services:
- name: s
  url: http://pool
  routes:
  - name: r
    paths: ["/"]
"""


def test_round_robin_spreads_evenly(gateway_factory, upstream, upstream2, http):
    gw = gateway_factory(_config(upstream, upstream2))
    seen = Counter(http.get(gw.url + "/echo").headers["x-upstream-id"] for _ in range(20))
    assert seen == {"u1": 10, "u2": 10}


def test_consistent_hashing_on_a_query_arg_is_sticky(gateway_factory, upstream, upstream2, http):
    gw = gateway_factory(_config(upstream, upstream2, "  algorithm: consistent-hashing\n"
                                                      "  hash_on: query_arg\n  hash_on_query_arg: user"))
    chosen = {}
    for user in range(12):
        ids = {http.get(gw.url + f"/echo?user={user}").headers["x-upstream-id"] for _ in range(4)}
        assert len(ids) == 1, f"user {user} moved between targets: {ids}"
        chosen[user] = ids.pop()
    assert set(chosen.values()) == {"u1", "u2"}  # twelve keys do not all land on one target


def test_hash_on_cookie_sets_the_cookie_kong_sets(gateway_factory, upstream, upstream2, http):
    gw = gateway_factory(_config(upstream, upstream2, "  hash_on: cookie\n  hash_on_cookie: sticky"))
    first = http.get(gw.url + "/echo")
    cookie = first.headers.get("set-cookie")
    assert cookie and cookie.startswith("sticky=") and "Path=/" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    target = first.headers["x-upstream-id"]
    for _ in range(5):
        r = http.get(gw.url + "/echo", headers={"Cookie": f"sticky={value}"})
        assert r.headers["x-upstream-id"] == target
        assert "set-cookie" not in r.headers
