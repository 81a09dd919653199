"""The server's open connections, and which one the connection cap may end.

At ``max_connections`` a server makes room for a new connection by ending another,
or refuses it. Which one is a policy of its own, kept here:

* a connection the application *protects* (the chat server: one logged in as a
  user) is never ended for this; a new connection is refused instead when no
  other may go;
* among the others (anonymous, or established and silent since the handshake),
  every address prefix has an equal share: the prefix holding the most loses the
  one of them silent the longest. An attacker's prefixes then churn among
  themselves, and a prefix within its share keeps its connections.

:class:`OpenConnections` keeps the unprotected connections grouped by prefix as
they come and go, so that choosing scans the prefixes and the connections of the
most crowded ones, not every connection, and only when the table is full.
"""

from __future__ import annotations

from collections.abc import Callable

from .events import ConnectionId

__all__ = ["OpenConnections"]


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
        self._evictable: dict[str, dict[ConnectionId, None]] = {}
        """The open, unprotected connections by prefix, oldest first."""

    def is_protected(self, connection_id: ConnectionId) -> bool:
        """Whether the application protects this connection."""
        return connection_id in self._protected

    def add(self, connection_id: ConnectionId, prefix: str) -> None:
        """A connection opened, from ``prefix`` (its handshake's address key)."""
        self[connection_id] = prefix
        if connection_id not in self._protected:
            self._evictable.setdefault(prefix, {})[connection_id] = None

    def discard(self, connection_id: ConnectionId) -> None:
        """A connection is no longer open (it is closing); no-op if it was not."""
        prefix = self.pop(connection_id, None)
        if prefix is not None:
            self._unlist(connection_id, prefix)

    def _unlist(self, connection_id: ConnectionId, prefix: str) -> None:
        members = self._evictable.get(prefix)
        if members is not None:
            members.pop(connection_id, None)
            if not members:
                del self._evictable[prefix]

    def forget(self, connection_id: ConnectionId) -> None:
        """A connection is gone: its protection with it."""
        self.discard(connection_id)
        self._protected.discard(connection_id)

    def protect(self, connection_id: ConnectionId, protected: bool) -> None:
        """Protect a connection from the cap, or make it evictable again."""
        prefix = self.get(connection_id)
        if protected:
            self._protected.add(connection_id)
            if prefix is not None:
                self._unlist(connection_id, prefix)
        else:
            self._protected.discard(connection_id)
            if prefix is not None:
                self._evictable.setdefault(prefix, {})[connection_id] = None

    def victim(
        self, newcomer: ConnectionId, last_received: Callable[[ConnectionId], float]
    ) -> ConnectionId | None:
        """The unprotected connection to end to make room for ``newcomer``, or None
        when there is none but the newcomer (then refuse it).

        The prefix holding the most unprotected connections, the newcomer
        included, loses the one of them (never the newcomer) whose last packet
        came the longest ago (``last_received``); among prefixes that hold as
        many, the longest silent of all of theirs.
        """
        most = 0
        crowded: list[dict[ConnectionId, None]] = []
        for members in self._evictable.values():
            size = len(members)
            if size == 1 and newcomer in members:
                continue  # nobody there to end but the newcomer
            if size > most:
                most, crowded = size, [members]
            elif size == most:
                crowded.append(members)
        victim: ConnectionId | None = None
        oldest = 0.0
        for members in crowded:
            for connection_id in members:
                if connection_id == newcomer:
                    continue
                heard = last_received(connection_id)
                if victim is None or heard < oldest:
                    victim, oldest = connection_id, heard
        return victim
