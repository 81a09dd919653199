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

from ...clock import WallClock
from ...errors import ErrorCode
from .. import messages as m
from ..caches import Caches
from ..config import ServerConfig
from ..connection import ChatConnection
from ..outbox import Outbox
from ..requests import RefusedError, Route, route, user_of
from ..store import Store
from ..validation import LIST_MAX

__all__ = ["BlockHandlers"]


class BlockHandlers:
    """Handlers of block, unblock and list_blocked.

    Args:
        store: blocks, friendships and invitations.
        outbox: where answers and pushes go.
        caches: the friend sets, forgotten when a block ends a friendship.
        config: the cap on blocks.
        clock: the wall clock.
    """

    def __init__(
        self,
        *,
        store: Store,
        outbox: Outbox,
        caches: Caches,
        config: ServerConfig,
        clock: WallClock,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._caches = caches
        self._config = config
        self._clock = clock

    def routes(self) -> list[Route]:
        """The requests these handlers answer."""
        return [
            route(m.Block, self.block),
            route(m.Unblock, self.unblock),
            route(m.ListBlocked, self.list_blocked),
        ]

    def block(self, connection: ChatConnection, request: m.Block, now: float) -> None:
        """``block``: ends a friendship and the invitations either way."""
        me, other = user_of(connection), request.username
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
            self._caches.friendship_changed(me, other)
            pushes.append(m.Unfriended(by_user=me))
        if self._store.delete_invitation(me, other):
            pushes.append(m.InvitationCancelled(by_user=me))
        self._store.delete_invitation(other, me)
        self._outbox.reply(connection, m.Ok(request_id=request.request_id))
        for push in pushes:
            self._outbox.push_to_user(other, push)

    def unblock(self, connection: ChatConnection, request: m.Unblock, now: float) -> None:
        """``unblock``: tells the other side nothing."""
        me, other = user_of(connection), request.username
        if self._store.delete_block(me, other):
            # An invitation they sent while blocked was never to be shown: it goes.
            self._store.delete_invitation(other, me)
        self._outbox.reply(connection, m.Ok(request_id=request.request_id))

    def list_blocked(self, connection: ChatConnection, request: m.ListBlocked, now: float) -> None:
        """``list_blocked``."""
        blocked = self._store.blocked_by(user_of(connection))[:LIST_MAX]
        self._outbox.reply(
            connection, m.Blocked(request_id=request.request_id, usernames=tuple(blocked))
        )
