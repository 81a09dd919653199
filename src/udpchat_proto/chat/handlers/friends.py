"""Requests about friends: invitations, friendships and who is online."""

from __future__ import annotations

from ...clock import WallClock
from ...errors import ErrorCode
from .. import messages as m
from ..caches import Caches
from ..config import ServerConfig
from ..connection import ChatConnection
from ..lookups import co_members, visible
from ..outbox import Outbox
from ..presence import Presence
from ..requests import RefusedError, Route, route, user_of
from ..store import Store
from ..validation import LIST_MAX

__all__ = ["FriendHandlers"]


class FriendHandlers:
    """Handlers of the invitation and friendship requests, and the lists.

    Args:
        store: invitations, friendships and blocks.
        outbox: where answers and pushes go.
        caches: the friend sets, forgotten when a friendship changes.
        presence: who is online.
        config: the invitation cap, whether presence is public.
        clock: the wall clock.
    """

    def __init__(
        self,
        *,
        store: Store,
        outbox: Outbox,
        caches: Caches,
        presence: Presence,
        config: ServerConfig,
        clock: WallClock,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._caches = caches
        self._presence = presence
        self._config = config
        self._clock = clock

    def routes(self) -> list[Route]:
        """The requests these handlers answer."""
        return [
            route(m.Invite, self.invite),
            route(m.AcceptInvitation, self.accept),
            route(m.DeclineInvitation, self.decline),
            route(m.CancelInvitation, self.cancel),
            route(m.Unfriend, self.unfriend),
            route(m.ListInvitations, self.list_invitations),
            route(m.ListFriends, self.list_friends),
            route(m.ListOnline, self.list_online),
        ]

    def invite(self, connection: ChatConnection, request: m.Invite, now: float) -> None:
        """``invite``: invite a user (or accept their invitation)."""
        me, other = user_of(connection), request.username
        if other == me:
            raise RefusedError(ErrorCode.CANNOT_INVITE_SELF, "you cannot invite yourself")
        # Any valid name: one with no account (never, or no longer) keeps the
        # invitation as a stranger who never answers does, so that the answer does
        # not tell whether the name has an account.
        if self._store.has_blocked(me, other):
            raise RefusedError(ErrorCode.BAD_REQUEST, f"you block {other}: unblock them first")
        if self._store.are_friends(me, other):
            raise RefusedError(ErrorCode.ALREADY_FRIENDS, f"you are already friends with {other}")
        if self._store.has_invitation(me, other):
            raise RefusedError(ErrorCode.ALREADY_INVITED, f"you have already invited {other}")
        if self._store.has_blocked(other, me):
            # The ordinary answer, kept as any invitation is, but never shown to them.
            self._check_invitation_room(me)
            self._store.add_invitation(me, other, self._clock())
            self._outbox.reply(connection, m.Ok(request_id=request.request_id))
            return
        if self._store.has_invitation(other, me):
            # Both want it: inviting back accepts their invitation.
            self._store.delete_invitation(other, me)
            self._store.add_friendship(me, other, self._clock())
            self._caches.friendship_changed(me, other)
            self._outbox.reply(connection, m.Ok(request_id=request.request_id))
            self._outbox.push_to_user(other, m.InvitationAnswered(by_user=me, accepted=True))
            return
        self._check_invitation_room(me)
        self._store.add_invitation(me, other, self._clock())
        self._outbox.reply(connection, m.Ok(request_id=request.request_id))
        self._outbox.push_to_user(other, m.InvitationReceived(from_user=me))

    def _check_invitation_room(self, me: str) -> None:
        """Refuse one more waiting invitation beyond ``max_outgoing_invitations``
        (any name may be invited: without a cap, made-up ones without end)."""
        limit = self._config.max_outgoing_invitations
        if len(self._store.outgoing_invitations(me)) >= limit:
            raise RefusedError(
                ErrorCode.TOO_MANY_INVITATIONS,
                f"you have {limit} invitations waiting for an answer: cancel some first",
            )

    def accept(self, connection: ChatConnection, request: m.AcceptInvitation, now: float) -> None:
        """``accept_invitation``."""
        me, inviter = user_of(connection), request.username
        if not self._invited_by(inviter, me):
            raise RefusedError(ErrorCode.NO_INVITATION, f"{inviter} has not invited you")
        self._store.delete_invitation(inviter, me)
        self._store.add_friendship(me, inviter, self._clock())
        self._caches.friendship_changed(me, inviter)
        self._outbox.reply(connection, m.Ok(request_id=request.request_id))
        self._outbox.push_to_user(inviter, m.InvitationAnswered(by_user=me, accepted=True))

    def decline(self, connection: ChatConnection, request: m.DeclineInvitation, now: float) -> None:
        """``decline_invitation``."""
        me, inviter = user_of(connection), request.username
        if not self._invited_by(inviter, me):
            raise RefusedError(ErrorCode.NO_INVITATION, f"{inviter} has not invited you")
        self._store.delete_invitation(inviter, me)
        self._outbox.reply(connection, m.Ok(request_id=request.request_id))
        self._outbox.push_to_user(inviter, m.InvitationAnswered(by_user=me, accepted=False))

    def _invited_by(self, inviter: str, me: str) -> bool:
        """An invitation ``me`` can see: from someone ``me`` does not block."""
        return self._store.has_invitation(inviter, me) and not self._store.has_blocked(me, inviter)

    def cancel(self, connection: ChatConnection, request: m.CancelInvitation, now: float) -> None:
        """``cancel_invitation``."""
        me, invitee = user_of(connection), request.username
        if not self._store.has_invitation(me, invitee):
            raise RefusedError(ErrorCode.NO_INVITATION, f"you have not invited {invitee}")
        self._store.delete_invitation(me, invitee)
        self._outbox.reply(connection, m.Ok(request_id=request.request_id))
        self._outbox.push_to_user(invitee, m.InvitationCancelled(by_user=me))

    def unfriend(self, connection: ChatConnection, request: m.Unfriend, now: float) -> None:
        """``unfriend``."""
        me, other = user_of(connection), request.username
        if not self._store.are_friends(me, other):
            raise RefusedError(ErrorCode.NOT_FRIENDS, f"you are not friends with {other}")
        self._store.delete_friendship(me, other)
        self._caches.friendship_changed(me, other)
        self._outbox.reply(connection, m.Ok(request_id=request.request_id))
        self._outbox.push_to_user(other, m.Unfriended(by_user=me))

    def list_invitations(
        self, connection: ChatConnection, request: m.ListInvitations, now: float
    ) -> None:
        """``list_invitations``: incoming (from those not blocked) and outgoing."""
        me = user_of(connection)
        self._outbox.reply(
            connection,
            m.Invitations(
                request_id=request.request_id,
                incoming=tuple(
                    visible(self._store, me, self._store.incoming_invitations(me))[:LIST_MAX]
                ),
                outgoing=tuple(self._store.outgoing_invitations(me)[:LIST_MAX]),
            ),
        )

    def list_friends(self, connection: ChatConnection, request: m.ListFriends, now: float) -> None:
        """``list_friends``: each friend and whether they are online."""
        friends = self._presence.of(self._store.friends_of(user_of(connection)))
        self._outbox.reply(connection, m.Friends(request_id=request.request_id, friends=friends))

    def list_online(self, connection: ChatConnection, request: m.ListOnline, now: float) -> None:
        """``list_online``: who is online, as far as the caller may see."""
        me = user_of(connection)
        if self._config.public_presence:
            visible = self._presence.online_users()
            # Those who block the caller look offline to them, except in a room they
            # share: there the caller reads their messages, and a member's presence
            # is what room_members shows (hiding it would tell the block).
            hidden = set(self._store.blockers_of(me))
            if hidden:
                hidden -= co_members(self._store, me)
                visible = [name for name in visible if name not in hidden]
        else:
            # Those who would see each other anyway: friends (presence pushes) and
            # room co-members (members lists); and the caller. One who blocks the
            # caller is no friend: they are here only as a co-member, shown as such.
            known = {me, *self._caches.friends_of(me), *co_members(self._store, me)}
            visible = sorted(name for name in known if self._presence.is_online(name))
        self._outbox.reply(
            connection,
            m.OnlineUsers(request_id=request.request_id, usernames=tuple(visible[:LIST_MAX])),
        )
