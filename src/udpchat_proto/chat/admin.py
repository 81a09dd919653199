"""What a server's operator may do to an account while the server runs (the
runtime's control socket calls these): disable and enable it, reset its
password, close its connections.

Each is a step of the current batch, like a request: the caller commits when
:attr:`~udpchat_proto.chat.server.ChatServer.writes_pending` says so, and only
then tells the operator it is done (a lost batch did nothing; the connections it
would have closed stay open).
"""

from __future__ import annotations

from .core import ServerCore
from .passwords import PasswordHash
from .remote import RemoteSession

__all__ = ["Administration"]


class Administration(ServerCore):
    """The operator's actions on accounts."""

    def list_accounts(self) -> list[tuple[str, bool, bool]]:
        """Every account as ``(username, online, disabled)``, sorted by name."""
        return [
            (username, self._is_online(username), disabled)
            for username, disabled in self._store.accounts()
        ]

    def disable_account(self, username: str, now: float) -> bool:
        """Refuse the account's logins (``account_disabled``) from now on and end its
        sessions, closing their connections. False if there is no such account."""
        self._now = now
        if not self._store.set_disabled(username, True):
            return False
        self._end_every_session(username, "this account was disabled by the server's operator")
        return True

    def enable_account(self, username: str, now: float) -> bool:
        """Let the account log in again. False if there is no such account."""
        self._now = now
        return self._store.set_disabled(username, False)

    def reset_password(self, username: str, password: PasswordHash, now: float) -> bool:
        """Replace the account's password (hashed by the caller, off the loop) and
        end its sessions. False if there is no such account."""
        self._now = now
        if not self._store.set_password(username, password):
            return False
        self._end_every_session(username, "the password was reset by the server's operator")
        return True

    def kick(self, username: str, now: float) -> int:
        """Close the user's connections on this server (their sessions stay: their
        clients may resume them). Returns how many were closed."""
        self._now = now
        connections = list(self._by_user.get(username, ()))
        for connection_id in connections:
            self._close_connection(connection_id, "disconnected by the server's operator")
        return len(connections)

    def _end_every_session(self, username: str, reason: str) -> None:
        """Delete every session of ``username``; their connections (on every node)
        are logged out now and closed once the batch is durable."""
        self._jobs.credentials_changed(username)  # a login hashing now fails
        self._friend_sets.pop(username, None)
        hashes = [session.token_hash for session in self._store.sessions_of(username)]
        for hashed in hashes:
            self._store.delete_session(hashed)
        for hashed in hashes:
            self._closes_held.extend((cid, reason) for cid in self._by_session.get(hashed, ()))
            if self._config.cluster:
                self._closes_held.append((RemoteSession(hashed), reason))
            self._end_session(hashed, self._now)
