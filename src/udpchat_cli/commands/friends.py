"""Friends and the people around: ``invite``, ``accept``, ``decline``, ``cancel``,
``unfriend``, ``block``, ``unblock``, ``blocked``, ``invitations``, ``friends`` and
``online``."""

from __future__ import annotations

from collections.abc import Callable

import click

from udpchat_proto import ClientConnection
from udpchat_proto import messages as m
from udpchat_proto.chat import valid_username

from .. import output
from ..app import current_app, json_option

__all__ = ["COMMANDS"]


def _user_command(
    name: str,
    issue: Callable[[ClientConnection, str], int],
    done: str,
    help_text: str,
) -> click.Command:
    """A command that names one USER and is answered ``ok``."""

    @click.command(name=name, help=help_text)
    @click.argument("user")
    @json_option
    def command(user: str) -> None:
        app = current_app()
        username = valid_username(user)
        app.call(lambda conn: issue(conn, username), m.Ok)
        app.out.result(done.format(user=username), {"ok": True, "user": username})

    return command


invite = _user_command(
    "invite",
    lambda conn, user: conn.invite(user),
    "invited {user}",
    "Invite USER to be friends.",
)
accept = _user_command(
    "accept",
    lambda conn, user: conn.accept_invitation(user),
    "you and {user} are now friends",
    "Accept USER's invitation.",
)
decline = _user_command(
    "decline",
    lambda conn, user: conn.decline_invitation(user),
    "declined {user}'s invitation",
    "Decline USER's invitation.",
)
cancel = _user_command(
    "cancel",
    lambda conn, user: conn.cancel_invitation(user),
    "cancelled the invitation to {user}",
    "Withdraw your invitation to USER.",
)
unfriend = _user_command(
    "unfriend",
    lambda conn, user: conn.unfriend(user),
    "you and {user} are no longer friends",
    "Stop being friends with USER.",
)
block = _user_command(
    "block",
    lambda conn, user: conn.block(user),
    "you block {user}",
    "Block USER: no friendship, no invitations, no messages; you look offline to them.",
)
unblock = _user_command(
    "unblock",
    lambda conn, user: conn.unblock(user),
    "you no longer block {user}",
    "Stop blocking USER.",
)


@click.command()
@json_option
def blocked() -> None:
    """List the users you block."""
    app = current_app()
    answer = app.call(lambda conn: conn.list_blocked(), m.Blocked)
    names = list(answer.usernames)
    app.out.result("\n".join(names) or "nobody blocked", {"blocked": names})


@click.command()
@json_option
def invitations() -> None:
    """List the invitations you received and sent."""
    app = current_app()
    answer = app.call(lambda conn: conn.list_invitations(), m.Invitations)
    app.out.result(*output.invitations_result(answer))


@click.command()
@json_option
def friends() -> None:
    """List your friends and whether they are online."""
    app = current_app()
    answer = app.call(lambda conn: conn.list_friends(), m.Friends)
    app.out.result(*output.friends_result(answer))


@click.command()
@json_option
def online() -> None:
    """List the users connected now."""
    app = current_app()
    answer = app.call(lambda conn: conn.list_online(), m.OnlineUsers)
    app.out.result(*output.online_result(answer))


COMMANDS: tuple[click.Command, ...] = (
    invite,
    accept,
    decline,
    cancel,
    unfriend,
    block,
    unblock,
    blocked,
    invitations,
    friends,
    online,
)
