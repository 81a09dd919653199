"""The SQL layer both stores share: :class:`SqlStore`, made of the concepts' classes.

Each concept module declares its tables and holds the Store methods over them whose
SQL and logic are the same on SQLite and PostgreSQL, written once against
:class:`~.primitives.SqlPrimitives` (the four ways to run a statement, the hooks,
a few helpers):

===============  =========================================================  ===============
module           tables                                                     class
===============  =========================================================  ===============
``accounts``     accounts, retired_names, sessions                          ``AccountsSQL``
``social``       invitations, friendships, blocks                           ``SocialSQL``
``rooms``        conversations, participants                                ``RoomsSQL``
``messages``     messages, session_cursors, user_cursors                    ``MessagesSQL``
``devices``      device_keys, one_time_keys, message_key_shares             ``DevicesSQL``
                 (and an encrypted message's columns of ``messages``)
===============  =========================================================  ===============

:class:`SqlStore` is the classes together, as redis-py's client is its command
groups together. The classes hold no state: a subclass of :class:`SqlStore` brings
the database: its connection, transactions and savepoints, error translation,
caches, migrations, ``add_message`` (the hot path, which each database does its own
way), and the four ways to run a statement. The statements are written once in the
shared SQL of :mod:`.dialect`; the subclass turns each into its database's.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, NoReturn, Self, TypeVar

from udpchat_proto import Store
from udpchat_proto.chat import STORE_READS, STORE_WRITES

from .accounts import AccountsSQL
from .devices import DevicesSQL
from .messages import MessagesSQL, chat_message, to_micros
from .primitives import Params, Rows
from .rooms import RoomsSQL
from .social import SocialSQL

# What the databases' stores build on, from one module (Params, Rows and the
# message helpers are re-exported: their homes are .primitives and .messages).
__all__ = [
    "Params",
    "Rows",
    "SchemaVersionError",
    "SqlStore",
    "chat_message",
    "store_methods",
    "to_micros",
]


class SchemaVersionError(RuntimeError):
    """The database was written by a newer release (its schema version is unknown)."""


_S = TypeVar("_S", bound="SqlStore")


def store_methods(cls: type[_S]) -> type[_S]:
    """Give a store's Store methods (every one of ``STORE_READS`` and
    ``STORE_WRITES``) their error translation: an exception of its driver
    (``cls.DRIVER_ERROR``) goes through ``_raise_translated``, which raises
    StoreUnavailableError for an outside cause and the error itself for a bug; and
    the Protocol's docstring where the method has none."""
    for name in STORE_READS | STORE_WRITES:
        method = getattr(cls, name)
        translated = _translated(method, cls.DRIVER_ERROR)
        translated.__doc__ = method.__doc__ or getattr(Store, name).__doc__
        setattr(cls, name, translated)
    return cls


def _translated(method: Callable[..., Any], error: type[Exception]) -> Callable[..., Any]:
    def translated(self: SqlStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except error as exc:
            self._raise_translated(exc)

    return functools.update_wrapper(translated, method)


class SqlStore(AccountsSQL, SocialSQL, RoomsSQL, MessagesSQL, DevicesSQL, abc.ABC):
    """The :class:`~udpchat_proto.chat.store.Store` methods both SQL stores run alike.

    Not thread-safe: use a store from the server loop's thread. It can be used as a
    context manager, which closes it (discarding what was not committed).
    """

    DRIVER_ERROR: ClassVar[type[Exception]]
    """The base class of the driver's exceptions (translated by :func:`store_methods`)."""

    @abc.abstractmethod
    def _raise_translated(self, exc: Exception) -> NoReturn:
        """Raise a driver error as StoreUnavailableError if its cause is outside the
        server (noting first what it cost the batch), else as it is (a bug)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abc.abstractmethod
    def close(self) -> None:
        """Discard uncommitted writes and close the connection."""
