"""The durable :class:`~udpchat_proto.chat.store.Store`: SQLite, from the standard library.

Open one with :meth:`SQLiteStore.open` (creates the file and the schema if
missing, migrates an older schema). It follows the contract of
:mod:`udpchat_proto.chat.store` exactly, and the contract tests run against it and
against :class:`~udpchat_proto.chat.memory_store.MemoryStore` alike.

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
    Message ids and token hashes are BLOBs; ``sent_at`` is INTEGER microseconds
    since the POSIX epoch (UTC), which round-trips a ``datetime`` exactly; every
    other time (``created_at``, ``last_used_at``) is REAL POSIX seconds, as the
    :class:`~udpchat_proto.chat.store.Store` API passes them. Passwords are stored as
    :meth:`PasswordHash.to_string` text. Each message is stored once, in its
    conversation (a room's message is never copied per member); ``position`` (an
    ``INTEGER PRIMARY KEY``) is the global insertion order. Delivery is a set of
    cursors, see :mod:`udpchat_proto.chat.store` and :mod:`udpchat_proto.chat.memory_store`
    (a session copies the user's cursors when it is created).

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
    a store applies the missing ones in order, in one transaction, so a database is
    always at one version or the next, never in between. A database from a newer
    release is refused (:class:`SchemaVersionError`).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

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

__all__ = ["BUSY_TIMEOUT_MS", "MIGRATIONS", "SQLiteStore", "SchemaVersionError"]

#: How long a statement waits for another process's lock before failing.
BUSY_TIMEOUT_MS = 5000

#: Schema migrations: ``MIGRATIONS[i]`` takes a database from version ``i`` to
#: ``i + 1``. Append only: a released migration is never edited.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
)

SCHEMA_VERSION = len(MIGRATIONS)

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)

_MESSAGE_COLUMNS = "m.id, m.sender, m.recipient, m.text, m.sent_at"
#: What a messages row counts against its sender's quota (stored_size, in SQL).
_STORED_SIZE = f"length(CAST(text AS BLOB)) + {MESSAGE_OVERHEAD:d}"

# Whether :user blocks the sender of room message m: a member is delivered nothing
# from those it blocks (a direct message needs no look: a block ends a friendship).
_FROM_BLOCKED = (
    "(m.recipient LIKE '#%' AND EXISTS "
    "(SELECT 1 FROM blocks AS b WHERE b.username = :user AND b.blocked = m.sender))"
)
# The delivery query. For each conversation of the user, the start is the higher
# of the member's floor and the cursor; the (conversation, seq) index then yields
# only the messages past it, which are merged by global position. The cursor comes
# from session_cursors, or from user_cursors for an unknown session.
_PENDING = f"""
    SELECT {_MESSAGE_COLUMNS}
    FROM participants AS p
    JOIN messages AS m
      ON m.conversation = p.conversation
     AND m.seq > MAX(p.floor_seq, COALESCE(
            (SELECT c.seq FROM {{cursors}} AS c
             WHERE c.{{owner}} = :owner AND c.conversation = p.conversation), 0))
    WHERE p.username = :user
      AND (m.sender != :user OR (m.origin IS NOT NULL AND m.origin != :session))
      AND NOT {_FROM_BLOCKED}
    ORDER BY m.position
    LIMIT :limit
"""
_PENDING_FOR_SESSION = _PENDING.format(cursors="session_cursors", owner="token_hash")
# What waits for a user in direct conversations (rooms are stored once for all
# their members and are not a recipient's backlog), counted up to a limit.
_COUNT_WAITING = """
    SELECT COUNT(*) FROM (
        SELECT 1 FROM participants AS p
        JOIN conversations AS c ON c.id = p.conversation AND NOT c.is_room
        JOIN messages AS m
          ON m.conversation = p.conversation
         AND m.seq > COALESCE((SELECT u.seq FROM user_cursors AS u
                               WHERE u.username = :user AND u.conversation = p.conversation), 0)
        WHERE p.username = :user AND m.sender != :user
        LIMIT :limit)
"""

#: Message ids looked up in one statement by :meth:`SQLiteStore.acknowledge`.
_ACK_CHUNK = 500
#: Most values in one "IN (...)" (SQLite allows 32766 parameters).
_IN_CHUNK = 500
#: Most conversations add_message remembers (about 150 bytes each).
_CONVERSATIONS_MAX = 65_536
#: Most messages kept as the objects add_message was given, so that reading them
#: back (a delivery window's refill) builds and validates no new ChatMessage.
_RECENT_MAX = 8192

# Retention. Per conversation: each participant's delivered floor is the lowest of
# its user cursor and its sessions' cursors (0 for none). The first message that
# must stay is, over the participants, the first one past their floor (and past
# where they joined) that they did not send; everything older may go. (Their own
# messages do not wait for their other sessions: the sending session never
# acknowledges its own, so its floor would hold every conversation it ends.)
_FLOORS = """
    SELECT p.username, p.floor_seq, MIN(
        COALESCE((SELECT u.seq FROM user_cursors AS u
                  WHERE u.username = p.username AND u.conversation = p.conversation), 0),
        COALESCE((SELECT MIN(COALESCE(c.seq, 0)) FROM sessions AS s
                  LEFT JOIN session_cursors AS c
                    ON c.token_hash = s.token_hash AND c.conversation = p.conversation
                  WHERE s.username = p.username), 1 << 62))
    FROM participants AS p WHERE p.conversation = ?
"""
_FIRST_UNDELIVERED = (
    "SELECT MIN(seq) FROM messages WHERE conversation = ? AND seq > ? AND sender != ?"
)
_PENDING_FOR_USER = _PENDING.format(cursors="user_cursors", owner="username")


def _past_blocked(conversation: str, seq: str) -> str:
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
          1 << 62)
"""


_PAST_BLOCKED = _past_blocked(":conversation", ":seq")
# Before a block of :user's ends: each room cursor of the user's (every session's,
# then the user's own) passes the run of blocked messages that directly follows it
# or the member's floor (see Store.delete_block).
_START = "MAX(p.floor_seq, COALESCE(c.seq, 0))"
_PASS_BLOCKED_SESSIONS = f"""
    INSERT INTO session_cursors (token_hash, conversation, seq)
    SELECT token_hash, conversation, passed FROM (
        SELECT s.token_hash, p.conversation, ({_past_blocked("p.conversation", _START)}) AS passed
        FROM sessions AS s
        JOIN participants AS p ON p.username = s.username
        JOIN conversations AS r ON r.id = p.conversation AND r.is_room
        LEFT JOIN session_cursors AS c
          ON c.token_hash = s.token_hash AND c.conversation = p.conversation
        WHERE s.username = :user)
    WHERE passed IS NOT NULL
    ON CONFLICT (token_hash, conversation)
    DO UPDATE SET seq = MAX(session_cursors.seq, excluded.seq)
"""
_PASS_BLOCKED_USER = f"""
    INSERT INTO user_cursors (username, conversation, seq)
    SELECT username, conversation, passed FROM (
        SELECT p.username, p.conversation, ({_past_blocked("p.conversation", _START)}) AS passed
        FROM participants AS p
        JOIN conversations AS r ON r.id = p.conversation AND r.is_room
        LEFT JOIN user_cursors AS c ON c.username = p.username AND c.conversation = p.conversation
        WHERE p.username = :user)
    WHERE passed IS NOT NULL
    ON CONFLICT (username, conversation) DO UPDATE SET seq = MAX(user_cursors.seq, excluded.seq)
"""
_ADD_USAGE = "UPDATE accounts SET stored_bytes = stored_bytes + ? WHERE username = ?"
# Delivery status: the direct messages to :user between its user cursor (every one
# before it was delivered) and the seq just acknowledged, marked delivered now.
_MARK_DELIVERED = """
    UPDATE messages SET delivered_at = :now
    WHERE conversation = :conversation AND seq <= :seq
      AND seq > COALESCE((SELECT u.seq FROM user_cursors AS u
                          WHERE u.username = :user AND u.conversation = :conversation), 0)
      AND recipient = :user AND delivered_at IS NULL
    RETURNING id, sender
"""


log = logging.getLogger(__name__)

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


class SchemaVersionError(RuntimeError):
    """The database was written by a newer release (its schema version is unknown)."""


def unavailable(exc: sqlite3.Error, database: str = "") -> StoreUnavailableError | None:
    """The :class:`StoreUnavailableError` for an SQLite error with an outside cause
    (disk full, I/O error ...), or None for any other error (a bug).

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


def _translated(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn SQLite's outside-cause errors into StoreUnavailableError, noting first
    whether the error cost the batch its transaction."""

    def translated(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            self._raise_translated(exc)

    return functools.update_wrapper(translated, method)


def _translate_store_methods(cls: type[SQLiteStore]) -> type[SQLiteStore]:
    for name in STORE_READS | STORE_WRITES:
        setattr(cls, name, _translated(getattr(cls, name)))
    return cls


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


def _to_micros(when: datetime.datetime) -> int:
    return (when - _EPOCH) // _MICROSECOND


def _from_micros(micros: int) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(microseconds=micros)


def _chat_message(row: sqlite3.Row | tuple[bytes, str, str, str, int]) -> ChatMessage:
    message_id, sender, to, text, sent_at = row
    return ChatMessage(
        id=message_id, sender=sender, to=to, text=text, sent_at=_from_micros(sent_at)
    )


@_translate_store_methods
class SQLiteStore:
    """A :class:`~udpchat_proto.chat.store.Store` in one SQLite database.

    Not thread-safe: use it from the thread that created it (the server loop).
    It can also be used as a context manager, which closes it (discarding what
    was not committed).
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        """Take over ``connection``: configure it and bring its schema up to date.

        The store switches the connection to ``isolation_level=None`` (it manages
        transactions itself) and sets WAL, ``synchronous=FULL``, foreign keys and
        a busy timeout.

        Raises:
            ValueError: the connection has a transaction open.
            SchemaVersionError: the database is newer than this release.
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
        self._recent: dict[bytes, tuple[ChatMessage, int, int, bytes | None]] = {}
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
            SchemaVersionError: the database is newer than this release.
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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number]:
                    db.execute(statement)
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
        # Outside the savepoint: a failed block cannot undo them.
        self._write_seqs()
        self._write_usage()
        self._atomic_wanted = True
        try:
            yield
        except BaseException:
            # (An error that already aborted the whole transaction left nothing
            # to roll back to: _check_transaction notes the batch as lost.)
            self._check_transaction()
            # What the block stored may be remembered; what came before it was
            # written when the block began, so forgetting everything loses nothing.
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

    def _forget_uncommitted(self) -> None:
        """Drop what is remembered of the transaction's writes (it was undone)."""
        self._recent.clear()
        self._conversations.clear()
        self._seqs_unwritten.clear()
        self._usage_unwritten.clear()

    def _charge(self, sender: str, size: int) -> None:
        """Add ``size`` (negative: a deletion) to ``sender``'s stored bytes, written
        with the batch."""
        self._usage_unwritten[sender] = self._usage_unwritten.get(sender, 0) + size

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

    def _raise_translated(self, exc: sqlite3.Error) -> NoReturn:
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

    # --- accounts ----------------------------------------------------------------

    def create_account(self, username: str, password: PasswordHash, now: float) -> bool:
        """Create an account; False (and no change) if the name is taken or retired."""
        cursor = self._write().execute(
            "INSERT INTO accounts (username, password, created_at) "
            "SELECT ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM retired_names WHERE username = ?) "
            "ON CONFLICT (username) DO NOTHING",
            (username, password.to_string(), now, username),
        )
        return cursor.rowcount == 1

    def set_password(self, username: str, password: PasswordHash) -> bool:
        """Replace the password record of an account; False if there is none. The
        old record leaves the files too (see Erasure)."""
        self._erase_wal = True
        cursor = self._write().execute(
            "UPDATE accounts SET password = ? WHERE username = ?",
            (password.to_string(), username),
        )
        return cursor.rowcount == 1

    def get_account(self, username: str) -> Account | None:
        """The account of ``username``, or None."""
        row = self._db.execute(
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
        """Disable (or enable) an account; False if there is none."""
        cursor = self._write().execute(
            "UPDATE accounts SET disabled = ? WHERE username = ?", (int(disabled), username)
        )
        return cursor.rowcount == 1

    def accounts(self) -> list[tuple[str, bool]]:
        """Every account's name and whether it is disabled, sorted by name."""
        rows = self._db.execute("SELECT username, disabled FROM accounts ORDER BY username")
        return [(name, bool(disabled)) for name, disabled in rows]

    def delete_account(self, username: str, now: float) -> None:
        """Delete the account and what is only its; retire the name (see Store).

        Index lookups only: the user's own rows, and per direct conversation of
        theirs the messages past their cursor (all before it were delivered). The
        rows leave the files too (see Erasure)."""
        db = self._write()
        self._erase_wal = True
        for (room,) in db.execute(
            "SELECT c.key FROM participants AS p JOIN conversations AS c ON c.id = p.conversation "
            "WHERE p.username = ? AND c.is_room",
            (username,),
        ).fetchall():
            self.leave_room(room, username)
        direct = db.execute(
            "SELECT p.conversation, COALESCE(u.seq, 0) FROM participants AS p "
            "LEFT JOIN user_cursors AS u ON u.username = p.username "
            "AND u.conversation = p.conversation WHERE p.username = ?",
            (username,),
        ).fetchall()
        for conversation, seq in direct:
            # Their senders' stored bytes go down by what goes.
            for sender, size in db.execute(
                "DELETE FROM messages WHERE conversation = ? AND seq > ? AND recipient = ? "
                f"AND delivered_at IS NULL RETURNING sender, {_STORED_SIZE}",
                (conversation, seq, username),
            ).fetchall():
                self._charge(sender, -size)
        self._usage_unwritten.pop(username, None)  # (its row goes)
        for blocker in self.blockers_of(username):
            self._pass_blocked_runs(blocker)  # (its blocks end: see delete_block)
        for statement in (
            "DELETE FROM participants WHERE username = ?",
            "DELETE FROM user_cursors WHERE username = ?",
            "DELETE FROM sessions WHERE username = ?",  # their cursors: ON DELETE CASCADE
            # The other side's rows first, found from this side's (the key's prefix).
            "DELETE FROM friendships WHERE username IN "
            "(SELECT friend FROM friendships WHERE username = ?1) AND friend = ?1",
            "DELETE FROM friendships WHERE username = ?",
            "DELETE FROM invitations WHERE sender = ?",
            "DELETE FROM invitations WHERE recipient = ?",
            "DELETE FROM blocks WHERE username = ?",
            "DELETE FROM blocks WHERE blocked = ?",
            "DELETE FROM accounts WHERE username = ?",
        ):
            db.execute(statement, (username,))
        db.execute(
            "INSERT INTO retired_names (username, retired_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (username, now),
        )

    # --- login sessions ------------------------------------------------------------

    def create_session(self, token_hash: bytes, username: str, now: float) -> None:
        """Record a new login session, starting at the user's delivery cursors.

        Raises:
            ValueError: a session with this token hash exists.
        """
        db = self._write()
        try:
            db.execute(
                "INSERT INTO sessions (token_hash, username, created_at, last_used_at) "
                "VALUES (?, ?, ?, ?)",
                (token_hash, username, now, now),
            )
        except sqlite3.IntegrityError:
            # Only this statement failed; the transaction goes on.
            raise ValueError("a session with this token hash exists") from None
        db.execute(
            "INSERT INTO session_cursors (token_hash, conversation, seq) "
            "SELECT ?, conversation, seq FROM user_cursors WHERE username = ?",
            (token_hash, username),
        )

    def get_session(self, token_hash: bytes) -> LoginSession | None:
        """The login session with this token hash, or None."""
        row = self._db.execute(
            "SELECT username, created_at, last_used_at FROM sessions WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        return LoginSession(
            token_hash=token_hash, username=row[0], created_at=row[1], last_used_at=row[2]
        )

    def existing_sessions(self, token_hashes: list[bytes]) -> set[bytes]:
        """Those of ``token_hashes`` that are sessions still."""
        found: set[bytes] = set()
        for start in range(0, len(token_hashes), _IN_CHUNK):
            chunk = token_hashes[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT token_hash FROM sessions WHERE token_hash IN ({marks})", chunk
            )
            found.update(bytes(row[0]) for row in rows)
        return found

    def touch_session(self, token_hash: bytes, now: float) -> None:
        """Note that the session was used at ``now``; an unknown session is ignored."""
        self._write().execute(
            "UPDATE sessions SET last_used_at = ? WHERE token_hash = ?", (now, token_hash)
        )

    def sessions_of(self, username: str) -> list[LoginSession]:
        """The login sessions of ``username``, newest (by creation) first."""
        rows = self._db.execute(
            "SELECT token_hash, created_at, last_used_at FROM sessions WHERE username = ? "
            "ORDER BY created_at DESC, token_hash DESC",
            (username,),
        )
        return [
            LoginSession(
                token_hash=row[0], username=username, created_at=row[1], last_used_at=row[2]
            )
            for row in rows
        ]

    def delete_session(self, token_hash: bytes) -> None:
        """End a login session and forget its delivery cursors (the user's stay)."""
        # session_cursors go with it: ON DELETE CASCADE.
        self._write().execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    def delete_sessions_unused_since(self, cutoff: float) -> int:
        """Expire every session last used before ``cutoff``; return how many."""
        cursor = self._write().execute("DELETE FROM sessions WHERE last_used_at < ?", (cutoff,))
        return cursor.rowcount

    def delete_sessions_created_before(self, cutoff: float) -> list[bytes]:
        """End every session created before ``cutoff``; return their token hashes.

        A scan of the sessions, once per sweep (an hour)."""
        rows = self._write().execute(
            "DELETE FROM sessions WHERE created_at < ? RETURNING token_hash", (cutoff,)
        )
        return [bytes(hashed) for (hashed,) in rows.fetchall()]

    # --- invitations and friends ------------------------------------------------------

    def add_invitation(self, sender: str, recipient: str, now: float) -> None:
        """Record that ``sender`` invited ``recipient`` (a repeat keeps the first)."""
        self._write().execute(
            "INSERT INTO invitations (sender, recipient, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (sender, recipient, now),
        )

    def delete_invitation(self, sender: str, recipient: str) -> bool:
        """Remove that invitation; False if there was none."""
        cursor = self._write().execute(
            "DELETE FROM invitations WHERE sender = ? AND recipient = ?", (sender, recipient)
        )
        return cursor.rowcount == 1

    def has_invitation(self, sender: str, recipient: str) -> bool:
        """Whether ``sender`` has a pending invitation to ``recipient``."""
        row = self._db.execute(
            "SELECT 1 FROM invitations WHERE sender = ? AND recipient = ?", (sender, recipient)
        ).fetchone()
        return row is not None

    def incoming_invitations(self, username: str) -> list[str]:
        """Who has invited ``username`` (sorted)."""
        rows = self._db.execute(
            "SELECT sender FROM invitations WHERE recipient = ? ORDER BY sender", (username,)
        )
        return [name for (name,) in rows]

    def outgoing_invitations(self, username: str) -> list[str]:
        """Whom ``username`` has invited (sorted)."""
        rows = self._db.execute(
            "SELECT recipient FROM invitations WHERE sender = ? ORDER BY recipient", (username,)
        )
        return [name for (name,) in rows]

    def add_friendship(self, a: str, b: str, now: float) -> None:
        """Make ``a`` and ``b`` friends (symmetric; a repeat changes nothing)."""
        self._write().executemany(
            "INSERT INTO friendships (username, friend, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            [(a, b, now), (b, a, now)],
        )

    def delete_friendship(self, a: str, b: str) -> bool:
        """End the friendship; False if they were not friends."""
        cursor = self._write().execute(
            "DELETE FROM friendships WHERE (username = ? AND friend = ?) "
            "OR (username = ? AND friend = ?)",
            (a, b, b, a),
        )
        return cursor.rowcount > 0

    def are_friends(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are friends."""
        row = self._db.execute(
            "SELECT 1 FROM friendships WHERE username = ? AND friend = ?", (a, b)
        ).fetchone()
        return row is not None

    def friends_of(self, username: str) -> list[str]:
        """The friends of ``username`` (sorted)."""
        rows = self._db.execute(
            "SELECT friend FROM friendships WHERE username = ? ORDER BY friend", (username,)
        )
        return [name for (name,) in rows]

    def friends_of_many(self, usernames: list[str]) -> dict[str, list[str]]:
        """The friends of each of ``usernames`` (sorted; ``[]`` for none)."""
        found: dict[str, list[str]] = {name: [] for name in usernames}
        names = list(found)
        for start in range(0, len(names), _IN_CHUNK):
            chunk = names[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT username, friend FROM friendships WHERE username IN ({marks}) "
                "ORDER BY username, friend",
                chunk,
            )
            for username, friend in rows:
                found[username].append(friend)
        return found

    # --- blocks ------------------------------------------------------------------------

    def add_block(self, username: str, blocked: str, now: float) -> bool:
        """Record that ``username`` blocks ``blocked``; False if it already did."""
        cursor = self._write().execute(
            "INSERT INTO blocks (username, blocked, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (username, blocked, now),
        )
        return cursor.rowcount == 1

    def delete_block(self, username: str, blocked: str) -> bool:
        """``username`` stops blocking ``blocked``; False if it did not. Its cursors
        first pass the blocked messages that directly follow them (see Store)."""
        if not self.has_blocked(username, blocked):
            return False
        self._pass_blocked_runs(username)
        cursor = self._write().execute(
            "DELETE FROM blocks WHERE username = ? AND blocked = ?", (username, blocked)
        )
        return cursor.rowcount == 1

    def _pass_blocked_runs(self, username: str) -> None:
        db = self._write()
        db.execute(_PASS_BLOCKED_SESSIONS, {"user": username})
        db.execute(_PASS_BLOCKED_USER, {"user": username})

    def has_blocked(self, username: str, blocked: str) -> bool:
        """Whether ``username`` blocks ``blocked``."""
        row = self._db.execute(
            "SELECT 1 FROM blocks WHERE username = ? AND blocked = ?", (username, blocked)
        ).fetchone()
        return row is not None

    def blocked_by(self, username: str) -> list[str]:
        """Whom ``username`` blocks (sorted)."""
        rows = self._db.execute(
            "SELECT blocked FROM blocks WHERE username = ? ORDER BY blocked", (username,)
        )
        return [name for (name,) in rows]

    def blockers_of(self, username: str) -> list[str]:
        """Who blocks ``username`` (sorted)."""
        rows = self._db.execute(
            "SELECT username FROM blocks WHERE blocked = ? ORDER BY username", (username,)
        )
        return [name for (name,) in rows]

    # --- messages -------------------------------------------------------------------

    def add_message(self, message: ChatMessage, origin: bytes | None = None) -> StoredMessage:
        """Append a message to the conversation of ``(message.sender, message.to)``,
        sent from the login session ``origin`` (see Store).

        The first message between two users creates their conversation, from
        which both then receive. A message to a room that was never joined creates
        the room, with no members.

        Raises:
            ValueError: a message with this id is already stored (nothing of
                this one is kept).
        """
        self._write()  # (inside the batch's transaction)
        key = conversation_key(message.sender, message.to)
        sent_at = _to_micros(message.sent_at)
        known = self._conversations.get(key)
        if known is not None:
            # A conversation this transaction knows: its next seq, one INSERT.
            conversation, seq = known[0], known[1] + 1
            self._insert_message(message, conversation, seq, sent_at, origin)
            self._seqs_unwritten[conversation] = seq
        else:
            conversation, seq = self._first_message(message, key, sent_at, origin)
        self._conversations[key] = (conversation, seq)
        self._charge(message.sender, stored_size(message.text))
        recent = self._recent
        recent[message.id] = (message, conversation, seq, origin)
        if len(recent) > _RECENT_MAX:
            del recent[next(iter(recent))]  # the oldest
        return StoredMessage(message=message, seq=seq)

    def _first_message(
        self, message: ChatMessage, key: str, sent_at: int, origin: bytes | None
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
            self._insert_message(message, conversation, seq, sent_at, origin)
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
        message: ChatMessage,
        conversation: int,
        seq: int,
        sent_at: int,
        origin: bytes | None,
    ) -> None:
        try:
            self._db.execute(
                "INSERT INTO messages "
                "(id, conversation, seq, sender, recipient, text, sent_at, origin) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.id,
                    conversation,
                    seq,
                    message.sender,
                    message.to,
                    message.text,
                    sent_at,
                    origin,
                ),
            )
        except sqlite3.IntegrityError as exc:
            if "messages.id" in str(exc):
                # A known id (the unique index says so, with no lookup on the way in).
                raise ValueError("a message with this id is already stored") from None
            # The remembered conversation or seq is not the table's: only another
            # writer of the database could do that (the server must be its only
            # one). Forget them; the error is the caller's (an internal error).
            self._conversations.pop(conversation_key(message.sender, message.to), None)
            raise

    def _message(self, row: sqlite3.Row | tuple[bytes, str, str, str, int]) -> ChatMessage:
        """A message row as a ChatMessage: the stored object if it is recent."""
        recent = self._recent.get(row[0])
        return recent[0] if recent is not None else _chat_message(row)

    def get_message(self, message_id: bytes) -> StoredMessage | None:
        """The message with this id, or None."""
        row = self._db.execute(
            f"SELECT {_MESSAGE_COLUMNS}, m.seq, m.delivered_at FROM messages AS m WHERE m.id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            return None
        return StoredMessage(message=self._message(row[:5]), seq=row[5], delivered_at=row[6])

    def history(
        self, username: str, peer: str, limit: int, before: bytes | None = None
    ) -> list[ChatMessage]:
        """The last ``limit`` messages between ``username`` and ``peer`` (a user or a
        room), oldest first; of a room, only those since ``username`` joined it
        (nothing if not a member); with ``before``, only those older than it."""
        if limit <= 0:
            return []
        key = conversation_key(username, peer)
        # Before a message: below its seq, in its conversation (no row: nothing).
        upper = (
            "AND m.seq < (SELECT b.seq FROM messages AS b WHERE b.id = :before AND "
            "b.conversation = (SELECT id FROM conversations WHERE key = :key)) "
            if before is not None
            else ""
        )
        args = {"user": username, "key": key, "limit": limit, "before": before}
        if is_room(key):
            rows = self._db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages AS m "
                "JOIN participants AS p ON p.conversation = m.conversation AND p.username = :user "
                "WHERE m.conversation = (SELECT id FROM conversations WHERE key = :key) "
                f"AND m.seq > p.floor_seq AND NOT {_FROM_BLOCKED} "
                f"{upper}ORDER BY m.seq DESC LIMIT :limit",
                args,
            ).fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages AS m "
                "WHERE m.conversation = (SELECT id FROM conversations WHERE key = :key) "
                f"{upper}ORDER BY m.seq DESC LIMIT :limit",
                args,
            ).fetchall()
        return [self._message(row) for row in reversed(rows)]

    def pending_deliveries(self, username: str, token_hash: bytes, limit: int) -> list[ChatMessage]:
        """Up to ``limit`` messages for ``username`` not yet acknowledged by the
        login session ``token_hash``, in the order they were stored.

        An unknown session is treated as one created now (it starts at the user's
        cursors).
        """
        if limit <= 0:
            return []
        owner: bytes | str
        if self.get_session(token_hash) is not None:
            sql, owner = _PENDING_FOR_SESSION, token_hash
        else:
            sql, owner = _PENDING_FOR_USER, username
        rows = self._db.execute(
            sql, {"owner": owner, "user": username, "session": token_hash, "limit": limit}
        )
        return [self._message(row) for row in rows]

    def acknowledge(
        self, username: str, token_hash: bytes, message_ids: Sequence[bytes], now: float
    ) -> list[Receipt]:
        """Advance the session's (and the user's) cursors past these messages.

        Ids that are unknown or in no conversation of ``username`` (direct
        messages between others, rooms it is not in) are ignored. A cursor never
        moves back. An unknown session advances only the user's cursors.

        Returns:
            The direct messages to ``username`` delivered for the first time.
        """
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
        db = self._write()
        # Before the user's cursors move: what lies between the old and the new one
        # reaches this user now (everything before the old one already had).
        receipts = [
            Receipt(
                message_id=bytes(message_id), sender=sender, recipient=row["user"], delivered_at=now
            )
            for row in moved
            for message_id, sender in db.execute(_MARK_DELIVERED, row).fetchall()
        ]
        # WHERE EXISTS: no cursor for a session that does not exist (the foreign
        # key would refuse it anyway).
        db.executemany(
            "INSERT INTO session_cursors (token_hash, conversation, seq) "
            "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM sessions WHERE token_hash = ?) "
            "ON CONFLICT DO UPDATE SET seq = MAX(seq, excluded.seq)",
            session_rows,
        )
        db.executemany(
            "INSERT INTO user_cursors (username, conversation, seq) VALUES (?, ?, ?) "
            "ON CONFLICT DO UPDATE SET seq = MAX(seq, excluded.seq)",
            user_rows,
        )
        return receipts

    def _pass_blocked(self, username: str, highest: dict[int, int], direct: set[int]) -> None:
        """Move each room's acknowledged seq in ``highest`` past the messages from
        users ``username`` blocks that directly follow it (see Store.acknowledge).
        One look at the blocks first: most users block nobody."""
        if (
            len(highest) == len(direct)
            or not self._db.execute(
                "SELECT 1 FROM blocks WHERE username = ? LIMIT 1", (username,)
            ).fetchone()
        ):
            return
        for conversation, seq in highest.items():
            if conversation in direct:
                continue
            (passed,) = self._db.execute(
                _PAST_BLOCKED, {"conversation": conversation, "seq": seq, "user": username}
            ).fetchone()
            if passed is not None:
                highest[conversation] = passed

    def _highest_acknowledged(
        self, username: str, token_hash: bytes, message_ids: Sequence[bytes]
    ) -> tuple[dict[int, int], set[int]]:
        """The highest seq among these messages in each conversation of
        ``username``'s, and which of those conversations are direct ones.

        Only what the session could have been delivered counts: not a message it
        sent itself (acknowledging that would move its cursor past what it has not
        received, and tell the sender of those that they were delivered)."""
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
                # seq are known (the query below would find no more).
                _, conversation, seq, _origin = entry
                direct.add(conversation)
                if highest.get(conversation, 0) < seq:
                    highest[conversation] = seq
        # One statement per chunk, not one per id (SQLite allows 32766 parameters).
        for start in range(0, len(ids), _ACK_CHUNK):
            chunk = ids[start : start + _ACK_CHUNK]
            rows = self._db.execute(
                "SELECT m.conversation, MAX(m.seq), MIN(m.recipient) NOT LIKE '#%' "
                "FROM messages AS m "
                "JOIN participants AS p ON p.conversation = m.conversation AND p.username = ? "
                f"WHERE m.id IN ({','.join('?' * len(chunk))}) "
                "AND (m.sender != ? OR (m.origin IS NOT NULL AND m.origin != ?)) "
                "GROUP BY m.conversation",
                (username, *chunk, username, token_hash),
            )
            for conversation, seq, is_direct in rows:
                if is_direct:
                    direct.add(conversation)
                if highest.get(conversation, 0) < seq:
                    highest[conversation] = seq
        return highest, direct

    # --- rooms -------------------------------------------------------------------------

    def join_room(self, room: str, username: str, now: float) -> bool:
        """Add ``username`` to ``room``, creating the room; False if already a member.

        The new member receives only the messages sent after this call.
        """
        db = self._write()
        self._write_seqs()  # the floor below is the room's last_seq
        db.execute(
            "INSERT INTO conversations (key, is_room, created_at) VALUES (?, 1, ?) "
            "ON CONFLICT (key) DO NOTHING",
            (room, now),
        )
        cursor = db.execute(
            "INSERT INTO participants (conversation, username, floor_seq, joined_at) "
            "SELECT id, ?, last_seq, ? FROM conversations WHERE key = ? "
            "ON CONFLICT DO NOTHING",
            (username, now, room),
        )
        return cursor.rowcount == 1

    def leave_room(self, room: str, username: str) -> bool:
        """Remove ``username`` from ``room``; False if not a member.

        The last member's leave deletes the room, its history and every cursor
        into it (a later join creates a new, empty room).
        """
        db = self._write()
        row = db.execute(
            "SELECT id FROM conversations WHERE key = ? AND is_room", (room,)
        ).fetchone()
        if row is None:
            return False
        (conversation,) = row
        cursor = db.execute(
            "DELETE FROM participants WHERE username = ? AND conversation = ?",
            (username, conversation),
        )
        if cursor.rowcount != 1:
            return False
        if (
            db.execute(
                "SELECT 1 FROM participants WHERE conversation = ? LIMIT 1", (conversation,)
            ).fetchone()
            is None
        ):
            for sender, size in db.execute(
                f"SELECT sender, SUM({_STORED_SIZE}) FROM messages WHERE conversation = ? "
                "GROUP BY sender",
                (conversation,),
            ).fetchall():
                self._charge(sender, -size)
            for table in ("session_cursors", "user_cursors", "messages"):
                # Our own table names, not input.
                db.execute(f"DELETE FROM {table} WHERE conversation = ?", (conversation,))
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation,))
            self._conversations.pop(room, None)
            self._seqs_unwritten.pop(conversation, None)
        return True

    def delete_delivered_before(self, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` of each conversation's oldest messages sent before
        ``cutoff`` that every recipient session has acknowledged (see Store).

        Index lookups only: per conversation with old messages, one floor per
        participant and one seek past it, then a ranged delete.
        """
        db = self._write()
        cutoff_us = int(cutoff * 1e6)
        conversations = [
            c
            for (c,) in db.execute(
                "SELECT DISTINCT conversation FROM messages WHERE sent_at < ?", (cutoff_us,)
            ).fetchall()
        ]
        deleted = 0
        for conversation in conversations:
            if deleted >= limit:
                break
            stay: int | None = None
            for username, joined_at, floor in db.execute(_FLOORS, (conversation,)).fetchall():
                (first,) = db.execute(
                    _FIRST_UNDELIVERED, (conversation, max(floor, joined_at), username)
                ).fetchone()
                if first is not None and (stay is None or first < stay):
                    stay = first
            bound = stay if stay is not None else (1 << 62)
            gone = db.execute(
                "DELETE FROM messages WHERE conversation = ? AND seq < ? AND sent_at < ? "
                "AND seq < (SELECT MIN(seq) FROM messages WHERE conversation = ?) + ? "
                f"RETURNING sender, {_STORED_SIZE}",
                (conversation, bound, cutoff_us, conversation, limit - deleted),
            ).fetchall()
            for sender, size in gone:
                self._charge(sender, -size)
            deleted += len(gone)
        return deleted

    def count_waiting(self, username: str, limit: int) -> int:
        """How many direct messages wait for ``username`` (not acknowledged by any of
        its sessions), counting at most ``limit``."""
        (count,) = self._db.execute(_COUNT_WAITING, {"user": username, "limit": limit}).fetchone()
        return int(count)

    def stored_bytes(self, username: str) -> int:
        """What the stored messages ``username`` sent count against its quota (the
        counter, and what this transaction changed of it)."""
        row = self._db.execute(
            "SELECT stored_bytes FROM accounts WHERE username = ?", (username,)
        ).fetchone()
        return 0 if row is None else int(row[0]) + self._usage_unwritten.get(username, 0)

    def room_exists(self, room: str) -> bool:
        """Whether the room was ever created."""
        row = self._db.execute(
            "SELECT 1 FROM conversations WHERE key = ? AND is_room", (room,)
        ).fetchone()
        return row is not None

    def room_members(self, room: str) -> list[str]:
        """The members of ``room`` (sorted)."""
        rows = self._db.execute(
            "SELECT p.username FROM conversations AS c "
            "JOIN participants AS p ON p.conversation = c.id "
            "WHERE c.key = ? AND c.is_room ORDER BY p.username",
            (room,),
        )
        return [name for (name,) in rows]

    def rooms_of(self, username: str) -> list[tuple[str, int]]:
        """The rooms ``username`` is in, with their member counts (sorted by name)."""
        rows = self._db.execute(
            "SELECT c.key, (SELECT COUNT(*) FROM participants AS q "
            "               WHERE q.conversation = c.id) "
            "FROM participants AS p JOIN conversations AS c ON c.id = p.conversation "
            "WHERE p.username = ? AND c.is_room ORDER BY c.key",
            (username,),
        )
        return [(name, count) for name, count in rows]


def _fsync(path: Path) -> None:
    """Make a file's content durable (before it is linked into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
