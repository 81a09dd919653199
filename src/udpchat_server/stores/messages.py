"""Messages and delivery cursors: their tables, and the Store methods that
store, read, deliver, acknowledge and expire messages, and count the quota.

Written once for SQLite and PostgreSQL (see :mod:`.primitives`). A new column goes
at the end of its table here, beside the statement that writes it.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, Final

from udpchat_proto import Acknowledgement, Receipt, StoredMessage
from udpchat_proto import messages as m
from udpchat_proto.chat import add_each, conversation_key, is_room, session_id
from udpchat_proto.e2ee import EncryptedMessage

from . import statements as sql
from .primitives import SqlPrimitives
from .records import unpack
from .schema import Column, Index, Kind, Table

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def to_micros(when: datetime.datetime) -> int:
    """A message's ``sent_at`` as stored: integer microseconds since the epoch (UTC),
    which round-trips a ``datetime`` exactly."""
    return (when - _EPOCH) // _MICROSECOND


def chat_message(row: Sequence[Any]) -> m.ChatMessage:
    """A ChatMessage from the columns of :data:`.statements.MESSAGE_COLUMNS` (an
    encrypted one's record among them)."""
    # (``_MICROSECOND * sent_at``, not ``timedelta(microseconds=sent_at)``: the same
    # exact integer microseconds, without parsing a keyword and normalising a float
    # for every message read, about 3,700 instructions each.)
    message_id, sender, to, text, sent_at, record = row[:6]
    if record is None and text:  # (checked when accepted: see ChatMessage.stored)
        return m.ChatMessage.stored(
            id=bytes(message_id),
            sender=sender,
            to=to,
            text=text,
            sent_at=_EPOCH + _MICROSECOND * sent_at,
        )
    ciphertext = None if record is None else unpack(EncryptedMessage, record)
    return m.ChatMessage(
        id=bytes(message_id),
        sender=sender,
        to=to,
        text=text,
        sent_at=_EPOCH + _MICROSECOND * sent_at,
        encrypted=ciphertext is not None,
        ciphertext=ciphertext,
    )


__all__ = ["TABLES", "MessagesSQL", "chat_message", "to_micros"]

_TEXT, _INT, _TIME, _BYTES, _BOOL, _ID = Kind

TABLES: Final = (
    # UNIQUE (conversation, seq) is the index of history and pending deliveries;
    # UNIQUE id that of get_message and acknowledge.
    Table(
        "messages",
        (
            Column("position", _ID),  # the global insertion order
            Column("id", _BYTES, unique=True),
            Column("conversation", _INT, references="conversations (id)"),
            Column("seq", _INT),
            Column("sender", _TEXT),
            Column("recipient", _TEXT),
            Column("text", _TEXT),
            Column("sent_at", _INT),  # microseconds since the epoch, UTC
            Column("origin", _BYTES, null=True),  # the sending session's token hash
            Column("delivered_at", _TIME, null=True),  # a direct message's delivery
            # An encrypted message's record and key shares (sealed_size): the
            # quota's charge for what it stores, given back with the row.
            Column("sealed_bytes", _INT, default=0),
            # An encrypted message's record (its text is empty: no text is) and the
            # devices it was stored for (records.pack_devices: no other is given
            # it), in its row: one INSERT a send, as a text's (see .devices).
            Column("record", _BYTES, null=True),
            Column("devices", _BYTES, null=True),
        ),
        unique=(("conversation", "seq"),),
        indexes=(Index("messages_by_time", ("sent_at",)),),  # retention
    ),
    # The highest seq each login session acknowledged in each conversation.
    Table(
        "session_cursors",
        (
            Column("token_hash", _BYTES, references="sessions (token_hash) ON DELETE CASCADE"),
            Column("conversation", _INT, references="conversations (id)"),
            Column("seq", _INT),
        ),
        key=("token_hash", "conversation"),
        indexes=(Index("session_cursors_by_conversation", ("conversation",)),),
    ),
    # The highest seq any session of the user acknowledged: where a new session
    # starts. Kept when sessions end.
    Table(
        "user_cursors",
        (
            Column("username", _TEXT),
            Column("conversation", _INT, references="conversations (id)"),
            Column("seq", _INT),
        ),
        key=("username", "conversation"),
        indexes=(Index("user_cursors_by_conversation", ("conversation",)),),
    ),
)
"""The messages, and how far each login session and user has acknowledged them."""


class MessagesSQL(SqlPrimitives):
    """The Store methods over messages: storing (what both databases share of it),
    reading, delivering, acknowledging, retention and the quota."""

    def add_messages(
        self, messages: Sequence[tuple[m.ChatMessage, bytes | None]]
    ) -> list[StoredMessage | None]:
        """:meth:`add_message` for each, in order (None for a taken id). PostgreSQL
        does it its own way: in one statement."""
        return add_each(self.add_message, messages)

    def get_message(self, message_id: bytes) -> StoredMessage | None:
        row = self._select(sql.GET_MESSAGE, (message_id,)).fetchone()
        if row is None:
            return None
        return StoredMessage(message=self._message(row[:6]), seq=row[6], delivered_at=row[7])

    def history(
        self, username: str, peer: str, limit: int, before: bytes | None = None
    ) -> list[m.ChatMessage]:
        if limit <= 0:
            return []
        key = conversation_key(username, peer)
        rows = self._select(
            sql.history(is_room(key), before is not None),
            {"user": username, "key": key, "limit": limit, "before": before},
        ).fetchall()
        return [self._message(row) for row in reversed(rows)]

    def pending_deliveries(
        self, username: str, token_hash: bytes, limit: int
    ) -> list[m.ChatMessage]:
        if limit <= 0:
            return []
        # An unknown session is one created now: it starts at the user's cursors.
        owner: bytes | str
        if self.get_session(token_hash) is not None:
            statement, owner = sql.PENDING_FOR_SESSION, token_hash
        else:
            statement, owner = sql.PENDING_FOR_USER, username
        rows = self._select(
            statement,
            {
                "owner": owner,
                "user": username,
                "session": token_hash,
                "device": session_id(token_hash),
                "limit": limit,
            },
        )
        return [self._message(row) for row in rows]

    def pending_deliveries_many(
        self, sessions: Sequence[tuple[str, bytes, int]]
    ) -> list[list[m.ChatMessage]]:
        """One :meth:`pending_deliveries` each (SQLite is in the process: a read costs
        no round trip); PostgreSQL reads them all in one query."""
        return [self.pending_deliveries(user, hashed, limit) for user, hashed, limit in sessions]

    def acknowledge(
        self, username: str, token_hash: bytes, message_ids: Sequence[bytes], now: float
    ) -> list[Receipt]:
        return self.acknowledge_many([(username, token_hash, message_ids)], now)

    def acknowledge_many(
        self, acknowledgements: Sequence[Acknowledgement], now: float
    ) -> list[Receipt]:
        """:meth:`acknowledge` for several sessions: one write per cursor table,
        and one ranged update per direct conversation that moved."""
        session_rows: list[tuple[bytes, int, int, bytes]] = []
        user_rows: list[tuple[str, int, int]] = []
        moved: list[dict[str, Any]] = []
        for username, token_hash, message_ids in acknowledgements:
            highest, direct = self._highest_acknowledged(username, token_hash, message_ids)
            self._pass_blocked(username, highest, direct)
            session_rows.extend((token_hash, c, seq, token_hash) for c, seq in highest.items())
            user_rows.extend((username, c, seq) for c, seq in highest.items())
            moved.extend(
                {"user": username, "conversation": c, "seq": highest[c], "now": now} for c in direct
            )
        if not user_rows:
            return []
        # Before the user's cursors move: what lies between the old and the new one
        # reaches this user now (everything before the old one already had).
        receipts = [
            Receipt(
                message_id=bytes(message_id), sender=sender, recipient=row["user"], delivered_at=now
            )
            for row in moved
            for message_id, sender in self._execute(sql.MARK_DELIVERED, row).fetchall()
        ]
        self._executemany(sql.ADVANCE_SESSION_CURSORS, session_rows)
        self._executemany(sql.ADVANCE_USER_CURSORS, user_rows)
        return receipts

    def _highest_acknowledged(
        self, username: str, token_hash: bytes, message_ids: Sequence[bytes]
    ) -> tuple[dict[int, int], set[int]]:
        """The highest seq among these messages in each conversation of
        ``username``'s, and which of those conversations are direct ones."""
        highest: dict[int, int] = {}
        direct: set[int] = set()
        for conversation, seq, is_direct in self._select_in(
            sql.HIGHEST_ACKNOWLEDGED, message_ids, {"user": username, "session": token_hash}
        ):
            if is_direct:
                direct.add(conversation)
            if highest.get(conversation, 0) < seq:  # (a row per conversation and chunk)
                highest[conversation] = seq
        return highest, direct

    def _pass_blocked(self, username: str, highest: dict[int, int], direct: set[int]) -> None:
        """Move each room's acknowledged seq in ``highest`` past the messages from
        users ``username`` blocks that directly follow it (see Store.acknowledge).
        One look at the blocks first: most users block nobody."""
        if len(highest) == len(direct) or not self._exists(
            "SELECT 1 FROM blocks WHERE username = ? LIMIT 1", username
        ):
            return
        for conversation, seq in highest.items():
            if conversation not in direct:
                (passed,) = self._select(
                    sql.PAST_BLOCKED, {"conversation": conversation, "seq": seq, "user": username}
                ).fetchone()
                if passed is not None:
                    highest[conversation] = passed

    def delete_delivered_before(self, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` of each conversation's oldest messages sent before
        ``cutoff`` that every recipient session has acknowledged (see Store).

        Index lookups only: per conversation with old messages, one floor per
        participant and one seek past it, then a ranged delete.
        """
        cutoff_us = int(cutoff * 1e6)
        conversations = [
            c
            for (c,) in self._execute(
                "SELECT DISTINCT conversation FROM messages WHERE sent_at < ?", (cutoff_us,)
            ).fetchall()
        ]
        deleted = 0
        for conversation in conversations:
            if deleted >= limit:
                break
            stay: int | None = None
            for username, joined_at, floor in self._execute(sql.FLOORS, (conversation,)).fetchall():
                (first,) = self._execute(
                    sql.FIRST_UNDELIVERED, (conversation, max(floor, joined_at), username)
                ).fetchone()
                if first is not None and (stay is None or first < stay):
                    stay = first
            gone = self._execute(
                "DELETE FROM messages WHERE conversation = ? AND seq < ? AND sent_at < ? "
                "AND seq < (SELECT MIN(seq) FROM messages WHERE conversation = ?) + ? "
                f"RETURNING sender, {sql.STORED_SIZE}",
                (
                    conversation,
                    sql.NO_SEQ if stay is None else stay,
                    cutoff_us,
                    conversation,
                    limit - deleted,
                ),
            ).fetchall()
            for sender, size in gone:
                self._charge(sender, -int(size))
            deleted += len(gone)
        return deleted

    def count_waiting(self, username: str, limit: int) -> int:
        (count,) = self._select(sql.COUNT_WAITING, {"user": username, "limit": limit}).fetchone()
        return int(count)

    def stored_bytes(self, username: str) -> int:
        """What the stored messages ``username`` sent count against its quota (the
        counter, and what this batch changed of it)."""
        row = self._select(
            "SELECT stored_bytes FROM accounts WHERE username = ?", (username,)
        ).fetchone()
        return 0 if row is None else int(row[0]) + self._usage_unwritten.get(username, 0)

    def _message(self, row: Sequence[Any]) -> m.ChatMessage:
        """A message row (:data:`.statements.MESSAGE_COLUMNS`) as a ChatMessage (an
        encrypted one with its record, from the same row)."""
        return chat_message(row)
