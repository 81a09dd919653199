"""What a server's operator may do to an account while the server runs (the
runtime's control socket calls these, through ``ChatServer``): disable and enable
it, reset its password, close its connections.

Each is a step of the current batch, like a request: the caller commits when
``ChatServer.writes_pending`` says so, and only then tells the operator it is done
(a lost batch did nothing; the connections it would have closed stay open).
"""

from __future__ import annotations

from .caches import Caches
from .connections import ConnectionTable
from .hashing import Hashing
from .passwords import PasswordHash
from .presence import Presence
from .sessions import Sessions
from .store import Store

__all__ = ["Administration"]


class Administration:
    """The operator's actions on accounts.

    Args:
        store: the accounts.
        connections: whose connections a kick closes.
        presence: who is online (the list of accounts says).
        sessions: ends an account's sessions, closes connections.
        hashing: a login hashing now fails once the account changes.
        caches: the account's cached friends are dropped.
    """

    def __init__(
        self,
        *,
        store: Store,
        connections: ConnectionTable,
        presence: Presence,
        sessions: Sessions,
        hashing: Hashing,
        caches: Caches,
    ) -> None:
        self._store = store
        self._connections = connections
        self._presence = presence
        self._sessions = sessions
        self._hashing = hashing
        self._caches = caches

    def list_accounts(self) -> list[tuple[str, bool, bool]]:
        """Every account as ``(username, online, disabled)``, sorted by name."""
        return [
            (username, self._presence.is_online(username), disabled)
            for username, disabled in self._store.accounts()
        ]

    def disable_account(self, username: str) -> bool:
        """Refuse the account's logins from now on and end its sessions."""
        if not self._store.set_disabled(username, True):
            return False
        self._end_every_session(username, "this account was disabled by the server's operator")
        return True

    def enable_account(self, username: str) -> bool:
        """Let the account log in again."""
        return self._store.set_disabled(username, False)

    def reset_password(self, username: str, password: PasswordHash) -> bool:
        """Replace the account's password and end its sessions."""
        if not self._store.set_password(username, password):
            return False
        self._end_every_session(username, "the password was reset by the server's operator")
        return True

    def kick(self, username: str) -> int:
        """Close the user's connections here; how many."""
        connections = self._connections.of_user(username)
        for connection_id in connections:
            self._sessions.close(connection_id, "disconnected by the server's operator")
        return len(connections)

    def _end_every_session(self, username: str, reason: str) -> None:
        self._hashing.credentials_changed(username)  # a login hashing now fails
        self._caches.forget_user(username)
        self._sessions.end_every_session(username, reason)
