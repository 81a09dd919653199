"""One end of one connection: packet protection, reliability, timers, closing.

:class:`Connection` is shared by both roles. :class:`~udpchat_proto.transport.ClientTransport`
owns one; :class:`~udpchat_proto.transport.ServerTransport` owns one per connection id.
The roles do the handshake and the routing; everything after the keys exist is here.

Reliability retransmits content, not packets: each ack-eliciting packet is recorded
with the stream ranges (and PING) it carried; on loss those go back to the queue and
leave under a new packet number.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from typing import Final

from ..errors import DecodeError, LocalProtocolError
from ..randomness import RandomSource
from .config import RECEIVE_WINDOW, TransportConfig
from .events import (
    Address,
    CloseCode,
    ConnectionAddressChanged,
    ConnectionId,
    ConnectionTerminated,
    HandshakeCompleted,
    PayloadReceived,
    TransportEvent,
)
from .handshake import CipherState
from .packets import (
    ACK_TYPE,
    DATA_HEADER_SIZE,
    MAX_ACK_RANGES,
    MAX_VARINT,
    PATH_DATA_SIZE,
    PING_TYPE,
    STREAM_FRAME_OVERHEAD,
    STREAM_TYPE,
    TAG_SIZE,
    AckFrame,
    CloseFrame,
    DataPacket,
    FrameType,
    PathChallengeFrame,
    PathResponseFrame,
    PingFrame,
    StreamFrame,
    append_varint,
    decode_ack_ranges,
    decode_frames,
    encode_data_header,
    encode_frame,
    read_varint,
)
from .ranges import RangeSet
from .recovery import LossRecovery, RttEstimator, SentPacket
from .replay import ReplayWindow
from .states import END_STATES, Timer, TransportInput, TransportState, transition
from .stream import ReceiveStream, SendStream

__all__ = ["AMPLIFICATION_FACTOR", "CLOSE_PERIOD_RTOS", "Connection"]

#: QUIC's anti-amplification limit (RFC 9000, section 8): before an address is
#: validated, at most three times the bytes received from it are sent to it.
AMPLIFICATION_FACTOR: Final = 3
#: The closing and draining periods last three RTOs (RFC 9000, section 10.2).
CLOSE_PERIOD_RTOS: Final = 3
#: Do not bother building a DATA packet with less room than this for frames.
_MIN_PACKET: Final = DATA_HEADER_SIZE + TAG_SIZE + 16
#: Where the packet number starts in a DATA header (after the type and the id).
_PN_START: Final = DATA_HEADER_SIZE - 8
_PACKET_NUMBER: Final = struct.Struct(">Q")
_PATH_RESPONSE: Final = bytes((FrameType.PATH_RESPONSE,))
#: A client answers at most this many PATH_CHALLENGEs per packet it builds; more
#: waiting ones are dropped (the server repeats a challenge that went unanswered).
_MAX_PATH_RESPONSES: Final = 4

S = TransportState
# The states the per-packet code tests, as module constants: one static load when
# compiled (an enum member is an attribute lookup on a Python class), one global
# load pure.
_ESTABLISHED: Final = TransportState.ESTABLISHED
_HANDSHAKE: Final = TransportState.HANDSHAKE
_CLOSING: Final = TransportState.CLOSING
_DRAINING: Final = TransportState.DRAINING
_CLOSED: Final = TransportState.CLOSED


class Connection:
    """The state of one connection, on either side.

    Attributes:
        connection_id: the id in every packet header.
        address: where packets go (the server's address on a client; the client's
            current address on the server).
        validated: whether ``address`` has proved it receives what is sent there
            (always True on a client).
        server_key: the server's static public key, once known.
    """

    __slots__ = (
        "_ack_deadline",
        "_ack_delay",
        "_ack_eliciting",
        "_ack_immediate",
        "_ack_pending",
        "_ack_slack",
        "_announced",
        "_bytes_received",
        "_bytes_sent",
        "_close_deadline",
        "_close_frame",
        "_close_send",
        "_datagram_size",
        "_dropped",
        "_events",
        "_handshake_backoff",
        "_handshake_deadline",
        "_idle_timeout",
        "_in_flight_limit",
        "_initiation_pending",
        "_initiation_sent_time",
        "_keepalive_interval",
        "_largest_eliciting",
        "_largest_received",
        "_largest_received_time",
        "_last_received",
        "_last_sent",
        "_next_pn",
        "_packets_lost",
        "_packets_received",
        "_packets_sent",
        "_path_bytes_in",
        "_path_bytes_out",
        "_path_responses",
        "_peer_knows",
        "_ping_pending",
        "_probe_bytes_in",
        "_probe_bytes_out",
        "_probe_data",
        "_probe_pending",
        "_probe_sent",
        "_random",
        "_received",
        "_recv_cipher",
        "_response",
        "_response_pending",
        "_send_cipher",
        "address",
        "config",
        "connection_id",
        "initiation",
        "is_client",
        "probe_address",
        "receive_stream",
        "recovery",
        "replay",
        "rtt",
        "scheduled",
        "send_stream",
        "server_key",
        "state",
        "validated",
    )

    def __init__(
        self,
        *,
        connection_id: ConnectionId,
        config: TransportConfig,
        is_client: bool,
        address: Address,
        events: deque[TransportEvent],
        dropped: dict[str, int],
        now: float,
        random: RandomSource | None = None,
    ) -> None:
        self.connection_id = connection_id
        self.config = config
        # The settings the per-packet code reads, copied from the frozen config:
        # native float and int attributes when compiled, where the config (an
        # attrs class outside the compiled modules) is a dynamic lookup.
        self._datagram_size = config.max_datagram_size
        self._in_flight_limit = config.max_in_flight_packets
        self._idle_timeout = config.idle_timeout
        self._keepalive_interval = config.keepalive_interval
        self._ack_delay = config.max_ack_delay
        self._ack_slack = config.ack_timer_slack
        self.is_client = is_client
        self.address = address
        self.validated = is_client
        self.server_key: bytes | None = None
        self.state = S.INITIAL if is_client else _HANDSHAKE
        self.scheduled: float | None = None  # the server's heap entry for this connection
        self._events = events
        self._dropped = dropped
        self._announced = False
        # The counters of stats, as plain int attributes (no dict per connection,
        # and native ints when compiled).
        self._packets_sent = 0
        self._packets_received = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._packets_lost = 0
        # keys
        self._send_cipher: CipherState | None = None
        self._recv_cipher: CipherState | None = None
        # anti-amplification, while not validated
        self._path_bytes_in = 0
        self._path_bytes_out = 0
        # path validation (server): a new address is probed, not trusted
        self._random = random
        self.probe_address: Address | None = None
        self._probe_data = b""
        self._probe_pending = False
        self._probe_sent: float | None = None
        self._probe_bytes_in = 0
        self._probe_bytes_out = 0
        # client: PATH_CHALLENGE data to echo
        self._path_responses: list[bytes] = []
        # handshake (client: the initiation; server: the cached response)
        self.initiation: bytes | None = None
        self._initiation_pending = False
        self._initiation_sent_time = now
        self._handshake_backoff = 0
        self._response: bytes | None = None
        self._response_pending = False
        self._handshake_deadline = now + config.handshake_timeout
        # sending
        self.rtt = RttEstimator(
            initial_rtt=config.initial_rtt,
            min_rto=config.min_rto,
            max_rto=config.max_rto,
            max_ack_delay=config.max_ack_delay,
        )
        self.recovery = LossRecovery(self.rtt)
        self.send_stream = _new_send_stream(config)
        self._next_pn = 0
        self._ping_pending = False
        self._last_sent = now
        # receiving
        self.receive_stream = _new_receive_stream(config)
        self.replay = ReplayWindow()
        self._received = RangeSet()
        self._largest_received = -1
        self._largest_received_time = now
        self._last_received = now
        self._ack_pending = False
        self._largest_eliciting = -1
        """The largest ack-eliciting packet number received."""
        self._peer_knows = -1
        """The largest received packet number the peer surely knows we acknowledged."""
        self._ack_eliciting = 0
        self._ack_immediate = False
        self._ack_deadline: float | None = None
        # closing
        self._close_frame: bytes | None = None
        self._close_send = False
        self._close_deadline = now

    # ------------------------------------------------------------------ state

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters."""
        return {
            "packets_sent": self._packets_sent,
            "packets_received": self._packets_received,
            "bytes_sent": self._bytes_sent,
            "bytes_received": self._bytes_received,
            "packets_lost": self._packets_lost,
            "bytes_retransmitted": self.send_stream.retransmitted,
            "send_buffer_size": self.send_stream.buffered,
            "in_flight_packets": self.recovery.in_flight,
            "smoothed_rtt_us": int(self.rtt.smoothed_rtt * 1e6),
        }

    @property
    def last_received(self) -> float:
        """When the last authenticated packet arrived (the handshake's start before)."""
        return self._last_received

    @property
    def announced(self) -> bool:
        """Whether HandshakeCompleted was emitted (the application knows it)."""
        return self._announced

    @property
    def is_closed(self) -> bool:
        """Whether the connection is over for the application."""
        return self.state in END_STATES

    def _transition(self, event: TransportInput) -> None:
        self.state = transition(self.state, event)

    def _terminate(self, code: CloseCode, reason: str, *, by_peer: bool = False) -> None:
        # A server connection the application never saw ends silently.
        if self.is_client or self._announced:
            self._events.append(
                ConnectionTerminated(
                    connection_id=self.connection_id, code=code, reason=reason, by_peer=by_peer
                )
            )

    def _drop(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1

    # -------------------------------------------------------------- handshake

    def start_client_handshake(self, initiation: bytes, *, now: float) -> None:
        """Client: the initiation is ready; send it (and again on timeout)."""
        self._transition(TransportInput.CONNECT)
        self.initiation = initiation
        self._initiation_pending = True
        self._initiation_sent_time = now
        self._handshake_deadline = now + self.config.handshake_timeout
        self._last_received = now
        self._last_sent = now

    def retry_client_handshake(self, initiation: bytes) -> None:
        """Client: a RETRY came; send this initiation (with its token) at once.

        The handshake deadline stays: a RETRY does not extend the client's patience.
        """
        self.initiation = initiation
        self._initiation_pending = True
        self._handshake_backoff = 0

    def complete_client_handshake(
        self, *, server_key: bytes, send: CipherState, receive: CipherState, now: float
    ) -> None:
        """Client: the response authenticated and the key is accepted."""
        self._transition(TransportInput.HANDSHAKE_DONE)
        self.server_key = server_key
        self._send_cipher, self._recv_cipher = send, receive
        if self._handshake_backoff == 0:
            # Karn: sample only an initiation that was sent once.
            self.rtt.update(latest_rtt=now - self._initiation_sent_time)
        self.initiation = None
        self._last_received = now
        # The first packet confirms the handshake to the server; a PING makes it
        # ack-eliciting, so it is retransmitted until the server has it.
        self._ping_pending = True
        self._announced = True
        self._events.append(
            HandshakeCompleted(
                connection_id=self.connection_id, server_key=server_key, address=self.address
            )
        )

    def fail_handshake(self, code: CloseCode, reason: str) -> None:
        """Client: the handshake cannot complete (wrong server key, no common version)."""
        self._transition(TransportInput.KEY_MISMATCH)
        self._terminate(code, reason)

    def start_server_handshake(
        self,
        *,
        initiation: bytes,
        response: bytes,
        server_key: bytes,
        send: CipherState,
        receive: CipherState,
        received_bytes: int,
    ) -> None:
        """Server: the initiation was accepted; the response goes out next."""
        self.initiation = initiation
        self.server_key = server_key
        self._response = response
        self._response_pending = True
        self._send_cipher, self._recv_cipher = send, receive
        self._path_bytes_in += received_bytes

    def repeat_response(self, received_bytes: int) -> None:
        """Server: the same initiation came again (our response was lost): resend it."""
        self._path_bytes_in += received_bytes
        self._response_pending = True

    # ------------------------------------------------------------- commands

    def send(self, payload: bytes) -> None:
        """Queue one message (see ``ClientTransport.send``)."""
        if self.state in END_STATES:
            raise LocalProtocolError("the connection is closed")
        if len(payload) > self.config.max_message_size:
            raise LocalProtocolError(
                f"message of {len(payload)} bytes exceeds max_message_size "
                f"{self.config.max_message_size}"
            )
        if not self.send_stream.can_write(len(payload)):
            raise LocalProtocolError(
                f"send buffer full ({self.send_stream.buffered} bytes unacknowledged)"
            )
        self.send_stream.write_message(bytes(payload))

    def close(self, reason: str, *, now: float, code: CloseCode = CloseCode.NORMAL_CLOSE) -> None:
        """Close; the peer learns it (and ``code``) from a CLOSE frame if the
        connection is up."""
        if self.state in END_STATES:
            return
        if self.state is _ESTABLISHED:
            self._start_closing(TransportInput.CLOSE_LOCAL, code, reason, now=now)
        else:
            self._transition(TransportInput.CLOSE_LOCAL)
        self._terminate(code, reason)

    def _start_closing(
        self, event: TransportInput, code: CloseCode, reason: str, *, now: float
    ) -> None:
        self._transition(event)
        self._close_frame = encode_frame(CloseFrame(code=code, reason=reason))
        self._close_send = True
        self._close_deadline = now + CLOSE_PERIOD_RTOS * self.rtt.rto()

    def abort(self, code: CloseCode, reason: str, *, now: float) -> None:
        """Server: end the connection for a resource reason and free its buffers.

        The client learns ``code`` from the CLOSE frame; the application gets
        ``ConnectionTerminated(code, reason)``.
        """
        if self.state in END_STATES:
            return
        if self.state is _ESTABLISHED:
            self._start_closing(TransportInput.CLOSE_LOCAL, code, reason, now=now)
        else:
            self._transition(TransportInput.CLOSE_LOCAL)
        self._terminate(code, reason)
        # Nothing queued will be sent any more, and nothing received delivered.
        self.send_stream = _new_send_stream(self.config)
        self.receive_stream = _new_receive_stream(self.config)
        self._path_responses.clear()

    @property
    def buffered_bytes(self) -> int:
        """Stream bytes held: unacknowledged output plus out-of-order and partial input."""
        return self.send_stream.buffered + self.receive_stream.buffered

    def _violation(self, exc: DecodeError, *, now: float) -> None:
        self._drop("protocol_violation")
        reason = f"protocol violation: {exc}"
        if self.state is _ESTABLISHED:
            self._start_closing(
                TransportInput.VIOLATION, CloseCode.PROTOCOL_VIOLATION, reason, now=now
            )
            self._terminate(CloseCode.PROTOCOL_VIOLATION, reason)

    # -------------------------------------------------------------- receiving

    def receive_data(self, packet: DataPacket, size: int, addr: Address, *, now: float) -> None:
        """Take a DATA packet addressed to this connection; drop it if it fails."""
        self._receive(
            packet.packet_number, packet.header, packet.ciphertext, size, addr=addr, now=now
        )

    def receive_datagram(self, datagram: bytes, addr: Address, now: float) -> None:
        """Take a DATA datagram addressed to this connection, as :meth:`receive_data`
        does its :class:`DataPacket`, without building one (the roles' per-packet path).

        The caller has checked that ``datagram`` is a DATA packet at least
        ``DATA_HEADER_SIZE + TAG_SIZE`` bytes long, with this connection's id.
        """
        pn: int = _PACKET_NUMBER.unpack_from(datagram, _PN_START)[0]
        header = datagram[:DATA_HEADER_SIZE]
        self._receive(pn, header, datagram[DATA_HEADER_SIZE:], len(datagram), addr=addr, now=now)

    def _receive(
        self, pn: int, header: bytes, ciphertext: bytes, size: int, *, addr: Address, now: float
    ) -> None:
        state = self.state
        if state is _CLOSED or state is _DRAINING:
            self._drop("closed")
            return
        if state is _CLOSING and addr != self.address:
            # A closing connection does not migrate: the application has had its
            # ConnectionTerminated (the last event), and an unproven address gets
            # no CLOSE.
            self._drop("closing_other_address")
            return
        cipher = self._recv_cipher
        if cipher is None:
            self._drop("unexpected_packet")
            return
        if not self.replay.check(pn):
            self._drop("replay")
            return
        try:
            plaintext = cipher.open(pn, header, ciphertext)
        except DecodeError as exc:
            self._drop(exc.reason)
            return
        # Authenticated from here on.
        self.replay.update(pn)
        self._packets_received += 1
        self._bytes_received += size
        self._last_received = now
        in_order = pn > self._largest_received
        same_address = addr == self.address
        # (_observe_path does nothing for a packet from the current address while
        # no other is probed: the common case skips the call.)
        if not self.is_client and (not same_address or self.probe_address is not None):
            self._observe_path(addr, size, in_order=in_order, now=now)
        if in_order:
            self._largest_received = pn
            self._largest_received_time = now
        if not self.validated and same_address:
            self._path_bytes_in += size
        self._received.add(pn)
        if len(self._received) > MAX_ACK_RANGES:
            self._received.shift()
        self._ack_pending = True
        if state is _HANDSHAKE:
            # Server: the client's first packet confirms the handshake, and if it
            # comes from the initiation's address, that address receives.
            self._transition(TransportInput.HANDSHAKE_DONE)
            self._response = None
            self.initiation = None
            if same_address:
                self.validated = True
            self._announced = True
            assert self.server_key is not None
            self._events.append(
                HandshakeCompleted(
                    connection_id=self.connection_id,
                    server_key=self.server_key,
                    address=self.address,
                )
            )
        try:
            self._process_frames(plaintext, pn=pn, in_order=in_order, addr=addr, now=now)
        except DecodeError as exc:
            self._violation(exc, now=now)

    def _process_frames(
        self, plaintext: bytes, *, pn: int, in_order: bool, addr: Address, now: float
    ) -> None:
        if self.state is _ESTABLISHED and self._process_common(plaintext, pn, in_order, now):
            return
        frames = decode_frames(plaintext)
        if self.state is _CLOSING:
            # Answer with the CLOSE again (ours may have been lost); note theirs.
            self._close_send = True
            for frame in frames:
                if isinstance(frame, CloseFrame):
                    self._transition(TransportInput.CLOSE_RECEIVED)
            return
        ack_eliciting = False
        for frame in frames:
            if isinstance(frame, StreamFrame):
                ack_eliciting = True
                for message in self.receive_stream.receive(frame.offset, frame.data):
                    self._events.append(
                        PayloadReceived(connection_id=self.connection_id, payload=message)
                    )
            elif isinstance(frame, AckFrame):
                self._on_ack(frame, now=now)
            elif isinstance(frame, PingFrame):
                ack_eliciting = True
            elif isinstance(frame, PathChallengeFrame):
                # Client: echo it from where we are; the server then sends here.
                if self.is_client and len(self._path_responses) < _MAX_PATH_RESPONSES:
                    self._path_responses.append(frame.data)
            elif isinstance(frame, PathResponseFrame):
                self._on_path_response(frame, addr)
            elif isinstance(frame, CloseFrame):
                self._on_close_frame(frame, now=now)
                return
        if ack_eliciting:
            self._on_ack_eliciting(pn, in_order, now)

    def _process_common(self, payload: bytes, pn: int, in_order: bool, now: float) -> bool:
        """Take the packets an established connection mostly gets without building
        frame objects: an ACK or not, then PINGs and at most one STREAM frame.

        The whole payload is read before anything changes, as decode_frames reads
        it before the frames are acted on: anything else (another frame type, a
        second STREAM or ACK, bytes that do not decode) returns False having changed
        nothing, and the general path then decodes it (and refuses it if it is bad)
        with the same outcome as ever. Once it acts, it does what the general path
        does for those frames, in the same order, raising the same errors.
        """
        end = len(payload)
        if not end:
            return False
        pos = 0
        ranges: list[tuple[int, int]] | None = None
        delay_us = 0
        ack_eliciting = False
        offset = -1
        data_start = 0
        data_end = 0
        try:
            if payload[0] == ACK_TYPE:
                ranges, delay_us, pos = decode_ack_ranges(payload, 1)
            while pos < end:
                kind = payload[pos]
                if kind == PING_TYPE:
                    ack_eliciting = True
                    pos += 1
                elif kind == STREAM_TYPE and offset < 0:
                    offset, pos = read_varint(payload, pos + 1)
                    length, data_start = read_varint(payload, pos)
                    data_end = data_start + length
                    if data_end > end or offset + length > MAX_VARINT:
                        return False
                    pos = data_end
                else:
                    return False
        except DecodeError:
            return False
        if ranges is not None:
            self._on_ack_ranges(ranges, delay_us, now)
        if offset >= 0:
            ack_eliciting = True
            cid = self.connection_id
            events = self._events
            data = payload[data_start:data_end]
            for message in self.receive_stream.receive(offset, data):
                events.append(PayloadReceived(connection_id=cid, payload=message))
        if ack_eliciting:
            self._on_ack_eliciting(pn, in_order, now)
        return True

    def _on_ack_eliciting(self, pn: int, in_order: bool, now: float) -> None:
        """An ack-eliciting packet was processed: arm or hasten the ACK."""
        largest = self._largest_eliciting
        self._largest_eliciting = pn if pn > largest else largest
        self._ack_eliciting += 1
        # RFC 9000, 13.2.1: acknowledge every second packet, and at once when
        # one arrives out of order (a gap means the peer may be retransmitting).
        if self._ack_eliciting >= 2 or not in_order:
            self._ack_immediate = True
        elif self._ack_deadline is None:
            # Early by the slack: the ACK must be out within max_ack_delay, and
            # the caller's loop wakes a little after the timer (RFC 9000, 18.2).
            self._ack_deadline = now + self._ack_delay - self._ack_slack

    def _on_ack(self, frame: AckFrame, *, now: float) -> None:
        self._on_ack_ranges(frame.ranges, frame.delay_us, now)

    def _on_ack_ranges(self, ranges: Sequence[tuple[int, int]], delay_us: int, now: float) -> None:
        largest = ranges[-1][1] - 1
        if largest >= self._next_pn:
            raise DecodeError("invalid_ack", f"ACK of packet {largest}, never sent")
        acked, lost = self.recovery.on_ack_received(ranges, delay_us / 1e6, now=now)
        stream = self.send_stream
        peer_knows = self._peer_knows
        for packet in acked:
            acks_up_to = packet.acks_up_to
            peer_knows = acks_up_to if acks_up_to > peer_knows else peer_knows
            for start, stop in packet.stream_ranges:
                stream.on_acked(start, stop)
        self._peer_knows = peer_knows
        if lost:
            self._requeue(lost)

    def _requeue(self, lost: list[SentPacket]) -> None:
        stream = self.send_stream
        for packet in lost:
            self._packets_lost += 1
            for start, stop in packet.stream_ranges:
                stream.on_lost(start, stop)
            if packet.ping:
                self._ping_pending = True

    def _on_close_frame(self, frame: CloseFrame, *, now: float) -> None:
        try:
            code = CloseCode(frame.code)
            reason = frame.reason
        except ValueError:
            code = CloseCode.PROTOCOL_VIOLATION
            reason = f"unknown close code {frame.code}: {frame.reason}"
        self._transition(TransportInput.CLOSE_RECEIVED)
        self._close_deadline = now + CLOSE_PERIOD_RTOS * self.rtt.rto()
        self._terminate(code, reason, by_peer=True)

    def _observe_path(self, addr: Address, size: int, *, in_order: bool, now: float) -> None:
        """Server: an authenticated packet came from ``addr``; probe a new address.

        A packet from another address does not move the connection: it may be a
        copy an on-path attacker replayed from elsewhere, first. The server sends a
        PATH_CHALLENGE there and keeps sending to the current address until the
        client echoes it from the new one (RFC 9000, section 9.3).
        """
        if addr == self.address:
            if in_order and self.probe_address is not None:
                # The newest packet comes from the current address: the peer is
                # still there, and the probe was a replay or a late packet.
                self.probe_address = None
            return
        if addr != self.probe_address:
            if not in_order:
                return  # a late packet from an old address moves nothing
            self.probe_address = addr
            self._probe_data = self._new_probe_data()
            self._probe_sent = None
            self._probe_bytes_in = 0
            self._probe_bytes_out = 0
        self._probe_bytes_in += size
        # Challenge at once, then again at most once an RTO while packets keep
        # coming from there (a lost challenge or response is not retransmitted).
        if self._probe_sent is None or now - self._probe_sent >= self.rtt.rto():
            self._probe_pending = True

    def _new_probe_data(self) -> bytes:
        if self._random is None:
            raise LocalProtocolError("a server connection needs a random source")
        return self._random.token_bytes(PATH_DATA_SIZE)

    def _on_path_response(self, frame: PathResponseFrame, addr: Address) -> None:
        if (
            self.is_client
            or self.probe_address is None
            or addr != self.probe_address
            or frame.data != self._probe_data
        ):
            self._drop("path_response_mismatch")
            return
        previous = self.address
        self.address = addr
        # The echo proves the client receives there: no amplification limit.
        self.validated = True
        self.probe_address = None
        self._probe_pending = False
        self._path_bytes_in = 0
        self._path_bytes_out = 0
        if self._announced:
            self._events.append(
                ConnectionAddressChanged(
                    connection_id=self.connection_id, address=addr, previous_address=previous
                )
            )

    def build_probe(self, *, now: float) -> tuple[bytes, Address] | None:
        """Server: the PATH_CHALLENGE datagram for the address being probed, if due.

        It is limited to three times what that address sent (anti-amplification).
        """
        address = self.probe_address
        if not self._probe_pending or address is None or self.state is not _ESTABLISHED:
            return None
        frame = encode_frame(PathChallengeFrame(self._probe_data))
        size = DATA_HEADER_SIZE + len(frame) + TAG_SIZE
        if self._probe_bytes_out + size > AMPLIFICATION_FACTOR * self._probe_bytes_in:
            self._drop("path_challenge_amplification")
            self._probe_pending = False
            return None
        self._probe_pending = False
        self._probe_sent = now
        datagram = self._seal(frame)
        self._probe_bytes_out += len(datagram)
        self._packets_sent += 1
        self._bytes_sent += len(datagram)
        return datagram, address

    # ---------------------------------------------------------------- sending

    def _allowance(self) -> int:
        if self.validated:
            return self.config.max_datagram_size
        return min(
            self.config.max_datagram_size,
            AMPLIFICATION_FACTOR * self._path_bytes_in - self._path_bytes_out,
        )

    def _sent(self, datagram: bytes, now: float) -> None:
        self._packets_sent += 1
        self._bytes_sent += len(datagram)
        if not self.validated:
            self._path_bytes_out += len(datagram)
        self._last_sent = now

    def build_datagrams(self, *, now: float) -> list[bytes]:
        """Everything there is to send now, as sealed datagrams."""
        state = self.state
        out: list[bytes] = []
        if state is _ESTABLISHED:
            self._build_data(out, now)
        elif state is _HANDSHAKE:
            if self._initiation_pending and self.initiation is not None:
                self._initiation_pending = False
                self._initiation_sent_time = now
                out.append(self.initiation)
                self._sent(self.initiation, now)
            response = self._response
            if (
                self._response_pending
                and response is not None
                and len(response) <= self._allowance()
            ):
                self._response_pending = False
                out.append(response)
                self._sent(response, now)
        elif state is _CLOSING and self._close_send and self._close_frame is not None:
            self._close_send = False
            if len(self._close_frame) + _MIN_PACKET <= self._allowance():
                datagram = self._seal(self._close_frame)
                out.append(datagram)
                self._sent(datagram, now)
        return out

    def _seal(self, payload: bytes) -> bytes:
        assert self._send_cipher is not None
        pn = self._next_pn
        self._next_pn += 1
        header = encode_data_header(self.connection_id, pn)
        return header + self._send_cipher.seal(pn, header, payload)

    def _build_data(self, out: list[bytes], now: float) -> None:
        stream = self.send_stream
        recovery = self.recovery
        while True:
            allowance = self._datagram_size if self.validated else self._allowance()
            if allowance < _MIN_PACKET:
                return
            window_open = recovery.in_flight < self._in_flight_limit
            want_data = window_open and (self._ping_pending or stream.has_data())
            want_path = bool(self._path_responses)
            want_ack = self._ack_eliciting > 0 and (
                self._ack_immediate
                or self._ack_eliciting >= 2
                or (self._ack_deadline is not None and now >= self._ack_deadline)
            )
            if not (want_data or want_ack or want_path):
                return
            payload = bytearray()
            for data in self._path_responses:
                payload += _PATH_RESPONSE + data
            self._path_responses.clear()
            # A packet with data carries the ACK too while the peer may not know that
            # its last ack-eliciting packet arrived: an ACK-only packet can be lost
            # silently, and then the peer would retransmit into a growing backoff
            # although its request was answered. (Known once a packet of ours that
            # carried such an ACK is itself acknowledged.)
            acks_up_to = -1
            if self._ack_pending or (want_data and self._largest_eliciting > self._peer_knows):
                acks_up_to = self._largest_received
                delay_us = int((now - self._largest_received_time) * 1e6)
                delay_us = delay_us if delay_us > 0 else 0
                _append_ack(payload, self._received, delay_us)
                self._ack_pending = False
                self._ack_eliciting = 0
                self._ack_immediate = False
                self._ack_deadline = None
            ping = False
            if window_open and self._ping_pending:
                payload.append(PING_TYPE)
                self._ping_pending = False
                ping = True
            ranges: list[tuple[int, int]] = []
            room = allowance - DATA_HEADER_SIZE - TAG_SIZE - len(payload)
            while window_open and room > STREAM_FRAME_OVERHEAD:
                chunk = stream.next_chunk(room - STREAM_FRAME_OVERHEAD)
                if chunk is None:
                    break
                offset, data = chunk
                before = len(payload)
                payload.append(STREAM_TYPE)
                append_varint(payload, offset)
                append_varint(payload, len(data))
                payload += data
                room -= len(payload) - before
                ranges.append((offset, offset + len(data)))
            if not payload:
                return
            pn = self._next_pn
            datagram = self._seal(bytes(payload))
            out.append(datagram)
            self._sent(datagram, now)
            if ranges or ping:
                recovery.on_packet_sent(
                    SentPacket(
                        packet_number=pn,
                        sent_time=now,
                        size=len(datagram),
                        stream_ranges=ranges,
                        ping=ping,
                        acks_up_to=acks_up_to,
                    )
                )

    # ----------------------------------------------------------------- timers

    def deadlines(self) -> dict[Timer, float]:
        """Every armed timer and its deadline."""
        state = self.state
        timers: dict[Timer, float] = {}
        if state is _ESTABLISHED:
            rto = self.recovery.rto_deadline()
            if rto is not None:
                timers[Timer.RETRANSMIT] = rto
            loss = self.recovery.loss_deadline()
            if loss is not None:
                timers[Timer.LOSS] = loss
            if self._ack_eliciting and not self._ack_immediate and self._ack_deadline is not None:
                timers[Timer.ACK_DELAY] = self._ack_deadline
            if not self._ping_pending:
                timers[Timer.KEEPALIVE] = self._last_sent + self.config.keepalive_interval
            timers[Timer.IDLE] = self._last_received + self.config.idle_timeout
        elif state is _HANDSHAKE:
            timers[Timer.HANDSHAKE_TIMEOUT] = self._handshake_deadline
            if self.initiation is not None and not self._initiation_pending and self.is_client:
                timers[Timer.HANDSHAKE] = self._initiation_sent_time + min(
                    self.rtt.rto(self._handshake_backoff), self.config.max_handshake_interval
                )
        elif state is _CLOSING or state is _DRAINING:
            timers[Timer.CLOSE] = self._close_deadline
        return timers

    def next_deadline(self) -> float | None:
        """The earliest armed timer, or None (the minimum of :meth:`deadlines`)."""
        if self.state is not _ESTABLISHED:
            timers = self.deadlines()
            return min(timers.values()) if timers else None
        # The common case, asked after every packet: the same timers as deadlines()
        # without building the dict.
        deadline = self._last_received + self._idle_timeout
        if not self._ping_pending:
            keepalive = self._last_sent + self._keepalive_interval
            deadline = keepalive if keepalive < deadline else deadline
        rto = self.recovery.rto_deadline()
        if rto is not None and rto < deadline:
            deadline = rto
        loss = self.recovery.loss_deadline()
        if loss is not None and loss < deadline:
            deadline = loss
        ack = self._ack_deadline
        if self._ack_eliciting and not self._ack_immediate and ack is not None and ack < deadline:
            deadline = ack
        return deadline

    def handle_timer(self, *, now: float) -> None:
        """Fire every timer whose deadline has passed (an early call does nothing)."""
        earliest = self.next_deadline()
        if earliest is None or earliest > now:
            return  # (the common early call, without the dict of deadlines)
        timers = self.deadlines()
        for timer in _FIRING_ORDER:
            deadline = timers.get(timer)
            if deadline is None or deadline > now:
                continue
            self._fire(timer, now)
            if self.state is _CLOSED:
                return

    def _fire(self, timer: Timer, now: float) -> None:
        if timer is Timer.IDLE:
            self._transition(TransportInput.TIMEOUT)
            self._terminate(
                CloseCode.IDLE_TIMEOUT, f"nothing received for {self.config.idle_timeout:g} s"
            )
        elif timer is Timer.HANDSHAKE_TIMEOUT:
            self._transition(TransportInput.TIMEOUT)
            if not self.is_client:
                self._drop("half_open_expired")
            self._terminate(
                CloseCode.HANDSHAKE_TIMEOUT,
                f"no handshake within {self.config.handshake_timeout:g} s",
            )
        elif timer is Timer.CLOSE:
            self._transition(TransportInput.CLOSE_TIMER)
        elif timer is Timer.RETRANSMIT:
            self._requeue(self.recovery.on_rto())
        elif timer is Timer.LOSS:
            self._requeue(self.recovery.detect_lost(now=now))
        elif timer is Timer.ACK_DELAY:
            self._ack_immediate = True
            self._ack_deadline = None
        elif timer is Timer.KEEPALIVE:
            self._ping_pending = True
        elif timer is Timer.HANDSHAKE:
            self._initiation_pending = True
            self._handshake_backoff += 1


# Fatal timers first: there is no point retransmitting on a dead connection.
_FIRING_ORDER: Final = (
    Timer.HANDSHAKE_TIMEOUT,
    Timer.IDLE,
    Timer.CLOSE,
    Timer.RETRANSMIT,
    Timer.LOSS,
    Timer.ACK_DELAY,
    Timer.KEEPALIVE,
    Timer.HANDSHAKE,
)


def _append_ack(out: bytearray, received: RangeSet, delay_us: int) -> None:
    """Append the ACK frame of ``received`` to ``out``: the bytes ``encode_ack``
    makes of its ranges, without the list of pairs and the bytes objects."""
    count = len(received)
    lowest = count - MAX_ACK_RANGES if count > MAX_ACK_RANGES else 0
    top = received[count - 1]
    smallest = top.start
    out.append(ACK_TYPE)
    append_varint(out, top.stop - 1)
    append_varint(out, delay_us)
    append_varint(out, count - 1 - lowest)
    append_varint(out, top.stop - 1 - smallest)
    for index in range(count - 2, lowest - 1, -1):
        below = received[index]
        # QUIC: the next range's largest = previous smallest - gap - 2.
        append_varint(out, smallest - below.stop - 1)
        append_varint(out, below.stop - 1 - below.start)
        smallest = below.start


def _new_send_stream(config: TransportConfig) -> SendStream:
    return SendStream(window=config.stream_window_bytes, max_buffer=config.max_send_buffer_bytes)


def _new_receive_stream(config: TransportConfig) -> ReceiveStream:
    return ReceiveStream(window=RECEIVE_WINDOW, max_message_size=config.receive_message_limit)
