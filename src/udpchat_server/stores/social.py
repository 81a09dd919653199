"""Invitations, friendships and blocks: their tables, and the Store methods over
them.

Written once for SQLite and PostgreSQL (see :mod:`.primitives`). A new column goes
at the end of its table here, beside the statement that writes it.
"""

from __future__ import annotations

from typing import Final

from . import statements as sql
from .primitives import SqlPrimitives
from .schema import Column, Index, Kind, Table

__all__ = ["TABLES", "SocialSQL"]

_TEXT, _INT, _TIME, _BYTES, _BOOL, _ID = Kind

TABLES: Final = (
    Table(
        "invitations",
        (
            Column("sender", _TEXT),
            Column("recipient", _TEXT),
            Column("created_at", _TIME),
        ),
        key=("sender", "recipient"),
        indexes=(Index("invitations_by_recipient", ("recipient", "sender")),),
    ),
    # Two rows per friendship, one each way: "friends of" is a key prefix scan.
    Table(
        "friendships",
        (
            Column("username", _TEXT),
            Column("friend", _TEXT),
            Column("created_at", _TIME),
        ),
        key=("username", "friend"),
    ),
    Table(
        "blocks",
        (
            Column("username", _TEXT),  # who blocks
            Column("blocked", _TEXT),
            Column("created_at", _TIME),
        ),
        key=("username", "blocked"),
        indexes=(Index("blocks_by_blocked", ("blocked", "username")),),
    ),
)
"""Invitations, friendships and blocks."""


class SocialSQL(SqlPrimitives):
    """The Store methods over invitations, friendships and blocks."""

    def add_invitation(self, sender: str, recipient: str, now: float) -> None:
        """Record that ``sender`` invited ``recipient`` (a repeat keeps the first)."""
        self._execute(
            "INSERT INTO invitations (sender, recipient, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (sender, recipient, now),
        )

    def delete_invitation(self, sender: str, recipient: str) -> bool:
        cursor = self._execute(
            "DELETE FROM invitations WHERE sender = ? AND recipient = ?", (sender, recipient)
        )
        return cursor.rowcount == 1

    def has_invitation(self, sender: str, recipient: str) -> bool:
        return self._exists(
            "SELECT 1 FROM invitations WHERE sender = ? AND recipient = ?", sender, recipient
        )

    def incoming_invitations(self, username: str) -> list[str]:
        return self._names(
            'SELECT sender FROM invitations WHERE recipient = ? ORDER BY sender COLLATE "C"',
            username,
        )

    def outgoing_invitations(self, username: str) -> list[str]:
        return self._names(
            'SELECT recipient FROM invitations WHERE sender = ? ORDER BY recipient COLLATE "C"',
            username,
        )

    def add_friendship(self, a: str, b: str, now: float) -> None:
        """Make ``a`` and ``b`` friends (symmetric; a repeat changes nothing)."""
        self._executemany(
            "INSERT INTO friendships (username, friend, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [(a, b, now), (b, a, now)],
        )

    def delete_friendship(self, a: str, b: str) -> bool:
        cursor = self._execute(
            "DELETE FROM friendships WHERE (username = ? AND friend = ?) "
            "OR (username = ? AND friend = ?)",
            (a, b, b, a),
        )
        return cursor.rowcount > 0

    def are_friends(self, a: str, b: str) -> bool:
        return self._exists("SELECT 1 FROM friendships WHERE username = ? AND friend = ?", a, b)

    def friends_of(self, username: str) -> list[str]:
        return self._names(
            'SELECT friend FROM friendships WHERE username = ? ORDER BY friend COLLATE "C"',
            username,
        )

    def friends_of_many(self, usernames: list[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {name: [] for name in usernames}
        for username, friend in self._select_in(
            "SELECT username, friend FROM friendships WHERE username {in} "
            'ORDER BY friend COLLATE "C"',
            list(found),
            {},
        ):
            found[username].append(friend)
        return found

    def add_block(self, username: str, blocked: str, now: float) -> bool:
        cursor = self._execute(
            "INSERT INTO blocks (username, blocked, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (username, blocked, now),
        )
        return cursor.rowcount == 1

    def delete_block(self, username: str, blocked: str) -> bool:
        if not self.has_blocked(username, blocked):
            return False
        self._pass_blocked_runs(username)
        cursor = self._execute(
            "DELETE FROM blocks WHERE username = ? AND blocked = ?", (username, blocked)
        )
        return cursor.rowcount == 1

    def _pass_blocked_runs(self, username: str) -> None:
        """Before a block of ``username``'s ends: its cursors pass the run of blocked
        messages that directly follows each (see Store.delete_block)."""
        self._execute(sql.PASS_BLOCKED_SESSIONS, {"user": username})
        self._execute(sql.PASS_BLOCKED_USER, {"user": username})

    def has_blocked(self, username: str, blocked: str) -> bool:
        return self._exists(
            "SELECT 1 FROM blocks WHERE username = ? AND blocked = ?", username, blocked
        )

    def blocked_by(self, username: str) -> list[str]:
        return self._names(
            'SELECT blocked FROM blocks WHERE username = ? ORDER BY blocked COLLATE "C"', username
        )

    def blockers_of(self, username: str) -> list[str]:
        return self._names(
            'SELECT username FROM blocks WHERE blocked = ? ORDER BY username COLLATE "C"', username
        )
