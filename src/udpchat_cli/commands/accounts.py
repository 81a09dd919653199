"""The account: ``register``, ``login``, ``logout``, ``sessions``, ``revoke``,
``passwd``, ``delete-account`` and ``whoami``."""

from __future__ import annotations

import click

from udpchat_proto import messages as m
from udpchat_proto.chat import (
    check_password,
    check_session_id,
    session_id,
    token_hash,
    valid_username,
)

from .. import output
from ..app import current_app, expect, hex_bytes, json_option, not_logged_in, read_password

__all__ = ["COMMANDS"]


@click.command()
@click.argument("user")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@json_option
def register(user: str, password_stdin: bool) -> None:
    """Create the account USER (the password is asked twice)."""
    app = current_app()
    password = read_password(password_stdin, confirm=True)
    username = valid_username(user)
    check_password(password)
    with app.connect(resume=False) as (session, _server):
        answer = session.request(lambda conn: conn.register(username, password))
        expect(answer, m.Ok)
    app.out.result(f"registered {username}", {"ok": True, "user": username})


@click.command()
@click.argument("user")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@json_option
def login(user: str, password_stdin: bool) -> None:
    """Log in as USER; the profile keeps the login session."""
    app = current_app()
    password = read_password(password_stdin, confirm=False)
    username = valid_username(user)
    check_password(password)
    with app.connect(resume=False) as (session, server):
        answer = session.request(lambda conn: conn.login(username, password))
        logged_in = expect(answer, m.LoggedIn)
        app.update(lambda profile: profile.login(logged_in.username, logged_in.token, server))
        # A login is a new device: its keys, made and saved, then uploaded.
        app.device.start(session, logged_in.username, logged_in.token)
    app.out.result(f"logged in as {logged_in.username}", {"ok": True, "user": logged_in.username})


@click.command()
@click.option(
    "--all", "everywhere", is_flag=True, help="End every login session of yours, this one too."
)
@json_option
def logout(everywhere: bool) -> None:
    """End the login session (with --all, every one of the user's).

    The session is this profile's device for end-to-end encryption: logging out
    ends the device (its keys are deleted, here and on the server), and a later
    login is a new device, which reads what is sent from then on."""
    app = current_app()
    if everywhere:
        ended = app.call(lambda conn: conn.logout_all(), m.LoggedOutAll).ended
        app.end_session()
        app.out.result(f"logged out everywhere ({ended} sessions)", {"ok": True, "ended": ended})
        return
    app.call(lambda conn: conn.logout(), m.Ok)
    app.end_session()
    app.out.result("logged out", {"ok": True})


@click.command()
@json_option
def sessions() -> None:
    """List your login sessions, newest first (the ids are for revoke)."""
    app = current_app()
    answer = app.call(lambda conn: conn.list_sessions(), m.Sessions)
    app.out.result(*output.sessions_result(answer))


@click.command()
@click.argument("session", metavar="SESSION_ID")
@json_option
def revoke(session: str) -> None:
    """End one of your login sessions (its id from 'sessions'); it is disconnected."""
    app = current_app()
    chosen = hex_bytes(session)
    check_session_id(chosen)
    app.call(lambda conn: conn.revoke_session(chosen), m.Ok)
    token = app.profile().token
    if token is not None and session_id(token_hash(token)) == chosen:
        app.end_session()  # this profile's own session
    app.out.result("session ended", {"ok": True})


@click.command()
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read two lines from stdin: the current password, then the new one.",
)
@json_option
def passwd(password_stdin: bool) -> None:
    """Change your password (asks the current one, then the new one twice); every
    other login session of yours ends."""
    app = current_app()
    if not app.profile().logged_in:
        raise not_logged_in()
    current = read_password(password_stdin, confirm=False, prompt="Current password")
    new = read_password(password_stdin, confirm=True, prompt="New password")
    if password_stdin and not new:
        raise click.UsageError(
            "--password-stdin expects two lines: the current password, then the new one"
        )
    check_password(current)
    check_password(new)
    app.call(lambda conn: conn.change_password(current, new), m.Ok)
    app.out.result("password changed; your other sessions have ended", {"ok": True})


@click.command(name="delete-account")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@json_option
def delete_account(password_stdin: bool) -> None:
    """Delete your account for good, after its password: sessions, friends,
    invitations, rooms and the messages waiting for you. What you sent stays in
    its recipients' history; your name can never be registered again."""
    app = current_app()
    profile = app.profile()
    if not profile.logged_in:
        raise not_logged_in()
    password = read_password(password_stdin, confirm=False)
    check_password(password)
    app.call(lambda conn: conn.delete_account(password), m.Ok)
    app.end_session()
    app.out.result(f"account {profile.username} deleted", {"ok": True})


@click.command()
@json_option
def whoami() -> None:
    """Show who is logged in, and where (checked with the server)."""
    app = current_app()
    with app.connect(resume=True) as (_session, server):
        user = app.profile().username
    app.out.result(f"{user} on {server}", {"user": user, "server": server})


COMMANDS: tuple[click.Command, ...] = (
    register,
    login,
    logout,
    sessions,
    revoke,
    passwd,
    delete_account,
    whoami,
)
