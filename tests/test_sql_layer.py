"""The SQL layer under both stores (``udpchat_server.stores``); the stores' behaviour
is the contract suite's (``test_store.py``, on every store).

The schema is declared once (each table in its concept's module, gathered in
``stores.tables``) and built by each store's
migrations and then the additions derived from the declaration (``stores.derive``):
a database built from empty, or from an older version, must be exactly the
declared one, so that neither can drift from the other. Compared through each database's own
catalogue (``PRAGMA`` on SQLite, ``information_schema`` and ``pg_catalog`` on
PostgreSQL): columns in order with their types, nullability and defaults, keys,
foreign keys and indexes.
"""

from __future__ import annotations

import abc
import ast
import contextlib
import inspect
import sqlite3
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import strategies
from tests.services import POSTGRES_URL, postgres_database, postgres_store
from udpchat_proto import Store, StoreUnavailableError
from udpchat_proto.chat import STORE_READS, STORE_WRITES
from udpchat_proto.chat.passwords import PasswordHash, ScryptParams
from udpchat_proto.e2ee import DeviceKeys
from udpchat_server.stores import derive, records, schema, tables
from udpchat_server.stores import postgres as postgres_store_module
from udpchat_server.stores import sqlite as sqlite_store
from udpchat_server.stores.base import SqlStore
from udpchat_server.stores.derive import SchemaMismatchError, additions
from udpchat_server.stores.dialect import POSTGRES, SQLITE, Dialect
from udpchat_server.stores.postgres import PostgresStore
from udpchat_server.stores.primitives import SqlPrimitives
from udpchat_server.stores.sqlite import SQLiteStore


def sqlite_catalogue(db: sqlite3.Connection) -> dict[str, Any]:
    """Every table of ``db`` as SQLite describes it."""
    tables = [
        (name, without_rowid)
        for name, without_rowid in db.execute(
            "SELECT name, wr FROM pragma_table_list "
            "WHERE schema = 'main' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    found: dict[str, Any] = {}
    for name, without_rowid in tables:
        indexes = [
            (
                index,
                unique,
                origin,
                [
                    column
                    for (column,) in db.execute(
                        "SELECT name FROM pragma_index_info(?) ORDER BY seqno", (index,)
                    )
                ],
            )
            for index, unique, origin in db.execute(
                'SELECT name, "unique", origin FROM pragma_index_list(?) ORDER BY name', (name,)
            )
        ]
        found[name] = {
            "without rowid": without_rowid,
            "columns": db.execute(
                'SELECT cid, name, type, "notnull", dflt_value, pk FROM pragma_table_info(?)',
                (name,),
            ).fetchall(),
            "foreign keys": sorted(
                db.execute(
                    'SELECT "table", "from", "to", on_update, on_delete '
                    "FROM pragma_foreign_key_list(?)",
                    (name,),
                ).fetchall()
            ),
            "indexes": indexes,
        }
    return found


def postgres_catalogue(db: psycopg.Connection[Any], namespace: str) -> dict[str, Any]:
    """Every table of the schema ``namespace`` as PostgreSQL describes it (its
    own name left out, so that two schemas compare)."""
    found: dict[str, Any] = {}
    for table, *column in db.execute(
        "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, "
        "column_default, is_identity, identity_generation FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name <> 'schema_version' "
        "ORDER BY table_name, ordinal_position",
        (namespace,),
    ):
        found.setdefault(table, {"columns": [], "constraints": [], "indexes": []})
        found[table]["columns"].append(tuple(column))
    for table, name, kind, definition in db.execute(
        "SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid) "
        "FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.conrelid "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE n.nspname = %s "
        "ORDER BY c.relname, k.conname",
        (namespace,),
    ):
        if table in found:
            found[table]["constraints"].append(
                (name, kind, definition.replace(f"{namespace}.", ""))
            )
    for table, name, definition in db.execute(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s "
        "ORDER BY tablename, indexname",
        (namespace,),
    ):
        if table in found:
            found[table]["indexes"].append((name, definition.replace(f"{namespace}.", "")))
    return found


def test_the_migrated_sqlite_schema_is_the_declared_one(tmp_path: Path) -> None:
    with SQLiteStore.open(tmp_path / "migrated.sqlite3") as store:
        migrated = sqlite_catalogue(store.connection)
    declared_db = sqlite3.connect(tmp_path / "declared.sqlite3", isolation_level=None)
    try:
        for statement in tables.ddl(SQLITE):
            declared_db.execute(statement)
        declared = sqlite_catalogue(declared_db)
    finally:
        declared_db.close()
    assert list(declared) == sorted(table.name for table in tables.TABLES)
    assert migrated == declared


@contextlib.contextmanager
def postgres_schema() -> Iterator[tuple[psycopg.Connection[Any], str]]:
    """A connection and a fresh schema on it, dropped afterwards."""
    namespace = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
        db.execute(f'CREATE SCHEMA "{namespace}"')
        try:
            yield db, namespace
        finally:
            db.execute(f'DROP SCHEMA IF EXISTS "{namespace}" CASCADE')


def test_the_migrated_postgres_schema_is_the_declared_one() -> None:
    with postgres_store() as store:
        assert store._schema is not None
        with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
            migrated = postgres_catalogue(db, store._schema)
    with postgres_schema() as (db, namespace):
        db.execute(f'SET search_path TO "{namespace}"')
        for statement in tables.ddl(POSTGRES):
            db.execute(statement)
        declared = postgres_catalogue(db, namespace)
    assert sorted(declared) == sorted(table.name for table in tables.TABLES)
    assert migrated == declared


# --- the dialect step -----------------------------------------------------------------


def test_a_shared_statement_becomes_each_databases() -> None:
    shared = (
        "SELECT GREATEST(a, LEAST(b, ?)), octet_length(text) FROM t "
        "WHERE k = :key AND r LIKE '#%' AND c = x::bytea "
        'ORDER BY n COLLATE "C"'
    )
    assert SQLITE.sql(shared) == (
        "SELECT MAX(a, MIN(b, ?)), length(CAST(text AS BLOB)) FROM t "
        "WHERE k = :key AND r LIKE '#%' AND c = x::bytea ORDER BY n"
    )
    assert POSTGRES.sql(shared) == (
        "SELECT GREATEST(a, LEAST(b, %s)), octet_length(text) FROM t "
        "WHERE k = %(key)s AND r LIKE '#%%' AND c = x::bytea "
        'ORDER BY n COLLATE "C"'
    )
    assert SQLITE.sql(shared) is SQLITE.sql(shared)  # rewritten once


def test_of_the_protocol_each_store_defines_only_what_it_does_its_own_way() -> None:
    # The rest is SqlStore's, written once: a method copied back into a store
    # module would be two to keep alike again.
    from udpchat_server.stores.postgres import PostgresStore
    from udpchat_server.stores.sqlite import SQLiteStore

    protocol = [name for name in vars(Store) if not name.startswith("_")]
    own = {"add_message", "atomic", "close", "commit"}
    # PostgreSQL's batched statements (stores/batched.py), and the quota's counter
    # it reads once a second: a round trip each would cost a node more than the work.
    batched = {"add_messages", "acknowledge_many", "pending_deliveries_many", "stored_bytes"}
    # SQLite's encrypted message: three statements and no savepoint, where the
    # shared one (an atomic block around add_message and add_encrypted) takes six.
    sqlite_own = own | {"add_encrypted_message"}
    for store, expected in ((SQLiteStore, sqlite_own), (PostgresStore, own | batched)):
        assert issubclass(store, SqlStore)
        defined = {
            name
            for name in protocol
            if inspect.unwrap(getattr(store, name)).__qualname__.startswith(store.__name__)
        }
        assert defined == expected, store


# --- the concepts: SqlStore made of stateless classes ------------------------------------
#
# Each concept module (stores/accounts.py, social.py ...) holds its tables and a class of
# the Store methods over them, written against SqlPrimitives. Unlike mixins that share
# attributes, a concept class keeps no state: what a reader sees of it is all there is.

CONCEPTS: Final = tuple(base for base in SqlStore.__bases__ if base is not abc.ABC)


# What Python and abc put in a class's namespace.
_CLASS_MACHINERY: Final = {
    "__module__",
    "__qualname__",
    "__doc__",
    "__firstlineno__",
    "__static_attributes__",
    "__annotations__",  # (empty: checked above)
    "__abstractmethods__",
    "_abc_impl",
}


def _assigned_attributes(cls: type) -> list[str]:
    """The attributes of ``self`` that a method of ``cls`` sets (``self.x = ...``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for part in ast.walk(target):
                if (
                    isinstance(part, ast.Attribute)
                    and isinstance(part.value, ast.Name)
                    and part.value.id == "self"
                    and isinstance(part.ctx, ast.Store)
                ):
                    found.append(part.attr)
    return found


def test_the_concept_classes_hold_no_state() -> None:
    assert [cls.__name__ for cls in CONCEPTS] == [
        "AccountsSQL",
        "SocialSQL",
        "RoomsSQL",
        "MessagesSQL",
        "DevicesSQL",
    ]
    for cls in CONCEPTS:
        assert cls.__bases__ == (SqlPrimitives,), cls
        assert "__init__" not in vars(cls), cls
        assert "__slots__" not in vars(cls), cls
        assert not getattr(cls, "__annotations__", {}), cls  # no declared attribute
        for name, value in vars(cls).items():
            if name not in _CLASS_MACHINERY:
                assert inspect.isfunction(value), (cls, name)  # methods only
        assert _assigned_attributes(cls) == [], cls
    assert _assigned_attributes(SqlPrimitives) == []


def test_each_store_method_is_defined_once_in_its_concept_or_by_a_database() -> None:
    from udpchat_server.stores.postgres import PostgresStore
    from udpchat_server.stores.sqlite import SQLiteStore

    protocol = [name for name in vars(Store) if not name.startswith("_")]
    assert set(protocol) >= STORE_READS | STORE_WRITES
    # A database's own Store methods (see
    # test_of_the_protocol_each_store_defines_only_what_it_does_its_own_way): no
    # concept defines them.
    own = {"add_message", "atomic", "close", "commit"}
    engines = {
        name
        for store in (SQLiteStore, PostgresStore)
        for name in protocol
        if inspect.unwrap(getattr(store, name)).__qualname__.startswith(store.__name__)
    }
    for name in protocol:
        defined_in = [
            cls.__name__
            for cls in CONCEPTS
            if name in vars(cls) and not getattr(vars(cls)[name], "__isabstractmethod__", False)
        ]
        if name in own:
            assert defined_in == [], name
        else:
            assert len(defined_in) == 1, (name, defined_in)
            # What SqlStore runs is the concept's method (a database may override it).
            assert inspect.unwrap(getattr(SqlStore, name)).__qualname__.startswith(defined_in[0])
    assert engines >= own
    # Each concept's tables are declared in its module, and every table in one.
    modules = [sys.modules[cls.__module__] for cls in CONCEPTS]
    assert [t.name for module in modules for t in module.TABLES] == [
        table.name for table in tables.TABLES
    ]


def test_an_error_inside_a_concept_method_is_translated_on_sqlite(tmp_path: Path) -> None:
    with SQLiteStore.open(tmp_path / "db.sqlite3") as store:
        store.add_invitation("alice", "bob", 1.0)
        store.commit()
        # An outside cause (a full disk: no page can be added) becomes
        # StoreUnavailableError, raised from inside SocialSQL.add_invitation.
        (pages,) = store.connection.execute("PRAGMA page_count").fetchone()
        store.connection.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StoreUnavailableError) as failure:
            for n in range(500):  # until a new page is needed
                store.add_invitation(f"user{n}-{'x' * 60}", "bob", 2.0)
        assert failure.value.reason == "disk full"
    with SQLiteStore.open(tmp_path / "db.sqlite3") as store:
        # A bug (the table gone) is raised as it is, not disguised.
        store.connection.execute("DROP TABLE one_time_keys")
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            store.key_counts(b"d" * 16)


def test_an_error_inside_a_concept_method_is_translated_on_postgres() -> None:
    with postgres_store() as store:
        # An outside cause (the server ended the connection) becomes
        # StoreUnavailableError, raised from inside AccountsSQL.get_account.
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store.connection.info.backend_pid,))
        with pytest.raises(StoreUnavailableError) as failure:
            store.get_account("alice")
        assert failure.value.reason == "database shutting down"  # (its SQLSTATE, 57P01)
    with postgres_store() as store:
        # A bug (the table gone) is raised as it is, not disguised.
        store.connection.execute("DROP TABLE one_time_keys")
        store.connection.commit()
        with pytest.raises(psycopg.errors.UndefinedTable):
            store.key_counts(b"d" * 16)


# --- end-to-end encryption's records as the stores keep them ------------------------------


@settings(max_examples=200)
@given(
    record=st.one_of(
        strategies.device_keys,
        strategies.one_time_keys,
        strategies.key_shares,
        strategies.chat_messages.filter(lambda message: message.ciphertext is not None).map(
            lambda message: message.ciphertext
        ),
    )
)
def test_a_stored_record_reads_back_as_it_was(record: Any) -> None:
    assert records.unpack(type(record), records.pack(record)) == record
    assert records.unpack(type(record), memoryview(records.pack(record))) == record


def _hex(_instance: object, _field: object, value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


@settings(max_examples=200)
@given(
    record=st.one_of(
        strategies.device_keys,
        strategies.one_time_keys,
        strategies.key_shares,
        strategies.FIELD_STRATEGIES["keys"],  # (a KeysUpload: tuples of records)
        strategies.chat_messages.filter(lambda message: message.ciphertext is not None).map(
            lambda message: message.ciphertext
        ),
    )
)
def test_a_record_is_stored_as_attrs_writes_it_with_bytes_in_hex(record: Any) -> None:
    # pack writes the fields out itself (attrs.asdict was a tenth of storing an
    # encrypted message): the stored bytes are still what asdict made, so that a
    # database written before reads the same, and one written now reads before.
    assert records.pack(record) == orjson.dumps(attrs.asdict(record, value_serializer=_hex))


@settings(max_examples=50)
@given(keys=st.lists(strategies.device_keys, min_size=1, max_size=5, unique=True))
def test_a_device_record_is_built_once_and_read_back_as_it_was(keys: list[Any]) -> None:
    for record in keys:
        stored = records.pack(record)
        first = records.unpack_device(memoryview(stored))
        assert first == record
        assert records.unpack_device(stored) is first  # built once, then remembered


def test_the_device_records_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "DEVICE_CACHE_SIZE", 2)
    monkeypatch.setattr(records, "_devices", {})
    made = [
        DeviceKeys(
            user=f"user{n}",
            device_id=bytes([n]) * 16,
            curve25519=bytes(32),
            ed25519=bytes(32),
            signature=bytes(64),
        )
        for n in range(3)
    ]
    for record in made:
        assert records.unpack_device(records.pack(record)) == record
    assert list(records._devices.values()) == made[1:]  # the oldest went first


# --- additive changes, derived from the declaration ----------------------------------------
#
# A release may add a table, a column (nullable, or with a default) or an index by
# declaring it in its concept module alone: opening an older database adds it. Shown
# here with a declaration that has such additions (EXTENDED), put in place of the
# real one as a release's would be.


def released_sql(
    migrations: Iterable[derive.Migration], dialect: Dialect = SQLITE
) -> Iterator[str]:
    """The statements of released migrations, to build an old database by hand (a
    step that is a table as declared for its migration: its columns added, as a
    database these statements built has none of them)."""
    for migration in migrations:
        for step in migration:
            if isinstance(step, str):
                yield step
            else:
                for column in step.columns:
                    yield f"ALTER TABLE {step.name} ADD COLUMN {column.sql(dialect)}"


def _extend(table: schema.Table) -> schema.Table:
    if table.name == "accounts":
        return attrs.evolve(
            table,
            columns=(
                *table.columns,
                schema.Column("motto", schema.Kind.TEXT, null=True),
                schema.Column("karma", schema.Kind.INT, default=7),
                schema.Column("verified", schema.Kind.BOOL, default=1),
            ),
            indexes=(*table.indexes, schema.Index("accounts_by_karma", ("karma",))),
        )
    if table.name == "messages":
        return attrs.evolve(
            table,
            columns=(
                *table.columns,
                schema.Column("edited_at", schema.Kind.TIME, null=True),
                schema.Column(
                    "reply_to", schema.Kind.INT, null=True, references="messages (position)"
                ),
            ),
            indexes=(*table.indexes, schema.Index("messages_by_sender", ("sender", "seq"))),
        )
    return table


EXTENDED: Final = (
    *(_extend(table) for table in tables.TABLES),
    schema.Table(
        "reactions",
        (
            schema.Column(
                "message_id", schema.Kind.BYTES, references="messages (id) ON DELETE CASCADE"
            ),
            schema.Column("username", schema.Kind.TEXT),
            schema.Column("emoji", schema.Kind.TEXT),
        ),
        key=("message_id", "username"),
        indexes=(schema.Index("reactions_by_user", ("username",)),),
    ),
)
"""The declaration, plus: three new columns of accounts (nullable; an integer and a
flag with defaults) and an index on one, two of messages (one a foreign key) and an
index on old columns, and a new table with its own index."""


PASSWORD: Final = PasswordHash(
    salt=b"s" * 16, params=ScryptParams(n=16), digest=b"d" * 32
).to_string()


def declared_sqlite(tmp_path: Path, name: str) -> dict[str, Any]:
    """The catalogue of a new SQLite database made from tables.TABLES as it is now."""
    db = sqlite3.connect(tmp_path / name, isolation_level=None)
    try:
        for statement in tables.ddl(SQLITE):
            db.execute(statement)
        return sqlite_catalogue(db)
    finally:
        db.close()


def old_sqlite(path: Path, version: int) -> None:
    """An SQLite database at ``version`` (2 or later), with an account and a message."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in released_sql(sqlite_store.MIGRATIONS[:version]):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {version:d}")
        db.execute(
            "INSERT INTO accounts (username, password, created_at) VALUES ('ann', ?, 1)",
            (PASSWORD,),
        )
        db.execute("INSERT INTO conversations (key, is_room, created_at) VALUES ('#r', 1, 1)")
        db.execute(
            "INSERT INTO messages (id, conversation, seq, sender, recipient, text, sent_at) "
            "VALUES (x'01', 1, 1, 'ann', '#r', 'hi', 0)"
        )
    finally:
        db.close()


@pytest.mark.parametrize("version", [2, 8, sqlite_store.SCHEMA_VERSION])
def test_sqlite_derives_a_new_column_table_and_index_from_the_declaration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    path = tmp_path / "old.sqlite3"
    old_sqlite(path, version)
    monkeypatch.setattr(tables, "TABLES", EXTENDED)
    with SQLiteStore.open(path) as store:
        db = store.connection
        assert db.execute("PRAGMA user_version").fetchone() == (sqlite_store.SCHEMA_VERSION,)
        # The rows stored before read the new columns' defaults.
        assert db.execute("SELECT motto, karma, verified FROM accounts").fetchall() == [
            (None, 7, 1)
        ]
        assert db.execute("SELECT edited_at, reply_to FROM messages").fetchall() == [(None, None)]
        db.execute("INSERT INTO reactions VALUES (x'01', 'ann', '+1')")  # (not committed)
        assert store.get_account("ann") is not None
        derived = sqlite_catalogue(db)
    # Exactly what a new database gets from the same declaration.
    assert derived == declared_sqlite(tmp_path, "declared.sqlite3")
    with SQLiteStore.open(path) as store:  # and opening it again changes nothing
        assert sqlite_catalogue(store.connection) == derived
        assert additions(tables.TABLES, derive.sqlite_tables(store.connection), SQLITE) == []


def test_the_released_schema_needs_nothing_derived(tmp_path: Path) -> None:
    # The migrations build the whole declaration: derivation is only for what a
    # later release declares.
    with SQLiteStore.open(tmp_path / "db.sqlite3") as store:
        assert additions(tables.TABLES, derive.sqlite_tables(store.connection), SQLITE) == []
    with postgres_store() as pg:
        assert additions(tables.TABLES, derive.postgres_tables(pg.connection), POSTGRES) == []


def _without(table_name: str, column_name: str) -> tuple[schema.Table, ...]:
    return tuple(
        attrs.evolve(table, columns=tuple(c for c in table.columns if c.name != column_name))
        if table.name == table_name
        else table
        for table in tables.TABLES
    )


def _with_column(table_name: str, column: schema.Column) -> tuple[schema.Table, ...]:
    return tuple(
        attrs.evolve(table, columns=(*table.columns, column)) if table.name == table_name else table
        for table in tables.TABLES
    )


def test_sqlite_refuses_what_no_add_can_do_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.sqlite3"
    old_sqlite(path, 8)
    db = sqlite3.connect(path)
    try:
        untouched = sqlite_catalogue(db)
    finally:
        db.close()
    # A new NOT NULL column with no default: the stored account would have no value.
    monkeypatch.setattr(
        tables, "TABLES", _with_column("accounts", schema.Column("score", schema.Kind.INT))
    )
    with pytest.raises(SchemaMismatchError) as refused:
        SQLiteStore.open(path)
    assert (refused.value.table, refused.value.column) == ("accounts", "score")
    assert "NOT NULL without a default" in str(refused.value)
    # Nothing of it was written, not even the migrations 9 and 10 that came first.
    db = sqlite3.connect(path)
    try:
        assert sqlite_catalogue(db) == untouched
        assert db.execute("PRAGMA user_version").fetchone() == (8,)
    finally:
        db.close()


def test_a_database_with_a_column_this_release_does_not_declare_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a newer schema version is: a newer release derived it. A backup of that
    # database (SQLite's online backup, as `ctl backup` takes) is the same database.
    path = tmp_path / "newer.sqlite3"
    SQLiteStore.open(path).close()
    monkeypatch.setattr(tables, "TABLES", _without("accounts", "stored_bytes"))
    copy = tmp_path / "backup.sqlite3"
    source, target = sqlite3.connect(path), sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    for database in (path, copy):
        with pytest.raises(SchemaMismatchError) as refused:
            SQLiteStore.open(database)
        assert (refused.value.table, refused.value.column) == ("accounts", "stored_bytes")
        assert "a newer release added it" in str(refused.value)


_ACCOUNTS = next(table for table in tables.TABLES if table.name == "accounts")
_LIVE_ACCOUNTS = {
    "accounts": derive.LiveTable(
        "accounts",
        tuple(derive.expected(_ACCOUNTS, column, SQLITE) for column in _ACCOUNTS.columns),
    )
}


def _accounts(*columns: schema.Column, **changes: Any) -> tuple[schema.Table, ...]:
    return (attrs.evolve(_ACCOUNTS, columns=columns or _ACCOUNTS.columns, **changes),)


_INT, _TEXT = schema.Kind.INT, schema.Kind.TEXT
_OLD = _ACCOUNTS.columns


@pytest.mark.parametrize(
    ("declared", "column", "reason"),
    [
        ((*_OLD, schema.Column("n", _INT)), "n", "NOT NULL without a default"),
        ((*_OLD, schema.Column("n", _INT, null=True, unique=True)), "n", "key or unique"),
        ((*_OLD, schema.Column("n", _INT, default=0, key=True)), "n", "key or unique"),
        (
            (*_OLD, schema.Column("n", _INT, default=1, references="conversations (id)")),
            "n",
            "references another table and has a default",
        ),
        ((schema.Column("n", _INT, null=True), *_OLD), "n", "declared before username"),
        ((*reversed(_OLD),), "stored_bytes", "keeps its place"),
        (_OLD[:-1], "stored_bytes", "a newer release added it"),
        (
            (*_OLD[:-1], attrs.evolve(_OLD[-1], kind=_TEXT)),
            "stored_bytes",
            "is integer not null default 0 in the database, declared text not null default 0",
        ),
        ((*_OLD[:-1], attrs.evolve(_OLD[-1], null=True)), "stored_bytes", "declared integer "),
        ((*_OLD[:-1], attrs.evolve(_OLD[-1], default=1)), "stored_bytes", "default 1"),
    ],
)
def test_what_no_add_can_do_is_refused_naming_the_column(
    declared: tuple[schema.Column, ...], column: str, reason: str
) -> None:
    with pytest.raises(SchemaMismatchError) as refused:
        additions(_accounts(*declared), _LIVE_ACCOUNTS, SQLITE)
    assert (refused.value.table, refused.value.column) == ("accounts", column)
    assert reason in str(refused.value)


def test_a_new_column_in_a_unique_pair_is_refused() -> None:
    declared = _accounts(*_OLD, schema.Column("n", _INT, default=0), unique=(("username", "n"),))
    with pytest.raises(SchemaMismatchError, match="key or unique"):
        additions(declared, _LIVE_ACCOUNTS, SQLITE)


def test_an_index_on_other_columns_is_refused_and_an_undeclared_one_left_alone() -> None:
    live = {
        "accounts": attrs.evolve(
            _LIVE_ACCOUNTS["accounts"],
            indexes=(("accounts_by_age", ("created_at",)), ("operators_own", ("disabled",))),
        )
    }
    declared = _accounts(indexes=(schema.Index("accounts_by_age", ("username", "created_at")),))
    with pytest.raises(SchemaMismatchError) as refused:
        additions(declared, live, SQLITE)
    assert refused.value.column == "accounts_by_age"
    assert additions(_accounts(), live, SQLITE) == []  # (operators_own is not ours)


def test_a_migration_finds_what_an_earlier_release_derived_whether_or_not_it_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Release A derived accounts.karma; release B renames it, with a migration
    # that begins with the column as A declared it: a database that never met A
    # gets it first, one that did keeps its values.
    karma = schema.Column("karma", _INT, default=7)
    release_a = _with_column("accounts", karma)
    release_b = _with_column("accounts", attrs.evolve(karma, name="score"))
    rename = (
        schema.Table("accounts", (karma,)),
        "ALTER TABLE accounts RENAME COLUMN karma TO score",
    )
    met_a, never_met_a = tmp_path / "met.sqlite3", tmp_path / "never.sqlite3"
    for path in (met_a, never_met_a):
        old_sqlite(path, sqlite_store.SCHEMA_VERSION)
    monkeypatch.setattr(tables, "TABLES", release_a)
    with SQLiteStore.open(met_a) as store:
        store.connection.execute("BEGIN")
        store.connection.execute("UPDATE accounts SET karma = 99")
        store.connection.execute("COMMIT")
    monkeypatch.setattr(tables, "TABLES", release_b)
    monkeypatch.setattr(sqlite_store, "MIGRATIONS", (*sqlite_store.MIGRATIONS, rename))
    monkeypatch.setattr(sqlite_store, "SCHEMA_VERSION", sqlite_store.SCHEMA_VERSION + 1)
    for path, score in ((met_a, 99), (never_met_a, 7)):
        with SQLiteStore.open(path) as store:
            assert store.connection.execute("SELECT score FROM accounts").fetchall() == [(score,)]
    with contextlib.closing(sqlite3.connect(met_a)) as db:
        assert declared_sqlite(tmp_path, "b.sqlite3") == sqlite_catalogue(db)


# --- the same on PostgreSQL ------------------------------------------------------------


def old_postgres(db: psycopg.Connection[Any], version: int) -> None:
    """The schema on ``db``'s search path at ``version``, with an account and a message."""
    for statement in released_sql(postgres_store_module.MIGRATIONS[:version], POSTGRES):
        db.execute(statement)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (%s)", (version,))
    db.execute(
        "INSERT INTO accounts (username, password, created_at) VALUES ('ann', %s, 1)",
        (PASSWORD,),
    )
    db.execute("INSERT INTO conversations (key, is_room, created_at) VALUES ('#r', TRUE, 1)")
    db.execute(
        "INSERT INTO messages (id, conversation, seq, sender, recipient, text, sent_at) "
        "SELECT '\\x01'::bytea, id, 1, 'ann', '#r', 'hi', 0 FROM conversations"
    )


def declared_postgres() -> dict[str, Any]:
    """The catalogue of a new PostgreSQL schema made from tables.TABLES as it is now."""
    with postgres_schema() as (db, namespace):
        db.execute(f'SET search_path TO "{namespace}"')
        for statement in tables.ddl(POSTGRES):
            db.execute(statement)
        return postgres_catalogue(db, namespace)


@pytest.mark.parametrize("version", [1, postgres_store_module.SCHEMA_VERSION])
def test_postgres_derives_a_new_column_table_and_index_from_the_declaration(
    monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    with postgres_schema() as (db, namespace):
        db.execute(f'SET search_path TO "{namespace}"')
        old_postgres(db, version)
        monkeypatch.setattr(tables, "TABLES", EXTENDED)
        with PostgresStore.open(POSTGRES_URL, schema=namespace) as store:
            pg = store.connection
            assert pg.execute("SELECT motto, karma, verified FROM accounts").fetchall() == [
                (None, 7, True)
            ]
            assert pg.execute("SELECT edited_at, reply_to FROM messages").fetchall() == [
                (None, None)
            ]
            assert pg.execute("SELECT version FROM schema_version").fetchall() == [
                (postgres_store_module.SCHEMA_VERSION,)
            ]
        derived = postgres_catalogue(db, namespace)
        assert derived == declared_postgres()
        with PostgresStore.open(POSTGRES_URL, schema=namespace) as store:  # again: no change
            assert postgres_catalogue(db, namespace) == derived
            assert additions(EXTENDED, derive.postgres_tables(store.connection), POSTGRES) == []


def _retyped(table_name: str, column_name: str, kind: schema.Kind) -> tuple[schema.Table, ...]:
    return tuple(
        attrs.evolve(
            table,
            columns=tuple(
                attrs.evolve(c, kind=kind) if c.name == column_name else c for c in table.columns
            ),
        )
        if table.name == table_name
        else table
        for table in tables.TABLES
    )


@pytest.mark.parametrize(
    ("declared", "column", "reason"),
    [
        # A new NOT NULL column with no default.
        (_with_column("messages", schema.Column("score", _INT)), "score", "without a default"),
        # A column the database has with another type.
        (
            _retyped("messages", "text", schema.Kind.BYTES),
            "text",
            "is text not null in the database, declared bytea not null",
        ),
    ],
)
def test_postgres_refuses_what_no_add_can_do_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch,
    declared: tuple[schema.Table, ...],
    column: str,
    reason: str,
) -> None:
    with postgres_schema() as (db, namespace):
        db.execute(f'SET search_path TO "{namespace}"')
        old_postgres(db, 2)
        untouched = postgres_catalogue(db, namespace)
        monkeypatch.setattr(tables, "TABLES", declared)
        with pytest.raises(SchemaMismatchError) as refused:
            PostgresStore.open(POSTGRES_URL, schema=namespace)
        assert (refused.value.table, refused.value.column) == ("messages", column)
        assert reason in str(refused.value)
        # Not even the migrations 3 to 5 that came before the refusal.
        assert postgres_catalogue(db, namespace) == untouched
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(2,)]


def test_two_postgres_nodes_opening_an_old_database_at_once_derive_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A database of its own: the migration's advisory lock is the database's.
    monkeypatch.setattr(tables, "TABLES", EXTENDED)
    with postgres_database() as url, psycopg.connect(url, autocommit=True) as admin:
        old_postgres(admin, 2)
        outcomes: list[object] = []

        def node() -> None:
            try:
                PostgresStore.open(url).close()
                outcomes.append("opened")
            except Exception as exc:  # reported below
                outcomes.append(exc)

        # Hold the lock so that both nodes are waiting for it before either goes on.
        admin.execute("SELECT pg_advisory_lock(7252388)")
        nodes = [threading.Thread(target=node) for _ in range(2)]
        for thread in nodes:
            thread.start()
        deadline = time.monotonic() + 20
        while admin.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone() != (2,):
            assert time.monotonic() < deadline, "the nodes never waited for the lock"
            time.sleep(0.01)
        admin.execute("SELECT pg_advisory_unlock(7252388)")
        for thread in nodes:
            thread.join(timeout=30)
            assert not thread.is_alive()
        assert outcomes == ["opened", "opened"]
        namespace = admin.execute("SELECT current_schema()").fetchone()
        assert namespace is not None
        assert postgres_catalogue(admin, namespace[0]) == declared_postgres()


# --- tables the release does not declare ------------------------------------------------

# Another application's table, sharing the database: no key to udpchat's.
_THEIRS = (
    "CREATE TABLE crm_contacts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, owner TEXT)",
    "CREATE INDEX crm_contacts_by_owner ON crm_contacts (owner)",
    "INSERT INTO crm_contacts VALUES (1, 'Ann', 'ann')",
)
# A newer release's table (or another application's) whose key could stop a delete.
_REFERENCING = "CREATE TABLE reactions (message_id INTEGER, account TEXT REFERENCES accounts)"


def test_an_undeclared_table_is_refused_only_with_a_key_to_a_declared_one() -> None:
    theirs = derive.LiveTable(
        "crm_contacts",
        (derive.LiveColumn("id", "integer", False, None),),
        references=(("parent", "crm_contacts"),),  # (a key among their own tables)
    )
    assert additions(_accounts(), {**_LIVE_ACCOUNTS, "crm_contacts": theirs}, SQLITE) == []
    referencing = derive.LiveTable(
        "reactions",
        (derive.LiveColumn("account", "text", True, None),),
        references=(("account", "ACCOUNTS"),),  # (SQLite's names are case-insensitive)
    )
    live = {**_LIVE_ACCOUNTS, "reactions": referencing}
    with pytest.raises(SchemaMismatchError) as refused:
        additions(_accounts(), live, SQLITE)
    assert (refused.value.table, refused.value.column) == ("reactions", "")
    assert "reactions.account references ACCOUNTS" in str(refused.value)
    assert "not declared" in str(refused.value)
    # A migration's step declares only some tables: it does not ask.
    assert additions(_accounts(), live, SQLITE, partial=True) == []


def test_sqlite_opens_a_database_shared_with_another_applications_table_and_leaves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An old database, so that migrations and additions run beside their table.
    path = tmp_path / "shared.sqlite3"
    old_sqlite(path, 8)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        for statement in _THEIRS:
            db.execute(statement)
        theirs = sqlite_catalogue(db)["crm_contacts"]
    monkeypatch.setattr(tables, "TABLES", EXTENDED)
    with SQLiteStore.open(path) as store:
        assert store.get_account("ann") is not None
    with contextlib.closing(sqlite3.connect(path)) as db:
        found = sqlite_catalogue(db)
        assert found.pop("crm_contacts") == theirs
        assert db.execute("SELECT * FROM crm_contacts").fetchall() == [(1, "Ann", "ann")]
    assert found == declared_sqlite(tmp_path, "declared.sqlite3")


def test_sqlite_refuses_an_undeclared_table_with_a_key_to_a_declared_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "newer.sqlite3"
    old_sqlite(path, 8)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(_REFERENCING)
        untouched = sqlite_catalogue(db)
    with pytest.raises(SchemaMismatchError) as refused:
        SQLiteStore.open(path)
    assert (refused.value.table, refused.value.column) == ("reactions", "")
    assert "reactions.account references accounts" in str(refused.value)
    with contextlib.closing(sqlite3.connect(path)) as db:  # nothing written
        assert sqlite_catalogue(db) == untouched
        assert db.execute("PRAGMA user_version").fetchone() == (8,)


def test_postgres_opens_a_schema_shared_with_another_applications_table_and_leaves_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with postgres_schema() as (db, namespace):
        db.execute(f'SET search_path TO "{namespace}"')
        old_postgres(db, 2)
        for statement in _THEIRS:
            db.execute(statement)
        theirs = postgres_catalogue(db, namespace)["crm_contacts"]
        monkeypatch.setattr(tables, "TABLES", EXTENDED)
        with PostgresStore.open(POSTGRES_URL, schema=namespace) as store:
            assert store.get_account("ann") is not None
        found = postgres_catalogue(db, namespace)
        assert found.pop("crm_contacts") == theirs
        assert db.execute("SELECT * FROM crm_contacts").fetchall() == [(1, "Ann", "ann")]
        assert db.execute("SELECT version FROM schema_version").fetchall() == [
            (postgres_store_module.SCHEMA_VERSION,)
        ]
        assert found == declared_postgres()


def test_postgres_refuses_an_undeclared_table_with_a_key_to_a_declared_one() -> None:
    with postgres_schema() as (db, namespace):
        db.execute(f'SET search_path TO "{namespace}"')
        old_postgres(db, 2)
        db.execute(_REFERENCING)
        untouched = postgres_catalogue(db, namespace)
        with pytest.raises(SchemaMismatchError) as refused:
            PostgresStore.open(POSTGRES_URL, schema=namespace)
        assert (refused.value.table, refused.value.column) == ("reactions", "")
        assert "reactions.account references accounts" in str(refused.value)
        assert postgres_catalogue(db, namespace) == untouched
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
