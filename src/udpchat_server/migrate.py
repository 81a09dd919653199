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

from .stores import schema, tables
from .stores.postgres import PostgresStore
from .stores.sqlite import SQLiteStore

__all__ = ["TABLES", "MigrationError", "migrate"]

TABLES: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (table.name, table.column_names) for table in tables.TABLES
)
"""What is copied (every declared table and column), in an order the foreign keys
accept."""

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
            for name in ("accounts", "messages"):
                if target.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchone():
                    raise MigrationError(
                        f"the target database already has {name}: migrate into an empty one"
                    )
            counts = {table.name: _copy(reader, target, table) for table in tables.TABLES}
            for table in tables.TABLES:
                for column in _identities(table):
                    # Our own names. The next number is past every copied one.
                    target.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column}'), "
                        f"GREATEST((SELECT MAX({column}) FROM {table.name}), 0) + 1, false)"
                    )
        return counts
    finally:
        reader.close()


def _identities(table: schema.Table) -> list[str]:
    """The columns PostgreSQL numbers itself (copied with their numbers)."""
    return [column.name for column in table.columns if column.kind is schema.Kind.ID]


def _copy(
    reader: sqlite3.Connection,
    target: psycopg.Connection[tuple[object, ...]],
    table: schema.Table,
) -> int:
    names = ", ".join(table.column_names)
    marks = ", ".join(["%s"] * len(table.columns))
    overriding = " OVERRIDING SYSTEM VALUE" if _identities(table) else ""
    insert = f"INSERT INTO {table.name} ({names}){overriding} VALUES ({marks})"
    rows = reader.execute(f"SELECT {names} FROM {table.name}")  # our own names
    # SQLite's 0/1 is PostgreSQL's boolean.
    flags = [n for n, column in enumerate(table.columns) if column.kind is schema.Kind.BOOL]
    copied = 0
    with target.cursor() as cursor:
        while batch := rows.fetchmany(_BATCH):
            if flags:
                batch = [
                    tuple(bool(v) if n in flags else v for n, v in enumerate(row)) for row in batch
                ]
            cursor.executemany(insert, batch)
            copied += len(batch)
    return copied
