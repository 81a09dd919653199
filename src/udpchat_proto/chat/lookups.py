"""Store lookups several handler units share: rooms and blocks.

Plain functions over the :class:`~udpchat_proto.chat.store.Store`; what is cached
(friends of online users) is :mod:`~udpchat_proto.chat.caches`, and who is online
:mod:`~udpchat_proto.chat.presence`.
"""

from __future__ import annotations

from ..errors import ErrorCode
from .requests import RefusedError
from .store import Store

__all__ = ["co_members", "not_blocking", "require_member", "visible"]


def visible(store: Store, me: str, usernames: list[str]) -> list[str]:
    """``usernames`` without those ``me`` blocks."""
    blocked = set(store.blocked_by(me)) if usernames else set()
    return [name for name in usernames if name not in blocked]


def not_blocking(store: Store, me: str, usernames: list[str]) -> list[str]:
    """``usernames`` without those who block ``me``: who may hear of what ``me``
    does in a room (a blocker hears nothing from the blocked user)."""
    blockers = set(store.blockers_of(me)) if usernames else set()
    return [name for name in usernames if name not in blockers]


def co_members(store: Store, me: str) -> set[str]:
    """Everyone who shares a room with ``me`` (``me`` too, if in any room)."""
    members: set[str] = set()
    for room, _count in store.rooms_of(me):
        members.update(store.room_members(room))
    return members


def require_member(store: Store, me: str, room: str) -> None:
    """Refuse unless ``room`` exists and ``me`` is a member of it."""
    if not store.room_exists(room):
        raise RefusedError(ErrorCode.UNKNOWN_ROOM, f"no room named {room}")
    if me not in store.room_members(room):
        raise RefusedError(ErrorCode.NOT_A_MEMBER, f"you are not a member of {room}")
