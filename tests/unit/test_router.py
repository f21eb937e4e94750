"""RouteTable and upstream_path against Kong's documented and unit-tested behaviour.

Cases mirror Kong's docs ("Traditional router", route priority) and
spec/01-unit/08-router_spec.lua; the path table is spec/fixtures/router_path_handling_tests.lua.
"""

from __future__ import annotations

import itertools

import pytest

from guichet.config.model import Route
from guichet.errors import ConfigError
from guichet.router import RouteMatch, RouteTable, _Bucket, _compile_route, upstream_path
from guichet.uri import normalize_path

_ids = itertools.count()


def route(name: str, **fields) -> Route:
    n = next(_ids)
    fields.setdefault("order", n)
    return Route(id=f"00000000-0000-0000-0000-{n:012d}", name=name, service_id="svc", **fields)


def table(*routes: Route, **kw) -> RouteTable:
    return RouteTable(routes, **kw)


def pick(t: RouteTable, path: str = "/", host: str | None = "example.test", *,
         method: str = "GET", headers: dict | None = None, scheme: str = "http",
         sni: str | None = None) -> str | None:
    m = t.match(method, host, path, headers or {}, scheme, sni)
    return None if m is None else m.route.name


# ----------------------------------------------------------------------------- hosts

HOSTS = table(
    route("plain", hosts=("domain-1.org", "domain-2.org")),
    route("port321", hosts=("domain-1.org:321", "domain-2.org")),
    route("port-only", hosts=("domain-3.org:321",)),
    route("upper", hosts=("MiXeD.Example.ORG",)),
    route("v6", hosts=("::11", "[::12]")),
    route("v6port", hosts=("[::21]:321",)),
    route("v6any", hosts=("[::21]",)),
)


@pytest.mark.parametrize("host, expected", [
    ("domain-1.org", "plain"),
    ("DOMAIN-1.ORG", "plain"),            # host compared case-insensitively
    ("domain-1.org:80", "plain"),         # default port is no port
    ("domain-1.org:123", "plain"),        # a no-port route matches any port
    ("domain-1.org:321", "port321"),      # the port-specific route wins its port
    ("domain-3.org:321", "port-only"),
    ("domain-3.org:123", None),           # port-only route, other port
    ("domain-3.org", None),               # no port in Host: 80 for http
    ("mixed.example.org", "upper"),       # route host lower-cased too
    ("domain-1.org.", "plain"),           # one trailing dot ignored
    ("::11", "v6"),
    ("[::11]", "v6"),
    ("[::11]:654", "v6"),
    ("[0:0::12]", "v6"),                  # IPv6 compared in canonical form
    ("[::21]:321", "v6port"),
    ("[::21]:654", "v6any"),
    ("nothing.org", None),
    (None, None),
    ("", None),
    ("domain-1.org:abc", None),           # a bad port is part of the name: matches nothing
])
def test_hosts(host, expected):
    assert pick(HOSTS, host=host) == expected


def test_port_host_uses_scheme_default_port():
    t = table(route("tls", hosts=("example.test:443",)), route("any", hosts=("example.test",)))
    assert pick(t, host="example.test", scheme="https") == "tls"
    assert pick(t, host="example.test", scheme="http") == "any"


WILD = table(
    route("left", hosts=("*.route.com",)),
    route("right", hosts=("route.*",)),
    route("left-port", hosts=("*.route.net:123",)),
    route("plain", hosts=("plain.route.com",)),
    route("plain-apex", hosts=("route.com",)),
)


@pytest.mark.parametrize("host, expected", [
    ("foo.route.com", "left"),
    ("x.y.route.com", "left"),            # leftmost wildcard spans several labels
    ("foo.route.com:123", "left"),        # wildcard without port: any port
    ("route.org", "right"),
    ("route.co.uk", "right"),
    ("route.org:8080", "right"),
    ("foo.route.net:123", "left-port"),
    ("foo.route.net:456", None),
    ("foo.route.net", None),
    ("route.com", "plain-apex"),          # plain host beats the matching "route.*"
    ("plain.route.com", "plain"),         # plain host beats the matching "*.route.com"
    ("bar.sub.route.org", None),
])
def test_wildcard_hosts(host, expected):
    assert pick(WILD, host=host) == expected


def test_wildcard_host_with_path_beats_plain_host_without_that_path():
    t = table(route("wild", hosts=("*.route.com",), paths=("/path1",)),
              route("plain", hosts=("plain.route.com",), paths=("/path2",)))
    assert pick(t, "/path1", "plain.route.com") == "wild"
    assert pick(t, "/path2", "plain.route.com") == "plain"


def test_port_specific_wildcard_breaks_tie_even_when_defined_later():
    t = table(route("any", hosts=("route.*",)), route("p80", hosts=("route.*:80", "route.com.*")))
    assert pick(t, host="route.org:80") == "p80"
    assert pick(t, host="route.org") == "p80"    # implicit port 80
    assert pick(t, host="route.org:81") == "any"


# ----------------------------------------------------------------------------- paths

def test_longest_prefix_wins_whatever_the_order():
    t = table(route("short", paths=("/my-route",)), route("long", paths=("/my-route/hello",)))
    assert pick(t, "/my-route/hello") == "long"
    assert pick(t, "/my-route/hello/world") == "long"
    assert pick(t, "/my-route") == "short"
    assert pick(t, "/my-route/world") == "short"
    assert pick(t, "/my-routeX") == "short"   # a plain string prefix, not a segment match
    assert pick(t, "/other") is None


def test_prefix_is_anchored():
    t = table(route("deep", paths=("/something/my-route",)),
              route("hosted", hosts=("example.com",), paths=("/my-route",)))
    assert pick(t, "/something/my-route", "example.com") == "deep"


def test_half_match_does_not_supersede():
    t = table(route("h1", hosts=("host1.com",), paths=("/v1/path",)),
              route("h2", hosts=("host2.com",), paths=("/",)))
    assert pick(t, "/v1/path", "host1.com") == "h1"
    assert pick(t, "/v1/path", "host2.com") == "h2"


def test_multi_path_route_is_split_per_prefix_length():
    t = table(route("a", hosts=("d.org",), paths=("/foo", "/foo/bar/baz")),
              route("b", hosts=("d.org",), paths=("/foo/bar",)))
    assert pick(t, "/foo", "d.org") == "a"
    assert pick(t, "/foo/bar", "d.org") == "b"
    assert pick(t, "/foo/bar/baz/x", "d.org") == "a"


def test_multi_path_route_is_split_regex_from_prefix():
    t = table(route("mixed", hosts=("d.org",), paths=("~/some/thing/else", "/foo")),
              route("prefix", hosts=("d.org",), paths=("/foo/bar",)))
    assert pick(t, "/some/thing/else", "d.org") == "mixed"
    assert pick(t, "/foo/bar", "d.org") == "prefix"   # the "/foo" half is a 4-char prefix


def test_regex_beats_prefix_even_exact_or_longer():
    t = table(route("prefix", paths=("/route/persons",)),
              route("fixture", paths=("/route/fixture",)),
              route("regex", paths=(r"~/route/persons/\d+/profile",)),
              route("regex2", paths=("~/route/(fixture)",)))
    assert pick(t, "/route/persons/123/profile") == "regex"
    assert pick(t, "/route/persons/abc") == "prefix"
    assert pick(t, "/route/fixture") == "regex2"


def test_regex_and_host_beat_prefix_and_host():
    t = table(route("pat", hosts=("route.com",), paths=("/pat",)),
              route("post", hosts=("route.com",), paths=("/path",), methods=("POST",)),
              route("re", hosts=("route.com",), paths=("~/(path)",)))
    assert pick(t, "/path", "route.com") == "re"
    assert pick(t, "/path", "route.com", method="POST") == "post"   # 3 fields beat 2


def test_regex_is_anchored_at_start_not_end():
    t = table(route("re", paths=("~/prefix/[0-9]+",)))
    assert pick(t, "/prefix/123") == "re"
    assert pick(t, "/prefix/123/more") == "re"
    assert pick(t, "/extra/prefix/123") is None


def test_regex_alternation_is_anchored_as_a_whole():
    t = table(route("re", paths=("~/foo|/bar",)))
    assert pick(t, "/bar/x") == "re"
    assert pick(t, "/x/bar") is None


def test_regex_priority_docs_example():
    # Kong docs: evaluated as /version/\d+/status/\d+ (6), /status/\d+ (0), /version/any/, /version
    t = table(route("status", paths=(r"~/status/\d+",), regex_priority=0),
              route("version-status", paths=(r"~/version/\d+/status/\d+",), regex_priority=6),
              route("version", paths=("/version",)),
              route("any", paths=("~/version/any/",)))
    assert pick(t, "/version/1/status/2") == "version-status"
    assert pick(t, "/status/2") == "status"
    assert pick(t, "/version/any/x") == "any"
    assert pick(t, "/version/other") == "version"


def test_regex_priority_orders_overlapping_regexes():
    t = table(route("low", paths=(r"~/test_(.+)",), regex_priority=1),
              route("high", paths=(r"~/test_a(.+)",), regex_priority=5),
              route("neg", paths=(r"~/test_ab",), regex_priority=-1))
    assert pick(t, "/test_a/x") == "high"
    assert pick(t, "/test_b") == "low"
    assert pick(t, "/test_ab") == "high"


def test_prefix_matching_ignores_regex_priority():
    t = table(route("regex", hosts=("domain-1.org",), paths=("~/.*",)),
              route("root", hosts=("domain-2.org",), paths=("/",), regex_priority=5),
              route("v1", hosts=("domain-2.org",), paths=("/v1",)))
    assert pick(t, "/v1", "domain-2.org") == "v1"


def test_root_path_is_a_catch_all_that_supersedes_nothing():
    t = table(route("root", paths=("/",)), route("my", paths=("/my-route",)))
    assert pick(t, "/") == "root"
    assert pick(t, "/my-route/hello") == "my"
    assert pick(t, "/foobar/baz") == "root"


def test_prefix_paths_are_compared_in_normalised_form():
    t = table(route("enc", paths=("/endel%2Fst",)), route("raw", paths=("/caf\u00e9",)))
    assert pick(t, normalize_path("/endel%2fst")) == "enc"
    assert pick(t, normalize_path("/endel/st")) is None
    assert pick(t, normalize_path("/caf%c3%a9/x")) == "raw"


# ----------------------------------------------------------------------------- captures

def test_named_and_positional_captures():
    t = table(route("re", paths=(r"~/users/(?P<user_id>\d+)/profile/?(?<scope>[a-z]*)",)))
    m = t.match("GET", None, "/users/1984/profile/email", {}, "http")
    assert m.uri_captures == {"0": "/users/1984/profile/email", "1": "1984", "2": "email",
                              "user_id": "1984", "scope": "email"}
    assert m.matched_path == "/users/1984/profile/email"
    m = t.match("GET", None, "/users/1984/profile", {}, "http")
    assert m.uri_captures["2"] == "" and m.uri_captures["scope"] == ""


def test_unmatched_optional_group_is_absent():
    t = table(route("re", paths=(r"~/(users/)?1984/(?<subpath>profile)$",)))
    m = t.match("GET", None, "/1984/profile", {}, "http")
    assert "1" not in m.uri_captures
    assert m.uri_captures["subpath"] == "profile" and m.uri_captures["2"] == "profile"


def test_no_captures_without_groups_or_for_prefixes():
    t = table(route("re", paths=(r"~/users/\d+/profile",)), route("pre", paths=("/hello",)))
    assert t.match("GET", None, "/users/1/profile", {}, "http").uri_captures == {}
    m = t.match("GET", None, "/hello/world", {}, "http")
    assert m.uri_captures == {} and m.matched_path == "/hello"
    assert isinstance(m, RouteMatch)


# ----------------------------------------------------------------------------- headers

HEADERS = table(
    route("location", headers=(("location", ("my-location-1", "my-location-2")),)),
    route("two", headers=(("location", ("my-location-1",)), ("version", ("v1", "v2")))),
    route("ua", headers=(("user-agent", (r"~*windows|linux|os\s+x\s*[\d\._]+|solaris|bsd",)),)),
    route("upper", headers=(("x-env", ("BAZ",)),)),
)


@pytest.mark.parametrize("headers, expected", [
    ({"location": "my-location-1"}, "location"),
    ({"location": "my-location-2"}, "location"),
    ({"location": "My-Location-2"}, "location"),                  # value case-insensitive
    ({"location": "my-location-3"}, None),
    ({"location": "my-location-3, my-location-2"}, "location"),   # repeated header, joined
    ({"location": "my-location-3, foo"}, None),
    ({"location": "my-location-1", "version": "v2"}, "two"),      # more headers first
    ({"location": "my-location-3, my-location-1", "version": "v2"}, "two"),
    ({"location": "my-location-2", "version": "v2"}, "location"),
    ({"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/83.0"}, "ua"),
    ({"user-agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)"}, "ua"),
    ({"user-agent": "curl/8.0"}, None),
    ({"x-env": "baz"}, "upper"),
    ({}, None),
])
def test_headers(headers, expected):
    assert pick(HEADERS, headers=headers) == expected


def test_more_headers_beat_longer_path():
    t = table(route("long", headers=(("version", ("v1",)),), paths=("/my-route/hello",)),
              route("more", headers=(("version", ("v1",)), ("location", ("us-east",))),
                    paths=("/my-route",)))
    hdrs = {"version": "v1", "location": "us-east"}
    assert pick(t, "/my-route/hello", headers=hdrs) == "more"
    assert pick(t, "/my-route/hello", headers={"version": "v1"}) == "long"


# ----------------------------------------------------------------------------- methods, snis

def test_methods():
    t = table(route("get", methods=("GET", "HEAD")), route("post", methods=("POST",)))
    assert pick(t, method="GET") == "get"
    assert pick(t, method="HEAD") == "get"
    assert pick(t, method="POST") == "post"
    assert pick(t, method="post") is None    # methods are case-sensitive
    assert pick(t, method="DELETE") is None


def test_snis_checked_on_https_only():
    t = table(route("exact", snis=("sni.test",), protocols=("http", "https")),
              route("left", snis=("*.sni.test",), protocols=("https",)),
              route("right", snis=("sni.*",), protocols=("https",)))
    assert pick(t, scheme="https", sni="sni.test") == "exact"
    assert pick(t, scheme="https", sni="SNI.test.") == "exact"
    assert pick(t, scheme="https", sni="foo.bar.sni.test") == "left"
    assert pick(t, scheme="https", sni="sni.foo.bar") == "right"
    assert pick(t, scheme="https", sni="bar.sni.foo") is None
    assert pick(t, scheme="https", sni=None) is None
    assert pick(t, scheme="http", sni=None) == "exact"   # Kong ignores snis over http


# ----------------------------------------------------------------------------- protocols

def test_protocols_and_https_redirect():
    t = table(route("secure", paths=("/secure",), protocols=("https",),
                    https_redirect_status_code=301),
              route("plain", paths=("/plain",), protocols=("http",)),
              route("both", paths=("/",)))
    m = t.match("GET", "example.test", "/secure/x", {}, "http")
    assert m.route.name == "secure" and m.redirect_https is True
    m = t.match("GET", "example.test", "/secure/x", {}, "https", "example.test")
    assert m.route.name == "secure" and m.redirect_https is False
    assert t.match("GET", "h", "/secure", {}, "ws").redirect_https is True
    assert t.match("GET", "h", "/secure", {}, "wss").redirect_https is False
    assert pick(t, "/plain/x", scheme="http") == "plain"
    assert pick(t, "/plain/x", scheme="https") == "both"   # http-only route skipped
    assert pick(t, "/plain/x", scheme="wss") == "both"
    assert t.match("GET", "h", "/other", {}, "http").redirect_https is False


# ----------------------------------------------------------------------------- priority

def test_more_fields_win():
    t = table(route("host", hosts=("example.com",)),
              route("host-method", hosts=("example.com",), methods=("POST",)),
              route("host-method-path", hosts=("example.com",), methods=("POST",),
                    paths=("/",)))
    assert pick(t, host="example.com") == "host"
    assert pick(t, host="example.com", method="POST") == "host-method-path"
    t = table(route("host", hosts=("example.com",)),
              route("host-method", hosts=("example.com",), methods=("POST",)))
    assert pick(t, host="example.com", method="POST") == "host-method"


def test_equal_weight_tie_breakers():
    t = table(route("method", methods=("TRACE",)), route("host", hosts=("domain-2.org",)),
              route("uri", paths=("/my-route",)), route("wild", hosts=("domain.*",)))
    assert pick(t, "/", "domain-2.org", method="TRACE") == "host"      # plain host bit
    assert pick(t, "/my-route", "x.org", method="TRACE") == "uri"      # path length
    assert pick(t, "/", "domain.com", method="TRACE") == "wild"        # hosts rank > methods


def test_ties_broken_by_order():
    a = route("a", hosts=("example.com",), paths=("/x",), order=1)
    b = route("b", hosts=("example.com",), paths=("/y",), order=0)
    c = route("c", hosts=("example.com",), paths=("/x",), order=2)
    assert pick(table(a, b, c), "/x", "example.com") == "a"
    assert pick(table(c, b, a), "/x", "example.com") == "a"
    a2 = route("a2", hosts=("example.com",), paths=("/x",), order=3)
    assert pick(table(a2, c), "/x", "example.com") == "c"


def test_same_category_conflicting_values():
    routes = [route(f"r{i}", hosts=("domain.org",), paths=("/my-uri",)) for i in range(5)]
    routes.append(route("target", hosts=("domain.org",), paths=("/my-target-uri",)))
    assert pick(table(*routes), "/my-target-uri", "domain.org") == "target"


def test_invalid_regexes_are_config_errors():
    with pytest.raises(ConfigError) as err:
        table(route("bad", paths=("~/(unclosed",)),
              route("bad2", headers=(("x", ("~*[z-a]",)),)))
    assert len(err.value.issues) == 2
    assert "routes[bad].paths[0]" in str(err.value)


# ----------------------------------------------------------------------------- index & cache

def test_index_agrees_with_a_linear_scan():
    routes = [route(f"p{i}", paths=(f"/svc{i}", f"/alias{i}/x")) for i in range(60)]
    routes += [route(f"h{i}", hosts=(f"h{i % 5}.test",), paths=(f"/svc{i}",)) for i in range(30)]
    routes += [route("re", paths=(r"~/svc1\d",), regex_priority=1), route("root", paths=("/",)),
               route("w", hosts=("*.test",), paths=("/s",)),
               route("opt", paths=(r"~/alias3?x",), regex_priority=2),
               route("alt", paths=(r"~/nope|/alias4",), regex_priority=3),
               route("many", paths=(r"~/svc7$", r"~/sv\w")),
               route("hosted-re", hosts=("h1.test",), paths=(r"~/svc2\d+/z",))]
    indexed, flat = table(*routes), RouteTable(routes)
    assert len(indexed._any.indexes) > 3  # the index is really in use
    keyed = sorted((pair for r in routes for pair in _compile_route(r, [])), key=lambda p: p[0])
    for rank, (_, e) in enumerate(keyed):
        e.rank = rank
    flat._by_host = {}  # no index: every entry in one list, scanned in rank order
    flat._any = _Bucket([])
    flat._any.indexes = ((0, {"": tuple(e for _, e in keyed)}),)
    for host in ("h0.test", "h3.test", "x.test", "none"):
        for path in ("/svc1", "/svc12", "/svc12/z", "/svc7", "/alias3/x/y", "/alias3", "/s",
                     "/", "/sv", "/svc", "/svc7/", "/aliasx", "/alias3x", "/alias4/x", "/svc25/z"):
            assert pick(indexed, path, host) == pick(flat, path, host), (host, path)


def test_cache_never_grows_past_its_size():
    t = table(route("root", paths=("/",)), cache_size=16)
    for i in range(100):
        assert pick(t, f"/p{i}") == "root"
        assert t.cache_entries <= 16
    assert t.cache_entries > 0


def test_cache_serves_repeated_decisions():
    t = table(route("a", paths=("/a",)))
    first = t.match("GET", "h", "/a/1", {}, "http")
    assert t.cache_entries == 1
    assert t.match("GET", "h", "/a/1", {}, "http") is first
    assert t.match("GET", "h", "/nothing", {}, "http") is None
    assert t.cache_entries == 2


def test_cache_disabled_with_size_zero():
    t = table(route("a", paths=("/a",)), cache_size=0)
    assert pick(t, "/a") == "a" and t.cache_entries == 0


def test_cache_is_not_stale_when_headers_decide():
    t = table(route("hdr", paths=("/api",), headers=(("x-version", ("2",)),)),
              route("plain", paths=("/api",)))
    for _ in range(3):
        assert pick(t, "/api", headers={"x-version": "2"}) == "hdr"
        assert pick(t, "/api") == "plain"
        assert pick(t, "/api", headers={"x-version": "1"}) == "plain"
    assert t.cache_entries == 0


def test_cache_still_used_where_header_routes_are_not_candidates():
    t = table(route("hdr", paths=("/api",), headers=(("x-version", ("2",)),)),
              route("other", paths=("/other",)))
    assert pick(t, "/other") == "other"
    assert t.cache_entries == 1


# ----------------------------------------------------------------------------- upstream path

# service_path, route_path, strip_path, path_handling, request_path, expected (Kong's rows)
PATH_ROWS = [
    ("/", "/", (False, True), ("v0", "v1"), "/", "/"),
    ("/", "/", (False, True), ("v0", "v1"), "/route", "/route"),
    ("/", "/", (False, True), ("v0", "v1"), "/route/", "/route/"),
    ("/", "/", (False, True), ("v0", "v1"), "/routereq", "/routereq"),
    ("/", "/", (False, True), ("v0", "v1"), "/route/req", "/route/req"),
    ("/", "/route", False, ("v0", "v1"), "/route", "/route"),
    ("/", "/route", False, ("v0", "v1"), "/route/", "/route/"),
    ("/", "/route", False, ("v0", "v1"), "/routereq", "/routereq"),
    ("/", "/route", True, ("v0", "v1"), "/route", "/"),
    ("/", "/route", True, ("v0", "v1"), "/route/", "/"),
    ("/", "/route", True, ("v0", "v1"), "/routereq", "/req"),
    ("/", "/route/", False, ("v0", "v1"), "/route/", "/route/"),
    ("/", "/route/", False, ("v0", "v1"), "/route/req", "/route/req"),
    ("/", "/route/", True, ("v0", "v1"), "/route/", "/"),
    ("/", "/route/", True, ("v0", "v1"), "/route/req", "/req"),
    ("/srv", "/rou", False, "v0", "/roureq", "/srv/roureq"),
    ("/srv", "/rou", False, "v1", "/roureq", "/srvroureq"),
    ("/srv", "/rou", True, "v0", "/roureq", "/srv/req"),
    ("/srv", "/rou", True, "v1", "/roureq", "/srvreq"),
    ("/srv/", "/rou", False, ("v0", "v1"), "/rou", "/srv/rou"),
    ("/srv/", "/rou", True, "v0", "/rou", "/srv"),
    ("/srv/", "/rou", True, "v1", "/rou", "/srv/"),
    ("/service", "/", (False, True), ("v0", "v1"), "/", "/service"),
    ("/service", "/", (False, True), "v0", "/route", "/service/route"),
    ("/service", "/", (False, True), "v1", "/route", "/serviceroute"),
    ("/service", "/", (False, True), "v0", "/route/", "/service/route/"),
    ("/service", "/", (False, True), "v1", "/route/", "/serviceroute/"),
    ("/service", "/", (False, True), "v0", "/routereq", "/service/routereq"),
    ("/service", "/", (False, True), "v1", "/routereq", "/serviceroutereq"),
    ("/service", "/", (False, True), "v0", "/route/req", "/service/route/req"),
    ("/service", "/", (False, True), "v1", "/route/req", "/serviceroute/req"),
    ("/service", "/route", False, "v0", "/route", "/service/route"),
    ("/service", "/route", False, "v1", "/route", "/serviceroute"),
    ("/service", "/route", False, "v0", "/route/", "/service/route/"),
    ("/service", "/route", False, "v1", "/route/", "/serviceroute/"),
    ("/service", "/route", False, "v0", "/routereq", "/service/routereq"),
    ("/service", "/route", False, "v1", "/routereq", "/serviceroutereq"),
    ("/service", "/route", True, ("v0", "v1"), "/route", "/service"),
    ("/service", "/route", True, ("v0", "v1"), "/route/", "/service/"),
    ("/service", "/route", True, "v0", "/routereq", "/service/req"),
    ("/service", "/route", True, "v1", "/routereq", "/servicereq"),
    ("/service", "/route/", False, "v0", "/route/", "/service/route/"),
    ("/service", "/route/", False, "v1", "/route/", "/serviceroute/"),
    ("/service", "/route/", False, "v0", "/route/req", "/service/route/req"),
    ("/service", "/route/", False, "v1", "/route/req", "/serviceroute/req"),
    ("/service", "/route/", True, "v0", "/route/", "/service/"),
    ("/service", "/route/", True, "v1", "/route/", "/service"),
    ("/service", "/route/", True, "v0", "/route/req", "/service/req"),
    ("/service", "/route/", True, "v1", "/route/req", "/servicereq"),
    ("/service/", "/", (False, True), "v0", "/route/", "/service/route/"),
    ("/service/", "/", (False, True), "v1", "/route/", "/service/route/"),
    ("/service/", "/", (False, True), ("v0", "v1"), "/", "/service/"),
    ("/service/", "/", (False, True), ("v0", "v1"), "/route", "/service/route"),
    ("/service/", "/", (False, True), ("v0", "v1"), "/routereq", "/service/routereq"),
    ("/service/", "/", (False, True), ("v0", "v1"), "/route/req", "/service/route/req"),
    ("/service/", "/route", False, ("v0", "v1"), "/route", "/service/route"),
    ("/service/", "/route", False, ("v0", "v1"), "/route/", "/service/route/"),
    ("/service/", "/route", False, ("v0", "v1"), "/routereq", "/service/routereq"),
    ("/service/", "/route", True, "v0", "/route", "/service"),
    ("/service/", "/route", True, "v1", "/route", "/service/"),
    ("/service/", "/route", True, ("v0", "v1"), "/route/", "/service/"),
    ("/service/", "/route", True, ("v0", "v1"), "/routereq", "/service/req"),
    ("/service/", "/route/", False, ("v0", "v1"), "/route/", "/service/route/"),
    ("/service/", "/route/", False, ("v0", "v1"), "/route/req", "/service/route/req"),
    ("/service/", "/route/", True, ("v0", "v1"), "/route/", "/service/"),
    ("/service/", "/route/", True, ("v0", "v1"), "/route/req", "/service/req"),
    ("/", None, (False, True), ("v0", "v1"), "/", "/"),
    ("/", None, (False, True), ("v0", "v1"), "/route", "/route"),
    ("/", None, (False, True), ("v0", "v1"), "/route/", "/route/"),
    ("/service", None, (False, True), ("v0", "v1"), "/", "/service"),
    ("/service", None, (False, True), "v0", "/route", "/service/route"),
    ("/service", None, (False, True), "v1", "/route", "/serviceroute"),
    ("/service", None, (False, True), "v0", "/route/", "/service/route/"),
    ("/service", None, (False, True), "v1", "/route/", "/serviceroute/"),
    ("/service/", None, (False, True), ("v0", "v1"), "/", "/service/"),
    ("/service/", None, (False, True), ("v0", "v1"), "/route", "/service/route"),
    ("/service/", None, (False, True), ("v0", "v1"), "/route/", "/service/route/"),
    ("/service", "/route", True, "v0", "/route./req", "/service/req"),
    ("/service", "/route", True, "v1", "/route./req", "/servicereq"),
    ("/service/", "/route", True, ("v0", "v1"), "/route./req", "/service/req"),
    ("/service", "/route", True, "v0", "/route%2E/req", "/service/req"),
    ("/service", "/route", True, "v1", "/route%2E/req", "/servicereq"),
    ("/service/", "/route", True, ("v0", "v1"), "/route%2E/req", "/service/req"),
    ("/service", "/route", True, "v0", "/route%2e/req", "/service/req"),
    ("/service", "/route", True, "v1", "/route%2e/req", "/servicereq"),
    ("/service/", "/route", True, ("v0", "v1"), "/route%2e/req", "/service/req"),
    ("/service", "/route", True, "v0", "/route../req", "/service/req"),
    ("/service", "/route", True, "v1", "/route../req", "/servicereq"),
    ("/service/", "/route", True, ("v0", "v1"), "/route../req", "/service/req"),
    ("/service", "/route", True, "v0", "/route%2E%2E/req", "/service/req"),
    ("/service", "/route", True, "v1", "/route%2E%2E/req", "/servicereq"),
    ("/service/", "/route", True, ("v0", "v1"), "/route%2E%2E/req", "/service/req"),
    ("/service", "/route", True, "v0", "/route%2e%2E/req", "/service/req"),
    ("/service", "/route", True, "v1", "/route%2e%2E/req", "/servicereq"),
    ("/service/", "/route", True, ("v0", "v1"), "/route%2e%2E/req", "/service/req"),
    ("/service", "/route", False, "v0", "/route./req", "/service/route./req"),
    ("/service", "/route", False, "v1", "/route./req", "/serviceroute./req"),
    ("/service/", "/route", False, ("v0", "v1"), "/route./req", "/service/route./req"),
    ("/service", "/route", False, "v0", "/route%2E/req", "/service/route./req"),
    ("/service", "/route", False, "v1", "/route%2E/req", "/serviceroute./req"),
    ("/service/", "/route", False, ("v0", "v1"), "/route%2E/req", "/service/route./req"),
    ("/service", "/route", False, "v0", "/route%2e/req", "/service/route./req"),
    ("/service", "/route", False, "v1", "/route%2e/req", "/serviceroute./req"),
    ("/service/", "/route", False, ("v0", "v1"), "/route%2e/req", "/service/route./req"),
    ("/service", "/route", False, "v0", "/route../req", "/service/route../req"),
    ("/service", "/route", False, "v1", "/route../req", "/serviceroute../req"),
    ("/service/", "/route", False, ("v0", "v1"), "/route../req", "/service/route../req"),
    ("/service", "/route", False, "v0", "/route%2E%2E/req", "/service/route../req"),
    ("/service", "/route", False, "v1", "/route%2E%2E/req", "/serviceroute../req"),
    ("/service/", "/route", False, ("v0", "v1"), "/route%2E%2E/req", "/service/route../req"),
    ("/service", "/route", False, "v0", "/route%2e%2E/req", "/service/route../req"),
    ("/service", "/route", False, "v1", "/route%2e%2E/req", "/serviceroute../req"),
    ("/service/", "/route", False, ("v0", "v1"), "/route%2e%2E/req", "/service/route../req"),
]


def _expand(rows):
    for n, (svc, rpath, strip, handling, req, expected) in enumerate(rows, 1):
        for s in strip if isinstance(strip, tuple) else (strip,):
            for h in handling if isinstance(handling, tuple) else (handling,):
                yield pytest.param(svc, rpath, s, h, req, expected, id=f"row{n}-{s}-{h}-{req}")


PATH_CASES = list(_expand(PATH_ROWS))


def test_path_table_is_complete():
    assert len(PATH_ROWS) == 113 and len(PATH_CASES) == 212


@pytest.mark.parametrize("service_path, route_path, strip, handling, req, expected",
                         PATH_CASES)
def test_upstream_path_prefix_routes(service_path, route_path, strip, handling, req, expected):
    fields = {"paths": (route_path,)} if route_path else {"hosts": ("localbin.test",)}
    t = table(route("r", strip_path=strip, path_handling=handling, **fields))
    path = normalize_path(req)
    m = t.match("GET", "localbin.test", path, {}, "http")
    assert m is not None
    assert upstream_path(m, service_path, path) == expected


@pytest.mark.parametrize("service_path, route_path, strip, handling, req, expected",
                         [c for c in PATH_CASES if c.values[1] is not None])
def test_upstream_path_regex_routes(service_path, route_path, strip, handling, req, expected):
    # Kong's variant: the same path turned into a regex that matches the same text
    t = table(route("r", strip_path=strip, path_handling=handling,
                    paths=("~/[0]?" + route_path[1:],)))
    path = normalize_path(req)
    m = t.match("GET", "localbin.test", path, {}, "http")
    assert upstream_path(m, service_path, path) == expected


@pytest.mark.parametrize("paths, req, expected", [
    (("/my-route", "/xx-route"), "/my-route/hello/world", "/hello/world"),
    (("/my-route", "/xx-route"), "/xx-route", "/"),
    ((r"~/users/\d+/profile",), "/users/123/profile/hello/world", "/hello/world"),
    ((r"~/users/(\d+)/profile",), "/users/123/profile/hello/world", "/hello/world"),
    (("/endel%2Fst",), "/endel%2Fst", "/"),
    (("/",), "/my-route/hello/world", "/my-route/hello/world"),
])
def test_strip_path_examples(paths, req, expected):
    m = table(route("r", paths=paths)).match("GET", None, req, {}, "http")
    assert upstream_path(m, None, req) == expected


def test_service_path_none_means_root():
    m = table(route("r", paths=("/a",), strip_path=False)).match("GET", None, "/a/b", {}, "http")
    assert upstream_path(m, None, "/a/b") == "/a/b"
