"""The SQL layer under both stores (``udpchat_server.stores``); the stores' behaviour
is the contract suite's (``test_store.py``, on every store).

The schema is declared once (``stores.schema``) and built by each store's
migrations: a database migrated from empty must be exactly the declared one, so
that neither can drift from the other. Compared through each database's own
catalogue (``PRAGMA`` on SQLite, ``information_schema`` and ``pg_catalog`` on
PostgreSQL): columns in order with their types, nullability and defaults, keys,
foreign keys and indexes.
"""

from __future__ import annotations

import contextlib
import inspect
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import strategies
from tests.services import POSTGRES_URL, postgres_store
from udpchat_proto import Store
from udpchat_server.stores import records, schema
from udpchat_server.stores.base import SqlStore
from udpchat_server.stores.dialect import POSTGRES, SQLITE
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
        for statement in schema.ddl(SQLITE):
            declared_db.execute(statement)
        declared = sqlite_catalogue(declared_db)
    finally:
        declared_db.close()
    assert list(declared) == sorted(table.name for table in schema.TABLES)
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
        for statement in schema.ddl(POSTGRES):
            db.execute(statement)
        declared = postgres_catalogue(db, namespace)
    assert sorted(declared) == sorted(table.name for table in schema.TABLES)
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
    for store, expected in ((SQLiteStore, own), (PostgresStore, own | batched)):
        assert issubclass(store, SqlStore)
        defined = {
            name
            for name in protocol
            if inspect.unwrap(getattr(store, name)).__qualname__.startswith(store.__name__)
        }
        assert defined == expected, store


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
