"""acl, ip-restriction, bot-detection, cors, request-size-limiting, request-termination and
correlation-id: each plugin's logic on requests built in memory (CIDR matching, group
rules, origin matching, size units, the echo document, identifier generators)."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import os
import random
import re
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from guichet.config.model import Acl as AclEntry, Config, Consumer, Route, Service
from guichet.config.pcre import compile_pcre
from guichet.plugins.api import ErrorResponse, Response
from guichet.plugins.bundled import correlation_id as correlation_module
from guichet.plugins.bundled.acl import Acl
from guichet.plugins.bundled.bot_detection import (
    BAD_BOT_RULES,
    BOT,
    PASS,
    REGEX_FLAGS,
    BotDetection,
    examine_user_agent,
)
from guichet.plugins.bundled.correlation_id import CorrelationId, WorkerSequence, uuid4
from guichet.plugins.bundled.cors import Cors, normalize_origin
from guichet.plugins.bundled.ip_restriction import (
    AddressRanges,
    IpRestriction,
    parse_client_address,
    parse_ip_or_cidr,
)
from guichet.plugins.bundled.request_size_limiting import RequestSizeLimiting, allowed_bytes
from guichet.plugins.bundled.request_termination import (
    RequestTermination,
    parse_body,
    query_table,
)
from guichet.plugins.consumers import ConsumerDirectory
from guichet.plugins.env import BuildEnv
from guichet.plugins.request import Request, ResponseHead
from guichet.plugins.stores import Stores

ALICE = Consumer(id="c-alice", username="alice")
BOB = Consumer(id="c-bob", username="bob")
NOBODY = Consumer(id="c-nobody", username="nobody")  # no groups
ROUTE = Route(id="r-1", name="orders", service_id="s-1", paths=("/orders",),
              headers=(("x-version", ("1", "2")),))
SERVICE = Service(id="s-1", name="orders-svc", host="orders.internal", port=8080)


def make_env() -> BuildEnv:
    config = Config(consumers=(ALICE, BOB, NOBODY),
                    acls=(AclEntry(id="a1", consumer_id="c-alice", group="admins"),
                          AclEntry(id="a2", consumer_id="c-alice", group="staff"),
                          AclEntry(id="a3", consumer_id="c-bob", group="guests")))
    return BuildEnv(ConsumerDirectory(config), None, Stores())


class FakeExchange:
    """The part of the server's Exchange that Request reads."""

    _lazy_headers = None  # Request reads it before scanning the headers

    def __init__(self, method: str, target: str, headers: list[tuple[str, str]],
                 body: bytes, client_ip: str, chunked: bool) -> None:
        self.method = method.encode()
        path, _, query = target.partition("?")
        self.raw_path = self.path = path
        self.query = query
        self.headers = [(n.lower().encode("latin-1"), n.encode("latin-1"), v.encode("latin-1"))
                        for n, v in headers]
        self.has_body = bool(body) or chunked
        self.content_length = None if chunked or not body else len(body)
        self.body_complete = True
        self.body_pending = [body] if body else None
        self.body_received = len(body)
        self.client_ip = client_ip
        self.client = SimpleNamespace(scheme="http", peer_ip=client_ip)
        self.match = SimpleNamespace(route=ROUTE, uri_captures={"id": "42"})
        self.service = SimpleNamespace(service=SERVICE)
        self.host = dict((n.lower(), v) for n, v in headers).get("host", "").encode()

    def lazy_headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for lname, _, value in self.headers:
            key = lname.decode()
            out[key] = out[key] + ", " + value.decode() if key in out else value.decode()
        return out

    def rid(self) -> str:
        return "rid-1"


def make_request(target: str = "/", headers: list[tuple[str, str]] | None = None,
                 method: str = "GET", body: bytes = b"", client_ip: str = "127.0.0.1",
                 chunked: bool = False) -> Request:
    ex = FakeExchange(method, target, headers or [], body, client_ip, chunked)
    return Request(ex)  # type: ignore[arg-type]


def build(cls: Any, **conf: Any) -> Any:
    return cls(cls.Config.model_validate(conf), make_env())


def run(plugin: Any, req: Request) -> Any:
    """Call the access hook; wait for it when it returned an awaitable."""
    result = plugin.access(req)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def upstream_headers(req: Request) -> dict[str, str | None]:
    return {name: (values[-1][1] if values else None) for name, values in (req.edits or {}).items()}


def refused(result: Any) -> tuple[int, str]:
    assert isinstance(result, ErrorResponse), result
    return result.status, result.message


def test_priorities_and_names_are_kongs():
    assert [(c.name, c.priority) for c in (CorrelationId, BotDetection, Cors, IpRestriction,
                                           RequestSizeLimiting, Acl, RequestTermination)] == [
        ("correlation-id", 100001), ("bot-detection", 2500), ("cors", 2000),
        ("ip-restriction", 990), ("request-size-limiting", 951), ("acl", 950),
        ("request-termination", 2)]
    assert Acl.no_consumer and Cors.no_consumer and BotDetection.no_consumer
    assert not IpRestriction.no_consumer


# ======================================================================== ip-restriction
@pytest.mark.parametrize("entry", ["10.0.0.1", "10.0.0.0/8", "10.1.2.3/8", "::1", "2001:db8::/32",
                                   "0.0.0.0/0", "::/0", "fe80::1/128"])
def test_ip_or_cidr_accepted(entry):
    assert isinstance(parse_ip_or_cidr(entry), (ipaddress.IPv4Network, ipaddress.IPv6Network))


@pytest.mark.parametrize("entry", ["10.0.0.256", "10.0.0.0/33", "::1/129", "example.com",
                                   "10.0.0.0/255.0.0.0", "10.0.0.0/", "", "1.2.3.4/-1"])
def test_ip_or_cidr_refused_at_load(entry):
    with pytest.raises(ValidationError, match="invalid ip or cidr range"):
        IpRestriction.Config.model_validate({"allow": ["10.0.0.0/8", entry]})


def test_ip_restriction_needs_a_list_and_a_sane_status():
    for conf in ({}, {"allow": [], "deny": []}, {"allow": ["1.2.3.4"], "status": 99},
                 {"allow": ["1.2.3.4"], "status": "403"}, {"allow": ["1.2.3.4"], "bogus": 1}):
        with pytest.raises(ValidationError):
            IpRestriction.Config.model_validate(conf)


def test_address_ranges_match_both_families_at_the_edges():
    ranges = AddressRanges([parse_ip_or_cidr(e) for e in
                            ("10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "10.5.0.0/16")])
    yes = ["10.0.0.0", "10.255.255.255", "10.5.1.1", "192.168.1.7", "2001:db8::", "2001:db8:ffff::1"]
    no = ["9.255.255.255", "11.0.0.0", "192.168.1.6", "192.168.1.8", "2001:db9::", "::1"]
    for text in yes:
        assert ranges.contains(ipaddress.ip_address(text)), text
    for text in no:
        assert not ranges.contains(ipaddress.ip_address(text)), text


def test_address_ranges_agree_with_ipaddress_on_random_addresses():
    rng = random.Random(7)
    nets = [ipaddress.IPv4Network((rng.randrange(1 << 32), rng.randrange(4, 33)), strict=False)
            for _ in range(40)]
    ranges = AddressRanges(list(nets))
    for _ in range(3000):
        addr = ipaddress.IPv4Address(rng.randrange(1 << 32))
        assert ranges.contains(addr) == any(addr in n for n in nets)


def test_client_address_forms():
    assert parse_client_address("::ffff:10.1.2.3") == ipaddress.IPv4Address("10.1.2.3")
    assert parse_client_address("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")
    assert parse_client_address("[::1]") == ipaddress.IPv6Address("::1")
    assert parse_client_address("unix:/tmp/sock") is None
    assert parse_client_address("") is None


def test_ip_restriction_deny_wins_over_allow_and_message_names_the_address():
    plugin = build(IpRestriction, allow=["10.0.0.0/8"], deny=["10.0.0.5"])
    assert run(plugin, make_request(client_ip="10.0.0.4")) is None
    assert refused(run(plugin, make_request(client_ip="10.0.0.5"))) == \
        (403, "IP address not allowed: 10.0.0.5")
    assert refused(run(plugin, make_request(client_ip="11.0.0.1"))) == \
        (403, "IP address not allowed: 11.0.0.1")


def test_ip_restriction_ipv6_and_mapped_ipv4():
    plugin = build(IpRestriction, deny=["2001:db8::/48", "192.0.2.0/24"], status=401,
                   message="go away")
    assert refused(run(plugin, make_request(client_ip="2001:db8:0:1::9"))) == (401, "go away")
    assert run(plugin, make_request(client_ip="2001:db8:1::9")) is None
    # the mapped form of a denied IPv4 address is denied too
    assert refused(run(plugin, make_request(client_ip="::ffff:192.0.2.10"))) == (401, "go away")
    assert run(plugin, make_request(client_ip="::1")) is None


def test_ip_restriction_unidentified_client_is_refused():
    plugin = build(IpRestriction, deny=["10.0.0.0/8"])
    status, message = refused(run(plugin, make_request(client_ip="")))
    assert status == 403 and message.startswith("Cannot identify the client IP address")


def test_ip_restriction_verdict_cache_is_bounded_and_consistent():
    plugin = build(IpRestriction, allow=["10.0.0.0/8"])
    for i in range(10_000):
        plugin.refuses(f"10.{i >> 8 & 255}.{i & 255}.1")
    assert len(plugin._verdicts) <= 4096
    assert plugin.refuses("10.9.9.9") is False and plugin.refuses("10.9.9.9") is False
    assert plugin.refuses("12.0.0.1") is True and plugin.refuses("12.0.0.1") is True


def test_ip_restriction_cached_check_is_cheap():
    plugin = build(IpRestriction, allow=[f"10.{i}.0.0/16" for i in range(200)] + ["2001:db8::/32"])
    req = make_request(client_ip="10.150.3.4")
    run(plugin, req)
    start = time.perf_counter()
    for _ in range(20_000):
        plugin.access(req)
    per_call = (time.perf_counter() - start) / 20_000
    assert per_call < 20e-6, per_call


# ======================================================================== acl
def authenticate(req: Request, consumer: Consumer | None, credential: bool = True) -> Request:
    req.set_consumer(consumer, SimpleNamespace(id="cred", consumer_id=consumer.id)
                     if credential and consumer else None, "cred" if credential else None)
    return req


def test_acl_config_exactly_one_list():
    for conf in ({}, {"allow": []}, {"allow": ["a"], "deny": ["b"]}, {"allow": "a"}):
        with pytest.raises(ValidationError):
            Acl.Config.model_validate(conf)
    conf = Acl.Config.model_validate({"deny": ["x"]})
    assert (conf.hide_groups_header, conf.always_use_authenticated_groups) == (False, False)


def test_acl_allow():
    plugin = build(Acl, allow=["admins", "ops"])
    req = authenticate(make_request(), ALICE)
    assert run(plugin, req) is None
    assert upstream_headers(req)["x-consumer-groups"] == "admins, staff"
    assert refused(run(plugin, authenticate(make_request(), BOB))) == \
        (403, "You cannot consume this service")
    # a consumer with no groups: 403 when authenticated, 401 as the anonymous consumer
    assert refused(run(plugin, authenticate(make_request(), NOBODY))) == \
        (403, "You cannot consume this service")
    assert refused(run(plugin, authenticate(make_request(), NOBODY, credential=False))) == \
        (401, "Unauthorized")
    # nobody identified
    assert refused(run(plugin, make_request())) == (401, "Unauthorized")


def test_acl_deny_and_hidden_header():
    plugin = build(Acl, deny=["guests"], hide_groups_header=True)
    req = authenticate(make_request(), ALICE)
    assert run(plugin, req) is None
    assert "x-consumer-groups" not in upstream_headers(req)
    assert refused(run(plugin, authenticate(make_request(), BOB)))[0] == 403
    # no groups cannot be in a denied one
    assert run(plugin, authenticate(make_request(), NOBODY)) is None


def test_acl_verdict_is_remembered_per_consumer():
    plugin = build(Acl, allow=["admins"])
    for _ in range(3):
        req = authenticate(make_request(), ALICE)
        assert run(plugin, req) is None
        assert upstream_headers(req)["x-consumer-groups"] == "admins, staff"
        assert refused(run(plugin, authenticate(make_request(), BOB)))[0] == 403


def test_acl_authenticated_groups_from_ctx():
    plugin = build(Acl, allow=["ldap-admins"])
    req = make_request()
    req.ctx["authenticated_groups"] = ["ldap-admins", "x"]
    assert run(plugin, req) is None
    assert upstream_headers(req)["x-authenticated-groups"] == "ldap-admins, x"
    req = make_request()
    req.ctx["authenticated_groups"] = ["nope"]
    assert refused(run(plugin, req))[0] == 403
    # an authenticated consumer's own groups win unless always_use_authenticated_groups
    req = authenticate(make_request(), BOB)
    req.ctx["authenticated_groups"] = ["ldap-admins"]
    assert refused(run(plugin, req))[0] == 403
    always = build(Acl, allow=["ldap-admins"], always_use_authenticated_groups=True)
    req = authenticate(make_request(), BOB)
    req.ctx["authenticated_groups"] = ["ldap-admins"]
    assert run(always, req) is None


# ======================================================================== bot-detection
BROWSER = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_5) AppleWebKit/537.36 "
           "(KHTML, like Gecko) Chrome/50.0.2661.102 Safari/537.36")


@pytest.mark.parametrize("ua,verdict", [
    (BROWSER, PASS), ("curl/7.43.0", PASS), ("HelloWorld", PASS),
    ("Googlebot/2.1 (+http://www.google.com/bot.html)", BOT),
    ("facebookexternalhit/1.1", BOT), ("Python-urllib/3.11", BOT), ("Scrapy/2.11", BOT),
    ("Mozilla/5.0 (compatible; bingbot/2.0)", BOT), ("MyCrawler", BOT),
    ("Some Spider 1.0", BOT), ("  Twitterbot/1.0  ", BOT),
])
def test_bad_bot_rules(ua, verdict):
    assert examine_user_agent(ua, (), ()) == verdict


def test_bot_rule_witnesses_agree_with_kongs_rules():
    """The shortened forms of the last three rules match exactly where the originals do."""
    originals = tuple(compile_pcre(r, REGEX_FLAGS) for r in BAD_BOT_RULES)
    rng = random.Random(3)
    words = ["bot", "Bot", "spider", "SPIDER", "Crawler", "crawl", "scrape", "Scraper", "indexer",
             "Archiver", "/", " ", "1", "2.0", "x", "v3", "the", "-", "ab", "Q"]
    corpus = [BROWSER, "curl/7.43.0", "a b", ""]
    corpus += ["".join(rng.choice(words) for _ in range(rng.randrange(1, 8))) for _ in range(4000)]
    for ua in corpus:
        assert examine_user_agent(ua, (), (), originals) == examine_user_agent(ua, (), ()), ua


def test_bot_detection_allow_then_deny_then_rules():
    plugin = build(BotDetection, allow=["^facebookexternalhit"], deny=["HelloWorld", "(?i)evil"])
    ok = make_request(headers=[("User-Agent", "facebookexternalhit/1.1")])
    assert run(plugin, ok) is None
    assert refused(run(plugin, make_request(headers=[("User-Agent", "HelloWorld")]))) == \
        (403, "Forbidden")
    assert refused(run(plugin, make_request(headers=[("User-Agent", "EVIL agent")])))[0] == 403
    assert refused(run(plugin, make_request(headers=[("User-Agent", "Googlebot/2.1")])))[0] == 403
    assert run(plugin, make_request(headers=[("User-Agent", BROWSER)])) is None
    assert run(plugin, make_request()) is None  # no User-Agent
    two = make_request(headers=[("User-Agent", "a"), ("User-Agent", "b")])
    assert refused(run(plugin, two)) == (400, "Only one User-Agent header allowed")


def test_bot_detection_config():
    assert BotDetection.Config.model_validate({}).allow == []
    with pytest.raises(ValidationError, match="not a valid regex"):
        BotDetection.Config.model_validate({"deny": ["(unclosed"]})


def test_bot_detection_worst_case_user_agent_is_bounded():
    """A 32 KiB User-Agent (the header-size limit) costs milliseconds, not a second."""
    for ua in ("a" * 32768, "Ab/" * 10000, "spider " * 4000):
        start = time.perf_counter()
        examine_user_agent(ua, (), ())
        assert time.perf_counter() - start < 0.05


# ======================================================================== cors
def preflight(origin: str = "http://a.example", **extra: str) -> Request:
    headers = [("Origin", origin), ("Access-Control-Request-Method", "POST")]
    headers += [(k.replace("_", "-"), v) for k, v in extra.items()]
    return make_request(method="OPTIONS", headers=headers)


def response_after(plugin: Cors, req: Request, headers: list[tuple[str, str]] | None = None,
                   ) -> ResponseHead:
    head = ResponseHead(200, list(headers or []))
    plugin.response_headers(req, head)
    return head


@pytest.mark.parametrize("value,domain,host", [
    ("http://a.example", "http://a.example", "a.example"),
    ("http://a.example:80", "http://a.example", "a.example"),
    ("https://a.example:443/path", "https://a.example", "a.example"),
    ("https://a.example:8443", "https://a.example:8443", "a.example"),
    ("http://user@a.example:81", "http://a.example:81", "a.example"),
    ("http://[::1]:8080", "http://[::1]:8080", "[::1]"),
    ("null", "null", "null"),
    ("a.example", "a.example", "a.example"),
])
def test_normalize_origin(value, domain, host):
    assert tuple(normalize_origin(value)) == (domain, host)


def test_cors_config():
    conf = Cors.Config.model_validate({})
    assert conf.methods == ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS",
                            "TRACE", "CONNECT"]
    assert (conf.credentials, conf.preflight_continue, conf.private_network,
            conf.allow_origin_absent, conf.max_age) == (False, False, False, True, None)
    for bad in ({"methods": ["FETCH"]}, {"origins": ["(bad"]}, {"max_age": "10"},
                {"headers": ["X-A\r\nSet-Cookie: a=b"]}, {"exposed_headers": ["\x00"]}):
        with pytest.raises(ValidationError):
            Cors.Config.model_validate(bad)


def test_cors_preflight_answer():
    plugin = build(Cors, origins=["http://a.example"], headers=["X-One", "X-Two"],
                   methods=["GET", "POST"], max_age=3600, credentials=True,
                   private_network=True)
    req = preflight(Access_Control_Request_Private_Network="true")
    result = run(plugin, req)
    assert isinstance(result, Response) and result.status == 200 and result.body == b""
    assert dict(result.headers) == {
        "Access-Control-Allow-Origin": "http://a.example",
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
        "Access-Control-Allow-Headers": "X-One,X-Two",
        "Access-Control-Allow-Methods": "GET,POST",
        "Access-Control-Max-Age": "3600",
        "Access-Control-Allow-Private-Network": "true",
    }
    # the answer gets no second set of headers in response_headers
    head = response_after(plugin, req)
    assert head.headers == []


def test_cors_preflight_echoes_requested_headers_and_defaults():
    plugin = build(Cors)
    result = run(plugin, preflight(Access_Control_Request_Headers="x-a, x-b"))
    headers = dict(result.headers)
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Headers"] == "x-a, x-b"
    assert headers["Access-Control-Allow-Methods"] == \
        "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
    assert "Vary" not in headers and "Access-Control-Max-Age" not in headers
    assert "Access-Control-Allow-Private-Network" not in headers


def test_cors_not_a_preflight_or_continued():
    plugin = build(Cors)
    assert run(plugin, make_request(method="OPTIONS", headers=[("Origin", "http://x")])) is None
    assert run(plugin, make_request(method="GET", headers=[
        ("Origin", "http://x"), ("Access-Control-Request-Method", "GET")])) is None
    cont = build(Cors, preflight_continue=True)
    req = preflight()
    assert run(cont, req) is None
    assert response_after(cont, req, [("Access-Control-Allow-Origin", "up")]).headers == \
        [("Access-Control-Allow-Origin", "up")]


def test_cors_regex_origins_by_host_and_by_origin():
    plugin = build(Cors, origins=[r"(.*\.)?example\.com", r"https://api\.other\.org:\d+",
                                  "http://exact.test:8080"])

    def allowed(origin: str) -> str | None:
        return response_after(plugin, make_request(headers=[("Origin", origin)])).get(
            "Access-Control-Allow-Origin")

    assert allowed("https://www.example.com") == "https://www.example.com"
    assert allowed("http://example.com:8000") == "http://example.com:8000"
    assert allowed("https://example.com.evil.net") is None
    assert allowed("https://evilexample.com") is None
    assert allowed("https://api.other.org:9443") == "https://api.other.org:9443"
    assert allowed("https://api.other.org") is None
    assert allowed("http://exact.test:8080") == "http://exact.test:8080"
    assert allowed("http://exact.test") is None
    head = response_after(plugin, make_request(headers=[("Origin", "https://nope.net")]))
    assert head.get("Vary") == "Origin"


def test_cors_alternation_is_anchored_as_a_whole():
    plugin = build(Cors, origins=[r"a\.com|b\.com", r"(?i)https://UPPER\.test"])
    head = response_after(plugin, make_request(headers=[("Origin", "https://upper.test")]))
    assert head.get("Access-Control-Allow-Origin") == "https://upper.test"
    head = response_after(plugin, make_request(headers=[("Origin", "http://a.com.evil.net")]))
    assert head.get("Access-Control-Allow-Origin") is None
    head = response_after(plugin, make_request(headers=[("Origin", "http://b.com")]))
    assert head.get("Access-Control-Allow-Origin") == "http://b.com"


def test_cors_single_plain_origin_is_sent_as_is():
    plugin = build(Cors, origins=["http://only.example"], exposed_headers=["X-A", "X-B"])
    head = response_after(plugin, make_request(headers=[("Origin", "http://other")]),
                          [("Vary", "Accept-Encoding"), ("Access-Control-Allow-Origin", "*")])
    assert head.get("Access-Control-Allow-Origin") == "http://only.example"
    assert head.get_all("Vary") == ["Accept-Encoding", "Origin"]
    assert head.get("Access-Control-Expose-Headers") == "X-A,X-B"
    head = response_after(plugin, make_request(headers=[("Origin", "http://x")]),
                          [("Vary", "origin, accept")])
    assert head.get_all("Vary") == ["origin, accept"]  # not twice


def test_cors_credentials_with_wildcard_names_the_origin():
    plugin = build(Cors, credentials=True)
    head = response_after(plugin, make_request(headers=[("Origin", "http://c.example")]))
    assert head.get("Access-Control-Allow-Origin") == "http://c.example"
    assert head.get("Access-Control-Allow-Credentials") == "true"
    assert head.get("Vary") == "Origin"
    head = response_after(plugin, make_request())
    assert head.get("Access-Control-Allow-Origin") == "*"
    assert head.get("Access-Control-Allow-Credentials") is None


def test_cors_no_origin():
    plugin = build(Cors, origins=[r".*\.example"])
    head = response_after(plugin, make_request(), [("Access-Control-Allow-Origin", "up")])
    assert head.get("Access-Control-Allow-Origin") is None  # cleared
    silent = build(Cors, allow_origin_absent=False)
    assert response_after(silent, make_request()).headers == []


def test_cors_star_among_others():
    plugin = build(Cors, origins=["http://a.example", "*"])
    head = response_after(plugin, make_request(headers=[("Origin", "http://z.example")]))
    assert head.get("Access-Control-Allow-Origin") == "*"


# ======================================================================== request-size-limiting
def test_size_units():
    assert allowed_bytes(128, "megabytes") == 128 * 1048576
    assert allowed_bytes(3, "kilobytes") == 3072
    assert allowed_bytes(10, "bytes") == 10
    conf = RequestSizeLimiting.Config.model_validate({})
    assert (conf.allowed_payload_size, conf.size_unit, conf.require_content_length) == \
        (128, "megabytes", False)
    with pytest.raises(ValidationError):
        RequestSizeLimiting.Config.model_validate({"size_unit": "gigabytes"})


def test_request_size_by_content_length():
    plugin = build(RequestSizeLimiting, allowed_payload_size=10, size_unit="bytes")
    assert plugin.access(make_request(method="POST", body=b"x" * 10)) is None
    assert refused(plugin.access(make_request(method="POST", body=b"x" * 11))) == \
        (413, "Request size limit exceeded")
    expect = make_request(method="POST", body=b"x" * 11, headers=[("Expect", " 100-Continue ")])
    assert refused(plugin.access(expect)) == (417, "Request size limit exceeded")
    assert plugin.access(make_request()) is None


def test_request_size_chunked_is_counted():
    plugin = build(RequestSizeLimiting, allowed_payload_size=1, size_unit="kilobytes")
    small = make_request(method="POST", body=b"x" * 1024, chunked=True,
                         headers=[("Transfer-Encoding", "chunked")])
    assert run(plugin, small) is None
    big = make_request(method="POST", body=b"x" * 1025, chunked=True,
                       headers=[("Transfer-Encoding", "chunked")])
    assert refused(run(plugin, big)) == (413, "Request size limit exceeded")


def test_request_size_chunked_hold_is_capped_by_the_buffer_setting():
    env = make_env()
    env.settings = SimpleNamespace(client_body_buffer_size=4096)
    plugin = RequestSizeLimiting(RequestSizeLimiting.Config.model_validate({}), env)
    assert plugin.limit == 128 << 20 and plugin.hold_limit == 4096


def test_request_size_require_content_length():
    plugin = build(RequestSizeLimiting, require_content_length=True)
    assert refused(plugin.access(make_request(method="POST"))) == \
        (411, "A valid Content-Length header is required")
    chunked = make_request(method="POST", body=b"abc", chunked=True,
                           headers=[("Transfer-Encoding", "chunked")])
    assert run(plugin, chunked) is None


# ======================================================================== request-termination
def test_request_termination_config_rules():
    conf = RequestTermination.Config.model_validate({})
    assert (conf.status_code, conf.echo, conf.message, conf.trigger) == (503, False, None, None)
    for bad, text in (({"message": "m", "body": "b"}, "message cannot be used"),
                      ({"content_type": "text/html"}, "content_type requires a body"),
                      ({"echo": True, "body": "b"}, "echo cannot be used"),
                      ({"status_code": 600}, "less than or equal"),
                      ({"trigger": "bad header"}, "bad header name"),
                      ({"body": "b", "content_type": "text/html\nX: y"}, "control characters")):
        with pytest.raises(ValidationError, match=text):
            RequestTermination.Config.model_validate(bad)


def test_request_termination_answers():
    assert refused(run(build(RequestTermination), make_request())) == (503, "Service unavailable")
    assert refused(run(build(RequestTermination, status_code=404), make_request())) == \
        (404, "Not found")
    assert refused(run(build(RequestTermination, status_code=418, message="teapot"),
                       make_request())) == (418, "teapot")
    for status in (204, 304):
        empty = run(build(RequestTermination, status_code=status, message="m"), make_request())
        assert type(empty) is Response and (empty.status, empty.body) == (status, b"")
    plain = run(build(RequestTermination, status_code=418), make_request())
    assert type(plain) is Response and plain.status == 418 and plain.body == b""
    raw = run(build(RequestTermination, status_code=200, body="<h1>hi</h1>",
                    content_type="text/html"), make_request())
    assert (raw.status, raw.body, raw.content_type) == (200, b"<h1>hi</h1>", "text/html")


def test_request_termination_trigger():
    plugin = build(RequestTermination, trigger="X-Stop")
    assert run(plugin, make_request()) is None
    assert refused(run(plugin, make_request(headers=[("x-stop", "")])))[0] == 503
    assert refused(run(plugin, make_request("/?X-Stop")))[0] == 503
    assert run(plugin, make_request("/?x-stop=1")) is None  # query names are exact


def test_request_termination_echo_document():
    plugin = build(RequestTermination, status_code=200, echo=True)
    req = make_request("/orders/42?a=1&a=2&flag&e=", method="POST", body=b'{"k": [1, 2]}',
                       headers=[("Host", "api.test:8000"), ("Content-Type", "application/json"),
                                ("X-Twice", "1"), ("X-Twice", "2")])
    result = run(plugin, req)
    assert isinstance(result, Response) and result.status == 200
    doc = orjson.loads(result.body)
    assert doc["message"] is None
    assert doc["kong"]["worker_pid"] == os.getpid() and doc["kong"]["node_id"]
    request = doc["request"]
    assert (request["scheme"], request["host"], request["port"], request["method"],
            request["path"]) == ("http", "api.test", 8000, "POST", "/orders/42")
    assert request["query"] == {"a": ["1", "2"], "flag": True, "e": ""}
    assert request["headers"]["x-twice"] == ["1", "2"]
    assert request["body"] == {"k": [1, 2]} and request["raw_body"] == '{"k": [1, 2]}'
    assert request["uri_captures"] == {"id": "42"}
    assert doc["matched_route"]["id"] == "r-1"
    assert doc["matched_route"]["headers"] == {"x-version": ["1", "2"]}
    assert doc["matched_route"]["service"] == {"id": "s-1"}
    assert doc["matched_service"]["host"] == "orders.internal"


def test_echo_helpers():
    assert query_table("a=1&b=%20x+y&c&a=3&&") == {"a": ["1", "3"], "b": " x y", "c": True}
    assert parse_body("application/x-www-form-urlencoded; charset=utf-8", b"x=1&y=2&y=3") == \
        {"x": "1", "y": ["2", "3"]}
    assert parse_body("application/json", b"{not json") is None
    assert parse_body("text/plain", b"hello") is None


# ======================================================================== correlation-id
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_uuid4_shape_and_uniqueness():
    values = {uuid4() for _ in range(5000)}
    assert len(values) == 5000
    assert all(UUID4.fullmatch(v) for v in values)


def test_worker_sequence_counts_and_resets():
    seq = WorkerSequence()
    first, second = seq.next(), seq.next()
    prefix = first[:-2]
    assert UUID4.fullmatch(prefix) and first == prefix + "#1" and second == prefix + "#2"
    seq.reset()
    assert seq.next().endswith("#1") and not seq.next().startswith(prefix)


def test_correlation_id_forked_worker_gets_its_own_sequence():
    parent = correlation_module.WORKER_SEQUENCE.prefix
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(write, correlation_module.WORKER_SEQUENCE.next().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    os.close(read)
    assert child.endswith("#1") and not child.startswith(parent)


def test_correlation_id_config():
    conf = CorrelationId.Config.model_validate({})
    assert (conf.header_name, conf.generator, conf.echo_downstream) == \
        ("Kong-Request-ID", "uuid#counter", False)
    for bad in ({"generator": "ulid"}, {"header_name": "bad name"},
                {"header_name": "Content-Length"}, {"header_name": ""}):
        with pytest.raises(ValidationError):
            CorrelationId.Config.model_validate(bad)


def test_correlation_id_sets_keeps_and_echoes():
    plugin = build(CorrelationId, generator="uuid", echo_downstream=True)
    req = make_request()
    assert plugin.access(req) is None
    value = upstream_headers(req)["kong-request-id"]
    assert UUID4.fullmatch(value) and req.ctx["correlation_id"] == value
    head = ResponseHead(200, [])
    plugin.response_headers(req, head)
    assert head.get("Kong-Request-ID") == value
    # a client-sent value is kept and not rewritten
    req = make_request(headers=[("kong-request-id", "client-1")])
    plugin.access(req)
    assert "kong-request-id" not in upstream_headers(req)
    head = ResponseHead(200, [])
    plugin.response_headers(req, head)
    assert head.get("Kong-Request-ID") == "client-1"
    # answered before access ran: a fresh value
    head = ResponseHead(404, [])
    plugin.response_headers(make_request(), head)
    assert UUID4.fullmatch(head.get("Kong-Request-ID"))


def test_correlation_id_counter_and_tracker():
    plugin = build(CorrelationId, header_name="X-Trace")
    req1, req2 = make_request(), make_request()
    plugin.access(req1)
    plugin.access(req2)
    a, b = upstream_headers(req1)["x-trace"], upstream_headers(req2)["x-trace"]
    pa, _, na = a.rpartition("#")
    pb, _, nb = b.rpartition("#")
    assert pa == pb and int(nb) == int(na) + 1
    # without echo_downstream the response phase is left out of the chain
    assert plugin.active_phases() == ("access",)
    assert build(CorrelationId, echo_downstream=True).active_phases() == \
        ("access", "response_headers")
    tracker = build(CorrelationId, generator="tracker")
    req = make_request(headers=[("Host", "gw.test:8443")])
    tracker.access(req)
    value = upstream_headers(req)["kong-request-id"]
    assert re.fullmatch(rf"gw\.test-8443-{os.getpid()}-rid-1-\d+\.\d{{3}}", value), value

