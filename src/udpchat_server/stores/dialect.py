"""The SQL the two stores share, and the small step that makes it each database's.

A shared statement is written once, in the SQL both databases understand, with
two conventions: parameters as SQLite writes them (``?``, or ``:name`` with a
mapping), and PostgreSQL's names for what the two spell differently
(``GREATEST``, ``LEAST``, ``octet_length(text)``, ``COLLATE "C"`` for the byte
order Python sorts names in). :meth:`Dialect.sql` rewrites it for one database:

* SQLite: ``GREATEST(``/``LEAST(`` become its scalar ``MAX(``/``MIN(``,
  ``octet_length(text)`` becomes ``length(CAST(text AS BLOB))`` (SQLite has
  ``octet_length`` only from 3.43), ``COLLATE "C"`` goes (its default order is
  already the bytes'), and the device search of ``statements.for_device``,
  ``position(:device IN m.devices)``, becomes ``instr(m.devices, :device)``;
* PostgreSQL (psycopg): ``?`` becomes ``%s``, ``:name`` becomes ``%(name)s``, and a
  literal ``%`` (``LIKE '#%'``) is doubled.

Every rewrite is a plain text replacement, done once per statement (cached): the
statement a database runs is the one written, nothing is generated.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["POSTGRES", "SQLITE", "Dialect"]

_NAMED: Final = re.compile(r"(?<![:\w]):(\w+)")
"""A ``:name`` parameter (not a ``::type`` cast)."""


class Dialect:
    """How one database writes the shared statements.

    Args:
        name: ``"sqlite"`` or ``"postgres"``.
        replacements: (shared, own) spellings, replaced in order.
        pyformat: psycopg's parameters (``%s``, ``%(name)s``) instead of SQLite's.
    """

    def __init__(
        self, name: str, replacements: tuple[tuple[str, str], ...], *, pyformat: bool
    ) -> None:
        self.name = name
        self._replacements = replacements
        self._pyformat = pyformat
        self._cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Dialect({self.name!r})"

    def sql(self, statement: str) -> str:
        """``statement`` (shared SQL) as this database writes it."""
        try:
            return self._cache[statement]
        except KeyError:
            pass
        own = statement
        if self._pyformat:
            own = _NAMED.sub(r"%(\1)s", own.replace("%", "%%").replace("?", "%s"))
        for shared, replacement in self._replacements:
            own = own.replace(shared, replacement)
        self._cache[statement] = own
        return own


SQLITE: Final = Dialect(
    "sqlite",
    (
        ("GREATEST(", "MAX("),
        ("LEAST(", "MIN("),
        ("octet_length(text)", "length(CAST(text AS BLOB))"),
        (' COLLATE "C"', ""),
        # statements.for_device's byte search, in SQLite's order of arguments.
        ("position(:device IN m.devices)", "instr(m.devices, :device)"),
    ),
    pyformat=False,
)
"""SQLite (3.35 or later: ``RETURNING``)."""

POSTGRES: Final = Dialect("postgres", (), pyformat=True)
"""PostgreSQL through psycopg 3."""
