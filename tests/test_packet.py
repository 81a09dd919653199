"""Packet and frame codecs: layouts, round trips, and DecodeError for any bad bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from udpchat_proto.errors import DecodeError
from udpchat_proto.transport.connection import _append_ack
from udpchat_proto.transport.packets import (
    ACK_TYPE,
    CLOSE_TYPE,
    DATA_HEADER_SIZE,
    DATA_TYPE,
    INITIATION_SIZE,
    MAX_ACK_RANGES,
    MAX_CLOSE_REASON_BYTES,
    MAX_VARINT,
    PADDING_TYPE,
    PATH_CHALLENGE_TYPE,
    PATH_RESPONSE_TYPE,
    PING_TYPE,
    RETRY_SIZE,
    STREAM_TYPE,
    AckFrame,
    CloseFrame,
    DataPacket,
    Frame,
    FrameType,
    HandshakeInitiation,
    HandshakeResponse,
    PacketType,
    PaddingFrame,
    PathChallengeFrame,
    PathResponseFrame,
    PingFrame,
    Retry,
    StreamFrame,
    append_varint,
    decode_frames,
    decode_packet,
    decode_varint,
    encode_ack,
    encode_data_header,
    encode_frame,
    encode_frames,
    encode_initiation,
    encode_response,
    encode_retry,
    encode_varint,
    initiation_payload,
    read_varint,
)
from udpchat_proto.transport.ranges import RangeSet

CID = bytes.fromhex("0102030405060708")


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, "00"),
        (63, "3f"),
        (64, "4040"),
        (15293, "7bbd"),  # RFC 9000, appendix A.1 examples
        (494878333, "9d7f3e7d"),
        (151288809941952652, "c2197c5eff14e88c"),
        (MAX_VARINT, "ffffffffffffffff"),
    ],
)
def test_varint_examples(value: int, wire: str) -> None:
    assert encode_varint(value).hex() == wire
    assert decode_varint(bytes.fromhex(wire), 0) == (value, len(wire) // 2)


def test_varint_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_varint(MAX_VARINT + 1)
    with pytest.raises(ValueError):
        encode_varint(-1)
    with pytest.raises(DecodeError):
        decode_varint(b"\x40", 0)


def test_data_header_layout() -> None:
    header = encode_data_header(CID, 0x0102)
    assert header.hex() == "03" + CID.hex() + "0000000000000102"
    assert len(header) == DATA_HEADER_SIZE == 17
    packet = decode_packet(header + bytes(16))
    assert packet == DataPacket(
        connection_id=CID, packet_number=0x0102, header=header, ciphertext=bytes(16)
    )


def test_initiation_layout() -> None:
    datagram = encode_initiation(CID, bytes(INITIATION_SIZE - 10))
    assert datagram[:2] == b"\x01\x01" and datagram[2:10] == CID
    assert decode_packet(datagram) == HandshakeInitiation(
        connection_id=CID, noise_message=bytes(INITIATION_SIZE - 10)
    )
    with pytest.raises(DecodeError) as info:
        decode_packet(datagram[:-1])
    assert info.value.reason == "initiation_size"
    with pytest.raises(DecodeError) as info:
        decode_packet(b"\x01\x02" + datagram[2:])
    assert info.value.reason == "unsupported_version"


def test_response_layout() -> None:
    datagram = encode_response(CID, bytes(96))
    assert decode_packet(datagram) == HandshakeResponse(connection_id=CID, noise_message=bytes(96))
    with pytest.raises(DecodeError):
        decode_packet(datagram[:-1])


def test_retry_layout() -> None:
    token = bytes(range(24))
    datagram = encode_retry(CID, token)
    assert datagram.hex() == "04" + CID.hex() + token.hex()
    assert len(datagram) == RETRY_SIZE == 33
    assert decode_packet(datagram) == Retry(connection_id=CID, token=token)
    for bad in (datagram[:-1], datagram + b"\x00"):
        with pytest.raises(DecodeError) as info:
            decode_packet(bad)
        assert info.value.reason == "retry_size"


def test_initiation_carries_its_token_in_the_clear_payload() -> None:
    token = bytes(range(24))
    noise = bytes(32) + initiation_payload(token, INITIATION_SIZE - 42)
    datagram = encode_initiation(CID, noise)
    assert len(datagram) == INITIATION_SIZE
    assert datagram[42] == 24 and datagram[43:67] == token and datagram[67:] == bytes(1133)
    packet = decode_packet(datagram)
    assert isinstance(packet, HandshakeInitiation) and packet.token == token
    # Version 1's all-zero padding reads as "no token".
    plain = decode_packet(encode_initiation(CID, bytes(INITIATION_SIZE - 10)))
    assert isinstance(plain, HandshakeInitiation) and plain.token == b""


@pytest.mark.parametrize(
    ("position", "value", "reason"),
    [
        (42, 1, "initiation_token_length"),  # neither 0 nor 24
        (42, 23, "initiation_token_length"),
        (42, 255, "initiation_token_length"),
        (43, 1, "initiation_padding"),  # no token: everything from 43 is padding
        (1199, 0x80, "initiation_padding"),  # the last byte
    ],
)
def test_an_initiation_must_have_version_1s_layout(position: int, value: int, reason: str) -> None:
    """PROTOCOL.md, INITIATION: token length 0 or 24, then zeros. Anything else is
    dropped before any Diffie-Hellman work."""
    datagram = bytearray(encode_initiation(CID, bytes(INITIATION_SIZE - 10)))
    datagram[position] = value
    with pytest.raises(DecodeError) as info:
        decode_packet(bytes(datagram))
    assert info.value.reason == reason


def test_an_initiation_with_a_token_is_padded_with_zeros_after_it() -> None:
    token = b"\xff" * 24  # a token's own bytes may be anything
    noise = bytes(32) + initiation_payload(token, INITIATION_SIZE - 42)
    assert isinstance(decode_packet(encode_initiation(CID, noise)), HandshakeInitiation)
    datagram = bytearray(encode_initiation(CID, noise))
    datagram[67] = 1  # the first byte after the token
    with pytest.raises(DecodeError) as info:
        decode_packet(bytes(datagram))
    assert info.value.reason == "initiation_padding"


def test_path_frames_layout() -> None:
    data = bytes.fromhex("0102030405060708")
    assert encode_frame(PathChallengeFrame(data)).hex() == "05" + data.hex()
    assert encode_frame(PathResponseFrame(data)).hex() == "06" + data.hex()
    assert decode_frames(bytes.fromhex("05" + data.hex() + "06" + data.hex())) == [
        PathChallengeFrame(data),
        PathResponseFrame(data),
    ]
    for cut in ("05" + "0102", "06"):
        with pytest.raises(DecodeError):
            decode_frames(bytes.fromhex(cut))


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x04abc", b"\x03" + bytes(31), b"\xff" * 40])
def test_bad_packets(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_packet(data)


def test_ack_frame_like_quic() -> None:
    frame = AckFrame(ranges=((0, 3), (5, 6), (8, 11)), delay_us=100)
    wire = encode_frame(frame)
    # type, largest 10, delay 100, 2 more ranges, first range 2 (8..10),
    # gap 1 (6, 7 missing), length 0 (5), gap 1 (3, 4 missing), length 2 (0..2).
    assert wire.hex() == "02" + "0a" + "4064" + "02" + "02" + "01" + "00" + "01" + "02"
    assert decode_frames(wire) == [frame]
    assert frame.largest == 10


def test_ack_keeps_only_the_highest_ranges() -> None:
    ranges = tuple((i * 3, i * 3 + 1) for i in range(MAX_ACK_RANGES + 5))
    (decoded,) = decode_frames(encode_frame(AckFrame(ranges=ranges)))
    assert isinstance(decoded, AckFrame)
    assert decoded.ranges == ranges[-MAX_ACK_RANGES:]


@pytest.mark.parametrize(
    "wire",
    [
        "02" + "01" + "00" + "00" + "05",  # first range below zero
        "02" + "05" + "00" + "01" + "00" + "04" + "00",  # second range below zero
        "02" + "05" + "00" + "3f" + "00",  # count larger than the packet
        "03" + "00" + "05" + "6162",  # stream data cut short
        "04" + "00" + "02" + "ff",  # reason cut short
        "04" + "00" + "01" + "ff",  # reason not UTF-8
        "09",  # unknown frame
        "",  # no frame at all
    ],
)
def test_bad_frames(wire: str) -> None:
    with pytest.raises(DecodeError):
        decode_frames(bytes.fromhex(wire))


def test_close_reason_truncated_on_a_character_boundary() -> None:
    frame = CloseFrame(code=0, reason="é" * 200)  # 400 bytes
    (decoded,) = decode_frames(encode_frame(frame))
    assert isinstance(decoded, CloseFrame)
    assert decoded.reason == "é" * (MAX_CLOSE_REASON_BYTES // 2)


@st.composite
def ack_frames(draw: st.DrawFn) -> AckFrame:
    count = draw(st.integers(1, MAX_ACK_RANGES))
    ranges = []
    cursor = draw(st.integers(0, 1000))
    for _ in range(count):
        start = cursor + draw(st.integers(0, 2**20))
        stop = start + draw(st.integers(1, 1000))
        ranges.append((start, stop))
        cursor = stop + 1  # at least one missing number between ranges
    return AckFrame(ranges=tuple(ranges), delay_us=draw(st.integers(0, 2**40)))


frames: st.SearchStrategy[Frame] = st.one_of(
    st.just(PingFrame()),
    ack_frames(),
    st.builds(StreamFrame, offset=st.integers(0, 2**50), data=st.binary(min_size=0, max_size=300)),
    st.builds(
        CloseFrame,
        code=st.integers(0, 2**30),
        reason=st.text(st.characters(exclude_categories=["Cs"]), max_size=60),
    ),
    st.builds(PathChallengeFrame, st.binary(min_size=8, max_size=8)),
    st.builds(PathResponseFrame, st.binary(min_size=8, max_size=8)),
)


def _up_to_close(items: list[Frame]) -> list[Frame]:
    """What a receiver decodes: the frames up to the first CLOSE, which ends the packet."""
    for index, frame in enumerate(items):
        if isinstance(frame, CloseFrame):
            return items[: index + 1]
    return items


@given(st.lists(frames, min_size=1, max_size=8))
def test_frames_round_trip(items: list[Frame]) -> None:
    assert decode_frames(encode_frames(items)) == _up_to_close(items)


@given(st.integers(0, 2**10), st.lists(frames, max_size=3))
def test_padding_is_one_frame_per_run(length: int, items: list[Frame]) -> None:
    wire = encode_frames([*items, PaddingFrame(length + 1)])
    assert decode_frames(wire) == _up_to_close([*items, PaddingFrame(length + 1)])


@pytest.mark.parametrize(
    "after",
    [
        b"\xff",  # an unknown frame type
        b"\x03\x00\x05ab",  # a STREAM frame cut short
        encode_frames([PingFrame(), StreamFrame(offset=0, data=b"request")]),
    ],
    ids=["unknown-frame", "truncated-stream", "ping-and-stream"],
)
def test_nothing_after_a_close_is_decoded(after: bytes) -> None:
    """PROTOCOL.md, Frames: a CLOSE ends the packet. What follows, even garbage, is
    not decoded, so it cannot turn the peer's close into a protocol violation."""
    close = CloseFrame(code=0, reason="bye")
    ack = AckFrame(ranges=((0, 3),), delay_us=0)
    assert decode_frames(encode_frames([ack, close]) + after) == [ack, close]


@given(st.integers(0, MAX_VARINT))
def test_varint_round_trip(value: int) -> None:
    wire = encode_varint(value)
    assert decode_varint(wire, 0) == (value, len(wire))


@given(st.binary(max_size=1300))
@example(b"\x02\xc0" + b"\xff" * 7)
@example(b"\x01\x01" + bytes(1198))
def test_arbitrary_bytes_only_raise_decode_error(data: bytes) -> None:
    """Any other exception escaping a decoder fails the test."""
    for decoder in (decode_packet, decode_frames):
        with contextlib.suppress(DecodeError):
            decoder(data)


@given(st.lists(frames, min_size=1, max_size=4), st.data())
def test_mutated_frames_only_raise_decode_error(items: list[Frame], data: st.DataObject) -> None:
    """A valid frame sequence with one byte changed and cut anywhere decodes or
    raises DecodeError, nothing else."""
    wire = bytearray(encode_frames(items))
    index = data.draw(st.integers(0, len(wire) - 1))
    wire[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    with contextlib.suppress(DecodeError):
        decode_frames(bytes(wire[:cut]))


# ---------------------------------------------------------------------------
# The per-packet helpers agree with the codecs they stand in for


def test_the_frame_and_packet_type_constants_are_the_enums_values() -> None:
    assert [int(kind) for kind in FrameType] == [
        PADDING_TYPE,
        PING_TYPE,
        ACK_TYPE,
        STREAM_TYPE,
        CLOSE_TYPE,
        PATH_CHALLENGE_TYPE,
        PATH_RESPONSE_TYPE,
    ]
    assert PacketType(DATA_TYPE) is PacketType.DATA


@given(st.integers(min_value=0, max_value=MAX_VARINT))
@example(0x3F)
@example(0x40)
@example(0x3FFF)
@example(0x4000)
def test_append_varint_writes_what_encode_varint_encodes(value: int) -> None:
    out = bytearray(b"x")
    append_varint(out, value)
    assert bytes(out) == b"x" + encode_varint(value)


def test_append_varint_refuses_what_encode_varint_refuses() -> None:
    for value in (-1, MAX_VARINT + 1):
        with pytest.raises(ValueError, match="varint out of range"):
            append_varint(bytearray(), value)


@given(st.binary(max_size=12), st.integers(min_value=0, max_value=13))
def test_read_varint_reads_what_decode_varint_decodes(data: bytes, pos: int) -> None:
    try:
        expected: tuple[int, int] | str = decode_varint(data, pos)
    except DecodeError as exc:
        expected = exc.reason
    try:
        got: tuple[int, int] | str = read_varint(data, pos)
    except DecodeError as exc:
        got = exc.reason
    assert got == expected


@given(
    st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=200),
    st.integers(min_value=0, max_value=2**20),
)
def test_the_connections_ack_writer_writes_what_encode_ack_encodes(
    numbers: list[int], delay_us: int
) -> None:
    received = RangeSet()
    for number in numbers:
        received.add(number)
    out = bytearray(b"x")
    _append_ack(out, received, delay_us)
    assert bytes(out) == b"x" + encode_ack(received, delay_us)
