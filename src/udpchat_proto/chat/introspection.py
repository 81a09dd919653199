"""What the runtime and operators may read of a running server: its configuration,
connections, key and counters of the transport (the request handlers never need
these)."""

from __future__ import annotations

from .config import ServerConfig
from .core import ServerCore
from .requests import ConnectionInfo

__all__ = ["Introspection"]


class Introspection(ServerCore):
    """Read-only views of the server's state."""

    @property
    def config(self) -> ServerConfig:
        """The configuration in force."""
        return self._config

    @property
    def connection_count(self) -> int:
        """Connections that completed the handshake and have not ended."""
        return len(self._connections)

    @property
    def logged_in_sessions(self) -> int:
        """Login sessions with at least one live connection here."""
        return len(self._by_session)

    def connection_info(self) -> list[ConnectionInfo]:
        """Every connection that completed its handshake, as it stands now."""
        return [
            ConnectionInfo(
                connection_id=connection.connection_id,
                address=connection.address,
                state=connection.state,
                username=connection.username,
            )
            for connection in self._connections.values()
        ]

    @property
    def pending_hash_jobs(self) -> int:
        """Hash jobs handed out (or about to be) and not yet completed."""
        return len(self._jobs)

    @property
    def transport_dropped(self) -> dict[str, int]:
        """Datagrams the transport dropped (and handshakes it refused), by reason."""
        return dict(self._transport.dropped)

    @property
    def server_key(self) -> bytes:
        """The server's static public key (what clients pin)."""
        return self._server_key
