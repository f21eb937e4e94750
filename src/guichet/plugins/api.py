"""The plugin API: what a plugin is, and what it may read and change.

A plugin is a class with a ``name``, a unique numeric ``priority`` (Kong's: higher runs
first), a ``Config`` (a pydantic model that forbids unknown keys and fills defaults), and
one method per phase it takes part in. Phases, in the order a request meets them::

    rewrite            may answer            (before authentication)
    access             may answer            (authentication, authorisation, limits)
    upstream_request   may change the request toward the upstream; cannot answer
    response_headers   may change the status and headers toward the client
    response_body      may change each chunk of the body toward the client
    log                sees the finished exchange; never changes it

``rewrite`` and ``access`` return ``None`` to let the request go on, or a
:class:`Response` to answer it there (a refusal is a returned value, not an exception).
They may also be ``async def`` when they must wait for I/O (a JWKS fetch, a token
introspection): the chain waits for them and then goes on. Every other hook is
synchronous. An exception raised by any hook is a fault: that one request gets a 500 and
the error is logged with the route and the plugin name.

The compiler (``guichet.plugins.chain``) builds, for each route (and consumer, when
plugins are scoped to consumers), one tuple per phase holding only the plugins that
implement that phase, sorted by priority; the hot path never asks whether a plugin has a
hook.

Instances are built once per configuration snapshot, from a validated config
(``__init__(config, env)``): compile regexes, build indexes and open clients there. They
must not keep per-request state on ``self``: per-request state goes in ``req.ctx``,
long-lived state (counters, caches) in a store from ``env.store(name)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import orjson
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request, ResponseHead

PHASES = ("rewrite", "access", "upstream_request", "response_headers", "response_body", "log")


class PluginConfig(BaseModel):
    """Base of every plugin's ``Config``: unknown keys are errors, types are strict (a
    string is not a number), and the model is immutable once validated."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Response:
    """An answer a plugin gives instead of proxying the request.

    ``body`` may be bytes (sent as is), a str (UTF-8), or any JSON-able value (a dict,
    a list ...), which is serialised with ``Content-Type: application/json``.
    ``headers`` is a mapping or a list of (name, value) pairs.
    """

    __slots__ = ("status", "body", "headers", "content_type")

    def __init__(self, status: int, body: Any = b"", headers: Mapping[str, str] |
                 list[tuple[str, str]] | None = None, *, content_type: str | None = None) -> None:
        self.status = status
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode("utf-8")
            content_type = content_type or "text/plain; charset=utf-8"
        else:
            data = orjson.dumps(body)
            content_type = content_type or "application/json; charset=utf-8"
        self.body = data
        self.content_type = content_type
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        self.headers: list[tuple[str, str]] = items


def error(status: int, message: str, headers: Mapping[str, str] | list[tuple[str, str]] |
          None = None) -> "ErrorResponse":
    """The gateway's error answer: ``{"message": ..., "request_id": ...}`` as JSON
    (GUARANTEES.md §12), with Kong's message for the same situation."""
    return ErrorResponse(status, message, headers)


class ErrorResponse(Response):
    """A :func:`error` answer; its body gets the request id when it is sent."""

    __slots__ = ("message",)

    def __init__(self, status: int, message: str, headers: Mapping[str, str] |
                 list[tuple[str, str]] | None = None) -> None:
        super().__init__(status, b"", headers)
        self.message = message


class Plugin:
    """Base class of every plugin, bundled or custom.

    Class attributes to set: ``name`` (as written in the declarative file), ``priority``
    (unique; Kong's number for Kong's plugins), ``Config`` (a :class:`PluginConfig`
    subclass). Optional: ``no_consumer = True`` when the plugin cannot be scoped to a
    consumer (authentication plugins), ``protocols`` (the request protocols it supports).
    ``entity_id`` is set on each instance by the compiler (not in ``__init__``).

    The constructor receives the validated config and a :class:`~guichet.plugins.env.BuildEnv`.
    Override the hooks of the phases the plugin takes part in (see the module docstring
    for their signatures); a hook left as defined here is not called.
    """

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0
    version: ClassVar[str] = "1.0.0"
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    no_consumer: ClassVar[bool] = False
    protocols: ClassVar[tuple[str, ...]] = ("http", "https", "ws", "wss")
    # The id of the plugin entity this instance was built from, set by the compiler right
    # after the constructor: stable across workers, nodes and reloads (the loader derives
    # an absent id from the plugin's name and scope), so it can name shared counters.
    entity_id: str | None = None

    def __init__(self, config: Any, env: "BuildEnv") -> None:
        self.config = config
        self.env = env

    def active_phases(self) -> tuple[str, ...]:
        """The phases this instance takes part in: by default every hook the class
        overrides. An instance whose configuration makes a hook a no-op (correlation-id
        without ``echo_downstream``) leaves that phase out, and costs nothing there."""
        return implemented_phases(type(self))

    async def start(self) -> None:
        """Called once the snapshot is built, in the worker's event loop."""

    async def close(self) -> None:
        """Called when the snapshot is retired (after its last request)."""

    # Hooks. They are declared here for documentation; the chain compiler only calls the
    # ones a subclass overrides.
    def rewrite(self, req: "Request") -> "Response | None":  # pragma: no cover - never called
        return None

    def access(self, req: "Request") -> "Response | None":  # pragma: no cover - never called
        return None

    def upstream_request(self, req: "Request") -> None:  # pragma: no cover - never called
        return None

    def response_headers(self, req: "Request", resp: "ResponseHead") -> None:  # pragma: no cover
        return None

    def response_body(self, req: "Request", resp: "ResponseHead", chunk: bytes,
                      last: bool) -> bytes:  # pragma: no cover - never called
        return chunk

    def log(self, req: "Request", resp: "ResponseHead") -> None:  # pragma: no cover
        return None


def implemented_phases(cls: type[Plugin]) -> tuple[str, ...]:
    """The phases ``cls`` overrides."""
    return tuple(p for p in PHASES if getattr(cls, p) is not getattr(Plugin, p))
