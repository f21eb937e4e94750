"""An upstream that stops reading a request body: the service's write_timeout gives 504."""

from __future__ import annotations

import socket
import threading
import time

from support.rawhttp import RawConnection


def test_upstream_not_reading_the_body_is_a_504(gateway_factory):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    held: list[socket.socket] = []

    def accept_and_never_read() -> None:
        conn, _ = lsock.accept()
        held.append(conn)

    threading.Thread(target=accept_and_never_read, daemon=True).start()
    gw = gateway_factory(f"""
_format_version: "3.0"
services:
- name: stuck
  url: http://127.0.0.1:{port}
  write_timeout: 1000
  routes:
  - name: stuck
    paths: ["/"]
""")
    size = 64 << 20
    started = time.monotonic()
    with RawConnection(gw.port, timeout=10) as conn:
        conn.sock.settimeout(0.2)
        conn.sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        block = bytes(1 << 16)
        sent = 0
        while sent < size and time.monotonic() - started < 8:
            try:
                sent += conn.sock.send(block)
            except (socket.timeout, BlockingIOError):
                break  # the gateway stopped reading: the upstream is not taking the body
            except OSError:
                break
        response = conn.read_response(timeout=6)
    elapsed = time.monotonic() - started
    assert response.status == 504
    assert sent < size
    assert elapsed < 6
    for s in held:
        s.close()
    lsock.close()
