"""Responses the gateway writes itself (errors, redirects, status pages).

Every error the gateway generates has a JSON body ``{"message": ..., "request_id": ...}``
(GUARANTEES.md §12): no stack trace, no version string. Messages are Kong's where Kong
has one for the same situation.
"""

from __future__ import annotations

import os
from http import HTTPStatus
from itertools import count

import orjson

SERVER_HEADER = b"guichet"

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode("latin-1") for s in HTTPStatus}
_REASONS.setdefault(426, b"Upgrade Required")
_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n`` for any status, cached."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
        if len(_STATUS_LINES) < 1000:
            _STATUS_LINES[status] = line
    return line


class RequestIds:
    """Per-process request ids: a random prefix plus a counter; cheap and unique."""

    __slots__ = ("_prefix", "_counter")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):010x}"


REQUEST_IDS = RequestIds()


def render(
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json; charset=utf-8",
    keep_alive: bool = True,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    head_only: bool = False,
) -> bytes:
    parts = [status_line(status), b"Content-Type: ", content_type, b"\r\nContent-Length: ",
             str(len(body)).encode(), b"\r\nServer: ", SERVER_HEADER, b"\r\n"]
    for name, value in extra:
        parts += [name, b": ", value, b"\r\n"]
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def error_response(
    status: int,
    message: str,
    request_id: str | None = None,
    *,
    keep_alive: bool = True,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    head_only: bool = False,
) -> bytes:
    """A complete HTTP/1.1 error response with Kong's JSON shape plus the request id."""
    rid = request_id or REQUEST_IDS.next()
    body = orjson.dumps({"message": message, "request_id": rid})
    return render(status, body, keep_alive=keep_alive,
                  extra=((b"X-Request-Id", rid.encode()),) + extra, head_only=head_only)


def render_local(status: int, headers: list[tuple[str, str]], body: bytes, *,
                 keep_alive: bool = True, head_only: bool = False) -> bytes:
    """An answer the gateway makes from (name, value) strings (a plugin's, or an error
    seen by response_headers plugins). Framing is the gateway's: any Content-Length,
    Transfer-Encoding or Connection in ``headers`` is dropped. Raises ValueError for a
    header that would split the response."""
    from guichet.server.headers import render_pairs  # headers imports nothing from here

    kept = [(n, v) for n, v in headers
            if n.lower() not in ("content-length", "transfer-encoding", "connection")]
    parts = [status_line(status), render_pairs(kept)]
    if status >= 200 and status not in (204, 304):
        parts.append(b"Content-Length: %d\r\n" % len(body))
    parts.append(b"Server: " + SERVER_HEADER + b"\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only and status not in (204, 304):
        parts.append(body)
    return b"".join(parts)
