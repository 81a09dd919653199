"""Events the transport reports, and the stable close codes.

Both roles queue these; the caller drains them with ``next_event()``. Every event
names its connection, so one loop can serve a server's many connections.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "Address",
    "CloseCode",
    "ConnectionAddressChanged",
    "ConnectionId",
    "ConnectionTerminated",
    "HandshakeCompleted",
    "PayloadReceived",
    "TransportEvent",
]

Address = tuple[str, int]
"""A UDP address: (host, port)."""
ConnectionId = bytes
"""The 8 random bytes naming a connection in every packet header."""


class CloseCode(enum.IntEnum):
    """Why a connection ended. Stable: values travel in CLOSE frames; never renumber.

    The codes marked *local* never travel: the side that notices sends nothing.
    """

    NORMAL_CLOSE = 0
    """``close()`` was called (by this side or, with ``by_peer``, the other)."""
    PROTOCOL_VIOLATION = 1
    """The peer sent an authenticated packet that breaks the protocol (a bad frame,
    an ACK of a packet never sent, data beyond the window, an oversized message).
    A CLOSE frame with an unknown code is also reported as this."""
    IDLE_TIMEOUT = 2
    """Local: nothing was received for ``idle_timeout`` seconds."""
    HANDSHAKE_TIMEOUT = 3
    """Local (client): no valid response within ``handshake_timeout`` seconds."""
    SERVER_KEY_MISMATCH = 4
    """Local (client): the server's static key is not ``expected_server_key``."""
    SERVER_BUSY = 5
    """The server is at ``max_connections``: it ended this unprotected (not logged
    in) connection, the longest silent of the most crowded address prefix, to make
    room for a new one; or, when only protected ones remained, it refused this new
    one. The reason says which. Reconnecting later is fine."""
    RESOURCE_LIMIT = 6
    """The server's buffers over all connections exceeded ``max_buffered_bytes``: it
    ended the connection holding the most (unread output, unfinished input)."""
    UNSUPPORTED_VERSION = 7
    """Local (client): the server answered VERSION_NEGOTIATION: it speaks none of
    this client's protocol versions (the reason lists the ones it speaks)."""


@attrs.frozen(kw_only=True)
class TransportEvent:
    """Base class of every transport event."""

    connection_id: ConnectionId
    """The connection the event is about."""


@attrs.frozen(kw_only=True)
class HandshakeCompleted(TransportEvent):
    """The connection is established: messages flow both ways.

    On the client, after the server's response authenticated (and its key matched
    ``expected_server_key`` if one was given). On the server, after the client's
    first packet authenticated: a new connection.
    """

    server_key: bytes
    """The server's 32-byte static public key (pin it on first use)."""
    address: Address
    """The peer's address: the server's on the client, the client's on the server."""


@attrs.frozen(kw_only=True)
class PayloadReceived(TransportEvent):
    """One whole message, as the peer passed it to ``send()``; exactly once, in order."""

    payload: bytes
    """The message bytes."""


@attrs.frozen(kw_only=True)
class ConnectionTerminated(TransportEvent):
    """The connection ended; it is the last event about it."""

    code: CloseCode
    """Why."""
    reason: str
    """Human-readable detail (the peer's reason when ``by_peer``)."""
    by_peer: bool = False
    """Whether the peer closed (it sent a CLOSE frame)."""


@attrs.frozen(kw_only=True)
class ConnectionAddressChanged(TransportEvent):
    """Server: the client proved it receives at a new address (migration).

    Emitted when a PATH_RESPONSE from the new address echoes the server's
    PATH_CHALLENGE; until then the server keeps sending to the old address."""

    address: Address
    """The new address, where the server now sends."""
    previous_address: Address
    """The address it replaces."""
