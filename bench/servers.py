"""Servers of the benchmark: nginx configurations, started processes, readiness.

Rules implemented:

* Every server listens on 127.0.0.1 only, on ports picked free by ``free_ports``.
* nginx always runs in the foreground (``daemon off``) from its own temporary directory:
  pid file, error log and every temp path inside it, no access log.
* The upstream nginx answers 200 ``hello world\n`` to every request and keeps client
  connections open for (practically) unlimited requests.
* The proxy nginx keeps upstream connections alive (``keepalive 64``, HTTP/1.1, empty
  Connection header) and sets the X-Real-IP / X-Forwarded-* headers a gateway sets, so it
  does the same kind of work as guichet.
* Each started server is the leader of its own process group; ``Proc.stop`` sends SIGTERM
  to the group, then SIGKILL after a grace period, and waits until the group is gone.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import os
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
UPSTREAM_BODY = "hello world\n"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class BenchError(Exception):
    """A failure that ends the benchmark with a message instead of a traceback."""


# --------------------------------------------------------------------------- nginx configs


def nginx_common(tmp: Path, workers: int) -> str:
    return f"""worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
"""


def nginx_temp_paths(tmp: Path) -> str:
    return "\n".join(
        f"    {kind}_temp_path {tmp}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def upstream_nginx_conf(tmp: Path, port: int, workers: int) -> str:
    body = UPSTREAM_BODY.replace("\n", "\\n")
    return nginx_common(tmp, workers) + f"""http {{
    access_log off;
{nginx_temp_paths(tmp)}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""


def proxy_nginx_conf(tmp: Path, port: int, upstream_port: int, workers: int) -> str:
    return nginx_common(tmp, workers) + f"""http {{
    access_log off;
{nginx_temp_paths(tmp)}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream backend {{
        server {HOST}:{upstream_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port $server_port;
        }}
    }}
}}
"""


# --------------------------------------------------------------------------- processes


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (all held open together, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Proc:
    """A started server: its own process group, logs in the temp dir, stopped by stop()."""

    def __init__(self, label: str, argv: list[str], log: Path, env: dict | None = None,
                 cwd: Path | None = None):
        self.label = label
        self.argv = argv
        self.log = log
        self._log_file = open(log, "wb")
        self.popen = subprocess.Popen(
            argv, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=cwd,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        self._log_file.flush()
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not _group_alive(self.pid):
                    break
                time.sleep(0.05)
            else:
                continue
            break
        self.popen.poll()
        self._log_file.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def http_get(url: str, headers: dict | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_ready(proc: Proc, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.label} exited (code {proc.popen.returncode}) before being "
                             f"ready; command: {shlex.join(proc.argv)}\n{proc.log_tail()}")
        try:
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
            last = f"status {status}"
        except (OSError, urllib.error.URLError) as err:
            last = str(err)
        time.sleep(0.1)
    raise BenchError(f"{proc.label} not ready at {url} after {timeout:.0f}s ({last})\n"
                     f"{proc.log_tail()}")


def check_proxies_body(label: str, url: str, headers: dict) -> None:
    status, body = http_get(url, headers=headers)
    if status != 200 or body.decode(errors="replace") != UPSTREAM_BODY:
        raise BenchError(f"{label}: GET {url} answered {status} {body[:200]!r}, expected the "
                         f"upstream's 200 {UPSTREAM_BODY!r}")


def start_nginx(label: str, tmp_root: Path, make_conf) -> Proc:
    """nginx in the foreground from its own directory; make_conf(dir) gives nginx.conf."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=tmp_root))
    (tmp / "nginx.conf").write_text(make_conf(tmp))
    argv = [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(tmp / "nginx.conf"),
            "-g", "daemon off;"]
    return Proc(label, argv, tmp / "stdout.log")


