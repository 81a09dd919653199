"""The server's connection table: every connection by id, and the logged-in ones by
user and by login session.

A user has one or a few connections, a session usually one: the indexes hold
tuples, oldest first (a dict each would cost 200 bytes per idle user). Logging a
connection in or out goes through :meth:`ConnectionTable.attach` and
:meth:`ConnectionTable.detach`, which keep the indexes, the connection's state and
the transport's protection in step, and say when a user's first connection came or
last one went (what presence announces).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs

from ..ratelimit import TokenBucket
from ..transport import ConnectionId
from ..transport.events import Address
from .config import ServerConfig
from .connection import ChatConnection, ChatConnectionInput, ChatConnectionState
from .delivery import DeliveryWindow

__all__ = ["ConnectionInfo", "ConnectionTable"]


@attrs.frozen(kw_only=True)
class ConnectionInfo:
    """One connection, as ``ChatServer.connection_info`` reports it."""

    connection_id: ConnectionId
    address: Address
    """Where its packets come from now."""
    state: ChatConnectionState
    username: str | None
    """Whom it acts as (logged in), or None."""


class ConnectionTable:
    """Every connection that completed its handshake and has not ended.

    Args:
        config: the request rate and delivery window each new connection gets,
            and how many of a user's connections are protected.
        protect: the transport's ``set_protected``: a user's first
            ``protected_connections_per_user`` connections are never ended to make
            room for a stranger's (``TransportConfig.max_connections``).
    """

    def __init__(self, config: ServerConfig, protect: Callable[[ConnectionId, bool], None]) -> None:
        self._config = config
        self._protect = protect
        self._by_id: dict[ConnectionId, ChatConnection] = {}
        self._by_user: dict[str, tuple[ConnectionId, ...]] = {}
        self._by_session: dict[bytes, tuple[ConnectionId, ...]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[ChatConnection]:
        return iter(self._by_id.values())

    def get(self, connection_id: ConnectionId) -> ChatConnection | None:
        """The connection, or None if it has ended (or never began)."""
        return self._by_id.get(connection_id)

    def open(self, connection_id: ConnectionId, address: Address, now: float) -> ChatConnection:
        """A new connection (anonymous), with a full request budget."""
        connection = ChatConnection(
            connection_id,
            address,
            requests=TokenBucket(self._config.request_rate, now=now),
            window=DeliveryWindow(self._config.delivery_window),
        )
        self._by_id[connection_id] = connection
        return connection

    def remove(self, connection_id: ConnectionId) -> ChatConnection | None:
        """Forget an ended connection (detach it first); the one it was, or None."""
        return self._by_id.pop(connection_id, None)

    # --- by user and by session -----------------------------------------------------

    def of_user(self, username: str) -> tuple[ConnectionId, ...]:
        """The logged-in connections of ``username`` here, oldest first."""
        return self._by_user.get(username, ())

    def connections_of(self, username: str) -> list[ChatConnection]:
        """:meth:`of_user`, as the connections."""
        return [self._by_id[cid] for cid in self._by_user.get(username, ())]

    def of_session(self, token_hash: bytes) -> tuple[ConnectionId, ...]:
        """The connections logged in with this session here."""
        return self._by_session.get(token_hash, ())

    def is_here(self, username: str) -> bool:
        """Whether ``username`` has a logged-in connection here."""
        return username in self._by_user

    def users(self) -> list[str]:
        """The users with a logged-in connection here (in no order)."""
        return list(self._by_user)

    def user_set(self) -> set[str]:
        """:meth:`users`, as a set."""
        return set(self._by_user)

    @property
    def user_count(self) -> int:
        """How many users have a logged-in connection here."""
        return len(self._by_user)

    def sessions(self) -> list[bytes]:
        """The sessions with a logged-in connection here."""
        return list(self._by_session)

    @property
    def session_count(self) -> int:
        """How many sessions have a logged-in connection here."""
        return len(self._by_session)

    def attach(self, connection: ChatConnection, username: str, token_hash: bytes) -> bool:
        """Log an anonymous connection in as ``username`` with this session.

        Returns:
            Whether it is the user's first connection here (they came online).
        """
        connection.transition(ChatConnectionInput.LOGIN)
        connection.username = username
        connection.token_hash = token_hash
        connection.has_device = None
        connection.deliveries.start()
        cid = connection.connection_id
        self._by_session[token_hash] = (*self._by_session.get(token_hash, ()), cid)
        user_connections = self._by_user[username] = (*self._by_user.get(username, ()), cid)
        # Never ended to make room for a stranger: a user's first few connections.
        if len(user_connections) <= self._config.protected_connections_per_user:
            self._protect(cid, True)
        return len(user_connections) == 1

    def detach(self, connection: ChatConnection) -> bool:
        """Log a logged-in connection out (logout, session end, close).

        Returns:
            Whether it was its user's last connection here (they went offline).
        """
        username, token_hash = connection.username, connection.token_hash
        assert username is not None and token_hash is not None  # (logged in)
        connection.transition(ChatConnectionInput.LOGOUT)
        connection.username = connection.token_hash = None
        connection.has_device = None
        connection.deliveries.stop()
        cid = connection.connection_id
        self._protect(cid, False)
        session_connections = _without(self._by_session.pop(token_hash, ()), cid)
        if session_connections:
            self._by_session[token_hash] = session_connections
        user_connections = _without(self._by_user.pop(username, ()), cid)
        if user_connections:
            self._by_user[username] = user_connections
        return not user_connections

    def info(self) -> list[ConnectionInfo]:
        """Every connection, as it stands now."""
        return [
            ConnectionInfo(
                connection_id=connection.connection_id,
                address=connection.address,
                state=connection.state,
                username=connection.username,
            )
            for connection in self._by_id.values()
        ]


def _without(connections: tuple[ConnectionId, ...], cid: ConnectionId) -> tuple[ConnectionId, ...]:
    return tuple(c for c in connections if c != cid)
