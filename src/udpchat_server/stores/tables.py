"""Every table, gathered from the concept modules that declare them.

A table is declared once, in the module of the SQL over it (see :mod:`.schema`);
this module only puts them in an order the foreign keys accept, for each
database's DDL, :mod:`.derive`'s additions and ``udpchat-server migrate``'s copy.
"""

from __future__ import annotations

from typing import Final

from . import accounts, devices, messages, rooms, social
from .dialect import Dialect
from .schema import Table

__all__ = ["TABLES", "ddl"]

TABLES: Final[tuple[Table, ...]] = (
    *accounts.TABLES,
    *social.TABLES,
    *rooms.TABLES,
    *messages.TABLES,
    *devices.TABLES,
)
"""Every table, in an order the foreign keys accept (referenced tables first)."""


def ddl(dialect: Dialect) -> list[str]:
    """The statements that create the current schema in an empty database."""
    return [statement for table in TABLES for statement in table.sql(dialect)]
