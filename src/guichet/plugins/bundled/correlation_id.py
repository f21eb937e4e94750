"""correlation-id: give each request an identifier the upstream (and, optionally, the
client) can log (Kong's ``correlation-id``, priority 100001: the first plugin to run).

Rules (Kong 3.x's handler):

* In the access phase: when the request carries ``header_name`` (default
  ``Kong-Request-ID``) with a non-empty value, that value is kept; otherwise one is
  generated and set on the upstream request. The value is left in
  ``req.ctx["correlation_id"]`` for logging plugins (Kong's serialised ``correlation_id``).
* With ``echo_downstream``, the response to the client (the upstream's, or one the gateway
  made) carries the same header and value; when access did not run (the request was
  answered before it), the request's value or a new one is used.
* Generators: ``uuid`` (a random version-4 UUID per request), ``uuid#counter`` (the
  default: a random UUID drawn once per worker process, then ``#`` and a counter that
  the worker increments for every request) and ``tracker`` (Kong's
  ``server_addr-server_port-worker_pid-connection-connection_requests-time``; guichet
  fills the server address and port as the client addressed them, from the Host header,
  and uses the request id in place of the connection serial and request count, which
  the plugin API does not expose).
* ``header_name`` is a header name of ``A-Za-z0-9``, ``-`` and ``_`` (Kong's rule); one
  the gateway writes itself (Content-Length, Transfer-Encoding, Connection ...) is a load
  error.

Cost: without ``echo_downstream`` the plugin takes no part in the response phase
(``active_phases``). ``uuid#counter`` is one counter step and one string concatenation; ``uuid`` reads
16 bytes from ``os.urandom`` and formats them without building a ``uuid.UUID``. Both are
reset in a forked child (``os.register_at_fork``), so two workers never share a sequence.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import TYPE_CHECKING, Annotated, Callable, Literal

from pydantic import AfterValidator

from guichet.plugins.api import Plugin, PluginConfig, Response

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request, ResponseHead

CTX_KEY = "correlation_id"
_HEADER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_GATEWAY_WRITTEN = frozenset({"content-length", "transfer-encoding", "connection", "upgrade",
                              "keep-alive", "te", "trailer", "host"})


def _check_header_name(name: str) -> str:
    if not name:
        raise ValueError("no header name provided")
    if not set(name) <= _HEADER_CHARS:
        raise ValueError(f"bad header name '{name}', allowed characters are A-Z, a-z, 0-9, "
                         "'_', and '-'")
    return name


def _check_settable_header(name: str) -> str:
    if name.lower() in _GATEWAY_WRITTEN:
        raise ValueError(f"the gateway writes {name} itself; choose another header")
    return name


def _check_header_value(value: str) -> str:
    if any((c < " " and c != "\t") or "\x7f" <= c < "\xa0" or c > "\xff" for c in value):
        raise ValueError("a header value cannot hold control characters (CR, LF ...) nor "
                         "characters beyond Latin-1")
    return value


HeaderName = Annotated[str, AfterValidator(_check_header_name)]
# a value the gateway will write in a header: checked at load rather than failing per request
HeaderValue = Annotated[str, AfterValidator(_check_header_value)]


class CorrelationIdConfig(PluginConfig):
    header_name: Annotated[HeaderName, AfterValidator(_check_settable_header)] = "Kong-Request-ID"
    generator: Literal["uuid", "uuid#counter", "tracker"] = "uuid#counter"
    echo_downstream: bool = False


# ---------------------------------------------------------------------- generators
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def uuid4() -> str:
    """A random RFC 4122 version-4 UUID, lower-case (what Kong's ``uuid()`` returns)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class WorkerSequence:
    """``<worker uuid>#<n>``: the uuid drawn once per process, n counting from 1."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = uuid4() + "#"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return self.prefix + str(next(self._counter))


WORKER_SEQUENCE = WorkerSequence()
os.register_at_fork(after_in_child=WORKER_SEQUENCE.reset)


def addressed_host_port(req: "Request") -> tuple[str, int]:
    """The host and port the client addressed: the Host header's, the port defaulting to
    the scheme's."""
    host = req.headers.get("host", "")
    end_of_ipv6 = host.rfind("]")
    colon = host.rfind(":")
    if colon > end_of_ipv6 and host[colon + 1:].isdigit():
        return host[:colon], int(host[colon + 1:])
    return host, 443 if req.scheme == "https" else 80


def tracker(req: "Request") -> str:
    """Kong's tracker id (see the module docstring for guichet's fields)."""
    host, port = addressed_host_port(req)
    return f"{host}-{port}-{os.getpid()}-{req.request_id}-{time.time():0.3f}"


GENERATORS: dict[str, Callable[["Request"], str]] = {
    "uuid": lambda req: uuid4(),
    "uuid#counter": lambda req: WORKER_SEQUENCE.next(),
    "tracker": tracker,
}


# ---------------------------------------------------------------------- the plugin
class CorrelationId(Plugin):
    name = "correlation-id"
    priority = 100001
    Config = CorrelationIdConfig

    def __init__(self, config: CorrelationIdConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.header_name = config.header_name
        self.lower_name = config.header_name.lower()
        self.generate = GENERATORS[config.generator]
        self.echo_downstream = config.echo_downstream

    def access(self, req: "Request") -> Response | None:
        value = req.header(self.header_name)
        if not value:
            value = self.generate(req)
            req.set_header(self.header_name, value)
        req.ctx[CTX_KEY] = value  # for the plugins after this one (loggers)
        return None

    def active_phases(self) -> tuple[str, ...]:
        # without echo_downstream the response is left alone: no response_headers hook
        return ("access", "response_headers") if self.echo_downstream else ("access",)

    def response_headers(self, req: "Request", resp: "ResponseHead") -> None:
        value = req.ctx.get(CTX_KEY) or req.headers.get(self.lower_name) or self.generate(req)
        resp.set(self.header_name, value)
