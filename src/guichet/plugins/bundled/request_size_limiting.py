"""request-size-limiting: refuse request bodies larger than a limit (Kong's
``request-size-limiting``, priority 951, access phase).

Rules (Kong 3.x's handler):

* The limit is ``allowed_payload_size`` (default 128) times the ``size_unit``:
  ``megabytes`` (default, 2^20 bytes), ``kilobytes`` (2^10) or ``bytes``.
* A request with a numeric Content-Length is judged on it, without reading the body.
* Without one: when ``require_content_length`` is true and the body is not chunked, 411
  ``A valid Content-Length header is required``. A chunked body is counted as it arrives,
  and refused as soon as it passes the limit. No body at all goes on.
* Over the limit: 413 ``Request size limit exceeded``, or 417 with the same message when
  the client sent ``Expect: 100-continue`` (so it knows not to send the body).

Differences from Kong, and why:

* Counting a chunked body means holding it (``req.read_body``) until it is complete or
  over the limit. The gateway never holds more than ``client_body_buffer_size`` (8 MiB by
  default, GUARANTEES.md §2) for a plugin, so a chunked body is refused with 413 once it
  passes the smaller of the plugin's limit and that setting; raise the setting to hold
  more. Bodies with a Content-Length are not held and have no such cap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Literal

from pydantic import Field

from guichet.errors import PayloadTooLarge
from guichet.plugins.api import Plugin, PluginConfig, Response, error

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

UNIT_BYTES = {"megabytes": 1 << 20, "kilobytes": 1 << 10, "bytes": 1}
SIZE_EXCEEDED = "Request size limit exceeded"
LENGTH_REQUIRED = "A valid Content-Length header is required"
DEFAULT_BODY_BUFFER = 8 * 1024 * 1024


class RequestSizeLimitingConfig(PluginConfig):
    allowed_payload_size: int = Field(default=128, ge=0)
    size_unit: Literal["megabytes", "kilobytes", "bytes"] = "megabytes"
    require_content_length: bool = False


def allowed_bytes(size: int, unit: str) -> int:
    """The limit in bytes for ``size`` ``unit`` (Kong's binary units)."""
    return size * UNIT_BYTES[unit]


class RequestSizeLimiting(Plugin):
    name = "request-size-limiting"
    priority = 951
    Config = RequestSizeLimitingConfig

    def __init__(self, config: RequestSizeLimitingConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.limit = allowed_bytes(config.allowed_payload_size, config.size_unit)
        self.require_content_length = config.require_content_length
        buffer_cap = getattr(env.settings, "client_body_buffer_size", DEFAULT_BODY_BUFFER)
        self.hold_limit = min(self.limit, buffer_cap)

    def access(self, req: "Request") -> "Response | Awaitable[Response | None] | None":
        length = req.content_length
        if length is not None:
            return self._too_large(req) if length > self.limit else None
        if not _is_chunked(req):
            if self.require_content_length:
                return error(411, LENGTH_REQUIRED)
            if not req.has_body:
                return None
        return self._count_body(req)

    async def _count_body(self, req: "Request") -> Response | None:
        """Hold the body until it is complete (it fits) or over the limit (refused)."""
        try:
            await req.read_body(self.hold_limit)
        except PayloadTooLarge:
            return self._too_large(req)
        return None

    @staticmethod
    def _too_large(req: "Request") -> Response:
        expect = req.headers.get("expect")
        if expect is not None and expect.strip().lower() == "100-continue":
            return error(417, SIZE_EXCEEDED)
        return error(413, SIZE_EXCEEDED)


def _is_chunked(req: "Request") -> bool:
    value = req.headers.get("transfer-encoding")
    return value is not None and value.strip().lower() == "chunked"
