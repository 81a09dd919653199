"""The ordered byte stream each direction of a connection carries.

Messages are framed as ``varint(length) || bytes`` and appended to one byte
stream per direction, sliced into STREAM frames at whatever offsets fit a packet.
This gives fragmentation, reassembly, exactly-once and in-order delivery in one
mechanism (QUIC's stream, with a single stream): a lost slice is sent again as a
byte range, possibly cut differently, and the receiver keeps each byte once.

Memory is bounded on both sides:

* :class:`SendStream` sends new bytes only below ``acked_floor + window`` (the
  lowest unacknowledged offset plus the send window), and refuses messages once
  ``max_buffer`` bytes are queued and unacknowledged.
* :class:`ReceiveStream` refuses (as a protocol violation) bytes at or beyond
  ``delivered + window`` and more than :data:`MAX_RECEIVE_FRAGMENTS` disjoint
  out-of-order ranges, stores each out-of-order byte once, and holds at most one
  incomplete message of at most ``max_message_size`` bytes.
"""

from __future__ import annotations

from typing import Final

from ..errors import DecodeError
from .packets import append_varint, decode_varint
from .ranges import RangeSet

__all__ = ["MAX_RECEIVE_FRAGMENTS", "ReceiveStream", "SendStream"]

#: Consumed bytes are cut from the front of a buffer only once they are at least
#: this many and half of it, so trimming costs amortised O(1) per byte.
_COMPACT_MIN: Final = 64 * 1024
#: The most disjoint out-of-order ranges a receiver holds. Each costs a slice, a
#: range and a dict entry (about 150 bytes) however small it is, so without a cap a
#: peer sending one-byte frames with gaps between them would turn 1 MiB of window
#: into about 75 MB of memory. Honest holes come from lost packets: at most one per
#: packet in the sender's window (256 KiB / ~1150 bytes ~ 230), far below this.
MAX_RECEIVE_FRAGMENTS: Final = 4096


class SendStream:
    """The sending half: queued bytes, what is in flight, what to send again."""

    __slots__ = (
        "_acked",
        "_acked_floor",
        "_buffer",
        "_buffer_start",
        "_next_offset",
        "_pending",
        "max_buffer",
        "retransmitted",
        "window",
    )

    def __init__(self, *, window: int, max_buffer: int) -> None:
        """Create an empty stream.

        Args:
            window: at most this many bytes beyond the lowest unacknowledged offset
                are ever sent.
            max_buffer: at most this many bytes are queued and unacknowledged.
        """
        self.window = window
        self.max_buffer = max_buffer
        self._buffer = bytearray()
        self._buffer_start = 0  # stream offset of _buffer[0]
        self._next_offset = 0  # first byte never sent
        self._acked_floor = 0  # every byte below is acknowledged
        self._acked = RangeSet()  # acknowledged ranges above _acked_floor
        self._pending = RangeSet()  # sent, declared lost, to send again
        self.retransmitted = 0  # bytes sent more than once

    @property
    def write_offset(self) -> int:
        """The stream offset after the last queued byte."""
        return self._buffer_start + len(self._buffer)

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet acknowledged."""
        return self.write_offset - self._acked_floor

    @property
    def all_acked(self) -> bool:
        """Whether every queued byte has been acknowledged."""
        return self._acked_floor == self.write_offset

    def can_write(self, size: int) -> bool:
        """Whether a message of ``size`` bytes fits under ``max_buffer``."""
        # (buffered, without the two property calls: this runs once a message)
        buffered = self._buffer_start + len(self._buffer) - self._acked_floor
        return buffered + size + 8 <= self.max_buffer

    def write_message(self, payload: bytes) -> None:
        """Queue one message (its length prefix and bytes)."""
        buffer = self._buffer
        append_varint(buffer, len(payload))
        buffer += payload

    def has_data(self) -> bool:
        """Whether :meth:`next_chunk` would return something."""
        if self._pending:
            return True
        # (below write_offset and the window, without the property and min())
        next_offset = self._next_offset
        return (
            next_offset < self._buffer_start + len(self._buffer)
            and next_offset < self._acked_floor + self.window
        )

    def next_chunk(self, max_size: int) -> tuple[int, bytes] | None:
        """Take the next bytes to send: lost ones first, then new ones in the window.

        Args:
            max_size: the most bytes to take.

        Returns:
            ``(offset, data)``, or None if there is nothing to send.
        """
        if max_size <= 0:
            return None
        if self._pending:
            first = self._pending[0]
            start, stop = first.start, min(first.stop, first.start + max_size)
            self._pending.subtract(start, stop)
            self.retransmitted += stop - start
        else:
            start = self._next_offset
            stop = min(
                self._buffer_start + len(self._buffer),
                self._acked_floor + self.window,
                start + max_size,
            )
            if stop <= start:
                return None
            self._next_offset = stop
        base = self._buffer_start
        return start, bytes(self._buffer[start - base : stop - base])

    def on_acked(self, start: int, stop: int) -> None:
        """The peer acknowledged ``[start, stop)``."""
        floor = self._acked_floor
        if stop <= floor:
            return
        if start <= floor and not self._acked:
            # In order, nothing acknowledged above the floor (the common case): the
            # floor moves, with no range built and no list for the set to hold.
            if self._pending:
                self._pending.subtract(start, stop)
            self._acked_floor = stop
            self._compact()
            return
        self._pending.subtract(start, stop)
        self._acked.add(start, stop)
        first = self._acked[0]
        if first.start <= self._acked_floor:
            self._acked.shift()
            self._acked_floor = first.stop
            self._compact()

    def on_lost(self, start: int, stop: int) -> None:
        """The packet carrying ``[start, stop)`` was lost: send what is unacknowledged again."""
        start = max(start, self._acked_floor)
        for gap in self._acked.missing(start, stop):
            self._pending.add(gap.start, gap.stop)

    def _compact(self) -> None:
        consumed = self._acked_floor - self._buffer_start
        if consumed >= _COMPACT_MIN and consumed * 2 >= len(self._buffer):
            del self._buffer[:consumed]
            self._buffer_start = self._acked_floor
        elif consumed == len(self._buffer) and consumed:
            self._buffer.clear()
            self._buffer_start = self._acked_floor


class ReceiveStream:
    """The receiving half: out-of-order slices, reassembly, message boundaries."""

    __slots__ = (
        "_assembly",
        "_assembly_pos",
        "_chunks",
        "_delivered",
        "_held",
        "_received",
        "max_message_size",
        "window",
    )

    def __init__(self, *, window: int, max_message_size: int) -> None:
        """Create an empty stream.

        Args:
            window: bytes at or beyond ``delivered + window`` are a violation.
            max_message_size: a longer declared message is a violation.
        """
        self.window = window
        self.max_message_size = max_message_size
        self._delivered = 0  # every byte below has been moved into _assembly
        self._received = RangeSet()  # out-of-order ranges held in _chunks
        self._chunks: dict[int, bytes] = {}  # disjoint slices tiling _received
        self._held = 0  # bytes in _chunks, kept so that buffered is O(1)
        self._assembly = bytearray()  # in-order bytes not yet cut into messages
        self._assembly_pos = 0

    @property
    def buffered(self) -> int:
        """Bytes held: out of order, plus an incomplete message."""
        return self._held + len(self._assembly) - self._assembly_pos

    def receive(self, offset: int, data: bytes) -> list[bytes]:
        """Take a STREAM frame's bytes.

        Args:
            offset: the stream offset of ``data[0]``.
            data: the bytes.

        Returns:
            The messages completed by these bytes, in order (often none).

        Raises:
            DecodeError: ``"flow_control"`` if the bytes reach beyond the window
                or leave more than :data:`MAX_RECEIVE_FRAGMENTS` out-of-order ranges,
                ``"message_too_large"`` if a message declares more than
                ``max_message_size`` bytes. Both are violations by the peer.
        """
        end = offset + len(data)
        if end > self._delivered + self.window:
            raise DecodeError("flow_control", f"stream data up to {end} beyond the window")
        if end <= self._delivered:
            return []  # a duplicate of delivered bytes
        if offset <= self._delivered and not self._chunks:
            # In order with nothing held (the common case): straight to assembly.
            self._assembly += data[self._delivered - offset :]
            self._delivered = end
            return self._cut_messages()
        for gap in self._received.missing(max(offset, self._delivered), end):
            self._chunks[gap.start] = data[gap.start - offset : gap.stop - offset]
            self._received.add(gap.start, gap.stop)
            self._held += gap.stop - gap.start
        if len(self._received) > MAX_RECEIVE_FRAGMENTS:
            raise DecodeError(
                "flow_control",
                f"more than {MAX_RECEIVE_FRAGMENTS} out-of-order stream fragments",
            )
        if self._delivered not in self._chunks:
            return []
        # The stored slices tile _received exactly, so the first range is contiguous.
        contiguous = self._received.shift()
        while self._delivered < contiguous.stop:
            piece = self._chunks.pop(self._delivered)
            self._held -= len(piece)
            self._assembly += piece
            self._delivered += len(piece)
        if not self._chunks:
            self._chunks = {}  # an emptied dict keeps its table; an idle stream should not
        return self._cut_messages()

    def _cut_messages(self) -> list[bytes]:
        messages: list[bytes] = []
        buf = self._assembly
        pos = self._assembly_pos
        while pos < len(buf):  # (the common end: no exception to build)
            first = buf[pos]
            if first < 0x40:
                length, start = first, pos + 1  # a one-byte length, read inline
            else:
                try:
                    length, start = decode_varint(buf, pos)
                except DecodeError:
                    break  # the length prefix itself is incomplete
            if length > self.max_message_size:
                raise DecodeError("message_too_large", f"{length} bytes > {self.max_message_size}")
            if len(buf) - start < length:
                break
            messages.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos == len(buf):
            buf.clear()
            pos = 0
        elif pos >= _COMPACT_MIN and pos * 2 >= len(buf):
            del buf[:pos]
            pos = 0
        self._assembly_pos = pos
        return messages
