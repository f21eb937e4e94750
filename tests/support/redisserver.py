"""A ``redis-server`` of a test's own, on a free loopback port, without persistence: for
tests that stop and restart Redis while traffic flows (the shared server on 6379 must
stay up for the others).

Without the ``redis-server`` binary the test is skipped, or fails when
``GUICHET_REQUIRE_SERVICES=1`` (CI), like the other service-backed tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from support.gateway import free_port


class RedisServer:
    def __init__(self, workdir: object = None, password: str | None = None) -> None:
        if shutil.which("redis-server") is None:
            reason = "redis-server is not installed"
            if os.environ.get("GUICHET_REQUIRE_SERVICES") == "1":
                pytest.fail(reason + " (GUICHET_REQUIRE_SERVICES=1)")
            pytest.skip(reason)
        self.port = free_port()
        self.workdir = str(workdir) if workdir is not None else tempfile.gettempdir()
        self.password = password
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        """Start (or start again, on the same port) and wait until it accepts."""
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.workdir]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: Redis vanishes mid-traffic, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
