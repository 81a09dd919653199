"""Requests about blocking: block a user, unblock them, list whom you block.

A block ends a friendship and the invitations either way, and from then on the
blocked user learns nothing they could not learn anyway: an invitation from them
gets the ordinary answer but is never shown to the blocker, a message from them is
refused as to any non-friend (``not_friends``: they are no longer friends), and
the blocker appears offline to them in a public online list (``public_presence``)
unless they share a room.

In a room they share, the blocker receives nothing from the blocked user (no push,
not in the backlog nor in history: the store filters it at delivery, and the
cursors pass it), while the blocked user sees the room as any member does: the
blocker's messages and real presence. Unblocking tells the other side nothing.
"""

from __future__ import annotations

from ...errors import ErrorCode
from .. import messages as m
from ..connection import ChatConnection
from ..core import ServerCore
from ..requests import RefusedError, handles
from ..validation import LIST_MAX

__all__ = ["BlockRequests"]


class BlockRequests(ServerCore):
    """Handlers of block, unblock and list_blocked."""

    @handles(m.Block)
    def _on_block(self, connection: ChatConnection, request: m.Block, now: float) -> None:
        me, other = self._me(connection), request.username
        if other == me:
            raise RefusedError(ErrorCode.BAD_REQUEST, "you cannot block yourself")
        # Any valid name, with an account or not (the answer tells nobody which);
        # capped, as any name may be blocked.
        limit = self._config.max_blocked_per_user
        if not self._store.has_blocked(me, other) and len(self._store.blocked_by(me)) >= limit:
            raise RefusedError(ErrorCode.TOO_MANY_BLOCKED, f"you block {limit} users: unblock some")
        self._store.add_block(me, other, self._clock())
        # What an unfriend and a cancel would tell them; their invitation to the
        # blocker goes silently (it was never to be shown).
        pushes: list[m.Push] = []
        if self._store.delete_friendship(me, other):
            self._friendship_changed(me, other)
            pushes.append(m.Unfriended(by_user=me))
        if self._store.delete_invitation(me, other):
            pushes.append(m.InvitationCancelled(by_user=me))
        self._store.delete_invitation(other, me)
        self._reply(connection, m.Ok(request_id=request.request_id))
        for push in pushes:
            self._push_to_user(other, push)

    @handles(m.Unblock)
    def _on_unblock(self, connection: ChatConnection, request: m.Unblock, now: float) -> None:
        me, other = self._me(connection), request.username
        if self._store.delete_block(me, other):
            # An invitation they sent while blocked was never to be shown: it goes.
            self._store.delete_invitation(other, me)
        self._reply(connection, m.Ok(request_id=request.request_id))

    @handles(m.ListBlocked)
    def _on_list_blocked(
        self, connection: ChatConnection, request: m.ListBlocked, now: float
    ) -> None:
        blocked = self._store.blocked_by(self._me(connection))[:LIST_MAX]
        self._reply(connection, m.Blocked(request_id=request.request_id, usernames=tuple(blocked)))
