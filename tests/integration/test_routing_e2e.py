"""Kong routing rules end to end: hosts (exact, wildcard, with a port), methods, headers,
regex paths ordered by regex_priority, strip_path false, preserve_host, and the 404.

Every service points at upstream u1 under its own base path, so the path the upstream
echoes names the route that matched. The router's unit tests cover the rest of the rules.
"""

from __future__ import annotations

import pytest

from support import declarative


def service(name: str, base_url: str, **route) -> dict:
    route.setdefault("name", name)
    return {"name": name, "url": f"{base_url}/{name}", "routes": [route]}


@pytest.fixture(scope="module")
def gw(module_gateway_factory, upstream_servers):
    u = upstream_servers[0].url
    config = declarative(services=[
        service("exact-host", u, hosts=["api.example.com"]),
        service("wild-host", u, hosts=["*.wild.example"]),
        service("m-post", u, paths=["/m"], methods=["POST"]),
        service("m-any", u, paths=["/m"]),
        service("hd-v2", u, paths=["/hd"], headers={"x-version": ["v2"]}),
        service("hd-default", u, paths=["/hd"]),
        service("re-hi", u, paths=[r"~/users/\d+$"], regex_priority=10),
        service("re-lo", u, paths=[r"~/users/.*"], regex_priority=0),
        service("keep", u, paths=["/keep"], strip_path=False),
        service("preserve", u, hosts=["preserve.example"], preserve_host=True),
    ])
    return module_gateway_factory(config)


def routed(http, gw, method: str, path: str, **headers) -> tuple[str, dict]:
    response = http.request(method, gw.url + path, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["path"], {k.lower(): v for k, v in body["headers"]}


@pytest.mark.parametrize("host, base", [
    ("api.example.com", "/exact-host"),
    ("api.example.com:8000", "/exact-host"),
    ("a.wild.example", "/wild-host"),
    ("preserve.example", "/preserve"),
])
def test_hosts(gw, upstream, http, host, base):
    path, _ = routed(http, gw, "GET", "/anything", Host=host)
    assert path == base + "/anything"


@pytest.mark.parametrize("host", ["wild.example", "api.example.com.evil", "other.example"])
def test_unmatched_host_is_404(gw, upstream, http, host):
    response = http.get(gw.url + "/anything", headers={"Host": host})
    assert response.status_code == 404
    assert response.json()["message"] == "no Route matched with those values"
    assert upstream.requests == []


def test_methods(gw, upstream, http):
    assert routed(http, gw, "POST", "/m/x", Host="plain.test")[0] == "/m-post/x"
    assert routed(http, gw, "GET", "/m/x", Host="plain.test")[0] == "/m-any/x"


def test_headers(gw, upstream, http):
    assert routed(http, gw, "GET", "/hd", Host="plain.test", **{"X-Version": "v2"})[0] \
        == "/hd-v2"
    assert routed(http, gw, "GET", "/hd", Host="plain.test", **{"X-Version": "v3"})[0] \
        == "/hd-default"
    assert routed(http, gw, "GET", "/hd", Host="plain.test")[0] == "/hd-default"


def test_regex_priority(gw, upstream, http):
    assert routed(http, gw, "GET", "/users/123", Host="plain.test")[0].startswith("/re-hi")
    assert routed(http, gw, "GET", "/users/abc", Host="plain.test")[0].startswith("/re-lo")


def test_strip_path_false_keeps_the_matched_prefix(gw, upstream, http):
    assert routed(http, gw, "GET", "/keep/x?y=1", Host="plain.test")[0] == "/keep/keep/x"


def test_preserve_host(gw, upstream, http):
    _, headers = routed(http, gw, "GET", "/p", Host="preserve.example")
    assert headers["host"] == "preserve.example"
    _, headers = routed(http, gw, "GET", "/p", Host="api.example.com")
    assert headers["host"] in (f"127.0.0.1:{upstream.port}", "127.0.0.1")


def test_unknown_path_is_404(gw, upstream, http):
    response = http.get(gw.url + "/nothing/here", headers={"Host": "plain.test"})
    assert response.status_code == 404
    assert response.json()["message"] == "no Route matched with those values"
