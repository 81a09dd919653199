"""Several nodes on one database: telling the others that something arrived.

With ``ServerConfig.cluster``, a node notes the users a batch stored messages for
(the recipients, and the sender for their other devices), and pushes nothing
from memory. Once the batch is durable, :meth:`ClusterHints.take_delivery_hints`
hands their names to the runtime, which publishes them on the cluster's bus and
hands them to this node's :meth:`ClusterHints.deliver_hints` too; every node hands
what it hears there, which tops up the delivery windows of those users'
connections *on that node* from the database. (A live push from memory, as a
single server does, could pass an earlier seq of the same conversation that
another node committed and has not hinted yet: the acknowledgement of the later
one would move the cursor past it.) the database says what to
push, in order and once; the hint only says when to look. A hint that is lost
costs time, never a message: the connection's next acknowledgement, or its next
login, reads the database anyway, and :meth:`ClusterHints.refill_all` looks for
every local connection: after the bus was away, and every few seconds while it
is.
"""

from __future__ import annotations

from ..transport import ConnectionId
from .core import ServerCore

__all__ = ["ClusterHints"]


class ClusterHints(ServerCore):
    """The node's side of the cluster's hints."""

    def take_delivery_hints(self) -> list[str]:
        """The users whose messages committed batches stored since the last call
        (each once), for the other nodes. Empty unless ``ServerConfig.cluster``."""
        hints, self._hints_out = list(dict.fromkeys(self._hints_out)), []
        return hints

    def deliver_hints(self, usernames: list[str], now: float) -> None:
        """Another node stored messages for these users: push them to their
        connections here (from the database). Users not connected here are
        ignored. Then call :meth:`commit` and :meth:`datagrams_to_send`."""
        self._now = now
        for username in usernames:
            for connection_id in self._by_user.get(username, ()):
                self._look_again(connection_id)

    def _look_again(self, connection_id: ConnectionId) -> None:
        connection = self._connections.get(connection_id)
        if connection is not None and connection.logged_in:
            # A live window pushes only what this node stores: it reads the
            # database again (and says caught_up again once it has).
            connection.deliveries.fall_behind()
            self._retry_refill(connection)

    def refill_all(self, now: float) -> None:
        """Look in the database for every connection here (hints may have been
        lost while the bus was away). Then :meth:`commit` and
        :meth:`datagrams_to_send`."""
        self._now = now
        for connection_id in list(self._connections):
            self._look_again(connection_id)
