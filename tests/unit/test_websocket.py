"""RFC 6455 handshake checks and the tunnel's frame-header scanner, cross-checked with websockets."""

from __future__ import annotations

import os
import random
import struct

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Close, Frame, Opcode
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from guichet.errors import BadRequest
from guichet.websocket import (
    CLOSE_SEEN,
    CONTINUE,
    DEFAULT_MAX_MESSAGE_SIZE,
    PROTOCOL_ERROR,
    TOO_BIG,
    FrameScanner,
    accept_value,
    allows_rsv1,
    check_upgrade_request,
    check_upgrade_response,
    close_frame,
    is_valid_close_code,
)

MiB = 1 << 20
RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def frame(opcode: int, payload: bytes | int = b"", *, fin: bool = True, masked: bool = False,
          rsv: int = 0, length_class: int | None = None) -> bytes:
    """Our own encoder. ``payload`` as int: that many zero bytes. ``length_class`` forces
    the 7/16/64-bit length encoding (to build non-minimal or out-of-range headers)."""
    data = bytes(payload) if isinstance(payload, int) else payload
    n = len(data)
    b0 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    cls = length_class or (7 if n < 126 else 16 if n < 65536 else 64)
    if cls == 7:
        head = bytes((b0, mask_bit | n))
    elif cls == 16:
        head = bytes((b0, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mask_bit | 127)) + struct.pack("!Q", n)
    if masked:
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return head + data


def _len_bytes(length: int, masked: bool) -> bytes:
    m = 0x80 if masked else 0
    if length < 126:
        out = bytes((m | length,))
    elif length < 65536:
        out = bytes((m | 126,)) + struct.pack("!H", length)
    else:
        out = bytes((m | 127,)) + struct.pack("!Q", length)
    return out + (b"\x01\x02\x03\x04" if masked else b"")


def scanner(from_client: bool = False, limit: int = DEFAULT_MAX_MESSAGE_SIZE, rsv1: bool = False) -> FrameScanner:
    return FrameScanner(limit, from_client, allow_rsv1=rsv1)


# --------------------------------------------------------------------------- handshake

def request_headers(**over: bytes | None) -> list[tuple[bytes, bytes]]:
    base = {
        b"host": b"example.com",
        b"upgrade": b"websocket",
        b"connection": b"Upgrade",
        b"sec-websocket-key": RFC_KEY,
        b"sec-websocket-version": b"13",
    }
    for name, value in over.items():
        key = name.replace("_", "-").encode()
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return list(base.items())


def test_accept_value_rfc_example():
    assert accept_value(RFC_KEY) == RFC_ACCEPT


def test_valid_upgrade_returns_key():
    assert check_upgrade_request(b"GET", 1, 1, request_headers()) == RFC_KEY


def test_tokens_are_case_insensitive_and_listed():
    headers = request_headers(upgrade=b"WebSocket", connection=b"keep-alive, UPGRADE")
    assert check_upgrade_request(b"GET", 1, 1, headers) == RFC_KEY
    split = [h for h in request_headers() if h[0] != b"connection"]
    split += [(b"connection", b"keep-alive"), (b"connection", b" upgrade ")]
    assert check_upgrade_request(b"GET", 1, 1, split) == RFC_KEY


def test_not_an_upgrade_returns_none():
    assert check_upgrade_request(b"GET", 1, 1, request_headers(upgrade=None)) is None
    assert check_upgrade_request(b"GET", 1, 1, request_headers(upgrade=b"h2c")) is None
    assert check_upgrade_request(b"POST", 1, 0, [(b"host", b"x")]) is None


@pytest.mark.parametrize(
    "method, minor, over, message",
    [
        (b"POST", 1, {}, "GET"),
        (b"GET", 0, {}, "HTTP/1.1"),
        (b"GET", 1, {"connection": b"keep-alive"}, "Connection"),
        (b"GET", 1, {"connection": None}, "Connection"),
        (b"GET", 1, {"sec_websocket_version": b"8"}, "Version"),
        (b"GET", 1, {"sec_websocket_version": None}, "Version"),
        (b"GET", 1, {"sec_websocket_key": None}, "Key"),
        (b"GET", 1, {"sec_websocket_key": b"AAECAwQFBgcICQoLDA0O"}, "16 bytes"),  # 15 bytes
        (b"GET", 1, {"sec_websocket_key": b"AAECAwQFBgcICQoLDA0ODxA="}, "16 bytes"),  # 17 bytes
        (b"GET", 1, {"sec_websocket_key": b"not base64 at all!!!!!=="}, "16 bytes"),
        (b"GET", 1, {"sec_websocket_key": b"dGhlIHNhbXBsZSBub25jZQ"}, "16 bytes"),  # no padding
    ],
)
def test_invalid_upgrade_raises_bad_request(method, minor, over, message):
    with pytest.raises(BadRequest, match=message) as info:
        check_upgrade_request(method, 1, minor, request_headers(**over))
    assert info.value.status == 400


def test_repeated_key_or_version_rejected():
    with pytest.raises(BadRequest, match="exactly one"):
        check_upgrade_request(b"GET", 1, 1, request_headers() + [(b"sec-websocket-key", RFC_KEY)])
    with pytest.raises(BadRequest, match="Version"):
        check_upgrade_request(b"GET", 1, 1, request_headers() + [(b"sec-websocket-version", b"13")])


def response_headers(**over: bytes | None) -> list[tuple[bytes, bytes]]:
    base = {b"upgrade": b"websocket", b"connection": b"Upgrade", b"sec-websocket-accept": RFC_ACCEPT}
    for name, value in over.items():
        key = name.replace("_", "-").encode()
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return list(base.items())


def test_valid_response():
    assert check_upgrade_response(101, response_headers(), RFC_KEY) is None
    assert check_upgrade_response(101, response_headers(upgrade=b"WebSocket", connection=b"upgrade"), RFC_KEY) is None


@pytest.mark.parametrize(
    "status, over, reason",
    [
        (200, {}, "200"),
        (101, {"sec_websocket_accept": b"AAAAAAAAAAAAAAAAAAAAAAAAAAA="}, "wrong Sec-WebSocket-Accept"),
        (101, {"sec_websocket_accept": None}, "lacks Sec-WebSocket-Accept"),
        (101, {"upgrade": None}, "Upgrade"),
        (101, {"upgrade": b"h2c"}, "Upgrade"),
        (101, {"connection": b"keep-alive"}, "Connection"),
        (101, {"sec_websocket_extensions": b"x-custom; a=1"}, "x-custom"),
    ],
)
def test_invalid_response_gives_reason(status, over, reason):
    result = check_upgrade_response(status, response_headers(**over), RFC_KEY)
    assert result is not None and reason in result


def test_accept_for_another_key_rejected():
    other = b"AAECAwQFBgcICQoLDA0ODw=="
    assert check_upgrade_response(101, response_headers(), other) is not None
    assert check_upgrade_response(101, response_headers(sec_websocket_accept=accept_value(other)), other) is None


def test_repeated_accept_rejected():
    headers = response_headers() + [(b"sec-websocket-accept", RFC_ACCEPT)]
    assert "repeats" in check_upgrade_response(101, headers, RFC_KEY)


def test_permessage_deflate_accepted_and_sets_rsv1():
    headers = response_headers(sec_websocket_extensions=b"permessage-deflate; server_no_context_takeover")
    assert check_upgrade_response(101, headers, RFC_KEY) is None
    assert allows_rsv1(headers)
    assert not allows_rsv1(response_headers())


def _raw(headers) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.raw_items()]


@pytest.mark.parametrize("deflate", [False, True])
def test_handshake_cross_checked_with_websockets(deflate):
    client = ClientProtocol(parse_uri("ws://example.com/chat"),
                            extensions=[ClientPerMessageDeflateFactory()] if deflate else None)
    request = client.connect()
    key = check_upgrade_request(b"GET", 1, 1, _raw(request.headers))
    assert key == request.headers["Sec-WebSocket-Key"].encode()
    server = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()] if deflate else None)
    response = server.accept(request)
    assert check_upgrade_response(response.status_code, _raw(response.headers), key) is None
    assert allows_rsv1(_raw(response.headers)) is deflate
    # the same 101 with our own accept value is what the websockets client accepts
    assert response.headers["Sec-WebSocket-Accept"].encode() == accept_value(key)


# --------------------------------------------------------------------------- scanner basics

@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("from_client", [True, False])
def test_every_length_class(length, from_client):
    data = frame(2, length, masked=from_client)
    s = scanner(from_client)
    assert s.feed(data) == CONTINUE
    assert s.offset == len(data)
    assert s.at_frame_boundary


@pytest.mark.parametrize("from_client", [True, False])
def test_websockets_frames_all_length_classes(from_client):
    stream = b"".join(
        Frame(Opcode.BINARY, os.urandom(n)).serialize(mask=from_client) for n in (0, 125, 126, 65535, 65536)
    )
    s = scanner(from_client)
    assert s.feed(memoryview(stream)) == CONTINUE
    assert s.at_frame_boundary


def _stream(from_client: bool) -> bytes:
    m = from_client
    return b"".join([
        frame(1, b"hello", masked=m),
        frame(2, 300, masked=m, fin=False),
        frame(9, b"ping", masked=m),
        frame(0, 70000, masked=m, fin=False),
        frame(10, b"", masked=m),
        frame(0, 5, masked=m),
        frame(2, 0, masked=m),
    ])


@pytest.mark.parametrize("from_client", [True, False])
def test_split_at_every_byte_boundary(from_client):
    stream = memoryview(_stream(from_client))
    for cut in range(len(stream) + 1):
        s = scanner(from_client)
        assert s.feed(stream[:cut]) == CONTINUE
        assert s.feed(stream[cut:]) == CONTINUE, cut
        assert s.at_frame_boundary


def test_byte_by_byte():
    stream = _stream(True)
    s = scanner(True)
    view = memoryview(stream)
    for i in range(len(stream)):
        assert s.feed(view[i:i + 1]) == CONTINUE
        assert len(s._head) <= 13  # only a partial header is ever carried over
    assert s.at_frame_boundary


def test_at_frame_boundary_tracks_partial_frames():
    data = frame(2, 1000)
    s = scanner()
    s.feed(data[:1])
    assert not s.at_frame_boundary  # partial header
    s.feed(data[1:500])
    assert not s.at_frame_boundary  # inside the payload
    s.feed(data[500:])
    assert s.at_frame_boundary


def test_random_chunks_against_websockets_encoder():
    rng = random.Random(6455)
    frames = []
    for _ in range(200):
        kind = rng.random()
        if kind < 0.2:
            frames.append(Frame(Opcode.PING, rng.randbytes(rng.randint(0, 125))))
        elif kind < 0.4:
            parts = rng.randint(2, 4)
            for i in range(parts):
                op = Opcode.TEXT if i == 0 else Opcode.CONT
                frames.append(Frame(op, rng.randbytes(rng.choice([0, 10, 200, 70000])), fin=i == parts - 1))
                if rng.random() < 0.5:
                    frames.append(Frame(Opcode.PONG, rng.randbytes(3)))
        else:
            frames.append(Frame(Opcode.BINARY, rng.randbytes(rng.choice([1, 125, 126, 4000]))))
    frames.append(Frame(Opcode.CLOSE, Close(4321, "done").serialize()))
    stream = b"".join(f.serialize(mask=True) for f in frames)
    s = scanner(True)
    pos = 0
    result = CONTINUE
    while result == CONTINUE:
        step = rng.choice([1, 2, 7, 14, 100, 4096, 65536])
        chunk = stream[pos:pos + step]
        result = s.feed(chunk)
        pos += s.offset
    assert result == CLOSE_SEEN
    assert pos == len(stream)
    assert s.close_code == 4321


def test_compressed_messages_from_websockets_client():
    client = ClientProtocol(parse_uri("ws://example.com/"), extensions=[ClientPerMessageDeflateFactory()])
    server = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()])
    request = client.connect()
    client.send_request(request)
    client.data_to_send()
    response = server.accept(request)
    server.send_response(response)
    client.receive_data(b"".join(server.data_to_send()))
    client.send_text(b"a" * 5000, fin=False)
    client.send_ping(b"x")
    client.send_continuation(b"b" * 5000, fin=True)
    client.send_text(b"hello again")
    wire = b"".join(client.data_to_send())
    assert wire[0] & 0x40  # RSV1: compressed
    assert scanner(True, rsv1=True).feed(wire) == CONTINUE
    assert scanner(True, rsv1=False).feed(wire) == PROTOCOL_ERROR


# --------------------------------------------------------------------------- message size

def test_fragmented_message_exactly_at_limit_passes():
    s = scanner(True)
    quarter = MiB // 4
    parts = [frame(1, quarter, masked=True, fin=False), frame(0, quarter, masked=True, fin=False),
             frame(9, 125, masked=True), frame(0, MiB - 2 * quarter, masked=True)]
    for part in parts:
        assert s.feed(part) == CONTINUE
    # the limit resets for the next message
    assert s.feed(frame(2, MiB, masked=True)) == CONTINUE


def test_fragmented_message_one_byte_over_limit():
    s = scanner(True)
    first = frame(1, MiB // 2, masked=True, fin=False)
    second = frame(0, MiB // 2, masked=True, fin=False)
    ping = frame(9, 4, masked=True)
    last = frame(0, 1, masked=True)
    assert s.feed(first) == CONTINUE
    assert s.feed(second + ping) == CONTINUE
    chunk = frame(9, 1, masked=True) + last
    assert s.feed(chunk) == TOO_BIG
    assert s.offset == len(chunk) - len(last)  # the offending frame starts there
    assert s.at_frame_boundary
    assert s.feed(b"more") == TOO_BIG  # final


def test_single_frame_over_limit_detected_from_header_alone():
    s = scanner(False, limit=MiB)
    head = _len_bytes(MiB + 1, False)
    assert s.feed(bytes((0x82,)) + head) == TOO_BIG
    assert s.offset == 0
    s = scanner(False, limit=MiB)
    assert s.feed(bytes((0x82,)) + _len_bytes(MiB, False)) == CONTINUE


def test_control_frames_do_not_count_toward_message_size():
    s = scanner(False, limit=10)
    stream = frame(1, 5, fin=False) + frame(9, 100) + frame(10, 100) + frame(0, 5)
    assert s.feed(stream) == CONTINUE


def test_too_big_when_header_split_reports_negative_offset():
    data = frame(2, 200)
    s = scanner(False, limit=100)
    assert s.feed(data[:1]) == CONTINUE
    assert s.feed(data[1:]) == TOO_BIG
    assert s.offset == -1
    assert not s.at_frame_boundary  # a header byte already went through


# --------------------------------------------------------------------------- close frames

@pytest.mark.parametrize("from_client", [True, False])
def test_close_detected_at_every_split(from_client):
    data = frame(2, b"x" * 130, masked=from_client)
    close = Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(mask=from_client)
    stream = data + close
    for cut in range(len(stream) + 1):
        s = scanner(from_client)
        first = s.feed(stream[:cut])
        if cut == len(stream):
            assert first == CLOSE_SEEN and s.offset == cut
        else:
            assert first == CONTINUE
            assert s.feed(stream[cut:]) == CLOSE_SEEN
            assert s.offset == len(stream) - cut
        assert s.close_code == 1000


def test_close_without_payload():
    s = scanner()
    assert s.feed(frame(8)) == CLOSE_SEEN
    assert s.close_code is None


def test_bytes_after_close():
    close = frame(8, struct.pack("!H", 1001))
    s = scanner()
    assert s.feed(close + frame(1, b"late")) == CLOSE_SEEN
    assert s.offset == len(close)
    assert s.close_code == 1001
    assert s.feed(b"") == CLOSE_SEEN
    assert s.feed(b"x") == PROTOCOL_ERROR


@pytest.mark.parametrize("masked", [True, False])
def test_close_frame_builder_parsed_by_websockets(masked):
    data = close_frame(1009, "message too big", masked=masked)
    assert bool(data[1] & 0x80) is masked
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=masked)
    with pytest.raises(StopIteration) as done:
        next(parser)
    parsed = done.value.value
    assert parsed.opcode == Opcode.CLOSE
    close = Close.parse(parsed.data)
    assert (close.code, close.reason) == (1009, "message too big")
    s = scanner(from_client=masked)
    assert s.feed(data) == CLOSE_SEEN and s.close_code == 1009


def test_close_frame_masks_with_random_key():
    assert close_frame(1002, masked=True)[2:6] != close_frame(1002, masked=True)[2:6]
    assert close_frame(1000, masked=False) == b"\x88\x02\x03\xe8"


def test_close_frame_rejects_bad_input():
    with pytest.raises(ValueError):
        close_frame(1005, masked=False)
    with pytest.raises(ValueError):
        close_frame(1000, "é" * 62, masked=False)  # 124 bytes of reason
    assert len(close_frame(1000, "r" * 123, masked=False)) == 2 + 125


def test_close_code_validity():
    assert all(is_valid_close_code(c) for c in (1000, 1001, 1002, 1003, 1007, 1009, 1011, 1014, 3000, 4999))
    assert not any(is_valid_close_code(c) for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000))


@pytest.mark.parametrize("payload", [
    b"\x03",                              # length 1
    struct.pack("!H", 1005),              # reserved, never on the wire
    struct.pack("!H", 999),
    struct.pack("!H", 2000),
    struct.pack("!H", 5000),
    struct.pack("!H", 1000) + b"\xff\xfe",  # reason not UTF-8
])
def test_bad_close_payload(payload):
    data = frame(2, 3) + frame(8, payload, masked=False)
    s = scanner()
    assert s.feed(data) == PROTOCOL_ERROR
    assert s.offset == 5  # the close frame starts after the 5-byte binary frame
    assert s.close_code is None


def test_bad_close_payload_split_has_negative_offset():
    data = frame(8, struct.pack("!H", 1005) + b"reason", masked=True)
    s = scanner(True)
    assert s.feed(data[:7]) == CONTINUE
    assert s.feed(data[7:]) == PROTOCOL_ERROR
    assert s.offset == -7 and not s.at_frame_boundary


# --------------------------------------------------------------------------- protocol errors

def test_masking_rules_both_directions():
    assert scanner(from_client=True).feed(frame(1, b"hi", masked=False)) == PROTOCOL_ERROR
    assert scanner(from_client=False).feed(frame(1, b"hi", masked=True)) == PROTOCOL_ERROR
    assert scanner(from_client=True).feed(frame(9, b"", masked=False)) == PROTOCOL_ERROR
    assert scanner(from_client=False).feed(frame(8, b"", masked=True)) == PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_reserved_opcodes(opcode):
    assert scanner().feed(frame(opcode, b"x")) == PROTOCOL_ERROR


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x60])
def test_rsv_bits_without_extension(rsv):
    assert scanner().feed(frame(1, b"x", rsv=rsv)) == PROTOCOL_ERROR


def test_rsv1_with_permessage_deflate():
    assert scanner(rsv1=True).feed(frame(1, b"x", rsv=0x40)) == CONTINUE
    assert scanner(rsv1=True).feed(frame(2, b"x", rsv=0x40, fin=False) + frame(0, b"y")) == CONTINUE
    assert scanner(rsv1=True).feed(frame(2, b"x", rsv=0x40, fin=False) + frame(0, b"y", rsv=0x40)) == PROTOCOL_ERROR
    assert scanner(rsv1=True).feed(frame(9, b"x", rsv=0x40)) == PROTOCOL_ERROR
    for rsv in (0x20, 0x10, 0x50, 0x70):
        assert scanner(rsv1=True).feed(frame(1, b"x", rsv=rsv)) == PROTOCOL_ERROR


def test_control_frame_rules():
    assert scanner().feed(frame(9, 126)) == PROTOCOL_ERROR
    assert scanner().feed(frame(10, 125)) == CONTINUE
    assert scanner().feed(frame(9, b"x", fin=False)) == PROTOCOL_ERROR
    assert scanner().feed(frame(8, 200)) == PROTOCOL_ERROR


def test_fragmentation_rules():
    assert scanner().feed(frame(0, b"orphan")) == PROTOCOL_ERROR
    s = scanner()
    start = frame(1, b"a", fin=False)
    assert s.feed(start + frame(2, b"b")) == PROTOCOL_ERROR
    assert s.offset == len(start) and s.at_frame_boundary
    assert scanner().feed(frame(1, b"a") + frame(0, b"b")) == PROTOCOL_ERROR


def test_64_bit_length_high_bit():
    bad = bytes((0x82, 127)) + struct.pack("!Q", 1 << 63)
    assert scanner(limit=1 << 62).feed(bad) == PROTOCOL_ERROR
    huge = bytes((0x82, 127)) + struct.pack("!Q", (1 << 63) - 1)
    assert scanner(limit=1 << 63).feed(huge) == CONTINUE


def test_non_minimal_length_tolerated():
    assert scanner().feed(frame(2, b"abc", length_class=16) + frame(2, b"d", length_class=64)) == CONTINUE


def test_masked_close_with_non_minimal_length():
    data = frame(8, struct.pack("!H", 4000) + b"why", masked=True, length_class=16)
    s = scanner(True)
    assert s.feed(data) == CLOSE_SEEN
    assert s.close_code == 4000


def test_errors_are_final():
    s = scanner()
    assert s.feed(frame(3)) == PROTOCOL_ERROR
    assert s.feed(frame(1, b"fine")) == PROTOCOL_ERROR
    assert s.offset == 0
