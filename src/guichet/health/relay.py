"""The master's part in health checks: keep the leader's word, pass messages on.

Messages (dicts over the master ↔ worker pipes):

- worker 0 → master ``{"op": "health_state", "upstream": name, "targets": {"ip:port":
  state} | None, "boot": bool}``: the states of an upstream's targets after a change
  (None: the upstream is gone). The master keeps them (``/status`` shows them) and relays
  the message to every other worker.
- worker N → master ``{"op": "health_report", "upstream", "target", "kind"}``: a passive
  event seen by a follower, forwarded to worker 0 (dropped while worker 0 is down).
- master → worker ``{"op": "health_sync", "upstreams": {name: states}}``: everything the
  master knows, sent to each worker when it becomes ready, so a restarted worker
  (worker 0 included) starts from the node's current states rather than all healthy.
- ``boot``: worker 0's first publication after it started. For targets the master
  already knows, the master's states win (worker 0 was restarted, the targets did not
  heal meanwhile); the merged states go back to worker 0 and on to the others.

``status()`` maps the states for ``/status``: ``HEALTHY`` (healthy, mostly_healthy),
``UNHEALTHY`` (unhealthy, mostly_unhealthy), ``DNS_ERROR`` (a target name that resolves
to nothing), as Kong's ``/upstreams/{name}/health`` words them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("guichet.master")

_WORDS = {"healthy": "HEALTHY", "mostly_healthy": "HEALTHY", "unhealthy": "UNHEALTHY",
          "mostly_unhealthy": "UNHEALTHY", "dns_error": "DNS_ERROR"}
OPS = frozenset({"health_state", "health_report"})


def _send(handle: Any, message: dict[str, Any]) -> None:
    conn = handle.conn
    process = handle.process
    if conn is None or process is None or not process.is_alive():
        return
    try:
        conn.send(message)
    except (OSError, ValueError):
        pass


class HealthRelay:
    def __init__(self) -> None:
        self.upstreams: dict[str, dict[str, str]] = {}

    def on_message(self, sender: Any, message: dict[str, Any], workers: Sequence[Any]) -> None:
        op = message.get("op")
        if op == "health_report":
            if sender.index != 0 and workers and workers[0].ready:
                _send(workers[0], message)
            return
        if op != "health_state" or sender.index != 0:
            return
        name = str(message.get("upstream", ""))
        targets = message.get("targets")
        if targets is None:
            self.upstreams.pop(name, None)
            out: dict[str, Any] = {"op": "health_state", "upstream": name, "targets": None}
        else:
            targets = dict(targets)
            known = self.upstreams.get(name)
            if message.get("boot") and known:
                targets.update({k: v for k, v in known.items() if k in targets})
                _send(sender, {"op": "health_state", "upstream": name, "targets": targets})
            self.upstreams[name] = targets
            out = {"op": "health_state", "upstream": name, "targets": targets}
        for handle in workers:
            if handle is not sender:
                _send(handle, out)

    def worker_ready(self, handle: Any) -> None:
        if self.upstreams:
            _send(handle, {"op": "health_sync", "upstreams": self.upstreams})

    def status(self) -> dict[str, dict[str, str]]:
        return {name: {key: _WORDS.get(state, state.upper()) for key, state in targets.items()}
                for name, targets in sorted(self.upstreams.items())}
