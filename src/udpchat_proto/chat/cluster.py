"""Several nodes on one database: what a node tells the others, and what it does
with what they tell it.

With ``ServerConfig.cluster``, a node's committed batches produce
:class:`~udpchat_proto.chat.remote.ClusterNews` (:meth:`ChatServer.take_news`),
which the runtime carries to every other node on the cluster's bus and hands to
:meth:`ChatServer.receive_news` there. Each node acts on its *own* connections
only:

* **Messages.** A node pushes nothing from memory: it names the users a batch
  stored messages for, and every node (this one included) tops up those users'
  delivery windows from the database. (A live push, as a single server does, could
  pass an earlier seq of the same conversation that another node committed and has
  not told yet: the acknowledgement of the later one would move the cursor past
  it.) The database says what to push, in order and once; the news only says when
  to look. News that is lost costs time, never a message: the connection's next
  acknowledgement or login reads the database anyway, and
  :meth:`ChatServer.refill_all` looks for every local connection (after the bus
  was away, every few seconds while it is, and now and then regardless).
* **Other pushes** (invitations, friendships, room joins and leaves, delivery
  receipts, a new device) for a user online on another node travel encoded, as
  they are sent; one that only a device may be told (its one-time keys ran low)
  names the device, and goes to that device's connections only.
* **Sessions** that ended (a logout, a revocation, a password change, a deleted
  account) close or log out their connections on every node.
* **Caches**: a node forgets what it cached about users whose friendships changed
  or whose account was deleted elsewhere.
* **Presence**: a node says who came online and went offline *on it*, and every
  few seconds who is online on it in full (:meth:`ChatServer.receive_snapshot`,
  which also heals lost news). A user is online while any node has them; a node
  not heard from for :data:`NODE_TIMEOUT` is gone, and its users go offline
  (:meth:`ChatServer.expire_nodes`): friends are told, as on one server, only
  when the user's state across the cluster changes.

What another node says is bounded, whoever says it: a node keeps at most
:data:`MAX_NODE_USERS` names online for one other node and tracks at most
:data:`MAX_NODES` other nodes. Telling friends costs no read per name: a
heartbeat of 60,000 names that nobody here is friends with costs set lookups,
and at most one read of the friends of the users connected here whose friends it
has not cached (:meth:`Store.friends_of_many`), whatever the names.
"""

from __future__ import annotations

from typing import Final

import attrs

from ..transport import ConnectionId
from . import messages as m
from .batch import Batch
from .caches import Caches
from .codec import decode
from .config import ServerConfig
from .connections import ConnectionTable
from .deliveries import Deliveries
from .outbox import Outbox
from .presence import Presence
from .remote import (
    HEARTBEAT_INTERVAL,
    MAX_NODE_USERS,
    MAX_NODES,
    NODE_TIMEOUT,
    ClusterNews,
    RemoteUsers,
)
from .sessions import Sessions
from .stats import ServerStats
from .store import Store, StoreUnavailableError, WriteTrackingStore
from .tokens import session_id

_VERSION_2: Final = b"\x02"
"""The first byte of a version 2 message: what a node decodes to route a push."""

__all__ = ["HEARTBEAT_INTERVAL", "MAX_NODES", "MAX_NODE_USERS", "NODE_TIMEOUT", "ClusterNode"]


class ClusterNode:
    """One node's side of the cluster (see the module's documentation).

    Args:
        store: the sessions that still exist.
        tracker: whether the batch has written (the checks read committed state).
        connections: the connections here.
        remote: who is online on the other nodes.
        presence: tells the friends here of presence elsewhere.
        caches: what the other nodes say is stale.
        batch: what this node's committed batches tell the others.
        sessions: ends the sessions other nodes ended.
        deliveries: looks in the database for the connections here.
        outbox: the other nodes' pushes for the users here.
        stats: counters.
        config: whether this server is a node of a cluster at all.
    """

    def __init__(
        self,
        *,
        store: Store,
        tracker: WriteTrackingStore,
        connections: ConnectionTable,
        remote: RemoteUsers,
        presence: Presence,
        caches: Caches,
        batch: Batch,
        sessions: Sessions,
        deliveries: Deliveries,
        outbox: Outbox,
        stats: ServerStats,
        config: ServerConfig,
    ) -> None:
        self._store = store
        self._tracker = tracker
        self._connections = connections
        self._remote = remote
        self._presence = presence
        self._caches = caches
        self._batch = batch
        self._sessions = sessions
        self._deliveries = deliveries
        self._outbox = outbox
        self._stats = stats
        self._cluster = config.cluster

    def take_news(self) -> ClusterNews:
        """What this node's committed batches changed for the others (see
        ``ChatServer.take_news``)."""
        if not self._cluster:
            return ClusterNews()
        told = self._batch.take_news()
        forget = self._caches.take_forget()
        online, offline = self._presence.take_changes()
        return attrs.evolve(told, forget=forget, online=online, offline=offline)

    def receive_news(self, node: str, news: ClusterNews, now: float) -> None:
        """Act on another node's news for the connections here."""
        self._caches.forget_users(news.forget)
        for hashed, reason in news.sessions:
            for connection_id in self._connections.of_session(hashed):
                if reason is None:
                    connection = self._connections.get(connection_id)
                    assert connection is not None  # (the table's indexes hold live ones)
                    self._sessions.log_out(connection, announce=True)
                else:
                    self._sessions.close(connection_id, reason)
        # (After the sessions: a local log-out just above must still see the user
        # online elsewhere, as this node knew it, not as the news says.)
        self._presence.remote_changed(self._remote.update(node, news.online, news.offline, now))
        for username, payload in news.pushes:
            for connection_id in self._push_targets(username, payload):
                self._outbox.send_now(connection_id, payload)
        for username, device, payload in news.device_pushes:
            # Only the connections of the device named (its session): keys that
            # ran low are that device's to upload.
            for connection_id in self._connections.of_user(username):
                connection = self._connections.get(connection_id)
                owner = None if connection is None else connection.token_hash
                if owner is not None and session_id(owner) == device:
                    self._outbox.send_now(connection_id, payload)
        if news.users:
            # At the batch's end, with its own refills and the other nodes' news
            # of the same turn: one read of the database for them all.
            self._deliveries.look_again_later_for(list(news.users))

    def _push_targets(self, username: str, payload: bytes) -> list[ConnectionId]:
        """The connections here of ``username`` that a push from another node is
        for: all of them, but for a version 2 push (``device_added``), only those
        whose sessions are devices, as on the node that made it."""
        targets = list(self._connections.of_user(username))
        if payload[:1] != _VERSION_2 or not targets:
            return targets
        if not isinstance(decode(payload), m.DEVICE_PUSH_TYPES):
            return targets
        found = []
        for connection_id in targets:
            connection = self._connections.get(connection_id)
            hashed = None if connection is None else connection.token_hash
            if hashed is not None and self._store.session_device(hashed) is not None:
                found.append(connection_id)
        return found

    def receive_snapshot(self, node: str, usernames: list[str], now: float) -> None:
        """Another node's heartbeat: everyone online on it now."""
        self._presence.remote_changed(self._remote.replace(node, usernames, now))

    def forget_nodes(self, nodes: list[str]) -> None:
        """These nodes left: their users are offline unless another node has them."""
        self._presence.remote_changed(self._remote.forget(nodes))

    def expire_nodes(self, now: float) -> list[str]:
        """Forget the nodes not heard from for :data:`NODE_TIMEOUT`; their names."""
        gone = self._remote.silent(now)
        self.forget_nodes(gone)
        return gone

    def check_sessions(self) -> int:
        """Close the connections here whose login session no longer exists; how
        many sessions were gone."""
        hashes = self._connections.sessions()
        if not hashes or self._tracker.dirty:  # (it would see the batch's own deletes)
            return 0
        try:
            existing = self._store.existing_sessions(hashes)
        except StoreUnavailableError as failure:  # the next check will do
            self._stats.note_store_failure(failure)
            return 0
        gone = [hashed for hashed in hashes if hashed not in existing]
        for hashed in gone:
            for connection_id in self._connections.of_session(hashed):
                self._sessions.close(connection_id, "this login session has ended")
        return len(gone)
