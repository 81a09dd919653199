"""The secure, reliable transport's client role (sans-IO).

A connection starts with a ``Noise_NX_25519_ChaChaPoly_SHA256`` handshake in one
round trip (INITIATION, RESPONSE); after it, every datagram is a DATA packet sealed
with ChaCha20-Poly1305 under the packet number, checked against a replay window,
and carries frames: acknowledgements, slices of an ordered byte stream of
messages, PINGs and a CLOSE. See ``docs/PROTOCOL.md`` (Transport). Both roles
(this one and :class:`~udpchat_proto.transport.server.ServerTransport`) have
aioquic's five methods::

    receive_datagram(data, addr, now)         # feed what the socket read
    datagrams_to_send(now) -> [(data, addr)]  # what to write
    get_timer() -> float | None               # when to call handle_timer
    handle_timer(now)
    next_event() -> TransportEvent | None     # HandshakeCompleted, PayloadReceived, ...

Command methods (``connect``, ``send``, ``close``) only queue work: call
``datagrams_to_send`` after them. Nothing here reads a clock, opens a socket or uses
global randomness. Remote input never raises: a datagram that does not parse,
authenticate or fit is dropped and counted in ``dropped`` by reason. Caller misuse
raises :class:`~udpchat_proto.errors.LocalProtocolError`.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from ..errors import DecodeError, LocalProtocolError
from ..randomness import RandomSource, SystemRandomSource
from .config import TransportConfig
from .connection import Connection
from .events import Address, CloseCode, ConnectionId, TransportEvent
from .handshake import HandshakeState
from .packets import (
    CONNECTION_ID_SIZE,
    DATA_HEADER_SIZE,
    DATA_TYPE,
    INITIATION_SIZE,
    PROLOGUE,
    TAG_SIZE,
    DataPacket,
    HandshakeResponse,
    Retry,
    VersionNegotiation,
    decode_packet,
    encode_initiation,
    initiation_payload,
)
from .retry import MAX_RETRIES
from .states import END_STATES, TransportState

__all__ = ["ClientTransport"]

#: Noise message 1 = e (32 bytes) + payload; the payload pads the initiation.
_INITIATION_PADDING: Final = INITIATION_SIZE - (2 + CONNECTION_ID_SIZE) - 32
#: The shortest datagram that is a DATA packet (decode_packet refuses shorter ones).
_MIN_DATA: Final = DATA_HEADER_SIZE + TAG_SIZE
#: Where a DATA packet's connection id ends (it starts after the type byte).
_CID_END: Final = 1 + CONNECTION_ID_SIZE


class ClientTransport:
    """The client end of one connection to a server.

    Typical use: ``connect(now)``, then in a loop feed ``receive_datagram``, drain
    ``next_event``, write ``datagrams_to_send`` and wait until ``get_timer()`` or
    the next datagram.

    Attributes:
        dropped: datagrams dropped, by reason (``"decrypt_failed"``, ``"replay"``,
            ``"unknown_connection"``, ``"truncated"`` ...).
    """

    def __init__(
        self,
        *,
        server_address: Address,
        config: TransportConfig | None = None,
        expected_server_key: bytes | None = None,
        random: RandomSource | None = None,
    ) -> None:
        """Create a client; nothing is sent until :meth:`connect`.

        Args:
            server_address: where to send.
            config: limits and timers (defaults: ``TransportConfig()``).
            expected_server_key: the server's 32-byte static public key if pinned;
                a server with another key ends the connection with
                ``SERVER_KEY_MISMATCH``. Without it, the key is reported in
                :class:`HandshakeCompleted` for the caller to pin.
            random: the source of the connection id and ephemeral key (default:
                the operating system's CSPRNG).

        Raises:
            LocalProtocolError: ``expected_server_key`` is not 32 bytes.
        """
        if expected_server_key is not None and len(expected_server_key) != 32:
            raise LocalProtocolError("expected_server_key must be 32 bytes")
        self._config = config if config is not None else TransportConfig()
        self._random: RandomSource = random if random is not None else SystemRandomSource()
        self._server_address = server_address
        self._expected_server_key = expected_server_key
        self._events: deque[TransportEvent] = deque()
        self.dropped: dict[str, int] = {}
        self._connection_id: ConnectionId = self._random.token_bytes(CONNECTION_ID_SIZE)
        # Newest first: after a RETRY the server may still answer an earlier
        # initiation (one that arrived once its load had dropped), so each one
        # sent stays answerable until the handshake completes.
        self._handshakes: list[HandshakeState] = []
        self._retry_token = b""
        self._retries = 0
        self._connection = Connection(
            connection_id=self._connection_id,
            config=self._config,
            is_client=True,
            address=server_address,
            events=self._events,
            dropped=self.dropped,
            now=0.0,
        )

    # ------------------------------------------------------------- properties

    @property
    def connection_id(self) -> ConnectionId:
        """The 8-byte connection id (chosen at construction)."""
        return self._connection_id

    @property
    def config(self) -> TransportConfig:
        """The configuration in use."""
        return self._config

    @property
    def state(self) -> TransportState:
        """The connection's state."""
        return self._connection.state

    @property
    def is_established(self) -> bool:
        """Whether the handshake completed and the connection is not closing."""
        return self._connection.state is TransportState.ESTABLISHED

    @property
    def is_closed(self) -> bool:
        """Whether the connection is over (closing, draining or closed)."""
        return self._connection.state in END_STATES

    @property
    def server_key(self) -> bytes | None:
        """The server's static public key, once the handshake has authenticated it."""
        return self._connection.server_key

    @property
    def send_buffer_size(self) -> int:
        """Bytes queued by :meth:`send` and not yet acknowledged (for backpressure)."""
        return self._connection.send_stream.buffered

    @property
    def stats(self) -> dict[str, int]:
        """Counters: packets and bytes each way, losses, retransmitted bytes, RTT."""
        return self._connection.stats

    # --------------------------------------------------------------- commands

    def connect(self, now: float) -> None:
        """Start the handshake; then call :meth:`datagrams_to_send`.

        Args:
            now: the current time, seconds.

        Raises:
            LocalProtocolError: already connected, connecting or closed.
        """
        if self._connection.state is not TransportState.INITIAL:
            raise LocalProtocolError(f"cannot connect in state {self._connection.state.value}")
        self._connection.start_client_handshake(self._new_initiation(), now=now)

    def _new_initiation(self) -> bytes:
        handshake = HandshakeState.initiator(
            random=self._random, prologue=PROLOGUE + self._connection_id
        )
        # The payload of message 1 travels in the clear but is hashed into the
        # handshake: neither the token nor the padding can be altered without
        # failing the handshake.
        payload = initiation_payload(self._retry_token, _INITIATION_PADDING)
        message = handshake.write_message(payload)
        self._handshakes.insert(0, handshake)
        return encode_initiation(self._connection_id, message)

    def send(self, payload: bytes) -> None:
        """Queue one message for reliable, ordered, exactly-once delivery.

        It may be called before the handshake completes: the message leaves once
        the connection is established. Then call :meth:`datagrams_to_send`.

        Args:
            payload: the message, at most ``config.max_message_size`` bytes.

        Raises:
            LocalProtocolError: the connection is closed, the message is too large,
                or ``send_buffer_size`` would exceed ``config.max_send_buffer_bytes``
                (wait for acknowledgements, then retry).
        """
        self._connection.send(payload)

    def close(self, now: float, reason: str = "") -> None:
        """Close the connection; then call :meth:`datagrams_to_send`.

        If established, a CLOSE frame tells the server (it sees
        ``ConnectionTerminated(NORMAL_CLOSE, reason, by_peer=True)``). This side's
        :class:`ConnectionTerminated` is queued at once. Closing twice does nothing.

        Args:
            now: the current time, seconds.
            reason: a short human-readable reason (truncated to 256 UTF-8 bytes).
        """
        self._connection.close(reason, now=now)

    # ------------------------------------------------------------------ input

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Feed one datagram from the socket; then drain :meth:`next_event` and
        call :meth:`datagrams_to_send`.

        Never raises for bad input: it is dropped and counted in :attr:`dropped`.

        Args:
            data: the datagram.
            addr: where it came from.
            now: the current time, seconds.
        """
        data = bytes(data)
        if len(data) >= _MIN_DATA and data[0] == DATA_TYPE:
            # The per-packet path: what decode_packet checks of a DATA packet,
            # without building the DataPacket.
            if data[1:_CID_END] != self._connection_id:
                self._drop("unknown_connection")
                return
            self._connection.receive_datagram(data, addr, now)
            return
        try:
            packet = decode_packet(data)
        except DecodeError as exc:
            self._drop(exc.reason)
            return
        if packet.connection_id != self._connection_id:
            self._drop("unknown_connection")
            return
        if isinstance(packet, DataPacket):
            self._connection.receive_data(packet, len(data), addr, now=now)
        elif isinstance(packet, HandshakeResponse):
            self._on_response(packet, now)
        elif isinstance(packet, Retry):
            self._on_retry(packet)
        elif isinstance(packet, VersionNegotiation):
            # Unauthenticated: honoured only while handshaking, and only if it lacks
            # our version (one listing it is forged or garbled).
            refusal = packet.refusal()
            if refusal is None or self._connection.state is not TransportState.HANDSHAKE:
                self._drop("unexpected_version_negotiation")
            else:
                self._connection.fail_handshake(CloseCode.UNSUPPORTED_VERSION, refusal)
        else:
            self._drop("unexpected_packet")

    def _on_retry(self, packet: Retry) -> None:
        # The connection id matched (random, never seen by an off-path attacker).
        # Follow at most MAX_RETRIES per connect, and only while handshaking.
        if (
            self._connection.state is not TransportState.HANDSHAKE
            or self._retries >= MAX_RETRIES
            or packet.token == self._retry_token
        ):
            self._drop("unexpected_retry")
            return
        self._retries += 1
        self._retry_token = packet.token
        self._connection.retry_client_handshake(self._new_initiation())

    def _on_response(self, packet: HandshakeResponse, now: float) -> None:
        if not self._handshakes or self._connection.state is not TransportState.HANDSHAKE:
            self._drop("unexpected_handshake")
            return
        failure: DecodeError | None = None
        for handshake in self._handshakes:
            try:
                # All or nothing: a forged response leaves the handshake intact.
                handshake.read_message(packet.noise_message)
            except DecodeError as exc:
                failure = exc
                continue
            break
        else:
            assert failure is not None
            self._drop(failure.reason)
            return
        server_key = handshake.remote_static_public
        assert server_key is not None
        self._handshakes = []
        expected = self._expected_server_key
        if expected is not None and server_key != expected:
            self._connection.fail_handshake(
                CloseCode.SERVER_KEY_MISMATCH,
                f"server key {server_key.hex()} is not the expected {expected.hex()}",
            )
            return
        send, receive = handshake.split()
        self._connection.complete_client_handshake(
            server_key=server_key, send=send, receive=receive, now=now
        )

    # ----------------------------------------------------------------- output

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Everything to write to the socket now; each datagram is at most
        ``config.max_datagram_size`` bytes.

        Args:
            now: the current time, seconds.

        Returns:
            ``(datagram, server address)`` pairs, in order.
        """
        address = self._server_address
        # (a loop, not a comprehension: one function object and cell fewer a call)
        out: list[tuple[bytes, Address]] = []
        for datagram in self._connection.build_datagrams(now=now):
            out.append((datagram, address))
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should be called next, or None."""
        return self._connection.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Fire the timers that are due (calling early is harmless); then drain
        :meth:`next_event` and call :meth:`datagrams_to_send`.

        Args:
            now: the current time, seconds.
        """
        self._connection.handle_timer(now=now)

    def next_event(self) -> TransportEvent | None:
        """The next event, or None when there are none left."""
        return self._events.popleft() if self._events else None

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
