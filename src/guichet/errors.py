"""Every error guichet raises, in one hierarchy.

::

    GuichetError                      (internal, 500)
    ├── ConfigError                   (config: a document failed to load; carries every issue)
    ├── ClientError                   (client: the request is at fault; closes the connection)
    │   ├── BadRequest               400
    │   ├── MethodNotAllowed         405 (CONNECT, TRACE)
    │   ├── RequestTimeout           408
    │   ├── PayloadTooLarge          413
    │   ├── URITooLong               414
    │   ├── HeaderFieldsTooLarge     431
    │   └── VersionNotSupported      505
    └── UpstreamError                 (upstream: the service behind us is at fault)
        ├── UpstreamConnectError     502, retry safe (nothing was sent)
        ├── UpstreamProtocolError    502 (bad status line, bad framing, oversized head)
        ├── UpstreamReset            502 (closed or reset before a complete response)
        ├── UpstreamTimeout          504
        └── NoHealthyUpstream        503 with Retry-After

Foreign exceptions (``OSError``, ``asyncio.TimeoutError``, httptools parser errors) are
converted into these at one boundary each: the client codec (``guichet.server.protocol``)
and the upstream exchange (``guichet.server.upstream``). The client never sees a traceback:
``guichet.server.responses.error_response`` renders ``{"message": ..., "request_id": ...}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guichet.config.model import ConfigIssue


class GuichetError(Exception):
    status = 500
    message = "An unexpected error occurred"
    origin = "internal"
    retry_safe = False

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


class ConfigError(GuichetError):
    origin = "config"

    def __init__(self, issues: "list[ConfigIssue]") -> None:
        self.issues = list(issues)
        super().__init__(f"{len(self.issues)} configuration error(s)")

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)


class ClientError(GuichetError):
    origin = "client"
    status = 400
    message = "Bad request"


class BadRequest(ClientError):
    status = 400
    message = "Bad request"


class MethodNotAllowed(ClientError):
    status = 405
    message = "Method not allowed"


class VersionNotSupported(ClientError):
    status = 505
    message = "HTTP version not supported"


class RequestTimeout(ClientError):
    status = 408
    message = "Request timeout"


class PayloadTooLarge(ClientError):
    status = 413
    message = "Request size limit exceeded"


class URITooLong(ClientError):
    status = 414
    message = "URI too long"


class HeaderFieldsTooLarge(ClientError):
    status = 431
    message = "Request header fields too large"


class UpstreamError(GuichetError):
    origin = "upstream"
    status = 502
    message = "An invalid response was received from the upstream server"


# Kong answers every 502 with the same message; so does guichet (the log says which).
class UpstreamConnectError(UpstreamError):
    retry_safe = True


class UpstreamProtocolError(UpstreamError):
    pass


class UpstreamReset(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    status = 504
    message = "The upstream server is timing out"


class NoHealthyUpstream(UpstreamError):
    status = 503
    message = "failure to get a peer from the ring-balancer"
    retry_after = 1
