"""Run the real gateway as a subprocess for integration tests.

``Gateway`` writes the configuration to a file, picks free ports for the proxy and admin
listeners, starts ``python -m guichet run --config F --listen 127.0.0.1:P --admin-listen
127.0.0.1:A --workers N`` in its own process group (session) with ``<repo>/src`` appended to
PYTHONPATH and ``GUICHET_*`` settings from ``env``, and waits until ``GET /status`` on the
admin listener answers 200 with ``version``, ``config_hash``, ``workers`` and ``connections``
and the proxy port accepts connections. Stdout and stderr go to files next to the config,
so a failing test can show them.

Stopping sends SIGTERM to the master, waits, then SIGKILLs the whole process group; it is
safe to call twice. ``reload_config`` rewrites the file and sends SIGHUP, and by default
waits for ``config_hash`` to change.

``GatewayFactory`` starts gateways in one directory and stops them all at teardown; the
conftest fixtures wrap it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_KEYS = ("version", "config_hash", "workers", "connections")


def free_port() -> int:
    """A port nothing listens on right now (the usual small race is accepted)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GatewayStartError(RuntimeError):
    pass


class Gateway:
    def __init__(self, config_text: str, workdir: Path, *, workers: int = 1,
                 env: Mapping[str, str] | None = None, extra_args: Iterable[str] = (),
                 ready_timeout: float = 15.0, name: str = "gateway") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / f"{name}.yml"
        self.stdout_path = self.workdir / f"{name}.stdout"
        self.stderr_path = self.workdir / f"{name}.stderr"
        self.config_path.write_text(config_text)
        self.workers = workers
        self.env = dict(env or {})
        self.extra_args = tuple(extra_args)
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self.admin_port = free_port()
        self.proc: subprocess.Popen | None = None

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> "Gateway":
        env = dict(os.environ)
        src = str(REPO_ROOT / "src")
        env["PYTHONPATH"] = (env["PYTHONPATH"] + os.pathsep + src) if env.get("PYTHONPATH") \
            else src
        env.update({k: str(v) for k, v in self.env.items()})
        cmd = [sys.executable, "-m", "guichet", "run", "--config", str(self.config_path),
               "--listen", f"127.0.0.1:{self.port}",
               "--admin-listen", f"127.0.0.1:{self.admin_port}",
               "--workers", str(self.workers), *self.extra_args]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.ready_timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GatewayStartError(
                    f"gateway exited with {self.proc.returncode} before it was ready\n"
                    f"--- stderr ---\n{self.stderr_text()}")
            try:
                status = self.status(timeout=0.5)
                missing = [k for k in READY_KEYS if k not in status]
                if missing:
                    last_error = f"/status lacks {missing}: {status}"
                else:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return status
            except (OSError, ValueError, urllib.error.URLError) as exc:
                last_error = repr(exc)
            time.sleep(0.05)
        raise GatewayStartError(
            f"gateway not ready within {self.ready_timeout}s ({last_error})\n"
            f"--- stderr ---\n{self.stderr_text()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the group. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the master's session: workers left behind
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        return proc.returncode

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def reload_config(self, new_text: str, *, wait: bool = True,
                      timeout: float = 10.0) -> dict[str, Any] | None:
        """Rewrite the config file and SIGHUP; with ``wait``, return /status once its
        ``config_hash`` differs from the one before the reload."""
        before = self.status()["config_hash"] if wait else None
        self.config_path.write_text(new_text)
        self.send_signal(signal.SIGHUP)
        if not wait:
            return None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status.get("config_hash") != before:
                return status
            time.sleep(0.05)
        raise TimeoutError(f"config_hash unchanged {timeout}s after SIGHUP\n"
                           f"--- stderr ---\n{self.stderr_text()}")

    # ---- observation -----------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.admin_url + "/status", timeout=timeout) as answer:
            if answer.status != 200:
                raise ValueError(f"/status answered {answer.status}")
            return json.loads(answer.read())

    def stderr_text(self, limit: int = 20000) -> str:
        try:
            text = self.stderr_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""
        return text if len(text) <= limit else "...\n" + text[-limit:]


class GatewayFactory:
    """Starts gateways under ``workdir`` and stops every one of them in ``close``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.gateways: list[Gateway] = []

    def __call__(self, config_text: str, workers: int = 1,
                 env: Mapping[str, str] | None = None, extra_args: Iterable[str] = (),
                 ready_timeout: float = 15.0) -> Gateway:
        gateway = Gateway(config_text, self.workdir, workers=workers, env=env,
                          extra_args=extra_args, ready_timeout=ready_timeout,
                          name=f"gateway{len(self.gateways)}")
        self.gateways.append(gateway)
        return gateway.start()

    def stderr_report(self) -> str:
        return "\n".join(f"--- {g.stderr_path.name} (pid {g.proc.pid if g.proc else '-'}) ---\n"
                         f"{g.stderr_text()}" for g in self.gateways)

    def close(self) -> None:
        for gateway in self.gateways:
            gateway.stop()
