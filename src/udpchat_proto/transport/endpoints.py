"""The secure, reliable transport: the client and server roles (sans-IO).

A connection starts with a ``Noise_NX_25519_ChaChaPoly_SHA256`` handshake in one
round trip (INITIATION, RESPONSE); after it, every datagram is a DATA packet sealed
with ChaCha20-Poly1305 under the packet number, checked against a replay window,
and carries frames: acknowledgements, slices of an ordered byte stream of
messages, PINGs and a CLOSE. See ``docs/PROTOCOL.md`` (Transport).

Both roles have aioquic's five methods::

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

import heapq
import struct
from collections import deque
from collections.abc import Mapping
from typing import Final

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from ..errors import DecodeError, LocalProtocolError
from ..randomness import RandomSource, SystemRandomSource
from ..ratelimit import KeyedLimiter, RateLimit
from .addresses import address_key
from .capacity import OpenConnections
from .config import TransportConfig
from .connection import Connection
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
from .handshake import HandshakeState
from .keys import ServerKey
from .packets import (
    CONNECTION_ID_SIZE,
    INITIATION_SIZE,
    RETRY_TOKEN_SIZE,
    WIRE_VERSION,
    DataPacket,
    HandshakeInitiation,
    HandshakeResponse,
    Retry,
    VersionNegotiation,
    decode_packet,
    encode_initiation,
    encode_response,
    encode_retry,
    encode_version_negotiation,
    initiation_payload,
)
from .states import END_STATES, TransportState

__all__ = [
    "MAX_RETRIES",
    "PROLOGUE",
    "Address",
    "ClientTransport",
    "CloseCode",
    "ConnectionAddressChanged",
    "ConnectionId",
    "ConnectionTerminated",
    "HandshakeCompleted",
    "PayloadReceived",
    "ServerTransport",
    "TransportConfig",
    "TransportEvent",
    "TransportState",
]

#: Mixed into the Noise handshake hash, followed by the connection id: both sides
#: must agree on the protocol version and the id, or the handshake fails.
PROLOGUE: Final = b"udpchat/%d" % WIRE_VERSION
#: Noise message 1 = e (32 bytes) + payload; the payload pads the initiation.
_INITIATION_PADDING: Final = INITIATION_SIZE - (2 + CONNECTION_ID_SIZE) - 32
#: How often (seconds of ``now``) the per-address handshake buckets are pruned.
_PRUNE_INTERVAL: Final = 10.0
#: A client follows at most this many RETRYs per connect: enough to outlive an
#: expired token or a server restart, few enough that a forger on the path cannot
#: keep it busy (an off-path one does not know the connection id at all).
MAX_RETRIES: Final = 3
#: RETRYs waiting for ``datagrams_to_send``; beyond it more are refused
#: (``retry_queue_full``). A loop reads at most a few hundred datagrams per turn.
_MAX_PENDING_RETRIES: Final = 1024
#: Domain separation for the RETRY token's MAC.
_RETRY_LABEL: Final = b"udpchat retry token v1"
_ISSUED: Final = struct.Struct(">Q")


def _count(counters: dict[str, int], reason: str) -> None:
    counters[reason] = counters.get(reason, 0) + 1


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
        try:
            packet = decode_packet(bytes(data))
        except DecodeError as exc:
            _count(self.dropped, exc.reason)
            return
        if packet.connection_id != self._connection_id:
            _count(self.dropped, "unknown_connection")
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
                _count(self.dropped, "unexpected_version_negotiation")
            else:
                self._connection.fail_handshake(CloseCode.UNSUPPORTED_VERSION, refusal)
        else:
            _count(self.dropped, "unexpected_packet")

    def _on_retry(self, packet: Retry) -> None:
        # The connection id matched (random, never seen by an off-path attacker).
        # Follow at most MAX_RETRIES per connect, and only while handshaking.
        if (
            self._connection.state is not TransportState.HANDSHAKE
            or self._retries >= MAX_RETRIES
            or packet.token == self._retry_token
        ):
            _count(self.dropped, "unexpected_retry")
            return
        self._retries += 1
        self._retry_token = packet.token
        self._connection.retry_client_handshake(self._new_initiation())

    def _on_response(self, packet: HandshakeResponse, now: float) -> None:
        if not self._handshakes or self._connection.state is not TransportState.HANDSHAKE:
            _count(self.dropped, "unexpected_handshake")
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
            _count(self.dropped, failure.reason)
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
        return [(datagram, address) for datagram in self._connection.build_datagrams(now=now)]

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


class ServerTransport:
    """The server end of every connection, routed by connection id.

    It answers handshakes (rate-limited per address prefix, with at most
    ``config.max_half_open`` in progress, and under load only for clients that
    proved their address with a RETRY token), never sends an unvalidated address
    more than three times what it received from it, follows a client to a new
    address once a PATH_CHALLENGE sent there is answered from there, and keeps
    ``max_connections`` and ``max_buffered_bytes`` by ending connections.

    Attributes:
        dropped: datagrams dropped, handshakes refused and connections ended for a
            limit, by reason (``"unknown_connection"``, ``"rate_limited"``,
            ``"half_open_limit"``, ``"retry"``, ``"retry_token_invalid"``,
            ``"retry_token_expired"``, ``"connection_limit"``, ``"buffer_limit"``,
            ``"connection_refused"``, ``"handshake_failed"``, ``"decrypt_failed"`` ...).
    """

    def __init__(
        self,
        *,
        static_key: ServerKey,
        config: TransportConfig | None = None,
        random: RandomSource | None = None,
    ) -> None:
        """Create a server with no connections.

        Args:
            static_key: the server's static key (its public half is what clients pin).
            config: limits and timers (defaults: ``TransportConfig()``).
            random: the source of ephemeral keys (default: the operating system's
                CSPRNG).
        """
        self._config = config if config is not None else TransportConfig()
        self._random: RandomSource = random if random is not None else SystemRandomSource()
        self._static_key = static_key
        self._public_key = static_key.public_bytes
        self._events: deque[TransportEvent] = deque()
        self.dropped: dict[str, int] = {}
        self._connections: dict[ConnectionId, Connection] = {}
        self._half_open: set[ConnectionId] = set()
        # Connections by the address key (prefix) their handshake came from, kept
        # across migration so that moving does not free a slot, for
        # max_connections_per_address.
        self._origin: dict[ConnectionId, str] = {}
        self._per_ip: dict[str, int] = {}
        # RETRY: the MAC key lives as long as this server; tokens carry their issue
        # time, so nothing is stored per RETRY but the datagram until it is sent.
        self._retry_key = self._random.token_bytes(32)
        self._retry_out: list[tuple[bytes, Address]] = []
        # Open connections (announced, not closing), and which the cap may end.
        self._open = OpenConnections()
        # Stream bytes held over all connections, and each one's share.
        self._buffered = 0
        self._buffered_by: dict[ConnectionId, int] = {}
        self._enforcing = False
        # The latest ``now`` the caller gave (``send`` takes none): when a
        # connection ended for a limit starts closing.
        self._now = 0.0
        self._limiter: KeyedLimiter[str] = KeyedLimiter(
            RateLimit(
                burst=self._config.handshake_burst,
                interval=1.0 / self._config.handshakes_per_address_per_second,
            )
        )
        self._next_prune = 0.0
        # (deadline, sequence, connection id); stale entries are skipped lazily.
        self._heap: list[tuple[float, int, ConnectionId]] = []
        self._unscheduled: dict[ConnectionId, None] = {}
        """Connections touched since their deadline was last computed: it is computed
        once per batch (timers, output), not after every packet of the batch."""
        self._sequence = 0
        # Connections that may have something to send (an ordered set).
        self._dirty: dict[ConnectionId, None] = {}

    # ------------------------------------------------------------- properties

    @property
    def config(self) -> TransportConfig:
        """The configuration in use."""
        return self._config

    @property
    def server_key(self) -> bytes:
        """The server's static public key."""
        return self._public_key

    @property
    def connections(self) -> Mapping[ConnectionId, Address]:
        """Established, open connections and their current client addresses (a copy)."""
        return {
            cid: conn.address
            for cid, conn in self._connections.items()
            if conn.announced and not conn.is_closed
        }

    @property
    def half_open_count(self) -> int:
        """Handshakes answered and not yet confirmed by the client."""
        return len(self._half_open)

    @property
    def connection_count(self) -> int:
        """Every connection held: half-open, open, closing or draining."""
        return len(self._connections)

    @property
    def buffered_bytes(self) -> int:
        """Stream bytes held over all connections (see ``max_buffered_bytes``)."""
        return self._buffered

    def address_key(self, host: str) -> str:
        """The key of ``host`` for per-address limits (see :func:`address_key`)."""
        return address_key(host, self._config)

    def address_of(self, connection_id: ConnectionId) -> Address | None:
        """The current address of an established connection, or None if unknown."""
        conn = self._connections.get(connection_id)
        if conn is None or not conn.announced:
            return None
        return conn.address

    def send_buffer_size(self, connection_id: ConnectionId) -> int:
        """Bytes queued for a connection and not yet acknowledged (0 if unknown)."""
        conn = self._connections.get(connection_id)
        return conn.send_stream.buffered if conn is not None else 0

    def connection_stats(self, connection_id: ConnectionId) -> dict[str, int] | None:
        """A connection's counters (see ``ClientTransport.stats``), or None if unknown."""
        conn = self._connections.get(connection_id)
        return conn.stats if conn is not None else None

    # --------------------------------------------------------------- commands

    def _established(self, connection_id: ConnectionId) -> Connection:
        conn = self._connections.get(connection_id)
        if conn is None or not conn.announced:
            raise LocalProtocolError(f"unknown connection {connection_id.hex()}")
        return conn

    def send(self, connection_id: ConnectionId, payload: bytes) -> None:
        """Queue one message to a connection; then call :meth:`datagrams_to_send`.

        Args:
            connection_id: from :class:`HandshakeCompleted`.
            payload: the message, at most ``config.max_message_size`` bytes.

        Raises:
            LocalProtocolError: the connection is unknown or closed, the message is
                too large, or the connection's send buffer is full.
        """
        conn = self._established(connection_id)
        conn.send(payload)
        self._touch(conn)

    def set_protected(self, connection_id: ConnectionId, protected: bool = True) -> None:
        """Protect a connection from ``max_connections`` (the chat server: a logged-in
        user's), or stop (a logout): it is never ended to make room, and a newcomer
        is refused when only protected ones remain (``transport/capacity.py``). An
        unknown or closed connection is ignored (its end may not be drained yet)."""
        conn = self._connections.get(connection_id)
        if conn is not None and not conn.is_closed:
            self._open.protect(connection_id, protected)

    def close(
        self,
        connection_id: ConnectionId,
        now: float,
        reason: str = "",
        *,
        code: CloseCode = CloseCode.NORMAL_CLOSE,
    ) -> None:
        """Close a connection (the client learns it); then call :meth:`datagrams_to_send`.

        Closing a connection already closing does nothing.

        Args:
            connection_id: from :class:`HandshakeCompleted`.
            now: the current time, seconds.
            reason: a short human-readable reason.
            code: the CLOSE frame's; ``PROTOCOL_VIOLATION`` for what the peer sent.

        Raises:
            LocalProtocolError: the connection is unknown.
        """
        self._now = max(self._now, now)
        conn = self._established(connection_id)
        conn.close(reason, now=now, code=code)
        self._touch(conn)

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
        self._now = max(self._now, now)
        try:
            packet = decode_packet(bytes(data))
        except DecodeError as exc:
            _count(self.dropped, exc.reason)
            # A version not spoken here is told which ones are, never met with silence.
            answer = encode_version_negotiation(bytes(data))
            if answer is not None and len(self._retry_out) < _MAX_PENDING_RETRIES:
                self._retry_out.append((answer, addr))
            return
        if isinstance(packet, DataPacket):
            conn = self._connections.get(packet.connection_id)
            if conn is None:
                _count(self.dropped, "unknown_connection")
                return
            conn.receive_data(packet, len(data), addr, now=now)
            self._touch(conn)
        elif isinstance(packet, HandshakeInitiation):
            self._on_initiation(packet, len(data), addr, now)
        else:
            _count(self.dropped, "unexpected_packet")

    def _on_initiation(
        self, packet: HandshakeInitiation, size: int, addr: Address, now: float
    ) -> None:
        cid = packet.connection_id
        conn = self._connections.get(cid)
        if conn is not None:
            # The client's retransmission: our response was lost. No new work.
            if (
                conn.state is TransportState.HANDSHAKE
                and conn.initiation == packet.noise_message
                and conn.address == addr
            ):
                conn.repeat_response(size)
                self._touch(conn)
            else:
                _count(self.dropped, "duplicate_initiation")
            return
        # Cheap refusals before the Diffie-Hellman work.
        config = self._config
        if len(self._half_open) >= config.max_half_open:
            _count(self.dropped, "half_open_limit")
            return
        key = address_key(addr[0], config)
        if self._per_ip.get(key, 0) >= config.max_connections_per_address:
            _count(self.dropped, "address_connection_limit")
            return
        refusal = self._check_token(packet.token, cid, addr, now)
        if refusal is not None and len(self._half_open) >= config.retry_threshold:
            # Under load: only a proven address gets state. A spoofed source never
            # sees the RETRY, so it cannot come back with a token.
            _count(self.dropped, refusal)
            self._send_retry(cid, addr, now)
            return
        if now >= self._next_prune:
            self._limiter.prune(now=now)
            self._next_prune = now + _PRUNE_INTERVAL
        # Per address prefix, not per (IP, port): a flooder chooses its ports (and,
        # with IPv6, the low 64 bits of its address) freely. Proven initiations
        # (a valid token) spend a bucket of their own, so that a spoofer sending
        # from a victim's address cannot use up the victim's budget.
        if not self._limiter.spend(key if refusal is not None else key + "#proven", now=now):
            _count(self.dropped, "rate_limited")
            return
        handshake = HandshakeState.responder(
            static_private=self._static_key.private_bytes,
            random=self._random,
            prologue=PROLOGUE + cid,
        )
        try:
            handshake.read_message(packet.noise_message)
        except DecodeError as exc:
            _count(self.dropped, exc.reason)
            return
        response = encode_response(cid, handshake.write_message(b""))
        to_server, to_client = handshake.split()
        conn = Connection(
            connection_id=cid,
            config=self._config,
            is_client=False,
            address=addr,
            events=self._events,
            dropped=self.dropped,
            now=now,
            random=self._random,
        )
        conn.start_server_handshake(
            initiation=packet.noise_message,
            response=response,
            server_key=self._public_key,
            send=to_client,
            receive=to_server,
            received_bytes=size,
        )
        self._connections[cid] = conn
        self._half_open.add(cid)
        self._origin[cid] = key
        self._per_ip[key] = self._per_ip.get(key, 0) + 1
        self._touch(conn)

    # ------------------------------------------------------------------ retry

    def _token_mac(self, cid: ConnectionId, addr: Address, issued: bytes) -> bytes:
        mac = hmac.HMAC(self._retry_key, hashes.SHA256())
        host = addr[0].encode("utf-8", errors="replace")
        for part in (_RETRY_LABEL, cid, issued, host, addr[1].to_bytes(2, "big")):
            mac.update(len(part).to_bytes(2, "big") + part)
        return mac.finalize()[: RETRY_TOKEN_SIZE - _ISSUED.size]

    def _make_token(self, cid: ConnectionId, addr: Address, now: float) -> bytes:
        issued = _ISSUED.pack(max(0, int(now)))
        return issued + self._token_mac(cid, addr, issued)

    def _check_token(
        self, token: bytes, cid: ConnectionId, addr: Address, now: float
    ) -> str | None:
        """None if ``token`` (empty or 24 bytes, as parsed) is ours for this connection id
        and exact source address, within ``retry_token_lifetime``; else why not."""
        if not token:
            return "retry"
        issued = token[: _ISSUED.size]
        if not constant_time.bytes_eq(token[_ISSUED.size :], self._token_mac(cid, addr, issued)):
            return "retry_token_invalid"
        age = int(now) - _ISSUED.unpack(issued)[0]
        if age < 0 or age > self._config.retry_token_lifetime:
            return "retry_token_expired"
        return None

    def _send_retry(self, cid: ConnectionId, addr: Address, now: float) -> None:
        if len(self._retry_out) >= _MAX_PENDING_RETRIES:
            _count(self.dropped, "retry_queue_full")
            return
        self._retry_out.append((encode_retry(cid, self._make_token(cid, addr, now)), addr))

    # ----------------------------------------------------------------- output

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Everything to write to the socket now, over all connections; each
        datagram is at most ``config.max_datagram_size`` bytes.

        Only connections touched since the last call are visited.

        Args:
            now: the current time, seconds.

        Returns:
            ``(datagram, client address)`` pairs.
        """
        self._now = max(self._now, now)
        out, self._retry_out = self._retry_out, []
        dirty, self._dirty = self._dirty, {}
        for cid in dirty:
            conn = self._connections.get(cid)
            if conn is None:
                continue
            for datagram in conn.build_datagrams(now=now):
                out.append((datagram, conn.address))
            probe = conn.build_probe(now=now)
            if probe is not None:
                out.append(probe)
            self._settle(conn)
        self._schedule_touched()
        return out

    def get_timer(self) -> float | None:
        """The earliest timer over all connections, or None."""
        if self._unscheduled:
            self._schedule_touched()
        heap = self._heap
        while heap:
            deadline, _, cid = heap[0]
            conn = self._connections.get(cid)
            if conn is not None and conn.scheduled == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def handle_timer(self, now: float) -> None:
        """Fire the timers that are due, over all connections (calling early is
        harmless); then drain :meth:`next_event` and call :meth:`datagrams_to_send`.

        Args:
            now: the current time, seconds.
        """
        self._now = max(self._now, now)
        if self._unscheduled:
            self._schedule_touched()
        heap = self._heap
        due: list[Connection] = []
        while heap and heap[0][0] <= now:
            deadline, _, cid = heapq.heappop(heap)
            conn = self._connections.get(cid)
            if conn is not None and conn.scheduled == deadline:
                conn.scheduled = None
                due.append(conn)
        for conn in due:
            conn.handle_timer(now=now)
            self._touch(conn)

    def next_event(self) -> TransportEvent | None:
        """The next event of any connection, or None when there are none left."""
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------ bookkeeping

    def _touch(self, conn: Connection) -> None:
        """A connection changed: it may have something to send, and new timers."""
        self._dirty[conn.connection_id] = None
        self._settle(conn)

    def _settle(self, conn: Connection) -> None:
        cid = conn.connection_id
        if conn.state is TransportState.ESTABLISHED and cid in self._open:
            pass  # the common case, after every packet: it was counted when it opened
        else:
            self._settle_state(conn)
            if cid not in self._connections:
                return
        held = conn.buffered_bytes
        self._buffered += held - self._buffered_by.get(cid, 0)
        self._buffered_by[cid] = held
        if self._buffered > self._config.max_buffered_bytes and not self._enforcing:
            self._enforce_budget()
        self._unscheduled[cid] = None

    def _settle_state(self, conn: Connection) -> None:
        """The tables that follow a connection's state: half-open, open, gone."""
        cid = conn.connection_id
        if conn.state is not TransportState.HANDSHAKE:
            self._half_open.discard(cid)
        if conn.state is TransportState.CLOSED:
            # CLOSING sends its last CLOSE before it gets here: nothing is lost.
            if self._connections.pop(cid, None) is not None:
                self._forget_origin(cid)
            self._dirty.pop(cid, None)
            self._open.forget(cid)
            self._buffered -= self._buffered_by.pop(cid, 0)
            return
        if conn.announced and not conn.is_closed:
            if cid not in self._open:
                self._open.add(cid, self._origin.get(cid, ""))
                if len(self._open) > self._config.max_connections:
                    self._make_room(newcomer=cid)
        else:
            self._open.discard(cid)

    def _schedule_touched(self) -> None:
        """Put the deadlines of the connections touched since the last time in the heap."""
        touched, self._unscheduled = self._unscheduled, {}
        connections = self._connections
        for cid in touched:
            conn = connections.get(cid)
            if conn is None:
                continue
            deadline = conn.next_deadline()
            if deadline != conn.scheduled:
                conn.scheduled = deadline
                if deadline is not None:
                    self._sequence += 1
                    heapq.heappush(self._heap, (deadline, self._sequence, cid))
        if len(self._heap) > 4 * len(connections) + 64:
            self._rebuild_heap()

    def _make_room(self, *, newcomer: ConnectionId) -> None:
        """Over ``max_connections``: end the unprotected connection ``capacity.py``
        picks, or refuse the newcomer when only protected (logged-in) ones remain."""
        connections, limit = self._connections, self._config.max_connections
        victim = self._open.victim(newcomer, lambda cid: connections[cid].last_received)
        if victim is None:
            _count(self.dropped, "connection_refused")
            victim, reason = newcomer, f"server busy: all {limit} connections in use; try later"
        else:
            _count(self.dropped, "connection_limit")
            reason = f"server busy: {limit} connections; this one was idle the longest"
        connections[victim].abort(CloseCode.SERVER_BUSY, reason, now=self._now)
        self._touch(connections[victim])

    def _enforce_budget(self) -> None:
        """Over ``max_buffered_bytes``: end the connections holding the most until the
        total fits. A scan of every connection, only when over the budget."""
        self._enforcing = True
        try:
            while self._buffered > self._config.max_buffered_bytes:
                cid = max(self._buffered_by, key=self._buffered_by.__getitem__)
                victim = self._connections[cid]
                if self._buffered_by[cid] == 0:
                    return
                _count(self.dropped, "buffer_limit")
                victim.abort(
                    CloseCode.RESOURCE_LIMIT,
                    f"server buffers full: this connection held {self._buffered_by[cid]} bytes",
                    now=self._now,
                )
                self._touch(victim)
        finally:
            self._enforcing = False

    def _forget_origin(self, cid: ConnectionId) -> None:
        ip = self._origin.pop(cid, None)
        if ip is None:
            return
        left = self._per_ip[ip] - 1
        if left:
            self._per_ip[ip] = left
        else:
            del self._per_ip[ip]

    def _rebuild_heap(self) -> None:
        self._heap = [
            (conn.scheduled, seq, cid)
            for seq, (cid, conn) in enumerate(self._connections.items())
            if conn.scheduled is not None
        ]
        heapq.heapify(self._heap)
