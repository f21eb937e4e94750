"""The wait before a retry (a guichet extension: ``retry_backoff`` on a service), sans I/O.

Rules:

- Retry ``n`` (1 for the first retry) waits ``min(max, base * 2 ** (n - 1))`` seconds;
  with ``jitter`` (the default) a uniformly random part of it, from 0 ("full jitter",
  so retries of many clients spread out instead of arriving together).
- ``base: 0`` (the default) means no wait at all: retries go out at once, as in Kong.
- The wait never changes *whether* a request is retried (GUARANTEES §11: idempotent
  methods, before any response byte, within ``retries``); the proxy waits with a timer,
  never blocking the worker, and drops the timer when the client goes away.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True, slots=True)
class RetryBackoff:
    base: float = 0.0
    max: float = 1.0
    jitter: bool = True

    @property
    def enabled(self) -> bool:
        return self.base > 0

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if self.base <= 0:
            return 0.0
        ceiling = min(self.max, self.base * (2 ** min(max(retry, 1) - 1, 62)))
        return rand() * ceiling if self.jitter else ceiling

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "RetryBackoff | None":
        """None when the service waits for nothing (no ``retry_backoff`` or ``base`` 0)."""
        if not data:
            return None
        backoff = cls(float(data.get("base") or 0), float(data.get("max") or 0),
                      bool(data.get("jitter", True)))
        return backoff if backoff.enabled else None
