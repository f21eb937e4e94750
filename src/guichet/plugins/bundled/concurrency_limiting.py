"""concurrency-limiting: at most ``limit`` requests in flight at once, a bounded queue for
the next ones, 503 with Retry-After past it (guichet's own plugin; Kong has none. The
idea is Envoy's circuit-breaker ``max_requests`` / ``max_pending_requests`` and APISIX's
``limit-conn``). Priority 907: just after rate-limiting (910), so a request refused by a
rate limit never takes a slot; access and log phases.

Rules:

* A request takes one of ``limit`` slots of its identifier (``limit_by``: the same kinds
  and the same fallback to the client address as rate-limiting; default ``service``, so a
  route's or a service's upstream is protected as a whole) for as long as its exchange
  lasts: from the access phase until the answer was sent, or the client went away. The
  slots belong to one node (every worker of it: the engine's ``local`` backend) and to
  one plugin entity (the key holds the plugin's id).
* When every slot is taken, the request waits in a queue of at most ``queue`` requests,
  first come first served, for at most ``queue_timeout`` seconds. Past the queue, or
  after waiting that long, the answer is ``error_code`` (503) with ``error_message`` and
  ``Retry-After: <retry_after>``. So is a request the engine cannot place (node table
  full): the limit fails closed.
* The slot is given back exactly once, in the log phase (which runs once however the
  exchange ended: answered, refused by a later plugin, failed, or abandoned by the
  client). A request whose client went away while it waited leaves the queue at once, and
  a slot granted to it after that is given back at once.
* A WebSocket holds its slot for the life of its tunnel (the log phase runs when the
  tunnel ends): it is load on the upstream like any request in flight. Handshake headers
  therefore cannot be used to slip past the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Annotated, Any, Awaitable, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from guichet.limits import CountersUnavailable
from guichet.plugins.api import Plugin, PluginConfig, Response, error
from guichet.plugins.bundled.correlation_id import HeaderName
from guichet.plugins.bundled.rate_limiting import (LONG_IDENTIFIER, _check_path,
                                                   identifier_getter, plugin_key)

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request, ResponseHead

CTX_LEASE = "concurrency-limiting.lease"
CTX_WAITER = "concurrency-limiting.waiter"
CTX_DONE = "concurrency-limiting.done"
KEY_CACHE_SIZE = 4096
DEFAULT_MESSAGE = "Too many concurrent requests"


class ConcurrencyLimitingConfig(PluginConfig):
    limit: int = Field(gt=0)
    queue: int = Field(default=0, ge=0)
    queue_timeout: float = Field(default=1.0, gt=0, le=3600)  # seconds
    limit_by: Literal["consumer", "credential", "ip", "service", "header", "path"] = "service"
    header_name: HeaderName | None = None
    path: Annotated[str, AfterValidator(_check_path)] | None = None
    error_code: int = Field(default=503, ge=100, le=599)
    error_message: str = DEFAULT_MESSAGE
    retry_after: int = Field(default=1, ge=1)  # seconds, in Retry-After

    @field_validator("queue_timeout", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _required(self) -> "ConcurrencyLimitingConfig":
        if self.limit_by == "header" and self.header_name is None:
            raise ValueError("header_name: required field missing (limit_by is header)")
        if self.limit_by == "path" and self.path is None:
            raise ValueError("path: required field missing (limit_by is path)")
        return self


class ConcurrencyLimiting(Plugin):
    name = "concurrency-limiting"
    priority = 907
    Config = ConcurrencyLimitingConfig

    def __init__(self, config: ConcurrencyLimitingConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.counters = env.counters.local()
        self.identify = identifier_getter(config.limit_by, config.header_name, config.path)
        self.limit = config.limit
        self.queue = config.queue
        self.timeout = config.queue_timeout
        self.error_code = config.error_code
        self.error_message = config.error_message
        self.refusal_headers = [("Retry-After", str(config.retry_after))]
        self._prefix: str | None = None
        self._keys: dict[str, str] = {}

    def key_for(self, req: "Request", identifier: str) -> str:
        key = self._keys.get(identifier)
        if key is None:
            prefix = self._prefix
            if prefix is None:
                prefix = self._prefix = "cc:" + plugin_key(self) + ":"
            ident = identifier if len(identifier) <= LONG_IDENTIFIER else \
                "sha256:" + hashlib.sha256(identifier.encode("utf-8", "surrogatepass")).hexdigest()
            key = prefix + ident
            if len(self._keys) >= KEY_CACHE_SIZE:
                self._keys.clear()
            self._keys[identifier] = key
        return key

    def refusal(self) -> Response:
        return error(self.error_code, self.error_message, self.refusal_headers)

    def access(self, req: "Request") -> "Response | Awaitable[Response | None] | None":
        key = self.key_for(req, self.identify(req))
        try:
            result = self.counters.acquire(key, self.limit, self.queue, self.timeout)
        except CountersUnavailable:
            return self.refusal()
        if result is None:
            return self.refusal()
        if hasattr(result, "release"):
            req.ctx[CTX_LEASE] = result
            return None
        return self._wait(req, result)

    async def _wait(self, req: "Request", pending: Awaitable[Any]) -> Response | None:
        ctx = req.ctx
        if ctx.get(CTX_DONE):  # the exchange ended before this started: leave the queue
            await abandon(pending)
            return None
        ctx[CTX_WAITER] = asyncio.current_task()
        try:
            lease = await pending
        except CountersUnavailable:
            return self.refusal()
        finally:
            ctx.pop(CTX_WAITER, None)
        if lease is None:
            return self.refusal()
        if ctx.get(CTX_DONE):  # granted after the client went away: give it back now
            lease.release()
            return None
        ctx[CTX_LEASE] = lease
        return None

    def log(self, req: "Request", resp: "ResponseHead") -> None:
        """The exchange is over: give the slot back, or leave the queue."""
        ctx = req.ctx
        ctx[CTX_DONE] = True
        lease = ctx.pop(CTX_LEASE, None)
        if lease is not None:
            lease.release()
        waiter = ctx.pop(CTX_WAITER, None)
        if waiter is not None:
            waiter.cancel()  # still queued: leave the queue now


async def abandon(pending: Awaitable[Any]) -> None:
    """Give up a wait nobody needs any more. The engine took the queue place before it
    returned the awaitable, and gives it back in the awaitable's own cleanup: so start it,
    then cancel it (a coroutine closed before it started would run no cleanup); a slot
    granted meanwhile is given back."""
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0)  # it runs up to its first wait
    task.cancel()
    try:
        lease = await task
    except (asyncio.CancelledError, CountersUnavailable):
        return
    if lease is not None:
        lease.release()
