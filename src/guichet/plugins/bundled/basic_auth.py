"""basic-auth: authenticate a request by username and password (Kong's ``basic-auth``,
priority 1100).

Rules (Kong 3.x ``kong/plugins/basic-auth``):

- Credentials come from ``Proxy-Authorization`` first, then ``Authorization``:
  ``Basic <base64(username:password)>``. The username is what precedes the first ":" and
  must not be empty; the password is the rest (possibly empty). When Proxy-Authorization
  names an unknown user (or does not parse), Authorization is tried.
- Neither header, a header that does not parse, an unknown user or a wrong password:
  401 "Unauthorized" with ``WWW-Authenticate: Basic realm="<realm>"`` (realm "service" by
  default). The answer does not say which check failed.
- Passwords are stored as bcrypt or argon2 hashes (``BasicAuthCredential.password_hash``)
  and checked with :func:`guichet.passwords.verify_password` (~50 ms of CPU at bcrypt cost
  10) on the process's own verification threads (:class:`VerificationPool`: 2 threads,
  created on first use in each worker process), never on the event loop and never on the
  loop's default executor, which other work shares. For an unknown user one verification
  against a dummy hash is spent all the same, so a first refusal takes as long whether or
  not the user exists.
- At most 64 verifications per worker are queued or running. Beyond that the request is
  answered at once, without verifying: 503 "Too many authentication attempts in progress"
  with ``Retry-After: 1`` (the credentials were not judged, so ``anonymous`` does not
  apply). A flood of guesses thus delays a legitimate first login by at most the queue
  (64 x 50 ms / 2 threads, about 1.6 s), never without bound.
- Results are remembered per configuration snapshot, keyed by a keyed digest of
  (username, password) (:func:`~guichet.plugins.consumers.secret_digest`; no plaintext is
  kept): a success for the snapshot's life (:class:`VerifiedPasswords`, 4096 entries, the
  oldest forgotten first), a failure for 5 s (:class:`RefusedPasswords`, 4096 entries), so
  a client repeating the same pair is answered without verifying again, the same way
  whether or not the user exists. Concurrent requests with the same pair wait for one
  verification.
- ``hide_credentials``: each header the credentials were read from is removed toward the
  upstream.
- Success: ``req.set_consumer(consumer, credential, credential.username)``.
- ``anonymous``: as in key-auth (:class:`~guichet.plugins.bundled.key_auth.AnonymousFallback`).

Kong's basic-auth has no ``run_on_preflight``; neither has this one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from guichet.passwords import verify_against_dummy, verify_password
from guichet.plugins.api import ErrorResponse, Plugin, PluginConfig, Response, error
from guichet.plugins.bundled.key_auth import AnonymousFallback, Realm
from guichet.plugins.consumers import secret_digest

if TYPE_CHECKING:
    from guichet.config.model import Consumer
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

log = logging.getLogger("guichet.plugins.auth")

UNAUTHORIZED = "Unauthorized"
BUSY = "Too many authentication attempts in progress"
BUSY_RETRY_AFTER = "1"
VERIFY_THREADS = 2
MAX_PENDING_VERIFICATIONS = 64
VERIFIED_CACHE_SIZE = 4096
REFUSED_CACHE_SIZE = 4096
REFUSED_TTL = 5.0
BUSY_LOG_INTERVAL = 10.0


class BasicAuthConfig(PluginConfig):
    anonymous: str | None = None
    hide_credentials: bool = False
    realm: Realm = "service"


class VerificationPool:
    """The process's password verifications: run on ``threads`` threads of their own, at
    most ``max_pending`` submitted and not yet finished.

    The executor is created on first use, and again in a process forked after that (its
    threads do not survive a fork). Each job is counted from its submission until it ends
    (ran, or was cancelled while queued), whatever became of the request that asked."""

    def __init__(self, threads: int = VERIFY_THREADS,
                 max_pending: int = MAX_PENDING_VERIFICATIONS) -> None:
        self.threads = threads
        self.max_pending = max_pending
        self.pending = 0
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pid: int | None = None
        self._last_busy_log = float("-inf")

    def submit(self, job: Callable[..., bool],
               *args: Any) -> "concurrent.futures.Future[bool] | None":
        """Run ``job(*args)`` on a verification thread; None when ``max_pending`` jobs are
        already waiting or running (nothing is submitted then)."""
        with self._lock:
            executor = self._current_executor()
            if self.pending >= self.max_pending:
                self._log_busy()
                return None
            self.pending += 1
        try:
            future = executor.submit(job, *args)
        except RuntimeError:  # the interpreter is shutting down
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _current_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        pid = os.getpid()
        if self._executor is None or self._pid != pid:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix="guichet-password")
            self._pid = pid
            self.pending = 0  # jobs of the parent process do not run here
        return self._executor

    def _finished(self, _future: Any) -> None:
        with self._lock:
            self.pending -= 1

    def _log_busy(self) -> None:
        now = time.monotonic()
        if now - self._last_busy_log >= BUSY_LOG_INTERVAL:
            self._last_busy_log = now
            log.warning("basic-auth: %d password verifications already pending; refusing "
                        "further attempts with 503 until some finish", self.pending)


POOL = VerificationPool()


def pair_key(username: str, password: str) -> bytes:
    """The keyed digest that stands for a (username, password) pair in the caches."""
    # The length prefix keeps ("a:b", "c") and ("a", "b:c") apart.
    return secret_digest(f"{len(username)}:{username}:{password}")


class VerifiedPasswords:
    """digest(username, password) -> credential id of verifications that succeeded; at
    most ``size`` entries, the oldest forgotten first."""

    __slots__ = ("size", "entries")

    def __init__(self, size: int = VERIFIED_CACHE_SIZE) -> None:
        self.size = size
        self.entries: dict[bytes, str] = {}

    key = staticmethod(pair_key)

    def get(self, key: bytes) -> str | None:
        return self.entries.get(key)

    def add(self, key: bytes, credential_id: str) -> None:
        entries = self.entries
        if key not in entries and len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[key] = credential_id


class RefusedPasswords:
    """digest(username, password) -> until when (monotonic seconds) that pair is refused
    without verifying it again; at most ``size`` entries, the oldest forgotten first."""

    __slots__ = ("size", "ttl", "entries")

    def __init__(self, size: int = REFUSED_CACHE_SIZE, ttl: float = REFUSED_TTL) -> None:
        self.size = size
        self.ttl = ttl
        self.entries: dict[bytes, float] = {}

    def holds(self, key: bytes, now: float) -> bool:
        until = self.entries.get(key)
        if until is None:
            return False
        if now < until:
            return True
        del self.entries[key]
        return False

    def add(self, key: bytes, now: float) -> None:
        entries = self.entries
        entries.pop(key, None)  # a renewed entry moves to the end: oldest stay first
        while len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[key] = now + self.ttl


class PasswordChecks:
    """One configuration snapshot's verification results and verifications under way."""

    __slots__ = ("verified", "refused", "pending")

    def __init__(self) -> None:
        self.verified = VerifiedPasswords()
        self.refused = RefusedPasswords()
        self.pending: dict[bytes, "asyncio.Future[bool]"] = {}

    def settle(self, key: bytes, credential_id: str | None,
               outcome: "asyncio.Future[bool]") -> None:
        """Remember how the verification of ``key`` ended (done callback of ``outcome``)."""
        self.pending.pop(key, None)
        if outcome.cancelled() or outcome.exception() is not None:
            return
        if outcome.result() and credential_id is not None:
            self.verified.add(key, credential_id)
        else:
            self.refused.add(key, time.monotonic())


def parse_basic(value: str | None) -> tuple[str, str] | None:
    """(username, password) from a ``Basic`` authorization header, or None."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    token = token.strip()
    if not token:
        return None
    token += "=" * (-len(token) % 4)
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        return None
    return username, password


class BasicAuth(Plugin):
    name = "basic-auth"
    priority = 1100
    Config = BasicAuthConfig
    no_consumer = True

    def __init__(self, config: BasicAuthConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        settings = env.settings
        if settings is not None and POOL._executor is None:
            # node settings, fixed for the process: they apply before the first verification
            POOL.threads = getattr(settings, "password_verify_threads", VERIFY_THREADS)
            POOL.max_pending = getattr(settings, "password_verify_max_pending",
                                       MAX_PENDING_VERIFICATIONS)
        self.users: dict[str, tuple[Any, "Consumer"]] = env.consumers.by_field("basicauth_credentials", "username")
        self.checks: PasswordChecks = env.consumers.index(
            "basic-auth:checks", lambda _directory: PasswordChecks())
        self.verified = self.checks.verified
        self.anonymous = AnonymousFallback(self.name, config.anonymous, env.consumers)
        self.www_authenticate = f'Basic realm="{config.realm}"'

    def access(self, req: "Request") -> Response | None | Awaitable[Response | None]:
        if self.anonymous.skip(req):
            return None
        authorization = req.header("authorization")
        proxy_authorization = req.header("proxy-authorization")
        if authorization is None and proxy_authorization is None:
            return self.anonymous.conclude(req, self._refusal())

        found: tuple[str, str] | None = None
        if proxy_authorization is not None:
            found = self._read(req, "proxy-authorization", proxy_authorization)
        if found is None or found[0] not in self.users:
            from_authorization = (self._read(req, "authorization", authorization)
                                  if authorization is not None else None)
            if from_authorization is None:
                if found is None:
                    return self.anonymous.conclude(req, self._refusal())
            else:
                found = from_authorization
        assert found is not None
        username, password = found
        key = pair_key(username, password)
        known = self.users.get(username)
        if known is not None and self.checks.verified.get(key) == known[0].id:
            credential, consumer = known
            req.set_consumer(consumer, credential, credential.username)
            return None
        if self.checks.refused.holds(key, time.monotonic()):
            return self.anonymous.conclude(req, self._refusal())
        return self._verify(req, key, password, known)

    async def _verify(self, req: "Request", key: bytes, password: str,
                      known: tuple[Any, "Consumer"] | None) -> Response | None:
        checks = self.checks
        outcome = checks.pending.get(key)
        if outcome is not None and outcome.get_loop() is not asyncio.get_running_loop():
            outcome = None  # left by another event loop, which stopped before it ended
        if outcome is None:
            if known is None:
                job = POOL.submit(verify_against_dummy, password)
            else:
                job = POOL.submit(verify_password, password, known[0].password_hash)
            if job is None:
                return error(503, BUSY, {"Retry-After": BUSY_RETRY_AFTER})
            outcome = asyncio.wrap_future(job)
            checks.pending[key] = outcome
            credential_id = None if known is None else known[0].id
            outcome.add_done_callback(
                lambda done: checks.settle(key, credential_id, done))
        # shielded: a client that goes away does not cancel what others may be waiting for
        if not await asyncio.shield(outcome) or known is None:
            return self.anonymous.conclude(req, self._refusal())
        credential, consumer = known
        req.set_consumer(consumer, credential, credential.username)
        return None

    def _read(self, req: "Request", header: str, value: str) -> tuple[str, str] | None:
        if self.config.hide_credentials:
            req.remove_header(header)
        return parse_basic(value)

    def _refusal(self) -> ErrorResponse:
        return error(401, UNAUTHORIZED, {"WWW-Authenticate": self.www_authenticate})
