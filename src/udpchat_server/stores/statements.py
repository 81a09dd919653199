"""The long statements both stores run, each written once (see :mod:`.dialect` for
how it becomes each database's).

The short ones stay beside the method that runs them, in its concept's module
(:mod:`.accounts`, :mod:`.messages` ...); what one database does its own way
(SQLite's add_message and its caches, PostgreSQL's sequence numbers, batches and
upserts) is in that store's module.
"""

from __future__ import annotations

import functools
from typing import Final

from udpchat_proto.chat import MESSAGE_OVERHEAD

__all__ = [
    "ADVANCE_SESSION_CURSORS",
    "ADVANCE_USER_CURSORS",
    "COUNT_WAITING",
    "FIRST_UNDELIVERED",
    "FLOORS",
    "GET_MESSAGE",
    "HIGHEST_ACKNOWLEDGED",
    "MARK_DELIVERED",
    "MESSAGE_COLUMNS",
    "PASS_BLOCKED_SESSIONS",
    "PASS_BLOCKED_USER",
    "PAST_BLOCKED",
    "PENDING_FOR_SESSION",
    "PENDING_FOR_USER",
    "STORED_SIZE",
    "for_device",
    "history",
    "past_blocked",
]

NO_SEQ: Final = 1 << 62
"""Past every seq (a bound for "no such message")."""

MESSAGE_COLUMNS: Final = "m.id, m.sender, m.recipient, m.text, m.sent_at, m.record"
"""A ChatMessage's columns, in the order ``messages.chat_message`` reads them (an
encrypted message's record the last: NULL for a text)."""

STORED_SIZE: Final = f"octet_length(text) + {MESSAGE_OVERHEAD:d} + sealed_bytes"
"""What a messages row counts against its sender's quota (``stored_size``, in SQL),
and an encrypted one's record and key shares (``sealed_bytes``: their
``sealed_size``, written with the record)."""

GET_MESSAGE: Final = (  # (the message's columns, then seq and delivered_at)
    f"SELECT {MESSAGE_COLUMNS}, m.seq, m.delivered_at FROM messages AS m WHERE m.id = ?"
)

# Whether :user blocks the sender of room message m: a member is delivered nothing
# from those it blocks (a direct message needs no look: a block ends a friendship).
_FROM_BLOCKED = (
    "(m.recipient LIKE '#%' AND EXISTS "
    "(SELECT 1 FROM blocks AS b WHERE b.username = :user AND b.blocked = m.sender))"
)


def for_device(device: str) -> str:
    """Whether message m is for the device ``device`` (an SQL expression): every text
    message is (stored before the upgrade, or by a client that does not encrypt
    yet); an encrypted one (its text empty) only if it was stored for that device,
    which alone has its key: its id is among the row's ``devices``
    (``records.pack_devices``; NULL for none, so not for any). Every delivery
    query has it (the per-session ones here, PostgreSQL's batched one).

    Written as PostgreSQL's ``position(id IN devices)``, which SQLite's dialect
    spells ``instr(devices, id)`` (the same byte search on BLOBs)."""
    return f"(m.text != '' OR position({device} IN m.devices) > 0)"


_FOR_DEVICE = for_device(":device")

# The delivery query. For each conversation of the user, the start is the higher
# of the member's floor and the cursor; the (conversation, seq) index then yields
# only the messages past it, which are merged by global position. The cursor comes
# from session_cursors, or from user_cursors for an unknown session.
_PENDING = f"""
    SELECT {MESSAGE_COLUMNS}
    FROM participants AS p
    JOIN messages AS m
      ON m.conversation = p.conversation
     AND m.seq > GREATEST(p.floor_seq, COALESCE(
            (SELECT c.seq FROM {{cursors}} AS c
             WHERE c.{{owner}} = :owner AND c.conversation = p.conversation), 0))
    WHERE p.username = :user
      AND (m.sender != :user OR (m.origin IS NOT NULL AND m.origin != :session))
      AND NOT {_FROM_BLOCKED}
      AND {_FOR_DEVICE}
    ORDER BY m.position
    LIMIT :limit
"""
PENDING_FOR_SESSION: Final = _PENDING.format(cursors="session_cursors", owner="token_hash")
PENDING_FOR_USER: Final = _PENDING.format(cursors="user_cursors", owner="username")


@functools.cache
def history(room: bool, before: bool) -> str:
    """The last :limit messages of the conversation :key, newest first; of a room,
    those since :user joined and none from users it blocks; with ``before``, only
    those older than the message :before of that conversation (none if it is not)."""
    upper = (
        "AND m.seq < (SELECT b.seq FROM messages AS b WHERE b.id = :before AND "
        "b.conversation = (SELECT id FROM conversations WHERE key = :key)) "
        if before
        else ""
    )
    member = (
        "JOIN participants AS p ON p.conversation = m.conversation AND p.username = :user "
        if room
        else ""
    )
    since = f"AND m.seq > p.floor_seq AND NOT {_FROM_BLOCKED} " if room else ""
    return (
        f"SELECT {MESSAGE_COLUMNS} FROM messages AS m {member}"
        "WHERE m.conversation = (SELECT id FROM conversations WHERE key = :key) "
        f"{since}{upper}ORDER BY m.seq DESC LIMIT :limit"
    )


# What waits for a user in direct conversations (rooms are stored once for all
# their members and are not a recipient's backlog), counted up to a limit.
COUNT_WAITING: Final = """
    SELECT COUNT(*) FROM (
        SELECT 1 FROM participants AS p
        JOIN conversations AS c ON c.id = p.conversation AND NOT c.is_room
        JOIN messages AS m
          ON m.conversation = p.conversation
         AND m.seq > COALESCE((SELECT u.seq FROM user_cursors AS u
                               WHERE u.username = :user AND u.conversation = p.conversation), 0)
        WHERE p.username = :user AND m.sender != :user
        LIMIT :limit) AS waiting
"""

# --- acknowledgements ---------------------------------------------------------------

# The highest seq among the acknowledged ids ({in}) in each conversation of :user,
# and whether it is a direct one. Only what the session could have been delivered
# counts: not a message it sent itself (acknowledging that would move its cursor
# past what it has not received, and tell the sender of those they were delivered).
# (A conversation's messages all have a room, or all users, as recipients.)
HIGHEST_ACKNOWLEDGED: Final = (
    "SELECT m.conversation, MAX(m.seq), MIN(m.recipient) NOT LIKE '#%' "
    "FROM messages AS m "
    "JOIN participants AS p ON p.conversation = m.conversation AND p.username = :user "
    "WHERE m.id {in} AND (m.sender != :user OR (m.origin IS NOT NULL AND m.origin != :session)) "
    "GROUP BY m.conversation"
)

# Delivery status: the direct messages to :user between its user cursor (every one
# before it was delivered) and the seq just acknowledged, marked delivered now.
MARK_DELIVERED: Final = """
    UPDATE messages SET delivered_at = :now
    WHERE conversation = :conversation AND seq <= :seq
      AND seq > COALESCE((SELECT u.seq FROM user_cursors AS u
                          WHERE u.username = :user AND u.conversation = :conversation), 0)
      AND recipient = :user AND delivered_at IS NULL
    RETURNING id, sender
"""

# Cursors only move forward. WHERE EXISTS: no cursor for a session that does not
# exist (the foreign key would refuse it anyway).
ADVANCE_SESSION_CURSORS: Final = (
    "INSERT INTO session_cursors (token_hash, conversation, seq) "
    "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM sessions WHERE token_hash = ?) "
    "ON CONFLICT (token_hash, conversation) "
    "DO UPDATE SET seq = GREATEST(session_cursors.seq, excluded.seq)"
)
ADVANCE_USER_CURSORS: Final = (
    "INSERT INTO user_cursors (username, conversation, seq) VALUES (?, ?, ?) "
    "ON CONFLICT (username, conversation) "
    "DO UPDATE SET seq = GREATEST(user_cursors.seq, excluded.seq)"
)


def past_blocked(conversation: str, seq: str) -> str:
    """Where a room cursor at ``seq`` may go: past the messages that directly follow
    it and come from users :user blocks (never delivered to it), up to the first
    that is not; NULL when none follows. Index seeks on (conversation, seq), one
    step per message passed."""
    return f"""
        SELECT MAX(m.seq) FROM messages AS m
        WHERE m.conversation = {conversation} AND m.seq > {seq}
          AND m.seq < COALESCE(
              (SELECT n.seq FROM messages AS n
               WHERE n.conversation = {conversation} AND n.seq > {seq} AND NOT EXISTS
                   (SELECT 1 FROM blocks AS b WHERE b.username = :user AND b.blocked = n.sender)
               ORDER BY n.seq LIMIT 1),
              {NO_SEQ:d})
    """


PAST_BLOCKED: Final = past_blocked(":conversation", ":seq")

# Before a block of :user's ends, each room cursor of its (every session's, then
# the user's own) passes the blocked run that directly follows it, or follows the
# member's floor (see Store.delete_block): one statement per table, not one per
# room and session.
_START = "GREATEST(p.floor_seq, COALESCE(c.seq, 0))"
PASS_BLOCKED_SESSIONS: Final = f"""
    INSERT INTO session_cursors (token_hash, conversation, seq)
    SELECT token_hash, conversation, passed FROM (
        SELECT s.token_hash, p.conversation, ({past_blocked("p.conversation", _START)}) AS passed
        FROM sessions AS s
        JOIN participants AS p ON p.username = s.username
        JOIN conversations AS r ON r.id = p.conversation AND r.is_room
        LEFT JOIN session_cursors AS c
          ON c.token_hash = s.token_hash AND c.conversation = p.conversation
        WHERE s.username = :user) AS moved
    WHERE passed IS NOT NULL
    ON CONFLICT (token_hash, conversation)
    DO UPDATE SET seq = GREATEST(session_cursors.seq, excluded.seq)
"""
PASS_BLOCKED_USER: Final = f"""
    INSERT INTO user_cursors (username, conversation, seq)
    SELECT username, conversation, passed FROM (
        SELECT p.username, p.conversation, ({past_blocked("p.conversation", _START)}) AS passed
        FROM participants AS p
        JOIN conversations AS r ON r.id = p.conversation AND r.is_room
        LEFT JOIN user_cursors AS c ON c.username = p.username AND c.conversation = p.conversation
        WHERE p.username = :user) AS moved
    WHERE passed IS NOT NULL
    ON CONFLICT (username, conversation)
    DO UPDATE SET seq = GREATEST(user_cursors.seq, excluded.seq)
"""

# --- retention ----------------------------------------------------------------------

# Per conversation: each participant's delivered floor is the lowest of its user
# cursor and its sessions' cursors (0 for none). The first message that must stay
# is, over the participants, the first one past their floor (and past where they
# joined) that they did not send; everything older may go. (Their own messages do
# not wait for their other sessions: the sending session never acknowledges its
# own, so its floor would hold every conversation it ends.)
FLOORS: Final = f"""
    SELECT p.username, p.floor_seq, LEAST(
        COALESCE((SELECT u.seq FROM user_cursors AS u
                  WHERE u.username = p.username AND u.conversation = p.conversation), 0),
        COALESCE((SELECT MIN(COALESCE(c.seq, 0)) FROM sessions AS s
                  LEFT JOIN session_cursors AS c
                    ON c.token_hash = s.token_hash AND c.conversation = p.conversation
                  WHERE s.username = p.username), {NO_SEQ:d}))
    FROM participants AS p WHERE p.conversation = ?
"""
FIRST_UNDELIVERED: Final = (
    "SELECT MIN(seq) FROM messages WHERE conversation = ? AND seq > ? AND sender != ?"
)
