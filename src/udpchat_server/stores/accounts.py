"""Accounts and login sessions: their tables, and the Store methods over them.

Written once for SQLite and PostgreSQL (see :mod:`.primitives`). A new column goes
at the end of its table here, beside the statement that writes it.
"""

from __future__ import annotations

from typing import Final

from udpchat_proto import Account, LoginSession, PasswordHash

from . import statements as sql
from .dialect import POSTGRES
from .primitives import SqlPrimitives
from .schema import Column, Index, Kind, Table

__all__ = ["TABLES", "AccountsSQL"]

_TEXT, _INT, _TIME, _BYTES, _BOOL, _ID = Kind

TABLES: Final = (
    Table(
        "accounts",
        (
            Column("username", _TEXT, key=True),
            Column("password", _TEXT),  # PasswordHash.to_string()
            Column("created_at", _TIME),
            Column("disabled", _BOOL, default=0),  # by the operator (ctl disable)
            Column("stored_bytes", _INT, default=0),  # the storage quota's counter
        ),
    ),
    # Names of deleted accounts: never registered again.
    Table(
        "retired_names",
        (
            Column("username", _TEXT, key=True),
            Column("retired_at", _TIME),
        ),
    ),
    Table(
        "sessions",
        (
            Column("token_hash", _BYTES, key=True),  # SHA-256 of the token, never the token
            Column("username", _TEXT),
            Column("created_at", _TIME),
            Column("last_used_at", _TIME),
        ),
        indexes=(
            Index("sessions_by_last_use", ("last_used_at",)),  # expiry
            Index("sessions_by_user", ("username", "created_at")),  # newest first
            # The absolute lifetime's sweep: SQLite scans the sessions (hourly).
            Index("sessions_by_creation", ("created_at",), only=POSTGRES),
        ),
    ),
)
"""The accounts, the names retired with deleted ones, and the login sessions."""


class AccountsSQL(SqlPrimitives):
    """The Store methods over accounts and login sessions."""

    # --- accounts ----------------------------------------------------------------------

    def create_account(self, username: str, password: PasswordHash, now: float) -> bool:
        """Create an account; False (and no change) if the name is taken or retired."""
        cursor = self._execute(
            "INSERT INTO accounts (username, password, created_at) "
            "SELECT :user, :password, :now "
            "WHERE NOT EXISTS (SELECT 1 FROM retired_names WHERE username = :user) "
            "ON CONFLICT (username) DO NOTHING",
            {"user": username, "password": password.to_string(), "now": now},
        )
        return cursor.rowcount == 1

    def set_password(self, username: str, password: PasswordHash) -> bool:
        """Replace the password record of an account; False if there is none. The old
        record leaves the files too."""
        self._erasing()
        cursor = self._execute(
            "UPDATE accounts SET password = ? WHERE username = ?",
            (password.to_string(), username),
        )
        return cursor.rowcount == 1

    def get_account(self, username: str) -> Account | None:
        row = self._select(
            "SELECT password, created_at, disabled FROM accounts WHERE username = ?", (username,)
        ).fetchone()
        if row is None:
            return None
        return Account(
            username=username,
            password=PasswordHash.from_string(row[0]),
            created_at=row[1],
            disabled=bool(row[2]),
        )

    def set_disabled(self, username: str, disabled: bool) -> bool:
        cursor = self._execute(
            "UPDATE accounts SET disabled = ? WHERE username = ?", (disabled, username)
        )
        return cursor.rowcount == 1

    def accounts(self) -> list[tuple[str, bool]]:
        rows = self._select('SELECT username, disabled FROM accounts ORDER BY username COLLATE "C"')
        return [(name, bool(disabled)) for name, disabled in rows]

    def delete_account(self, username: str, now: float) -> None:
        """Delete the account and what is only its; retire the name (see Store).

        Index lookups only: the user's own rows, and per direct conversation of
        theirs the messages past their cursor (all before it were delivered). The
        rows leave the files too."""
        self._erasing()
        user = {"user": username}
        for (room,) in self._execute(
            "SELECT c.key FROM participants AS p JOIN conversations AS c ON c.id = p.conversation "
            "WHERE p.username = :user AND c.is_room",
            user,
        ).fetchall():
            self.leave_room(room, username)
        direct = self._execute(
            "SELECT p.conversation, COALESCE(u.seq, 0) FROM participants AS p "
            "LEFT JOIN user_cursors AS u ON u.username = p.username "
            "AND u.conversation = p.conversation WHERE p.username = :user",
            user,
        ).fetchall()
        for conversation, seq in direct:
            # Their senders' stored bytes go down by what goes.
            for sender, size in self._execute(
                "DELETE FROM messages WHERE conversation = ? AND seq > ? AND recipient = ? "
                f"AND delivered_at IS NULL RETURNING sender, {sql.STORED_SIZE}",
                (conversation, seq, username),
            ).fetchall():
                self._charge(sender, -int(size))
        self._usage_unwritten.pop(username, None)  # (its row goes)
        self._account_deleted(username)
        for blocker in self.blockers_of(username):
            self._pass_blocked_runs(blocker)  # (its blocks end: see delete_block)
        for statement in (
            "DELETE FROM participants WHERE username = :user",
            "DELETE FROM user_cursors WHERE username = :user",
            "DELETE FROM sessions WHERE username = :user",  # their cursors: ON DELETE CASCADE
            # The other side's rows first, found from this side's (the key's prefix).
            "DELETE FROM friendships WHERE username IN "
            "(SELECT friend FROM friendships WHERE username = :user) AND friend = :user",
            "DELETE FROM friendships WHERE username = :user",
            "DELETE FROM invitations WHERE sender = :user",
            "DELETE FROM invitations WHERE recipient = :user",
            "DELETE FROM blocks WHERE username = :user",
            "DELETE FROM blocks WHERE blocked = :user",
            "DELETE FROM accounts WHERE username = :user",
        ):
            self._execute(statement, user)
        self._execute(
            "INSERT INTO retired_names (username, retired_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (username, now),
        )

    # --- login sessions ----------------------------------------------------------------

    def create_session(self, token_hash: bytes, username: str, now: float) -> None:
        """Record a new login session, starting at the user's delivery cursors.

        Raises:
            ValueError: a session with this token hash exists (ON CONFLICT, not a
                caught error: PostgreSQL would abort the whole transaction).
        """
        cursor = self._execute(
            "INSERT INTO sessions (token_hash, username, created_at, last_used_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (token_hash, username, now, now),
        )
        if cursor.rowcount != 1:
            raise ValueError("a session with this token hash exists")
        self._execute(
            "INSERT INTO session_cursors (token_hash, conversation, seq) "
            "SELECT ?, conversation, seq FROM user_cursors WHERE username = ?",
            (token_hash, username),
        )

    def get_session(self, token_hash: bytes) -> LoginSession | None:
        row = self._select(
            "SELECT username, created_at, last_used_at FROM sessions WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        return LoginSession(
            token_hash=token_hash, username=row[0], created_at=row[1], last_used_at=row[2]
        )

    def existing_sessions(self, token_hashes: list[bytes]) -> set[bytes]:
        rows = self._select_in(
            "SELECT token_hash FROM sessions WHERE token_hash {in}", token_hashes, {}
        )
        return {bytes(hashed) for (hashed,) in rows}

    def touch_session(self, token_hash: bytes, now: float) -> None:
        """Note that the session was used at ``now``; an unknown session is ignored."""
        self._execute(
            "UPDATE sessions SET last_used_at = ? WHERE token_hash = ?", (now, token_hash)
        )

    def sessions_of(self, username: str) -> list[LoginSession]:
        rows = self._select(
            "SELECT token_hash, created_at, last_used_at FROM sessions WHERE username = ? "
            "ORDER BY created_at DESC, token_hash DESC",
            (username,),
        )
        return [
            LoginSession(
                token_hash=bytes(hashed), username=username, created_at=created, last_used_at=used
            )
            for hashed, created, used in rows
        ]

    def delete_session(self, token_hash: bytes) -> None:
        # Its cursors go with it: ON DELETE CASCADE.
        self._execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    def delete_sessions_unused_since(self, cutoff: float) -> int:
        return self._execute("DELETE FROM sessions WHERE last_used_at < ?", (cutoff,)).rowcount

    def delete_sessions_created_before(self, cutoff: float) -> list[bytes]:
        rows = self._execute(
            "DELETE FROM sessions WHERE created_at < ? RETURNING token_hash", (cutoff,)
        )
        return [bytes(hashed) for (hashed,) in rows.fetchall()]
