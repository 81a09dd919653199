"""What the SQL of every concept is written against: :class:`SqlPrimitives`.

The Store methods that both databases run alike are written once, by concept, each
concept's in its own module beside the tables it declares (:mod:`.accounts`,
:mod:`.social`, :mod:`.rooms`, :mod:`.messages`, :mod:`.devices`), as a class over
this one, the way redis-py writes each group of commands over one
``execute_command``. :class:`~.base.SqlStore` is made of those classes, and each
database's store (:mod:`.sqlite`, :mod:`.postgres`) brings what is declared here
as abstract.

A concept module declares its tables (:class:`~.schema.Table`, gathered in
:data:`.tables.TABLES`) above its class, so that a reader finds a table's columns
where the SQL over them is, and a new column goes at the end of its table beside
the statement that writes it (opening an older database adds it: :mod:`.derive`).

A concept class holds no state of its own (no ``__init__``, no attribute it sets):
it runs statements through the four primitives, the hooks and the helpers below,
and the state it touches (``_usage_unwritten``) is the store's, declared here
(``tests/test_sql_layer.py`` holds them to that). What each method does is the
:class:`~udpchat_proto.chat.store.Store` protocol's docstring (given to the methods
that have none: see :func:`.base.store_methods`); the comments in the concept
modules are about the SQL.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from udpchat_proto import LoginSession, StoredMessage
from udpchat_proto import messages as m

__all__ = ["Params", "Rows", "SqlPrimitives"]

Params = Sequence[Any] | Mapping[str, Any]
"""A statement's parameters: a sequence for ``?``, a mapping for ``:name``."""


class Rows(Protocol):
    """What running a statement gives back (a DB-API cursor, of either driver)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class SqlPrimitives(abc.ABC):
    """What a concept's SQL runs on: the four ways to run a statement, the Store
    methods a concept calls but does not define, the hooks, and a few helpers."""

    _usage_unwritten: dict[str, int]
    """What this batch added to (or took from) each sender's stored bytes, written
    before the commit: one statement a batch, not one a message (and the accounts'
    rows are not locked until then)."""

    # --- what a database brings ----------------------------------------------------------

    @abc.abstractmethod
    def _select(self, statement: str, params: Params = ()) -> Rows:
        """Run a read (shared SQL): in the batch's transaction if one is open."""

    @abc.abstractmethod
    def _execute(self, statement: str, params: Params = ()) -> Rows:
        """Run a statement (shared SQL) in the batch's transaction, begun if need be,
        and in the current atomic block's savepoint."""

    @abc.abstractmethod
    def _executemany(self, statement: str, rows: Iterable[Params]) -> None:
        """:meth:`_execute` once per row of parameters."""

    @abc.abstractmethod
    def _select_in(
        self, statement: str, values: Sequence[Any], params: dict[str, Any]
    ) -> list[Any]:
        """The rows of a read whose ``{in}`` (``column {in}``) tests membership in
        ``values``, with the other parameters ``params`` (none if ``values`` is
        empty)."""

    @abc.abstractmethod
    def add_message(self, message: m.ChatMessage, origin: bytes | None = None) -> StoredMessage:
        """See Store (each database stores a message its own way)."""

    @abc.abstractmethod
    def atomic(self) -> contextlib.AbstractContextManager[None]:
        """See Store (each database has its own savepoints)."""

    # A few Store methods of one concept that another's methods call (each is defined
    # once, in its concept's class, which comes before this one in SqlStore's MRO).

    @abc.abstractmethod
    def get_session(self, token_hash: bytes) -> LoginSession | None:
        """See :class:`~.accounts.AccountsSQL`."""

    @abc.abstractmethod
    def leave_room(self, room: str, username: str) -> bool:
        """See :class:`~.rooms.RoomsSQL`."""

    @abc.abstractmethod
    def blockers_of(self, username: str) -> list[str]:
        """See :class:`~.social.SocialSQL`."""

    @abc.abstractmethod
    def _pass_blocked_runs(self, username: str) -> None:
        """See :class:`~.social.SocialSQL`."""

    # Hooks for what SQLite does and PostgreSQL needs not (B027: empty on purpose).

    def _erasing(self) -> None:  # noqa: B027
        """What this batch deletes must leave the files too (SQLite: its WAL)."""

    def _write_seqs(self) -> None:  # noqa: B027
        """Write the seqs kept in memory into ``conversations.last_seq``, before a
        statement reads it (SQLite's add_message keeps them)."""

    def _account_deleted(self, username: str) -> None:  # noqa: B027
        """The account ``username`` is being deleted: forget what is cached of it."""

    def _forget_conversation(self, key: str, conversation: int) -> None:  # noqa: B027
        """The conversation ``key`` (its id: ``conversation``) was deleted: forget
        what is cached of it."""

    def _charge(self, sender: str, size: int) -> None:
        """Add ``size`` (negative: a deletion) to ``sender``'s stored bytes, written
        with the batch."""
        self._usage_unwritten[sender] = self._usage_unwritten.get(sender, 0) + size

    def _exists(self, statement: str, *args: object) -> bool:
        return self._select(statement, args).fetchone() is not None

    def _names(self, statement: str, name: str) -> list[str]:
        return [found for (found,) in self._select(statement, (name,))]
