"""FaultLog: one line per interval while a backend fails, the rest when it is back."""

from __future__ import annotations

import logging

from guichet.plugins.faultlog import FaultLog


def test_every_request_decided_without_the_backend_is_in_the_log(caplog):
    log = logging.getLogger("test.faultlog")
    faults = FaultLog(log, "rate-limiting", every=3600)
    with caplog.at_level(logging.WARNING, logger="test.faultlog"):
        for _ in range(5):
            faults.record("counters", ConnectionError("refused"), "let through")
        assert faults.pending
        faults.recovered()
        faults.recovered()  # nothing more to say
        faults.record("counters", ConnectionError("refused"), "let through")  # a new outage
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "rate-limiting: counters unavailable (refused); 1 request(s) let through since the "
        "last report",
        "rate-limiting: answering again; 4 more request(s) let through while it was not",
        "rate-limiting: counters unavailable (refused); 1 request(s) let through since the "
        "last report",
    ]
