"""Requests about rooms: join (creating it), leave, list your rooms and a room's members."""

from __future__ import annotations

from ...clock import WallClock
from ...errors import ErrorCode
from .. import messages as m
from ..batch import Batch
from ..config import ServerConfig
from ..connection import ChatConnection
from ..limits import Limits
from ..lookups import not_blocking, require_member
from ..outbox import Outbox
from ..presence import Presence
from ..requests import RefusedError, Route, route, user_of
from ..store import Store
from ..validation import LIST_MAX

__all__ = ["RoomHandlers"]


class RoomHandlers:
    """Handlers of the room requests.

    Args:
        store: rooms and their members.
        outbox: where answers go.
        batch: the joins and leaves pushed at the batch's end.
        presence: who is online (a members list says).
        limits: joins and leaves per user.
        config: the room caps.
        clock: the wall clock.
    """

    def __init__(
        self,
        *,
        store: Store,
        outbox: Outbox,
        batch: Batch,
        presence: Presence,
        limits: Limits,
        config: ServerConfig,
        clock: WallClock,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._batch = batch
        self._presence = presence
        self._limits = limits
        self._config = config
        self._clock = clock

    def routes(self) -> list[Route]:
        """The requests these handlers answer."""
        return [
            route(m.JoinRoom, self.join_room),
            route(m.LeaveRoom, self.leave_room),
            route(m.ListRooms, self.list_rooms),
            route(m.ListMembers, self.list_members),
        ]

    def join_room(self, connection: ChatConnection, request: m.JoinRoom, now: float) -> None:
        """``join_room``: join (creating the room if it is new)."""
        me, room = user_of(connection), request.room
        members = self._store.room_members(room)
        if me in members:
            self._outbox.reply(connection, m.Ok(request_id=request.request_id))
            return
        if len(members) >= self._config.max_room_members:
            raise RefusedError(ErrorCode.ROOM_FULL, f"{room} has {len(members)} members, the limit")
        if len(self._store.rooms_of(me)) >= self._config.max_rooms_per_user:
            raise RefusedError(
                ErrorCode.TOO_MANY_ROOMS,
                f"you are in {self._config.max_rooms_per_user} rooms, the limit",
            )
        self._check_membership_rate(me, now)
        self._store.join_room(room, me, self._clock())
        self._limits.membership_changes.spend(me, now=now)  # once written: a retried step pays once
        self._outbox.reply(connection, m.Ok(request_id=request.request_id))
        # A member who blocks the newcomer hears nothing from them, this included.
        told = not_blocking(self._store, me, members)
        self._batch.membership_changed(room, me, joined=True, members=told)

    def _check_membership_rate(self, me: str, now: float) -> None:
        if not self._limits.membership_changes.available(me, now=now):
            raise RefusedError(
                ErrorCode.RATE_LIMITED, "you join and leave rooms too fast; wait a minute"
            )

    def leave_room(self, connection: ChatConnection, request: m.LeaveRoom, now: float) -> None:
        """``leave_room``."""
        me, room = user_of(connection), request.room
        if not self._store.room_exists(room):
            raise RefusedError(ErrorCode.UNKNOWN_ROOM, f"no room named {room}")
        if me in self._store.room_members(room):
            self._check_membership_rate(me, now)
        if not self._store.leave_room(room, me):
            raise RefusedError(ErrorCode.NOT_A_MEMBER, f"you are not a member of {room}")
        self._limits.membership_changes.spend(me, now=now)
        self._outbox.reply(connection, m.Ok(request_id=request.request_id))
        told = not_blocking(self._store, me, self._store.room_members(room))
        self._batch.membership_changed(room, me, joined=False, members=told)

    def list_rooms(self, connection: ChatConnection, request: m.ListRooms, now: float) -> None:
        """``list_rooms``: the user's rooms, with their sizes."""
        rooms = tuple(
            m.RoomInfo(room=room, members=count)
            for room, count in self._store.rooms_of(user_of(connection))[:LIST_MAX]
        )
        self._outbox.reply(connection, m.Rooms(request_id=request.request_id, rooms=rooms))

    def list_members(self, connection: ChatConnection, request: m.ListMembers, now: float) -> None:
        """``list_members``: a room's members (for members only)."""
        room = request.room
        # Members only: who is in a room is its members' business.
        require_member(self._store, user_of(connection), room)
        # Each member as they are, also one who blocks the caller: the caller reads
        # their messages in the room, so showing them offline would tell the block.
        members = self._presence.of(self._store.room_members(room))
        self._outbox.reply(
            connection, m.RoomMembers(request_id=request.request_id, room=room, members=members)
        )
