"""Several nodes on one database: what a node tells the others, and what it does
with what they tell it.

With ``ServerConfig.cluster``, a node's committed batches produce
:class:`~udpchat_proto.chat.remote.ClusterNews` (:meth:`ClusterNode.take_news`),
which the runtime carries to every other node on the cluster's bus and hands to
:meth:`ClusterNode.receive_news` there. Each node acts on its *own* connections
only:

* **Messages.** A node pushes nothing from memory: it names the users a batch
  stored messages for, and every node (this one included) tops up those users'
  delivery windows from the database. (A live push, as a single server does, could
  pass an earlier seq of the same conversation that another node committed and has
  not told yet: the acknowledgement of the later one would move the cursor past
  it.) The database says what to push, in order and once; the news only says when
  to look. News that is lost costs time, never a message: the connection's next
  acknowledgement or login reads the database anyway, and
  :meth:`ClusterNode.refill_all` looks for every local connection (after the bus
  was away, every few seconds while it is, and now and then regardless).
* **Other pushes** (invitations, friendships, room joins and leaves, delivery
  receipts) for a user online on another node travel encoded, as they are sent.
* **Sessions** that ended (a logout, a revocation, a password change, a deleted
  account) close or log out their connections on every node.
* **Caches**: a node forgets what it cached about users whose friendships changed
  or whose account was deleted elsewhere.
* **Presence**: a node says who came online and went offline *on it*, and every
  few seconds who is online on it in full (:meth:`ClusterNode.receive_snapshot`,
  which also heals lost news). A user is online while any node has them; a node
  not heard from for :data:`NODE_TIMEOUT` is gone, and its users go offline
  (:meth:`ClusterNode.expire_nodes`): friends are told, as on one server, only
  when the user's state across the cluster changes.

What another node says is bounded, whoever says it: a node keeps at most
:data:`MAX_NODE_USERS` names online for one other node and tracks at most
:data:`MAX_NODES` other nodes. Telling friends costs no read per name: a
heartbeat of 60,000 names that nobody here is friends with costs set lookups,
and at most one read of the friends of the users connected here whose friends it
has not cached (:meth:`Store.friends_of_many`), whatever the names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ..transport import ConnectionId
from . import messages as m
from .codec import encode
from .core import ServerCore
from .remote import ClusterNews, NodeView
from .store import StoreUnavailableError

__all__ = ["HEARTBEAT_INTERVAL", "MAX_NODES", "MAX_NODE_USERS", "NODE_TIMEOUT", "ClusterNode"]

HEARTBEAT_INTERVAL: Final = 5.0
"""Seconds between a node's full lists of who is online on it (its heartbeat)."""
NODE_TIMEOUT: Final = 15.0
"""Seconds without a word from a node after which it counts as gone (three lost
heartbeats): its users go offline, well within the 30 s the cluster promises."""
MAX_NODES: Final = 32
"""Most other nodes whose users a node keeps (a cluster is a handful of nodes). The
news of a node beyond them is still acted on; its users are not counted online
until a tracked node goes silent and makes room."""
MAX_NODE_USERS: Final = 65_536
"""Most names a node keeps as online on one other node: sixteen times the users a
node can hold with the transport's default ``max_connections`` (4096), and about
6 MiB. A node that says more has the rest ignored (and counted)."""


class ClusterNode(ServerCore):
    """One node's side of the cluster (see the module's documentation)."""

    # --- out --------------------------------------------------------------------------

    def take_news(self) -> ClusterNews:
        """What this node's committed batches changed for the other nodes since the
        last call (empty for a single server). Call it after :meth:`commit`, hand it
        to every other node's :meth:`receive_news`, and its ``users`` to this node's
        own :meth:`deliver_hints`."""
        if not self._config.cluster:
            return ClusterNews()
        users, self._hints_out = tuple(dict.fromkeys(self._hints_out)), []
        pushes, self._remote_pushes = tuple(self._remote_pushes), []
        sessions, self._remote_sessions = tuple(self._remote_sessions), []
        forget: tuple[str, ...] = ()
        if not self._tracker.dirty:  # what a node reads again must be committed
            forget, self._forget = tuple(self._forget), {}
        changed, self._presence_changed = self._presence_changed, {}
        return ClusterNews(
            users=users,
            pushes=pushes,
            sessions=sessions,
            forget=forget,
            online=tuple(u for u in changed if u in self._by_user),
            offline=tuple(u for u in changed if u not in self._by_user),
        )

    def online_here(self) -> list[str]:
        """The users with a logged-in connection on this node (its heartbeat)."""
        return sorted(self._by_user)

    # --- in ---------------------------------------------------------------------------

    def receive_news(self, node: str, news: ClusterNews, now: float) -> None:
        """Act on what another node (named ``node``) told, for the connections here.
        Call it between batches (after :meth:`commit`), as every method of this
        class: what it sends must not wait for, or be lost with, a batch of this
        node's. Then call :meth:`datagrams_to_send`."""
        self._now = now
        view = self._heard(node, now)
        for username in news.forget:
            self._friend_sets.pop(username, None)
            self._known_users.discard(username)
        for hashed, reason in news.sessions:
            for connection_id in list(self._by_session.get(hashed, ())):
                if reason is None:
                    self._log_out(self._connections[connection_id], now, announce=True)
                else:
                    self._close_connection(connection_id, reason)
        changed: dict[str, bool] = {}
        if view is None:
            self.stats.remote_names_ignored += len(news.online)
        else:
            for username in news.offline:  # (first: they make room)
                if username in view.users:
                    view.users.discard(username)
                    self._remote_left(username, changed)
            for username in news.online:
                if username in view.users:
                    continue
                if len(view.users) >= MAX_NODE_USERS:
                    self.stats.remote_names_ignored += 1
                    continue
                view.users.add(username)
                self._remote_joined(username, changed)
        self._tell_presence_here(changed)
        for username, payload in news.pushes:
            for connection_id in self._by_user.get(username, ()):
                self._transport_send(connection_id, payload)
        if news.users:
            self.deliver_hints(list(news.users), now)

    def receive_snapshot(self, node: str, usernames: list[str], now: float) -> None:
        """Another node's heartbeat: everyone online on it now. Replaces what this
        node knew of it (so lost news heals). Then :meth:`commit` and
        :meth:`datagrams_to_send`."""
        self._now = now
        view = self._heard(node, now)
        if view is None:
            self.stats.remote_names_ignored += len(usernames)
            return
        online = set(usernames[:MAX_NODE_USERS])
        self.stats.remote_names_ignored += max(0, len(usernames) - MAX_NODE_USERS)
        changed: dict[str, bool] = {}
        for username in view.users - online:
            self._remote_left(username, changed)
        for username in online - view.users:
            self._remote_joined(username, changed)
        view.users = online
        self._tell_presence_here(changed)

    def forget_node(self, node: str, now: float) -> None:
        """A node left (it said so, or :meth:`expire_nodes` found it silent): its
        users are offline unless another node has them."""
        self._forget_nodes([node], now)

    def expire_nodes(self, now: float) -> list[str]:
        """Forget the nodes not heard from for :data:`NODE_TIMEOUT` (call it every
        second or so); returns their names, for the log."""
        gone = [node for node, view in self._nodes.items() if now - view.heard > NODE_TIMEOUT]
        self._forget_nodes(gone, now)
        return gone

    def deliver_hints(self, usernames: list[str], now: float) -> None:
        """These users have new messages in the database: push them to their
        connections here (users not connected here are ignored). Then call
        :meth:`commit` and :meth:`datagrams_to_send`."""
        self._now = now
        for username in usernames:
            for connection_id in self._by_user.get(username, ()):
                self._look_again(connection_id)

    def refill_all(self, now: float) -> None:
        """Look in the database for every connection here (news may have been lost
        while the bus was away). Then :meth:`commit` and :meth:`datagrams_to_send`."""
        self._now = now
        for connection_id in list(self._connections):
            self._look_again(connection_id)

    def check_sessions(self, now: float) -> int:
        """Close the connections here whose login session no longer exists (the news
        of its end was lost on the way: a revoked session must not live on here).
        One query; call it now and then. Returns how many sessions were gone."""
        self._now = now
        hashes = list(self._by_session)
        if not hashes or self._tracker.dirty:  # (it would see the batch's own deletes)
            return 0
        try:
            existing = self._store.existing_sessions(hashes)
        except StoreUnavailableError as failure:  # the next check will do
            self._note_store_failure(failure)
            return 0
        gone = [hashed for hashed in hashes if hashed not in existing]
        for hashed in gone:
            for connection_id in list(self._by_session.get(hashed, ())):
                self._close_connection(connection_id, "this login session has ended")
        return len(gone)

    # --- the parts --------------------------------------------------------------------

    def _heard(self, node: str, now: float) -> NodeView | None:
        """The view of ``node``, heard from now (None: :data:`MAX_NODES` others are
        tracked already, and it is not one of them)."""
        view = self._nodes.get(node)
        if view is None:
            if len(self._nodes) >= MAX_NODES:
                return None
            view = self._nodes[node] = NodeView(users=set(), heard=now)
        view.heard = now
        return view

    def _forget_nodes(self, nodes: list[str], now: float) -> None:
        self._now = now
        changed: dict[str, bool] = {}
        for node in nodes:
            view = self._nodes.pop(node, None)
            if view is not None:
                for username in view.users:
                    self._remote_left(username, changed)
        self._tell_presence_here(changed)

    def _remote_joined(self, username: str, changed: dict[str, bool]) -> None:
        count = self._remote_online.get(username, 0)
        self._remote_online[username] = count + 1
        if count == 0 and username not in self._by_user:
            _toggle(changed, username, online=True)

    def _remote_left(self, username: str, changed: dict[str, bool]) -> None:
        count = self._remote_online.pop(username, 0)
        if count > 1:
            self._remote_online[username] = count - 1
        elif count == 1 and username not in self._by_user:
            _toggle(changed, username, online=False)

    def _tell_presence_here(self, changed: Mapping[str, bool]) -> None:
        """Tell the friends connected here of the users whose presence across the
        cluster ``changed`` (online or not), at once: another node's news is never
        held with, or lost with, a batch of this node's.

        The work is over the users connected here and their friends, never a read
        per name: a name nobody here is friends with costs a set lookup.
        """
        if not changed or not self._by_user:
            return
        try:
            friend_sets = self._friend_sets_here()
        except StoreUnavailableError as failure:  # a notification: nobody is told
            self._note_store_failure(failure)
            return
        except Exception as exc:
            self._count_internal_error(exc)
            return
        names = set(changed)
        for username, friends in friend_sets.items():
            # (set & set walks the smaller one: a few friends against 60,000 names)
            for friend in sorted(friends & names):
                push = encode(m.PresenceChanged(username=friend, online=changed[friend]))
                for connection_id in self._by_user[username]:
                    self._transport_send(connection_id, push)

    def _friend_sets_here(self) -> dict[str, frozenset[str]]:
        """The friends of every user connected here: the cached sets, and one read
        for those not cached (kept while their user is online, as
        ``Lookups._friend_set`` keeps them)."""
        missing = [username for username in self._by_user if username not in self._friend_sets]
        loaded = self._store.friends_of_many(missing) if missing else {}
        sets: dict[str, frozenset[str]] = {}
        for username in self._by_user:
            friends = self._friend_sets.get(username)
            if friends is None:
                friends = frozenset(loaded.get(username, ()))
                if not self._tracker.dirty:  # (only what is committed is cached)
                    self._friend_sets[username] = friends
            sets[username] = friends
        return sets

    def _look_again(self, connection_id: ConnectionId) -> None:
        connection = self._connections.get(connection_id)
        if connection is not None and connection.logged_in:
            # A live window pushes only what this node stores: it reads the
            # database again (and says caught_up again once it has).
            connection.deliveries.fall_behind()
            self._retry_refill(connection)


def _toggle(changed: dict[str, bool], username: str, *, online: bool) -> None:
    """Note a change of ``username``'s presence; a change back within the same call
    cancels it (online then offline: nothing to tell)."""
    if changed.pop(username, None) is None:
        changed[username] = online
