"""Datagram layout of the transport: clear headers, packet types and frames.

Every datagram is one packet. The first byte names its type::

    INITIATION (client -> server, the Noise NX message 1), exactly 1200 bytes:
      0      1 byte   type = 0x01
      1      1 byte   version = 0x01
      2      8 bytes  connection id (chosen by the client)
      10     32 bytes Noise "e" (the client's ephemeral public key)
      42     ...      Noise payload (clear, hashed into the handshake):
                      token length L (1 byte, 0 or 24) | RETRY token (L bytes) |
                      zero padding up to INITIATION_SIZE

    RESPONSE (server -> client, the Noise NX message 2):
      0      1 byte   type = 0x02
      1      8 bytes  connection id (echoed)
      9      96+      Noise message 2: "e" (32) | encrypted "s" (32 + 16) |
                      encrypted payload (empty in version 1, + 16)

    RETRY (server -> client, stateless, when the server asks for proof of address),
    exactly 33 bytes:
      0      1 byte   type = 0x04
      1      8 bytes  connection id (echoed)
      9      24 bytes token: issued (8, whole seconds of the server's clock) |
                      HMAC-SHA256(key, cid | issued | address)[:16]

    VERSION_NEGOTIATION (server -> client, to an initiation of a version the
    server does not speak, at least 1200 bytes long):
      0      1 byte   type = 0x05
      1      8 bytes  connection id (echoed from the initiation's bytes 2..9)
      9      1+ bytes the versions the server speaks, one byte each

    DATA (both ways, after the handshake):
      0      1 byte   type = 0x03
      1      8 bytes  connection id
      9      8 bytes  packet number, big-endian (the AEAD nonce)
      17     ...      ChaCha20-Poly1305(frames), the 17 header bytes as associated data
      end-16 16 bytes tag

The frames inside a DATA packet follow each other with no padding between them;
integers are QUIC variable-length integers (RFC 9000, section 16)::

    PADDING  0x00                                   (ignored, runs of zeros)
    PING     0x01                                   (asks for an acknowledgement)
    ACK      0x02 largest delay_us range_count first_range (gap range_length)*
    STREAM   0x03 offset length data
    CLOSE    0x04 code reason_length reason(UTF-8)
    PATH_CHALLENGE 0x05 data(8)                     (server: prove this address)
    PATH_RESPONSE  0x06 data(8)                     (client: the challenge's data)

The ACK frame is QUIC's (RFC 9000, section 19.3.1) with the delay in microseconds.
STREAM carries a slice of the connection's single ordered byte stream, in which
each message is a varint length followed by its bytes.

Every decoder here raises :class:`~udpchat_proto.errors.DecodeError` for bad bytes,
and nothing else.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from typing import Final

import attrs

from ..errors import DecodeError

__all__ = [
    "CONNECTION_ID_SIZE",
    "DATA_HEADER_SIZE",
    "INITIATION_SIZE",
    "MAX_ACK_RANGES",
    "MAX_CLOSE_REASON_BYTES",
    "MAX_VARINT",
    "PATH_DATA_SIZE",
    "PROLOGUE",
    "RESPONSE_HEADER_SIZE",
    "RETRY_SIZE",
    "RETRY_TOKEN_SIZE",
    "STREAM_FRAME_OVERHEAD",
    "SUPPORTED_VERSIONS",
    "TAG_SIZE",
    "WIRE_VERSION",
    "AckFrame",
    "CloseFrame",
    "DataPacket",
    "Frame",
    "FrameType",
    "HandshakeInitiation",
    "HandshakeResponse",
    "PacketType",
    "PaddingFrame",
    "PathChallengeFrame",
    "PathResponseFrame",
    "PingFrame",
    "Retry",
    "StreamFrame",
    "VersionNegotiation",
    "decode_frames",
    "decode_packet",
    "decode_varint",
    "encode_data_header",
    "encode_frame",
    "encode_frames",
    "encode_initiation",
    "encode_response",
    "encode_retry",
    "encode_varint",
    "encode_version_negotiation",
    "initiation_payload",
]

#: Wire version of the transport (also bound into the Noise prologue).
WIRE_VERSION: Final = 1
#: Mixed into the Noise handshake hash, followed by the connection id: both sides
#: must agree on the protocol version and the id, or the handshake fails.
PROLOGUE: Final = b"udpchat/%d" % WIRE_VERSION
#: Every version this implementation speaks, listed in VERSION_NEGOTIATION.
SUPPORTED_VERSIONS: Final = (WIRE_VERSION,)
CONNECTION_ID_SIZE: Final = 8
#: Poly1305 tag appended by every seal.
TAG_SIZE: Final = 16
#: type (1) + connection id (8) + packet number (8).
DATA_HEADER_SIZE: Final = 1 + CONNECTION_ID_SIZE + 8
#: type (1) + version (1) + connection id (8).
INITIATION_HEADER_SIZE: Final = 1 + 1 + CONNECTION_ID_SIZE
#: type (1) + connection id (8).
RESPONSE_HEADER_SIZE: Final = 1 + CONNECTION_ID_SIZE
#: Every initiation is padded to exactly this size, as QUIC pads its client Initial
#: to 1200 bytes (RFC 9000, section 14.1): it proves the path carries full-size
#: datagrams, and it gives the server a 3 x 1200 = 3600 byte anti-amplification
#: budget, far more than its 105-byte response, while costing a flooder 11 bytes
#: sent per byte the server sends back.
INITIATION_SIZE: Final = 1200
#: Noise NX message 1 is the 32-byte ephemeral key then the (clear) payload.
_NOISE_E_SIZE: Final = 32
#: Noise NX message 2 with an empty payload: e (32) + s (32 + 16) + tag (16).
MIN_RESPONSE_NOISE_SIZE: Final = 32 + 48 + 16
#: Largest QUIC varint (62 bits).
MAX_VARINT: Final = (1 << 62) - 1
#: An ACK frame carries at most this many ranges; older ranges are forgotten (the
#: peer has long declared those packets lost). 32 ranges take at most 545 bytes.
MAX_ACK_RANGES: Final = 32
#: Longest close reason sent, in UTF-8 bytes (longer reasons are truncated).
MAX_CLOSE_REASON_BYTES: Final = 256
#: Worst-case bytes of a STREAM frame before its data: type + 8-byte offset + 4-byte length.
STREAM_FRAME_OVERHEAD: Final = 1 + 8 + 4

#: A RETRY token: 8 bytes of issue time and a 16-byte truncated HMAC-SHA256.
RETRY_TOKEN_SIZE: Final = 24
#: type (1) + connection id (8) + token: 33 bytes, under 3% of the 1200-byte
#: initiation it answers, so a RETRY amplifies nothing.
RETRY_SIZE: Final = 1 + CONNECTION_ID_SIZE + RETRY_TOKEN_SIZE
#: Bytes of a PATH_CHALLENGE's data, echoed by the PATH_RESPONSE (QUIC's 8).
PATH_DATA_SIZE: Final = 8

_DATA_HEADER: Final = struct.Struct(">B8sQ")

# The type bytes as plain ints, for the per-packet code: a ``Final`` int is a
# literal to mypyc and one global load to CPython, where ``FrameType.STREAM`` is
# an attribute lookup on an enum class (dynamic even when compiled) and an
# IntEnum comparison. They equal the enums' values (a test checks).
PADDING_TYPE: Final = 0x00
PING_TYPE: Final = 0x01
ACK_TYPE: Final = 0x02
STREAM_TYPE: Final = 0x03
CLOSE_TYPE: Final = 0x04
PATH_CHALLENGE_TYPE: Final = 0x05
PATH_RESPONSE_TYPE: Final = 0x06
DATA_TYPE: Final = 0x03
_STREAM_BYTE: Final = b"\x03"


class PacketType(enum.IntEnum):
    """The first byte of every datagram."""

    INITIATION = 0x01
    RESPONSE = 0x02
    DATA = 0x03
    RETRY = 0x04
    VERSION_NEGOTIATION = 0x05


class FrameType(enum.IntEnum):
    """The first byte of every frame inside a DATA packet."""

    PADDING = 0x00
    PING = 0x01
    ACK = 0x02
    STREAM = 0x03
    CLOSE = 0x04
    PATH_CHALLENGE = 0x05
    PATH_RESPONSE = 0x06


# ---------------------------------------------------------------------------
# Variable-length integers (RFC 9000, section 16)


def encode_varint(value: int) -> bytes:
    """Encode ``value`` as a QUIC variable-length integer (1, 2, 4 or 8 bytes).

    Raises:
        ValueError: ``value`` is negative or above :data:`MAX_VARINT` (a local bug).
    """
    if value < 0x40:
        if value < 0:
            raise ValueError(f"varint out of range: {value}")
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x4000_0000:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if value <= MAX_VARINT:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise ValueError(f"varint out of range: {value}")


def append_varint(out: bytearray, value: int) -> None:
    """Append ``value`` to ``out`` as :func:`encode_varint` encodes it (a one-byte
    varint, the common case, builds no bytes object)."""
    if 0 <= value < 0x40:
        out.append(value)
    elif 0x40 <= value < 0x4000:
        out.append(0x40 | (value >> 8))
        out.append(value & 0xFF)
    else:
        out += encode_varint(value)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """:func:`decode_varint` of ``bytes`` only, for the per-packet code: typed
    ``bytes``, mypyc indexes and slices it natively (the union type of
    decode_varint is generic item access) and returns the pair unboxed; a
    one-byte varint takes the first branch.

    Raises:
        DecodeError: ``"truncated"`` if the bytes end inside it.
    """
    end = len(data)
    if pos >= end:
        raise DecodeError("truncated", "varint expected")
    first = data[pos]
    if first < 0x40:
        return first, pos + 1
    if first < 0x80:  # two bytes, the next commonest (packet numbers, offsets)
        if pos + 2 > end:
            raise DecodeError("truncated", "varint cut short")
        return ((first & 0x3F) << 8) | data[pos + 1], pos + 2
    size = 1 << (first >> 6)
    stop = pos + size
    if stop > end:
        raise DecodeError("truncated", "varint cut short")
    return int.from_bytes(data[pos:stop], "big") & ((1 << (8 * size - 2)) - 1), stop


def decode_varint(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Decode a varint at ``pos``.

    Returns:
        ``(value, position after it)``.

    Raises:
        DecodeError: ``"truncated"`` if the bytes end inside it.
    """
    if pos >= len(data):
        raise DecodeError("truncated", "varint expected")
    first = data[pos]
    size = 1 << (first >> 6)
    end = pos + size
    if end > len(data):
        raise DecodeError("truncated", "varint cut short")
    if size == 1:
        return first, end
    return int.from_bytes(data[pos:end], "big") & ((1 << (8 * size - 2)) - 1), end


# ---------------------------------------------------------------------------
# Packets


@attrs.frozen(kw_only=True)
class HandshakeInitiation:
    """A parsed INITIATION packet."""

    connection_id: bytes
    """The connection id the client chose."""
    noise_message: bytes
    """Noise NX message 1 (ephemeral key and padding payload)."""

    @property
    def token(self) -> bytes:
        """The RETRY token carried in the clear payload (empty if none)."""
        payload = self.noise_message[_NOISE_E_SIZE:]
        length = payload[0] if payload else 0
        return bytes(payload[1 : 1 + length])


@attrs.frozen(kw_only=True)
class HandshakeResponse:
    """A parsed RESPONSE packet."""

    connection_id: bytes
    """The connection id of the initiation it answers."""
    noise_message: bytes
    """Noise NX message 2."""


@attrs.frozen(kw_only=True)
class DataPacket:
    """A parsed DATA packet, still sealed."""

    connection_id: bytes
    """The connection the packet belongs to."""
    packet_number: int
    """The sender's packet number, the AEAD nonce."""
    header: bytes
    """The 17 clear header bytes, the AEAD associated data."""
    ciphertext: bytes
    """The sealed frames and tag."""


@attrs.frozen(kw_only=True)
class Retry:
    """A parsed RETRY packet: the server wants the initiation again with ``token``."""

    connection_id: bytes
    """The connection id of the initiation it answers."""
    token: bytes
    """The opaque token to carry in the next initiation (:data:`RETRY_TOKEN_SIZE` bytes)."""


@attrs.frozen(kw_only=True)
class VersionNegotiation:
    """A parsed VERSION_NEGOTIATION packet: the server speaks none of our versions."""

    connection_id: bytes
    """The connection id of the initiation it answers."""
    versions: tuple[int, ...]
    """The versions the server speaks."""

    def refusal(self) -> str | None:
        """Why the handshake cannot go on, to show; None if it lists our version."""
        if WIRE_VERSION in self.versions:
            return None
        spoken = ", ".join(str(version) for version in self.versions)
        return f"the server speaks protocol version {spoken}; this client speaks {WIRE_VERSION}"


Packet = HandshakeInitiation | HandshakeResponse | DataPacket | Retry | VersionNegotiation


def initiation_payload(token: bytes, size: int) -> bytes:
    """The clear Noise payload of an initiation: ``len(token) | token | zeros`` of ``size``.

    Raises:
        ValueError: the token does not fit (a local bug).
    """
    if len(token) > 255 or len(token) + 1 > size:
        raise ValueError(f"a {len(token)}-byte token does not fit the initiation")
    return (bytes((len(token),)) + token).ljust(size, b"\x00")


#: Offset of the token length in an INITIATION (the first byte of the Noise payload).
_TOKEN_LENGTH_OFFSET: Final = INITIATION_HEADER_SIZE + _NOISE_E_SIZE


def _check_initiation_payload(data: bytes) -> None:
    """Refuse an INITIATION whose clear payload is not ``L | token | zeros``.

    Version 1 has one layout: a token length of 0 or 24, then zeros. Anything else
    is no client of ours (or an attempt to smuggle bytes into the handshake hash),
    and it costs nothing to refuse before the Diffie-Hellman work.
    """
    length = data[_TOKEN_LENGTH_OFFSET]
    if length not in (0, RETRY_TOKEN_SIZE):
        raise DecodeError("initiation_token_length", f"token length {length}")
    padding = _TOKEN_LENGTH_OFFSET + 1 + length
    if data.count(0, padding) != len(data) - padding:
        raise DecodeError("initiation_padding", "padding that is not all zeros")


def encode_retry(connection_id: bytes, token: bytes) -> bytes:
    """Build a RETRY datagram."""
    return bytes((PacketType.RETRY,)) + connection_id + token


def encode_version_negotiation(initiation: bytes) -> bytes | None:
    """The VERSION_NEGOTIATION answering ``initiation``, an INITIATION datagram of a
    version not spoken here; None if it is shorter than :data:`INITIATION_SIZE` (an
    answer must never amplify) or not such an initiation."""
    if (
        len(initiation) < INITIATION_SIZE
        or initiation[0] != PacketType.INITIATION
        or initiation[1] in SUPPORTED_VERSIONS
    ):
        return None
    connection_id = initiation[2:INITIATION_HEADER_SIZE]
    return bytes((PacketType.VERSION_NEGOTIATION,)) + connection_id + bytes(SUPPORTED_VERSIONS)


def encode_initiation(connection_id: bytes, noise_message: bytes) -> bytes:
    """Build an INITIATION datagram (the caller pads ``noise_message`` to fit)."""
    return bytes((PacketType.INITIATION, WIRE_VERSION)) + connection_id + noise_message


def encode_response(connection_id: bytes, noise_message: bytes) -> bytes:
    """Build a RESPONSE datagram."""
    return bytes((PacketType.RESPONSE,)) + connection_id + noise_message


def encode_data_header(connection_id: bytes, packet_number: int) -> bytes:
    """The 17-byte clear header of a DATA packet (also its associated data)."""
    return _DATA_HEADER.pack(DATA_TYPE, connection_id, packet_number)


def decode_packet(data: bytes) -> Packet:
    """Parse the clear part of a datagram.

    Args:
        data: one datagram as received.

    Returns:
        A :class:`HandshakeInitiation`, :class:`HandshakeResponse`, :class:`DataPacket`,
        :class:`Retry` or :class:`VersionNegotiation`.

    Raises:
        DecodeError: ``"empty"``, ``"unknown_type"``, ``"unsupported_version"``,
            ``"initiation_size"``, ``"initiation_token_length"`` (not 0 or 24),
            ``"initiation_padding"`` (not all zeros), ``"retry_size"`` or
            ``"truncated"``.
    """
    if not data:
        raise DecodeError("empty", "empty datagram")
    kind = data[0]
    if kind == DATA_TYPE:
        if len(data) < DATA_HEADER_SIZE + TAG_SIZE:
            raise DecodeError("truncated", "DATA packet shorter than header and tag")
        _, cid, pn = _DATA_HEADER.unpack_from(data)
        return DataPacket(
            connection_id=cid,
            packet_number=pn,
            header=data[:DATA_HEADER_SIZE],
            ciphertext=data[DATA_HEADER_SIZE:],
        )
    if kind == PacketType.INITIATION:
        if len(data) < 2:
            raise DecodeError("truncated", "INITIATION without a version")
        if data[1] != WIRE_VERSION:
            raise DecodeError("unsupported_version", f"version {data[1]}")
        if len(data) != INITIATION_SIZE:
            # Smaller ones would break the amplification budget; larger ones are not ours.
            raise DecodeError("initiation_size", f"{len(data)} bytes, not {INITIATION_SIZE}")
        _check_initiation_payload(data)
        return HandshakeInitiation(
            connection_id=data[2:INITIATION_HEADER_SIZE],
            noise_message=data[INITIATION_HEADER_SIZE:],
        )
    if kind == PacketType.RESPONSE:
        if len(data) < RESPONSE_HEADER_SIZE + MIN_RESPONSE_NOISE_SIZE:
            raise DecodeError("truncated", "RESPONSE too short")
        return HandshakeResponse(
            connection_id=data[1:RESPONSE_HEADER_SIZE],
            noise_message=data[RESPONSE_HEADER_SIZE:],
        )
    if kind == PacketType.RETRY:
        if len(data) != RETRY_SIZE:
            raise DecodeError("retry_size", f"{len(data)} bytes, not {RETRY_SIZE}")
        return Retry(connection_id=data[1:RESPONSE_HEADER_SIZE], token=data[RESPONSE_HEADER_SIZE:])
    if kind == PacketType.VERSION_NEGOTIATION:
        if len(data) <= RESPONSE_HEADER_SIZE:
            raise DecodeError("truncated", "VERSION_NEGOTIATION without versions")
        return VersionNegotiation(
            connection_id=data[1:RESPONSE_HEADER_SIZE], versions=tuple(data[RESPONSE_HEADER_SIZE:])
        )
    raise DecodeError("unknown_type", f"packet type {kind:#04x}")


# ---------------------------------------------------------------------------
# Frames


@attrs.frozen
class PaddingFrame:
    """A run of zero bytes, ignored by the receiver."""

    length: int = 1
    """How many zero bytes."""


@attrs.frozen
class PingFrame:
    """Elicits an acknowledgement (keepalive, handshake confirmation, probes)."""


@attrs.frozen(kw_only=True)
class AckFrame:
    """Packet numbers received, as ranges."""

    ranges: tuple[tuple[int, int], ...]
    """Half-open ``(start, stop)`` ranges, ascending, disjoint and not adjacent."""
    delay_us: int = 0
    """Microseconds between receiving the largest packet and sending this ACK."""

    @property
    def largest(self) -> int:
        """The largest packet number acknowledged."""
        return self.ranges[-1][1] - 1


@attrs.frozen(kw_only=True)
class StreamFrame:
    """A slice of the ordered byte stream."""

    offset: int
    """Stream offset of ``data[0]``."""
    data: bytes
    """The bytes."""


@attrs.frozen(kw_only=True)
class CloseFrame:
    """The sender closes the connection."""

    code: int
    """A :class:`~udpchat_proto.transport.events.CloseCode` value."""
    reason: str = ""
    """Human-readable reason (at most :data:`MAX_CLOSE_REASON_BYTES` in UTF-8)."""


@attrs.frozen
class PathChallengeFrame:
    """Server: asks the client to echo ``data`` from the address it was sent to."""

    data: bytes
    """:data:`PATH_DATA_SIZE` random bytes."""


@attrs.frozen
class PathResponseFrame:
    """Client: echoes a PATH_CHALLENGE's ``data``."""

    data: bytes
    """The challenge's :data:`PATH_DATA_SIZE` bytes."""


Frame = (
    PaddingFrame
    | PingFrame
    | AckFrame
    | StreamFrame
    | CloseFrame
    | PathChallengeFrame
    | PathResponseFrame
)


def encode_ack(ranges: Iterable[tuple[int, int]] | Iterable[range], delay_us: int) -> bytes:
    """Encode an ACK frame from ascending, disjoint, non-adjacent ranges.

    Only the :data:`MAX_ACK_RANGES` highest ranges are written.
    """
    pairs = [(r.start, r.stop) if isinstance(r, range) else r for r in ranges]
    pairs = pairs[-MAX_ACK_RANGES:]
    start, stop = pairs[-1]
    out = bytearray((FrameType.ACK,))
    out += encode_varint(stop - 1)
    out += encode_varint(delay_us)
    out += encode_varint(len(pairs) - 1)
    out += encode_varint(stop - 1 - start)
    smallest = start
    for start, stop in reversed(pairs[:-1]):
        # QUIC: the next range's largest = previous smallest - gap - 2.
        out += encode_varint(smallest - stop - 1)
        out += encode_varint(stop - 1 - start)
        smallest = start
    return bytes(out)


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame."""
    if isinstance(frame, StreamFrame):
        data = frame.data
        out = bytearray(_STREAM_BYTE)
        append_varint(out, frame.offset)
        append_varint(out, len(data))
        out += data
        return bytes(out)
    if isinstance(frame, AckFrame):
        return encode_ack(frame.ranges, frame.delay_us)
    if isinstance(frame, PingFrame):
        return bytes((FrameType.PING,))
    if isinstance(frame, CloseFrame):
        reason = truncate_utf8(frame.reason, MAX_CLOSE_REASON_BYTES)
        return (
            bytes((FrameType.CLOSE,))
            + encode_varint(frame.code)
            + encode_varint(len(reason))
            + reason
        )
    if isinstance(frame, PathChallengeFrame | PathResponseFrame):
        kind = (
            FrameType.PATH_CHALLENGE
            if isinstance(frame, PathChallengeFrame)
            else FrameType.PATH_RESPONSE
        )
        if len(frame.data) != PATH_DATA_SIZE:
            raise ValueError(f"path data must be {PATH_DATA_SIZE} bytes")
        return bytes((kind,)) + frame.data
    return bytes(frame.length)


def encode_frames(frames: Iterable[Frame]) -> bytes:
    """Encode frames one after the other."""
    return b"".join(encode_frame(frame) for frame in frames)


def truncate_utf8(text: str, limit: int) -> bytes:
    """``text`` in UTF-8, cut to at most ``limit`` bytes on a character boundary."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", errors="ignore").encode("utf-8")


def decode_frames(payload: bytes) -> list[Frame]:
    """Decode the frames of an opened DATA packet.

    Args:
        payload: the plaintext of a DATA packet.

    Returns:
        The frames, in order. An empty payload is invalid (every packet carries at
        least one frame). A CLOSE frame is the last: whatever follows it is not
        decoded (the connection ends there), so trailing bytes, even garbage, do not
        turn the peer's close into a protocol violation.

    Raises:
        DecodeError: ``"truncated"``, ``"unknown_frame"`` or ``"invalid_field"``.
    """
    if not payload:
        raise DecodeError("invalid_field", "a packet carries at least one frame")
    frames: list[Frame] = []
    pos = 0
    end = len(payload)
    while pos < end:
        kind = payload[pos]
        pos += 1
        if kind == STREAM_TYPE:
            offset, pos = read_varint(payload, pos)
            length, pos = read_varint(payload, pos)
            if pos + length > end:
                raise DecodeError("truncated", "STREAM data cut short")
            if offset + length > MAX_VARINT:
                raise DecodeError("invalid_field", "STREAM beyond the largest offset")
            frames.append(StreamFrame(offset=offset, data=payload[pos : pos + length]))
            pos += length
        elif kind == ACK_TYPE:
            frame, pos = _decode_ack(payload, pos)
            frames.append(frame)
        elif kind == PING_TYPE:
            frames.append(PingFrame())
        elif kind == PADDING_TYPE:
            start = pos - 1
            while pos < end and payload[pos] == 0:
                pos += 1
            frames.append(PaddingFrame(pos - start))
        elif kind == CLOSE_TYPE:
            code, pos = read_varint(payload, pos)
            length, pos = read_varint(payload, pos)
            if pos + length > end:
                raise DecodeError("truncated", "CLOSE reason cut short")
            try:
                reason = payload[pos : pos + length].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError("invalid_field", "CLOSE reason is not UTF-8") from exc
            frames.append(CloseFrame(code=code, reason=reason))
            break  # nothing after a CLOSE counts
        elif kind in (PATH_CHALLENGE_TYPE, PATH_RESPONSE_TYPE):
            if pos + PATH_DATA_SIZE > end:
                raise DecodeError("truncated", "PATH frame data cut short")
            data = bytes(payload[pos : pos + PATH_DATA_SIZE])
            pos += PATH_DATA_SIZE
            frames.append(
                PathChallengeFrame(data) if kind == PATH_CHALLENGE_TYPE else PathResponseFrame(data)
            )
        else:
            raise DecodeError("unknown_frame", f"frame type {kind:#04x}")
    return frames


def _decode_ack(payload: bytes, pos: int) -> tuple[AckFrame, int]:
    ranges, delay_us, pos = decode_ack_ranges(payload, pos)
    return AckFrame(ranges=tuple(ranges), delay_us=delay_us), pos


def decode_ack_ranges(payload: bytes, pos: int) -> tuple[list[tuple[int, int]], int, int]:
    """Decode the body of an ACK frame (after its type byte) at ``pos``.

    Returns:
        ``(ranges, delay_us, position after it)``: the ranges ascending, as
        :attr:`AckFrame.ranges` holds them (the connection reads them without
        building the frame).

    Raises:
        DecodeError: ``"truncated"`` or ``"invalid_field"``.
    """
    largest, pos = read_varint(payload, pos)
    delay_us, pos = read_varint(payload, pos)
    count, pos = read_varint(payload, pos)
    first, pos = read_varint(payload, pos)
    if first > largest:
        raise DecodeError("invalid_field", "ACK range below zero")
    # Each further range takes at least two bytes: a larger count cannot be honest,
    # and checking first keeps a hostile count from costing anything.
    if count > (len(payload) - pos) // 2:
        raise DecodeError("truncated", "ACK range count exceeds the packet")
    smallest = largest - first
    ranges = [(smallest, largest + 1)]
    for _ in range(count):
        gap, pos = read_varint(payload, pos)
        length, pos = read_varint(payload, pos)
        top = smallest - gap - 2
        if top < 0 or length > top:
            raise DecodeError("invalid_field", "ACK range below zero")
        smallest = top - length
        ranges.append((smallest, top + 1))
    ranges.reverse()
    return ranges, delay_us, pos
