"""How a table is declared: :class:`Kind`, :class:`Column`, :class:`Index`,
:class:`Table`.

Each concept module (:mod:`.accounts`, :mod:`.social`, :mod:`.rooms`,
:mod:`.messages`, :mod:`.devices`) declares its tables with these, beside the SQL
over them; :mod:`.tables` gathers them into :data:`.tables.TABLES`. From that
declaration come each database's current DDL (:func:`.tables.ddl`), what
``udpchat-server migrate`` copies from SQLite into PostgreSQL, and the additions a
store makes when it opens an older database (:mod:`.derive`). The databases are
built by each store's ``MIGRATIONS`` (history, append only: a released migration is
never edited), then by those additions, and a test (``tests/test_sql_layer.py``)
holds them to the declaration: a database built from empty has exactly the
declared tables, columns, keys and indexes, on SQLite and on PostgreSQL.

So a new table, a new index, or a new column at the end of its table (nullable, or
with a default that is right for the rows already stored) is a change to its
concept module's declaration and nowhere else. A rename, a drop, a changed column
or key, or a new column filled from others is a migration in each store as well
(see :mod:`.derive`).

Types by what they hold (:class:`Kind`): times the :class:`~udpchat_proto.chat.store.Store`
API passes are POSIX seconds (``REAL``, ``DOUBLE PRECISION``), except a message's
``sent_at``, integer microseconds (it round-trips a ``datetime`` exactly).
"""

from __future__ import annotations

import enum

import attrs

from .dialect import POSTGRES, Dialect

__all__ = ["Column", "Index", "Kind", "Table"]


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
