"""The outside services some tests need (PostgreSQL), found or skipped.

A developer without them may skip those tests; CI may not: ``.ci/run`` sets
``UDPCHAT_REQUIRE_SERVICES=1``, and then a service that cannot be reached fails the
test instead of skipping it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from udpchat_server.stores.postgres import PostgresStore

POSTGRES_URL = os.environ.get(
    "UDPCHAT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""The PostgreSQL server the tests use (each test in a schema of its own)."""


def unavailable(what: str, exc: Exception) -> None:
    if os.environ.get("UDPCHAT_REQUIRE_SERVICES") == "1":
        raise AssertionError(f"{what} is required here (UDPCHAT_REQUIRE_SERVICES=1): {exc}")
    pytest.skip(f"{what} is not available: {exc}")


#: Schemas a test is done with, emptied and kept for the next one in this process:
#: creating and migrating a schema, then dropping it, costs about 0.3 s of the two
#: machines' CPU, emptying one about 0.03 s (the tests use a few hundred).
_SPARE_SCHEMAS: list[str] = []
#: The columns of a freshly migrated schema; a schema is kept only while its
#: columns are still those (a test that altered one gets it dropped instead).
_FRESH_COLUMNS: list[tuple[str, ...]] = []


def _columns(admin: psycopg.Connection[Any], schema: str) -> tuple[str, ...]:
    rows = admin.execute(
        "SELECT table_name, column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = %s"
        " ORDER BY table_name, column_name",
        (schema,),
    ).fetchall()
    return tuple(repr(row) for row in rows)


def _emptied(schema: str) -> bool:
    """Empty the schema's tables (its version kept) for the next test; False when
    it is no longer as fresh as a new one would be, or could not be emptied."""
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            columns = _columns(admin, schema)
            if not _FRESH_COLUMNS:
                return False
            if columns != _FRESH_COLUMNS[0]:
                return False
            tables = [
                row[0]
                for row in admin.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
                )
                if row[0] != "schema_version"
            ]
            names = ", ".join(f'"{schema}"."{table}"' for table in tables)
            admin.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    except psycopg.Error:
        return False
    return True


def _drop(schema: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@atexit.register
def _drop_spare_schemas() -> None:
    with contextlib.suppress(psycopg.Error):
        while _SPARE_SCHEMAS:
            _drop(_SPARE_SCHEMAS.pop())


@contextlib.contextmanager
def postgres_store() -> Iterator[PostgresStore]:
    """A PostgresStore in a schema of its own, as a freshly migrated one: new, or
    one an earlier test of this process left, emptied (its columns checked equal
    to a new one's); emptied or dropped afterwards."""
    fresh = not _SPARE_SCHEMAS
    schema = f"test_{uuid.uuid4().hex[:12]}" if fresh else _SPARE_SCHEMAS.pop()
    try:
        store = PostgresStore.open(POSTGRES_URL, schema=schema)
    except Exception as exc:  # unreachable, no driver ...
        unavailable("PostgreSQL", exc)
        raise
    if fresh and not _FRESH_COLUMNS:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            _FRESH_COLUMNS.append(_columns(admin, schema))
    try:
        yield store
    finally:
        store.close()
        if _emptied(schema):
            _SPARE_SCHEMAS.append(schema)
        else:
            _drop(schema)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database, dropped afterwards."""
    name = f"udpchat_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True)
    except Exception as exc:
        unavailable("PostgreSQL", exc)
        raise
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


NATS_URL = os.environ.get("UDPCHAT_TEST_NATS", "nats://127.0.0.1:4222")
"""The NATS server the cluster tests use."""


def require_nats() -> str:
    """The NATS URL, once a TCP connection to it succeeds (else skip, or fail in CI)."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(NATS_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), 3).close()
    except OSError as exc:
        unavailable("NATS", exc)
    return NATS_URL
