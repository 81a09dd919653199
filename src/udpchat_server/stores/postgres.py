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
  with its own messages (``batched.ADD_MESSAGES``).
* **Stored bytes**: the batch's changes are one statement at commit, the
  accounts locked in name order (``batched.ADD_USAGE``).
* **Round trips.** A node's batch costs a handful of round trips whatever its
  size: its messages are one statement (:meth:`PostgresStore.add_messages`, with
  the duplicate-id check folded in), its acknowledgements one
  (:meth:`~PostgresStore.acknowledge_many`), the refills one
  (:meth:`~PostgresStore.pending_deliveries_many`), and the commit one (the
  stored bytes and ``COMMIT`` in a pipeline). ``BEGIN``, ``SAVEPOINT`` and
  ``RELEASE`` wait to go out in the pipeline of the next statement. A batch whose
  only writes are its messages and the acknowledgements it carries (most of them
  at low load: a message or two) is one round trip
  (:meth:`PostgresStore.store_and_commit`). The statements are :mod:`.batched`'s;
  :attr:`PostgresStore.round_trips` counts.
* **Stored bytes** are read once a second at most per user
  (:data:`STORED_BYTES_TTL`; each commit brings the totals it changed back):
  the quota check of a send costs no round trip. A user sending through several
  nodes at once may pass the quota by what the others stored in that second.
* **Failures** with an outside cause (the server unreachable or shutting down, a
  full disk, too many connections) become ``StoreUnavailableError``; the store
  reconnects at the next batch.

Not thread-safe: use it from the server loop's thread.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, NoReturn, cast

import psycopg

from udpchat_proto import Acknowledgement, Receipt, StoredMessage, StoreUnavailableError
from udpchat_proto import messages as m
from udpchat_proto.chat import conversation_key, session_id, stored_size

from . import batched
from .base import Params, Rows, SchemaVersionError, SqlStore, store_methods, to_micros
from .derive import Migration, postgres_tables, upgrade
from .dialect import POSTGRES
from .schema import Column, Kind, Table

__all__ = [
    "CONNECT_TIMEOUT",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "STORED_BYTES_TTL",
    "PostgresStore",
    "unavailable",
]

#: Schema migrations, as for SQLite: ``MIGRATIONS[i]`` takes version ``i`` to ``i + 1``,
#: and a new table, column or index needs none (see :mod:`.derive`).
MIGRATIONS: tuple[Migration, ...] = (
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
    # 5: from here on, a new table, column or index is derived from the declaration
    # (as for SQLite's 10th): a release before this one would run on columns it
    # does not know. This number is its refusal.
    (),
    # 6: an encrypted message's record and device set move into its row (as
    # SQLite's 11th): copied from the two tables beside it, which go.
    (
        Table(
            "messages",
            (
                Column("sealed_bytes", Kind.INT, default=0),  # (derived after 5)
                Column("record", Kind.BYTES, null=True),
                Column("devices", Kind.BYTES, null=True),
            ),
        ),
        """UPDATE messages SET
               record = (SELECT c.record FROM message_ciphertexts AS c
                         WHERE c.message_id = messages.id),
               devices = (SELECT string_agg(d.device_id, ''::bytea ORDER BY d.device_id)
                          FROM message_devices AS d WHERE d.message_id = messages.id)
           WHERE id IN (SELECT message_id FROM message_ciphertexts)""",
        "DROP TABLE message_devices",
        "DROP TABLE message_ciphertexts",
    ),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)
CONNECT_TIMEOUT: Final = 5
"""Seconds to reach the database before a batch is answered unavailable."""

STORED_BYTES_TTL: Final = 1.0
"""Seconds a user's stored bytes, as read from the database, answer the quota check
(its own changes are counted at once; other nodes' within this long)."""
GENERIC_PLAN_ROWS: Final = 16
"""Most sessions whose pending deliveries are read in the generic plan of
:data:`.batched.PENDING_FEW` (made once, kept with the prepared statement; each
cursor read by its key, so the plan does not depend on the values) rather than in
one planned for the values, as the connection does otherwise
(``force_custom_plan``): planning took 0.75 of the 0.85 ms a read of one session
cost, on the other node of a cross-node message.

A batch's writes (:data:`.batched.ADD_MESSAGES`, :data:`.batched.ACKNOWLEDGE`)
are always planned for their values. Their generic plans saved the planning (1.2
of 1.5 ms for one message) on a fresh database, but once the tables had grown (the
latency window after `benchmarks/cluster.py`'s saturation phase) they cost far
more than they saved: PostgreSQL's single server went from p50 / p99 21 / 32 ms
after saturation to 6 / 20 ms without them (one run each, on the quiet machine)."""
_GENERIC_SESSION: Final = "SET plan_cache_mode = force_generic_plan"
_CUSTOM_SESSION: Final = "SET plan_cache_mode = force_custom_plan"
_RECENT_MAX = 8192
"""Most messages kept as the objects :meth:`PostgresStore.add_messages` was given."""
_BYTES_CACHED_MAX = 65_536
"""Most users whose stored bytes are remembered (about 100 bytes each)."""

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
        self._prelude: list[str] = []
        """``BEGIN``, ``SAVEPOINT`` and ``RELEASE`` not sent yet: they go out in the
        pipeline of the next statement (no round trip of their own)."""
        self._bytes_seen: dict[str, tuple[float, int]] = {}
        """Each user's stored bytes as last read or committed, and when (monotonic)."""
        self.round_trips = 0
        """Round trips to the database so far (a pipeline is one)."""
        self._recent: dict[bytes, m.ChatMessage] = {}
        """The messages this store stored lately, by id: a cluster's node reads each
        back for its recipients once the batch is durable, and a refill then builds
        no new ChatMessage (8 µs each) for them. Forgotten with a lost batch."""

    @classmethod
    def open(cls, dsn: str, *, schema: str | None = None) -> PostgresStore:
        """Connect, and create or migrate the schema.

        Raises:
            StoreUnavailableError: the database cannot be reached.
            SchemaVersionError: the database is newer than this release, or
                (:class:`~.derive.SchemaMismatchError`) its schema differs from the
                declared one in a way no addition fixes.
        """
        store = cls(dsn, schema=schema)
        try:
            store._migrate()
        except BaseException as exc:
            store.close()  # (a refused database too: its connection is not kept)
            failure = unavailable(exc) if isinstance(exc, psycopg.Error) else None
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
                "SET plan_cache_mode = 'force_custom_plan'; "
                # The batched statements look costly to the planner (a row per
                # session or message), and JIT compiling them took longer (40 ms)
                # than running them: a node's queries are short, never analytic.
                "SET jit = off"
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
            # However long a migration takes, it is done before the server answers
            # anyone, and the nodes starting with it wait for it (the connection's
            # own timeouts are for a batch).
            db.execute("SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0")
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
            # (After the lock: the catalogue as the node before this one left it.)
            upgrade(db.execute, lambda: postgres_tables(db), POSTGRES, MIGRATIONS[version:])
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))

    def _read(self) -> psycopg.Connection[Any]:
        """The connection for a read (inside the batch's transaction if one is open)."""
        if self._batch_lost is not None:
            raise self._batch_lost
        return self._connection()

    def _write(self) -> psycopg.Connection[Any]:
        """The connection, inside the batch's transaction (begun if needed) and the
        savepoint of the current atomic block if any (both sent with the next
        statement)."""
        if self._batch_lost is not None:
            raise self._batch_lost
        db = self._connection()
        if not self._in_batch:
            self._prelude.append("BEGIN")
            self._in_batch = True
        if self._atomic_wanted and not self._atomic_open:
            self._prelude.append("SAVEPOINT request")
            self._atomic_open = True
        return db

    def _pipeline(self, statements: Sequence[tuple[str, Params | None]]) -> list[Any]:
        """Run the prelude and ``statements`` in one round trip; their cursors."""
        db = self._connection()
        prelude, self._prelude = self._prelude, []
        self.round_trips += 1
        if not prelude and len(statements) == 1:
            statement, params = statements[0]
            return [db.execute(statement, params)]
        with db.pipeline():
            for text in prelude:
                db.execute(text)
            return [db.execute(statement, params) for statement, params in statements]

    def _batched(
        self,
        statement: str,
        params: Params,
        *,
        before: str | None = None,
        after: str | None = None,
    ) -> Any:
        """Run a batched ``statement`` (between ``before`` and
        ``after``, in one round trip), planned for its values (see
        :data:`GENERIC_PLAN_ROWS` for why not generic); its cursor."""
        statements: list[tuple[str, Params | None]] = [
            *([(before, None)] if before else []),
            (statement, params),
            *([(after, None)] if after else []),
        ]
        return self._pipeline(statements)[1 if before else 0]

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
            self._recent.clear()  # (and what it stored)
            if self._atomic_open and self._batch_lost is None:
                if "SAVEPOINT request" in self._prelude:
                    self._prelude.remove("SAVEPOINT request")  # (never sent)
                else:
                    try:
                        self._pipeline(
                            [
                                ("ROLLBACK TO SAVEPOINT request", None),
                                ("RELEASE SAVEPOINT request", None),
                            ]
                        )
                    except psycopg.Error as exc:
                        self._batch_lost = unavailable(exc) or StoreUnavailableError(
                            "rollback failed", str(exc)
                        )
            raise
        else:
            if self._atomic_open:
                if "SAVEPOINT request" in self._prelude:
                    self._prelude.remove("SAVEPOINT request")
                else:
                    # Sent with the next statement, or the commit.
                    self._prelude.append("RELEASE SAVEPOINT request")
        finally:
            self._atomic_wanted = False
            self._atomic_open = False

    def commit(self) -> None:
        """Commit the batch (its stored bytes and ``COMMIT``: one round trip).

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
            self._prelude = []
            return
        changed = {name: delta for name, delta in usage.items() if delta}
        statements: list[tuple[str, Params | None]] = []
        if changed:
            statements.append((batched.ADD_USAGE, (list(changed), list(changed.values()))))
        statements.append(("COMMIT", None))
        try:
            cursors = self._pipeline(statements)
            totals = cursors[0].fetchall() if changed else []
        except psycopg.Error as exc:
            raise self._commit_failed(exc) from exc
        now = time.monotonic()
        for name, total in totals:
            self._remember_bytes(name, now, int(total))

    @property
    def transaction_open(self) -> bool:
        """Whether the batch wrote anything yet (its transaction is begun)."""
        return self._in_batch or self._batch_lost is not None

    def store_and_commit(
        self,
        messages: Sequence[tuple[m.ChatMessage, bytes | None]],
        acknowledgements: Sequence[Acknowledgement],
        now: float,
    ) -> tuple[list[StoredMessage | None], list[Receipt] | None]:
        """A batch whose only writes are these messages and acknowledgements, in
        one round trip (``CommitsInOneTrip``): ``BEGIN``, the messages
        (:data:`.batched.ADD_MESSAGES`), the acknowledgements in a savepoint
        (:data:`.batched.ACKNOWLEDGE`), the stored bytes
        (:data:`.batched.ADD_STORED_USAGE`, which finds the messages stored from
        their rows: their seqs come back only with the whole pipeline) and
        ``COMMIT``, in the order of :meth:`commit`'s writes (the same locks in the
        same order as a batch stored step by step). Should the acknowledgements
        alone fail, they are undone and the rest commits in a second round trip.

        Raises:
            StoreUnavailableError: nothing was committed (``conflict``: lost a race
                with another node; the caller does it again).
            RuntimeError: a transaction is open (:attr:`transaction_open`).
        """
        if self.transaction_open:
            raise RuntimeError("store_and_commit needs a batch that wrote nothing yet")
        statements: list[tuple[str, Params | None]] = [("BEGIN", None)]
        if messages:
            statements.append((batched.ADD_MESSAGES, self._messages_params(messages)))
        acked = self._acknowledge_params(acknowledgements, now)
        if acked is not None:
            statements += [
                ("SAVEPOINT acknowledgements", None),
                (batched.ACKNOWLEDGE, acked),
                ("RELEASE SAVEPOINT acknowledgements", None),
            ]
        if messages:
            usage = {
                "ids": [message.id for message, _ in messages],
                "senders": [message.sender for message, _ in messages],
                "sizes": [stored_size(message.text) for message, _ in messages],
            }
            statements.append((batched.ADD_STORED_USAGE, usage))
        statements.append(("COMMIT", None))
        ack_at = 1 + bool(messages) + 1  # (BEGIN, the messages, the savepoint)
        self._prelude = []
        cursors: list[Any] = []
        try:
            db = self._connection()
            self.round_trips += 1
            with db.pipeline():
                cursors.extend(db.execute(text, params) for text, params in statements)
            acknowledged = acked is not None
        except psycopg.Error as exc:
            # Which statement failed: those before it have their results.
            failed = len([cursor for cursor in cursors if cursor.pgresult is not None])
            if acked is None or failed != ack_at:
                raise self._commit_failed(exc) from exc
            # The acknowledgements alone: undone, and the rest committed without them.
            rest = statements[ack_at + 2 :]
            try:
                self.round_trips += 1
                with db.pipeline():
                    db.execute("ROLLBACK TO SAVEPOINT acknowledgements")
                    db.execute("RELEASE SAVEPOINT acknowledgements")
                    cursors[ack_at + 2 :] = [db.execute(text, params) for text, params in rest]
            except psycopg.Error as again:
                raise self._commit_failed(again) from again
            acknowledged = False
        seqs: dict[int, int] = dict(cursors[1].fetchall()) if messages else {}
        receipts: list[Receipt] | None = None
        if acknowledged:
            receipts = self._receipts(cursors[ack_at], now)
        stored = self._note_stored(messages, seqs, charge=False)
        if messages:
            when = time.monotonic()
            for name, total in cursors[-2].fetchall():
                self._remember_bytes(name, when, int(total))
        return stored, receipts

    def _commit_failed(self, exc: psycopg.Error) -> StoreUnavailableError:
        """The batch discarded after its commit failed, and the error to raise."""
        self._discard()
        return unavailable(exc) or StoreUnavailableError("commit failed", str(exc))

    def _discard(self) -> None:
        self._prelude = []
        self._recent.clear()  # (what a lost batch stored is not stored)
        if self._db is None or self._db.closed:
            return
        try:
            self.round_trips += 1
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
        self._read()
        (cursor,) = self._pipeline([(POSTGRES.sql(statement), params)])
        return cast(Rows, cursor)

    def _execute(self, statement: str, params: Params = ()) -> Rows:
        self._write()
        (cursor,) = self._pipeline([(POSTGRES.sql(statement), params)])
        return cast(Rows, cursor)

    def _executemany(self, statement: str, rows: Iterable[Params]) -> None:
        db = self._write()
        prelude, self._prelude = self._prelude, []
        self.round_trips += 1
        with db.pipeline(), db.cursor() as cursor:
            for text in prelude:
                cursor.execute(text)
            cursor.executemany(POSTGRES.sql(statement), rows)

    def _select_in(
        self, statement: str, values: Sequence[Any], params: dict[str, Any]
    ) -> list[Any]:
        if not values:
            return []
        listed = POSTGRES.sql(statement).replace("{in}", "= ANY(%(in)s)")
        rows: list[Any] = self._select_raw(listed, params | {"in": list(values)}).fetchall()
        return rows

    def _select_raw(self, statement: str, params: Params) -> Any:
        """A read written in psycopg's style (not shared SQL)."""
        self._read()
        (cursor,) = self._pipeline([(statement, params)])
        return cursor

    def _select_binary(self, statement: str, params: Params, *, generic: bool = False) -> list[Any]:
        """A read written in psycopg's style, its rows in binary (no text to parse:
        for the many rows of a batched read); with ``generic``, in the statement's
        generic plan (the setting put back in the same round trip)."""
        self._read()
        db = self._connection()
        prelude, self._prelude = self._prelude, []
        self.round_trips += 1
        with db.cursor(binary=True) as cursor:
            if not prelude and not generic:
                cursor.execute(statement, params)
                return cursor.fetchall()
            with db.pipeline():
                for text in prelude:
                    db.execute(text)
                # Not SET LOCAL: a read between batches has no transaction. An
                # error skips the rest of the pipeline, but aborts its (implicit,
                # or the batch's) transaction, which undoes the SET: no later
                # statement is left in the generic plan.
                if generic:
                    db.execute(_GENERIC_SESSION)
                cursor.execute(statement, params)
                if generic:
                    db.execute(_CUSTOM_SESSION)
            return cursor.fetchall()

    # --- the stored bytes ---------------------------------------------------------------

    def _remember_bytes(self, username: str, when: float, total: int) -> None:
        if len(self._bytes_seen) >= _BYTES_CACHED_MAX:
            self._bytes_seen.clear()  # bounded; the busy ones come back
        self._bytes_seen[username] = (when, total)

    def stored_bytes(self, username: str) -> int:
        """What the stored messages ``username`` sent count against its quota: the
        counter as read at most :data:`STORED_BYTES_TTL` ago (or as this store's last
        commit left it), and what this batch changed of it."""
        now = time.monotonic()
        seen = self._bytes_seen.get(username)
        if seen is None or now - seen[0] > STORED_BYTES_TTL:
            row = self._select(
                "SELECT stored_bytes FROM accounts WHERE username = ?", (username,)
            ).fetchone()
            seen = (now, 0 if row is None else int(row[0]))
            self._remember_bytes(username, *seen)
        return seen[1] + self._usage_unwritten.get(username, 0)

    def _account_deleted(self, username: str) -> None:
        self._bytes_seen.pop(username, None)  # (its row goes)

    # --- messages ------------------------------------------------------------------------------

    def add_message(self, message: m.ChatMessage, origin: bytes | None = None) -> StoredMessage:
        """Append a message (:meth:`add_messages` of one).

        Raises:
            ValueError: a message with this id is already stored (nothing is kept).
        """
        (stored,) = self.add_messages([(message, origin)])
        if stored is None:
            raise ValueError("a message with this id is already stored")
        return stored

    def add_messages(
        self, messages: Sequence[tuple[m.ChatMessage, bytes | None]]
    ) -> list[StoredMessage | None]:
        """Append the messages in one statement (:data:`.batched.ADD_MESSAGES`), under
        a savepoint of its own: a deadlock with another node undoes it alone, and
        raises a conflict (the batch stands; the same call may be made again).

        Raises:
            StoreUnavailableError: its cause is outside; nothing of this call is kept.
        """
        if not messages:
            return []
        params = self._messages_params(messages)
        self._write()
        try:
            cursor = self._batched(
                batched.ADD_MESSAGES,
                params,
                before="SAVEPOINT messages",
                after="RELEASE SAVEPOINT messages",
            )
            seqs = dict(cursor.fetchall())
        except psycopg.Error as exc:
            failure = unavailable(exc)
            if failure is None or not failure.conflict:
                raise
            try:
                self._pipeline(
                    [
                        ("ROLLBACK TO SAVEPOINT messages", None),
                        ("RELEASE SAVEPOINT messages", None),
                    ]
                )
            except psycopg.Error:
                raise exc from None  # (the batch is lost: see _raise_translated)
            raise failure from exc
        return self._note_stored(messages, seqs, charge=True)

    @staticmethod
    def _messages_params(messages: Sequence[tuple[m.ChatMessage, bytes | None]]) -> Params:
        """:data:`.batched.ADD_MESSAGES`'s arrays."""
        return {
            "ids": [message.id for message, _ in messages],
            "keys": [conversation_key(message.sender, message.to) for message, _ in messages],
            "senders": [message.sender for message, _ in messages],
            "recipients": [message.to for message, _ in messages],
            "texts": [message.text for message, _ in messages],
            "sent": [to_micros(message.sent_at) for message, _ in messages],
            "origins": [origin for _, origin in messages],
        }

    def _note_stored(
        self,
        messages: Sequence[tuple[m.ChatMessage, bytes | None]],
        seqs: dict[int, int],
        *,
        charge: bool,
    ) -> list[StoredMessage | None]:
        """The stored messages (``seqs``: by place from 1, as ``ADD_MESSAGES``
        returns them), remembered as recent; with ``charge``, their sizes counted
        for the commit to write."""
        stored: list[StoredMessage | None] = []
        recent = self._recent
        for n, (message, _origin) in enumerate(messages, start=1):
            seq = seqs.get(n)
            if seq is None:
                stored.append(None)
                continue
            if charge:
                self._charge(message.sender, stored_size(message.text))
            stored.append(StoredMessage(message=message, seq=int(seq)))
            recent[message.id] = message
        while len(recent) > _RECENT_MAX:
            del recent[next(iter(recent))]  # the oldest
        return stored

    def _message(self, row: Sequence[Any]) -> m.ChatMessage:
        """A message row as a ChatMessage: the stored object if it is recent."""
        recent = self._recent.get(bytes(row[0]))
        return recent if recent is not None else super()._message(row)

    def pending_deliveries_many(
        self, sessions: Sequence[tuple[str, bytes, int]]
    ) -> list[list[m.ChatMessage]]:
        """Every session's pending deliveries in one query (:data:`.batched.PENDING`;
        for at most :data:`GENERIC_PLAN_ROWS` sessions :data:`.batched.PENDING_FEW`,
        in its generic plan)."""
        found: list[list[m.ChatMessage]] = [[] for _ in sessions]
        asked = [(n, s) for n, s in enumerate(sessions) if s[2] > 0]
        if not asked:
            return found
        # A few sessions (the news of a batch, its acknowledgements' refills): the
        # generic plan of the statement that reads each cursor by its key.
        few = len(asked) <= GENERIC_PLAN_ROWS
        rows = self._select_binary(
            batched.PENDING_FEW if few else batched.PENDING,
            {
                "users": [user for _, (user, _hashed, _limit) in asked],
                "sessions": [hashed for _, (_user, hashed, _limit) in asked],
                # (Each session's device: only what was stored for it is its to read.)
                "devices": [session_id(hashed) for _, (_user, hashed, _limit) in asked],
                "limits": [limit for _, (_user, _hashed, limit) in asked],
            },
            generic=few,
        )
        for row in rows:
            found[asked[row[0] - 1][0]].append(self._message(row[1:]))
        return found

    def acknowledge_many(
        self, acknowledgements: Sequence[Acknowledgement], now: float
    ) -> list[Receipt]:
        """Every session's acknowledgements in one statement
        (:data:`.batched.ACKNOWLEDGE`)."""
        params = self._acknowledge_params(acknowledgements, now)
        if params is None:
            return []
        self._write()
        return self._receipts(self._batched(batched.ACKNOWLEDGE, params), now)

    @staticmethod
    def _acknowledge_params(
        acknowledgements: Sequence[Acknowledgement], now: float
    ) -> Params | None:
        """:data:`.batched.ACKNOWLEDGE`'s arrays (None: no id to write)."""
        users: list[str] = []
        sessions: list[bytes] = []
        ids: list[bytes] = []
        for username, token_hash, message_ids in acknowledgements:
            for message_id in message_ids:
                users.append(username)
                sessions.append(token_hash)
                ids.append(message_id)
        if not ids:
            return None
        return {"users": users, "sessions": sessions, "ids": ids, "now": now}

    @staticmethod
    def _receipts(cursor: Any, now: float) -> list[Receipt]:
        """The receipts :data:`.batched.ACKNOWLEDGE` returned."""
        return [
            Receipt(
                message_id=bytes(message_id), sender=sender, recipient=recipient, delivered_at=now
            )
            for message_id, sender, recipient in cursor.fetchall()
        ]
