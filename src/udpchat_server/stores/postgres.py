"""The PostgreSQL :class:`~udpchat_proto.chat.store.Store`: the cluster's durable state.

The same contract as the SQLite store (the same test suite runs on both), on one
psycopg 3 connection owned by the server loop. Most of its methods are
:class:`~.base.SqlStore`'s, the SQL it shares with SQLite; here is what
PostgreSQL does its own way (and where its batched statements belong):

* **Transactions.** Every write joins the batch's transaction (begun by its first
  write); :meth:`PostgresStore.commit` commits it. An :meth:`~PostgresStore.atomic`
  block is a ``SAVEPOINT``. An error outside a savepoint aborts a PostgreSQL
  transaction whole: the store then refuses the rest of the batch and ``commit``
  raises, having rolled it back, as the contract asks.
* **Sequence numbers** are allocated in the inserting transaction
  (``UPDATE conversations SET last_seq = last_seq + 1 ... RETURNING``), never from
  a PostgreSQL sequence, whose values can commit out of order: two nodes inserting
  into one conversation serialise on its row, and a seq is visible only with its
  message.
* **Cursors** only move forward (``GREATEST``), and a sending session's moves
  with its own messages (``_INSERT_MESSAGE``).
* **Stored bytes**: the batch's changes are one statement at commit, the
  accounts locked in name order (``_ADD_USAGE``).
* **Failures** with an outside cause (the server unreachable or shutting down, a
  full disk, too many connections) become ``StoreUnavailableError``; the store
  reconnects at the next batch.

Not thread-safe: use it from the server loop's thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, NoReturn

import psycopg
from psycopg import errors as pg_errors

from udpchat_proto import StoredMessage, StoreUnavailableError
from udpchat_proto import messages as m
from udpchat_proto.chat import conversation_key, is_room, stored_size

from .base import Params, Rows, SchemaVersionError, SqlStore, store_methods, to_micros
from .dialect import POSTGRES

__all__ = ["CONNECT_TIMEOUT", "MIGRATIONS", "SCHEMA_VERSION", "PostgresStore", "unavailable"]

#: Schema migrations, as for SQLite: ``MIGRATIONS[i]`` takes version ``i`` to ``i + 1``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE accounts (
            username TEXT PRIMARY KEY,
            password TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE retired_names (
            username TEXT PRIMARY KEY,
            retired_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE sessions (
            token_hash BYTEA PRIMARY KEY,
            username TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            last_used_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX sessions_by_last_use ON sessions (last_used_at)",
        "CREATE INDEX sessions_by_user ON sessions (username, created_at)",
        "CREATE INDEX sessions_by_creation ON sessions (created_at)",
        """CREATE TABLE invitations (
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (sender, recipient))""",
        "CREATE INDEX invitations_by_recipient ON invitations (recipient, sender)",
        """CREATE TABLE friendships (
            username TEXT NOT NULL,
            friend TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (username, friend))""",
        """CREATE TABLE blocks (
            username TEXT NOT NULL,
            blocked TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (username, blocked))""",
        "CREATE INDEX blocks_by_blocked ON blocks (blocked, username)",
        """CREATE TABLE conversations (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            is_room BOOLEAN NOT NULL,
            last_seq BIGINT NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE messages (
            position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id BYTEA NOT NULL UNIQUE,
            conversation BIGINT NOT NULL REFERENCES conversations (id),
            seq BIGINT NOT NULL,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            text TEXT NOT NULL,
            sent_at BIGINT NOT NULL,
            origin BYTEA,
            delivered_at DOUBLE PRECISION,
            UNIQUE (conversation, seq))""",
        "CREATE INDEX messages_by_time ON messages (sent_at)",
        """CREATE TABLE participants (
            conversation BIGINT NOT NULL REFERENCES conversations (id),
            username TEXT NOT NULL,
            floor_seq BIGINT NOT NULL,
            joined_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (conversation, username))""",
        "CREATE INDEX participants_by_user ON participants (username, conversation)",
        """CREATE TABLE session_cursors (
            token_hash BYTEA NOT NULL REFERENCES sessions (token_hash) ON DELETE CASCADE,
            conversation BIGINT NOT NULL REFERENCES conversations (id),
            seq BIGINT NOT NULL,
            PRIMARY KEY (token_hash, conversation))""",
        "CREATE INDEX session_cursors_by_conversation ON session_cursors (conversation)",
        """CREATE TABLE user_cursors (
            username TEXT NOT NULL,
            conversation BIGINT NOT NULL REFERENCES conversations (id),
            seq BIGINT NOT NULL,
            PRIMARY KEY (username, conversation))""",
        "CREATE INDEX user_cursors_by_conversation ON user_cursors (conversation)",
    ),
    # 2: accounts the operator disabled (udpchat-server ctl disable).
    ("ALTER TABLE accounts ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE",),
    # 3: each account's stored bytes, the counter of its storage quota, counted once
    # from what is stored (each message: its UTF-8 text plus 160, MESSAGE_OVERHEAD
    # when this was written).
    (
        "ALTER TABLE accounts ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0",
        """UPDATE accounts SET stored_bytes = s.total
           FROM (SELECT sender, SUM(octet_length(text) + 160) AS total
                 FROM messages GROUP BY sender) AS s
           WHERE s.sender = accounts.username""",
    ),
    # 4: end-to-end encryption (issue 26): devices' keys, one-time keys claimed
    # once, and each encrypted message's record, devices and key shares.
    (
        """CREATE TABLE device_keys (
            token_hash BYTEA PRIMARY KEY REFERENCES sessions (token_hash) ON DELETE CASCADE,
            device_id BYTEA NOT NULL UNIQUE,
            username TEXT NOT NULL,
            record BYTEA NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            fallback BYTEA,
            fallback_used BOOLEAN NOT NULL DEFAULT FALSE
            )""",
        "CREATE INDEX device_keys_by_user ON device_keys (username, created_at)",
        """CREATE TABLE one_time_keys (
            device_id BYTEA NOT NULL REFERENCES device_keys (device_id) ON DELETE CASCADE,
            key_id TEXT NOT NULL,
            record BYTEA NOT NULL,
            PRIMARY KEY (device_id, key_id)
            )""",
        """CREATE TABLE message_ciphertexts (
            message_id BYTEA PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
            record BYTEA NOT NULL
            )""",
        """CREATE TABLE message_devices (
            message_id BYTEA NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            device_id BYTEA NOT NULL,
            PRIMARY KEY (message_id, device_id)
            )""",
        """CREATE TABLE message_key_shares (
            message_id BYTEA NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            device_id BYTEA NOT NULL,
            number BIGINT NOT NULL,
            record BYTEA NOT NULL,
            PRIMARY KEY (message_id, device_id, number)
            )""",
    ),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)
CONNECT_TIMEOUT: Final = 5
"""Seconds to reach the database before a batch is answered unavailable."""

#: The batch's changes to the stored bytes, in one statement, in name order: two
#: nodes' commits lock the accounts they change in the same order (no deadlock).
_ADD_USAGE = """
    UPDATE accounts SET stored_bytes = accounts.stored_bytes + d.delta
    FROM (SELECT * FROM unnest(%s::text[], %s::bigint[]) AS u (name, delta)
          ORDER BY name) AS d
    WHERE accounts.username = d.name
"""
_NEXT_SEQ = """
    INSERT INTO conversations AS c (key, is_room, created_at, last_seq) VALUES (%s, %s, %s, 1)
    ON CONFLICT (key) DO UPDATE SET last_seq = c.last_seq + 1
    RETURNING c.id, c.last_seq, (c.xmax = 0)
"""
#: The message, and the sending session's cursor moved past it when nothing came
#: before it that the session lacks: its own message is never pushed to it, and
#: without this a session that only sends would leave its cursor behind, so that
#: each look for what is pending walked everything it ever sent (a cluster's node
#: looks after every send).
_INSERT_MESSAGE = """
    WITH inserted AS (
        INSERT INTO messages (id, conversation, seq, sender, recipient, text, sent_at, origin)
        VALUES (%(id)s, %(conversation)s, %(seq)s, %(sender)s, %(recipient)s, %(text)s,
                %(sent_at)s, %(origin)s)
        RETURNING seq)
    INSERT INTO session_cursors AS s (token_hash, conversation, seq)
    SELECT %(origin)s, %(conversation)s, inserted.seq FROM inserted
    WHERE %(origin)s::bytea IS NOT NULL
      AND GREATEST(
            (SELECT p.floor_seq FROM participants AS p
             WHERE p.conversation = %(conversation)s AND p.username = %(sender)s),
            COALESCE((SELECT c.seq FROM session_cursors AS c
                      WHERE c.token_hash = %(origin)s AND c.conversation = %(conversation)s), 0)
          ) = inserted.seq - 1
    ON CONFLICT (token_hash, conversation) DO UPDATE SET seq = EXCLUDED.seq
      WHERE s.seq = EXCLUDED.seq - 1
"""

#: SQLSTATE classes and codes whose cause is outside the server, and their names.
_UNAVAILABLE_STATES = {
    "08": "database unreachable",  # connection exception
    "53": "database out of resources",  # insufficient resources (53100: disk full)
    "57": "database shutting down",  # operator intervention
    "58": "database I/O error",  # system error
    "25006": "database is read-only",  # read_only_sql_transaction
    "25P03": "database transaction timed out",  # idle_in_transaction_session_timeout
    "55P03": "database busy",  # lock_not_available (lock_timeout)
    "57014": "database busy",  # query_canceled (statement_timeout)
    "40001": "database conflict",  # serialization failure (retry the batch)
    "40P01": "database conflict",  # deadlock detected (retry the batch)
}
#: Those of them that only lost a race with another node: the step is done again.
_CONFLICTS = frozenset({"40001", "40P01"})


def unavailable(exc: psycopg.Error) -> StoreUnavailableError | None:
    """The StoreUnavailableError for an error with an outside cause, or None."""
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.OperationalError) and not state:
        return StoreUnavailableError("database unreachable", str(exc).strip())
    if state == "53100":
        return StoreUnavailableError("disk full", str(exc).strip())
    reason = _UNAVAILABLE_STATES.get(state) or _UNAVAILABLE_STATES.get(state[:2])
    if reason is None:
        return None
    return StoreUnavailableError(reason, str(exc).strip(), conflict=state in _CONFLICTS)


@store_methods
class PostgresStore(SqlStore):
    """A :class:`~udpchat_proto.chat.store.Store` in one PostgreSQL database.

    Use :meth:`open`. ``schema`` (tests) puts the tables in their own schema.
    """

    DRIVER_ERROR = psycopg.Error

    def __init__(self, dsn: str, *, schema: str | None = None) -> None:
        self._dsn = dsn
        self._schema = schema
        self._db: psycopg.Connection[Any] | None = None
        self._in_batch = False
        self._atomic_wanted = False
        self._atomic_open = False
        self._batch_lost: StoreUnavailableError | None = None
        self._usage_unwritten: dict[str, int] = {}
        """What the batch added to (or took from) each sender's stored bytes, written
        at commit: one statement a batch, and the accounts' rows locked only then."""

    @classmethod
    def open(cls, dsn: str, *, schema: str | None = None) -> PostgresStore:
        """Connect, and create or migrate the schema.

        Raises:
            StoreUnavailableError: the database cannot be reached.
            SchemaVersionError: the database is newer than this release.
        """
        store = cls(dsn, schema=schema)
        try:
            store._migrate()
        except psycopg.Error as exc:
            store.close()
            failure = unavailable(exc)
            if failure is None:
                raise
            raise failure from exc
        return store

    # --- the connection and its transaction ----------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        """The connection (made again if it was lost)."""
        if self._db is None or self._db.closed:
            self._db = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
            )
            # One node stalled in a batch (paused, cut off) must not freeze the
            # others on its row locks: they give up, answer unavailable, go on.
            self._db.execute(
                "SET lock_timeout = '2s'; SET statement_timeout = '30s'; "
                "SET idle_in_transaction_session_timeout = '60s'; "
                "SET default_transaction_isolation = 'read committed'; "
                # psycopg prepares a statement run often, and after five runs
                # PostgreSQL may switch it to a generic plan, blind to the values:
                # for the pending-delivery read (a join whose best order depends
                # on the user) that plan walked the messages, and a node's
                # latency grew with what was stored. A plan for each run costs a
                # fraction of a millisecond.
                "SET plan_cache_mode = 'force_custom_plan'"
            )
            if self._schema is not None:
                self._db.execute(f'SET search_path TO "{self._schema}"')
        return self._db

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The connection, in the batch's transaction if one is open (for inspection
        and tests; do not write)."""
        return self._connection()

    def _migrate(self) -> None:
        db = self._connection()
        if self._schema is not None:
            db.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
        with db.transaction():
            # One node migrates at a time: the others wait, then find it done.
            db.execute("SELECT pg_advisory_xact_lock(7252388)")
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"database schema version {version} is newer than this release "
                    f"supports ({SCHEMA_VERSION})"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))

    def _read(self) -> psycopg.Connection[Any]:
        """The connection for a read (inside the batch's transaction if one is open)."""
        if self._batch_lost is not None:
            raise self._batch_lost
        return self._connection()

    def _write(self) -> psycopg.Connection[Any]:
        """The connection, inside the batch's transaction (begun if needed) and the
        savepoint of the current atomic block if any."""
        if self._batch_lost is not None:
            raise self._batch_lost
        db = self._connection()
        if not self._in_batch:
            db.execute("BEGIN")
            self._in_batch = True
        if self._atomic_wanted and not self._atomic_open:
            db.execute("SAVEPOINT request")
            self._atomic_open = True
        return db

    def _raise_translated(self, exc: Exception) -> NoReturn:
        """Raise ``exc`` as StoreUnavailableError if its cause is outside; in a batch
        outside a savepoint, PostgreSQL aborted the transaction: the batch is lost."""
        failure = unavailable(exc) if isinstance(exc, psycopg.Error) else None
        if self._in_batch and not self._atomic_open and self._batch_lost is None:
            self._batch_lost = failure or StoreUnavailableError(
                "transaction lost", f"the batch's transaction was aborted: {exc}"
            )
        if failure is None:
            raise exc
        raise failure from exc

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """A block whose writes all happen or none do (a ``SAVEPOINT``, taken at
        its first write)."""
        if self._atomic_wanted:
            raise RuntimeError("atomic() blocks do not nest")
        self._atomic_wanted = True
        usage = dict(self._usage_unwritten)
        try:
            yield
        except BaseException:
            self._usage_unwritten = usage  # what the block changed is undone with it
            if self._atomic_open and self._batch_lost is None:
                try:
                    db = self._connection()
                    db.execute("ROLLBACK TO SAVEPOINT request")
                    db.execute("RELEASE SAVEPOINT request")
                except psycopg.Error as exc:
                    self._batch_lost = unavailable(exc) or StoreUnavailableError(
                        "rollback failed", str(exc)
                    )
            raise
        else:
            if self._atomic_open:
                try:
                    self._connection().execute("RELEASE SAVEPOINT request")
                except psycopg.Error as exc:
                    self._atomic_open = False
                    self._raise_translated(exc)
        finally:
            self._atomic_wanted = False
            self._atomic_open = False

    def commit(self) -> None:
        """Commit the batch.

        Raises:
            StoreUnavailableError: the batch was lost or its COMMIT failed; it is
                rolled back, and the next write begins a new batch.
        """
        lost, self._batch_lost = self._batch_lost, None
        in_batch, self._in_batch = self._in_batch, False
        usage, self._usage_unwritten = self._usage_unwritten, {}
        if lost is not None:
            self._discard()
            raise lost
        if not in_batch:
            return
        try:
            db = self._connection()
            changed = {name: delta for name, delta in usage.items() if delta}
            if changed:
                db.execute(_ADD_USAGE, (list(changed), list(changed.values())))
            db.execute("COMMIT")
        except psycopg.Error as exc:
            self._discard()
            raise unavailable(exc) or StoreUnavailableError("commit failed", str(exc)) from exc

    def _discard(self) -> None:
        if self._db is None or self._db.closed:
            return
        try:
            self._db.execute("ROLLBACK")
        except psycopg.Error:
            # (No transaction, or the connection is gone: the next batch reconnects.)
            with contextlib.suppress(psycopg.Error):
                self._db.close()

    def rollback(self) -> None:
        """Discard every write since the last commit (not part of the Store protocol)."""
        self._batch_lost = None
        self._in_batch = False
        self._usage_unwritten = {}
        self._discard()

    def close(self) -> None:
        """Discard uncommitted writes and close the connection."""
        if self._in_batch:
            self.rollback()
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- statements ---------------------------------------------------------------------

    def _select(self, statement: str, params: Params = ()) -> Rows:
        return self._read().execute(POSTGRES.sql(statement), params)

    def _execute(self, statement: str, params: Params = ()) -> Rows:
        return self._write().execute(POSTGRES.sql(statement), params)

    def _executemany(self, statement: str, rows: Iterable[Params]) -> None:
        with self._write().cursor() as cursor:
            cursor.executemany(POSTGRES.sql(statement), rows)

    def _select_in(
        self, statement: str, values: Sequence[Any], params: dict[str, Any]
    ) -> list[Any]:
        if not values:
            return []
        listed = POSTGRES.sql(statement).replace("{in}", "= ANY(%(in)s)")
        return self._read().execute(listed, params | {"in": list(values)}).fetchall()

    # --- messages ------------------------------------------------------------------------------

    def add_message(self, message: m.ChatMessage, origin: bytes | None = None) -> StoredMessage:
        """Append a message; its seq is allocated in this transaction (see above).

        Raises:
            ValueError: a message with this id is already stored (nothing is kept).
        """
        db = self._write()
        if db.execute("SELECT 1 FROM messages WHERE id = %s", (message.id,)).fetchone():
            # Looked up first: a unique violation would abort the whole transaction.
            raise ValueError("a message with this id is already stored")
        # Another node may be inserting the same id (a client's retry, moved over):
        # under a savepoint its unique violation undoes this message alone.
        db.execute("SAVEPOINT message")
        try:
            stored = self._insert_message(db, message, origin)
        except pg_errors.UniqueViolation:
            db.execute("ROLLBACK TO SAVEPOINT message")
            db.execute("RELEASE SAVEPOINT message")
            raise ValueError("a message with this id is already stored") from None
        db.execute("RELEASE SAVEPOINT message")
        self._charge(message.sender, stored_size(message.text))
        return stored

    def _insert_message(
        self, db: psycopg.Connection[Any], message: m.ChatMessage, origin: bytes | None
    ) -> StoredMessage:
        key = conversation_key(message.sender, message.to)
        sent_at = to_micros(message.sent_at)
        # One statement takes the next seq, creating the conversation if need be
        # (xmax = 0: this row was inserted, not updated).
        row = db.execute(_NEXT_SEQ, (key, is_room(key), sent_at / 1e6)).fetchone()
        assert row is not None
        conversation, seq, created = row
        if created and not is_room(key):
            with db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO participants (conversation, username, floor_seq, joined_at) "
                    "VALUES (%s, %s, 0, %s) ON CONFLICT DO NOTHING",
                    [(conversation, user, sent_at / 1e6) for user in (message.sender, message.to)],
                )
        db.execute(
            _INSERT_MESSAGE,
            {
                "id": message.id,
                "conversation": conversation,
                "seq": seq,
                "sender": message.sender,
                "recipient": message.to,
                "text": message.text,
                "sent_at": sent_at,
                "origin": origin,
            },
        )
        return StoredMessage(message=message, seq=seq)
