"""What ``--db`` names: a SQLite file, or a PostgreSQL database by URL."""

from __future__ import annotations

import urllib.parse

__all__ = ["is_postgres_url", "shown_database"]


def is_postgres_url(db: str) -> bool:
    """Whether ``--db`` names a PostgreSQL database (else it is a SQLite path)."""
    return db.startswith(("postgresql://", "postgres://"))


def shown_database(db: str) -> str:
    """``--db`` fit for a log line: a URL without its password."""
    if not is_postgres_url(db):
        return db
    parts = urllib.parse.urlsplit(db)
    if parts.password is None:
        return db
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
