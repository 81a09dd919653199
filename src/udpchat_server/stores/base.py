"""What the two SQL stores share: :class:`SqlStore`, the Store methods whose SQL and
logic are the same on SQLite and PostgreSQL.

A subclass brings the database: its connection, transactions and savepoints,
error translation, caches, migrations, ``add_message`` (the hot path, which each
database does its own way), and four ways to run a statement (:meth:`SqlStore._select`,
:meth:`~SqlStore._execute`, :meth:`~SqlStore._executemany`, :meth:`~SqlStore._select_in`).
The statements here are written once in the shared SQL of :mod:`.dialect`; the
subclass turns each into its database's.

What each method does is the :class:`~udpchat_proto.chat.store.Store` protocol's
docstring (given to the methods that have none: see :func:`store_methods`); the
comments here are about the SQL.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, NoReturn, Protocol, Self, TypeVar

from udpchat_proto import (
    Account,
    Acknowledgement,
    LoginSession,
    PasswordHash,
    Receipt,
    Store,
    StoredMessage,
)
from udpchat_proto import messages as m
from udpchat_proto.chat import (
    STORE_READS,
    STORE_WRITES,
    add_each,
    conversation_key,
    is_room,
    sealed_size,
    session_id,
)
from udpchat_proto.e2ee import ClaimedKey, DeviceKeys, EncryptedMessage, KeyShare, OneTimeKey

from . import statements as sql
from .records import pack, unpack, unpack_device

__all__ = [
    "Params",
    "Rows",
    "SchemaVersionError",
    "SqlStore",
    "chat_message",
    "store_methods",
    "to_micros",
]

Params = Sequence[Any] | Mapping[str, Any]
"""A statement's parameters: a sequence for ``?``, a mapping for ``:name``."""

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


class Rows(Protocol):
    """What running a statement gives back (a DB-API cursor, of either driver)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class SchemaVersionError(RuntimeError):
    """The database was written by a newer release (its schema version is unknown)."""


def to_micros(when: datetime.datetime) -> int:
    """A message's ``sent_at`` as stored: integer microseconds since the epoch (UTC),
    which round-trips a ``datetime`` exactly."""
    return (when - _EPOCH) // _MICROSECOND


def chat_message(row: Sequence[Any], ciphertext: EncryptedMessage | None = None) -> m.ChatMessage:
    """A ChatMessage from the columns of :data:`.statements.MESSAGE_COLUMNS` (and,
    for an encrypted message, its record)."""
    message_id, sender, to, text, sent_at = row[:5]
    return m.ChatMessage(
        id=bytes(message_id),
        sender=sender,
        to=to,
        text=text,
        sent_at=_EPOCH + datetime.timedelta(microseconds=sent_at),
        encrypted=ciphertext is not None,
        ciphertext=ciphertext,
    )


_S = TypeVar("_S", bound="SqlStore")


def store_methods(cls: type[_S]) -> type[_S]:
    """Give a store's Store methods (every one of ``STORE_READS`` and
    ``STORE_WRITES``) their error translation: an exception of its driver
    (``cls.DRIVER_ERROR``) goes through ``_raise_translated``, which raises
    StoreUnavailableError for an outside cause and the error itself for a bug; and
    the Protocol's docstring where the method has none."""
    for name in STORE_READS | STORE_WRITES:
        method = getattr(cls, name)
        translated = _translated(method, cls.DRIVER_ERROR)
        translated.__doc__ = method.__doc__ or getattr(Store, name).__doc__
        setattr(cls, name, translated)
    return cls


def _translated(method: Callable[..., Any], error: type[Exception]) -> Callable[..., Any]:
    def translated(self: SqlStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except error as exc:
            self._raise_translated(exc)

    return functools.update_wrapper(translated, method)


class SqlStore(abc.ABC):
    """The :class:`~udpchat_proto.chat.store.Store` methods both SQL stores run alike.

    Not thread-safe: use a store from the server loop's thread. It can be used as a
    context manager, which closes it (discarding what was not committed).
    """

    DRIVER_ERROR: ClassVar[type[Exception]]
    """The base class of the driver's exceptions (translated by :func:`store_methods`)."""

    _usage_unwritten: dict[str, int]
    """What this batch added to (or took from) each sender's stored bytes, written
    before the commit: one statement a batch, not one a message (and the accounts'
    rows are not locked until then)."""

    # --- what a database brings ----------------------------------------------------------

    @abc.abstractmethod
    def _select(self, statement: str, params: Params = ()) -> Rows:
        """Run a read (shared SQL): in the batch's transaction if one is open."""

    @abc.abstractmethod
    def _execute(self, statement: str, params: Params = ()) -> Rows:
        """Run a statement (shared SQL) in the batch's transaction, begun if need be,
        and in the current atomic block's savepoint."""

    @abc.abstractmethod
    def _executemany(self, statement: str, rows: Iterable[Params]) -> None:
        """:meth:`_execute` once per row of parameters."""

    @abc.abstractmethod
    def _select_in(
        self, statement: str, values: Sequence[Any], params: dict[str, Any]
    ) -> list[Any]:
        """The rows of a read whose ``{in}`` (``column {in}``) tests membership in
        ``values``, with the other parameters ``params`` (none if ``values`` is
        empty)."""

    @abc.abstractmethod
    def _raise_translated(self, exc: Exception) -> NoReturn:
        """Raise a driver error as StoreUnavailableError if its cause is outside the
        server (noting first what it cost the batch), else as it is (a bug)."""

    # Hooks for what SQLite does and PostgreSQL needs not (B027: empty on purpose).

    def _erasing(self) -> None:  # noqa: B027
        """What this batch deletes must leave the files too (SQLite: its WAL)."""

    def _write_seqs(self) -> None:  # noqa: B027
        """Write the seqs kept in memory into ``conversations.last_seq``, before a
        statement reads it (SQLite's add_message keeps them)."""

    def _account_deleted(self, username: str) -> None:  # noqa: B027
        """The account ``username`` is being deleted: forget what is cached of it."""

    def _forget_conversation(self, key: str, conversation: int) -> None:  # noqa: B027
        """The conversation ``key`` (its id: ``conversation``) was deleted: forget
        what is cached of it."""

    def _message(self, row: Sequence[Any]) -> m.ChatMessage:
        """A message row (:data:`.statements.MESSAGE_COLUMNS`) as a ChatMessage (an
        encrypted one, whose text is empty, with its record)."""
        if row[3]:
            return chat_message(row)
        # No text is empty: the message is encrypted, its record kept beside it.
        found = self._select(
            "SELECT record FROM message_ciphertexts WHERE message_id = ?", (bytes(row[0]),)
        ).fetchone()
        return chat_message(row, None if found is None else unpack(EncryptedMessage, found[0]))

    def _charge(self, sender: str, size: int) -> None:
        """Add ``size`` (negative: a deletion) to ``sender``'s stored bytes, written
        with the batch."""
        self._usage_unwritten[sender] = self._usage_unwritten.get(sender, 0) + size

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abc.abstractmethod
    def close(self) -> None:
        """Discard uncommitted writes and close the connection."""

    # --- accounts ----------------------------------------------------------------------

    def create_account(self, username: str, password: PasswordHash, now: float) -> bool:
        """Create an account; False (and no change) if the name is taken or retired."""
        cursor = self._execute(
            "INSERT INTO accounts (username, password, created_at) "
            "SELECT :user, :password, :now "
            "WHERE NOT EXISTS (SELECT 1 FROM retired_names WHERE username = :user) "
            "ON CONFLICT (username) DO NOTHING",
            {"user": username, "password": password.to_string(), "now": now},
        )
        return cursor.rowcount == 1

    def set_password(self, username: str, password: PasswordHash) -> bool:
        """Replace the password record of an account; False if there is none. The old
        record leaves the files too."""
        self._erasing()
        cursor = self._execute(
            "UPDATE accounts SET password = ? WHERE username = ?",
            (password.to_string(), username),
        )
        return cursor.rowcount == 1

    def get_account(self, username: str) -> Account | None:
        row = self._select(
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
        cursor = self._execute(
            "UPDATE accounts SET disabled = ? WHERE username = ?", (disabled, username)
        )
        return cursor.rowcount == 1

    def accounts(self) -> list[tuple[str, bool]]:
        rows = self._select('SELECT username, disabled FROM accounts ORDER BY username COLLATE "C"')
        return [(name, bool(disabled)) for name, disabled in rows]

    def delete_account(self, username: str, now: float) -> None:
        """Delete the account and what is only its; retire the name (see Store).

        Index lookups only: the user's own rows, and per direct conversation of
        theirs the messages past their cursor (all before it were delivered). The
        rows leave the files too."""
        self._erasing()
        user = {"user": username}
        for (room,) in self._execute(
            "SELECT c.key FROM participants AS p JOIN conversations AS c ON c.id = p.conversation "
            "WHERE p.username = :user AND c.is_room",
            user,
        ).fetchall():
            self.leave_room(room, username)
        direct = self._execute(
            "SELECT p.conversation, COALESCE(u.seq, 0) FROM participants AS p "
            "LEFT JOIN user_cursors AS u ON u.username = p.username "
            "AND u.conversation = p.conversation WHERE p.username = :user",
            user,
        ).fetchall()
        for conversation, seq in direct:
            # Their senders' stored bytes go down by what goes.
            for sender, size in self._execute(
                "DELETE FROM messages WHERE conversation = ? AND seq > ? AND recipient = ? "
                f"AND delivered_at IS NULL RETURNING sender, {sql.STORED_SIZE}",
                (conversation, seq, username),
            ).fetchall():
                self._charge(sender, -int(size))
        self._usage_unwritten.pop(username, None)  # (its row goes)
        self._account_deleted(username)
        for blocker in self.blockers_of(username):
            self._pass_blocked_runs(blocker)  # (its blocks end: see delete_block)
        for statement in (
            "DELETE FROM participants WHERE username = :user",
            "DELETE FROM user_cursors WHERE username = :user",
            "DELETE FROM sessions WHERE username = :user",  # their cursors: ON DELETE CASCADE
            # The other side's rows first, found from this side's (the key's prefix).
            "DELETE FROM friendships WHERE username IN "
            "(SELECT friend FROM friendships WHERE username = :user) AND friend = :user",
            "DELETE FROM friendships WHERE username = :user",
            "DELETE FROM invitations WHERE sender = :user",
            "DELETE FROM invitations WHERE recipient = :user",
            "DELETE FROM blocks WHERE username = :user",
            "DELETE FROM blocks WHERE blocked = :user",
            "DELETE FROM accounts WHERE username = :user",
        ):
            self._execute(statement, user)
        self._execute(
            "INSERT INTO retired_names (username, retired_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (username, now),
        )

    # --- login sessions ----------------------------------------------------------------

    def create_session(self, token_hash: bytes, username: str, now: float) -> None:
        """Record a new login session, starting at the user's delivery cursors.

        Raises:
            ValueError: a session with this token hash exists (ON CONFLICT, not a
                caught error: PostgreSQL would abort the whole transaction).
        """
        cursor = self._execute(
            "INSERT INTO sessions (token_hash, username, created_at, last_used_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (token_hash, username, now, now),
        )
        if cursor.rowcount != 1:
            raise ValueError("a session with this token hash exists")
        self._execute(
            "INSERT INTO session_cursors (token_hash, conversation, seq) "
            "SELECT ?, conversation, seq FROM user_cursors WHERE username = ?",
            (token_hash, username),
        )

    def get_session(self, token_hash: bytes) -> LoginSession | None:
        row = self._select(
            "SELECT username, created_at, last_used_at FROM sessions WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        return LoginSession(
            token_hash=token_hash, username=row[0], created_at=row[1], last_used_at=row[2]
        )

    def existing_sessions(self, token_hashes: list[bytes]) -> set[bytes]:
        rows = self._select_in(
            "SELECT token_hash FROM sessions WHERE token_hash {in}", token_hashes, {}
        )
        return {bytes(hashed) for (hashed,) in rows}

    def touch_session(self, token_hash: bytes, now: float) -> None:
        """Note that the session was used at ``now``; an unknown session is ignored."""
        self._execute(
            "UPDATE sessions SET last_used_at = ? WHERE token_hash = ?", (now, token_hash)
        )

    def sessions_of(self, username: str) -> list[LoginSession]:
        rows = self._select(
            "SELECT token_hash, created_at, last_used_at FROM sessions WHERE username = ? "
            "ORDER BY created_at DESC, token_hash DESC",
            (username,),
        )
        return [
            LoginSession(
                token_hash=bytes(hashed), username=username, created_at=created, last_used_at=used
            )
            for hashed, created, used in rows
        ]

    def delete_session(self, token_hash: bytes) -> None:
        # Its cursors go with it: ON DELETE CASCADE.
        self._execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    def delete_sessions_unused_since(self, cutoff: float) -> int:
        return self._execute("DELETE FROM sessions WHERE last_used_at < ?", (cutoff,)).rowcount

    def delete_sessions_created_before(self, cutoff: float) -> list[bytes]:
        rows = self._execute(
            "DELETE FROM sessions WHERE created_at < ? RETURNING token_hash", (cutoff,)
        )
        return [bytes(hashed) for (hashed,) in rows.fetchall()]

    # --- invitations, friends and blocks -----------------------------------------------

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

    def _exists(self, statement: str, *args: object) -> bool:
        return self._select(statement, args).fetchone() is not None

    def _names(self, statement: str, name: str) -> list[str]:
        return [found for (found,) in self._select(statement, (name,))]

    # --- messages ------------------------------------------------------------------------

    def add_messages(
        self, messages: Sequence[tuple[m.ChatMessage, bytes | None]]
    ) -> list[StoredMessage | None]:
        """:meth:`add_message` for each, in order (None for a taken id). PostgreSQL
        does it its own way: in one statement."""
        return add_each(self.add_message, messages)

    @abc.abstractmethod
    def add_message(self, message: m.ChatMessage, origin: bytes | None = None) -> StoredMessage:
        """See Store (each database stores a message its own way)."""

    @abc.abstractmethod
    def atomic(self) -> contextlib.AbstractContextManager[None]:
        """See Store (each database has its own savepoints)."""

    def get_message(self, message_id: bytes) -> StoredMessage | None:
        row = self._select(sql.GET_MESSAGE, (message_id,)).fetchone()
        if row is None:
            return None
        return StoredMessage(message=self._message(row[:5]), seq=row[5], delivered_at=row[6])

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

    # --- device keys (end-to-end encryption) ------------------------------------------------
    # A device's rows go with its session (ON DELETE CASCADE: every way a session
    # ends), a message's with the message.

    def set_device_keys(self, token_hash: bytes, keys: DeviceKeys, now: float) -> bool:
        if self.get_session(token_hash) is None:
            return False
        return bool(
            self._execute(
                "INSERT INTO device_keys (token_hash, device_id, username, record, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (token_hash, keys.device_id, keys.user, pack(keys), now),
            ).rowcount
        )

    def session_device(self, token_hash: bytes) -> DeviceKeys | None:
        row = self._select(
            "SELECT record FROM device_keys WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return None if row is None else unpack_device(row[0])

    def devices_of(self, usernames: Sequence[str]) -> list[tuple[DeviceKeys, float]]:
        if not usernames:
            return []
        rows = self._select_in(
            "SELECT record, created_at, username, device_id FROM device_keys WHERE username {in}",
            sorted(set(usernames)),
            {},
        )
        found = [(unpack_device(row[0]), row[1]) for row in rows]
        return sorted(found, key=lambda item: (item[0].user, item[1], item[0].device_id))

    def add_one_time_keys(self, device_id: bytes, keys: Sequence[OneTimeKey]) -> None:
        if not self._exists("SELECT 1 FROM device_keys WHERE device_id = ?", device_id):
            return
        one_time = [key for key in keys if not key.fallback]
        if one_time:
            self._executemany(
                "INSERT INTO one_time_keys (device_id, key_id, record) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(device_id, key.key_id, pack(key)) for key in one_time],
            )
        for key in keys:
            if key.fallback:
                self._execute(
                    "UPDATE device_keys SET fallback = ?, fallback_used = ? WHERE device_id = ?",
                    (pack(key), False, device_id),
                )

    def key_counts(self, device_id: bytes) -> tuple[int, bool]:
        row = self._select(
            "SELECT (SELECT COUNT(*) FROM one_time_keys AS o WHERE o.device_id = d.device_id), "
            "d.fallback_used FROM device_keys AS d WHERE d.device_id = ?",
            (device_id,),
        ).fetchone()
        return (0, False) if row is None else (row[0], bool(row[1]))

    def claim_key(self, device_id: bytes, *, one_time: bool = True) -> ClaimedKey | None:
        device = self._select(
            "SELECT record, fallback FROM device_keys WHERE device_id = ?", (device_id,)
        ).fetchone()
        if device is None:
            return None
        # One statement takes the key: a concurrent claim (another node) that
        # picked the same one deletes nothing, and gets the fallback key instead.
        taken = (
            self._execute(
                "DELETE FROM one_time_keys WHERE device_id = ? AND key_id = "
                "(SELECT key_id FROM one_time_keys WHERE device_id = ? ORDER BY key_id LIMIT 1) "
                "RETURNING record",
                (device_id, device_id),
            ).fetchone()
            if one_time
            else None
        )
        if taken is not None:
            key = unpack(OneTimeKey, taken[0])
        elif device[1] is not None:
            self._execute(
                "UPDATE device_keys SET fallback_used = ? WHERE device_id = ?", (True, device_id)
            )
            key = unpack(OneTimeKey, device[1])
        else:
            return None
        return ClaimedKey(device=unpack(DeviceKeys, device[0]), one_time_key=key)

    def add_encrypted(
        self,
        message_id: bytes,
        ciphertext: EncryptedMessage,
        devices: Sequence[bytes],
        key_shares: Sequence[tuple[bytes, KeyShare]],
    ) -> None:
        # What is stored beside the row counts against the sender's quota, in this
        # transaction, and goes back with the row (statements.STORED_SIZE).
        size = sealed_size(ciphertext, (share for _device, share in key_shares))
        self._execute("UPDATE messages SET sealed_bytes = ? WHERE id = ?", (size, message_id))
        self._charge(ciphertext.sender, size)
        self._execute(
            "INSERT INTO message_ciphertexts (message_id, record) VALUES (?, ?)",
            (message_id, pack(ciphertext)),
        )
        self._executemany(
            "INSERT INTO message_devices (message_id, device_id) VALUES (?, ?)",
            [(message_id, device_id) for device_id in sorted(set(devices))],
        )
        if key_shares:  # (most messages carry none: their session was shared before)
            self._executemany(
                "INSERT INTO message_key_shares (message_id, device_id, number, record) "
                "VALUES (?, ?, ?, ?)",
                [
                    (message_id, device_id, number, pack(share))
                    for number, (device_id, share) in enumerate(key_shares)
                ],
            )

    def add_encrypted_message(
        self,
        message: m.ChatMessage,
        origin: bytes | None,
        ciphertext: EncryptedMessage,
        devices: Sequence[bytes],
        key_shares: Sequence[tuple[bytes, KeyShare]],
    ) -> StoredMessage:
        """Both writes in an atomic block (SQLite does it its own way)."""
        with self.atomic():
            stored = self.add_message(message, origin)
            self.add_encrypted(message.id, ciphertext, devices, key_shares)
        return stored

    def key_shares_for(self, message_id: bytes, device_id: bytes) -> list[KeyShare]:
        rows = self._select(
            "SELECT record FROM message_key_shares WHERE message_id = ? AND device_id = ? "
            "ORDER BY number",
            (message_id, device_id),
        ).fetchall()
        return [unpack(KeyShare, row[0]) for row in rows]

    def stored_for_device(self, device_id: bytes, message_ids: Sequence[bytes]) -> set[bytes]:
        if not message_ids:
            return set()
        rows = self._select_in(
            "SELECT message_id FROM message_devices WHERE device_id = :device AND message_id {in}",
            list(message_ids),
            {"device": device_id},
        )
        return {bytes(row[0]) for row in rows}

    # --- rooms -------------------------------------------------------------------------

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
