"""A raw asyncio HTTP/1.1 upstream for integration tests, with endpoints that misbehave.

Each ``UpstreamServer`` runs its own event loop in a background thread of the pytest process,
bound to 127.0.0.1 on a free port. It records everything that reaches it, so a test can
assert exactly what the gateway forwarded:

- every connection (``ConnectionRecord``): its id, the raw bytes received (first 1 MiB),
  the byte count, and whether and when the peer closed it;
- every request (``RecordedRequest``): method, target, version, header list as raw
  ``(name, value)`` byte pairs in arrival order, body (first 1 MiB), body length and sha256,
  chunk-size lines and trailers when the body was chunked, and the raw bytes of the request.

Endpoints are matched on the end of the path, so a service path or a route prefix in front
of them does not matter; any other path is ``/echo``:

- ``/echo`` (any method): JSON with the method, target, headers, body length and sha256;
- ``/status/<code>``, ``/delay/<ms>`` (answer after a delay), ``/bytes/<n>`` (n pattern
  bytes with Content-Length), ``/chunked/<n>`` (the same bytes, chunked);
- ``/response-headers?Name=value&...``: answers with those headers (hop-by-hop included);
- ``/bad-status-line``, ``/cl-and-te`` (Content-Length and Transfer-Encoding together),
  ``/huge-header`` (a 256 KiB header): a broken answer, then the connection stays open, so a
  gateway that reuses it is seen (its next request lands on the same connection id);
- ``/close-before-response`` (FIN without an answer), ``/reset`` (RST via SO_LINGER 0),
  ``/truncated`` (a head announcing 1000 bytes, 100 of them, then RST).

Keep-alive is honoured (HTTP/1.1 unless ``Connection: close``). Every normal answer carries
``X-Upstream-Id``. ``pattern_bytes(n)`` and ``pattern_sha256(n)`` give the bytes that
``/bytes/<n>`` and ``/chunked/<n>`` send, for checking a download end to end.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

RECORD_CAP = 1 << 20  # bytes kept per connection and per request body
_BLOCK = random.Random(20240601).randbytes(1 << 16)
_ENDPOINT = re.compile(
    r"(?:^|/)(?:(status|delay|bytes|chunked)/(\d+)|(bad-status-line|cl-and-te|huge-header|"
    r"close-before-response|reset|truncated|response-headers))/?$"
)
_HEX = re.compile(rb"[0-9a-fA-F]+")
_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 304: "Not Modified",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}


def pattern_bytes(n: int) -> bytes:
    """The n bytes ``/bytes/<n>`` and ``/chunked/<n>`` answer with."""
    whole, rest = divmod(n, len(_BLOCK))
    return _BLOCK * whole + _BLOCK[:rest]


def pattern_chunks(n: int, size: int = len(_BLOCK)):
    """The same bytes as ``pattern_bytes(n)``, yielded in pieces of ``size`` (divides 64 KiB)."""
    assert len(_BLOCK) % size == 0
    sent = 0
    while sent < n:
        offset = sent % len(_BLOCK)
        piece = _BLOCK[offset: offset + min(size, n - sent)]
        yield piece
        sent += len(piece)


@functools.lru_cache(maxsize=32)
def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_chunks(n):
        digest.update(piece)
    return digest.hexdigest()


@dataclass
class ConnectionRecord:
    conn_id: int
    raw: bytearray = field(default_factory=bytearray)
    bytes_received: int = 0
    body_bytes_sent: int = 0  # by /bytes and /chunked, to tell who stalled in a transfer
    peer_closed: bool = False  # the gateway closed (EOF or reset), not us
    closed: bool = False
    closed_at: float | None = None
    requests: int = 0


@dataclass
class RecordedRequest:
    conn_id: int
    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]
    raw: bytes
    body: bytes = b""
    body_length: int = 0
    body_sha256: str = hashlib.sha256(b"").hexdigest()
    chunk_lines: list[bytes] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path if "://" in self.target else self.target.split("?")[0]

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == wanted]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_names(self) -> set[str]:
        return {k.decode("latin-1").lower() for k, _ in self.headers}


class _BadRequest(Exception):
    pass


class _Reader:
    """Buffered reads over a StreamReader that record every byte on the connection."""

    def __init__(self, reader: asyncio.StreamReader, record: ConnectionRecord) -> None:
        self._reader = reader
        self._record = record
        self._buf = bytearray()
        self.request_raw = bytearray()

    async def _fill(self) -> None:
        try:
            data = await self._reader.read(1 << 16)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            raise EOFError
        rec = self._record
        rec.bytes_received += len(data)
        if len(rec.raw) < RECORD_CAP:
            rec.raw += data[: RECORD_CAP - len(rec.raw)]
        self._buf += data

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        if len(self.request_raw) < RECORD_CAP:
            self.request_raw += out[: RECORD_CAP - len(self.request_raw)]
        return out

    async def until(self, marker: bytes, limit: int) -> bytes:
        while True:
            at = self._buf.find(marker)
            if at >= 0:
                return self._take(at + len(marker))
            if len(self._buf) > limit:
                raise _BadRequest("head too large")
            await self._fill()

    async def exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            await self._fill()
        return self._take(n)

    async def some(self, most: int) -> bytes:
        if not self._buf:
            await self._fill()
        return self._take(min(most, len(self._buf)))


class UpstreamServer:
    """One upstream instance; ``start()`` it, point a service at ``url``, ``stop()`` it."""

    def __init__(self, upstream_id: str = "u1") -> None:
        self.upstream_id = upstream_id
        self.port = 0
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._connections: list[ConnectionRecord] = []
        self._next_conn = 0
        self._accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> "UpstreamServer":
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=512)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"upstream-{self.upstream_id}",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("upstream server did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        self._loop = None

    def __enter__(self) -> "UpstreamServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- what was received -----------------------------------------------------------
    def clear(self) -> None:
        """Forget what was received. Connections still open stay watched (their byte counts
        restart at zero), so bytes a gateway sends later on a pooled connection are seen."""
        with self._lock:
            self._requests.clear()
            self._connections[:] = [c for c in self._connections if not c.closed]
            for record in self._connections:
                record.raw.clear()
                record.bytes_received = 0
                record.body_bytes_sent = 0
                record.requests = 0
            self._accepted = 0

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> list[ConnectionRecord]:
        with self._lock:
            return list(self._connections)

    @property
    def connections_accepted(self) -> int:
        """Connections accepted since the last ``clear()``."""
        with self._lock:
            return self._accepted

    @property
    def bytes_received(self) -> int:
        with self._lock:
            return sum(c.bytes_received for c in self._connections)

    def connection(self, conn_id: int) -> ConnectionRecord:
        with self._lock:
            return next(c for c in self._connections if c.conn_id == conn_id)

    def requests_to(self, path_suffix: str, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests
                if r.path.endswith(path_suffix) and (method is None or r.method == method)]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        with self._lock:
            self._lock.wait_for(lambda: len(self._requests) >= count, timeout)
            return list(self._requests)

    def wait_for_close(self, conn_id: int, timeout: float = 5.0) -> bool:
        """True when the peer (the gateway) closed connection ``conn_id`` within timeout."""
        def closed() -> bool:
            return any(c.conn_id == conn_id and c.peer_closed for c in self._connections)
        with self._lock:
            return self._lock.wait_for(closed, timeout)

    def wait_for_raw(self, marker: bytes, timeout: float = 5.0) -> bool:
        """True when some connection received bytes containing ``marker``."""
        def seen() -> bool:
            return any(marker in c.raw for c in self._connections)
        deadline = time.monotonic() + timeout
        with self._lock:
            while not seen():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.02))
            return True

    def _notify(self) -> None:
        with self._lock:
            self._lock.notify_all()

    # ---- serving ---------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._next_conn += 1
            record = ConnectionRecord(self._next_conn)
            self._connections.append(record)
            self._accepted += 1
        stream = _Reader(reader, record)
        try:
            while True:
                stream.request_raw = bytearray()
                try:
                    request = await self._read_request(stream, record)
                except EOFError:
                    record.peer_closed = True
                    return
                except _BadRequest:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                    await writer.drain()
                    return
                with self._lock:
                    record.requests += 1
                    self._requests.append(request)
                    self._lock.notify_all()
                if not await self._answer(request, writer):
                    return
        except (ConnectionError, OSError):
            record.peer_closed = True
        except asyncio.CancelledError:
            pass
        finally:
            record.closed = True
            record.closed_at = time.monotonic()
            writer.close()
            self._notify()

    async def _read_request(self, stream: _Reader, record: ConnectionRecord) -> RecordedRequest:
        head = await stream.until(b"\r\n\r\n", 1 << 20)
        lines = head[:-4].split(b"\r\n")
        try:
            method, target, version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            raise _BadRequest("request line") from None
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise _BadRequest("header line")
            headers.append((name, value.strip(b" \t")))
        request = RecordedRequest(record.conn_id, method, target, version, headers, b"")
        digest = hashlib.sha256()
        body = bytearray()

        def take(data: bytes) -> None:
            digest.update(data)
            request.body_length += len(data)
            if len(body) < RECORD_CAP:
                body.extend(data[: RECORD_CAP - len(body)])

        te = request.header("transfer-encoding")
        if te is not None and te.lower().endswith("chunked"):
            while True:
                line = await stream.until(b"\r\n", 4096)
                request.chunk_lines.append(line)
                size_text = line.split(b";")[0].strip()
                if not _HEX.fullmatch(size_text) or len(size_text) > 15:
                    raise _BadRequest("chunk size")
                size = int(size_text, 16)
                if size == 0:
                    break
                while size:
                    data = await stream.some(size)
                    take(data)
                    size -= len(data)
                if await stream.exactly(2) != b"\r\n":
                    raise _BadRequest("chunk end")
            while True:
                line = await stream.until(b"\r\n", 1 << 16)
                if line == b"\r\n":
                    break
                name, _, value = line[:-2].partition(b":")
                request.trailers.append((name, value.strip()))
        elif request.header("content-length") is not None:
            length_text = request.header("content-length")
            if not length_text.isdigit() or not length_text.isascii():
                raise _BadRequest("content-length")
            left = int(length_text)
            while left:
                data = await stream.some(left)
                take(data)
                left -= len(data)
        request.body = bytes(body)
        request.body_sha256 = digest.hexdigest()
        request.raw = bytes(stream.request_raw)
        return request

    async def _answer(self, request: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        """Write the answer; False when the connection must end here."""
        keep_alive = request.version == "HTTP/1.1"
        conn_tokens = ",".join(request.header_values("connection")).lower()
        if "close" in conn_tokens:
            keep_alive = False
        elif "keep-alive" in conn_tokens:
            keep_alive = True
        split = urlsplit(request.target)
        found = _ENDPOINT.search(split.path)
        kind = (found.group(1) or found.group(3)) if found else "echo"
        number = int(found.group(2)) if found and found.group(2) else 0
        extra: list[tuple[str, str]] = []
        if kind == "status":
            body = b"" if number in (204, 304) or number < 200 else json.dumps(
                {"status": number, "upstream_id": self.upstream_id}).encode()
            return await self._send(writer, number, extra, body, keep_alive, request)
        if kind == "delay":
            await asyncio.sleep(number / 1000)
            return await self._send(writer, 200, extra, self._echo(request), keep_alive, request)
        if kind in ("bytes", "chunked"):
            record = self.connection(request.conn_id)
            return await self._send_pattern(writer, record, number, kind == "chunked",
                                            keep_alive, request.method == "HEAD")
        if kind == "response-headers":
            extra = parse_qsl(split.query, keep_blank_values=True)
            return await self._send(writer, 200, extra, b"{}", keep_alive, request)
        if kind == "bad-status-line":
            writer.write(b"HTTP/1.1 2x0 Weird\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            return True
        if kind == "cl-and-te":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            await writer.drain()
            return True
        if kind == "huge-header":
            writer.write(b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * (256 << 10)
                         + b"\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            return True
        if kind == "close-before-response":
            return False
        if kind == "truncated":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"t" * 100)
            await writer.drain()
            await asyncio.sleep(0.1)
        if kind in ("reset", "truncated"):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        return await self._send(writer, 200, extra, self._echo(request), keep_alive, request)

    def _echo(self, request: RecordedRequest) -> bytes:
        return json.dumps({
            "upstream_id": self.upstream_id,
            "conn_id": request.conn_id,
            "method": request.method,
            "target": request.target,
            "path": request.path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers],
            "body_length": request.body_length,
            "body_sha256": request.body_sha256,
        }).encode()

    async def _send(self, writer: asyncio.StreamWriter, status: int,
                    extra: list[tuple[str, str]], body: bytes, keep_alive: bool,
                    request: RecordedRequest) -> bool:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
                f"X-Upstream-Id: {self.upstream_id}"]
        head += [f"{k}: {v}" for k, v in extra]
        if status not in (204, 304) and status >= 200:
            head.append("Content-Type: application/json")
            head.append(f"Content-Length: {len(body)}")
        if not keep_alive:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if request.method != "HEAD":
            writer.write(body)
        await writer.drain()
        return keep_alive

    async def _send_pattern(self, writer: asyncio.StreamWriter, record: ConnectionRecord,
                            n: int, chunked: bool, keep_alive: bool, head_only: bool) -> bool:
        head = ["HTTP/1.1 200 OK", f"X-Upstream-Id: {self.upstream_id}",
                "Content-Type: application/octet-stream", f"X-Body-Sha256: {pattern_sha256(n)}"]
        head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {n}")
        if not keep_alive:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if not head_only:
            for piece in pattern_chunks(n, 16384 if chunked else 1 << 16):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                await writer.drain()
                record.body_bytes_sent += len(piece)
            if chunked:
                writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep_alive


# ---- an upstream in a process of its own, to kill and restart ----------------------------
# A tiny keep-alive HTTP/1.1 server run with ``python -c``: no import of this package, so it
# starts fast. argv: port, upstream id, log file, health status, fail status (0: none).
# ``/health`` answers the health status; ``/status/<code>`` that code; ``/delay/<ms>`` 200
# after a delay; ``/close-before-response`` closes without an answer; any other path the
# fail status when set, else 200. Every answer is JSON with the upstream id; every request
# is logged as "METHOD PATH" (one line, flushed) before it is answered.
_PROCESS_SCRIPT = r'''
import asyncio, json, re, socket, sys
port, uid, log_path, health, fail = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
log = open(log_path, "a", buffering=1)
async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            path = target.split("?")[0]
            log.write(f"{method} {path}\n")
            keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
            status = 200
            found = re.search(r"/(status|delay)/(\d+)$", path)
            if path.endswith("/close-before-response"):
                return
            if path.endswith("/health"):
                status = health
            elif found and found.group(1) == "status":
                status = int(found.group(2))
            elif found:
                await asyncio.sleep(int(found.group(2)) / 1000)
            elif fail:
                status = fail
            body = json.dumps({"upstream_id": uid, "path": path, "method": method}).encode()
            writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nX-Upstream-Id: %s\r\nContent-Length: %d\r\n%s\r\n"
                         % (status, uid.encode(), len(body), b"" if keep else b"Connection: close\r\n") + body)
            await writer.drain()
            if not keep:
                return
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()
async def main():
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    server = await asyncio.start_server(serve, sock=sock, backlog=256)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
'''


class UpstreamProcess:
    """An upstream HTTP server in its own process on a fixed loopback port: ``kill()`` it
    (SIGKILL, as a crash) and ``start()`` it again on the same port. ``requests()`` lists
    what reached it ("METHOD PATH"), across restarts, until ``clear()``."""

    def __init__(self, upstream_id: str, workdir, port: int | None = None) -> None:
        import pathlib

        from support.gateway import free_port

        self.upstream_id = upstream_id
        self.port = port or free_port()
        self.log_path = pathlib.Path(workdir) / f"upstream-{upstream_id}-{self.port}.log"
        self.log_path.touch()
        self.proc = None

    def start(self, *, health: int = 200, fail: int = 0, timeout: float = 10.0) -> "UpstreamProcess":
        import subprocess
        import sys

        self.kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PROCESS_SCRIPT, str(self.port), self.upstream_id,
             str(self.log_path), str(health), str(fail)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"upstream process {self.upstream_id} exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"upstream process {self.upstream_id} did not listen in time")

    def kill(self) -> None:
        import signal as _signal

        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(_signal.SIGKILL)
        if proc is not None:
            proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()

    stop = kill

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def proxied(self) -> list[str]:
        """Requests other than health probes."""
        return [line for line in self.requests() if not line.endswith("/health")]

    def clear(self) -> None:
        self.log_path.write_text("")
