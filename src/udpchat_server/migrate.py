"""``udpchat-server migrate --from SQLITE_PATH --to postgresql://...``: move a single
server's database into PostgreSQL, as it is.

Every table is copied row for row in one PostgreSQL transaction (all or nothing):
accounts keep their password records, login sessions their token hashes (the
clients' tokens stay valid), conversations, messages and cursors their numbers
(nothing is delivered twice or lost). The target must be empty of accounts and
messages: migrating never merges two servers. The SQLite file is only read; stop
its server first.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from .postgres_store import PostgresStore
from .sqlite_store import SQLiteStore

__all__ = ["TABLES", "MigrationError", "migrate"]

TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("accounts", ("username", "password", "created_at", "disabled", "stored_bytes")),
    ("retired_names", ("username", "retired_at")),
    ("sessions", ("token_hash", "username", "created_at", "last_used_at")),
    ("invitations", ("sender", "recipient", "created_at")),
    ("friendships", ("username", "friend", "created_at")),
    ("blocks", ("username", "blocked", "created_at")),
    ("conversations", ("id", "key", "is_room", "last_seq", "created_at")),
    (
        "messages",
        (
            "position",
            "id",
            "conversation",
            "seq",
            "sender",
            "recipient",
            "text",
            "sent_at",
            "origin",
            "delivered_at",
        ),
    ),
    ("participants", ("conversation", "username", "floor_seq", "joined_at")),
    ("session_cursors", ("token_hash", "conversation", "seq")),
    ("user_cursors", ("username", "conversation", "seq")),
)
"""What is copied, in an order the foreign keys accept."""

_IDENTITIES = (("conversations", "id"), ("messages", "position"))
"""Columns numbered by PostgreSQL: set past the copied numbers afterwards."""
_BATCH = 5000


class MigrationError(Exception):
    """The migration cannot go ahead (the message says why); nothing was written."""


def migrate(source: Path, url: str) -> dict[str, int]:
    """Copy the SQLite database at ``source`` into the PostgreSQL database ``url``.

    Returns:
        How many rows each table received.

    Raises:
        MigrationError: no such file, or the target is not empty.
        StoreUnavailableError: either database cannot be used.
    """
    if not source.is_file():
        raise MigrationError(f"no SQLite database at {source}")
    # Opening brings both schemas up to date (the SQLite one in place: it is the
    # same data, in the newest layout the copy expects).
    SQLiteStore.open(source).close()
    PostgresStore.open(url).close()
    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    reader.execute("BEGIN")  # one snapshot for every table (WAL: a consistent read)
    try:
        with psycopg.connect(url) as target, target.transaction():
            for table in ("accounts", "messages"):
                if target.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                    raise MigrationError(
                        f"the target database already has {table}: migrate into an empty one"
                    )
            counts = {table: _copy(reader, target, table, columns) for table, columns in TABLES}
            for table, column in _IDENTITIES:
                # Our own names. The next number is past every copied one.
                target.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                    f"GREATEST((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
                )
        return counts
    finally:
        reader.close()


def _copy(
    reader: sqlite3.Connection,
    target: psycopg.Connection[tuple[object, ...]],
    table: str,
    columns: tuple[str, ...],
) -> int:
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    overriding = " OVERRIDING SYSTEM VALUE" if table in ("conversations", "messages") else ""
    insert = f"INSERT INTO {table} ({names}){overriding} VALUES ({marks})"
    rows = reader.execute(f"SELECT {names} FROM {table}")  # our own names
    copied = 0
    with target.cursor() as cursor:
        while batch := rows.fetchmany(_BATCH):
            if table == "conversations":  # SQLite's 0/1 is PostgreSQL's boolean
                batch = [(i, key, bool(room), seq, at) for i, key, room, seq, at in batch]
            elif table == "accounts":
                batch = [(name, pw, at, bool(off), kept) for name, pw, at, off, kept in batch]
            cursor.executemany(insert, batch)
            copied += len(batch)
    return copied
