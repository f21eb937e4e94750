"""correlation-id on requests built in memory: the uuid, uuid#counter and tracker
generators (a forked worker gets its own sequence), a client-sent value kept, the value
echoed downstream."""

from __future__ import annotations

import os
import re

import pytest
from pydantic import ValidationError

from guichet.plugins.bundled import correlation_id as correlation_module
from guichet.plugins.bundled.correlation_id import CorrelationId, WorkerSequence, uuid4
from guichet.plugins.request import ResponseHead
from support.plugin_requests import build, make_request, upstream_headers

# ======================================================================== correlation-id
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_uuid4_shape_and_uniqueness():
    values = {uuid4() for _ in range(5000)}
    assert len(values) == 5000
    assert all(UUID4.fullmatch(v) for v in values)


def test_worker_sequence_counts_and_resets():
    seq = WorkerSequence()
    first, second = seq.next(), seq.next()
    prefix = first[:-2]
    assert UUID4.fullmatch(prefix) and first == prefix + "#1" and second == prefix + "#2"
    seq.reset()
    assert seq.next().endswith("#1") and not seq.next().startswith(prefix)


def test_correlation_id_forked_worker_gets_its_own_sequence():
    parent = correlation_module.WORKER_SEQUENCE.prefix
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(write, correlation_module.WORKER_SEQUENCE.next().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    os.close(read)
    assert child.endswith("#1") and not child.startswith(parent)


def test_correlation_id_config():
    conf = CorrelationId.Config.model_validate({})
    assert (conf.header_name, conf.generator, conf.echo_downstream) == \
        ("Kong-Request-ID", "uuid#counter", False)
    for bad in ({"generator": "ulid"}, {"header_name": "bad name"},
                {"header_name": "Content-Length"}, {"header_name": ""}):
        with pytest.raises(ValidationError):
            CorrelationId.Config.model_validate(bad)


def test_correlation_id_sets_keeps_and_echoes():
    plugin = build(CorrelationId, generator="uuid", echo_downstream=True)
    req = make_request()
    assert plugin.access(req) is None
    value = upstream_headers(req)["kong-request-id"]
    assert UUID4.fullmatch(value) and req.ctx["correlation_id"] == value
    head = ResponseHead(200, [])
    plugin.response_headers(req, head)
    assert head.get("Kong-Request-ID") == value
    # a client-sent value is kept and not rewritten
    req = make_request(headers=[("kong-request-id", "client-1")])
    plugin.access(req)
    assert "kong-request-id" not in upstream_headers(req)
    head = ResponseHead(200, [])
    plugin.response_headers(req, head)
    assert head.get("Kong-Request-ID") == "client-1"
    # answered before access ran: a fresh value
    head = ResponseHead(404, [])
    plugin.response_headers(make_request(), head)
    assert UUID4.fullmatch(head.get("Kong-Request-ID"))


def test_correlation_id_counter_and_tracker():
    plugin = build(CorrelationId, header_name="X-Trace")
    req1, req2 = make_request(), make_request()
    plugin.access(req1)
    plugin.access(req2)
    a, b = upstream_headers(req1)["x-trace"], upstream_headers(req2)["x-trace"]
    pa, _, na = a.rpartition("#")
    pb, _, nb = b.rpartition("#")
    assert pa == pb and int(nb) == int(na) + 1
    # without echo_downstream the response phase is left out of the chain
    assert plugin.active_phases() == ("access",)
    assert build(CorrelationId, echo_downstream=True).active_phases() == \
        ("access", "response_headers")
    tracker = build(CorrelationId, generator="tracker")
    req = make_request(headers=[("Host", "gw.test:8443")])
    tracker.access(req)
    value = upstream_headers(req)["kong-request-id"]
    assert re.fullmatch(rf"gw\.test-8443-{os.getpid()}-rid-1-\d+\.\d{{3}}", value), value
