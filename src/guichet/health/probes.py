"""Active health probes of one upstream (Kong's active checks), run by the node's leader.

Rules (lua-resty-healthcheck's ``run_single_check`` and checker timers):

- Two rounds with their own period: every ``active.healthy.interval`` seconds the targets
  that are up (``healthy``, ``mostly_healthy``) are probed, every
  ``active.unhealthy.interval`` seconds those that are down. An interval of 0 turns that
  round off. The first round starts one interval after the checker starts, as in Kong;
  a round begins an interval after the previous one ended, so probes never pile up.
- At most ``concurrency`` probes of the upstream are in flight at once.
- A probe opens its own connection (never one of the proxy's pool) and closes it:
  ``tcp`` only connects; ``http`` sends ``GET <http_path> HTTP/1.0`` with the
  configured ``headers`` and ``Host: <host_header, else the target's name, else its
  IP>`` and reads the status line; ``https`` does the same over TLS, with SNI
  ``https_sni`` (else the target's name) and the certificate verified unless
  ``https_verify_certificate`` is false.
- Outcomes, counted with the ``active`` limits: no answer within ``timeout`` seconds (the
  whole probe) is a timeout; a refused or reset connection, or a failed TLS handshake,
  a TCP failure; a status is classified by the ``active`` status lists (an unreadable
  status line is an HTTP failure); a tcp probe that connects is a success.
- ``stop()`` cancels both rounds and every probe in flight; their connections close.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
from typing import TYPE_CHECKING

from guichet.health.state import SUCCESS, TCP_FAILURE, TIMEOUT

if TYPE_CHECKING:
    from guichet.health.registry import TargetRecord, UpstreamHealth

log = logging.getLogger("guichet.health")
STATUS_LINE = re.compile(rb"^HTTP/\d+\.\d+\s+(\d{3})")
MAX_STATUS_LINE = 8192


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ActiveProber:
    def __init__(self, health: "UpstreamHealth") -> None:
        self.health = health
        checks = health.checks
        self.checks = checks
        self._tasks: list[asyncio.Task[None]] = []
        self._ssl: ssl.SSLContext | None = None
        if checks.active_type == "https":
            ctx = ssl.create_default_context()
            if not checks.https_verify_certificate:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        self._semaphore = asyncio.Semaphore(checks.concurrency)
        headers = "".join(f"{name}: {value}\r\n" for name, value in checks.headers)
        self._head_prefix = f"GET {checks.http_path} HTTP/1.0\r\n{headers}"

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for interval, up in ((self.checks.healthy_interval, True),
                             (self.checks.unhealthy_interval, False)):
            if interval > 0:
                self._tasks.append(loop.create_task(self._rounds(interval, up)))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    async def _rounds(self, interval: float, up: bool) -> None:
        while True:
            await asyncio.sleep(interval)
            targets = [r for r in list(self.health.records.values())
                       if r.alive and r.health.up == up]
            if targets:
                await asyncio.gather(*(self._check(r) for r in targets))

    async def _check(self, record: "TargetRecord") -> None:
        async with self._semaphore:
            if not record.alive:
                return
            try:
                kind = await self.probe(record.ip, record.port, record.hostname)
            except Exception:  # noqa: BLE001 - a bug here must not stop the rounds
                log.exception("health probe of %s failed", record.key)
                return
        if kind is not None:
            self.health.active(record, kind)

    async def probe(self, ip: str, port: int, hostname: str) -> int | None:
        """One probe: the event it is (None: a status in neither list)."""
        try:
            async with asyncio.timeout(self.checks.timeout or None):
                return await self._exchange(ip, port, hostname)
        except TimeoutError:
            return TIMEOUT
        except (OSError, ssl.SSLError, EOFError, asyncio.IncompleteReadError):
            return TCP_FAILURE

    async def _exchange(self, ip: str, port: int, hostname: str) -> int | None:
        checks = self.checks
        ctx = self._ssl
        server_hostname = None
        if ctx is not None:
            name = checks.https_sni or hostname
            if not checks.https_sni and not _is_ip(name) and name.count(":") == 1:
                name = name.split(":")[0]  # a host_header with a port
            # No SNI for an IP, unless the certificate is verified against it.
            server_hostname = None if _is_ip(name) and not ctx.check_hostname else name
        reader, writer = await asyncio.open_connection(
            ip, port, ssl=ctx, server_hostname=server_hostname if ctx is not None else None)
        try:
            if checks.active_type == "tcp":
                return SUCCESS
            host = f"[{hostname}]" if ":" in hostname and _is_ip(hostname) else hostname
            writer.write(f"{self._head_prefix}Host: {host}\r\n\r\n".encode())
            line = await reader.readline()
            if not line:
                raise EOFError("closed before a status line")
            found = STATUS_LINE.match(line[:MAX_STATUS_LINE])
            status = int(found.group(1)) if found else 0
            if status == 0:
                log.info("health probe of %s:%s: bad status line", ip, port)
            return checks.active.classify(status)  # 0 (unreadable) is an HTTP failure
        finally:
            writer.transport.abort()
