"""WebSocket (RFC 6455) pieces for the proxy: handshake checks and a frame-header scanner.

The gateway does not terminate WebSocket connections. It validates the opening handshake,
forwards the upgrade to the upstream, and once the upstream has answered a correct 101 it
tunnels raw bytes both ways, unchanged (no unmasking, no re-framing). While bytes pass,
a :class:`FrameScanner` per direction reads only the frame headers.

Handshake rules (RFC 6455 §4.2.1, §4.1):

- A request is a WebSocket upgrade when its ``Upgrade`` header lists the ``websocket``
  token (case-insensitive). Any other request is not our business (``None``).
- An upgrade is valid only with: method ``GET``; HTTP/1.1 or later; ``Connection`` listing
  ``upgrade``; exactly one ``Sec-WebSocket-Version`` equal to ``13``; exactly one
  ``Sec-WebSocket-Key`` that is strict base64 of exactly 16 bytes. Otherwise ``BadRequest``.
- The upstream's answer is accepted only when it is ``101``, lists ``websocket`` in
  ``Upgrade`` and ``upgrade`` in ``Connection``, carries exactly one
  ``Sec-WebSocket-Accept`` equal to base64(SHA-1(key + GUID)), and negotiates no extension
  other than ``permessage-deflate`` (RFC 7692): the scanner could not judge the RSV bits
  of an extension it does not know.

Frame rules enforced by the scanner (RFC 6455 §5, RFC 7692 §6):

- Client-to-server frames are masked, server-to-client frames are not.
- RSV2/RSV3 are never set; RSV1 only when permessage-deflate was negotiated, and then only
  on the first frame of a data message (never on continuations or control frames).
- Opcodes 3-7 and 11-15 are reserved. Control frames (close, ping, pong) have FIN set and
  carry at most 125 bytes; they may be interleaved within a fragmented message.
- A continuation frame needs an open message; a text/binary frame needs none open.
- A 64-bit length has its most significant bit clear. Non-minimal length encodings are
  tolerated (the endpoints may judge them; the size rules do not depend on them).
- A close payload is empty or holds a valid status code (§7.4) and a UTF-8 reason.
- A message (a data frame sequence up to FIN) whose payload sizes sum to more than
  ``max_message_size`` is ``TOO_BIG``; this is known from the headers, before its payload
  passes. With permessage-deflate the limit applies to the compressed size on the wire.
- Nothing may follow a close frame in the same direction.

Text payloads are not checked for UTF-8: that would need unmasking every payload byte.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from typing import Sequence

from guichet.errors import BadRequest

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONTINUE, CLOSE_SEEN, TOO_BIG, PROTOCOL_ERROR = 0, 1, 2, 3

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_MESSAGE_TOO_BIG = 1009

DEFAULT_MAX_MESSAGE_SIZE = 1 << 20

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_OWS = b" \t"
_KNOWN_EXTENSIONS = frozenset({b"permessage-deflate"})
# Codes an endpoint may put on the wire (RFC 6455 §7.4.1 and the IANA registry).
_WIRE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


# --------------------------------------------------------------------------- handshake


def _values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value.strip(_OWS) for key, value in headers if key == name]


def _tokens(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    """Every comma-separated token of every ``name`` line, lower-cased."""
    found: set[bytes] = set()
    for key, value in headers:
        if key == name:
            for token in value.split(b","):
                token = token.strip(_OWS)
                if token:
                    found.add(token.lower())
    return found


def _extension_names(headers: Sequence[tuple[bytes, bytes]]) -> set[bytes]:
    names: set[bytes] = set()
    for value in _values(headers, b"sec-websocket-extensions"):
        for offer in value.split(b","):
            name = offer.split(b";", 1)[0].strip(_OWS).lower()
            if name:
                names.add(name)
    return names


def check_upgrade_request(
    method: bytes, http_major: int, http_minor: int, headers: Sequence[tuple[bytes, bytes]]
) -> bytes | None:
    """The request's Sec-WebSocket-Key if it is a valid upgrade; None if it is no upgrade.

    Raises ``BadRequest`` for an attempted WebSocket upgrade that RFC 6455 §4.2.1 rejects.
    """
    if b"websocket" not in _tokens(headers, b"upgrade"):
        return None
    if method != b"GET":
        raise BadRequest("WebSocket upgrade requires the GET method")
    if (http_major, http_minor) < (1, 1):
        raise BadRequest("WebSocket upgrade requires HTTP/1.1")
    if b"upgrade" not in _tokens(headers, b"connection"):
        raise BadRequest("WebSocket upgrade requires 'Connection: Upgrade'")
    versions = _values(headers, b"sec-websocket-version")
    if len(versions) != 1 or versions[0] != b"13":
        raise BadRequest("WebSocket upgrade requires 'Sec-WebSocket-Version: 13'")
    keys = _values(headers, b"sec-websocket-key")
    if len(keys) != 1:
        raise BadRequest("WebSocket upgrade requires exactly one Sec-WebSocket-Key")
    key = keys[0]
    try:
        decoded = binascii.a2b_base64(key, strict_mode=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 16:
        raise BadRequest("Sec-WebSocket-Key must be the base64 encoding of 16 bytes")
    return key


def accept_value(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept an upstream must answer to ``key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def check_upgrade_response(
    status: int, headers: Sequence[tuple[bytes, bytes]], key: bytes
) -> str | None:
    """None when the upstream validly switched to WebSocket for ``key``; else the reason."""
    if status != 101:
        return f"upstream answered {status} instead of 101 Switching Protocols"
    if b"websocket" not in _tokens(headers, b"upgrade"):
        return "upstream 101 lacks 'Upgrade: websocket'"
    if b"upgrade" not in _tokens(headers, b"connection"):
        return "upstream 101 lacks 'Connection: Upgrade'"
    accepts = _values(headers, b"sec-websocket-accept")
    if not accepts:
        return "upstream 101 lacks Sec-WebSocket-Accept"
    if len(accepts) > 1:
        return "upstream 101 repeats Sec-WebSocket-Accept"
    if accepts[0] != accept_value(key):
        return "upstream 101 has a wrong Sec-WebSocket-Accept"
    unknown = _extension_names(headers) - _KNOWN_EXTENSIONS
    if unknown:
        names = ", ".join(sorted(n.decode("latin-1") for n in unknown))
        return f"upstream negotiated an unsupported WebSocket extension: {names}"
    return None


def allows_rsv1(response_headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether the 101 response negotiated permessage-deflate, whose frames set RSV1."""
    return b"permessage-deflate" in _extension_names(response_headers)


# --------------------------------------------------------------------------- close frames


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (RFC 6455 §7.4)."""
    return code in _WIRE_CLOSE_CODES or 3000 <= code <= 4999


def _apply_mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def close_frame(code: int, reason: str = "", *, masked: bool) -> bytes:
    """A complete close frame; masked with a random key when the gateway speaks as a client."""
    if not is_valid_close_code(code):
        raise ValueError(f"invalid WebSocket close code {code}")
    payload = _U16.pack(code) + reason.encode("utf-8")
    if len(payload) > 125:
        raise ValueError("a close reason is at most 123 bytes of UTF-8")
    if masked:
        key = os.urandom(4)
        return bytes((0x88, 0x80 | len(payload))) + key + _apply_mask(payload, key)
    return bytes((0x88, len(payload))) + payload


# --------------------------------------------------------------------------- frame scanner


class FrameScanner:
    """Reads the frame headers of one direction of a WebSocket tunnel as bytes pass.

    ``feed(chunk)`` walks the chunk by offsets and stops at the first event:

    - ``CONTINUE``: the whole chunk is fine to forward.
    - ``CLOSE_SEEN``: a close frame ended at ``offset``; forward ``chunk[:offset]``.
      ``close_code`` holds its status code (None for an empty close payload).
    - ``TOO_BIG`` / ``PROTOCOL_ERROR``: the offending frame starts at ``offset``; forward
      ``chunk[:offset]`` at most. ``offset`` is negative when that frame's first header
      bytes came with earlier chunks (already forwarded).

    The events are final: later calls return ``TOO_BIG``/``PROTOCOL_ERROR`` again, and
    after ``CLOSE_SEEN`` any further byte is a ``PROTOCOL_ERROR``. ``at_frame_boundary``
    tells whether the gateway may inject a frame of its own (a close) into this direction.
    Only a partial header (at most 13 bytes) and a close payload (at most 125) are copied.
    """

    __slots__ = (
        "max_message_size", "from_client", "allow_rsv1", "close_code", "offset",
        "_mask_bit", "_result", "_boundary", "_head", "_remaining", "_in_message",
        "_message_size", "_frame_length", "_is_close", "_close_key", "_close_payload",
        "_close_header_length",
    )

    def __init__(self, max_message_size: int, from_client: bool, allow_rsv1: bool = False) -> None:
        if max_message_size < 0:
            raise ValueError("max_message_size must not be negative")
        self.max_message_size = max_message_size
        self.from_client = from_client
        self.allow_rsv1 = allow_rsv1
        self.close_code: int | None = None
        self.offset = 0
        self._mask_bit = 0x80 if from_client else 0
        self._result = CONTINUE
        self._boundary = True          # meaningful once _result is not CONTINUE
        self._head = bytearray()       # carried-over partial header
        self._remaining = 0            # payload bytes of the current frame still to pass
        self._in_message = False
        self._message_size = 0
        self._frame_length = 0
        self._is_close = False
        self._close_key: bytes | None = None
        self._close_payload: bytearray | None = None  # set while a close payload passes
        self._close_header_length = 0

    @property
    def at_frame_boundary(self) -> bool:
        """Whether the bytes this scanner let through end exactly between two frames."""
        if self._result != CONTINUE:
            return self._boundary
        return not self._head and not self._remaining

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        if self._result != CONTINUE:
            if self._result == CLOSE_SEEN and n:
                self._result, self._boundary = PROTOCOL_ERROR, True
            self.offset = 0
            return self._result
        pos = 0
        remaining = self._remaining
        if remaining:
            if self._close_payload is None:
                if remaining >= n:
                    self._remaining = remaining - n
                    self.offset = n
                    return CONTINUE
                pos = remaining
                self._remaining = 0
            else:
                pos = remaining if remaining < n else n
                self._close_payload += data[:pos]
                self._remaining = remaining - pos
                if self._remaining:
                    self.offset = n
                    return CONTINUE
                return self._close_done(pos)
        while pos < n:
            head = self._head
            if head:
                carried = len(head)
                head += data[pos:pos + 14 - carried]
                header_length = self._parse_header(head, 0, len(head))
                if header_length == 0:
                    self.offset = n
                    return CONTINUE
                del head[:]
                if header_length < 0:
                    return self._fail(pos - carried, False)
                pos += header_length - carried
            else:
                header_length = self._parse_header(data, pos, n - pos)
                if header_length == 0:
                    self._head = bytearray(data[pos:])
                    self.offset = n
                    return CONTINUE
                if header_length < 0:
                    return self._fail(pos, True)
                pos += header_length
            length = self._frame_length
            available = n - pos
            if self._is_close:
                take = length if length < available else available
                self._close_payload = bytearray(data[pos:pos + take])
                pos += take
                if take < length:
                    self._remaining = length - take
                    self.offset = n
                    return CONTINUE
                return self._close_done(pos)
            if length >= available:
                self._remaining = length - available
                self.offset = n
                return CONTINUE
            pos += length
        self.offset = n
        return CONTINUE

    def _fail(self, frame_start: int, boundary: bool) -> int:
        self.offset = frame_start
        self._boundary = boundary
        return self._result

    def _parse_header(self, buf: bytes | bytearray | memoryview, p: int, avail: int) -> int:
        """Header length once complete and valid, 0 while incomplete, -1 on an event."""
        if avail < 2:
            return 0
        b0 = buf[p]
        b1 = buf[p + 1]
        length = b1 & 0x7F
        header_length = 6 if b1 & 0x80 else 2
        if length == 126:
            header_length += 2
        elif length == 127:
            header_length += 8
        if avail < header_length:
            return 0
        if length == 126:
            length = _U16.unpack_from(buf, p + 2)[0]
        elif length == 127:
            length = _U64.unpack_from(buf, p + 2)[0]
            if length >> 63:
                return self._event(PROTOCOL_ERROR)
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if (b1 & 0x80) != self._mask_bit:
            return self._event(PROTOCOL_ERROR)
        rsv = b0 & 0x70
        if rsv and (rsv != 0x40 or not self.allow_rsv1 or opcode == 0 or opcode >= 8):
            return self._event(PROTOCOL_ERROR)
        self._is_close = False
        if opcode >= 8:
            if opcode > 10 or not fin or length > 125:
                return self._event(PROTOCOL_ERROR)
            if opcode == 8:
                if length == 1:
                    return self._event(PROTOCOL_ERROR)
                self._is_close = True
                self._close_header_length = header_length
                self._close_key = bytes(buf[p + header_length - 4:p + header_length]) if b1 & 0x80 else None
        elif opcode == 0:
            if not self._in_message:
                return self._event(PROTOCOL_ERROR)
            size = self._message_size + length
            if size > self.max_message_size:
                return self._event(TOO_BIG)
            self._message_size = size
            self._in_message = not fin
        elif opcode <= 2:
            if self._in_message:
                return self._event(PROTOCOL_ERROR)
            if length > self.max_message_size:
                return self._event(TOO_BIG)
            self._message_size = length
            self._in_message = not fin
        else:
            return self._event(PROTOCOL_ERROR)
        self._frame_length = length
        return header_length

    def _event(self, result: int) -> int:
        self._result = result
        return -1

    def _close_done(self, end: int) -> int:
        payload = bytes(self._close_payload or b"")
        self._close_payload = None
        if self._close_key is not None:
            payload = _apply_mask(payload, self._close_key)
        self.offset = end
        self._boundary = True
        if payload:
            code = _U16.unpack_from(payload)[0]
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                code = 0
            if not is_valid_close_code(code):
                self._result = PROTOCOL_ERROR
                self.offset = end - len(payload) - self._close_header_length
                self._boundary = self.offset >= 0
                return PROTOCOL_ERROR
            self.close_code = code
        self._result = CLOSE_SEEN
        return CLOSE_SEEN
