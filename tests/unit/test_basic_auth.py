"""basic-auth on requests built in memory: parsing the Authorization value, bcrypt and
argon2 verification on the plugin's own bounded thread pool, the cap on pending
verifications (503), the success and failure caches keyed by digest, one verification
for concurrent identical pairs, equal cost for unknown and known users, refusals that do
not tell which part failed, Proxy-Authorization first, hide_credentials."""

from __future__ import annotations

import asyncio
import base64
import inspect
import statistics
import threading
import time
from typing import Any

import bcrypt
import pytest
from pydantic import ValidationError

from guichet.config.model import BasicAuthCredential, Consumer
from guichet.plugins.bundled import basic_auth as basic_auth_module
from guichet.plugins.bundled.basic_auth import (
    BUSY,
    BasicAuth,
    RefusedPasswords,
    VerificationPool,
    VerifiedPasswords,
    parse_basic,
)
from guichet.plugins.env import BuildEnv
from support.plugin_requests import (assert_refused, await_result, build, make_env, make_request,
                                     run, upstream_headers)

ALICE = Consumer(id="c-alice", username="alice", custom_id="cust-1")
BOB = Consumer(id="c-bob", username="bob")
PASSWORD_HASH = bcrypt.hashpw(b"open sesame", bcrypt.gensalt(4)).decode()


def default_env() -> BuildEnv:
    return make_env((ALICE, BOB), basicauth_credentials=(
        BasicAuthCredential(id="b-1", consumer_id="c-alice", username="alice-basic",
                            password_hash=PASSWORD_HASH),))


def basic(env: BuildEnv | None = None, **conf: Any) -> BasicAuth:
    return build(BasicAuth, env or default_env(), **conf)


def basic_header(username: str, password: str, scheme: str = "Basic") -> str:
    return f"{scheme} " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_basic_auth_identity_and_config():
    assert (BasicAuth.name, BasicAuth.priority, BasicAuth.no_consumer) == ("basic-auth", 1100, True)
    conf = BasicAuth.Config.model_validate({})
    assert (conf.anonymous, conf.hide_credentials, conf.realm) == (None, False, "service")
    with pytest.raises(ValidationError):  # Kong's basic-auth has no run_on_preflight
        BasicAuth.Config.model_validate({"run_on_preflight": False})


@pytest.mark.parametrize("value, expected", [
    (basic_header("u", "p"), ("u", "p")),
    (basic_header("u", ""), ("u", "")),
    (basic_header("u", "a:b"), ("u", "a:b")),
    (basic_header("u", "p", "basic"), ("u", "p")),
    ("Basic   " + base64.b64encode(b"u:p").decode() + "  ", ("u", "p")),
    ("Basic " + base64.b64encode(b"ab:c").decode().rstrip("="), ("ab", "c")),
    (basic_header("", "p"), None),
    ("Basic " + base64.b64encode(b"no-colon").decode(), None),
    ("Basic !!!notbase64", None),
    ("Basic ", None),
    ("Bearer abc", None),
    ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), None),
    (None, None),
])
def test_parse_basic(value, expected):
    assert parse_basic(value) == expected


def test_basic_auth_success_then_cached(monkeypatch):
    plugin = basic()
    req = make_request(headers=[("Authorization", basic_header("alice-basic", "open sesame"))])
    result = plugin.access(req)
    assert inspect.isawaitable(result)  # first time: verified in a thread
    assert await_result(result) is None
    assert req.consumer == ALICE and req.credential.id == "b-1"
    sent = upstream_headers(req)
    assert sent["x-credential-identifier"] == "alice-basic"  # basic-auth: the username
    assert sent["x-consumer-id"] == "c-alice"

    def no_verification(*_: Any) -> bool:
        raise AssertionError("verified again")

    monkeypatch.setattr(basic_auth_module, "verify_password", no_verification)
    again = make_request(headers=[("Authorization", basic_header("alice-basic", "open sesame"))])
    assert plugin.access(again) is None and again.consumer == ALICE  # cached, synchronous
    # another instance of the same snapshot shares the cache
    other = BasicAuth(plugin.config, plugin.env)
    assert other.verified is plugin.verified


def test_basic_auth_refusals_do_not_reveal_which_part_failed(monkeypatch):
    plugin = basic(realm="kong")
    dummy_calls: list[str] = []
    real_dummy = basic_auth_module.verify_against_dummy
    monkeypatch.setattr(basic_auth_module, "verify_against_dummy",
                        lambda p: dummy_calls.append(p) or real_dummy(p))
    www = 'Basic realm="kong"'
    assert_refused(run(plugin, make_request()), 401, "Unauthorized", www)
    assert_refused(run(plugin, make_request(headers=[("Authorization", "Basic ???")])), 401,
                   "Unauthorized", www)
    wrong_password = make_request(headers=[("Authorization", basic_header("alice-basic", "x"))])
    assert_refused(run(plugin, wrong_password), 401, "Unauthorized", www)
    assert dummy_calls == []
    unknown_user = make_request(headers=[("Authorization", basic_header("mallory", "x"))])
    assert_refused(run(plugin, unknown_user), 401, "Unauthorized", www)
    assert dummy_calls == ["x"]  # an unknown user still costs one verification
    # a failure is remembered for its pair only: the right password still works
    ok = make_request(headers=[("Authorization", basic_header("alice-basic", "open sesame"))])
    assert run(plugin, ok) is None


def test_basic_auth_proxy_authorization_first_then_authorization():
    plugin = basic()
    good = basic_header("alice-basic", "open sesame")
    req = make_request(headers=[("Proxy-Authorization", good)])
    assert run(plugin, req) is None and req.consumer == ALICE
    # unknown user in Proxy-Authorization: Authorization is tried
    req = make_request(headers=[("Proxy-Authorization", basic_header("nobody", "x")),
                                ("Authorization", good)])
    assert run(plugin, req) is None and req.consumer == ALICE
    # known user with a wrong password in Proxy-Authorization: refused (as Kong)
    req = make_request(headers=[("Proxy-Authorization", basic_header("alice-basic", "bad")),
                                ("Authorization", good)])
    assert_refused(run(plugin, req), 401, "Unauthorized", 'Basic realm="service"')


def test_basic_auth_hide_credentials():
    plugin = basic(hide_credentials=True)
    req = make_request(headers=[("Authorization", basic_header("alice-basic", "open sesame"))])
    assert run(plugin, req) is None
    assert upstream_headers(req)["authorization"] is None
    req = make_request(headers=[("Authorization", basic_header("alice-basic", "open sesame"))])
    assert run(basic(), req) is None and "authorization" not in upstream_headers(req)


def test_basic_auth_argon2_credential():
    from argon2 import PasswordHasher

    hashed = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("pw")
    env = make_env((ALICE, BOB), basicauth_credentials=(
        BasicAuthCredential(id="b-2", consumer_id="c-bob", username="bob", password_hash=hashed),))
    req = make_request(headers=[("Authorization", basic_header("bob", "pw"))])
    assert run(basic(env), req) is None and req.consumer == BOB


def test_verified_cache_is_bounded_and_keyed_by_digest():
    cache = VerifiedPasswords(size=3)
    keys = [VerifiedPasswords.key(f"user{i}", "pw") for i in range(5)]
    for i, key in enumerate(keys):
        cache.add(key, f"cred{i}")
    assert len(cache.entries) == 3
    assert cache.get(keys[0]) is None and cache.get(keys[4]) == "cred4"
    assert VerifiedPasswords.key("a:b", "c") != VerifiedPasswords.key("a", "b:c")
    assert all(b"pw" not in k for k in cache.entries)


# ------------------------------------------------------------------ cost under load
@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> VerificationPool:
    """A pool of this test's own (1 thread, 2 pending at most) in place of the process's."""
    own = VerificationPool(threads=1, max_pending=2)
    monkeypatch.setattr(basic_auth_module, "POOL", own)
    return own


def request_for(username: str, password: str) -> Any:
    return make_request(headers=[("Authorization", basic_header(username, password))])


def test_verification_runs_on_the_plugins_own_threads(monkeypatch):
    threads: list[str] = []
    real = basic_auth_module.verify_password
    monkeypatch.setattr(basic_auth_module, "verify_password",
                        lambda *a: threads.append(threading.current_thread().name) or real(*a))
    req = request_for("alice-basic", "open sesame")
    assert run(basic(), req) is None and req.consumer == ALICE
    assert threads and threads[0].startswith("guichet-password")
    assert basic_auth_module.POOL.threads == 2 and basic_auth_module.POOL.max_pending == 64


def test_beyond_the_pending_cap_the_answer_is_503_at_once(pool, monkeypatch):
    release = threading.Event()
    started: list[str] = []

    def slow(password: str, *_: Any) -> bool:
        started.append(password)
        release.wait(5)
        return False

    monkeypatch.setattr(basic_auth_module, "verify_against_dummy", slow)
    monkeypatch.setattr(basic_auth_module, "verify_password", slow)
    plugin = basic(anonymous="bob")  # not judged: the anonymous fallback does not apply

    async def scenario() -> list[Any]:
        waiting = [asyncio.ensure_future(plugin.access(request_for(f"user{i}", "pw")))
                   for i in range(2)]
        await asyncio.sleep(0.05)
        assert pool.pending == 2
        began = time.monotonic()
        third = await plugin.access(request_for("alice-basic", "another"))
        assert time.monotonic() - began < 0.5  # answered without waiting
        release.set()
        return [third, *await asyncio.gather(*waiting)]

    third, *first_two = asyncio.run(scenario())
    assert (third.status, third.message) == (503, BUSY)
    assert dict(third.headers)["Retry-After"] == "1"
    assert "WWW-Authenticate" not in dict(third.headers)
    assert all(r is None for r in first_two)  # refused, then let through as anonymous
    assert pool.pending == 0
    assert "another" not in started  # the refused attempt was never verified


def test_a_client_going_away_does_not_free_its_slot_early(pool, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(basic_auth_module, "verify_against_dummy",
                        lambda *_: release.wait(5) and False)
    plugin = basic()

    async def scenario() -> None:
        task = asyncio.ensure_future(plugin.access(request_for("ghost", "pw")))
        await asyncio.sleep(0.05)
        task.cancel()  # the client disconnected
        await asyncio.sleep(0.01)
        assert pool.pending == 1  # the verification still runs: its slot is still taken
        release.set()
        for _ in range(100):
            if pool.pending == 0:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert pool.pending == 0


def test_concurrent_requests_with_one_pair_wait_for_one_verification(pool, monkeypatch):
    calls: list[str] = []
    real = basic_auth_module.verify_password

    def counted(password: str, hashed: str) -> bool:
        calls.append(password)
        time.sleep(0.05)
        return real(password, hashed)

    monkeypatch.setattr(basic_auth_module, "verify_password", counted)
    plugin = basic()

    async def scenario() -> list[Any]:
        reqs = [request_for("alice-basic", "open sesame") for _ in range(10)]
        results = await asyncio.gather(*(plugin.access(r) for r in reqs))
        assert all(r.consumer == ALICE for r in reqs)
        return results

    assert asyncio.run(scenario()) == [None] * 10
    assert calls == ["open sesame"] and pool.pending == 0


@pytest.mark.parametrize("username", ["alice-basic", "mallory"])
def test_a_refused_pair_is_not_verified_again_for_a_while(monkeypatch, username):
    plugin = basic()
    assert_refused(run(plugin, request_for(username, "wrong")), 401, "Unauthorized",
                   'Basic realm="service"')

    def no_verification(*_: Any) -> bool:
        raise AssertionError("verified again")

    for name in ("verify_password", "verify_against_dummy"):
        monkeypatch.setattr(basic_auth_module, name, no_verification)
    again = plugin.access(request_for(username, "wrong"))
    assert not inspect.isawaitable(again)  # answered at once, known user or not
    assert_refused(again, 401, "Unauthorized", 'Basic realm="service"')
    # another pair is verified
    with pytest.raises(AssertionError, match="verified again"):
        run(plugin, request_for(username, "wrong2"))
    # after the ttl the pair is verified again
    later = time.monotonic() + basic_auth_module.REFUSED_TTL + 0.1
    monkeypatch.setattr(basic_auth_module.time, "monotonic", lambda: later)
    with pytest.raises(AssertionError, match="verified again"):
        run(plugin, request_for(username, "wrong"))


def test_refused_cache_is_bounded_and_expires():
    cache = RefusedPasswords(size=3, ttl=5.0)
    keys = [VerifiedPasswords.key(f"user{i}", "pw") for i in range(5)]
    for key in keys:
        cache.add(key, 100.0)
    assert len(cache.entries) == 3
    assert not cache.holds(keys[0], 100.0) and cache.holds(keys[4], 104.9)
    assert not cache.holds(keys[4], 105.0) and keys[4] not in cache.entries
    assert all(b"pw" not in k for k in cache.entries)


def test_unknown_and_known_users_cost_the_same_on_a_first_attempt():
    """A known user's hash at the default cost (what loading a plaintext produces) against
    the dummy verification of an unknown user: the refusals take as long."""
    from guichet.passwords import hash_password

    env = make_env((ALICE,), basicauth_credentials=(
        BasicAuthCredential(id="b-9", consumer_id="c-alice", username="alice",
                            password_hash=hash_password("right")),))
    plugin = basic(env)

    def timed(username: str, n: int) -> float:
        began = time.perf_counter()
        assert_refused(run(plugin, request_for(username, f"wrong{n}")), 401, "Unauthorized",
                       'Basic realm="service"')
        return time.perf_counter() - began

    known = statistics.median(timed("alice", n) for n in range(3))
    unknown = statistics.median(timed(f"nobody{n}", n) for n in range(3))
    assert 0.5 < known / unknown < 2.0, (known, unknown)
    assert known > 0.01 and unknown > 0.01  # both paid for a real bcrypt verification


def test_pool_size_and_cap_come_from_the_node_settings(monkeypatch):
    from types import SimpleNamespace

    own = basic_auth_module.VerificationPool()
    monkeypatch.setattr(basic_auth_module, "POOL", own)
    env = make_env()
    env.settings = SimpleNamespace(password_verify_threads=3, password_verify_max_pending=7)
    basic_auth_module.BasicAuth(basic_auth_module.BasicAuth.Config.model_validate({}), env)
    assert own.threads == 3 and own.max_pending == 7
