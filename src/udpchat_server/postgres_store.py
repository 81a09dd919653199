"""The PostgreSQL :class:`~udpchat_proto.chat.store.Store`: the cluster's durable state.

The same contract as the SQLite store (the same test suite runs on both), on one
psycopg 3 connection owned by the server loop:

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
* **Cursors** only move forward (``GREATEST``).
* **Failures** with an outside cause (the server unreachable or shutting down, a
  full disk, too many connections) become ``StoreUnavailableError``; the store
  reconnects at the next batch.

Not thread-safe: use it from the server loop's thread.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Final, NoReturn, Self

import psycopg
from psycopg import errors as pg_errors

from udpchat_proto.chat import (
    MESSAGE_OVERHEAD,
    STORE_READS,
    STORE_WRITES,
    Account,
    Acknowledgement,
    LoginSession,
    PasswordHash,
    Receipt,
    StoredMessage,
    StoreUnavailableError,
    conversation_key,
    is_room,
    stored_size,
)
from udpchat_proto.chat.messages import ChatMessage

from .sqlite_store import SchemaVersionError, _chat_message, _to_micros

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]

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
)

SCHEMA_VERSION: Final = len(MIGRATIONS)
CONNECT_TIMEOUT: Final = 5
"""Seconds to reach the database before a batch is answered unavailable."""

_COLUMNS = "m.id, m.sender, m.recipient, m.text, m.sent_at"
#: What a messages row counts against its sender's quota (stored_size, in SQL).
_STORED_SIZE = f"octet_length(text) + {MESSAGE_OVERHEAD:d}"
#: The batch's changes to the stored bytes, in one statement, in name order: two
#: nodes' commits lock the accounts they change in the same order (no deadlock).
_ADD_USAGE = """
    UPDATE accounts SET stored_bytes = accounts.stored_bytes + d.delta
    FROM (SELECT * FROM unnest(%s::text[], %s::bigint[]) AS u (name, delta)
          ORDER BY name) AS d
    WHERE accounts.username = d.name
"""
# A room message from a user %(user)s blocks (see the SQLite store).
_FROM_BLOCKED = (
    "(m.recipient LIKE '#%%' AND EXISTS "
    "(SELECT 1 FROM blocks AS b WHERE b.username = %(user)s AND b.blocked = m.sender))"
)
_PENDING = f"""
    SELECT {_COLUMNS}
    FROM participants AS p
    JOIN messages AS m
      ON m.conversation = p.conversation
     AND m.seq > GREATEST(p.floor_seq, COALESCE(
            (SELECT c.seq FROM {{cursors}} AS c
             WHERE c.{{owner}} = %(owner)s AND c.conversation = p.conversation), 0))
    WHERE p.username = %(user)s
      AND (m.sender <> %(user)s OR (m.origin IS NOT NULL AND m.origin <> %(session)s))
      AND NOT {_FROM_BLOCKED}
    ORDER BY m.position
    LIMIT %(limit)s
"""
_PENDING_FOR_SESSION = _PENDING.format(cursors="session_cursors", owner="token_hash")
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
_PENDING_FOR_USER = _PENDING.format(cursors="user_cursors", owner="username")


def _past_blocked(conversation: str, seq: str) -> str:
    return f"""
    SELECT MAX(m.seq) FROM messages AS m
    WHERE m.conversation = {conversation} AND m.seq > {seq}
      AND m.seq < COALESCE(
          (SELECT n.seq FROM messages AS n
           WHERE n.conversation = {conversation} AND n.seq > {seq} AND NOT EXISTS
               (SELECT 1 FROM blocks AS b WHERE b.username = %(user)s AND b.blocked = n.sender)
           ORDER BY n.seq LIMIT 1),
          4611686018427387904)
"""


_PAST_BLOCKED = _past_blocked("%(conversation)s", "%(seq)s")
_START = "GREATEST(p.floor_seq, COALESCE(c.seq, 0))"
_PASS_BLOCKED_SESSIONS = f"""
    INSERT INTO session_cursors (token_hash, conversation, seq)
    SELECT token_hash, conversation, passed FROM (
        SELECT s.token_hash, p.conversation, ({_past_blocked("p.conversation", _START)}) AS passed
        FROM sessions AS s
        JOIN participants AS p ON p.username = s.username
        JOIN conversations AS r ON r.id = p.conversation AND r.is_room
        LEFT JOIN session_cursors AS c
          ON c.token_hash = s.token_hash AND c.conversation = p.conversation
        WHERE s.username = %(user)s) AS moved
    WHERE passed IS NOT NULL
    ON CONFLICT (token_hash, conversation)
    DO UPDATE SET seq = GREATEST(session_cursors.seq, excluded.seq)
"""
_PASS_BLOCKED_USER = f"""
    INSERT INTO user_cursors (username, conversation, seq)
    SELECT username, conversation, passed FROM (
        SELECT p.username, p.conversation, ({_past_blocked("p.conversation", _START)}) AS passed
        FROM participants AS p
        JOIN conversations AS r ON r.id = p.conversation AND r.is_room
        LEFT JOIN user_cursors AS c ON c.username = p.username AND c.conversation = p.conversation
        WHERE p.username = %(user)s) AS moved
    WHERE passed IS NOT NULL
    ON CONFLICT (username, conversation)
    DO UPDATE SET seq = GREATEST(user_cursors.seq, excluded.seq)
"""
_MARK_DELIVERED = """
    UPDATE messages SET delivered_at = %(now)s
    WHERE conversation = %(conversation)s AND seq <= %(seq)s
      AND seq > COALESCE((SELECT u.seq FROM user_cursors AS u
                          WHERE u.username = %(user)s AND u.conversation = %(conversation)s), 0)
      AND recipient = %(user)s AND delivered_at IS NULL
    RETURNING id, sender
"""
_COUNT_WAITING = """
    SELECT COUNT(*) FROM (
        SELECT 1 FROM participants AS p
        JOIN conversations AS c ON c.id = p.conversation AND NOT c.is_room
        JOIN messages AS m
          ON m.conversation = p.conversation
         AND m.seq > COALESCE((SELECT u.seq FROM user_cursors AS u
                               WHERE u.username = %(user)s
                                 AND u.conversation = p.conversation), 0)
        WHERE p.username = %(user)s AND m.sender <> %(user)s
        LIMIT %(limit)s) AS waiting
"""
_FLOORS = """
    SELECT p.username, p.floor_seq, LEAST(
        COALESCE((SELECT u.seq FROM user_cursors AS u
                  WHERE u.username = p.username AND u.conversation = p.conversation), 0),
        COALESCE((SELECT MIN(COALESCE(c.seq, 0)) FROM sessions AS s
                  LEFT JOIN session_cursors AS c
                    ON c.token_hash = s.token_hash AND c.conversation = p.conversation
                  WHERE s.username = p.username), 4611686018427387904))
    FROM participants AS p WHERE p.conversation = %s
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


def _translated(method: Callable[..., Any]) -> Callable[..., Any]:
    def translated(self: PostgresStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except psycopg.Error as exc:
            self._raise_translated(exc)

    return functools.update_wrapper(translated, method)


def _translate_store_methods(cls: type[PostgresStore]) -> type[PostgresStore]:
    for name in STORE_READS | STORE_WRITES:
        setattr(cls, name, _translated(getattr(cls, name)))
    return cls


@_translate_store_methods
class PostgresStore:
    """A :class:`~udpchat_proto.chat.store.Store` in one PostgreSQL database.

    Use :meth:`open`. ``schema`` (tests) puts the tables in their own schema.
    """

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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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

    def _raise_translated(self, exc: psycopg.Error) -> NoReturn:
        """Raise ``exc`` as StoreUnavailableError if its cause is outside; in a batch
        outside a savepoint, PostgreSQL aborted the transaction: the batch is lost."""
        failure = unavailable(exc)
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

    def _charge(self, sender: str, size: int) -> None:
        """Add ``size`` (negative: a deletion) to ``sender``'s stored bytes, written
        with the batch."""
        self._usage_unwritten[sender] = self._usage_unwritten.get(sender, 0) + size

    def close(self) -> None:
        """Discard uncommitted writes and close the connection."""
        if self._in_batch:
            self.rollback()
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- accounts --------------------------------------------------------------------------

    def create_account(self, username: str, password: PasswordHash, now: float) -> bool:
        cursor = self._write().execute(
            "INSERT INTO accounts (username, password, created_at) "
            "SELECT %s, %s, %s WHERE NOT EXISTS "
            "(SELECT 1 FROM retired_names WHERE username = %s) "
            "ON CONFLICT (username) DO NOTHING",
            (username, password.to_string(), now, username),
        )
        return cursor.rowcount == 1

    def set_password(self, username: str, password: PasswordHash) -> bool:
        cursor = self._write().execute(
            "UPDATE accounts SET password = %s WHERE username = %s",
            (password.to_string(), username),
        )
        return cursor.rowcount == 1

    def get_account(self, username: str) -> Account | None:
        row = (
            self._read()
            .execute(
                "SELECT password, created_at, disabled FROM accounts WHERE username = %s",
                (username,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return Account(
            username=username,
            password=PasswordHash.from_string(row[0]),
            created_at=row[1],
            disabled=row[2],
        )

    def set_disabled(self, username: str, disabled: bool) -> bool:
        cursor = self._write().execute(
            "UPDATE accounts SET disabled = %s WHERE username = %s", (disabled, username)
        )
        return cursor.rowcount == 1

    def accounts(self) -> list[tuple[str, bool]]:
        rows = self._read().execute("SELECT username, disabled FROM accounts ORDER BY username")
        return [(name, bool(disabled)) for name, disabled in rows]

    def delete_account(self, username: str, now: float) -> None:
        db = self._write()
        rooms = db.execute(
            "SELECT c.key FROM participants AS p JOIN conversations AS c ON c.id = p.conversation "
            "WHERE p.username = %s AND c.is_room",
            (username,),
        ).fetchall()
        for (room,) in rooms:
            self.leave_room(room, username)
        direct = db.execute(
            "SELECT p.conversation, COALESCE(u.seq, 0) FROM participants AS p "
            "LEFT JOIN user_cursors AS u ON u.username = p.username "
            "AND u.conversation = p.conversation WHERE p.username = %s",
            (username,),
        ).fetchall()
        for conversation, seq in direct:
            # Their senders' stored bytes go down by what goes.
            for sender, size in db.execute(
                "DELETE FROM messages WHERE conversation = %s AND seq > %s AND recipient = %s "
                f"AND delivered_at IS NULL RETURNING sender, {_STORED_SIZE}",
                (conversation, seq, username),
            ).fetchall():
                self._charge(sender, -size)
        self._usage_unwritten.pop(username, None)  # (its row goes)
        for blocker in self.blockers_of(username):
            self._pass_blocked_runs(blocker)  # (its blocks end: see delete_block)
        for statement in (
            "DELETE FROM participants WHERE username = %(u)s",
            "DELETE FROM user_cursors WHERE username = %(u)s",
            "DELETE FROM sessions WHERE username = %(u)s",
            "DELETE FROM friendships WHERE username = %(u)s OR friend = %(u)s",
            "DELETE FROM invitations WHERE sender = %(u)s OR recipient = %(u)s",
            "DELETE FROM blocks WHERE username = %(u)s OR blocked = %(u)s",
            "DELETE FROM accounts WHERE username = %(u)s",
        ):
            db.execute(statement, {"u": username})
        db.execute(
            "INSERT INTO retired_names (username, retired_at) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING",
            (username, now),
        )

    # --- login sessions ----------------------------------------------------------------------

    def create_session(self, token_hash: bytes, username: str, now: float) -> None:
        db = self._write()
        cursor = db.execute(
            "INSERT INTO sessions (token_hash, username, created_at, last_used_at) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (token_hash, username, now, now),
        )
        if cursor.rowcount != 1:
            raise ValueError("a session with this token hash exists")
        db.execute(
            "INSERT INTO session_cursors (token_hash, conversation, seq) "
            "SELECT %s, conversation, seq FROM user_cursors WHERE username = %s",
            (token_hash, username),
        )

    def get_session(self, token_hash: bytes) -> LoginSession | None:
        row = (
            self._read()
            .execute(
                "SELECT username, created_at, last_used_at FROM sessions WHERE token_hash = %s",
                (token_hash,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return LoginSession(
            token_hash=token_hash, username=row[0], created_at=row[1], last_used_at=row[2]
        )

    def existing_sessions(self, token_hashes: list[bytes]) -> set[bytes]:
        rows = self._read().execute(
            "SELECT token_hash FROM sessions WHERE token_hash = ANY(%s)", (token_hashes,)
        )
        return {bytes(row[0]) for row in rows}

    def touch_session(self, token_hash: bytes, now: float) -> None:
        self._write().execute(
            "UPDATE sessions SET last_used_at = %s WHERE token_hash = %s", (now, token_hash)
        )

    def sessions_of(self, username: str) -> list[LoginSession]:
        rows = self._read().execute(
            "SELECT token_hash, created_at, last_used_at FROM sessions WHERE username = %s "
            "ORDER BY created_at DESC, token_hash DESC",
            (username,),
        )
        return [
            LoginSession(
                token_hash=bytes(row[0]), username=username, created_at=row[1], last_used_at=row[2]
            )
            for row in rows
        ]

    def delete_session(self, token_hash: bytes) -> None:
        self._write().execute("DELETE FROM sessions WHERE token_hash = %s", (token_hash,))

    def delete_sessions_unused_since(self, cutoff: float) -> int:
        cursor = self._write().execute("DELETE FROM sessions WHERE last_used_at < %s", (cutoff,))
        return cursor.rowcount

    def delete_sessions_created_before(self, cutoff: float) -> list[bytes]:
        rows = self._write().execute(
            "DELETE FROM sessions WHERE created_at < %s RETURNING token_hash", (cutoff,)
        )
        return [bytes(hashed) for (hashed,) in rows.fetchall()]

    # --- invitations, friends and blocks --------------------------------------------------------

    def add_invitation(self, sender: str, recipient: str, now: float) -> None:
        self._write().execute(
            "INSERT INTO invitations (sender, recipient, created_at) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            (sender, recipient, now),
        )

    def delete_invitation(self, sender: str, recipient: str) -> bool:
        cursor = self._write().execute(
            "DELETE FROM invitations WHERE sender = %s AND recipient = %s", (sender, recipient)
        )
        return cursor.rowcount == 1

    def has_invitation(self, sender: str, recipient: str) -> bool:
        return self._exists(
            "SELECT 1 FROM invitations WHERE sender = %s AND recipient = %s", sender, recipient
        )

    def incoming_invitations(self, username: str) -> list[str]:
        return self._names(
            'SELECT sender FROM invitations WHERE recipient = %s ORDER BY sender COLLATE "C"',
            username,
        )

    def outgoing_invitations(self, username: str) -> list[str]:
        return self._names(
            'SELECT recipient FROM invitations WHERE sender = %s ORDER BY recipient COLLATE "C"',
            username,
        )

    def add_friendship(self, a: str, b: str, now: float) -> None:
        with self._write().cursor() as cursor:
            cursor.executemany(
                "INSERT INTO friendships (username, friend, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [(a, b, now), (b, a, now)],
            )

    def delete_friendship(self, a: str, b: str) -> bool:
        cursor = self._write().execute(
            "DELETE FROM friendships WHERE (username = %s AND friend = %s) "
            "OR (username = %s AND friend = %s)",
            (a, b, b, a),
        )
        return cursor.rowcount > 0

    def are_friends(self, a: str, b: str) -> bool:
        return self._exists("SELECT 1 FROM friendships WHERE username = %s AND friend = %s", a, b)

    def friends_of(self, username: str) -> list[str]:
        return self._names(
            'SELECT friend FROM friendships WHERE username = %s ORDER BY friend COLLATE "C"',
            username,
        )

    def friends_of_many(self, usernames: list[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {name: [] for name in usernames}
        rows = self._read().execute(
            "SELECT username, friend FROM friendships WHERE username = ANY(%s) "
            'ORDER BY username, friend COLLATE "C"',
            (list(found),),
        )
        for username, friend in rows:
            found[username].append(friend)
        return found

    def add_block(self, username: str, blocked: str, now: float) -> bool:
        cursor = self._write().execute(
            "INSERT INTO blocks (username, blocked, created_at) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            (username, blocked, now),
        )
        return cursor.rowcount == 1

    def delete_block(self, username: str, blocked: str) -> bool:
        if not self.has_blocked(username, blocked):
            return False
        self._pass_blocked_runs(username)
        cursor = self._write().execute(
            "DELETE FROM blocks WHERE username = %s AND blocked = %s", (username, blocked)
        )
        return cursor.rowcount == 1

    def _pass_blocked_runs(self, username: str) -> None:
        db = self._write()
        db.execute(_PASS_BLOCKED_SESSIONS, {"user": username})
        db.execute(_PASS_BLOCKED_USER, {"user": username})

    def has_blocked(self, username: str, blocked: str) -> bool:
        return self._exists(
            "SELECT 1 FROM blocks WHERE username = %s AND blocked = %s", username, blocked
        )

    def blocked_by(self, username: str) -> list[str]:
        return self._names(
            'SELECT blocked FROM blocks WHERE username = %s ORDER BY blocked COLLATE "C"', username
        )

    def blockers_of(self, username: str) -> list[str]:
        return self._names(
            'SELECT username FROM blocks WHERE blocked = %s ORDER BY username COLLATE "C"', username
        )

    def _exists(self, sql: str, *args: object) -> bool:
        return self._read().execute(sql, args).fetchone() is not None

    def _names(self, sql: str, username: str) -> list[str]:
        return [name for (name,) in self._read().execute(sql, (username,))]

    # --- messages ------------------------------------------------------------------------------

    def add_message(self, message: ChatMessage, origin: bytes | None = None) -> StoredMessage:
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
        self, db: psycopg.Connection[Any], message: ChatMessage, origin: bytes | None
    ) -> StoredMessage:
        key = conversation_key(message.sender, message.to)
        sent_at = _to_micros(message.sent_at)
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

    def get_message(self, message_id: bytes) -> StoredMessage | None:
        row = (
            self._read()
            .execute(
                f"SELECT {_COLUMNS}, m.seq, m.delivered_at FROM messages AS m WHERE m.id = %s",
                (message_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return StoredMessage(message=_message(row[:5]), seq=row[5], delivered_at=row[6])

    def history(
        self, username: str, peer: str, limit: int, before: bytes | None = None
    ) -> list[ChatMessage]:
        if limit <= 0:
            return []
        key = conversation_key(username, peer)
        upper = (
            "AND m.seq < (SELECT b.seq FROM messages AS b WHERE b.id = %(before)s AND "
            "b.conversation = (SELECT id FROM conversations WHERE key = %(key)s)) "
            if before is not None
            else ""
        )
        args = {"user": username, "key": key, "limit": limit, "before": before}
        if is_room(key):
            sql = (
                f"SELECT {_COLUMNS} FROM messages AS m "
                "JOIN participants AS p ON p.conversation = m.conversation "
                "AND p.username = %(user)s "
                "WHERE m.conversation = (SELECT id FROM conversations WHERE key = %(key)s) "
                f"AND m.seq > p.floor_seq AND NOT {_FROM_BLOCKED} "
                f"{upper}ORDER BY m.seq DESC LIMIT %(limit)s"
            )
        else:
            sql = (
                f"SELECT {_COLUMNS} FROM messages AS m "
                "WHERE m.conversation = (SELECT id FROM conversations WHERE key = %(key)s) "
                f"{upper}ORDER BY m.seq DESC LIMIT %(limit)s"
            )
        rows = self._read().execute(sql, args).fetchall()
        return [_message(row) for row in reversed(rows)]

    def pending_deliveries(self, username: str, token_hash: bytes, limit: int) -> list[ChatMessage]:
        if limit <= 0:
            return []
        owner: bytes | str
        if self.get_session(token_hash) is not None:
            sql, owner = _PENDING_FOR_SESSION, token_hash
        else:
            sql, owner = _PENDING_FOR_USER, username
        rows = self._read().execute(
            sql, {"owner": owner, "user": username, "session": token_hash, "limit": limit}
        )
        return [_message(row) for row in rows]

    def acknowledge(
        self, username: str, token_hash: bytes, message_ids: Sequence[bytes], now: float
    ) -> list[Receipt]:
        return self.acknowledge_many([(username, token_hash, message_ids)], now)

    def acknowledge_many(
        self, acknowledgements: Sequence[Acknowledgement], now: float
    ) -> list[Receipt]:
        session_rows: list[tuple[bytes, int, int, bytes]] = []
        user_rows: list[tuple[str, int, int]] = []
        moved: list[dict[str, Any]] = []
        for username, token_hash, message_ids in acknowledgements:
            if not message_ids:
                continue
            rows = (
                self._read()
                .execute(
                    "SELECT m.conversation, MAX(m.seq), BOOL_AND(m.recipient NOT LIKE '#%%') "
                    "FROM messages AS m JOIN participants AS p "
                    "ON p.conversation = m.conversation AND p.username = %(user)s "
                    "WHERE m.id = ANY(%(ids)s) AND (m.sender <> %(user)s OR "
                    "(m.origin IS NOT NULL AND m.origin <> %(session)s)) "
                    "GROUP BY m.conversation",
                    {"user": username, "ids": list(message_ids), "session": token_hash},
                )
                .fetchall()
            )
            if not all(direct for _conversation, _seq, direct in rows):
                rows = self._past_blocked(username, rows)
            for conversation, seq, direct in rows:
                session_rows.append((token_hash, conversation, seq, token_hash))
                user_rows.append((username, conversation, seq))
                if direct:
                    moved.append(
                        {"user": username, "conversation": conversation, "seq": seq, "now": now}
                    )
        if not user_rows:
            return []
        db = self._write()
        receipts = [
            Receipt(
                message_id=bytes(message_id), sender=sender, recipient=row["user"], delivered_at=now
            )
            for row in moved
            for message_id, sender in db.execute(_MARK_DELIVERED, row).fetchall()
        ]
        with db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO session_cursors (token_hash, conversation, seq) "
                "SELECT %s, %s, %s WHERE EXISTS (SELECT 1 FROM sessions WHERE token_hash = %s) "
                "ON CONFLICT (token_hash, conversation) "
                "DO UPDATE SET seq = GREATEST(session_cursors.seq, EXCLUDED.seq)",
                session_rows,
            )
            cursor.executemany(
                "INSERT INTO user_cursors (username, conversation, seq) VALUES (%s, %s, %s) "
                "ON CONFLICT (username, conversation) "
                "DO UPDATE SET seq = GREATEST(user_cursors.seq, EXCLUDED.seq)",
                user_rows,
            )
        return receipts

    def _past_blocked(
        self, username: str, rows: list[tuple[int, int, bool]]
    ) -> list[tuple[int, int, bool]]:
        """Each room's acknowledged seq moved past the messages from users
        ``username`` blocks that directly follow it (see Store.acknowledge); one look
        at the blocks first: most users block nobody."""
        db = self._read()
        blocks = db.execute("SELECT 1 FROM blocks WHERE username = %s LIMIT 1", (username,))
        if blocks.fetchone() is None:
            return rows
        moved = []
        for conversation, acknowledged, direct in rows:
            seq = acknowledged
            if not direct:
                found = db.execute(
                    _PAST_BLOCKED, {"conversation": conversation, "seq": seq, "user": username}
                ).fetchone()
                if found is not None and found[0] is not None:
                    seq = found[0]
            moved.append((conversation, seq, direct))
        return moved

    # --- rooms -----------------------------------------------------------------------------------

    def join_room(self, room: str, username: str, now: float) -> bool:
        db = self._write()
        db.execute(
            "INSERT INTO conversations (key, is_room, created_at) VALUES (%s, TRUE, %s) "
            "ON CONFLICT (key) DO NOTHING",
            (room, now),
        )
        cursor = db.execute(
            "INSERT INTO participants (conversation, username, floor_seq, joined_at) "
            "SELECT id, %s, last_seq, %s FROM conversations WHERE key = %s "
            "ON CONFLICT DO NOTHING",
            (username, now, room),
        )
        return cursor.rowcount == 1

    def leave_room(self, room: str, username: str) -> bool:
        db = self._write()
        row = db.execute(
            "SELECT id FROM conversations WHERE key = %s AND is_room", (room,)
        ).fetchone()
        if row is None:
            return False
        (conversation,) = row
        cursor = db.execute(
            "DELETE FROM participants WHERE username = %s AND conversation = %s",
            (username, conversation),
        )
        if cursor.rowcount != 1:
            return False
        if not db.execute(
            "SELECT 1 FROM participants WHERE conversation = %s LIMIT 1", (conversation,)
        ).fetchone():
            for sender, size in db.execute(
                f"SELECT sender, SUM({_STORED_SIZE}) FROM messages WHERE conversation = %s "
                "GROUP BY sender",
                (conversation,),
            ).fetchall():
                self._charge(sender, -int(size))
            for table in ("session_cursors", "user_cursors", "messages"):
                # Our own table names, not input.
                db.execute(f"DELETE FROM {table} WHERE conversation = %s", (conversation,))
            db.execute("DELETE FROM conversations WHERE id = %s", (conversation,))
        return True

    def delete_delivered_before(self, cutoff: float, limit: int) -> int:
        db = self._write()
        cutoff_us = int(cutoff * 1e6)
        conversations = [
            c
            for (c,) in db.execute(
                "SELECT DISTINCT conversation FROM messages WHERE sent_at < %s", (cutoff_us,)
            ).fetchall()
        ]
        deleted = 0
        for conversation in conversations:
            if deleted >= limit:
                break
            stay: int | None = None
            for username, floor_seq, floor in db.execute(_FLOORS, (conversation,)).fetchall():
                found = db.execute(
                    "SELECT MIN(seq) FROM messages WHERE conversation = %s AND seq > %s "
                    "AND sender <> %s",
                    (conversation, max(floor, floor_seq), username),
                ).fetchone()
                first = None if found is None else found[0]
                if first is not None and (stay is None or first < stay):
                    stay = first
            bound = stay if stay is not None else (1 << 62)
            gone = db.execute(
                "WITH gone AS (DELETE FROM messages WHERE conversation = %s AND seq < %s "
                "AND sent_at < %s "
                "AND seq < (SELECT MIN(seq) FROM messages WHERE conversation = %s) + %s "
                f"RETURNING sender, {_STORED_SIZE} AS size) "
                "SELECT sender, SUM(size), COUNT(*) FROM gone GROUP BY sender",
                (conversation, bound, cutoff_us, conversation, limit - deleted),
            ).fetchall()
            for sender, size, count in gone:
                self._charge(sender, -int(size))
                deleted += count
        return deleted

    def count_waiting(self, username: str, limit: int) -> int:
        row = self._read().execute(_COUNT_WAITING, {"user": username, "limit": limit}).fetchone()
        return int(row[0]) if row is not None else 0

    def stored_bytes(self, username: str) -> int:
        row = (
            self._read()
            .execute("SELECT stored_bytes FROM accounts WHERE username = %s", (username,))
            .fetchone()
        )
        return 0 if row is None else int(row[0]) + self._usage_unwritten.get(username, 0)

    def room_exists(self, room: str) -> bool:
        return self._exists("SELECT 1 FROM conversations WHERE key = %s AND is_room", room)

    def room_members(self, room: str) -> list[str]:
        return self._names(
            "SELECT p.username FROM conversations AS c "
            "JOIN participants AS p ON p.conversation = c.id "
            'WHERE c.key = %s AND c.is_room ORDER BY p.username COLLATE "C"',
            room,
        )

    def rooms_of(self, username: str) -> list[tuple[str, int]]:
        rows = self._read().execute(
            "SELECT c.key, (SELECT COUNT(*) FROM participants AS q "
            "               WHERE q.conversation = c.id) "
            "FROM participants AS p JOIN conversations AS c ON c.id = p.conversation "
            'WHERE p.username = %s AND c.is_room ORDER BY c.key COLLATE "C"',
            (username,),
        )
        return [(name, int(count)) for name, count in rows]


def _message(row: Sequence[Any]) -> ChatMessage:
    return _chat_message((bytes(row[0]), row[1], row[2], row[3], row[4]))
