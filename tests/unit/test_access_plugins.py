"""ip-restriction, acl and bot-detection: each plugin's logic on requests built in memory
(CIDR matching, the verdict caches, group rules, user-agent rules); and the names and
priorities of the access plugins (cors, request-size-limiting, request-termination and
correlation-id have files of their own)."""

from __future__ import annotations

import ipaddress
import random
import time
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from guichet.config.model import Acl as AclEntry, Consumer
from guichet.config.pcre import compile_pcre
from guichet.plugins.bundled.acl import Acl
from guichet.plugins.bundled.bot_detection import (
    BAD_BOT_RULES,
    BOT,
    PASS,
    REGEX_FLAGS,
    BotDetection,
    examine_user_agent,
)
from guichet.plugins.bundled.correlation_id import CorrelationId
from guichet.plugins.bundled.cors import Cors
from guichet.plugins.bundled.ip_restriction import (
    AddressRanges,
    IpRestriction,
    parse_client_address,
    parse_ip_or_cidr,
)
from guichet.plugins.bundled.request_size_limiting import RequestSizeLimiting
from guichet.plugins.bundled.request_termination import RequestTermination
from guichet.plugins.request import Request
from support.plugin_requests import build, make_env, make_request, refused, run, upstream_headers

ALICE = Consumer(id="c-alice", username="alice")
BOB = Consumer(id="c-bob", username="bob")
NOBODY = Consumer(id="c-nobody", username="nobody")  # no groups


def acl(**conf: Any) -> Acl:
    env = make_env((ALICE, BOB, NOBODY),
                   acls=(AclEntry(id="a1", consumer_id="c-alice", group="admins"),
                         AclEntry(id="a2", consumer_id="c-alice", group="staff"),
                         AclEntry(id="a3", consumer_id="c-bob", group="guests")))
    return build(Acl, env, **conf)


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
    plugin = acl(allow=["admins", "ops"])
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
    plugin = acl(deny=["guests"], hide_groups_header=True)
    req = authenticate(make_request(), ALICE)
    assert run(plugin, req) is None
    assert "x-consumer-groups" not in upstream_headers(req)
    assert refused(run(plugin, authenticate(make_request(), BOB)))[0] == 403
    # no groups cannot be in a denied one
    assert run(plugin, authenticate(make_request(), NOBODY)) is None


def test_acl_verdict_is_remembered_per_consumer():
    plugin = acl(allow=["admins"])
    for _ in range(3):
        req = authenticate(make_request(), ALICE)
        assert run(plugin, req) is None
        assert upstream_headers(req)["x-consumer-groups"] == "admins, staff"
        assert refused(run(plugin, authenticate(make_request(), BOB)))[0] == 403


def test_acl_authenticated_groups_from_ctx():
    plugin = acl(allow=["ldap-admins"])
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
    always = acl(allow=["ldap-admins"], always_use_authenticated_groups=True)
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
