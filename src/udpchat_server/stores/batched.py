"""PostgreSQL's batched statements: each takes a whole batch's rows at once
(``unnest`` of arrays), so that a cluster node's batch costs a few round trips to
the database whatever its size, not a few a message.

They are PostgreSQL's own (SQLite runs in the process: a statement a row costs it
no round trip), written in psycopg's parameter style. Their arrays go in binary
(``%b``): as text, psycopg spent 5 ms quoting a batch of 500 messages and the
server more parsing 10,000 token hashes than joining them. What each does is the Store
method's that runs it (:class:`~.postgres.PostgresStore`); here is how.

Locks: every statement that changes existing rows takes them in one order (by
conversation key, by token hash and conversation, by user name and
conversation), as every node does, so that two nodes' batches wait for each
other rather than deadlock where they can; where they still do (another request
holds a lock in its own order), the batch's statement is done again (see
``WriteTrackingStore.flush_messages``).
"""

from __future__ import annotations

from typing import Final

from . import statements as sql

__all__ = [
    "ACKNOWLEDGE",
    "ADD_MESSAGES",
    "ADD_STORED_USAGE",
    "ADD_USAGE",
    "PENDING",
    "PENDING_FEW",
]

#: The batch's changes to the stored bytes, in one statement, in name order: two
#: nodes' commits lock the accounts they change in the same order (no deadlock).
#: The totals come back: the store's view of them is fresh after each commit.
ADD_USAGE: Final = """
    UPDATE accounts SET stored_bytes = accounts.stored_bytes + d.delta
    FROM (SELECT * FROM unnest(%b::text[], %b::bigint[]) AS u (name, delta)
          ORDER BY name) AS d
    WHERE accounts.username = d.name
    RETURNING accounts.username, accounts.stored_bytes
"""

#: :data:`ADD_USAGE` for messages :data:`ADD_MESSAGES` stored earlier in the same
#: transaction, in the same pipeline (its result not read yet): each counts its
#: ``size`` if its row is this transaction's own (its ``xmin`` the transaction's
#: id: inserted at the top level, as ``store_and_commit`` does, not under a
#: savepoint), the first of its id in the arrays only, as ``ADD_MESSAGES`` keeps.
#: (A row of the batch that the same transaction then updated, in the
#: acknowledgements' savepoint, would not count: that needs its recipient to
#: acknowledge it before it was ever pushed.)
ADD_STORED_USAGE: Final = """
    UPDATE accounts SET stored_bytes = accounts.stored_bytes + d.delta
    FROM (SELECT f.sender AS name, SUM(f.size) AS delta
          FROM (SELECT DISTINCT ON (u.id) u.* FROM unnest(
                    %(ids)b::bytea[], %(senders)b::text[], %(sizes)b::bigint[]
                ) WITH ORDINALITY AS u (id, sender, size, n)
                ORDER BY u.id, u.n) AS f
          WHERE EXISTS (
              SELECT 1 FROM messages AS m
              WHERE m.id = f.id
                AND m.xmin = (pg_current_xact_id()::text::bigint %% 4294967296)::text::xid)
          GROUP BY f.sender ORDER BY f.sender) AS d
    WHERE accounts.username = d.name
    RETURNING accounts.username, accounts.stored_bytes
"""

ADD_MESSAGES: Final = """
    WITH input AS (
        SELECT * FROM unnest(
            %(ids)b::bytea[], %(keys)b::text[], %(senders)b::text[], %(recipients)b::text[],
            %(texts)b::text[], %(sent)b::bigint[], %(origins)b::bytea[]
        ) WITH ORDINALITY AS i (id, key, sender, recipient, text, sent_at, origin, n)
    ),
    -- The duplicate-id check, folded in: an id stored already, or an earlier one's
    -- of this batch, takes no seq. (Another node inserting the same id at the same
    -- time is ON CONFLICT's below: its seq is then a gap, which nothing minds.)
    fresh AS (
        SELECT DISTINCT ON (i.id) i.* FROM input AS i
        WHERE NOT EXISTS (SELECT 1 FROM messages AS m WHERE m.id = i.id)
        ORDER BY i.id, i.n
    ),
    counts AS (
        SELECT key, COUNT(*) AS k, MIN(sent_at) AS first_at FROM fresh GROUP BY key
    ),
    -- Each conversation's seqs, k at once, in the inserting transaction (never from
    -- a PostgreSQL sequence, whose values can commit out of order): the rows are
    -- locked in key order, created if need be (xmax = 0: inserted, not updated).
    conversation AS (
        INSERT INTO conversations AS c (key, is_room, created_at, last_seq)
        SELECT key, left(key, 1) = '#', first_at / 1e6, k FROM counts ORDER BY key
        ON CONFLICT (key) DO UPDATE SET last_seq = c.last_seq + EXCLUDED.last_seq
        RETURNING c.id, c.key, c.last_seq, c.is_room, (c.xmax = 0) AS created
    ),
    numbered AS (
        SELECT f.*, v.id AS conversation, v.is_room, v.created,
               v.last_seq - t.k + ROW_NUMBER() OVER (PARTITION BY f.key ORDER BY f.n) AS seq
        FROM fresh AS f
        JOIN conversation AS v ON v.key = f.key
        JOIN counts AS t ON t.key = f.key
    ),
    participant AS (
        INSERT INTO participants (conversation, username, floor_seq, joined_at)
        SELECT DISTINCT ON (b.conversation, u.name) b.conversation, u.name, 0, b.sent_at / 1e6
        FROM numbered AS b CROSS JOIN LATERAL (VALUES (b.sender), (b.recipient)) AS u (name)
        WHERE b.created AND NOT b.is_room
        ORDER BY b.conversation, u.name, b.n
        ON CONFLICT DO NOTHING
    ),
    inserted AS (
        INSERT INTO messages (id, conversation, seq, sender, recipient, text, sent_at, origin)
        SELECT id, conversation, seq, sender, recipient, text, sent_at, origin
        FROM numbered ORDER BY n
        ON CONFLICT (id) DO NOTHING
        RETURNING id, seq
    ),
    -- The sending session's cursor moves past its own messages when nothing came
    -- before them that it lacks (its own are never pushed to it: without this, a
    -- session that only sends would leave its cursor behind, and each look for
    -- what is pending would walk everything it ever sent). Per conversation, the
    -- run of the batch's messages from the session that sent its first one.
    runs AS (
        SELECT b.conversation, b.origin, b.seq,
               FIRST_VALUE(b.origin) OVER w AS first_origin,
               FIRST_VALUE(b.sender) OVER w AS first_sender,
               FIRST_VALUE(b.seq) OVER w AS first_seq
        FROM numbered AS b
        WINDOW w AS (PARTITION BY b.conversation ORDER BY b.seq)
    ),
    prefix AS (
        SELECT conversation, first_origin AS origin, first_sender AS sender, first_seq,
               COALESCE(MIN(seq) FILTER (WHERE origin IS DISTINCT FROM first_origin) - 1,
                        MAX(seq)) AS last_seq
        FROM runs GROUP BY conversation, first_origin, first_sender, first_seq
    ),
    moved AS (
        INSERT INTO session_cursors AS s (token_hash, conversation, seq)
        SELECT p.origin, p.conversation, p.last_seq FROM prefix AS p
        WHERE p.origin IS NOT NULL
          AND EXISTS (SELECT 1 FROM sessions AS x WHERE x.token_hash = p.origin)
          AND GREATEST(
                COALESCE((SELECT q.floor_seq FROM participants AS q
                          WHERE q.conversation = p.conversation AND q.username = p.sender), 0),
                COALESCE((SELECT c.seq FROM session_cursors AS c
                          WHERE c.token_hash = p.origin AND c.conversation = p.conversation), 0)
              ) = p.first_seq - 1
        ORDER BY p.origin, p.conversation
        ON CONFLICT (token_hash, conversation) DO UPDATE SET seq = EXCLUDED.seq
          WHERE s.seq < EXCLUDED.seq
    )
    SELECT b.n, s.seq FROM numbered AS b JOIN inserted AS s ON s.id = b.id
"""
"""A batch's messages, in order: one row ``(n, seq)`` for each stored (``n`` its
place in the arrays, from 1); an id already stored gets no row."""

_PENDING = f"""
    WITH q AS (
        SELECT u.*, EXISTS (SELECT 1 FROM sessions AS s WHERE s.token_hash = u.session) AS known
        FROM unnest(%(users)b::text[], %(sessions)b::bytea[], %(devices)b::bytea[],
                    %(limits)b::int[])
             WITH ORDINALITY AS u (username, session, device, lim, i)
    ),
    -- Where each session starts in each of its conversations: {{starts}}.
    -- Only where the conversation went further (its last_seq) is there anything
    -- to read.
    starts AS (
        SELECT q.i, q.username, q.session, q.device, q.lim, p.conversation, v.last_seq,
               GREATEST(p.floor_seq, CASE WHEN q.known THEN COALESCE({{session_cursor}}, 0)
                                          ELSE COALESCE({{user_cursor}}, 0) END) AS start
        FROM q
        JOIN participants AS p ON p.username = q.username
        JOIN conversations AS v ON v.id = p.conversation{{cursor_joins}}
    ),
    -- The first lim of each conversation past the start (the (conversation, seq)
    -- index, in order: a conversation's seqs are in insertion order), then the
    -- first lim of the session's over all its conversations, by global position.
    found AS (
        SELECT s.i, s.lim, m.*, ROW_NUMBER() OVER (PARTITION BY s.i ORDER BY m.position) AS r
        FROM (SELECT * FROM starts WHERE last_seq > start) AS s
        CROSS JOIN LATERAL (
            SELECT m.* FROM messages AS m
            WHERE m.conversation = s.conversation AND m.seq > s.start
              AND (m.sender != s.username OR (m.origin IS NOT NULL AND m.origin != s.session))
              AND NOT (left(m.recipient, 1) = '#' AND EXISTS
                       (SELECT 1 FROM blocks AS b
                        WHERE b.username = s.username AND b.blocked = m.sender))
              AND {sql.for_device("s.device")}
            ORDER BY m.seq
            LIMIT s.lim) AS m
    )
    SELECT m.i, {sql.MESSAGE_COLUMNS} FROM found AS m WHERE m.r <= m.lim ORDER BY m.i, m.position
"""

PENDING: Final = _PENDING.format(
    starts="hash joins, no look-up per session",
    session_cursor="c.seq",
    user_cursor="d.seq",
    cursor_joins="""
        LEFT JOIN session_cursors AS c
          ON c.token_hash = q.session AND c.conversation = p.conversation
        LEFT JOIN user_cursors AS d
          ON d.username = q.username AND d.conversation = p.conversation""",
)
"""Each session's pending deliveries (``PENDING_FOR_SESSION``, or
``PENDING_FOR_USER`` for an unknown session), all in one query: rows ``(i,
message columns)``, ``i`` the session's place in the arrays (from 1). """

PENDING_FEW: Final = _PENDING.format(
    starts="each cursor looked up by its key",
    session_cursor="""(SELECT c.seq FROM session_cursors AS c
            WHERE c.token_hash = q.session AND c.conversation = p.conversation)""",
    user_cursor="""(SELECT d.seq FROM user_cursors AS d
            WHERE d.username = q.username AND d.conversation = p.conversation)""",
    cursor_joins="",
)
""":data:`PENDING` for a few sessions (the news of one batch), run in its generic
plan (made once and kept: no planning a call, 0.75 ms of the 0.85 ms a read of
one session cost). Each cursor is read by its primary key, in a subquery: a plan
made without the values cannot then walk a cursor table whole, however many
sessions the generic plan's guess at the arrays' length (10) is wrong by."""

_PASSED = sql.past_blocked("h.conversation", "h.seq").replace(":user", "h.username")

ACKNOWLEDGE: Final = f"""
    WITH acked AS (
        SELECT * FROM unnest(%(users)b::text[], %(sessions)b::bytea[], %(ids)b::bytea[])
            AS a (username, session, id)
    ),
    -- HIGHEST_ACKNOWLEDGED, for every session at once.
    highest AS (
        SELECT a.username, a.session, m.conversation, MAX(m.seq) AS seq,
               MIN(left(m.recipient, 1)) <> '#' AS direct
        FROM acked AS a
        JOIN messages AS m ON m.id = a.id
        JOIN participants AS p ON p.conversation = m.conversation AND p.username = a.username
        WHERE m.sender != a.username OR (m.origin IS NOT NULL AND m.origin != a.session)
        GROUP BY a.username, a.session, m.conversation
    ),
    -- A room cursor goes on past the messages from users it blocks that directly
    -- follow (PAST_BLOCKED), looked at only for users who block someone.
    moved AS (
        SELECT h.username, h.session, h.conversation, h.direct,
               CASE WHEN h.direct OR NOT EXISTS
                         (SELECT 1 FROM blocks AS b WHERE b.username = h.username)
                    THEN h.seq
                    ELSE COALESCE(({_PASSED}), h.seq) END AS seq
        FROM highest AS h
    ),
    per_user AS (
        SELECT username, conversation, MAX(seq) AS seq, bool_or(direct) AS direct
        FROM moved GROUP BY username, conversation
    ),
    -- MARK_DELIVERED: between the user's cursor as it was (every statement here
    -- reads the rows as they were before it) and the seq just acknowledged.
    marked AS (
        UPDATE messages AS m SET delivered_at = %(now)s
        FROM per_user AS u
        WHERE u.direct AND m.conversation = u.conversation AND m.seq <= u.seq
          AND m.seq > COALESCE((SELECT c.seq FROM user_cursors AS c
                                WHERE c.username = u.username
                                  AND c.conversation = u.conversation), 0)
          AND m.recipient = u.username AND m.delivered_at IS NULL
        RETURNING m.id, m.sender, m.recipient
    ),
    session_moved AS (
        INSERT INTO session_cursors AS s (token_hash, conversation, seq)
        SELECT v.session, v.conversation, MAX(v.seq) FROM moved AS v
        WHERE EXISTS (SELECT 1 FROM sessions AS x WHERE x.token_hash = v.session)
        GROUP BY v.session, v.conversation
        ORDER BY v.session, v.conversation
        ON CONFLICT (token_hash, conversation) DO UPDATE SET seq = GREATEST(s.seq, EXCLUDED.seq)
    ),
    user_moved AS (
        INSERT INTO user_cursors AS c (username, conversation, seq)
        SELECT username, conversation, seq FROM per_user ORDER BY username, conversation
        ON CONFLICT (username, conversation) DO UPDATE SET seq = GREATEST(c.seq, EXCLUDED.seq)
    )
    SELECT id, sender, recipient FROM marked
"""
"""Every session's acknowledgements of a batch in one statement (``acknowledge_many``):
the receipts, rows ``(id, sender, recipient)``."""
