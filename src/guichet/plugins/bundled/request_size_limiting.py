"""request-size-limiting: refuse request bodies larger than a limit (Kong's
``request-size-limiting``, priority 951, access phase).

Rules (Kong 3.x's handler):

* The limit is ``allowed_payload_size`` (default 128) times the ``size_unit``:
  ``megabytes`` (default, 2^20 bytes), ``kilobytes`` (2^10) or ``bytes``.
* A request with a numeric Content-Length is judged on it, without reading the body.
* Without one: when ``require_content_length`` is true and the body is not chunked, 411
  ``A valid Content-Length header is required``. A chunked body is counted as it streams
  to the upstream (``req.limit_body``: nothing is held) and refused with 413 as soon as
  it passes the limit; the connection is then closed (the rest of the body cannot be told
  from a next request), and if the upstream had already begun to answer, that answer is
  cut. No body at all goes on.
* Over the limit: 413 ``Request size limit exceeded``, or 417 with the same message when
  the client sent ``Expect: 100-continue`` (so it knows not to send the body).

Difference from Kong: Kong reads a chunked body whole before judging it; guichet judges
it while it streams, so a large chunked body under the limit is never held in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from guichet.errors import PayloadTooLarge
from guichet.plugins.api import Plugin, PluginConfig, Response, error

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

UNIT_BYTES = {"megabytes": 1 << 20, "kilobytes": 1 << 10, "bytes": 1}
SIZE_EXCEEDED = "Request size limit exceeded"
LENGTH_REQUIRED = "A valid Content-Length header is required"


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

    def access(self, req: "Request") -> "Response | None":
        length = req.content_length
        if length is not None:
            return self._too_large(req) if length > self.limit else None
        if not _is_chunked(req):
            if self.require_content_length:
                return error(411, LENGTH_REQUIRED)
            if not req.has_body:
                return None
        try:
            req.limit_body(self.limit)  # counted while it streams: 413 past the limit
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
