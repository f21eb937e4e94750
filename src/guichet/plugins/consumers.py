"""Consumers and their credentials, indexed for the authentication plugins.

One :class:`ConsumerDirectory` per configuration snapshot. Indexes are built on first use
and shared by every plugin instance of the snapshot (a hundred routes with key-auth build
the key index once). Secrets are indexed by a digest, never by their plaintext:
:func:`secret_digest` is keyed SHA-256 under a key drawn at process start, so a dict
lookup on it tells nothing about how much of a wrong key was right (the comparison is
constant-time by construction), and the plaintext is not kept in the index.
"""

from __future__ import annotations

import hmac
import os
from hashlib import sha256
from typing import Any, Callable

from guichet.config.model import Config, Consumer

_DIGEST_KEY = os.urandom(16)


def secret_digest(secret: str | bytes) -> bytes:
    """A keyed digest of a secret: what indexes hold and what lookups compute.

    SHA-256 of a 16-byte process key followed by the secret: a pseudo-random function of
    the secret that nobody outside the process can compute (the digests never leave it,
    so length extension is of no use), and one compression for keys under 40 bytes."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    return sha256(_DIGEST_KEY + secret).digest()


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    """Compare two secrets in time that depends only on their lengths."""
    if isinstance(a, str):
        a = a.encode("utf-8")
    if isinstance(b, str):
        b = b.encode("utf-8")
    return hmac.compare_digest(a, b)


class ConsumerDirectory:
    """Read-only view of the snapshot's consumers and credentials."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.by_id: dict[str, Consumer] = {c.id: c for c in config.consumers}
        self.by_username: dict[str, Consumer] = {c.username: c for c in config.consumers
                                                 if c.username is not None}
        self.by_custom_id: dict[str, Consumer] = {c.custom_id: c for c in config.consumers
                                                  if c.custom_id is not None}
        self._indexes: dict[Any, Any] = {}

    def get(self, consumer_id: str | None) -> Consumer | None:
        return None if consumer_id is None else self.by_id.get(consumer_id)

    def find(self, ref: str | None) -> Consumer | None:
        """A consumer named by id or username (Kong's ``anonymous`` field takes either)."""
        if not ref:
            return None
        return self.by_id.get(ref.lower()) or self.by_id.get(ref) or self.by_username.get(ref)

    def credentials(self, kind: str) -> tuple[Any, ...]:
        """Every credential of ``kind`` (``"keyauth_credentials"``, ``"acls"`` ...)."""
        return getattr(self._config, kind, ())

    def index(self, name: str, build: Callable[["ConsumerDirectory"], Any]) -> Any:
        """The index called ``name``, built by ``build(directory)`` on first use and then
        shared by every plugin of this snapshot."""
        value = self._indexes.get(name)
        if value is None:
            value = self._indexes[name] = build(self)
        return value

    def by_field(self, kind: str, field: str) -> dict[Any, tuple[Any, Consumer]]:
        """value of ``field`` -> (credential, consumer) for every credential of ``kind``
        whose consumer exists (the first one wins); built once per snapshot."""
        def build(directory: "ConsumerDirectory") -> dict[Any, tuple[Any, Consumer]]:
            index: dict[Any, tuple[Any, Consumer]] = {}
            for credential in directory.credentials(kind):
                consumer = directory.get(credential.consumer_id)
                if consumer is not None:
                    index.setdefault(getattr(credential, field), (credential, consumer))
            return index
        return self.index(f"{kind}:{field}", build)

    def groups(self, consumer_id: str) -> tuple[str, ...]:
        """The ACL groups of a consumer, in file order."""
        table = self.index("acl-groups", _acl_groups)
        return table.get(consumer_id, ())


def _acl_groups(directory: ConsumerDirectory) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for acl in directory.credentials("acls"):
        out.setdefault(acl.consumer_id, []).append(acl.group)
    return {k: tuple(v) for k, v in out.items()}
