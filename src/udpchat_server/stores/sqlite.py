"""The durable :class:`~udpchat_proto.chat.store.Store`: SQLite, from the standard library.

Open one with :meth:`SQLiteStore.open` (creates the file and the schema if
missing, migrates an older schema). It follows the contract of
:mod:`udpchat_proto.chat.store` exactly, and the contract tests run against it,
the PostgreSQL store and :class:`~udpchat_proto.chat.memory_store.MemoryStore`
alike. Most of its methods are :class:`~.base.SqlStore`'s, the SQL it shares
with PostgreSQL; here is what SQLite does its own way: the connection and its
transaction, errors, files, erasure, migrations, and ``add_message`` (with the
caches that make a message to a known conversation one INSERT).

Transactions
    The connection runs with ``isolation_level=None`` so that Python never opens
    or commits a transaction behind our back. The first write after a commit
    issues ``BEGIN IMMEDIATE`` (taking the write lock at once, so a concurrent
    reader can never make our transaction fail half-way with ``SQLITE_BUSY`` on
    lock upgrade); every later write joins it; :meth:`SQLiteStore.commit` ends it.
    Reads on the same connection see the uncommitted writes. :meth:`close`
    without a commit rolls them back.

Durability
    WAL journal mode (readers never block the writer) with ``synchronous=FULL``:
    in WAL mode, ``NORMAL`` syncs only at checkpoints, so a power cut could lose
    transactions that had already been committed, and acknowledged to senders.
    ``FULL`` syncs the WAL at every commit. That one fsync per commit is what the
    server's group commit amortises over a batch of datagrams.

Representation
    The tables are :mod:`.tables`'s (message ids and token hashes are BLOBs,
    ``sent_at`` INTEGER microseconds, every other time REAL POSIX seconds). Each
    message is stored once, in its conversation (a room's message is never copied
    per member); ``position`` (the rowid) is the global insertion order. Delivery
    is a set of cursors, see :mod:`udpchat_proto.chat.store` (a session copies the
    user's cursors when it is created).

Failures
    SQLite's errors for causes outside the server's control (``SQLITE_FULL``,
    ``SQLITE_IOERR``, ``SQLITE_READONLY``, ``SQLITE_CANTOPEN``, ``SQLITE_BUSY``,
    ``SQLITE_LOCKED``, ``SQLITE_NOMEM``) come out of every method as
    :class:`~udpchat_proto.chat.store.StoreUnavailableError`. SQLite may answer such an
    error by rolling back the whole transaction, not just the statement; the store
    notices (its transaction is gone), refuses every further write of the batch
    rather than let them start a new transaction that would commit without the
    lost ones, and :meth:`SQLiteStore.commit` then raises. So a batch is committed
    whole or not at all, and the server acknowledges nothing of a lost one.

Files
    The database holds password hashes, session token hashes and messages: it is
    created mode 0600 (SQLite gives its ``-wal`` and ``-shm`` files the database's
    mode), and an existing one readable by others is narrowed to 0600 at open.

Erasure
    What is deleted is gone from the files, not only from the tables: the
    connection runs with ``secure_delete`` (SQLite overwrites deleted content and
    freed pages with zeros), and a commit that deleted an account or replaced a
    password is followed by a ``wal_checkpoint(TRUNCATE)``, since the ``-wal``
    still holds the pages as they were before. That is rare, so it costs the hot
    path nothing; a checkpoint that cannot finish (a reader holds the WAL) is
    tried again after the next commit.

Schema versions
    ``PRAGMA user_version`` holds the number of :data:`MIGRATIONS` applied. Opening
    a store applies the missing ones in order, then adds what :mod:`.tables`
    declares and the database lacks (a table, a column, an index: see
    :mod:`.derive`), in one transaction, so a database is always at one version or
    the next, never in between. A database from a newer release is refused
    (:class:`SchemaVersionError`, or :class:`~.derive.SchemaMismatchError` for a
    column a newer release derived). A test holds the schema so built to the one
    :mod:`.tables` declares.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from udpchat_proto import StoredMessage, StoreUnavailableError
from udpchat_proto import messages as m
from udpchat_proto.chat import conversation_key, is_room, stored_size
from udpchat_proto.e2ee import EncryptedMessage, KeyShare

from .base import Params, Rows, SchemaVersionError, SqlStore, store_methods, to_micros
from .derive import Migration, sqlite_tables, upgrade
from .dialect import SQLITE
from .records import pack, pack_devices, sealed_size_of
from .schema import Column, Kind, Table

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLiteStore",
    "SchemaVersionError",
    "unavailable",
]

#: How long a statement waits for another process's lock before failing.
BUSY_TIMEOUT_MS = 5000

#: Schema migrations: ``MIGRATIONS[i]`` takes a database from version ``i`` to
#: ``i + 1``. Append only: a released migration is never edited. A new table,
#: column or index needs none: it is derived from :mod:`.tables` (see
#: :mod:`.derive`, which also says when a step is a :class:`~.schema.Table`).
MIGRATIONS: tuple[Migration, ...] = (
    # 1: accounts, login sessions, invitations and friendships.
    (
        """CREATE TABLE accounts (
            username TEXT PRIMARY KEY,
            password TEXT NOT NULL,          -- PasswordHash.to_string()
            created_at REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE sessions (
            token_hash BLOB PRIMARY KEY,     -- SHA-256 of the token, never the token
            username TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_used_at REAL NOT NULL
        ) WITHOUT ROWID""",
        # Expiry scans by last use.
        "CREATE INDEX sessions_by_last_use ON sessions (last_used_at)",
        """CREATE TABLE invitations (
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (sender, recipient)
        ) WITHOUT ROWID""",
        "CREATE INDEX invitations_by_recipient ON invitations (recipient, sender)",
        # Two rows per friendship, one each way: "friends of" is a primary-key
        # prefix scan from either side.
        """CREATE TABLE friendships (
            username TEXT NOT NULL,
            friend TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (username, friend)
        ) WITHOUT ROWID""",
    ),
    # 2: conversations, messages and delivery cursors.
    (
        # A room, or a direct conversation keyed "alice bob" (see conversation_key).
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            is_room INTEGER NOT NULL,
            last_seq INTEGER NOT NULL DEFAULT 0,   -- the seq of its last message
            created_at REAL NOT NULL
        )""",
        # UNIQUE (conversation, seq) is the index of history and of pending
        # deliveries; UNIQUE id is the index of get_message and acknowledge.
        """CREATE TABLE messages (
            position INTEGER PRIMARY KEY,          -- global insertion order
            id BLOB NOT NULL UNIQUE,
            conversation INTEGER NOT NULL REFERENCES conversations (id),
            seq INTEGER NOT NULL,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            text TEXT NOT NULL,
            sent_at INTEGER NOT NULL,              -- microseconds since the epoch, UTC
            UNIQUE (conversation, seq)
        )""",
        # Who receives a conversation: both users of a direct one, the current
        # members of a room. A member receives the messages after floor_seq (the
        # room's last seq when they joined; 0 in a direct conversation).
        """CREATE TABLE participants (
            conversation INTEGER NOT NULL REFERENCES conversations (id),
            username TEXT NOT NULL,
            floor_seq INTEGER NOT NULL,
            joined_at REAL NOT NULL,
            PRIMARY KEY (conversation, username)
        ) WITHOUT ROWID""",
        "CREATE INDEX participants_by_user ON participants (username, conversation)",
        # The highest seq each login session acknowledged in each conversation.
        """CREATE TABLE session_cursors (
            token_hash BLOB NOT NULL REFERENCES sessions (token_hash) ON DELETE CASCADE,
            conversation INTEGER NOT NULL REFERENCES conversations (id),
            seq INTEGER NOT NULL,
            PRIMARY KEY (token_hash, conversation)
        ) WITHOUT ROWID""",
        # The highest seq any session of the user acknowledged: where a new
        # session starts. Kept when sessions end.
        """CREATE TABLE user_cursors (
            username TEXT NOT NULL,
            conversation INTEGER NOT NULL REFERENCES conversations (id),
            seq INTEGER NOT NULL,
            PRIMARY KEY (username, conversation)
        ) WITHOUT ROWID""",
    ),
    # 3: a user's sessions, newest first (the cap on sessions per user evicts the
    # oldest; a user lists them).
    ("CREATE INDEX sessions_by_user ON sessions (username, created_at)",),
    # 4: deleting a room deletes the cursors into it, and retention finds old
    # messages by time: without these, each scanned a whole table.
    (
        "CREATE INDEX session_cursors_by_conversation ON session_cursors (conversation)",
        "CREATE INDEX user_cursors_by_conversation ON user_cursors (conversation)",
        "CREATE INDEX messages_by_time ON messages (sent_at)",
    ),
    # 5: who blocks whom (looked up from both sides).
    (
        """CREATE TABLE blocks (
            username TEXT NOT NULL,          -- who blocks
            blocked TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (username, blocked)
        ) WITHOUT ROWID""",
        "CREATE INDEX blocks_by_blocked ON blocks (blocked, username)",
    ),
    # 6: a message's origin (the sender's other sessions receive it), when a direct
    # message was delivered (its status), and the names of deleted accounts.
    (
        "ALTER TABLE messages ADD COLUMN origin BLOB",  # the sending session's token hash
        "ALTER TABLE messages ADD COLUMN delivered_at REAL",
        # What was delivered before this version: known to be, not when (its
        # sending time stands in).
        """UPDATE messages SET delivered_at = sent_at / 1e6
           WHERE recipient NOT LIKE '#%' AND seq <= COALESCE(
               (SELECT u.seq FROM user_cursors AS u
                WHERE u.username = messages.recipient AND u.conversation = messages.conversation),
               0)""",
        """CREATE TABLE retired_names (
            username TEXT PRIMARY KEY,
            retired_at REAL NOT NULL
        ) WITHOUT ROWID""",
    ),
    # 7: accounts the operator disabled (udpchat-server ctl disable).
    ("ALTER TABLE accounts ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0",),
    # 8: each account's stored bytes, the counter of its storage quota (see
    # Store.stored_bytes), counted once from what is stored: each message its UTF-8
    # text plus 160 (MESSAGE_OVERHEAD when this was written).
    (
        "ALTER TABLE accounts ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0",
        """UPDATE accounts SET stored_bytes = s.total
           FROM (SELECT sender, SUM(length(CAST(text AS BLOB)) + 160) AS total
                 FROM messages GROUP BY sender) AS s
           WHERE s.sender = accounts.username""",
    ),
    # 9: end-to-end encryption (issue 26): devices' keys, one-time keys claimed
    # once, and each encrypted message's record, devices and key shares.
    (
        """CREATE TABLE device_keys (
            token_hash BLOB PRIMARY KEY REFERENCES sessions (token_hash) ON DELETE CASCADE,
            device_id BLOB NOT NULL UNIQUE,
            username TEXT NOT NULL,
            record BLOB NOT NULL,
            created_at REAL NOT NULL,
            fallback BLOB,
            fallback_used INTEGER NOT NULL DEFAULT 0
            ) WITHOUT ROWID""",
        "CREATE INDEX device_keys_by_user ON device_keys (username, created_at)",
        """CREATE TABLE one_time_keys (
            device_id BLOB NOT NULL REFERENCES device_keys (device_id) ON DELETE CASCADE,
            key_id TEXT NOT NULL,
            record BLOB NOT NULL,
            PRIMARY KEY (device_id, key_id)
            ) WITHOUT ROWID""",
        """CREATE TABLE message_ciphertexts (
            message_id BLOB PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
            record BLOB NOT NULL
            ) WITHOUT ROWID""",
        """CREATE TABLE message_devices (
            message_id BLOB NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            device_id BLOB NOT NULL,
            PRIMARY KEY (message_id, device_id)
            ) WITHOUT ROWID""",
        """CREATE TABLE message_key_shares (
            message_id BLOB NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
            device_id BLOB NOT NULL,
            number INTEGER NOT NULL,
            record BLOB NOT NULL,
            PRIMARY KEY (message_id, device_id, number)
            ) WITHOUT ROWID""",
    ),
    # 10: from here on, a new table, column or index is derived from the declaration
    # when the store opens, with no migration and no new version. A release before
    # this one does not compare the schema with its declaration: it would run on
    # columns it does not know. This number is its refusal.
    (),
    # 11: an encrypted message's record and device set move into its row (a send
    # is one INSERT, as a text's): copied from the two tables beside it, which go.
    # The device set is the ids end to end (records.pack_devices); group_concat
    # joins BLOBs byte for byte in a UTF-8 database (udpchat's, SQLite's default).
    (
        Table(
            "messages",
            (
                Column("sealed_bytes", Kind.INT, default=0),  # (derived by 10's successors)
                Column("record", Kind.BYTES, null=True),
                Column("devices", Kind.BYTES, null=True),
            ),
        ),
        """UPDATE messages SET
               record = (SELECT c.record FROM message_ciphertexts AS c
                         WHERE c.message_id = messages.id),
               devices = (SELECT CAST(group_concat(d.device_id, '') AS BLOB)
                          FROM (SELECT device_id FROM message_devices
                                WHERE message_id = messages.id ORDER BY device_id) AS d)
           WHERE id IN (SELECT message_id FROM message_ciphertexts)""",
        "DROP TABLE message_devices",
        "DROP TABLE message_ciphertexts",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

#: Most values in one "IN (...)" (SQLite allows 32766 parameters).
_IN_CHUNK = 500
#: Most conversations add_message remembers (about 150 bytes each).
_CONVERSATIONS_MAX = 65_536
#: Most messages kept as the objects add_message was given, so that reading them
#: back (a delivery window's refill) builds and validates no new ChatMessage.
_RECENT_MAX = 8192
_ADD_USAGE = "UPDATE accounts SET stored_bytes = stored_bytes + ? WHERE username = ?"

_Sealed = tuple[int, bytes | None, bytes | None]
"""What an encrypted message stores in its row besides a text's: its sealed bytes
(the quota's charge), its record and its device set (``records``)."""
_PLAIN: _Sealed = (0, None, None)
_INSERT_TEXT = (
    "INSERT INTO messages (id, conversation, seq, sender, recipient, text, sent_at, origin) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SEALED = (
    "INSERT INTO messages (id, conversation, seq, sender, recipient, text, sent_at, origin, "
    "sealed_bytes, record, devices) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

log = logging.getLogger(__name__)

# ``bytes`` parameters bound through the adapter registry. CPython 3.11's sqlite3
# binds int, float, str and bytearray at once, but looks for an adapter for every
# ``bytes`` first: a miss in the registry, then ``__adapt__`` on the protocol and
# ``__conform__`` on the value, each failed lookup building an AttributeError.
# With this identity adapter the registry answers at once, with the same object,
# which binds as a BLOB exactly as before: 3,400 instructions less a relayed text
# message, 6,200 an encrypted one (PERFORMANCE.md, "The record in the message's
# row"). Process-wide, and harmless for any other
# ``sqlite3`` user: a ``bytes`` value binds as the same BLOB either way (only an
# exact ``bytes`` is looked up; registering it does not turn on the adapting of
# int, float or str, as registering one of those would).
sqlite3.register_adapter(bytes, bytes)

#: SQLite's primary result codes for failures outside the server's control, and
#: how a person would name them.
_UNAVAILABLE_CODES = {
    5: "database locked by another process",  # SQLITE_BUSY
    6: "database locked",  # SQLITE_LOCKED
    7: "out of memory",  # SQLITE_NOMEM
    8: "database is read-only",  # SQLITE_READONLY
    10: "disk I/O error",  # SQLITE_IOERR
    13: "disk full",  # SQLITE_FULL
    14: "cannot open the database files",  # SQLITE_CANTOPEN
}
_SQLITE_IOERR = 10
_SQLITE_CANTOPEN = 14
#: Free bytes below which an I/O error is taken for a full disk.
_NEARLY_FULL = 1024 * 1024


def unavailable(exc: Exception, database: str = "") -> StoreUnavailableError | None:
    """The :class:`StoreUnavailableError` for an SQLite error with an outside cause
    (disk full, I/O error ...), or None for any other error (a bug, or not SQLite's).

    SQLite often reports a full disk as an I/O error (the ``-shm`` file cannot
    grow, a write fails): when the ``database`` file's filesystem has (almost) no
    room left, the reason says "disk full", the cause an operator must act on.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return None
    reason = _UNAVAILABLE_CODES.get(code & 0xFF)
    if reason is None:
        return None
    if code & 0xFF in (_SQLITE_IOERR, _SQLITE_CANTOPEN) and _nearly_full(database):
        reason = "disk full"
    name = getattr(exc, "sqlite_errorname", "")
    return StoreUnavailableError(reason, f"{exc}; {name}" if name else str(exc))


def _nearly_full(database: str) -> bool:
    if not database:
        return False
    try:
        stats = os.statvfs(Path(database).parent)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL


def _private_file(path: Path) -> None:
    """Create the database file 0600, or narrow an existing one (and its -wal and
    -shm) to 0600: it holds password hashes, token hashes and messages."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        return
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = file.stat().st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISREG(mode) and mode & 0o077:
            os.chmod(file, 0o600)
            log.warning("%s was readable by others (mode %o): narrowed to 0600", file, mode & 0o777)


@store_methods
class SQLiteStore(SqlStore):
    """A :class:`~udpchat_proto.chat.store.Store` in one SQLite database.

    Not thread-safe: use it from the thread that created it (the server loop).
    It can also be used as a context manager, which closes it (discarding what
    was not committed).
    """

    DRIVER_ERROR = sqlite3.Error

    def __init__(self, connection: sqlite3.Connection) -> None:
        """Take over ``connection``: configure it and bring its schema up to date.

        The store switches the connection to ``isolation_level=None`` (it manages
        transactions itself) and sets WAL, ``synchronous=FULL``, foreign keys and
        a busy timeout.

        Raises:
            ValueError: the connection has a transaction open.
            SchemaVersionError: the database is newer than this release, or
                (:class:`~.derive.SchemaMismatchError`) its schema differs from the
                declared one in a way no addition fixes.
        """
        if connection.in_transaction:
            raise ValueError("hand over a connection with no open transaction")
        self._atomic_wanted = False
        self._atomic_open = False
        self._batch_open = False
        """Whether this batch began a transaction (and so must still be in it)."""
        self._conversations: dict[str, tuple[int, int]] = {}
        """Conversation id and last seq by key, as add_message left them in this
        transaction: a message to a known conversation is one INSERT. Forgotten
        whenever a write is undone (see _forget_uncommitted)."""
        self._seqs_unwritten: dict[int, int] = {}
        """The last seqs add_message gave and conversations.last_seq does not hold
        yet: written before COMMIT, before an atomic block and before a read of
        last_seq (one statement a batch, not one a message)."""
        self._usage_unwritten: dict[str, int] = {}
        """What this transaction added to (or took from) each sender's stored bytes
        and accounts.stored_bytes does not hold yet: written before COMMIT and before
        an atomic block, as the seqs are (one statement a batch, not one a message;
        a failed block forgets only its own)."""
        self._recent: dict[bytes, tuple[m.ChatMessage, int, int, bytes | None]] = {}
        """The last messages stored, by id, with their conversation id, seq and
        origin (forgotten when a write is undone)."""
        self._batch_lost: StoreUnavailableError | None = None
        """Why the batch's transaction was lost, until commit() reports it."""
        self._erase_wal = False
        """Whether the WAL holds a deleted account's or an old password's pages:
        checkpointed away after the commit (see Erasure)."""
        connection.isolation_level = None
        self._db = connection
        self._file = ""
        """The database file ("" in memory), to tell a full disk from other errors."""
        try:
            self._file = connection.execute("PRAGMA database_list").fetchone()[2] or ""
            # These pragmas are no-ops inside a transaction, hence before any BEGIN.
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            connection.execute("PRAGMA secure_delete = ON")  # (see Erasure)
            self._migrate()
        except sqlite3.Error as exc:
            failure = unavailable(exc, self._file)
            if failure is None:
                raise
            raise failure from exc

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SQLiteStore:
        """Open (or create, mode 0600) the database at ``path`` and return a store on it.

        The schema is created or migrated, and the database is written once (its
        schema version), so that a disk that cannot take a write is found now.

        Raises:
            StoreUnavailableError: the disk is full, unwritable, or the files cannot
                be opened (the reason names which).
            sqlite3.Error: the file is not a database.
            OSError: the file cannot be created.
            SchemaVersionError: the database is newer than this release, or
                (:class:`~.derive.SchemaMismatchError`) its schema differs from the
                declared one in a way no addition fixes.
        """
        if os.fspath(path) != ":memory:":
            _private_file(Path(path))
        try:
            connection = sqlite3.connect(os.fspath(path), isolation_level=None)
        except sqlite3.Error as exc:
            failure = unavailable(exc, os.fspath(path))
            if failure is None:
                raise
            raise failure from exc
        try:
            return cls(connection)
        except BaseException:
            connection.close()
            raise

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection (for inspection and tests; do not write)."""
        return self._db

    def _migrate(self) -> None:
        db = self._db
        # IMMEDIATE: two processes opening an old database at once migrate it once.
        db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"database schema version {version} is newer than this release "
                    f"supports ({SCHEMA_VERSION})"
                )
            upgrade(db.execute, lambda: sqlite_tables(db), SQLITE, MIGRATIONS[version:])
            # Written even when unchanged: a disk that cannot take a write fails
            # the start, with its cause, instead of the first request.
            # PRAGMA cannot take parameters; the value is our own integer.
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            db.execute("COMMIT")
        except BaseException:
            # A failure such as SQLITE_FULL may already have ended the transaction:
            # a ROLLBACK then would hide the real cause behind "no transaction".
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def _check_transaction(self, cause: StoreUnavailableError | None = None) -> None:
        """After an error: if SQLite rolled the batch's transaction back, remember
        it (and why), so that the batch is refused whole (see Failures above)."""
        if self._batch_open and self._batch_lost is None and not self._db.in_transaction:
            self._forget_uncommitted()
            self._batch_lost = cause or StoreUnavailableError(
                "transaction lost", "SQLite rolled back the batch after an error"
            )

    def _write(self) -> sqlite3.Connection:
        """The connection, inside the current write transaction (begun if needed),
        and inside the savepoint of the current :meth:`atomic` block if any.

        Raises:
            StoreUnavailableError: the batch's transaction was lost.
        """
        self._check_transaction()
        if self._batch_lost is not None:
            raise self._batch_lost
        if self._db.in_transaction and not self._batch_open:
            # What a failed batch left behind (its ROLLBACK failed too): never
            # let the new batch commit it.
            self._discard()
            if self._db.in_transaction:
                raise StoreUnavailableError("transaction stuck", "cannot roll back a failed batch")
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._batch_open = True
        if self._atomic_wanted and not self._atomic_open:
            self._db.execute("SAVEPOINT request")
            self._atomic_open = True
        return self._db

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Run a block whose writes all happen or none do (a SQL ``SAVEPOINT``).

        The savepoint is taken at the block's first write, so a read-only block
        costs nothing. If the block raises, its writes are rolled back and the
        batch's earlier writes are kept.
        """
        if self._atomic_wanted:
            raise RuntimeError("atomic() blocks do not nest")
        # What the batch's earlier writes left unwritten (the seqs add_message gave,
        # the stored bytes), as it stands before the block: put back and written
        # if the block fails. They used to be written here, at every block's start,
        # which cost each encrypted send (a block of its own) two more statements;
        # most blocks succeed, and the commit writes them once.
        seqs, usage = dict(self._seqs_unwritten), dict(self._usage_unwritten)
        self._atomic_wanted = True
        try:
            yield
        except BaseException:
            # (An error that already aborted the whole transaction left nothing
            # to roll back to: _check_transaction notes the batch as lost.)
            self._check_transaction()
            # What the block stored may be remembered: forget it all (the cached
            # conversations and seqs come back from the table) ...
            self._forget_uncommitted()
            if self._atomic_open and self._batch_lost is None:
                try:
                    self._db.execute("ROLLBACK TO request")
                    self._db.execute("RELEASE request")
                except sqlite3.Error as exc:
                    # Without the undo the batch holds half a request: lose it all.
                    self._batch_lost = unavailable(exc, self._file) or StoreUnavailableError(
                        "rollback failed", str(exc)
                    )
            # ... except what came before the block: written now, outside it, so
            # that the table has the seqs the forgotten cache held.
            self._atomic_wanted = self._atomic_open = False
            self._keep_unwritten(seqs, usage)
            raise
        else:
            if self._atomic_open:
                try:
                    self._db.execute("RELEASE request")
                except sqlite3.Error as exc:
                    self._raise_translated(exc)
        finally:
            self._atomic_wanted = False
            self._atomic_open = False

    # --- transactions ------------------------------------------------------------

    def commit(self) -> None:
        """Make every write since the last commit durable (fsynced) at once.

        Raises:
            StoreUnavailableError: the batch was lost or its COMMIT failed (disk
                full, I/O error ...). Every write since the last commit is then
                discarded, and the next write begins a new batch.
        """
        self._check_transaction()
        lost, self._batch_lost = self._batch_lost, None
        self._batch_open = False
        if lost is not None:
            self._discard()
            raise lost
        if not self._db.in_transaction:
            return
        try:
            if self._seqs_unwritten:
                self._db.executemany(
                    "UPDATE conversations SET last_seq = ? WHERE id = ?",
                    [(seq, conversation) for conversation, seq in self._seqs_unwritten.items()],
                )
                self._seqs_unwritten.clear()
            if self._usage_unwritten:
                self._db.executemany(_ADD_USAGE, self._usage_rows())
                self._usage_unwritten.clear()
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._discard()
            raise unavailable(exc, self._file) or StoreUnavailableError(
                "commit failed", str(exc)
            ) from exc
        if self._erase_wal:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and empty it (see Erasure). The commit
        is done: a failure here only defers the erasure to the next commit."""
        db = self._db
        # Never wait for a reader here (the loop would stall): busy now, next time.
        db.execute("PRAGMA busy_timeout = 0")
        try:
            busy, _frames, _copied = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("cannot checkpoint the WAL after a deletion (tried again later): %s", exc)
            return
        finally:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        self._erase_wal = bool(busy)

    def _keep_unwritten(self, seqs: dict[int, int], usage: dict[str, int]) -> None:
        """Write ``seqs`` and ``usage`` (what the batch had left unwritten before a
        failed atomic block), unless the batch is lost anyway; a failure to write
        them loses the batch (its seqs would be wrong)."""
        if self._batch_lost is not None:
            return
        self._seqs_unwritten, self._usage_unwritten = seqs, usage
        try:
            self._write_seqs()
            self._write_usage()
        except StoreUnavailableError as exc:
            self._forget_uncommitted()
            self._batch_lost = exc
        except sqlite3.Error as exc:  # (a bug: still, the batch's seqs are not kept)
            self._forget_uncommitted()
            self._batch_lost = StoreUnavailableError("writing the batch's seqs failed", str(exc))

    def _forget_uncommitted(self) -> None:
        """Drop what is remembered of the transaction's writes (it was undone)."""
        self._recent.clear()
        self._conversations.clear()
        self._seqs_unwritten.clear()
        self._usage_unwritten.clear()

    def _usage_rows(self) -> list[tuple[int, str]]:
        return [(delta, name) for name, delta in self._usage_unwritten.items() if delta]

    def _write_usage(self) -> None:
        """Write the stored bytes the transaction changed into accounts.stored_bytes.

        Raises:
            StoreUnavailableError: the write failed for an outside cause.
        """
        if not self._usage_unwritten:
            return
        try:
            self._write().executemany(_ADD_USAGE, self._usage_rows())
        except sqlite3.Error as exc:
            self._raise_translated(exc)
        self._usage_unwritten.clear()

    def _write_seqs(self) -> None:
        """Write the last seqs add_message gave into conversations.last_seq.

        Raises:
            StoreUnavailableError: the write failed for an outside cause.
        """
        if not self._seqs_unwritten:
            return
        rows = [(seq, conversation) for conversation, seq in self._seqs_unwritten.items()]
        try:
            self._write().executemany("UPDATE conversations SET last_seq = ? WHERE id = ?", rows)
        except sqlite3.Error as exc:
            self._raise_translated(exc)
        self._seqs_unwritten.clear()

    def _raise_translated(self, exc: Exception) -> NoReturn:
        """Raise ``exc`` as a StoreUnavailableError if its cause is outside (noting
        first whether it cost the batch its transaction); else as it is (a bug)."""
        failure = unavailable(exc, self._file)
        self._check_transaction(failure)
        if failure is None:
            raise exc
        raise failure from exc

    def _discard(self) -> None:
        """Roll back whatever is left of a failed batch (it may already be gone)."""
        self._forget_uncommitted()
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def rollback(self) -> None:
        """Discard every write since the last commit (not part of the Store protocol)."""
        self._batch_open = False
        self._batch_lost = None
        self._forget_uncommitted()
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def backup(self, dest: Path) -> None:
        """Copy what is committed to a new database at ``dest`` (SQLite's online
        backup, in one step: a consistent copy). Call it between batches.

        Raises:
            StoreUnavailableError: a batch is open, or the copy failed (nothing is
                left at ``dest``).
        """
        if self._db.in_transaction:
            raise StoreUnavailableError("busy", "a batch is open: back up between batches")
        try:
            # A new file of our own, 0600 from the start (it holds what the database
            # holds), renamed into place once whole; never someone else's file.
            fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        except OSError as exc:
            raise StoreUnavailableError("backup failed", str(exc)) from None
        os.close(fd)
        partial = Path(name)
        try:
            with contextlib.closing(sqlite3.connect(partial)) as target:
                self._db.backup(target)
            _fsync(partial)
            os.link(partial, dest)  # (fails if dest appeared meanwhile: never replaced)
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise StoreUnavailableError("backup failed", str(exc)) from None
        finally:
            partial.unlink(missing_ok=True)

    def close(self) -> None:
        """Discard uncommitted writes and close the connection."""
        self._batch_open = False
        self._batch_lost = None
        self._discard()
        self._db.close()

    # --- statements, and what the shared methods leave to SQLite ------------------

    def _select(self, statement: str, params: Params = ()) -> Rows:
        return self._db.execute(SQLITE.sql(statement), params)

    def _execute(self, statement: str, params: Params = ()) -> Rows:
        return self._write().execute(SQLITE.sql(statement), params)

    def _executemany(self, statement: str, rows: Iterable[Params]) -> None:
        self._write().executemany(SQLITE.sql(statement), rows)

    def _select_in(
        self, statement: str, values: Sequence[Any], params: dict[str, Any]
    ) -> list[Any]:
        # One statement per chunk, not one per value (SQLite allows 32766 parameters).
        shared = SQLITE.sql(statement)
        rows: list[Any] = []
        for start in range(0, len(values), _IN_CHUNK):
            chunk = {f"in{n}": value for n, value in enumerate(values[start : start + _IN_CHUNK])}
            listed = shared.replace("{in}", f"IN ({', '.join(':' + name for name in chunk)})")
            rows.extend(self._db.execute(listed, params | chunk))
        return rows

    def _erasing(self) -> None:
        self._erase_wal = True  # (see Erasure)

    def _forget_conversation(self, key: str, conversation: int) -> None:
        self._conversations.pop(key, None)
        self._seqs_unwritten.pop(conversation, None)

    # --- messages -------------------------------------------------------------------

    def add_message(self, message: m.ChatMessage, origin: bytes | None = None) -> StoredMessage:
        """Append a message to the conversation of ``(message.sender, message.to)``,
        sent from the login session ``origin`` (see Store).

        The first message between two users creates their conversation, from
        which both then receive. A message to a room that was never joined creates
        the room, with no members.

        Raises:
            ValueError: a message with this id is already stored (nothing of
                this one is kept).
        """
        return self._add_message(message, origin, _PLAIN)

    def add_encrypted_message(
        self,
        message: m.ChatMessage,
        origin: bytes | None,
        ciphertext: EncryptedMessage,
        devices: Sequence[bytes],
        key_shares: Sequence[tuple[bytes, KeyShare]],
        *,
        sealed_bytes: int | None = None,
    ) -> StoredMessage:
        """The row with its record, device set and sealed bytes in one INSERT, as a
        text's (and the shares, if any, beside it). The record and the devices
        are packed before anything is written; the INSERT is the one statement
        that can refuse the id, with nothing of the message kept. Only shares
        come after it: their failure (a full disk, an I/O error) loses the batch,
        so no row is ever committed without them (no savepoint, which would cost
        two statements a send)."""
        sealed = (
            sealed_size_of(ciphertext, key_shares, sealed_bytes),
            pack(ciphertext),
            pack_devices(devices),
        )
        stored = self._add_message(message, origin, sealed)  # ValueError: nothing kept
        try:
            self._charge(ciphertext.sender, sealed[0])
            if key_shares:
                self._db.executemany(
                    "INSERT INTO message_key_shares (message_id, device_id, number, record) "
                    "VALUES (?, ?, ?, ?)",
                    [
                        (message.id, device_id, number, pack(share))
                        for number, (device_id, share) in enumerate(key_shares)
                    ],
                )
        except BaseException as exc:
            self._lose_batch(exc)
            raise
        return stored

    def _lose_batch(self, exc: BaseException) -> None:
        """A write failed half-way outside any savepoint: the batch is lost whole
        (its commit says so), since what is written of it is not all of it."""
        self._check_transaction()
        if self._batch_lost is None:
            self._forget_uncommitted()
            cause = unavailable(exc, self._file) if isinstance(exc, sqlite3.Error) else None
            self._batch_lost = cause or StoreUnavailableError(
                "a write failed half-way", f"{type(exc).__name__}: {exc}"
            )

    def _add_message(
        self, message: m.ChatMessage, origin: bytes | None, sealed: _Sealed
    ) -> StoredMessage:
        """add_message, with what an encrypted one stores in its row."""
        self._write()  # (inside the batch's transaction)
        key = conversation_key(message.sender, message.to)
        sent_at = to_micros(message.sent_at)
        known = self._conversations.get(key)
        if known is not None:
            # A conversation this transaction knows: its next seq, one INSERT.
            conversation, seq = known[0], known[1] + 1
            self._insert_message(message, conversation, seq, sent_at, origin, sealed=sealed)
            self._seqs_unwritten[conversation] = seq
        else:
            conversation, seq = self._first_message(message, key, sent_at, origin, sealed)
        self._conversations[key] = (conversation, seq)
        self._charge(message.sender, stored_size(message.text))
        recent = self._recent
        recent[message.id] = (message, conversation, seq, origin)
        if len(recent) > _RECENT_MAX:
            del recent[next(iter(recent))]  # the oldest
        return StoredMessage(message=message, seq=seq)

    def _first_message(
        self,
        message: m.ChatMessage,
        key: str,
        sent_at: int,
        origin: bytes | None,
        sealed: _Sealed,
    ) -> tuple[int, int]:
        """add_message for a conversation not remembered: from the table (creating
        the conversation if needed); its (id, seq)."""
        db = self._write()
        self._write_seqs()  # so that last_seq is current for the increment below
        if len(self._conversations) >= _CONVERSATIONS_MAX:
            self._conversations.clear()  # bounded; the busy ones come back
        created = db.execute(
            "INSERT INTO conversations (key, is_room, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO NOTHING",
            (key, is_room(key), sent_at / 1e6),
        ).rowcount
        conversation, seq = db.execute(
            "UPDATE conversations SET last_seq = last_seq + 1 WHERE key = ? RETURNING id, last_seq",
            (key,),
        ).fetchone()
        if created and not is_room(key):
            db.executemany(
                "INSERT INTO participants (conversation, username, floor_seq, joined_at) "
                "VALUES (?, ?, 0, ?) ON CONFLICT DO NOTHING",
                [(conversation, user, sent_at / 1e6) for user in (message.sender, message.to)],
            )
        try:
            self._insert_message(message, conversation, seq, sent_at, origin, sealed=sealed)
        except ValueError:
            # A refused message leaves nothing: no seq gap, no conversation it made
            # (a send runs without a savepoint to undo it).
            if created:
                db.execute("DELETE FROM participants WHERE conversation = ?", (conversation,))
                db.execute("DELETE FROM conversations WHERE id = ?", (conversation,))
            else:
                db.execute(
                    "UPDATE conversations SET last_seq = last_seq - 1 WHERE id = ?",
                    (conversation,),
                )
            raise
        return conversation, seq

    def _insert_message(
        self,
        message: m.ChatMessage,
        conversation: int,
        seq: int,
        sent_at: int,
        origin: bytes | None,
        *,
        sealed: _Sealed,
    ) -> None:
        columns = (message.id, conversation, seq, message.sender, message.to, message.text)
        try:
            if sealed is _PLAIN:
                # A text's row leaves the record and devices out (NULL) rather than
                # binding None for them: sqlite3 looks for an adapter for every None
                # (two failed lookups, 7,000 instructions a message).
                self._db.execute(_INSERT_TEXT, (*columns, sent_at, origin))
            else:
                self._db.execute(_INSERT_SEALED, (*columns, sent_at, origin, *sealed))
        except sqlite3.IntegrityError as exc:
            if "messages.id" in str(exc):
                # A known id (the unique index says so, with no lookup on the way in).
                raise ValueError("a message with this id is already stored") from None
            # The remembered conversation or seq is not the table's: only another
            # writer of the database could do that (the server must be its only
            # one). Forget them; the error is the caller's (an internal error).
            self._conversations.pop(conversation_key(message.sender, message.to), None)
            raise

    def _message(self, row: Sequence[Any]) -> m.ChatMessage:
        """A message row as a ChatMessage: the stored object if it is recent."""
        recent = self._recent.get(row[0])
        return recent[0] if recent is not None else super()._message(row)

    def _highest_acknowledged(
        self, username: str, token_hash: bytes, message_ids: Sequence[bytes]
    ) -> tuple[dict[int, int], set[int]]:
        """The shared lookup, for the ids that are not recent direct messages: those
        this session could have been delivered are known already."""
        highest: dict[int, int] = {}
        direct: set[int] = set()
        ids = []
        for message_id in message_ids:
            entry = self._recent.get(message_id)
            if entry is None or is_room(entry[0].to):
                ids.append(message_id)  # looked up below
            elif entry[0].to == username or (
                entry[0].sender == username and entry[3] is not None and entry[3] != token_hash
            ):
                # A recent direct message for this session: its conversation and
                # seq are known (the query would find no more).
                _, conversation, seq, _origin = entry
                direct.add(conversation)
                if highest.get(conversation, 0) < seq:
                    highest[conversation] = seq
        found, found_direct = super()._highest_acknowledged(username, token_hash, ids)
        for conversation, seq in found.items():
            if highest.get(conversation, 0) < seq:
                highest[conversation] = seq
        return highest, direct | found_direct


def _fsync(path: Path) -> None:
    """Make a file's content durable (before it is linked into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
