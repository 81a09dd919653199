"""Requests about rooms: join (creating it), leave, list your rooms and a room's members."""

from __future__ import annotations

from ...errors import ErrorCode
from .. import messages as m
from ..connection import ChatConnection
from ..core import ServerCore
from ..requests import RefusedError, handles
from ..validation import LIST_MAX

__all__ = ["RoomRequests"]


class RoomRequests(ServerCore):
    """Handlers of the room requests."""

    @handles(m.JoinRoom)
    def _on_join_room(self, connection: ChatConnection, request: m.JoinRoom, now: float) -> None:
        me, room = self._me(connection), request.room
        members = self._store.room_members(room)
        if me in members:
            self._reply(connection, m.Ok(request_id=request.request_id))
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
        self._membership_changes.spend(me, now=now)  # once written: a retried step pays once
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._membership_changed(room, me, joined=True, members=members)

    def _check_membership_rate(self, me: str, now: float) -> None:
        if not self._membership_changes.available(me, now=now):
            raise RefusedError(
                ErrorCode.RATE_LIMITED, "you join and leave rooms too fast; wait a minute"
            )

    @handles(m.LeaveRoom)
    def _on_leave_room(self, connection: ChatConnection, request: m.LeaveRoom, now: float) -> None:
        me, room = self._me(connection), request.room
        if not self._store.room_exists(room):
            raise RefusedError(ErrorCode.UNKNOWN_ROOM, f"no room named {room}")
        if me in self._store.room_members(room):
            self._check_membership_rate(me, now)
        if not self._store.leave_room(room, me):
            raise RefusedError(ErrorCode.NOT_A_MEMBER, f"you are not a member of {room}")
        self._membership_changes.spend(me, now=now)
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._membership_changed(room, me, joined=False, members=self._store.room_members(room))

    @handles(m.ListRooms)
    def _on_list_rooms(self, connection: ChatConnection, request: m.ListRooms, now: float) -> None:
        rooms = tuple(
            m.RoomInfo(room=room, members=count)
            for room, count in self._store.rooms_of(self._me(connection))[:LIST_MAX]
        )
        self._reply(connection, m.Rooms(request_id=request.request_id, rooms=rooms))

    @handles(m.ListMembers)
    def _on_list_members(
        self, connection: ChatConnection, request: m.ListMembers, now: float
    ) -> None:
        room = request.room
        # Members only: who is in a room is its members' business.
        self._require_member(self._me(connection), room)
        # Each member as they are, also one who blocks the caller: the caller reads
        # their messages in the room, so showing them offline would tell the block.
        members = self._presence(self._store.room_members(room))
        self._reply(
            connection, m.RoomMembers(request_id=request.request_id, room=room, members=members)
        )
