"""The master process: workers, reloads, the admin listener, draining.

* Spawns ``workers`` processes (``multiprocessing`` spawn context: a clean interpreter
  each), restarts one that dies unexpectedly (at most once a second).
* Reload on SIGHUP and when the config file changes (polled every
  ``config_watch_interval`` seconds: mtime, size, then content hash). The new text is
  validated here first; if it fails, the old configuration keeps serving and ``/status``
  shows the error under ``last_reload``. If it is unchanged (same hash), nothing happens.
  Otherwise every worker compiles and swaps it.
* SIGTERM / SIGINT: workers drain (stop accepting, finish in flight within
  ``drain_timeout``), then the master exits 0.
* Health checks: worker 0 runs them for the node; the master keeps its target states
  (``/status`` → ``upstreams``) and relays them to the other workers
  (``guichet.health.relay``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from typing import Any

import guichet
from guichet.admin import AdminProtocol, is_loopback
from guichet.config.loader import load_config_text
from guichet.config.model import ConfigIssue
from guichet.plugins.chain import build_instances
from guichet.plugins.consumers import ConsumerDirectory
from guichet.plugins.env import BuildEnv
from guichet.plugins.registry import PluginLoadError, Registry
from guichet.plugins.stores import Stores
from guichet.errors import ConfigError
from guichet.health.relay import OPS as HEALTH_OPS, HealthRelay
from guichet.limits.node import NodeTable
from guichet.settings import Settings, parse_hostport
from guichet.worker import _parse_listener, worker_main

log = logging.getLogger("guichet.master")


class WorkerHandle:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.conn: Any = None
        self.ready = False
        self.started_at = 0.0
        self.spawned_with = ""  # the config hash the worker was started with
        self.serving = ""  # the config hash the worker says it serves (after ready/reloaded)
        self.tally: dict[str, dict[str, int]] = {}  # its rate-limit counters' last tally


class Master:
    def __init__(self, settings: Settings, config_path: str, log_level: int = logging.INFO) -> None:
        self.settings = settings
        self.config_path = config_path
        self.log_level = log_level
        self.ctx = multiprocessing.get_context("spawn")
        self.stats = self.ctx.Array("q", settings.workers, lock=False)
        self.workers = [WorkerHandle(i) for i in range(settings.workers)]
        self.text = ""
        self.config_hash = ""
        self.reloads = 0
        self.last_reload: dict[str, Any] = {"ok": True, "error": None, "at": None}
        self.stopping = False
        self._file_sig: tuple[float, int] | None = None
        self._text_digest = ""
        self._failures: list[str] = []
        self._exit_code = 0
        self.tally_retired: dict[str, dict[str, int]] = {}  # tallies of workers that died
        self.health = HealthRelay()  # worker 0's target states, relayed to the others
        # the rate-limit node table every worker maps (created in main, unlinked at exit)
        self.node_table: NodeTable | None = None

    # -- start ---------------------------------------------------------------------
    def prepare(self) -> None:
        """Validate everything that can fail before any process starts (raises)."""
        try:
            self.registry = Registry(self.settings.plugins)
        except PluginLoadError as exc:
            raise SystemExit(f"guichet: plugins setting: {exc}") from None
        self.text = _read(self.config_path)
        config = self._load(self.text)
        self.config_hash = config.hash
        self._file_sig = self._signature()
        host, _ = parse_hostport(self.settings.admin_listen)
        if not is_loopback(host) and not self.settings.resolved_admin_token():
            raise SystemExit(
                f"guichet: admin_listen {self.settings.admin_listen} is not loopback: set "
                "GUICHET_ADMIN_TOKEN (or GUICHET_ADMIN_TOKEN_FILE) first")
        for item in self.settings.listen:
            h, p, _ = _parse_listener(item)
            _check_free(h, p)

    def _load(self, text: str) -> Any:
        """Load and validate, then build every plugin once as the workers will (a plugin
        that cannot be built is a configuration error here, not a worker crash)."""
        config = load_config_text(text, self.config_path, plugin_schemas=self.registry.schemas())
        try:
            build_instances(config, self.registry,
                            BuildEnv(ConsumerDirectory(config), self.settings, Stores()))
        except Exception as exc:  # noqa: BLE001
            raise ConfigError([ConfigIssue(self.config_path, None, None, "plugins",
                                           f"a plugin cannot be built: {exc}")]) from exc
        return config

    def spawn(self, handle: WorkerHandle) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=worker_main,
            args=(self.settings, self.text, self.config_path, child, self.stats, handle.index,
                  self.log_level, self.node_table.path if self.node_table else None),
            name=f"guichet-worker-{handle.index}",
            daemon=False,
        )
        proc.start()
        child.close()
        handle.process, handle.conn, handle.ready = proc, parent, False
        handle.spawned_with, handle.serving = self.config_hash, ""
        handle.started_at = time.monotonic()
        self.stats[handle.index] = 0
        asyncio.get_running_loop().add_reader(parent.fileno(), self._on_worker_message, handle)

    def _on_worker_message(self, handle: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        try:
            while handle.conn.poll():
                msg = handle.conn.recv()
                op = msg.get("op")
                if op == "ready":
                    handle.ready = True
                    handle.serving = handle.spawned_with
                    log.info("worker %d (pid %s) is listening", handle.index, msg.get("pid"))
                    self.health.worker_ready(handle)
                elif op == "tally":
                    handle.tally = msg.get("counters") or {}
                elif op in HEALTH_OPS:
                    self.health.on_message(handle, msg, self.workers)
                elif op == "failed":
                    self._failures.append(msg.get("error", "worker failed"))
                    log.error("worker %d failed: %s", handle.index, msg.get("error"))
                elif op == "reloaded" and msg.get("error"):
                    log.error("worker %d could not apply the configuration: %s", handle.index, msg["error"])
                elif op == "reloaded":
                    handle.serving = msg.get("hash") or handle.serving
        except (EOFError, OSError):
            try:
                loop.remove_reader(handle.conn.fileno())
            except (OSError, ValueError):
                pass

    # -- reload --------------------------------------------------------------------
    def _signature(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def reload(self, reason: str) -> None:
        try:
            text = _read(self.config_path)
            config = self._load(text)
        except ConfigError as exc:
            self.last_reload = {"ok": False, "error": str(exc), "at": _now(), "reason": reason}
            log.error("reload (%s) refused, the previous configuration keeps serving:\n%s", reason, exc)
            return
        except OSError as exc:
            self.last_reload = {"ok": False, "error": f"{self.config_path}: {exc}", "at": _now(), "reason": reason}
            log.error("reload (%s) refused: %s", reason, exc)
            return
        self.last_reload = {"ok": True, "error": None, "at": _now(), "reason": reason}
        if config.hash == self.config_hash:
            return
        self.text = text
        self.config_hash = config.hash
        self.reloads += 1
        for handle in self.workers:
            if handle.conn is not None and handle.process is not None and handle.process.is_alive():
                try:
                    handle.conn.send({"op": "reload", "text": text, "source": self.config_path})
                except OSError:
                    pass
        log.info("configuration %s applied (%s)", config.hash[:12], reason)

    async def watch(self) -> None:
        interval = self.settings.config_watch_interval
        if interval <= 0:
            return
        while not self.stopping:
            await asyncio.sleep(interval)
            sig = self._signature()
            if sig is not None and sig != self._file_sig:
                self._file_sig = sig
                try:
                    digest = hashlib.sha256(_read(self.config_path).encode()).hexdigest()
                except OSError:
                    continue
                if digest != self._text_digest:
                    self._text_digest = digest
                    self.reload("file changed")

    # -- status --------------------------------------------------------------------
    def status(self, method: bytes, body: bytes) -> tuple[int, Any]:
        alive = [h for h in self.workers if h.process is not None and h.process.is_alive()]
        ready = bool(alive) and all(h.ready for h in self.workers) and not self.stopping
        # A reload is accepted by the master, then applied by each worker a moment later:
        # config_hash is what the workers serve, pending_config_hash what they are moving to.
        serving = {h.serving for h in alive if h.ready and h.serving}
        applied = serving <= {self.config_hash}
        payload = {
            "status": "ok" if ready else ("stopping" if self.stopping else "starting"),
            "version": guichet.__version__,
            "config_hash": self.config_hash if applied else min(serving - {self.config_hash}),
            "pending_config_hash": None if applied else self.config_hash,
            "config_source": self.config_path,
            "reloads": self.reloads,
            "last_reload": self.last_reload,
            "workers": len(alive),
            "worker_pids": [h.process.pid for h in alive],
            "connections": int(sum(self.stats[:])),
            "upstreams": self.health.status(),  # target health, as worker 0 last said
            "rate_limiting": self.rate_limiting(),
        }
        return (200 if ready else 503), payload

    def rate_limiting(self) -> dict[str, dict[str, int]]:
        """The counter backends' decisions summed over workers, since the node started
        (``fault_tolerant_passed``, ``redis_errors`` ...; reported once a second)."""
        total: dict[str, dict[str, int]] = {}
        for tally in (self.tally_retired, *(h.tally for h in self.workers)):
            _add_tally(total, tally)
        return total

    # -- main loop -----------------------------------------------------------------
    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self._text_digest = hashlib.sha256(self.text.encode()).hexdigest()
        if self.node_table is None:
            self.node_table = NodeTable.create(self.settings.limits_node_slots)
        for handle in self.workers:
            self.spawn(handle)
        host, port = parse_hostport(self.settings.admin_listen)
        admin = await loop.create_server(
            lambda: AdminProtocol({b"/status": self.status}, self.settings.resolved_admin_token()),
            host, port, reuse_address=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        watcher = loop.create_task(self.watch())
        supervisor = loop.create_task(self.supervise(stop))
        await stop.wait()
        self.stopping = True
        watcher.cancel()
        supervisor.cancel()
        code = await self.shutdown()
        admin.close()
        return code

    async def supervise(self, stop: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(0.2)
            if self._failures and not any(h.ready for h in self.workers):
                log.error("no worker could start: %s", self._failures[0])
                self._exit_code = 1
                stop.set()
                return
            for handle in self.workers:
                proc = handle.process
                if proc is not None and not proc.is_alive() and not self.stopping:
                    log.error("worker %d exited with %s; restarting", handle.index, proc.exitcode)
                    _add_tally(self.tally_retired, handle.tally)
                    handle.tally = {}
                    if self.node_table is not None:  # its concurrency slots and queue places
                        self.node_table.reclaim(proc.pid)
                    try:
                        asyncio.get_running_loop().remove_reader(handle.conn.fileno())
                    except (OSError, ValueError):
                        pass
                    if time.monotonic() - handle.started_at < 1.0:
                        await asyncio.sleep(1.0)
                    self.spawn(handle)

    async def shutdown(self) -> int:
        for handle in self.workers:
            proc = handle.process
            if proc is not None and proc.is_alive():
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.settings.drain_timeout + 5
        while time.monotonic() < deadline and any(
                h.process is not None and h.process.is_alive() for h in self.workers):
            await asyncio.sleep(0.05)
        for handle in self.workers:
            if handle.process is not None and handle.process.is_alive():
                handle.process.kill()
            if handle.process is not None:
                handle.process.join(1)
        return self._exit_code


def _add_tally(total: dict[str, dict[str, int]], tally: dict[str, dict[str, int]]) -> None:
    for backend, counts in tally.items():
        into = total.setdefault(backend, {})
        for name, value in counts.items():
            into[name] = into.get(name, 0) + value


def _read(path: str) -> str:
    with open(path, "rb") as fh:
        return fh.read().decode("utf-8")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _check_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"guichet: cannot listen on {host}:{port}: {exc.strerror}") from None


def run_master(settings: Settings, config_path: str, log_level: int = logging.INFO) -> int:
    import uvloop

    master = Master(settings, config_path, log_level)
    master.prepare()
    try:
        return uvloop.run(master.main())
    finally:
        if master.node_table is not None:
            master.node_table.close()
            master.node_table.unlink()
