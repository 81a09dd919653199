"""The server's open connections, and which one the connection cap may end.

At ``max_connections`` a server makes room for a new connection by ending another,
or refuses it. Which one is a policy of its own, kept here:

Every address prefix has a fair share of the table: ``max_connections`` over the
number of prefixes present (the newcomer's included), and never less than one
connection. The connection ended is, in this order:

1. an unprotected one (anonymous, or established and silent since the handshake)
   of a prefix holding more than its share: an attacker's prefixes churn among
   themselves;
2. a protected one (the application protects it: the chat server, a logged-in
   user's) of a prefix holding more than its share of protected ones: accounts
   logged in from a few prefixes cannot hold every place;
3. any other unprotected one: a logged-in user within their prefix's share is
   never ended for an anonymous newcomer.

Each time from the prefix holding the most, its connection silent the longest.
When none may go (every prefix within its share, every connection protected), the
newcomer is refused. A user alone on a prefix keeps their connection whatever the
others do, and a newcomer on a prefix of its own is not ended by the next one
while it logs in (step 3 comes after the crowded prefixes have paid).

:class:`OpenConnections` keeps the connections grouped by prefix (protected and
not) as they come and go, so that choosing scans the prefixes and the connections of the
most crowded ones, not every connection, and only when the table is full.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import TypeAlias

from .events import ConnectionId

__all__ = ["OpenConnections"]

_Members: TypeAlias = tuple[ConnectionId] | dict[ConnectionId, None]
"""A prefix's connections, oldest first: the one alone as a 1-tuple (most prefixes
hold one connection, and a 1-tuple is 48 bytes where a dict is 232: about a twentieth
of an idle connection's memory), a dict from the second on."""


class OpenConnections(dict[ConnectionId, str]):
    """A server's open (established, not closing) connections, oldest first, each
    with the address prefix it came from, and whether the application protects it.

    A dict (connection id to prefix) so that the membership test the server makes
    after every packet costs what a dict's does; change it only through its
    methods, which keep the protection and the eviction candidates in step.
    """

    def __init__(self) -> None:
        super().__init__()
        self._protected: set[ConnectionId] = set()
        self._evictable: dict[str, _Members] = {}
        """The open, unprotected connections by prefix, oldest first."""
        self._guarded: dict[str, _Members] = {}
        """The open, protected connections by prefix, oldest first."""

    def is_protected(self, connection_id: ConnectionId) -> bool:
        """Whether the application protects this connection."""
        return connection_id in self._protected

    def add(self, connection_id: ConnectionId, prefix: str) -> None:
        """A connection opened, from ``prefix`` (its handshake's address key)."""
        self[connection_id] = prefix
        self._list(connection_id, prefix)

    def discard(self, connection_id: ConnectionId) -> None:
        """A connection is no longer open (it is closing); no-op if it was not."""
        prefix = self.pop(connection_id, None)
        if prefix is not None:
            self._unlist(connection_id, prefix)

    def _list(self, connection_id: ConnectionId, prefix: str) -> None:
        table = self._guarded if connection_id in self._protected else self._evictable
        members = table.get(prefix)
        if members is None:
            table[prefix] = (connection_id,)
        elif isinstance(members, tuple):
            table[prefix] = {members[0]: None, connection_id: None}
        else:
            members[connection_id] = None

    def _unlist(self, connection_id: ConnectionId, prefix: str) -> None:
        for table in (self._evictable, self._guarded):
            members = table.get(prefix)
            if members is None:
                continue
            if isinstance(members, tuple):
                if members[0] == connection_id:
                    del table[prefix]
                continue
            members.pop(connection_id, None)
            if not members:
                del table[prefix]

    def forget(self, connection_id: ConnectionId) -> None:
        """A connection is gone: its protection with it."""
        self.discard(connection_id)
        self._protected.discard(connection_id)

    def protect(self, connection_id: ConnectionId, protected: bool) -> None:
        """Protect a connection from the cap, or make it evictable again."""
        prefix = self.get(connection_id)
        if prefix is not None:
            self._unlist(connection_id, prefix)
        if protected:
            self._protected.add(connection_id)
        else:
            self._protected.discard(connection_id)
        if prefix is not None:
            self._list(connection_id, prefix)

    def victim(
        self,
        newcomer: ConnectionId,
        last_received: Callable[[ConnectionId], float],
        capacity: int,
    ) -> ConnectionId | None:
        """The connection to end to make room for ``newcomer``, or None when none may
        go (then refuse it). In this order:

        1. an unprotected connection of a prefix holding more than its share of
           ``capacity`` (see the module's documentation);
        2. a protected connection of a prefix holding more than its share of them;
        3. any unprotected connection but the newcomer.

        Each time from the prefix (among those) holding the most, its connection
        whose last packet came the longest ago (``last_received``); among prefixes
        that hold as many, the longest silent of all of theirs.
        """
        share = self._share(capacity)
        beyond = [
            members
            for prefix, members in self._evictable.items()
            if len(members) + len(self._guarded.get(prefix, ())) > share
        ]
        for groups in (
            self._crowded(beyond, newcomer),
            [
                members
                for members in self._crowded(self._guarded.values(), None)
                if len(members) > share
            ],
            self._crowded(self._evictable.values(), newcomer),
        ):
            victim = self._longest_silent(groups, last_received, newcomer)
            if victim is not None:
                return victim
        return None

    def _share(self, capacity: int) -> float:
        """A prefix's fair share of ``capacity``: an equal part for each prefix
        present, and at least one connection (a user alone on a prefix stays)."""
        prefixes = len(self._guarded.keys() | self._evictable.keys())
        return max(capacity / max(prefixes, 1), 1.0)

    @staticmethod
    def _crowded(
        groups: Iterable[Collection[ConnectionId]], newcomer: ConnectionId | None
    ) -> list[Collection[ConnectionId]]:
        """Those of ``groups`` that hold the most (a group holding only the
        newcomer does not count: there is nobody there to end)."""
        most = 0
        crowded: list[Collection[ConnectionId]] = []
        for members in groups:
            size = len(members)
            if size == 1 and newcomer in members:
                continue
            if size > most:
                most, crowded = size, [members]
            elif size == most:
                crowded.append(members)
        return crowded

    @staticmethod
    def _longest_silent(
        groups: list[Collection[ConnectionId]],
        last_received: Callable[[ConnectionId], float],
        newcomer: ConnectionId | None = None,
    ) -> ConnectionId | None:
        victim: ConnectionId | None = None
        oldest = 0.0
        for members in groups:
            for connection_id in members:
                if connection_id == newcomer:
                    continue
                heard = last_received(connection_id)
                if victim is None or heard < oldest:
                    victim, oldest = connection_id, heard
        return victim
