"""Raw-socket HTTP/1.1 for tests that must send malformed bytes and see exactly what comes back.

``RawConnection`` sends bytes as given (nothing is normalised) and reads either one response
(``read_response``, for keep-alive) or everything until the peer closes or a timeout passes
(``read_until_close``), telling apart a clean close (EOF), a reset, and a connection left
open. ``exchange`` is the one-shot form: connect, send, read until close.

``parse_responses`` splits a byte string into the responses it holds, framing each by
Content-Length, chunked encoding, or the end of the data; the parsing is deliberately
minimal and forgiving so a test sees what arrived even when it is wrong.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class RawResponse:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""

    def header_values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Exchange:
    """What came back on one connection."""

    data: bytes
    closed: bool  # the peer closed (EOF or reset) before the timeout
    reset: bool  # the close was a reset
    elapsed: float
    responses: list[RawResponse] = field(default_factory=list)

    @property
    def response(self) -> RawResponse:
        assert self.responses, f"no response received; raw bytes: {self.data[:500]!r}"
        return self.responses[0]


class _Incomplete(Exception):
    pass


def _parse_one(data: bytes, head_request: bool, at_eof: bool) -> tuple[RawResponse, int]:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise _Incomplete
    head = data[:end]
    lines = head.split(b"\r\n")
    parts = lines[0].decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"bad status line {lines[0]!r}")
    version, status = parts[0], int(parts[1])
    reason = parts[2] if len(parts) > 2 else ""
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    response = RawResponse(status, reason, version, headers, b"", head + b"\r\n\r\n")
    pos = end + 4
    if head_request or status in (204, 304) or 100 <= status < 200:
        return response, pos
    te = response.header("transfer-encoding")
    cl = response.header("content-length")
    if te is not None and "chunked" in te.lower():
        body = bytearray()
        while True:
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                raise _Incomplete
            size = int(data[pos:nl].split(b";")[0], 16)
            pos = nl + 2
            if size == 0:
                trailer_end = data.find(b"\r\n", pos)
                while trailer_end > pos:  # skip trailer fields
                    pos = trailer_end + 2
                    trailer_end = data.find(b"\r\n", pos)
                if trailer_end < 0:
                    raise _Incomplete
                pos = trailer_end + 2
                break
            if len(data) < pos + size + 2:
                raise _Incomplete
            body += data[pos:pos + size]
            pos += size + 2
        response.body = bytes(body)
        return response, pos
    if cl is not None:
        length = int(cl)
        if len(data) < pos + length:
            raise _Incomplete
        response.body = data[pos:pos + length]
        return response, pos + length
    if not at_eof:
        raise _Incomplete
    response.body = data[pos:]
    return response, len(data)


def parse_responses(data: bytes, head_request: bool = False) -> list[RawResponse]:
    """Every complete response in ``data`` (received up to EOF), in order."""
    responses = []
    while data:
        try:
            response, used = _parse_one(data, head_request, at_eof=True)
        except _Incomplete:
            break
        responses.append(response)
        data = data[used:]
    return responses


class RawConnection:
    """A client socket that sends exactly the bytes it is given."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.closed = False
        self.reset = False

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send; False when the peer had already gone away."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True
            return False

    def _recv(self, deadline: float) -> bool:
        """Read once; False on timeout. Sets ``closed`` on EOF or reset."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return False
        except ConnectionResetError:
            self.closed = self.reset = True
            return True
        if not data:
            self.closed = True
        self.buffer += data
        return True

    def read_response(self, timeout: float = 5.0, head_request: bool = False) -> RawResponse:
        """Read exactly one response (leaving later bytes buffered)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                response, used = _parse_one(bytes(self.buffer), head_request, self.closed)
            except _Incomplete:
                if self.closed:
                    raise ConnectionError(
                        f"closed before a complete response: {bytes(self.buffer[:500])!r}")
                if not self._recv(deadline):
                    raise TimeoutError(
                        f"no complete response in {timeout}s: {bytes(self.buffer[:500])!r}")
                continue
            del self.buffer[:used]
            return response

    def read_until_close(self, timeout: float = 5.0) -> bytes:
        """Everything the peer sends until it closes or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not self.closed and self._recv(deadline):
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def wait_closed(self, timeout: float) -> bool:
        """True when the peer closes within ``timeout`` (bytes received meanwhile are kept)."""
        deadline = time.monotonic() + timeout
        while not self.closed and self._recv(deadline):
            pass
        return self.closed


def exchange(port: int, payload: bytes | Iterable[bytes], *, timeout: float = 3.0,
             pause: float = 0.0, head_request: bool = False) -> Exchange:
    """Connect, send ``payload`` (pieces ``pause`` seconds apart), read until close."""
    pieces = [payload] if isinstance(payload, bytes) else list(payload)
    started = time.monotonic()
    with RawConnection(port, timeout=timeout) as conn:
        for i, piece in enumerate(pieces):
            if i and pause:
                time.sleep(pause)
            if not conn.send(piece):
                break
        data = conn.read_until_close(timeout)
        return Exchange(data, conn.closed, conn.reset, time.monotonic() - started,
                        parse_responses(data, head_request))
