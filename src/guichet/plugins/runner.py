"""The phase runner: runs a request's chain from routing to the log line.

Rules:

* ``rewrite`` then ``access`` run in chain order; the first hook that returns a
  :class:`~guichet.plugins.api.Response` answers the request and the rest are skipped.
  A hook that returns an awaitable suspends the chain; it resumes where it stopped when
  the awaitable is done (unless the client went away meanwhile).
* When an access hook authenticates a consumer and some plugins are scoped to consumers,
  the rest of the access phase and every later phase use the consumer's chain.
* Then ``upstream_request`` hooks run, and the request goes to the balancer.
* ``response_headers`` hooks run on every answer, the upstream's or the gateway's own
  (a 401 from key-auth gets its CORS headers); ``response_body`` hooks on each chunk of
  the upstream's body; ``log`` hooks once the exchange is over, however it ended.
* A hook that raises is a fault: the request gets a 500 (when nothing was sent yet) and
  the error is logged with the route and the plugin name. ``PayloadTooLarge`` (from
  ``read_body``) is not a fault: it answers 413.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from guichet.errors import ClientError
from guichet.plugins.api import ErrorResponse, Response
from guichet.plugins.chain import Chain, sort_key
from guichet.plugins.request import Request, ResponseHead
from guichet.server.states import DONE

if TYPE_CHECKING:
    from guichet.server.exchange import Exchange

log = logging.getLogger("guichet.plugins")

REWRITE, ACCESS = 0, 1
_PENDING: set["asyncio.Task[None]"] = set()


def start(ex: "Exchange", chain: Chain) -> None:
    """Run the request phases of ``chain`` for ``ex`` (routed, head complete)."""
    ex.chain = chain
    ex.req = Request(ex)
    _run(ex, ACCESS if not chain.rewrite else REWRITE, 0)


def _run(ex: "Exchange", phase: int, index: int) -> None:
    req = ex.req
    hooks = ex.chain.access if phase == ACCESS else ex.chain.rewrite
    while True:
        while index < len(hooks):
            hook = hooks[index]
            index += 1
            consumer = req.consumer
            try:
                result = hook(req)
            except Exception as exc:  # noqa: BLE001 - a plugin's fault, one request's 500
                _fault(ex, hook, exc)
                return
            if result is not None:
                if isinstance(result, Response):
                    answer(ex, result)
                else:
                    task = ex.client.rt.loop.create_task(_resume(ex, phase, index, hook, result))
                    _PENDING.add(task)  # held until done: a task nobody holds may vanish
                    task.add_done_callback(_PENDING.discard)
                return
            if req.consumer is not consumer and phase == ACCESS:
                index = _switch_chain(ex, hook, index)
                hooks = ex.chain.access
        if phase == ACCESS:
            break
        phase, index, hooks = ACCESS, 0, ex.chain.access
    if ex.chain.upstream_request:
        _upstream_request(ex)
    else:
        ex.client.proceed(ex)


def _switch_chain(ex: "Exchange", hook: Callable[..., Any], index: int) -> int:
    """The consumer became known: go on with the consumer's chain, if it differs."""
    snap = ex.snapshot
    if not snap.chains.consumer_scoped:
        return index
    consumer = ex.req.consumer
    new = snap.chains.chain(ex.match.route, ex.client.scheme, consumer.id if consumer else None)
    if new is ex.chain:
        return index
    ex.chain = new
    return new.resume_index(sort_key(hook.__self__))


async def _resume(ex: "Exchange", phase: int, index: int, hook: Callable[..., Any],
                  awaitable: Awaitable[Any]) -> None:
    consumer = ex.req.consumer
    try:
        result = await awaitable
    except Exception as exc:  # noqa: BLE001
        if ex.state == DONE or ex.client.closed:
            return
        _fault(ex, hook, exc)
        return
    if ex.state == DONE or ex.client.closed:
        return
    try:
        if isinstance(result, Response):
            answer(ex, result)
            return
        if ex.req.consumer is not consumer and phase == ACCESS:
            index = _switch_chain(ex, hook, index)
        _run(ex, phase, index)
    except Exception:  # noqa: BLE001 - never lose a request to a fault of ours
        log.exception("internal error while running plugins")
        if ex.state != DONE and not ex.client.closed:
            ex.client.respond_error(ex, 500, "An unexpected error occurred", close=True)


def _upstream_request(ex: "Exchange") -> None:
    req = ex.req
    for hook in ex.chain.upstream_request:
        try:
            hook(req)
        except Exception as exc:  # noqa: BLE001
            _fault(ex, hook, exc)
            return
    ex.client.proceed(ex)


def _fault(ex: "Exchange", hook: Callable[..., Any], exc: Exception) -> None:
    if isinstance(exc, ClientError):
        ex.client.respond_error(ex, exc.status, exc.message, close=True)
        return
    plugin = getattr(hook, "__self__", None)
    route = ex.match.route if ex.match is not None else None
    log.error("plugin %r failed in %s on route %r (request %s)",
              getattr(plugin, "name", "?"), getattr(hook, "__name__", "?"),
              route.name or route.id if route is not None else None, ex.rid(),
              exc_info=exc)
    ex.client.respond_error(ex, 500, "An unexpected error occurred")


# ---------------------------------------------------------------------- answers
def answer(ex: "Exchange", response: Response) -> None:
    """Send a plugin's own answer (the request does not reach the upstream)."""
    if isinstance(response, ErrorResponse):
        headers = [(n.encode("latin-1"), str(v).encode("latin-1")) for n, v in response.headers]
        ex.client.respond_error(ex, response.status, response.message, extra=tuple(headers))
        return
    headers = list(response.headers)
    if response.content_type:
        headers.insert(0, ("Content-Type", response.content_type))
    ex.client.respond_local(ex, response.status, headers, response.body)


def run_response_headers(ex: "Exchange", head: ResponseHead) -> None:
    """Run the chain's response_headers hooks on ``head``; a failing hook is logged and
    skipped (the answer is already decided)."""
    req = ex.req
    for hook in ex.chain.response_headers:
        try:
            hook(req, head)
        except Exception:  # noqa: BLE001
            _log_hook_failure(ex, hook)
    ex.resp_head = head


def run_response_body(ex: "Exchange", chunk: bytes, last: bool) -> bytes:
    req = ex.req
    head = ex.resp_head
    for hook in ex.chain.response_body:
        try:
            chunk = hook(req, head, chunk, last)
        except Exception:  # noqa: BLE001
            _log_hook_failure(ex, hook)
    return chunk


def run_log(ex: "Exchange") -> None:
    chain = ex.chain
    if chain is None or not chain.log or ex.logged:
        return
    ex.logged = True
    head = ex.resp_head
    if head is None:
        head = ResponseHead(ex.resp_status or 0, [], local=not ex.resp_status)
    req = ex.req
    for hook in chain.log:
        try:
            hook(req, head)
        except Exception:  # noqa: BLE001
            _log_hook_failure(ex, hook)


def _log_hook_failure(ex: "Exchange", hook: Callable[..., Any]) -> None:
    plugin = getattr(hook, "__self__", None)
    route = ex.match.route if ex.match is not None else None
    log.exception("plugin %r failed in %s on route %r (request %s)",
                  getattr(plugin, "name", "?"), getattr(hook, "__name__", "?"),
                  route.name or route.id if route is not None else None, ex.rid())

