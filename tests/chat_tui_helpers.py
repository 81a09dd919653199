"""The full-screen chat's message pane read as the terminal draws it, for the tests
that drive it headless: ``tests/test_chat_pane.py`` (the pane alone),
``tests/test_chat_screen.py`` (the chat with a stand-in link) and
``tests/e2e/test_chat_tui.py`` (the chat on a real server).

(``tests/chat_helpers.py`` is the protocol's simulated network, not the screen's.)
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Static

from udpchat_cli.chat.app import MessagePane


def pane_of(where: MessagePane | App[Any]) -> MessagePane:
    """The pane itself, or the one an app shows."""
    return where if isinstance(where, MessagePane) else where.query_one(MessagePane)


def drawn(line: Static) -> list[str]:
    """One of the pane's lines as a terminal of the app's width draws it (a message
    is a grid: header, then its text, wrapped)."""
    console = Console(width=line.app.size.width, file=io.StringIO(), color_system=None)
    console.print(line.content)
    file = console.file
    assert isinstance(file, io.StringIO)
    return [row.rstrip() for row in file.getvalue().splitlines()]


def shown(where: MessagePane | App[Any]) -> list[str]:
    """The pane's rows as the terminal draws them. A redraw's old lines stay in the
    DOM until Textual has removed them, hidden (``display`` false, never drawn):
    read in between, they would count twice what the screen shows once."""
    return [row for line in pane_of(where).query(Static) if line.display for row in drawn(line)]


def top(where: MessagePane | App[Any]) -> str:
    """The first line the reader sees: a message's text (after its sender), or the
    "new messages" marker."""
    pane = pane_of(where)
    for line in pane.query(Static):
        region = line.virtual_region
        if line.display and region.y <= pane.scroll_y < region.bottom:
            return "\n".join(drawn(line)).strip().split(": ", 1)[-1]
    raise AssertionError(f"nothing at {pane.scroll_y}")


async def settle(pilot: Pilot[Any]) -> None:
    """Let every pending refresh and what waits after it run (the pane's follow
    takes two; a redraw's placement one, and the scrolls it held run in it)."""
    for _ in range(4):
        await pilot.pause()
