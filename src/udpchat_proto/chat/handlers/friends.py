"""Requests about friends: invitations, friendships and who is online."""

from __future__ import annotations

from ...errors import ErrorCode
from .. import messages as m
from ..connection import ChatConnection
from ..core import ServerCore
from ..requests import RefusedError, handles
from ..validation import LIST_MAX

__all__ = ["FriendRequests"]


class FriendRequests(ServerCore):
    """Handlers of the invitation and friendship requests, and the lists."""

    @handles(m.Invite)
    def _on_invite(self, connection: ChatConnection, request: m.Invite, now: float) -> None:
        me, other = self._me(connection), request.username
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
            self._reply(connection, m.Ok(request_id=request.request_id))
            return
        if self._store.has_invitation(other, me):
            # Both want it: inviting back accepts their invitation.
            self._store.delete_invitation(other, me)
            self._store.add_friendship(me, other, self._clock())
            self._friendship_changed(me, other)
            self._reply(connection, m.Ok(request_id=request.request_id))
            self._push_to_user(other, m.InvitationAnswered(by_user=me, accepted=True))
            return
        self._check_invitation_room(me)
        self._store.add_invitation(me, other, self._clock())
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._push_to_user(other, m.InvitationReceived(from_user=me))

    def _check_invitation_room(self, me: str) -> None:
        """Refuse one more waiting invitation beyond ``max_outgoing_invitations``
        (any name may be invited: without a cap, made-up ones without end)."""
        limit = self._config.max_outgoing_invitations
        if len(self._store.outgoing_invitations(me)) >= limit:
            raise RefusedError(
                ErrorCode.TOO_MANY_INVITATIONS,
                f"you have {limit} invitations waiting for an answer: cancel some first",
            )

    @handles(m.AcceptInvitation)
    def _on_accept(
        self, connection: ChatConnection, request: m.AcceptInvitation, now: float
    ) -> None:
        me, inviter = self._me(connection), request.username
        if not self._invited_by(inviter, me):
            raise RefusedError(ErrorCode.NO_INVITATION, f"{inviter} has not invited you")
        self._store.delete_invitation(inviter, me)
        self._store.add_friendship(me, inviter, self._clock())
        self._friendship_changed(me, inviter)
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._push_to_user(inviter, m.InvitationAnswered(by_user=me, accepted=True))

    @handles(m.DeclineInvitation)
    def _on_decline(
        self, connection: ChatConnection, request: m.DeclineInvitation, now: float
    ) -> None:
        me, inviter = self._me(connection), request.username
        if not self._invited_by(inviter, me):
            raise RefusedError(ErrorCode.NO_INVITATION, f"{inviter} has not invited you")
        self._store.delete_invitation(inviter, me)
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._push_to_user(inviter, m.InvitationAnswered(by_user=me, accepted=False))

    def _invited_by(self, inviter: str, me: str) -> bool:
        """An invitation ``me`` can see: from someone ``me`` does not block."""
        return self._store.has_invitation(inviter, me) and not self._store.has_blocked(me, inviter)

    @handles(m.CancelInvitation)
    def _on_cancel(
        self, connection: ChatConnection, request: m.CancelInvitation, now: float
    ) -> None:
        me, invitee = self._me(connection), request.username
        if not self._store.has_invitation(me, invitee):
            raise RefusedError(ErrorCode.NO_INVITATION, f"you have not invited {invitee}")
        self._store.delete_invitation(me, invitee)
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._push_to_user(invitee, m.InvitationCancelled(by_user=me))

    @handles(m.Unfriend)
    def _on_unfriend(self, connection: ChatConnection, request: m.Unfriend, now: float) -> None:
        me, other = self._me(connection), request.username
        if not self._store.are_friends(me, other):
            raise RefusedError(ErrorCode.NOT_FRIENDS, f"you are not friends with {other}")
        self._store.delete_friendship(me, other)
        self._friendship_changed(me, other)
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._push_to_user(other, m.Unfriended(by_user=me))

    @handles(m.ListInvitations)
    def _on_list_invitations(
        self, connection: ChatConnection, request: m.ListInvitations, now: float
    ) -> None:
        me = self._me(connection)
        self._reply(
            connection,
            m.Invitations(
                request_id=request.request_id,
                incoming=tuple(self._visible(me, self._store.incoming_invitations(me))[:LIST_MAX]),
                outgoing=tuple(self._store.outgoing_invitations(me)[:LIST_MAX]),
            ),
        )

    @handles(m.ListFriends)
    def _on_list_friends(
        self, connection: ChatConnection, request: m.ListFriends, now: float
    ) -> None:
        friends = self._presence(self._store.friends_of(self._me(connection)))
        self._reply(connection, m.Friends(request_id=request.request_id, friends=friends))

    @handles(m.ListOnline)
    def _on_list_online(
        self, connection: ChatConnection, request: m.ListOnline, now: float
    ) -> None:
        me = self._me(connection)
        if self._config.public_presence:
            visible = self.online_users
            # Those who block the caller look offline to them, except in a room they
            # share: there the caller reads their messages, and a member's presence
            # is what room_members shows (hiding it would tell the block).
            hidden = set(self._store.blockers_of(me))
            if hidden:
                hidden -= self._co_members(me)
                visible = [name for name in visible if name not in hidden]
        else:
            # Those who would see each other anyway: friends (presence pushes) and
            # room co-members (members lists); and the caller. One who blocks the
            # caller is no friend: they are here only as a co-member, shown as such.
            known = {me, *self._friend_set(me), *self._co_members(me)}
            visible = sorted(name for name in known if self._is_online(name))
        self._reply(
            connection,
            m.OnlineUsers(request_id=request.request_id, usernames=tuple(visible[:LIST_MAX])),
        )
