"""Chat-level events of the two roles.

:class:`~udpchat_proto.chat.server.ChatServer` emits :class:`ServerEvent`\\ s, meant for
logging and metrics (the server needs no application to answer requests).
:class:`~udpchat_proto.chat.client.ClientConnection` emits :data:`ClientEvent`\\ s:
:class:`Connected`, :class:`Disconnected`, and the catalogue's response and push
messages themselves (an :class:`~udpchat_proto.chat.messages.ErrorResponse`, a
:class:`~udpchat_proto.chat.messages.MessageDelivered` ...), so that what the server sent
is exactly what the application sees.
"""

from __future__ import annotations

import attrs

from ..transport import ConnectionId
from ..transport.events import Address, CloseCode
from .messages import Push, Response

__all__ = [
    "ClientConnected",
    "ClientDisconnected",
    "ClientEvent",
    "Connected",
    "Disconnected",
    "ServerEvent",
    "UserLoggedIn",
    "UserLoggedOut",
]


# --- server ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ServerEvent:
    """Base class of every event of the chat server."""

    connection_id: ConnectionId
    """The connection the event is about."""


@attrs.frozen(kw_only=True)
class ClientConnected(ServerEvent):
    """A client completed the handshake: a new connection exists."""

    address: Address
    """Where its handshake came from."""


@attrs.frozen(kw_only=True)
class UserLoggedIn(ServerEvent):
    """The connection now acts as ``username`` (after a login or a resume)."""

    username: str
    resumed: bool = False
    """True when a token resumed an existing login session, False for a new login."""


@attrs.frozen(kw_only=True)
class UserLoggedOut(ServerEvent):
    """The connection no longer acts as ``username`` (logout, or its session ended)."""

    username: str


@attrs.frozen(kw_only=True)
class ClientDisconnected(ServerEvent):
    """The connection ended (closed by either side, timed out, or closed as abusive)."""

    code: CloseCode
    """The transport's close code."""
    reason: str
    """Human-readable detail."""


# --- client ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Connected:
    """The handshake completed; requests queued before it are now on their way."""

    server_key: bytes
    """The server's static public key (32 bytes), checked against the pinned one."""


@attrs.frozen(kw_only=True)
class Disconnected:
    """The connection ended; this object is finished. Connect again with a new one."""

    code: CloseCode
    """The transport's close code."""
    reason: str
    """Human-readable detail."""


ClientEvent = Connected | Disconnected | Response | Push
"""Everything :meth:`ClientConnection.next_event` returns: :class:`Connected`,
:class:`Disconnected`, or a response (:data:`~udpchat_proto.chat.messages.Response`)
or push (:data:`~udpchat_proto.chat.messages.Push`) of the catalogue."""
