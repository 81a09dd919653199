"""What the server remembers of the store to spare it a query per message: the
friends of the users online here, and the device sets of conversations.

A set is read once and kept while its user is online (so memory stays bounded by
who is connected), and forgotten when it may be wrong: a friendship write forgets
both users' sets; a failed step or a lost batch forgets them all, since they may
hold what was rolled back. In a cluster, the users whose sets changed are told to
the other nodes, once the batch is durable, so that they forget theirs too.

A conversation's device set (read at every encrypted send, and by ``get_devices``)
is kept with the tracker's :attr:`~WriteTrackingStore.device_generation` it was
read at and the members it was read for, and used only while both still hold: any
write that may change a device (keys uploaded; a session ended for any reason;
an account deleted, disabled or its password changed) or a membership moves the
generation on, as do a failed step and a lost batch, and a room's members are
read at each send anyway. Invalidation is by construction, not by a list of
events kept beside the writes: a new write that may change devices is counted
as one unless ``store.KEEPS_DEVICE_SETS`` names it. A cluster's node keeps a set
for the batch it was read in only (:meth:`Caches.batch_ended`): the other nodes'
writes do not go through this one's tracker, and their news may be lost; a batch
is the window a set read at a send already had before its commit (see
docs/E2EE.md, "The server's CPU a message").

A sender's stored bytes (the quota, read at every send) are kept as an upper
bound (:meth:`Caches.quota_allows`): read once, then raised by every message
admitted against it. Nothing on this node adds to a user's stored bytes but the
sends checked here, and what lowers them (deletions, a refused or lost write) only
makes the bound looser, so a send the bound admits would have been admitted by a
read; one it would not admit is checked against a fresh read. A cluster's node
keeps the bounds for one batch only: the same user may send through another node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from ..e2ee.records import DeviceSet
from .config import ServerConfig
from .connections import ConnectionTable
from .devicesets import current_device_set
from .store import Store, WriteTrackingStore

__all__ = ["DEVICE_SETS_MAX", "QUOTA_BOUNDS_MAX", "Caches"]

DEVICE_SETS_MAX: Final = 4096
"""Most conversations whose device sets are kept (the oldest read goes first)."""

QUOTA_BOUNDS_MAX: Final = 4096
"""Most senders whose stored-bytes bounds are kept (the oldest read goes first): a
dropped bound costs one read at that sender's next message."""


class Caches:
    """The friend sets of online users.

    Args:
        store: where friendships are read.
        tracker: whether the batch has written (only what is committed is kept).
        connections: who is online here.
        config: whether this server is a node of a cluster.
    """

    def __init__(
        self,
        *,
        store: Store,
        tracker: WriteTrackingStore,
        connections: ConnectionTable,
        config: ServerConfig,
    ) -> None:
        self._store = store
        self._tracker = tracker
        self._connections = connections
        self._cluster = config.cluster
        self._friend_sets: dict[str, frozenset[str]] = {}
        self._forget: dict[str, None] = {}
        """Users whose cached state the other nodes must drop (a cluster's)."""
        self._device_sets: dict[str, tuple[int, list[str], DeviceSet]] = {}
        """By conversation: the generation and members it was read at, and the set."""
        self._quota_bounds: dict[str, int] = {}
        """By sender: at least what their stored messages count (see the module)."""

    def friends_of(self, username: str) -> frozenset[str]:
        """The friends of ``username`` (cached while they are online here)."""
        friends = self._friend_sets.get(username)
        if friends is None:
            friends = frozenset(self._store.friends_of(username))
            if self._connections.is_here(username):  # memory stays bounded
                self._friend_sets[username] = friends
        return friends

    def are_friends(self, me: str, other: str) -> bool:
        """Whether ``me`` and ``other`` are friends."""
        return other in self.friends_of(me)

    def friends_of_everyone_here(self) -> dict[str, frozenset[str]]:
        """The friends of every user connected here: the cached sets, and one read
        (:meth:`Store.friends_of_many`) for those not cached, which are kept as
        :meth:`friends_of` keeps them."""
        here = self._connections.users()
        missing = [username for username in here if username not in self._friend_sets]
        loaded = self._store.friends_of_many(missing) if missing else {}
        sets: dict[str, frozenset[str]] = {}
        for username in here:
            friends = self._friend_sets.get(username)
            if friends is None:
                friends = frozenset(loaded.get(username, ()))
                if not self._tracker.dirty:  # (only what is committed is cached)
                    self._friend_sets[username] = friends
            sets[username] = friends
        return sets

    def friendship_changed(self, a: str, b: str) -> None:
        """``a`` and ``b`` became friends or stopped being friends."""
        self._friend_sets.pop(a, None)
        self._friend_sets.pop(b, None)
        if self._cluster:  # the other nodes' sets too, once durable
            self._forget.update({a: None, b: None})

    def account_deleted(self, username: str) -> None:
        """``username``'s account is gone: the other nodes forget it too."""
        if self._cluster:
            self._forget[username] = None

    def forget_user(self, username: str) -> None:
        """Drop what is cached of ``username`` (offline here, or ended)."""
        self._friend_sets.pop(username, None)

    def forget_users(self, usernames: Iterable[str]) -> None:
        """Drop what is cached of these users (another node said it changed)."""
        for username in usernames:
            self._friend_sets.pop(username, None)

    def forget_all(self) -> None:
        """Drop every set: they may hold what a failed step or lost batch undid."""
        self._friend_sets.clear()
        self._device_sets.clear()

    def batch_ended(self) -> None:
        """The batch is over (committed, lost, or it wrote nothing). A cluster's node
        drops its device sets: another node may change one at any time, and what
        this node reads again must be what is committed now."""
        if self._cluster:
            self._device_sets.clear()
            self._quota_bounds.clear()

    def quota_allows(self, username: str, size: int, quota: int) -> int | None:
        """None if ``username`` may store ``size`` bytes more under ``quota`` (they
        are then counted in the bound kept); else what their stored messages count
        now (read, not the bound: the refusal says it). A read of the store only when
        the bound kept does not admit ``size`` (see the module): the first message
        of a sender, one near the quota, and at every message in a cluster's batch
        the first of its sender."""
        bound = self._quota_bounds.get(username)
        if bound is not None and bound + size <= quota:
            self._quota_bounds[username] = bound + size
            return None
        stored = self._store.stored_bytes(username)
        if stored + size > quota:
            return stored
        if bound is None and len(self._quota_bounds) >= QUOTA_BOUNDS_MAX:
            del self._quota_bounds[next(iter(self._quota_bounds))]  # the oldest read
        self._quota_bounds[username] = stored + size
        return None

    def device_set(self, conversation: str, members: Sequence[str]) -> DeviceSet:
        """The device set of ``conversation``, whose members are ``members``, as it
        stands (``current_device_set``), read again only when a write since may
        have changed it (see the module)."""
        wanted = sorted(set(members))
        generation = self._tracker.device_generation
        kept = self._device_sets.get(conversation)
        if kept is not None and kept[0] == generation and kept[1] == wanted:
            return kept[2]
        found = current_device_set(self._store, conversation, wanted)
        if kept is None and len(self._device_sets) >= DEVICE_SETS_MAX:
            del self._device_sets[next(iter(self._device_sets))]  # the oldest read
        self._device_sets[conversation] = (generation, wanted, found)
        return found

    def take_forget(self) -> tuple[str, ...]:
        """The users whose caches the other nodes must drop, once nothing of this
        node is uncommitted (what a node reads again must be committed); else ()."""
        if self._tracker.dirty:
            return ()
        forget, self._forget = tuple(self._forget), {}
        return forget
