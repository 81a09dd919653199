"""Who is online, and telling their friends when that changes.

A user is online while they have a logged-in connection here
(:class:`~udpchat_proto.chat.connections.ConnectionTable`) or, in a cluster, on
another node (:class:`~udpchat_proto.chat.remote.RemoteUsers`). Their friends
connected here are told (``presence_changed``) when their first connection comes
and their last goes, cluster-wide: each node tells its own connections, of changes
here (held with the batch, as any push) and of the other nodes' news (at once:
another node's news is never held with, or lost with, a batch of this one).
"""

from __future__ import annotations

from collections.abc import Mapping

from . import messages as m
from .caches import Caches
from .codec import encode
from .config import ServerConfig
from .connections import ConnectionTable
from .outbox import Outbox
from .remote import RemoteUsers, Transition
from .stats import ServerStats
from .store import Store, StoreUnavailableError
from .validation import LIST_MAX

__all__ = ["Presence"]


class Presence:
    """Online users, here and cluster-wide, and their announcements.

    Args:
        store: where friendships are read.
        connections: who is online here.
        remote: who is online on the other nodes.
        caches: the friend sets of the users here.
        outbox: where the pushes go.
        stats: counts store failures and internal errors.
        config: whether this server is a node of a cluster.
    """

    def __init__(
        self,
        *,
        store: Store,
        connections: ConnectionTable,
        remote: RemoteUsers,
        caches: Caches,
        outbox: Outbox,
        stats: ServerStats,
        config: ServerConfig,
    ) -> None:
        self._store = store
        self._connections = connections
        self._remote = remote
        self._caches = caches
        self._outbox = outbox
        self._stats = stats
        self._cluster = config.cluster
        self._changed: dict[str, None] = {}
        """Users who came online or went offline here, for the other nodes."""

    def is_online(self, username: str) -> bool:
        """Whether ``username`` is online here or on another node."""
        return self._connections.is_here(username) or self._remote.is_online(username)

    def online_users(self) -> list[str]:
        """Everyone online, here or elsewhere (as far as this node knows), sorted."""
        return sorted(self._connections.user_set() | self._remote.usernames())

    def online_count(self) -> int:
        """How many users are online (without a sorted list each time)."""
        if not self._remote:
            return self._connections.user_count
        return len(self._connections.user_set() | self._remote.usernames())

    def of(self, usernames: list[str]) -> tuple[m.UserPresence, ...]:
        """Each name (the first ``LIST_MAX``) with whether it is online."""
        return tuple(
            m.UserPresence(username=name, online=self.is_online(name))
            for name in usernames[:LIST_MAX]
        )

    # --- here ---------------------------------------------------------------------

    def came_online(self, username: str) -> None:
        """``username``'s first connection here logged in."""
        self._announce(username, online=True)

    def went_offline(self, username: str) -> None:
        """``username``'s last connection here logged out (or ended)."""
        self._announce(username, online=False)

    def take_changes(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Who came online and who went offline here since the last call, as they
        stand now (the news for the other nodes)."""
        changed, self._changed = self._changed, {}
        here = self._connections.is_here
        return (
            tuple(u for u in changed if here(u)),
            tuple(u for u in changed if not here(u)),
        )

    def _announce(self, username: str, *, online: bool) -> None:
        """Tell the friends connected here that ``username`` came online or went
        offline here (each node tells its own)."""
        if self._cluster:
            self._changed[username] = None
            if self._remote.is_online(username):
                return  # online on another node all along: nothing changed for them
        try:
            friends = [f for f in self._store.friends_of(username) if self._connections.is_here(f)]
        except Exception as exc:
            # Presence is a notification: a store failure here must not leave the
            # connection half logged in (or out), so count it and tell nobody.
            self._stats.note_internal_error(exc)
            return
        if friends:
            push = m.PresenceChanged(username=username, online=online)
            for friend in friends:
                for connection_id in self._connections.of_user(friend):
                    self._outbox.send(connection_id, push)

    # --- the other nodes ------------------------------------------------------------

    def remote_changed(self, transitions: list[Transition]) -> None:
        """Users came online or went offline on other nodes: tell the friends here
        of those whose presence across the cluster changed."""
        changed: dict[str, bool] = {}
        for username, online in transitions:
            if not self._connections.is_here(username):  # else: online here all along
                _toggle(changed, username, online=online)
        self._tell_here(changed)

    def _tell_here(self, changed: Mapping[str, bool]) -> None:
        """Tell the friends connected here of the users whose presence across the
        cluster ``changed`` (online or not), at once.

        The work is over the users connected here and their friends, never a read
        per name: a name nobody here is friends with costs a set lookup.
        """
        if not changed or not self._connections.user_count:
            return
        try:
            friend_sets = self._caches.friends_of_everyone_here()
        except StoreUnavailableError as failure:  # a notification: nobody is told
            self._stats.note_store_failure(failure)
            return
        except Exception as exc:
            self._stats.note_internal_error(exc)
            return
        names = set(changed)
        for username, friends in friend_sets.items():
            # (set & set walks the smaller one: a few friends against 60,000 names)
            for friend in sorted(friends & names):
                push = encode(m.PresenceChanged(username=friend, online=changed[friend]))
                for connection_id in self._connections.of_user(username):
                    self._outbox.send_now(connection_id, push)


def _toggle(changed: dict[str, bool], username: str, *, online: bool) -> None:
    """Note a change of ``username``'s presence; a change back within the same call
    cancels it (online then offline: nothing to tell)."""
    if changed.pop(username, None) is None:
        changed[username] = online
