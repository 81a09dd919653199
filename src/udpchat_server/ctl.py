"""``udpchat-server ctl``: act on a running server through its control socket.

::

    udpchat-server ctl [--control PATH | --db DB] [--json] COMMAND [ARGS]

Commands: ``status``, ``users [--online]``, ``disable USER``, ``enable USER``,
``reset-password USER [--password-stdin]``, ``kick USER``, ``backup DEST``.
Exit status: 0 done, 1 refused (an unknown user ...), 3 no server on that
socket, 4 the socket is another user's (nothing sent), 2 a usage error. With
``--json`` each prints one JSON object.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final, NoReturn

import click

from udpchat_proto import ValidationError
from udpchat_proto.chat import check_password

from .control import ControlUnreachableError, ControlUntrustedError, call
from .dburl import is_postgres_url

__all__ = ["EXIT_UNREACHABLE", "EXIT_UNTRUSTED", "ctl", "default_control_path"]

EXIT_REFUSED: Final = 1
EXIT_UNREACHABLE: Final = 3
EXIT_UNTRUSTED: Final = 4
"""The socket or the process on it is another user's (as the CLI's 4: not the
server it should be)."""
DEFAULT_DB: Final = "udpchat.sqlite3"


def default_control_path(db: str) -> Path | None:
    """The database path plus ``.ctl``; None for a PostgreSQL database (give
    ``--control``: nodes of a cluster each have their own)."""
    return None if is_postgres_url(db) else Path(f"{db}.ctl")


class _Ctl:
    def __init__(self, control: Path, as_json: bool) -> None:
        self.control = control
        self.as_json = as_json

    def ask(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = call(self.control, command, args)
        except ControlUnreachableError as exc:
            self.fail(EXIT_UNREACHABLE, "unreachable", str(exc))
        except ControlUntrustedError as exc:
            self.fail(EXIT_UNTRUSTED, "untrusted", str(exc))
        if not answer.get("ok"):
            self.fail(EXIT_REFUSED, str(answer.get("error")), str(answer.get("message")))
        return answer

    def fail(self, code: int, error: str, message: str) -> NoReturn:
        if self.as_json:
            click.echo(json.dumps({"ok": False, "error": error, "message": message}))
        click.echo(f"error: {message}", err=True)
        sys.exit(code)

    def show(self, text: str, answer: dict[str, Any]) -> None:
        click.echo(json.dumps(answer) if self.as_json else text)


def _json_option(function: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(function)


def _ctl(as_json: bool) -> _Ctl:
    ctx = click.get_current_context()
    parent: _Ctl = ctx.obj
    return _Ctl(parent.control, parent.as_json or as_json)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--control",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The server's control socket [default: the database path plus '.ctl'].",
)
@click.option(
    "--db",
    default=DEFAULT_DB,
    show_default=True,
    help="The server's database (to find its control socket).",
)
@_json_option
@click.pass_context
def ctl(ctx: click.Context, control: Path | None, db: str, as_json: bool) -> None:
    """Act on the running server through its control socket."""
    if control is None:
        control = default_control_path(db)
        if control is None:
            raise click.UsageError("with a PostgreSQL database, name the socket: --control PATH")
    ctx.obj = _Ctl(control, as_json)


@ctl.command()
@_json_option
def status(as_json: bool) -> None:
    """Uptime, version, connections, online users and the counters."""
    app = _ctl(as_json)
    answer = app.ask("status", {})
    counters = " ".join(
        f"{k}={v}" for k, v in answer["counters"].items() if not isinstance(v, dict)
    )
    app.show(
        f"udpchat-server {answer['version']}, up {answer['uptime']:.0f} s: "
        f"{answer['connections']} connections, {answer['online_users']} online\n{counters}",
        answer,
    )


@ctl.command()
@click.option("--online", is_flag=True, help="Only the users online now.")
@_json_option
def users(online: bool, as_json: bool) -> None:
    """The accounts, with whether each is online and disabled."""
    app = _ctl(as_json)
    answer = app.ask("users", {"online": online})
    lines = [
        f"{u['user']}{' online' if u['online'] else ''}{' disabled' if u['disabled'] else ''}"
        for u in answer["users"]
    ]
    app.show("\n".join(lines) or "no users", answer)


@ctl.command()
@click.argument("user")
@_json_option
def disable(user: str, as_json: bool) -> None:
    """End USER's sessions and refuse their logins (account_disabled)."""
    app = _ctl(as_json)
    app.show(f"{user} disabled", app.ask("disable", {"user": user}))


@ctl.command()
@click.argument("user")
@_json_option
def enable(user: str, as_json: bool) -> None:
    """Let USER log in again."""
    app = _ctl(as_json)
    app.show(f"{user} enabled", app.ask("enable", {"user": user}))


@ctl.command(name="reset-password")
@click.argument("user")
@click.option(
    "--password-stdin", is_flag=True, help="Read the new password from stdin's first line."
)
@_json_option
def reset_password(user: str, password_stdin: bool, as_json: bool) -> None:
    """Give USER a new password and end their sessions."""
    app = _ctl(as_json)
    if password_stdin:
        line = sys.stdin.readline()
        if not line:
            app.fail(EXIT_REFUSED, "invalid_password", "no new password on stdin")
        password = line.rstrip("\r\n")
    else:
        try:
            password = click.prompt("new password", hide_input=True, confirmation_prompt=True)
        except click.Abort:
            app.fail(EXIT_REFUSED, "aborted", "no new password given: nothing changed")
    try:
        check_password(password)
    except ValidationError as exc:
        app.fail(EXIT_REFUSED, "invalid_password", str(exc))
    app.show(
        f"password of {user} reset; their sessions ended",
        app.ask("reset-password", {"user": user, "password": password}),
    )


@ctl.command()
@click.argument("user")
@_json_option
def kick(user: str, as_json: bool) -> None:
    """Close USER's connections (their sessions stay)."""
    app = _ctl(as_json)
    answer = app.ask("kick", {"user": user})
    app.show(f"{user}: {answer['closed']} connections closed", answer)


@ctl.command()
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@_json_option
def backup(dest: Path, as_json: bool) -> None:
    """A consistent copy of the database at DEST (and the key at DEST.key), taken
    while the server runs. (PostgreSQL: use pg_dump.)"""
    app = _ctl(as_json)
    # Absolute, but never resolved: the server refuses a link at DEST rather than
    # write (with its own rights) wherever the link points.
    answer = app.ask("backup", {"dest": str(dest.absolute())})
    app.show(f"backed up to {answer['dest']} ({answer['size']} bytes)", answer)
