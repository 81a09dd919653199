"""The outside services some tests need (PostgreSQL), found or skipped.

A developer without them may skip those tests; CI may not: ``.ci/run`` sets
``UDPCHAT_REQUIRE_SERVICES=1``, and then a service that cannot be reached fails the
test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

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


@contextlib.contextmanager
def postgres_store() -> Iterator[PostgresStore]:
    """A PostgresStore in a fresh schema, dropped afterwards."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        store = PostgresStore.open(POSTGRES_URL, schema=schema)
    except Exception as exc:  # unreachable, no driver ...
        unavailable("PostgreSQL", exc)
        raise
    try:
        yield store
    finally:
        store.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


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
