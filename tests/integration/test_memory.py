"""Resident memory stays bounded: 1 GiB bodies stream through, 1,000 reloads release memory.

Both measure the worker process's VmRSS from /proc while the traffic or reloads run.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import threading
import time

import pytest

GIB = 1 << 30
MIB = 1 << 20


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss(self.pid))
            time.sleep(0.05)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class SinkUpstream:
    """A raw upstream for bulk bytes: GET /down/<n> sends n zero bytes, POST /up reads the
    body and answers its length and sha256. Served by a thread per connection (sockets,
    no event loop) so it keeps up with the gateway."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].split(b" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(b":") for l in lines[1:])}
            if method == b"GET":
                n = int(target.rsplit(b"/", 1)[1])
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % n)
                block = bytes(MIB)
                while n:
                    k = min(n, MIB)
                    conn.sendall(block[:k])
                    n -= k
                return
            length = int(headers[b"content-length"])
            digest = hashlib.sha256(rest)
            got = len(rest)
            while got < length:
                chunk = conn.recv(min(1 << 20, length - got))
                if not chunk:
                    return
                digest.update(chunk)
                got += len(chunk)
            body = b"%d %s" % (got, digest.hexdigest().encode())
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sink():
    server = SinkUpstream()
    yield server
    server.close()


def _config(port: int) -> str:
    return f"""
_format_version: "3.0"
services:
- name: bulk
  url: http://127.0.0.1:{port}
  routes:
  - name: bulk
    paths: ["/"]
    strip_path: false
"""


def test_one_gib_download_and_upload_keep_worker_rss_under_100_mib(gateway_factory, sink):
    gw = gateway_factory(_config(sink.port))
    (pid,) = gw.status()["worker_pids"]
    with RssSampler(pid) as sampler:
        # download
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
            s.sendall(b"GET /down/%d HTTP/1.1\r\nHost: bulk\r\n\r\n" % GIB)
            buf = bytearray(4 * MIB)
            view = memoryview(buf)
            received = 0
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            head, _, first = head.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            received = len(first)
            while received < GIB:
                n = s.recv_into(view)
                assert n, f"closed after {received} bytes"
                received += n
        assert received == GIB
        # upload
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
            s.sendall(b"POST /up HTTP/1.1\r\nHost: bulk\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % GIB)
            block = bytes(4 * MIB)
            expected = hashlib.sha256()
            for _ in range(GIB // len(block)):
                s.sendall(block)
                expected.update(block)
            answer = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        assert answer.endswith(b"%d %s" % (GIB, expected.hexdigest().encode()))
    print(f"1 GiB down + 1 GiB up: worker peak RSS {sampler.peak / MIB:.1f} MiB")
    assert sampler.peak < 100 * MIB, f"worker peak RSS {sampler.peak / MIB:.1f} MiB"


KEY0 = {"apikey": "key-0-0123456789abcdef"}  # configs[0]'s consumer (an even reload count)


def _eventually_ok(http, url: str, headers: dict[str, str]) -> bool:
    """The master counts a reload when it sends it; the worker swaps a moment later."""
    deadline = time.monotonic() + 10
    while http.get(url, headers=headers).status_code != 200:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_thousand_reloads_keep_worker_rss_flat(gateway_factory, upstream, http):
    # each configuration has plugins, consumers and credentials: their instances and
    # indexes must go with the snapshot too (Kong #6547 is about exactly this growth)
    configs = []
    for i in range(2):
        routes = "\n".join(
            f"  - name: r{i}-{j}\n    paths: [\"/v{i}/p{j}\", \"~/v{i}/re{j}/(?<id>\\\\d+)$\"]\n    hosts: [\"h{j}.example.test\", \"*.w{j}.test\"]"
            for j in range(50))
        configs.append(f"""
_format_version: "3.0"
upstreams:
- name: pool{i}
  targets:
  - target: 127.0.0.1:{upstream.port}
services:
- name: s{i}
  url: http://pool{i}
  routes:
{routes}
  - name: probe{i}
    paths: ["/probe"]
  plugins:
  - name: key-auth
  - name: acl
    config: {{allow: [g{i}]}}
consumers:
- username: c{i}
  keyauth_credentials: [{{key: key-{i}-0123456789abcdef}}]
  acls: [{{group: g{i}}}]
plugins:
- name: correlation-id
- name: cors
- name: ip-restriction
  config: {{allow: ["127.0.0.0/8"]}}
""")
    gw = gateway_factory(configs[0], env={"GUICHET_CONFIG_WATCH_INTERVAL": "0"})
    (pid,) = gw.status()["worker_pids"]
    master = gw.pid

    def reload_to(i: int, expected: int) -> None:
        gw.config_path.write_text(configs[i % 2])
        gw.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while gw.status()["reloads"] < expected:
            assert time.monotonic() < deadline, "reload did not happen"
            time.sleep(0.002)

    assert http.get(gw.url + "/probe/echo").status_code == 401  # key-auth is there
    for n in range(1, 101):  # warm up: allocator arenas, caches, code paths
        reload_to(n, n)
    assert _eventually_ok(http, gw.url + "/probe/echo", KEY0)
    time.sleep(1.5)  # the sweeper releases retired snapshots
    baseline = _rss(pid)
    for n in range(101, 1001):
        reload_to(n, n)
    assert _eventually_ok(http, gw.url + "/probe/echo", KEY0)
    time.sleep(1.5)
    after = _rss(pid)
    print(f"worker RSS after 100 reloads {baseline / MIB:.1f} MiB, after 1000 {after / MIB:.1f} MiB")
    assert gw.status()["reloads"] == 1000
    assert gw.status()["worker_pids"] == [pid], "the worker was replaced"
    assert after - baseline < 8 * MIB, f"RSS grew {((after - baseline) / MIB):.1f} MiB over 900 reloads"
    assert _rss(master) < 200 * MIB
