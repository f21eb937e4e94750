"""request-termination: answer requests with a fixed response instead of proxying them
(Kong's ``request-termination``, priority 2, access phase: it runs after authentication,
ACL and rate limiting, so those still refuse first).

Rules (Kong 3.x's handler and schema):

* ``status_code`` (100-599, default 503). ``message`` and ``body`` exclude each other;
  ``content_type`` requires ``body``; ``echo`` excludes ``body`` and ``content_type``.
* With ``trigger`` (a header name), only requests carrying that header, or a query
  argument of that name (with or without a value), are terminated; the others go on.
* ``echo``: the answer is JSON describing the request: ``message``, ``kong`` (node id,
  worker pid, hostname), ``request`` (scheme, host, port, headers, query, body parsed
  from JSON or a form when it is one, raw_body, method, path, uri_captures),
  ``matched_route`` and ``matched_service``. Repeated headers and query arguments are
  lists; a query argument without "=" is ``true``. For debugging: it shows the client its
  own request, credentials included.
* ``body``: sent as is, with ``content_type`` (``text/plain; charset=utf-8`` when unset;
  Kong leaves the type to nginx's default).
* Otherwise: JSON ``{"message": ...}`` with ``message``, or Kong's default message for
  the status (401, 404, 405, 500, 502, 503); no body for another status without a
  message. A message answer is the gateway's error format, so it carries ``request_id``
  too (GUARANTEES.md §12).
* A 1xx, 204 or 304 ``status_code`` is answered without a body, whatever the other
  fields say (HTTP forbids one there; nginx drops it in Kong).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING, Any, Awaitable
from urllib.parse import parse_qs, unquote_plus

import orjson
from pydantic import Field, model_validator

from guichet.errors import PayloadTooLarge
from guichet.plugins.api import Plugin, PluginConfig, Response, error
from guichet.plugins.bundled.correlation_id import HeaderName, HeaderValue, addressed_host_port

if TYPE_CHECKING:
    from guichet.config.model import Route, Service
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

DEFAULT_MESSAGES = {
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    500: "An unexpected error occurred",
    502: "Bad Gateway",
    503: "Service unavailable",
}
DEFAULT_BODY_BUFFER = 8 * 1024 * 1024
NODE_ID = str(uuid.uuid4())  # one per gateway process tree (drawn before workers fork)

_ROUTE_FIELDS = ("id", "name", "protocols", "methods", "hosts", "paths", "headers", "snis",
                 "strip_path", "preserve_host", "regex_priority", "path_handling",
                 "https_redirect_status_code", "request_buffering", "response_buffering",
                 "tags")
_SERVICE_FIELDS = ("id", "name", "protocol", "host", "port", "path", "retries",
                   "connect_timeout", "write_timeout", "read_timeout", "enabled", "tags")


def _present(value: str | None) -> bool:
    return isinstance(value, str) and len(value) > 0


class RequestTerminationConfig(PluginConfig):
    status_code: int = Field(default=503, ge=100, le=599)
    message: str | None = None
    content_type: HeaderValue | None = None
    body: str | None = None
    echo: bool = False
    trigger: HeaderName | None = None

    @model_validator(mode="after")
    def _combinations(self) -> "RequestTerminationConfig":
        if _present(self.message) and (_present(self.content_type) or _present(self.body)):
            raise ValueError("message cannot be used with content_type or body")
        if _present(self.content_type) and not _present(self.body):
            raise ValueError("content_type requires a body")
        if self.echo and (_present(self.content_type) or _present(self.body)):
            raise ValueError("echo cannot be used with content_type and body")
        return self


class RequestTermination(Plugin):
    name = "request-termination"
    priority = 2
    Config = RequestTerminationConfig

    def __init__(self, config: RequestTerminationConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.status = config.status_code
        self.message = config.message if config.message is not None \
            else DEFAULT_MESSAGES.get(config.status_code)
        self.trigger = config.trigger
        self.trigger_header = config.trigger.lower().replace("_", "-") if config.trigger else None
        self.echo = config.echo
        self.body = config.body
        self.content_type = config.content_type
        # 1xx, 204 and 304 answers have no body (whatever message, body or echo says)
        self.bodiless = self.status < 200 or self.status in (204, 304)
        self.body_cap = getattr(env.settings, "client_body_buffer_size", DEFAULT_BODY_BUFFER)

    def triggered(self, req: "Request") -> bool:
        if self.trigger is None:
            return True
        return self.trigger_header in req.headers or self.trigger in req.query_args

    def access(self, req: "Request") -> "Response | Awaitable[Response] | None":
        if not self.triggered(req):
            return None
        if self.bodiless:
            return Response(self.status)
        if self.echo:
            return self._echo(req)
        if self.body is not None:
            return Response(self.status, self.body, content_type=self.content_type)
        if self.message is not None:
            return error(self.status, self.message)
        return Response(self.status)

    async def _echo(self, req: "Request") -> Response:
        try:
            raw = await req.read_body(self.body_cap)
        except PayloadTooLarge:
            return error(413, "Request size limit exceeded")
        return Response(self.status, echo_document(req, self.message, raw))


# ---------------------------------------------------------------------- echo
def echo_document(req: "Request", message: str | None, raw_body: bytes) -> dict[str, Any]:
    """What ``echo`` answers: Kong's document, field for field."""
    raw_text = raw_body.decode("utf-8", errors="replace")
    return {
        "message": message,
        "kong": {"node_id": NODE_ID, "worker_pid": os.getpid(),
                 "hostname": socket.gethostname()},
        "request": {
            "scheme": req.scheme,
            "host": req.host,
            "port": addressed_host_port(req)[1],
            "headers": _headers(req),
            "query": query_table(req.query),
            "body": parse_body(req.headers.get("content-type"), raw_body),
            "raw_body": raw_text,
            "method": req.method,
            "path": req.path,
            "uri_captures": _captures(req),
        },
        "matched_route": _entity(req.route, _ROUTE_FIELDS),
        "matched_service": _entity(req.service, _SERVICE_FIELDS),
    }


def _headers(req: "Request") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in req.headers:
        values = req.header_values(name)
        out[name] = values[0] if len(values) == 1 else values
    return out


def query_table(query: str) -> dict[str, Any]:
    """Kong's ``get_query``: name -> value, a list for repeats, ``True`` without "="."""
    out: dict[str, Any] = {}
    for part in query.split("&"):
        if not part:
            continue
        name, eq, value = part.partition("=")
        key = unquote_plus(name)
        item: Any = unquote_plus(value) if eq else True
        if key in out:
            current = out[key]
            out[key] = (current if isinstance(current, list) else [current]) + [item]
        else:
            out[key] = item
    return out


def parse_body(content_type: str | None, raw: bytes) -> Any:
    """The body as Kong's ``get_body`` sees it: JSON or a URL-encoded form; else None."""
    if not raw or not content_type:
        return None
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json":
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    if kind == "application/x-www-form-urlencoded":
        form = parse_qs(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
        return {k: v[0] if len(v) == 1 else v for k, v in form.items()}
    return None


def _captures(req: "Request") -> dict[str, Any]:
    captures = req.uri_captures
    return {str(k): v for k, v in captures.items()} if captures else {}


def _entity(entity: "Route | Service | None", fields: tuple[str, ...]) -> dict[str, Any] | None:
    if entity is None:
        return None
    out: dict[str, Any] = {}
    for name in fields:
        value = getattr(entity, name, None)
        if name == "headers" and isinstance(value, tuple):
            value = {header: list(values) for header, values in value}
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[name] = value
    service_id = getattr(entity, "service_id", None)
    if service_id is not None:
        out["service"] = {"id": service_id}
    return out
