"""Plugin requests built in memory, for unit tests that drive a plugin's hooks directly.

A :class:`~guichet.plugins.request.Request` is a view over the server's
:class:`~guichet.server.exchange.Exchange`; the requests made here wrap a real ``Exchange``,
filled in the way the connection fills it once a request head is parsed and routed, so what
a plugin reads cannot drift from what the proxy gives it. Only the client connection is a
stand-in (:class:`FakeClient`). Rules of the requests built here:

* The body, if any, has wholly arrived (``read_body`` returns at once). A chunked request
  has a body and no Content-Length; any other body has a Content-Length.
* The path is used as sent (``path == raw_path``); the Host header, when given, is the
  exchange's host; the client is not a trusted proxy, so ``client_ip`` is the peer.
* There is no matched route or service unless the test names them.
* The request id is ``rid-1`` and the worker clock (``req.now``) reads ``0.0`` unless told.

And the helpers to run a hook and read what it did: :func:`run` (one event loop per call),
the ``resolve`` fixture (one event loop per test module, for plugins that keep
loop-bound state such as an HTTP client or a pending fetch), :func:`upstream_headers`,
:func:`refused`, :func:`assert_refused`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Iterable, Iterator
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from guichet.config.model import Config, Consumer, Route, Service
from guichet.plugins.api import ErrorResponse
from guichet.plugins.consumers import ConsumerDirectory
from guichet.plugins.env import BuildEnv
from guichet.plugins.request import Request
from guichet.plugins.stores import Stores
from guichet.router import RouteMatch
from guichet.server.exchange import Exchange

REQUEST_ID = "rid-1"


class FakeClient:
    """What an ``Exchange`` and a ``Request`` read of the client connection."""

    trusted = False  # not a trusted proxy: client_ip is the peer

    def __init__(self, peer_ip: str, scheme: str, now: float) -> None:
        self.peer_ip = peer_ip
        self.scheme = scheme
        self.rt = SimpleNamespace(now=now, loop=None, settings=None)

    def hold_body(self, ex: Exchange) -> None:
        raise AssertionError("the body of a request built in memory has wholly arrived")


def make_exchange(target: str = "/", headers: Iterable[tuple[str, str]] = (), *,
                  method: str = "GET", body: bytes = b"", chunked: bool = False,
                  http10: bool = False, client_ip: str = "127.0.0.1", scheme: str = "http",
                  route: Route | None = None, service: Service | None = None,
                  uri_captures: dict[str, str] | None = None, now: float = 0.0) -> Exchange:
    """An exchange whose head was parsed and routed (see the module's rules)."""
    ex = Exchange(FakeClient(client_ip, scheme, now))  # type: ignore[arg-type]
    ex.method = method.encode("latin-1")
    ex.url = target.encode("latin-1")
    path, _, query = target.partition("?")
    ex.path = ex.raw_path = path
    ex.query = query
    ex.http10 = http10
    ex.headers = [(name.lower().encode("latin-1"), name.encode("latin-1"),
                   value.encode("latin-1")) for name, value in headers]
    host = next((value for lname, _, value in ex.headers if lname == b"host"), None)
    if host is not None:
        ex.host = host
    ex.chunked = chunked
    ex.has_body = bool(body) or chunked
    if body and not chunked:
        ex.content_length = len(body)
    if body:
        ex.body_pending = [body]
        ex.body_pending_size = ex.body_received = len(body)
    ex.body_complete = True
    if route is not None:
        ex.match = RouteMatch(route, uri_captures or {}, None, False)
    if service is not None:
        ex.service = SimpleNamespace(service=service)  # type: ignore[assignment]
    ex.request_id = REQUEST_ID
    return ex


def make_request(target: str = "/", headers: Iterable[tuple[str, str]] | None = None, *,
                 method: str = "GET", body: bytes = b"", chunked: bool = False,
                 http10: bool = False, client_ip: str = "127.0.0.1", scheme: str = "http",
                 route: Route | None = None, service: Service | None = None,
                 uri_captures: dict[str, str] | None = None, now: float = 0.0) -> Request:
    """A request for ``target`` (path and query) with these header lines, in order
    (names as sent; repeated names are repeated fields)."""
    return Request(make_exchange(target, headers or (), method=method, body=body,
                                 chunked=chunked, http10=http10, client_ip=client_ip,
                                 scheme=scheme, route=route, service=service,
                                 uri_captures=uri_captures, now=now))


def request(method: str = "GET", query: str = "", **headers: str) -> Request:
    """A request to ``/api`` with one header per keyword (``x_token`` is ``x-token``)."""
    target = f"/api?{query}" if query else "/api"
    return make_request(target, [(name.replace("_", "-"), value)
                                 for name, value in headers.items()], method=method)


def bearer(token: str) -> Request:
    """A request to ``/api`` carrying ``Authorization: Bearer <token>``."""
    return request(authorization=f"Bearer {token}")


def make_env(consumers: Iterable[Consumer] = (), stores: Stores | None = None,
             **entities: Any) -> BuildEnv:
    """What a plugin is built with: these consumers and the other declarative entities
    (``keyauth_credentials=...``, ``acls=...``), a fresh worker store unless given one."""
    directory = ConsumerDirectory(Config(consumers=tuple(consumers), **entities))
    return BuildEnv(directory, None, stores or Stores())


def build(cls: Any, env: BuildEnv | None = None, **conf: Any) -> Any:
    """The plugin ``cls`` with this configuration (validated as the loader does), built
    with ``env`` (by default one without consumers)."""
    return cls(cls.Config.model_validate(conf), env or make_env())


# ------------------------------------------------------------------ running hooks
def await_result(awaitable: Awaitable[Any]) -> Any:
    """Wait for a hook's awaitable result in an event loop of its own."""
    async def wait() -> Any:
        return await awaitable

    return asyncio.run(wait())


def run(plugin: Any, req: Request) -> Any:
    """Call the access hook; wait for it when it returned an awaitable."""
    result = plugin.access(req)
    return await_result(result) if inspect.isawaitable(result) else result


@pytest.fixture(scope="module")
def resolve() -> Iterator[Callable[[Any], Any]]:
    """Resolve a hook's result: run it in the test module's event loop when it is a
    coroutine (plugins that cache loop-bound state see one loop across the module)."""
    with asyncio.Runner() as runner:
        yield lambda result: runner.run(result) if asyncio.iscoroutine(result) else result


# ------------------------------------------------------------------ reading what a hook did
def upstream_headers(req: Request) -> dict[str, str | None]:
    """What the plugins asked to send upstream: lower-case name -> its last value, None
    when removed."""
    return {name: (values[-1][1] if values else None) for name, values in (req.edits or {}).items()}


def upstream_header(req: Request, name: str) -> str | None:
    """The last value plugins set for ``name`` toward the upstream (None: unchanged or
    removed)."""
    values = (req.edits or {}).get(name.lower())
    return values[-1][1] if values else None


def refused(result: Any) -> tuple[int, str]:
    """The status and message of a refusal (failing when the hook let the request pass)."""
    assert isinstance(result, ErrorResponse), result
    return result.status, result.message


def assert_refused(result: Any, status: int, message: str, www_authenticate: str | None) -> None:
    """The hook refused with this status, message and WWW-Authenticate header (None: no
    such header)."""
    assert refused(result) == (status, message)
    assert dict(result.headers).get("WWW-Authenticate") == www_authenticate
