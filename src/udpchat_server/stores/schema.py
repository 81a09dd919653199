"""The tables, declared once.

From this declaration come each database's current DDL (:func:`ddl`), what
``udpchat-server migrate`` copies from SQLite into PostgreSQL (:data:`TABLES`, in
an order the foreign keys accept), and the additions a store makes when it opens
an older database (:mod:`.derive`). The databases are built by each store's
``MIGRATIONS`` (history, append only: a released migration is never edited), then
by those additions, and a test (``tests/test_sql_layer.py``) holds them to the
declaration: a database built from empty has exactly the declared tables, columns,
keys and indexes, on SQLite and on PostgreSQL.

So a new table, a new index, or a new column at the end of its table (nullable, or
with a default that is right for the rows already stored) is a change here and
nowhere else. A rename, a drop, a changed column or key, or a new column filled
from others is a migration in each store as well (see :mod:`.derive`).

Types by what they hold (:class:`Kind`): times the :class:`~udpchat_proto.chat.store.Store`
API passes are POSIX seconds (``REAL``, ``DOUBLE PRECISION``), except a message's
``sent_at``, integer microseconds (it round-trips a ``datetime`` exactly).
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

from .dialect import POSTGRES, Dialect

__all__ = ["TABLES", "Column", "Index", "Kind", "Table", "ddl"]


class Kind(enum.Enum):
    """A column's type: (SQLite's, PostgreSQL's)."""

    TEXT = ("TEXT", "TEXT")
    INT = ("INTEGER", "BIGINT")
    TIME = ("REAL", "DOUBLE PRECISION")
    BYTES = ("BLOB", "BYTEA")
    BOOL = ("INTEGER", "BOOLEAN")
    ID = ("INTEGER", "BIGINT GENERATED ALWAYS AS IDENTITY")
    """The table's primary key, numbered by the database (SQLite's rowid)."""

    def sql(self, dialect: Dialect) -> str:
        """The type as ``dialect`` writes it."""
        sqlite, postgres = self.value
        return postgres if dialect is POSTGRES else sqlite


@attrs.frozen
class Column:
    """One column."""

    name: str
    kind: Kind
    null: bool = False
    """Whether it may be NULL."""
    default: int | None = None
    """A number (for a BOOL column, 0 or 1)."""
    key: bool = False
    """The primary key on its own (a :attr:`Kind.ID` column always is)."""
    unique: bool = False
    references: str = ""
    """A foreign key: ``"table (column)"``, and what a delete does, if anything."""

    def default_sql(self, dialect: Dialect) -> str | None:
        """The default as ``dialect`` writes it (None: no default)."""
        if self.default is None:
            return None
        if self.kind is Kind.BOOL and dialect is POSTGRES:
            return "TRUE" if self.default else "FALSE"
        return f"{self.default:d}"

    def sql(self, dialect: Dialect) -> str:
        """The column's definition in a CREATE TABLE (or an ADD COLUMN)."""
        parts = [self.name, self.kind.sql(dialect)]
        if self.key or self.kind is Kind.ID:
            parts.append("PRIMARY KEY")
        elif not self.null:
            parts.append("NOT NULL")
        default = self.default_sql(dialect)
        if default is not None:
            parts.append(f"DEFAULT {default}")
        if self.unique:
            parts.append("UNIQUE")
        if self.references:
            parts.append(f"REFERENCES {self.references}")
        return " ".join(parts)


@attrs.frozen
class Index:
    """A secondary index."""

    name: str
    columns: tuple[str, ...]
    only: Dialect | None = None
    """The one database that has it (None: both)."""


@attrs.frozen
class Table:
    """One table: its columns in order, keys and indexes."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    """A primary key of several columns."""
    unique: tuple[tuple[str, ...], ...] = ()
    indexes: tuple[Index, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def sql(self, dialect: Dialect) -> list[str]:
        """CREATE TABLE and CREATE INDEX statements."""
        lines = [column.sql(dialect) for column in self.columns]
        if self.key:
            lines.append(f"PRIMARY KEY ({', '.join(self.key)})")
        lines.extend(f"UNIQUE ({', '.join(columns)})" for columns in self.unique)
        body = ",\n    ".join(lines)
        # SQLite: a table keyed by anything but its rowid is clustered on its key.
        rowid = dialect is POSTGRES or any(column.kind is Kind.ID for column in self.columns)
        create = f"CREATE TABLE {self.name} (\n    {body}\n){'' if rowid else ' WITHOUT ROWID'}"
        return [create] + [
            f"CREATE INDEX {index.name} ON {self.name} ({', '.join(index.columns)})"
            for index in self.indexes
            if index.only in (None, dialect)
        ]


_TEXT, _INT, _TIME, _BYTES, _BOOL, _ID = Kind
_SESSION_CASCADE: Final = "sessions (token_hash) ON DELETE CASCADE"
_MESSAGE_CASCADE: Final = "messages (id) ON DELETE CASCADE"

TABLES: Final = (
    Table(
        "accounts",
        (
            Column("username", _TEXT, key=True),
            Column("password", _TEXT),  # PasswordHash.to_string()
            Column("created_at", _TIME),
            Column("disabled", _BOOL, default=0),  # by the operator (ctl disable)
            Column("stored_bytes", _INT, default=0),  # the storage quota's counter
        ),
    ),
    # Names of deleted accounts: never registered again.
    Table(
        "retired_names",
        (
            Column("username", _TEXT, key=True),
            Column("retired_at", _TIME),
        ),
    ),
    Table(
        "sessions",
        (
            Column("token_hash", _BYTES, key=True),  # SHA-256 of the token, never the token
            Column("username", _TEXT),
            Column("created_at", _TIME),
            Column("last_used_at", _TIME),
        ),
        indexes=(
            Index("sessions_by_last_use", ("last_used_at",)),  # expiry
            Index("sessions_by_user", ("username", "created_at")),  # newest first
            # The absolute lifetime's sweep: SQLite scans the sessions (hourly).
            Index("sessions_by_creation", ("created_at",), only=POSTGRES),
        ),
    ),
    Table(
        "invitations",
        (
            Column("sender", _TEXT),
            Column("recipient", _TEXT),
            Column("created_at", _TIME),
        ),
        key=("sender", "recipient"),
        indexes=(Index("invitations_by_recipient", ("recipient", "sender")),),
    ),
    # Two rows per friendship, one each way: "friends of" is a key prefix scan.
    Table(
        "friendships",
        (
            Column("username", _TEXT),
            Column("friend", _TEXT),
            Column("created_at", _TIME),
        ),
        key=("username", "friend"),
    ),
    Table(
        "blocks",
        (
            Column("username", _TEXT),  # who blocks
            Column("blocked", _TEXT),
            Column("created_at", _TIME),
        ),
        key=("username", "blocked"),
        indexes=(Index("blocks_by_blocked", ("blocked", "username")),),
    ),
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
            # quota's charge for what is stored beside the row, given back with it.
            Column("sealed_bytes", _INT, default=0),
        ),
        unique=(("conversation", "seq"),),
        indexes=(Index("messages_by_time", ("sent_at",)),),  # retention
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
    # End-to-end encryption. A device is a login session with keys: its rows go
    # with the session (every way one ends), a message's with the message. The
    # records are the devices' own (udpchat_server.stores.records: JSON, hex).
    Table(
        "device_keys",
        (
            Column("token_hash", _BYTES, key=True, references=_SESSION_CASCADE),
            Column("device_id", _BYTES, unique=True),  # the session's id
            Column("username", _TEXT),
            Column("record", _BYTES),  # DeviceKeys, self-signed
            Column("created_at", _TIME),
            Column("fallback", _BYTES, null=True),  # a OneTimeKey (fallback)
            Column("fallback_used", _BOOL, default=0),  # a claim took it
        ),
        indexes=(Index("device_keys_by_user", ("username", "created_at")),),
    ),
    # Claimed once: a claim deletes the row it hands out.
    Table(
        "one_time_keys",
        (
            Column("device_id", _BYTES, references="device_keys (device_id) ON DELETE CASCADE"),
            Column("key_id", _TEXT),
            Column("record", _BYTES),  # a OneTimeKey
        ),
        key=("device_id", "key_id"),
    ),
    # An encrypted message's record (its text column is empty: no text is).
    Table(
        "message_ciphertexts",
        (
            Column("message_id", _BYTES, key=True, references=_MESSAGE_CASCADE),
            Column("record", _BYTES),  # an EncryptedMessage
        ),
    ),
    # The devices an encrypted message was stored for: no other is delivered it.
    Table(
        "message_devices",
        (
            Column("message_id", _BYTES, references=_MESSAGE_CASCADE),
            Column("device_id", _BYTES),
        ),
        key=("message_id", "device_id"),
    ),
    # The key shares sent with a message, delivered with it to their devices: in
    # the device's stream at the message's place (the same cursor).
    Table(
        "message_key_shares",
        (
            Column("message_id", _BYTES, references=_MESSAGE_CASCADE),
            Column("device_id", _BYTES),
            Column("number", _INT),  # the order sent
            Column("record", _BYTES),  # a KeyShare
        ),
        key=("message_id", "device_id", "number"),
    ),
)
"""Every table, in an order the foreign keys accept (referenced tables first)."""


def ddl(dialect: Dialect) -> list[str]:
    """The statements that create the current schema in an empty database."""
    return [statement for table in TABLES for statement in table.sql(dialect)]
