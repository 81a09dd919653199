"""What a line typed in ``udpchat-cli chat`` means: text to send, or a ``/command``.

:func:`parse` turns one input line into a :class:`Command` (or a
:class:`CommandError` to show in the pane); it knows nothing of the screen or the
network, so every command is tested as plain data.
"""

from __future__ import annotations

import attrs

from udpchat_proto import ValidationError
from udpchat_proto.chat import check_history_limit, valid_room, valid_username

__all__ = ["HELP", "Command", "CommandError", "parse"]

HELP = """\
Commands:
  /msg USER [TEXT]   open the conversation with USER (and send TEXT)
  /join ROOM         join ROOM (creating it) and open it
  /leave [ROOM]      leave ROOM (default: the open room)
  /invite USER       invite USER to be friends
  /accept USER       accept USER's invitation
  /decline USER      decline USER's invitation
  /cancel USER       withdraw your invitation to USER
  /unfriend USER     stop being friends with USER
  /history [N]       load the last N messages (1-100) of the open conversation
  /help              this help
  /quit              leave the chat
Keys:
  Enter send    Ctrl+J (or Alt+Enter) new line    Ctrl+K jump to a conversation
  Alt+1..9 the Nth conversation    Ctrl+N / Ctrl+P next / previous
  Alt+A next with unread messages    PgUp / PgDn scroll    End newest
  Ctrl+Q quit"""


class CommandError(Exception):
    """A line that is not a valid command: the message says why (shown as is)."""


@attrs.frozen
class Command:
    """One parsed line.

    ``name`` is ``say`` for plain text (``text`` set), else the command's name
    without its slash; ``target`` is a user or ``#room`` where the command takes
    one, ``count`` the N of ``/history``.
    """

    name: str
    target: str | None = None
    text: str | None = None
    count: int | None = None


_USER_COMMANDS = ("invite", "accept", "decline", "cancel", "unfriend")


def _user(word: str) -> str:
    try:
        return valid_username(word)
    except ValidationError as exc:
        raise CommandError(str(exc)) from None


def _room(word: str) -> str:
    try:
        return valid_room(word if word.startswith("#") else "#" + word)
    except ValidationError as exc:
        raise CommandError(str(exc)) from None


def parse(line: str) -> Command | None:
    """The command a line stands for; None for a blank line.

    A line starting with ``//`` sends the text from its second slash (so that a
    message may start with a slash).

    Raises:
        CommandError: an unknown command, or wrong arguments.
    """
    if not line.strip():
        return None
    if not line.startswith("/") or line.startswith("//"):
        return Command("say", text=line[1:] if line.startswith("//") else line)
    head, _, rest = line[1:].partition(" ")
    name, rest = head.lower(), rest.strip()
    words = rest.split()
    if name in ("help", "quit"):
        if words:
            raise CommandError(f"usage: /{name}")
        return Command(name)
    if name == "msg":
        if not words:
            raise CommandError("usage: /msg USER [TEXT]")
        target_word, _, text = rest.partition(" ")
        target = _room(target_word) if target_word.startswith("#") else _user(target_word)
        return Command("msg", target=target, text=text.strip() or None)
    if name == "join":
        if len(words) != 1:
            raise CommandError("usage: /join ROOM")
        return Command("join", target=_room(words[0]))
    if name == "leave":
        if len(words) > 1:
            raise CommandError("usage: /leave [ROOM]")
        return Command("leave", target=_room(words[0]) if words else None)
    if name in _USER_COMMANDS:
        if len(words) != 1:
            raise CommandError(f"usage: /{name} USER")
        return Command(name, target=_user(words[0]))
    if name == "history":
        if len(words) > 1 or (words and not words[0].isdigit()):
            raise CommandError("usage: /history [N] (N from 1 to 100)")
        count = int(words[0]) if words else 50
        try:
            check_history_limit(count)
        except ValidationError as exc:
            raise CommandError(str(exc)) from None
        return Command("history", count=count)
    raise CommandError(f"unknown command /{name}: /help lists them")
