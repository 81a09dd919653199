"""Conversations and who receives them: their tables, and the Store methods
over rooms.

Written once for SQLite and PostgreSQL (see :mod:`.primitives`). A new column goes
at the end of its table here, beside the statement that writes it.
"""

from __future__ import annotations

from typing import Final

from . import statements as sql
from .primitives import SqlPrimitives
from .schema import Column, Index, Kind, Table

__all__ = ["TABLES", "RoomsSQL"]

_TEXT, _INT, _TIME, _BYTES, _BOOL, _ID = Kind

TABLES: Final = (
    # A room, or a direct conversation keyed "alice bob" (see conversation_key).
    Table(
        "conversations",
        (
            Column("id", _ID),
            Column("key", _TEXT, unique=True),
            Column("is_room", _BOOL),
            Column("last_seq", _INT, default=0),  # the seq of its last message
            Column("created_at", _TIME),
        ),
    ),
    # Who receives a conversation: both users of a direct one, a room's members.
    # A member receives the messages after floor_seq (the room's last seq when it
    # joined; 0 in a direct conversation).
    Table(
        "participants",
        (
            Column("conversation", _INT, references="conversations (id)"),
            Column("username", _TEXT),
            Column("floor_seq", _INT),
            Column("joined_at", _TIME),
        ),
        key=("conversation", "username"),
        indexes=(Index("participants_by_user", ("username", "conversation")),),
    ),
)
"""The conversations (rooms and direct ones) and who receives each."""


class RoomsSQL(SqlPrimitives):
    """The Store methods over rooms: joining, leaving, members."""

    def join_room(self, room: str, username: str, now: float) -> bool:
        self._write_seqs()  # the floor below is the room's last_seq
        self._execute(
            "INSERT INTO conversations (key, is_room, created_at) VALUES (?, TRUE, ?) "
            "ON CONFLICT (key) DO NOTHING",
            (room, now),
        )
        cursor = self._execute(
            "INSERT INTO participants (conversation, username, floor_seq, joined_at) "
            "SELECT id, ?, last_seq, ? FROM conversations WHERE key = ? "
            "ON CONFLICT DO NOTHING",
            (username, now, room),
        )
        return cursor.rowcount == 1

    def leave_room(self, room: str, username: str) -> bool:
        row = self._execute(
            "SELECT id FROM conversations WHERE key = ? AND is_room", (room,)
        ).fetchone()
        if row is None:
            return False
        (conversation,) = row
        cursor = self._execute(
            "DELETE FROM participants WHERE username = ? AND conversation = ?",
            (username, conversation),
        )
        if cursor.rowcount != 1:
            return False
        if (
            self._execute(
                "SELECT 1 FROM participants WHERE conversation = ? LIMIT 1", (conversation,)
            ).fetchone()
            is None
        ):
            for sender, size in self._execute(
                f"SELECT sender, SUM({sql.STORED_SIZE}) FROM messages WHERE conversation = ? "
                "GROUP BY sender",
                (conversation,),
            ).fetchall():
                self._charge(sender, -int(size))
            for table in ("session_cursors", "user_cursors", "messages"):
                # Our own table names, not input.
                self._execute(f"DELETE FROM {table} WHERE conversation = ?", (conversation,))
            self._execute("DELETE FROM conversations WHERE id = ?", (conversation,))
            self._forget_conversation(room, conversation)
        return True

    def room_exists(self, room: str) -> bool:
        return self._exists("SELECT 1 FROM conversations WHERE key = ? AND is_room", room)

    def room_members(self, room: str) -> list[str]:
        return self._names(
            "SELECT p.username FROM conversations AS c "
            "JOIN participants AS p ON p.conversation = c.id "
            'WHERE c.key = ? AND c.is_room ORDER BY p.username COLLATE "C"',
            room,
        )

    def rooms_of(self, username: str) -> list[tuple[str, int]]:
        rows = self._select(
            "SELECT c.key, (SELECT COUNT(*) FROM participants AS q "
            "               WHERE q.conversation = c.id) "
            "FROM participants AS p JOIN conversations AS c ON c.id = p.conversation "
            'WHERE p.username = ? AND c.is_room ORDER BY c.key COLLATE "C"',
            (username,),
        )
        return [(name, int(count)) for name, count in rows]
