"""Custom plugins used by the plugin-system tests, loaded by the gateway under test through
``GUICHET_PLUGINS=bundled,support.test_plugins:TraceA,...`` (see ``plugin_env``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Literal

from guichet.plugins import Plugin, PluginConfig, Request, Response, ResponseHead, error

SRC = str(Path(__file__).resolve().parents[2] / "src")
TESTS = str(Path(__file__).resolve().parents[1])
ALL = ("TraceA", "TraceB", "TestAuth", "Boom", "SlowCheck", "Decorate", "BodyLength", "FileLog")


def plugin_env(*names: str) -> dict[str, str]:
    """Environment for a gateway that loads these test plugins (all by default)."""
    specs = ",".join(f"support.test_plugins:{n}" for n in (names or ALL))
    return {"GUICHET_PLUGINS": "bundled," + specs,
            "PYTHONPATH": TESTS + os.pathsep + SRC}


class TraceConfig(PluginConfig):
    tag: str = "?"


class _Trace(Plugin):
    Config = TraceConfig

    def access(self, req: Request) -> None:
        trace = req.ctx.setdefault("trace", [])
        trace.append(f"{self.name}={self.config.tag}")
        req.set_header("X-Trace", " ".join(trace))


class TraceA(_Trace):
    name = "trace-a"
    priority = 5000


class TraceB(_Trace):
    name = "trace-b"
    priority = 4000


class TestAuth(Plugin):
    """Authenticates the consumer whose username is in X-Test-User."""

    name = "test-auth"
    priority = 4500
    no_consumer = True
    __test__ = False  # a plugin, not a pytest test class

    def access(self, req: Request) -> Response | None:
        user = req.header("x-test-user")
        consumer = self.env.consumers.find(user) if user else None
        if consumer is None:
            return error(401, "Unauthorized", {"WWW-Authenticate": 'Test realm="guichet"'})
        req.set_consumer(consumer, credential=consumer.id, credential_identifier=user)
        return None


class BoomConfig(PluginConfig):
    phase: Literal["access", "response_headers", "log"] = "access"


class Boom(Plugin):
    """Raises in the configured phase when the path contains "boom"."""

    name = "boom"
    priority = 3000
    Config = BoomConfig

    def access(self, req: Request) -> None:
        if self.config.phase == "access" and "boom" in req.path:
            raise RuntimeError("boom in access")

    def response_headers(self, req: Request, resp: ResponseHead) -> None:
        if self.config.phase == "response_headers" and "boom" in req.path:
            raise RuntimeError("boom in response_headers")

    def log(self, req: Request, resp: ResponseHead) -> None:
        if self.config.phase == "log" and "boom" in req.path:
            raise RuntimeError("boom in log")


class SlowConfig(PluginConfig):
    delay: float = 0.05


class SlowCheck(Plugin):
    """An async access hook: waits, then refuses requests that carry X-Deny."""

    name = "slow-check"
    priority = 3500
    Config = SlowConfig

    async def access(self, req: Request) -> Response | None:
        await asyncio.sleep(self.config.delay)
        if req.header("x-deny"):
            return Response(403, {"denied": True}, {"X-Denied-By": "slow-check"})
        req.set_header("X-Slow-Checked", "yes")
        return None


class DecorateConfig(PluginConfig):
    upper: bool = False


class Decorate(Plugin):
    name = "decorate"
    priority = 100
    Config = DecorateConfig

    def response_headers(self, req: Request, resp: ResponseHead) -> None:
        resp.set("X-Decorated", f"{resp.status} {'local' if resp.local else 'upstream'}")
        resp.remove("X-Upstream-Id")

    def response_body(self, req: Request, resp: ResponseHead, chunk: bytes, last: bool) -> bytes:
        if self.config.upper:
            chunk = chunk.upper()
            if last:
                chunk += b"<END>"
        return chunk


class BodyConfig(PluginConfig):
    limit: int = 1024


class BodyLength(Plugin):
    """Reads the whole body in access and tells the upstream its length."""

    name = "body-length"
    priority = 3200
    Config = BodyConfig

    async def access(self, req: Request) -> None:
        body = await req.read_body(self.config.limit)
        req.set_header("X-Body-Length", str(len(body)))


class LogConfig(PluginConfig):
    path: str


class FileLog(Plugin):
    """Appends "status route consumer" per finished request to a file."""

    name = "file-log-test"
    priority = 50
    Config = LogConfig

    def log(self, req: Request, resp: ResponseHead) -> None:
        consumer = req.consumer.username if req.consumer else "-"
        with open(self.config.path, "a", encoding="utf-8") as handle:
            handle.write(f"{resp.status} {req.route.name} {consumer}\n")
