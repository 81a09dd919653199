"""The secure, reliable transport's server role (sans-IO): every connection, routed
by connection id.

It answers Noise NX handshakes (see :mod:`~udpchat_proto.transport.client` for the
five methods both roles share), with the defences a public UDP server needs before
any connection exists: a half-open cap, per-address limits and rate, the stateless
RETRY (``retry.py``) under load, and at ``max_connections`` the choice of whom to end
(``capacity.py``). After the keys exist, each connection is a
:class:`~udpchat_proto.transport.connection.Connection`; this module keeps their
timers in one heap and visits only the connections touched since the last output.

Nothing here reads a clock, opens a socket or uses global randomness. Remote input
never raises: it is dropped and counted in ``dropped`` by reason. Caller misuse
raises :class:`~udpchat_proto.errors.LocalProtocolError`.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Mapping
from typing import Final

from ..errors import DecodeError, LocalProtocolError
from ..randomness import RandomSource, SystemRandomSource
from ..ratelimit import KeyedLimiter, RateLimit
from .addresses import address_key
from .capacity import OpenConnections
from .config import TransportConfig
from .connection import Connection
from .events import Address, CloseCode, ConnectionId, TransportEvent
from .handshake import HandshakeState
from .keys import ServerKey
from .packets import (
    CONNECTION_ID_SIZE,
    DATA_HEADER_SIZE,
    DATA_TYPE,
    PROLOGUE,
    TAG_SIZE,
    DataPacket,
    HandshakeInitiation,
    decode_packet,
    encode_response,
    encode_retry,
    encode_version_negotiation,
)
from .retry import RetryTokens
from .states import TransportState

__all__ = ["ServerTransport"]

#: How often (seconds of ``now``) the per-address handshake buckets are pruned.
_PRUNE_INTERVAL: Final = 10.0
#: RETRYs waiting for ``datagrams_to_send``; beyond it more are refused
#: (``retry_queue_full``). A loop reads at most a few hundred datagrams per turn.
_MAX_PENDING_RETRIES: Final = 1024
#: The shortest datagram that is a DATA packet (decode_packet refuses shorter ones).
_MIN_DATA: Final = DATA_HEADER_SIZE + TAG_SIZE
#: (a static load when compiled, where the enum member is an attribute lookup)
_ESTABLISHED: Final = TransportState.ESTABLISHED
#: Where a DATA packet's connection id ends (it starts after the type byte).
_CID_END: Final = 1 + CONNECTION_ID_SIZE


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
        # (read after every packet: a native int when compiled, where the config,
        # an attrs class outside the compiled modules, is a dynamic lookup)
        self._buffered_limit = self._config.max_buffered_bytes
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
        self._retry_tokens = RetryTokens(
            key=self._random.token_bytes(32), lifetime=self._config.retry_token_lifetime
        )
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
        self._now = now if now > self._now else self._now
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
        self._now = now if now > self._now else self._now
        data = bytes(data)
        if len(data) >= _MIN_DATA and data[0] == DATA_TYPE:
            # The per-packet path: what decode_packet checks of a DATA packet,
            # without building the DataPacket.
            conn = self._connections.get(data[1:_CID_END])
            if conn is None:
                self._drop("unknown_connection")
                return
            conn.receive_datagram(data, addr, now)
            self._touch(conn)
            return
        try:
            packet = decode_packet(data)
        except DecodeError as exc:
            self._drop(exc.reason)
            # A version not spoken here is told which ones are, never met with silence.
            answer = encode_version_negotiation(data)
            if answer is not None and len(self._retry_out) < _MAX_PENDING_RETRIES:
                self._retry_out.append((answer, addr))
            return
        if isinstance(packet, DataPacket):
            conn = self._connections.get(packet.connection_id)
            if conn is None:
                self._drop("unknown_connection")
                return
            conn.receive_data(packet, len(data), addr, now=now)
            self._touch(conn)
        elif isinstance(packet, HandshakeInitiation):
            self._on_initiation(packet, len(data), addr, now)
        else:
            self._drop("unexpected_packet")

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
                self._drop("duplicate_initiation")
            return
        # Cheap refusals before the Diffie-Hellman work.
        config = self._config
        if len(self._half_open) >= config.max_half_open:
            self._drop("half_open_limit")
            return
        key = address_key(addr[0], config)
        if self._per_ip.get(key, 0) >= config.max_connections_per_address:
            self._drop("address_connection_limit")
            return
        refusal = self._retry_tokens.check(packet.token, cid, addr, now)
        if refusal is not None and len(self._half_open) >= config.retry_threshold:
            # Under load: only a proven address gets state. A spoofed source never
            # sees the RETRY, so it cannot come back with a token.
            self._drop(refusal)
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
            self._drop("rate_limited")
            return
        handshake = HandshakeState.responder(
            static_private=self._static_key.private_bytes,
            random=self._random,
            prologue=PROLOGUE + cid,
        )
        try:
            handshake.read_message(packet.noise_message)
        except DecodeError as exc:
            self._drop(exc.reason)
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

    def _send_retry(self, cid: ConnectionId, addr: Address, now: float) -> None:
        if len(self._retry_out) >= _MAX_PENDING_RETRIES:
            self._drop("retry_queue_full")
            return
        self._retry_out.append((encode_retry(cid, self._retry_tokens.mint(cid, addr, now)), addr))

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
        self._now = now if now > self._now else self._now
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
        self._now = now if now > self._now else self._now
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
        if conn.state is _ESTABLISHED and cid in self._open:
            pass  # the common case, after every packet: it was counted when it opened
        else:
            self._settle_state(conn)
            if cid not in self._connections:
                return
        held = conn.buffered_bytes
        self._buffered += held - self._buffered_by.get(cid, 0)
        self._buffered_by[cid] = held
        if self._buffered > self._buffered_limit and not self._enforcing:
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
        """Over ``max_connections``: end the connection ``capacity.py`` picks (an
        unprotected one, else a protected one of a prefix beyond its share), or
        refuse the newcomer when none may go."""
        connections, limit = self._connections, self._config.max_connections
        victim = self._open.victim(newcomer, lambda cid: connections[cid].last_received, limit)
        if victim is None:
            self._drop("connection_refused")
            victim, reason = newcomer, f"server busy: all {limit} connections in use; try later"
        else:
            self._drop("connection_limit")
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
                self._drop("buffer_limit")
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

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
