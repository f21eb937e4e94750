"""What consistent hashing hashes: the request value chosen by ``hash_on``/``hash_fallback``.

Rules (Kong's ``get_value_to_hash`` in ``kong/runloop/balancer/init.lua``):

- ``hash_on`` is read first, then ``hash_fallback`` when the first gave nothing; ``none``
  reads nothing. Sources: ``consumer`` (the consumer id, else the credential id: the
  proxy's ``consumer_id``), ``ip`` (client address), ``header`` (``hash_on_header`` /
  ``hash_fallback_header``, lower-cased), ``cookie`` (``hash_on_cookie`` in both places),
  ``path``, ``query_arg`` and ``uri_capture`` (their ``*_query_arg``/``*_uri_capture``).
- A source gives nothing only when the value is absent (``None``); an empty string is a
  value, as in Kong.
- ``cookie``: when the cookie is absent a fresh UUID becomes the value and the caller must
  send it back as ``Set-Cookie: name=value; Path=hash_on_cookie_path``.
- No value at all (or no request): the empty string, so such requests all go to one peer,
  exactly as Kong does.
- Values are hashed with BLAKE2b (64 bits), identical in every process and on every
  gateway instance, so instances sharing an upstream agree on each key's peer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from hashlib import blake2b
from operator import attrgetter
from typing import TYPE_CHECKING

from guichet.balancing.peers import HashInput

if TYPE_CHECKING:
    from guichet.config.model import Upstream

Reader = Callable[[HashInput], "str | None"]
Cookie = tuple[str, str, str]


def hash64(value: str) -> int:
    return int.from_bytes(blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest())


def _reader(kind: str, name: str | None) -> Reader | None:
    if kind == "consumer":
        return attrgetter("consumer_id")
    if kind == "ip":
        return attrgetter("client_ip")
    if kind == "path":
        return attrgetter("path")
    if kind == "none" or name is None:
        return None
    if kind == "header":
        lowered = name.lower()
        return lambda source: source.header(lowered)
    if kind == "query_arg":
        return lambda source: source.query_arg(name)
    if kind == "uri_capture":
        return lambda source: source.uri_capture(name)
    raise ValueError(f"unknown hash source {kind!r}")


class HashKey:
    """Reads the value to hash from a request; built once per balancer."""

    __slots__ = ("_steps", "_cookie_name", "_cookie_path")

    def __init__(self, upstream: Upstream) -> None:
        self._cookie_name = upstream.hash_on_cookie
        self._cookie_path = upstream.hash_on_cookie_path or "/"
        steps: list[Reader | None] = []
        if upstream.hash_on != "none":
            for kind, header, query_arg, capture in (
                (upstream.hash_on, upstream.hash_on_header, upstream.hash_on_query_arg,
                 upstream.hash_on_uri_capture),
                (upstream.hash_fallback, upstream.hash_fallback_header,
                 upstream.hash_fallback_query_arg, upstream.hash_fallback_uri_capture),
            ):
                if kind == "none":
                    break
                if kind == "cookie":
                    steps.append(None)  # marker: the cookie step, which never gives nothing
                    break
                name = {"header": header, "query_arg": query_arg, "uri_capture": capture}.get(kind)
                reader = _reader(kind, name)
                if reader is None:
                    raise ValueError(f"hash source {kind!r} needs a name")
                steps.append(reader)
        self._steps = tuple(steps)
        if None in self._steps and not self._cookie_name:
            raise ValueError("hash_on cookie needs hash_on_cookie")

    def read(self, source: HashInput | None) -> tuple[str, Cookie | None]:
        """The value to hash and the cookie to set (None unless one was generated)."""
        if source is None:
            return "", None
        for step in self._steps:
            if step is None:
                name = self._cookie_name
                value = source.cookie(name)
                if value is not None:
                    return value, None
                value = str(uuid.uuid4())
                return value, (name, value, self._cookie_path)
            value = step(source)
            if value is not None:
                return value, None
        return "", None
