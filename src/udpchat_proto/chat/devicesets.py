"""Conversations' device sets (end-to-end encryption): who may see whose devices,
and the version that tells a sender its view of a set is stale.

A conversation's device set is every device with keys of every member (a room's
members; both users of a direct conversation). Its **version** is a digest of the
set's device ids: it changes whenever the set does (a device added or ended, a
member in or out) and needs no counter kept, bumped or raced over by a cluster's
nodes. A set never comes back once left (a device id is a login session's, never
reused), except when a member leaves a room and joins it again with the same
devices: then the version comes back too, rightly, since the same devices are
the ones a message must be shared with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..e2ee.records import DeviceKeys, DeviceSet, check_conversation
from ..errors import ErrorCode
from .lookups import require_member
from .requests import RefusedError
from .store import Store
from .validation import ValidationError, is_room

if TYPE_CHECKING:  # (Caches keeps the sets this module reads)
    from .caches import Caches

__all__ = [
    "DevicesChangedError",
    "conversation_members",
    "current_device_set",
    "device_set_version",
    "may_see_devices",
]


class DevicesChangedError(RefusedError):
    """``devices_changed``: the answer carries the conversation's current set."""

    def __init__(self, device_set: DeviceSet) -> None:
        super().__init__(
            ErrorCode.DEVICES_CHANGED,
            f"the devices of {device_set.conversation} changed: share with them and send again",
            device_set,
        )


def device_set_version(devices: Iterable[DeviceKeys]) -> int:
    """The version of a set of devices: 63 bits of the SHA-256 of their sorted ids."""
    digest = hashlib.sha256(b"udpchat device set v1\0")
    for device_id in sorted(device.device_id for device in devices):
        digest.update(device_id)
    return int.from_bytes(digest.digest()[:8], "big") >> 1


def conversation_members(store: Store, caches: Caches, me: str, conversation: str) -> list[str]:
    """The members of ``conversation`` (``me`` among them), or a refusal: a room
    ``me`` is not in, a direct conversation not ``me``'s or with a non-friend."""
    try:
        check_conversation(conversation)
    except ValidationError as exc:
        raise RefusedError(ErrorCode.BAD_REQUEST, str(exc)) from None
    if is_room(conversation):
        require_member(store, me, conversation)
        return store.room_members(conversation)
    users = conversation.split(",")
    if me not in users:
        raise RefusedError(ErrorCode.NOT_A_MEMBER, f"{conversation} is not your conversation")
    (other,) = (user for user in users if user != me)
    if not caches.are_friends(me, other):
        raise RefusedError(ErrorCode.NOT_FRIENDS, f"you are not friends with {other}")
    return users


def current_device_set(store: Store, conversation: str, members: Iterable[str]) -> DeviceSet:
    """The set of ``conversation``, whose members are ``members``, as it stands."""
    devices = tuple(keys for keys, _created in store.devices_of(sorted(set(members))))
    return DeviceSet(
        conversation=conversation, version=device_set_version(devices), devices=devices
    )


def may_see_devices(store: Store, caches: Caches, me: str, user: str) -> bool:
    """Whether ``me`` may list ``user``'s devices (or claim their keys): ``me``
    itself, a friend, or a member of a room ``me`` is in."""
    if user == me or caches.are_friends(me, user):
        return True
    return any(user in store.room_members(room) for room, _count in store.rooms_of(me))
