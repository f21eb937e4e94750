"""A WebSocket tunnel: bytes pass unchanged both ways once the upstream said 101.

Rules (RFC 6455, GUARANTEES.md §18):

* Frames are not re-framed; a :class:`guichet.websocket.FrameScanner` per direction reads
  their headers as they pass to enforce ``websocket_max_message_size`` and spot closes.
* A message over the limit: both sides get close 1009 and the tunnel ends. A protocol
  error (bad opcode, wrong masking...): both sides get close 1002.
* Idle for ``websocket_idle_timeout`` (no byte either way): both sides get close 1001.
* Close propagation: a close frame passes through like any frame; when one side's TCP
  connection ends, the other side's is closed after its buffered bytes are written.
* Flow control: when one side cannot keep up, reading from the other pauses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guichet.websocket import CLOSE_SEEN, CONTINUE, TOO_BIG, FrameScanner, close_frame

if TYPE_CHECKING:
    from guichet.server.protocol import ClientProtocol
    from guichet.server.upstream import UpstreamConnection
    from guichet.worker import Runtime


class Tunnel:
    __slots__ = ("client", "upstream", "rt", "from_client_scan", "from_upstream_scan",
                 "last_activity", "closed", "client_said_close", "upstream_said_close")

    def __init__(self, client: "ClientProtocol", upstream: "UpstreamConnection", rt: "Runtime",
                 allow_rsv1: bool = False) -> None:
        self.client = client
        self.upstream = upstream
        self.rt = rt
        limit = rt.settings.websocket_max_message_size
        self.from_client_scan = FrameScanner(limit, from_client=True, allow_rsv1=allow_rsv1)
        self.from_upstream_scan = FrameScanner(limit, from_client=False, allow_rsv1=allow_rsv1)
        self.last_activity = rt.now
        self.closed = False
        self.client_said_close = False
        self.upstream_said_close = False

    def start(self, early_client: bytes, early_upstream: bytes) -> None:
        if early_upstream:
            self.from_upstream(early_upstream)
        if early_client and not self.closed:
            self.from_client(early_client)
        if not self.closed:
            self.client._apply_reading()

    def from_client(self, data: bytes) -> None:
        if self.closed or self.client_said_close:
            return
        self.last_activity = self.rt.now
        self._pass(data, self.from_client_scan, self.upstream.transport, True)

    def from_upstream(self, data: bytes) -> None:
        if self.closed or self.upstream_said_close:
            return
        self.last_activity = self.rt.now
        self._pass(data, self.from_upstream_scan, self.client.transport, False)

    def _pass(self, data: bytes, scan: FrameScanner, out, from_client: bool) -> None:
        verdict = scan.feed(data)
        if verdict == CONTINUE:
            if out is not None:
                out.write(data)
            return
        if scan.offset > 0 and out is not None:
            out.write(data[: scan.offset])
        if verdict == CLOSE_SEEN:
            # The close frame went through; nothing more flows this way. Once both sides
            # said close, end both connections.
            if from_client:
                self.client_said_close = True
            else:
                self.upstream_said_close = True
            if self.client_said_close and self.upstream_said_close:
                self._end()
            return
        self._shut(1009 if verdict == TOO_BIG else 1002)

    def _end(self) -> None:
        self.closed = True
        for t in (self.client.transport, self.upstream.transport):
            if t is not None and not t.is_closing():
                t.close()

    def _shut(self, code: int) -> None:
        """Tell both sides why, then close both connections."""
        if self.closed:
            return
        self.closed = True
        ct = self.client.transport
        ut = self.upstream.transport
        # A close frame goes only to a peer that is at a frame boundary (not mid-frame) and
        # has not closed its side already.
        if ct is not None and not ct.is_closing():
            if self.from_upstream_scan.at_frame_boundary and not self.upstream_said_close:
                ct.write(close_frame(code, masked=False))
            ct.close()
        if ut is not None and not ut.is_closing():
            if self.from_client_scan.at_frame_boundary and not self.client_said_close:
                ut.write(close_frame(code, masked=True))
            ut.close()

    def client_lost(self) -> None:
        if not self.closed:
            self.closed = True
            self.upstream.tunnel = None
            self.upstream.close()

    def upstream_lost(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.tunnel = None
            ct = self.client.transport
            if ct is not None:
                ct.close()

    def client_pause_writing(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def client_resume_writing(self) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def upstream_pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def upstream_resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def check_timeout(self, now: float) -> None:
        if not self.closed and now - self.last_activity > self.rt.settings.websocket_idle_timeout:
            self._shut(1001)


__all__ = ["Tunnel"]
