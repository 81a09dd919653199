"""``chat``: open the full-screen chat (:mod:`udpchat_cli.chat`)."""

from __future__ import annotations

import importlib.util
import socket

import click

from udpchat_proto import ErrorCode

from ..app import (
    DEFAULT_SERVER,
    EXIT_REFUSED,
    EXIT_USAGE,
    CliError,
    current_app,
    json_option,
    not_logged_in,
    refused,
)
from ..session import parse_servers

__all__ = ["COMMANDS", "TUI_INSTALL"]

TUI_INSTALL = "pip install 'udpchat-proto[tui]'"
"""What installs the chat's screen (Textual), named when it is missing."""


@click.command()
@json_option
def chat() -> None:
    """Open the full-screen chat (Ctrl+Q or /quit leaves; /help lists commands)."""
    # Textual is the ``tui`` extra: without it, one line that says how to get it
    # (looked up without importing it, which takes a good part of a second).
    if importlib.util.find_spec("textual") is None or importlib.util.find_spec("rich") is None:
        raise CliError(EXIT_REFUSED, "missing_extra", f"the chat needs Textual: {TUI_INSTALL}")
    app = current_app()
    profile = app.profile()
    if not profile.logged_in or profile.token is None or profile.username is None:
        raise not_logged_in()
    server = app.server_option or profile.server or DEFAULT_SERVER
    known = app.home.known_servers
    pinned = known.get(server)
    if pinned is None or (profile.server is not None and pinned != known.get(profile.server)):
        raise refused(
            ErrorCode.NOT_LOGGED_IN,
            f"profile {app.profile_name} is logged in on {profile.server}, not on {server}",
        )
    try:
        addresses = [
            socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4]
            for host, port in parse_servers(server)
        ]
    except (OSError, ValueError) as exc:
        raise CliError(EXIT_USAGE, "usage", f"cannot use server {server}: {exc}") from None
    # Textual takes a good part of a second to import: only this command pays it.
    from ..chat.app import ChatApp  # noqa: PLC0415

    chat_app = ChatApp.for_profile(
        app.home,
        app.profile_name,
        server,
        [(str(address[0]), int(address[1])) for address in addresses],
        pinned,
    )
    code = chat_app.run()
    if code:
        raise click.exceptions.Exit(code)


COMMANDS: tuple[click.Command, ...] = (chat,)
