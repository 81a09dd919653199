"""Additive schema changes, derived from the declaration (:mod:`.tables`).

Opening a store first applies its ``MIGRATIONS`` (history, append only: what only
a person can write, such as a rename, a data move or a drop), then compares the
declaration with the database's own catalogue (:func:`sqlite_tables`: ``PRAGMA``;
:func:`postgres_tables`: ``pg_catalog``) and adds what is declared and missing,
in the same transaction as the migrations and the version:

* a table: its ``CREATE TABLE`` and ``CREATE INDEX`` statements, as for a new
  database;
* a column declared after its table's existing ones, nullable or with a default:
  ``ALTER TABLE ... ADD COLUMN`` (the rows already stored read its default, or NULL);
* an index: ``CREATE INDEX``.

So a new column, table or index is its declaration and nothing else. What no ADD
can do is refused with :class:`SchemaMismatchError`, naming the table and column,
and the transaction rolled back (the migrations before it too: nothing is written):

* a declared column the database has with another type, nullability or default;
* a new column that is NOT NULL without a default (the stored rows would have no
  value), a key or unique (SQLite cannot add one), or that references another
  table with a default (SQLite adds such a column only with none), or that is
  declared before a column the database has (``ADD COLUMN`` appends: new
  columns go last, so that an upgraded database is the same as a new one);
* a column the database has on a declared table and the declaration does not: a
  newer release added it, and this one is older (as a newer schema version is
  refused);
* a table the declaration does not name that has a foreign key to a declared one:
  a newer release's table (or another application's) whose rows this release
  does not keep up, and which could stop its deletes (a key with no cascade) or
  lose its rows to them (one with a cascade);
* an index the database has under a declared name, on other columns.

Left alone: any other table the declaration does not name (the database, or the
PostgreSQL schema, may be shared with other applications, and udpchat neither
reads nor writes their tables), indexes it does not name (an operator's own,
say), and the keys, unique constraints and foreign keys of existing columns
(``tests/test_sql_layer.py`` holds an upgraded database's to a new one's). So a
newer release's table with no foreign key to a declared one does not stop an
older release either: the older one neither reads nor writes it (nor keeps it up:
going back to an older release is still a backup's restore). Only the current
PostgreSQL schema is read: a table in another schema with a foreign key to
udpchat's is not seen.

The migrations run first, so a migration cannot count on what is derived: not
on a new column it fills from others (derived only after it), nor on one an
earlier release derived and it renames, moves or drops (a database older than
that release never had it). Such a migration begins with the table as declared
for it (a :class:`~.schema.Table` among its statements: only the columns it
needs, or the whole table if the table itself is derived), which the store
derives as here, without asking about the table's other columns
(:func:`additions`, ``partial``); the derivation after the migrations then finds
them there.

The schema version (SQLite's ``PRAGMA user_version``, PostgreSQL's
``schema_version``) counts the explicit migrations applied, and only them: two
releases at the same version may differ by what they derive. A release refuses a
database of a higher version, one with a column it does not declare, and one
with an undeclared table that references a declared one; the first release that
derives bumped each store's version once, with an empty migration, so that the
releases before it, which do not compare, refuse a database it opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from . import tables
from .base import SchemaVersionError
from .dialect import Dialect
from .schema import Column, Kind, Table

if TYPE_CHECKING:
    import psycopg  # (the postgres extra: only its store calls postgres_tables)

__all__ = [
    "LiveColumn",
    "LiveTable",
    "Migration",
    "SchemaMismatchError",
    "additions",
    "expected",
    "postgres_tables",
    "sqlite_tables",
    "upgrade",
]

Migration = tuple[str | Table, ...]
"""One of a store's ``MIGRATIONS``: statements, and tables as declared for them."""


class SchemaMismatchError(SchemaVersionError):
    """The database's schema differs from the declared one in a way no ADD can fix.

    Attributes:
        table: the table.
        column: the column (or index) at fault, "" for the table itself.
        reason: what differs, and what to do.
    """

    def __init__(self, table: str, column: str, reason: str) -> None:
        where = f"{table}.{column}" if column else table
        super().__init__(f"database schema: {where} {reason}")
        self.table = table
        self.column = column
        self.reason = reason


@attrs.frozen
class LiveColumn:
    """A column as a database's catalogue describes it (or as it would, declared)."""

    name: str
    type: str
    """Lower case: ``integer``, ``double precision``, ``bigint generated always as
    identity``..."""
    null: bool
    """Whether it may hold NULL (a key column never may)."""
    default: str | None
    """The default's text, lower case (None: no default)."""

    def describe(self) -> str:
        """``type [NOT NULL] [DEFAULT d]``, as a person reads it."""
        text = self.type + ("" if self.null else " not null")
        return text if self.default is None else f"{text} default {self.default}"


@attrs.frozen
class LiveTable:
    """A table as the catalogue describes it."""

    name: str
    columns: tuple[LiveColumn, ...]
    """In the table's order."""
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Its secondary indexes (made by CREATE INDEX): name and columns."""
    references: tuple[tuple[str, str], ...] = ()
    """Its foreign keys to tables of the same database (or PostgreSQL schema): the
    column and the table it references, one pair per column."""


def expected(table: Table, column: Column, dialect: Dialect) -> LiveColumn:
    """How ``dialect``'s catalogue describes ``column`` of ``table`` as declared."""
    keyed = column.key or column.kind is Kind.ID or column.name in table.key
    default = column.default_sql(dialect)
    return LiveColumn(
        name=column.name,
        type=column.kind.sql(dialect).lower(),
        null=column.null and not keyed,
        default=None if default is None else default.lower(),
    )


def upgrade(
    execute: Callable[[str], object],
    catalogue: Callable[[], Mapping[str, LiveTable]],
    dialect: Dialect,
    migrations: Sequence[Migration],
) -> None:
    """Apply ``migrations``, then add what :data:`.tables.TABLES` declares and the
    database lacks, in the caller's transaction.

    Args:
        execute: runs one statement.
        catalogue: the database's tables as its catalogue describes them now.
        dialect: the database's.
        migrations: those the database has not had, in order.

    Raises:
        SchemaMismatchError: a difference no ADD can fix; roll back.
    """
    for migration in migrations:
        for step in migration:
            if isinstance(step, str):
                execute(step)
            else:  # what an earlier release derived, if it is missing
                for statement in additions((step,), catalogue(), dialect, partial=True):
                    execute(statement)
    for statement in additions(tables.TABLES, catalogue(), dialect):
        execute(statement)


def additions(
    declared: Sequence[Table],
    live: Mapping[str, LiveTable],
    dialect: Dialect,
    *,
    partial: bool = False,
) -> list[str]:
    """The statements that add to the database what ``declared`` has and it lacks.

    Args:
        declared: the tables, in an order the foreign keys accept.
        live: the database's tables by name, as its catalogue describes them.
        dialect: the database's.
        partial: ``declared`` names only some columns of each table (a migration's
            step): the database's others are not asked about.

    Returns:
        The statements, to run in order in the migrations' transaction (none when
        the database is up to date).

    Raises:
        SchemaMismatchError: a difference no ADD can fix (see the module).
    """
    if not partial:
        _check_undeclared_tables(declared, live)
    statements: list[str] = []
    for table in declared:
        found = live.get(table.name)
        if found is None:
            statements.extend(table.sql(dialect))
            continue
        new = _new_columns(table, found, dialect, partial=partial)
        for column in new:
            _check_addable(table, column)
        statements.extend(
            f"ALTER TABLE {table.name} ADD COLUMN {column.sql(dialect)}" for column in new
        )
        statements.extend(_new_indexes(table, found, dialect))
    return statements


_NEWER = (
    "is in the database but not declared: a newer release added it "
    "(run that release, or restore the backup taken before it)"
)


def _check_undeclared_tables(declared: Sequence[Table], live: Mapping[str, LiveTable]) -> None:
    """Refuse a table ``declared`` does not name that references one it does.

    Any other undeclared table is left alone: the database may be shared with
    other applications. One that references a declared table is what an older
    release must not run beside: a newer release's (or another application's)
    whose rows it does not keep up, and whose foreign key could stop a delete.
    """
    # SQLite's names are case-insensitive (a key may name ACCOUNTS); PostgreSQL's
    # catalogue gives the referenced table's own name.
    names = {table.name.lower() for table in declared}
    for name, table in live.items():
        if name.lower() in names:
            continue
        ours = [(column, target) for column, target in table.references if target.lower() in names]
        if ours:
            keys = ", ".join(f"{name}.{column} references {target}" for column, target in ours)
            raise SchemaMismatchError(
                name,
                "",
                f"is in the database but not declared, and has a foreign key to a "
                f"declared table ({keys}): a newer release added it, or another "
                "application did, and its rows could stop this release's deletes (run "
                "that release, or restore the backup taken before it, or drop the key)",
            )


def _new_columns(
    table: Table, found: LiveTable, dialect: Dialect, *, partial: bool
) -> list[Column]:
    """The declared columns ``found`` lacks, once its own are checked."""
    live = {column.name: column for column in found.columns}
    declared = table.column_names
    if not partial:
        for name in live:
            if name not in declared:
                raise SchemaMismatchError(table.name, name, _NEWER)
        for position, (have, want) in enumerate(zip(live, declared, strict=False)):
            if have != want:
                if want in live:
                    raise SchemaMismatchError(
                        table.name,
                        want,
                        f"is column {position + 1} as declared, not in the database: "
                        "a column keeps its place (moving one takes a migration)",
                    )
                raise SchemaMismatchError(
                    table.name,
                    want,
                    f"is declared before {have}, which the database has: ADD COLUMN "
                    "appends, so a new column is declared after the existing ones",
                )
    for column in table.columns:
        if column.name in live:
            want_column = expected(table, column, dialect)
            have_column = live[column.name]
            if have_column != want_column:
                raise SchemaMismatchError(
                    table.name,
                    column.name,
                    f"is {have_column.describe()} in the database, declared "
                    f"{want_column.describe()}: no ADD changes a column (that takes "
                    "a migration)",
                )
    return [column for column in table.columns if column.name not in live]


def _check_addable(table: Table, column: Column) -> None:
    """Refuse a new column that ADD COLUMN cannot add to rows already stored."""
    in_keys = column.name in table.key or any(column.name in u for u in table.unique)
    if column.key or column.kind is Kind.ID or column.unique or in_keys:
        reason = "is new and a key or unique: ADD COLUMN cannot add one (that takes a migration)"
    elif not column.null and column.default is None:
        reason = (
            "is new and NOT NULL without a default: the rows already stored would have "
            "no value (declare a default, or null=True, or fill it in a migration)"
        )
    elif column.references and column.default is not None:
        reason = (
            "is new, references another table and has a default: SQLite adds such "
            "a column only with none (declare it null=True with no default)"
        )
    else:
        return
    raise SchemaMismatchError(table.name, column.name, reason)


def _new_indexes(table: Table, found: LiveTable, dialect: Dialect) -> Iterator[str]:
    """CREATE INDEX for each declared index ``found`` lacks."""
    live = dict(found.indexes)
    for index in table.indexes:
        if index.only not in (None, dialect):
            continue
        columns = live.get(index.name)
        if columns is None:
            yield f"CREATE INDEX {index.name} ON {table.name} ({', '.join(index.columns)})"
        elif columns != index.columns:
            raise SchemaMismatchError(
                table.name,
                index.name,
                f"(an index) is on ({', '.join(columns)}) in the database, declared on "
                f"({', '.join(index.columns)}): a changed index takes a migration",
            )


# --- each database's catalogue, described as expected() describes the declaration -------


def sqlite_tables(db: sqlite3.Connection) -> dict[str, LiveTable]:
    """The tables of ``db``'s main schema as SQLite describes them, by name."""
    found: dict[str, LiveTable] = {}
    tables = db.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    for (table,) in tables:
        columns = tuple(
            # A key column is never NULL, whatever the flag says (a rowid's is 0).
            LiveColumn(
                name,
                kind.lower(),
                null=not notnull and not key,
                default=None if default is None else default.lower(),
            )
            for name, kind, notnull, default, key in db.execute(
                'SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info(?) '
                "ORDER BY cid",
                (table,),
            )
        )
        indexes = tuple(
            (index, tuple(c for (c,) in db.execute(_INDEX_COLUMNS, (index,))))
            for (index,) in db.execute(
                "SELECT name FROM pragma_index_list(?) WHERE origin = 'c'", (table,)
            ).fetchall()
        )
        references = tuple(
            (column, target)
            for column, target in db.execute(
                'SELECT "from", "table" FROM pragma_foreign_key_list(?) ORDER BY id, seq',
                (table,),
            )
        )
        found[table] = LiveTable(table, columns, indexes, references)
    return found


_INDEX_COLUMNS = "SELECT name FROM pragma_index_info(?) ORDER BY seqno"


def postgres_tables(db: psycopg.Connection[Any]) -> dict[str, LiveTable]:
    """The tables of the connection's current schema as PostgreSQL describes them
    (but ``schema_version``, the migrations' own).

    Read from ``pg_catalog`` itself: ``information_schema.columns`` says the same,
    but planning that view took a new connection 30 ms more, at every start.
    """
    columns: dict[str, list[LiveColumn]] = {}
    for table, name, data_type, nullable, default, identity in db.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, NULL), NOT a.attnotnull, "
        "pg_get_expr(d.adbin, d.adrelid), a.attidentity "
        "FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid "
        "LEFT JOIN pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' "
        "AND c.relname <> 'schema_version' AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY c.relname, a.attnum"
    ):
        # An identity column as the declaration writes it.
        kind = f"{data_type} generated {_IDENTITY[identity]} as identity" if identity else data_type
        columns.setdefault(table, []).append(
            LiveColumn(name, kind, nullable, None if default is None else default.lower())
        )
    indexes: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for table, index, names in db.execute(
        # Secondary indexes only (a key's or a UNIQUE's is its constraint's).
        "SELECT t.relname, i.relname, ARRAY(SELECT a.attname "
        "  FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k (number, place) "
        "  JOIN pg_attribute AS a ON a.attrelid = t.oid AND a.attnum = k.number "
        "  ORDER BY k.place) "
        "FROM pg_index AS x JOIN pg_class AS i ON i.oid = x.indexrelid "
        "JOIN pg_class AS t ON t.oid = x.indrelid "
        "WHERE t.relnamespace = current_schema()::regnamespace AND NOT x.indisunique"
    ):
        indexes.setdefault(table, []).append((index, tuple(names)))
    references: dict[str, list[tuple[str, str]]] = {}
    for table, column, target in db.execute(
        # Foreign keys between tables of this schema (an undeclared table's to a
        # declared one is refused), one row per column.
        "SELECT c.relname, a.attname, t.relname "
        "FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.conrelid "
        "JOIN pg_class AS t ON t.oid = k.confrelid "
        "JOIN pg_attribute AS a ON a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey) "
        "WHERE k.contype = 'f' AND c.relnamespace = current_schema()::regnamespace "
        "AND t.relnamespace = c.relnamespace ORDER BY c.relname, k.conname, a.attnum"
    ):
        references.setdefault(table, []).append((column, target))
    return {
        table: LiveTable(
            table, tuple(found), tuple(indexes.get(table, ())), tuple(references.get(table, ()))
        )
        for table, found in columns.items()
    }


_IDENTITY = {"a": "always", "d": "by default"}
"""``pg_attribute.attidentity``'s codes."""
