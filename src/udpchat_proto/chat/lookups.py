"""The lookups the request handlers share: who a connection is, whether a user or
a room exists, friendship and presence, with the caches that spare the store a
query per message.

:class:`Lookups` is a base of :class:`~udpchat_proto.chat.core.ServerCore`, which
sets the attributes it declares.
"""

from __future__ import annotations

from typing import Final

from ..errors import ErrorCode
from ..transport import ConnectionId, address_key
from . import messages as m
from .config import ServerConfig
from .connection import ChatConnection
from .requests import RefusedError
from .store import Store, WriteTrackingStore
from .validation import LIST_MAX

__all__ = ["KNOWN_USERS_MAX", "Lookups"]

KNOWN_USERS_MAX: Final = 1_000_000
"""Most account names remembered to exist (about 100 bytes each)."""


class Lookups:
    """Lookups over the store and the connection table, for the handlers."""

    _config: ServerConfig
    _store: Store
    _tracker: WriteTrackingStore
    _by_user: dict[str, tuple[ConnectionId, ...]]
    _remote_online: dict[str, int]
    _forget: dict[str, None]
    _friend_sets: dict[str, frozenset[str]]
    _known_users: set[str]

    def _host(self, connection: ChatConnection) -> str:
        """What the per-address limits key on: the client's network (an IPv6 /64, an
        IPv4 address by default), as the transport's own limits do."""
        return address_key(connection.address[0], self._config.transport)

    @property
    def online_users(self) -> list[str]:
        """Users with at least one live logged-in connection (on any node of a
        cluster, as far as this one knows), sorted."""
        return sorted({*self._by_user, *self._remote_online})

    @property
    def online_count(self) -> int:
        """How many users are online (as :attr:`online_users`, without a sorted list
        each time the counters are read)."""
        if not self._remote_online:
            return len(self._by_user)
        return len(self._by_user.keys() | self._remote_online.keys())

    def _is_online(self, username: str) -> bool:
        return username in self._by_user or username in self._remote_online

    @staticmethod
    def _me(connection: ChatConnection) -> str:
        assert connection.username is not None  # only called when logged in
        return connection.username

    def _are_friends(self, me: str, other: str) -> bool:
        return other in self._friend_set(me)

    def _friend_set(self, me: str) -> frozenset[str]:
        friends = self._friend_sets.get(me)
        if friends is None:
            friends = frozenset(self._store.friends_of(me))
            if me in self._by_user:  # kept while online only: memory stays bounded
                self._friend_sets[me] = friends
        return friends

    def _friendship_changed(self, a: str, b: str) -> None:
        self._friend_sets.pop(a, None)
        self._friend_sets.pop(b, None)
        if self._config.cluster:  # the other nodes' sets too, once durable
            self._forget.update({a: None, b: None})

    def _require_user(self, username: str) -> None:
        # Once seen, a name needs no more lookups (each one also parsed a password
        # record); a deleted account's name is forgotten by the deletion.
        if username in self._known_users:
            return
        if self._store.get_account(username) is None:
            raise RefusedError(ErrorCode.UNKNOWN_USER, f"no user named {username}")
        # Only from a clean batch: an account this batch wrote may yet be rolled back.
        if not self._tracker.dirty and len(self._known_users) < KNOWN_USERS_MAX:
            self._known_users.add(username)

    def _presence(self, usernames: list[str]) -> tuple[m.UserPresence, ...]:
        """Each name with whether it is online."""
        return tuple(
            m.UserPresence(username=name, online=self._is_online(name))
            for name in usernames[:LIST_MAX]
        )

    def _visible(self, me: str, usernames: list[str]) -> list[str]:
        """``usernames`` without those ``me`` blocks."""
        blocked = set(self._store.blocked_by(me)) if usernames else set()
        return [name for name in usernames if name not in blocked]

    def _co_members(self, me: str) -> set[str]:
        """Everyone who shares a room with ``me`` (``me`` too, if in any room)."""
        members: set[str] = set()
        for room, _count in self._store.rooms_of(me):
            members.update(self._store.room_members(room))
        return members

    def _require_member(self, me: str, room: str) -> None:
        if not self._store.room_exists(room):
            raise RefusedError(ErrorCode.UNKNOWN_ROOM, f"no room named {room}")
        if me not in self._store.room_members(room):
            raise RefusedError(ErrorCode.NOT_A_MEMBER, f"you are not a member of {room}")
