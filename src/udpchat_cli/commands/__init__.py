"""The commands of ``udpchat-cli``, by concern.

==============  ===================================================================
``accounts``    register, login, logout, sessions, revoke, passwd, delete-account,
                whoami
``friends``     invite, accept, decline, cancel, unfriend, block, unblock, blocked,
                invitations, friends, online
``messages``    send, status, inbox, listen, history
``rooms``       join, leave, rooms, members
``devices``     devices, verify (end-to-end encryption's identities)
``chat``        chat (the full-screen chat, :mod:`udpchat_cli.chat`)
==============  ===================================================================

Each is a plain ``click.Command`` that takes the running :class:`~udpchat_cli.app.App`
from its context; :mod:`udpchat_cli.cli` adds them to the group. A command checks
what it is given with the core's rules (``valid_username``, ``check_text``,
``check_message_id`` ...) before any I/O: a ``ValidationError`` is refused exactly as
the server would refuse the request (its code, exit status 1).
"""

from __future__ import annotations

import click

from . import accounts, chat, devices, friends, messages, rooms

__all__ = ["COMMANDS"]

COMMANDS: tuple[click.Command, ...] = (
    *accounts.COMMANDS,
    *friends.COMMANDS,
    *messages.COMMANDS,
    *rooms.COMMANDS,
    *devices.COMMANDS,
    *chat.COMMANDS,
)
"""Every command (``udpchat-cli --help`` lists them by name)."""
