"""Log lines about a backend that cannot answer (Redis, a quota store), without flooding.

While the backend fails, at most one line per ``every`` seconds, saying how many requests
had which outcome since the previous line; once it answers again, one line with the rest,
so every request decided without the backend is in the log (the counts in ``/status``
are the exact record).
"""

from __future__ import annotations

import logging
import math
import time


class FaultLog:
    __slots__ = ("log", "subject", "every", "pending", "_last", "_count", "_outcome")

    def __init__(self, log: logging.Logger, subject: str, every: float = 10.0) -> None:
        self.log = log
        self.subject = subject
        self.every = every
        self.pending = False  # requests decided without the backend and not yet logged
        self._last = -math.inf
        self._count = 0
        self._outcome = ""

    def record(self, what: str, exc: BaseException, outcome: str) -> None:
        """A request decided without the backend (``what``: what could not answer)."""
        self._count += 1
        self._outcome = outcome
        self.pending = True
        now = time.monotonic()
        if now - self._last >= self.every:
            self.log.error("%s: %s unavailable (%s); %d request(s) %s since the last report",
                           self.subject, what, exc, self._count, outcome)
            self._last = now
            self._count = 0

    def recovered(self) -> None:
        """The backend answered again: log what was not logged yet."""
        self.pending = False
        if self._count:
            self.log.warning("%s: answering again; %d more request(s) %s while it was not",
                             self.subject, self._count, self._outcome)
            self._count = 0
        self._last = -math.inf  # the next outage is logged at once
