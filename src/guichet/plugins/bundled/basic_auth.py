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
  and checked with :func:`guichet.passwords.verify_password` in a worker thread (the event
  loop keeps serving during the ~50 ms it costs). For an unknown user one verification
  against a dummy hash is spent all the same, so a refusal takes as long whether or not
  the user exists.
- A successful verification is remembered, per configuration snapshot, in a bounded
  table keyed by a keyed digest of (username, password) (no plaintext is kept), so a
  client sending the same right credentials again is not verified again. Failures are
  not remembered.
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
from typing import TYPE_CHECKING, Any, Awaitable

from pydantic import Field

from guichet.passwords import verify_against_dummy, verify_password
from guichet.plugins.api import ErrorResponse, Plugin, PluginConfig, Response, error
from guichet.plugins.bundled.key_auth import REALM_PATTERN, AnonymousFallback
from guichet.plugins.consumers import ConsumerDirectory, secret_digest

if TYPE_CHECKING:
    from guichet.config.model import Consumer
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

UNAUTHORIZED = "Unauthorized"
VERIFIED_CACHE_SIZE = 4096


class BasicAuthConfig(PluginConfig):
    anonymous: str | None = None
    hide_credentials: bool = False
    realm: str = Field(default="service", pattern=REALM_PATTERN)


class VerifiedPasswords:
    """digest(username, password) -> credential id of verifications that succeeded; at
    most ``size`` entries, the oldest forgotten first."""

    __slots__ = ("size", "entries")

    def __init__(self, size: int = VERIFIED_CACHE_SIZE) -> None:
        self.size = size
        self.entries: dict[bytes, str] = {}

    @staticmethod
    def key(username: str, password: str) -> bytes:
        # The length prefix keeps ("a:b", "c") and ("a", "b:c") apart.
        return secret_digest(f"{len(username)}:{username}:{password}")

    def get(self, key: bytes) -> str | None:
        return self.entries.get(key)

    def add(self, key: bytes, credential_id: str) -> None:
        entries = self.entries
        if key not in entries and len(entries) >= self.size:
            del entries[next(iter(entries))]
        entries[key] = credential_id


def build_user_index(directory: ConsumerDirectory) -> dict[str, tuple[Any, "Consumer"]]:
    """username -> (credential, consumer) for every basic-auth credential whose consumer
    exists."""
    index: dict[str, tuple[Any, "Consumer"]] = {}
    for credential in directory.credentials("basicauth_credentials"):
        consumer = directory.get(credential.consumer_id)
        if consumer is not None:
            index.setdefault(credential.username, (credential, consumer))
    return index


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
        self.users: dict[str, tuple[Any, "Consumer"]] = env.consumers.index(
            "basic-auth", build_user_index)
        self.verified: VerifiedPasswords = env.consumers.index(
            "basic-auth:verified", lambda _directory: VerifiedPasswords())
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
        known = self.users.get(username)
        if known is not None:
            credential, consumer = known
            if self.verified.get(VerifiedPasswords.key(username, password)) == credential.id:
                req.set_consumer(consumer, credential, credential.username)
                return None
        return self._verify(req, username, password)

    async def _verify(self, req: "Request", username: str, password: str) -> Response | None:
        known = self.users.get(username)
        if known is None:
            await asyncio.to_thread(verify_against_dummy, password)
            return self.anonymous.conclude(req, self._refusal())
        credential, consumer = known
        if not await asyncio.to_thread(verify_password, password, credential.password_hash):
            return self.anonymous.conclude(req, self._refusal())
        self.verified.add(VerifiedPasswords.key(username, password), credential.id)
        req.set_consumer(consumer, credential, credential.username)
        return None

    def _read(self, req: "Request", header: str, value: str) -> tuple[str, str] | None:
        if self.config.hide_credentials:
            req.remove_header(header)
        return parse_basic(value)

    def _refusal(self) -> ErrorResponse:
        return error(401, UNAUTHORIZED, {"WWW-Authenticate": self.www_authenticate})
