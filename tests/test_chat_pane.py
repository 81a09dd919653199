"""The full-screen chat's message pane (``MessagePane``) on its own, headless: when
it follows new lines and when it leaves the reader where they are, and where a
redraw puts them (the line they read, the "new messages" marker) whatever they
scroll meanwhile. The pane scrolls after Textual's refreshes, so the order of a
follow or a redraw's placement and a key press is set here step by step, not left
to a machine's speed (the end-to-end test of the same promise,
``tests/e2e/test_chat_tui.py``, meets it under whatever load CI has)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from textual import events
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Static

from tests.chat_tui_helpers import settle, top
from udpchat_cli.chat.app import MessagePane
from udpchat_cli.chat.model import Conversation
from udpchat_proto import messages as m

SIZE = (80, 20)


class PaneApp(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.moved: list[MessagePane.Moved] = []
        """What the pane said of its moves (the chat counts lines read by them)."""

    def compose(self) -> ComposeResult:
        yield MessagePane()

    def on_message_pane_moved(self, event: MessagePane.Moved) -> None:
        self.moved.append(event)


def run(scenario: Callable[[Pilot[None], MessagePane], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        app = PaneApp()
        async with app.run_test(size=SIZE) as pilot:
            pane = app.query_one(MessagePane)
            for n in range(60):
                pane.add(Static(f"line {n}"))
            await settle(pilot)
            assert pane.at_bottom and pane.max_scroll_y > 0
            await scenario(pilot, pane)

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def test_a_page_up_before_a_pending_follow_keeps_the_readers_place() -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        bottom = pane.scroll_y
        pane.add(Static("new"))  # at the bottom: its follow waits for refreshes
        pane.scroll_page_up(animate=False)  # the reader pages up before it runs
        await settle(pilot)
        assert not pane.following
        held = pane.scroll_y
        assert held < bottom
        pane.add(Static("newer"))
        await settle(pilot)
        assert pane.scroll_y == held

    run(scenario)


def test_a_page_up_between_a_follows_two_steps_keeps_the_readers_place() -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        bottom = pane.scroll_y
        pane.add(Static("new"))
        await pilot.pause()  # one refresh: the follow's first step has run
        pane.scroll_page_up(animate=False)
        await settle(pilot)
        assert not pane.following
        assert pane.scroll_y < bottom

    run(scenario)


def test_at_the_bottom_new_lines_are_followed() -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        pane.scroll_page_up(animate=False)
        await settle(pilot)
        pane.scroll_end(animate=False)  # back at the newest
        await settle(pilot)
        for n in range(3):
            pane.add(Static(f"more {n}"))
        await settle(pilot)
        assert pane.following
        assert pane.at_bottom
        assert pane.scroll_y == pane.max_scroll_y

    run(scenario)


# --- a redraw's late placement: the restored place, the jump to "new messages" -------
#
# A redraw (``show``) decides where the reader goes at once and scrolls there after a
# refresh (the new lines' heights are known only then). A scroll of the reader's in
# between is not undone: it moves them from where the placement puts them.

T0 = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)


def chat(first: int, last: int, *, marker: int | None = None) -> Conversation:
    """bob's conversation, messages ``line FIRST`` to ``line LAST - 1`` (a line each)."""
    conversation = Conversation("bob")
    for n in range(first, last):
        conversation.add(
            m.ChatMessage(
                id=n.to_bytes(16, "big"),
                sender="bob",
                to="alice",
                text=f"line {n}",
                sent_at=T0 + datetime.timedelta(seconds=n),
            )
        )
    if marker is not None:
        conversation.marker = marker.to_bytes(16, "big")
    return conversation


def run_shown(scenario: Callable[[Pilot[None], MessagePane], Coroutine[Any, Any, None]]) -> None:
    """The pane showing lines 40 to 99 of bob's conversation, at its bottom."""

    async def main() -> None:
        app = PaneApp()
        async with app.run_test(size=SIZE) as pilot:
            pane = app.query_one(MessagePane)
            pane.show(chat(40, 100), [])
            await settle(pilot)
            assert pane.at_bottom and pane.max_scroll_y > 0
            assert top(pane) == f"line {100 - pane.scrollable_content_region.height}"
            await scenario(pilot, pane)

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def wheel(pane: MessagePane, event: type[events.MouseScrollUp | events.MouseScrollDown]) -> None:
    """A turn of the mouse wheel over the pane (as the driver sends it)."""
    pane.post_message(event(pane, 1, 1, 0, 0, 0, False, False, False))


MOVES: dict[str, Callable[[MessagePane], None]] = {
    "page up": lambda pane: pane.scroll_page_up(animate=False),
    "page down": lambda pane: pane.scroll_page_down(animate=False),
    "wheel up": lambda pane: wheel(pane, events.MouseScrollUp),
    "wheel down": lambda pane: wheel(pane, events.MouseScrollDown),
    "end": lambda pane: pane.scroll_end(animate=False),
}


def lines_moved(pane: MessagePane, move: str) -> int:
    """How far ``move`` takes the reader (a line a message here)."""
    page = pane.scrollable_content_region.height
    wheel = round(pane.app.scroll_sensitivity_y)
    return {"page up": -page, "page down": page, "wheel up": -wheel, "wheel down": wheel}[move]


def assert_landed(pane: MessagePane, move: str, *, up_from: int, down_from: int) -> None:
    """Where ``move`` left the reader: End at the newest line, following; any other
    move its lines away from ``line UP_FROM`` (going up) or ``line DOWN_FROM``
    (going down), at the top of the view, not following."""
    if move == "end":
        assert pane.at_bottom and pane.following
        assert pane.scroll_y == pane.max_scroll_y
        return
    moved = lines_moved(pane, move)
    assert top(pane) == f"line {(up_from if moved < 0 else down_from) + moved}"
    assert not pane.following


def test_older_lines_loaded_above_leave_the_reader_on_their_line() -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        pane.scroll_page_up(animate=False)
        await settle(pilot)
        read = top(pane)
        pane.show(chat(0, 100), [], stay=True)  # 40 older lines above
        await settle(pilot)
        assert top(pane) == read
        assert not pane.following

    run_shown(scenario)


@pytest.mark.parametrize("move", list(MOVES))
def test_a_scroll_before_a_pending_restore_moves_from_the_readers_line(move: str) -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        for _ in range(2):  # (a page down then stays above the bottom)
            pane.scroll_page_up(animate=False)
            await settle(pilot)
        read = int(top(pane).removeprefix("line "))
        pane.show(chat(0, 100), [], stay=True)  # its restore waits for a refresh
        MOVES[move](pane)  # the reader scrolls before it runs
        await settle(pilot)
        assert_landed(pane, move, up_from=read, down_from=read)

    run_shown(scenario)


def test_an_opened_conversation_shows_its_new_messages_marker_at_the_top() -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        pane.show(chat(0, 100, marker=50), [])
        await settle(pilot)
        assert top(pane) == "── new messages ──"

    run_shown(scenario)


@pytest.mark.parametrize("jumped", [True, False], ids=["after-the-jump", "before-the-jump"])
def test_a_history_redraw_of_a_conversation_opened_at_its_marker_stays_there(
    jumped: bool,
) -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        pane.show(chat(40, 100, marker=70), [])  # opened at "new messages"
        if jumped:
            await settle(pilot)
            assert top(pane) == "── new messages ──"
        pane.show(chat(0, 100, marker=70), [], stay=True)  # older lines came above
        await settle(pilot)
        assert top(pane) == "── new messages ──"
        assert not pane.following

    run_shown(scenario)


@pytest.mark.parametrize("move", list(MOVES))
def test_a_scroll_before_a_pending_jump_to_the_marker_moves_from_it(move: str) -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        pane.show(chat(0, 100, marker=50), [])  # its jump waits for a refresh
        MOVES[move](pane)  # the reader scrolls before it runs
        await settle(pilot)
        # ... line 49, the marker's row, line 50 ...
        assert_landed(pane, move, up_from=50, down_from=49)

    run_shown(scenario)


def test_a_shorter_conversation_clamping_the_pane_is_not_taken_for_a_scroll() -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        app = pane.app
        assert isinstance(app, PaneApp)
        app.moved.clear()
        # Its lines end above where the pane is: laid out, they pull it up to their
        # bottom (Textual clamps scroll_y), on the way to the marker.
        pane.show(chat(0, 45, marker=10), [])
        await settle(pilot)
        assert top(pane) == "── new messages ──"
        assert not pane.following
        # Only the jump was said: that pull was not (the chat would have counted it
        # as the reader reaching the newest line).
        assert [(event.at_bottom, event.at_top) for event in app.moved] == [(False, False)]

    run_shown(scenario)


@pytest.mark.parametrize("move", ["page down", "end"])
def test_a_scroll_just_before_a_redraw_is_not_lost(move: str) -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        for _ in range(2):
            pane.scroll_page_up(animate=False)
            await settle(pilot)
        read = int(top(pane).removeprefix("line "))
        # Textual makes a scroll a refresh after it is asked for: this one is asked
        # for before the redraw decides where the reader is.
        MOVES[move](pane)
        pane.show(chat(0, 100), [], stay=True)
        await settle(pilot)
        assert_landed(pane, move, up_from=read, down_from=read)

    run_shown(scenario)


# --- a scroll of the reader's is made a refresh later, as Textual makes it -----------
#
# Its target is reckoned then: from lines added meanwhile, from where an End asked
# just before it has put the reader, from where a redraw's placement has put them.


def test_a_page_down_as_lines_arrive_below_reaches_them() -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        app = pane.app
        assert isinstance(app, PaneApp)
        pane.scroll_to(y=pane.max_scroll_y - 3, animate=False)  # a few rows up
        await settle(pilot)
        assert not pane.following
        old_bottom, read = pane.max_scroll_y, pane.scroll_y
        app.moved.clear()
        for n in range(30):
            pane.add(Static(f"new {n}"))
        pane.scroll_page_down(animate=False)  # at once: the new lines not laid out yet
        await settle(pilot)
        # A page down, past where the bottom was ...
        assert pane.scroll_y == read + pane.scrollable_content_region.height > old_bottom
        # ... and not at the bottom, new lines unseen below: the chat must not count
        # them read (before, the page stopped at the old bottom and said so).
        assert pane.scroll_y < pane.max_scroll_y
        assert not pane.following
        assert not any(event.at_bottom for event in app.moved)

    run(scenario)


def test_end_then_page_up_at_once_ends_a_page_above_the_newest() -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        for _ in range(2):
            pane.scroll_page_up(animate=False)
            await settle(pilot)
        assert not pane.at_bottom
        pane.scroll_end(animate=False)
        pane.scroll_page_up(animate=False)  # no refresh between the two
        await settle(pilot)
        page = pane.scrollable_content_region.height
        assert pane.scroll_y == pane.max_scroll_y - page
        assert not pane.following

    run(scenario)


@pytest.mark.parametrize("move", ["page up", "wheel up"])
@pytest.mark.parametrize("start", ["following", "at the top"])
def test_a_scroll_before_a_pending_follow_placement_moves_from_the_bottom(
    move: str, start: str
) -> None:
    async def scenario(pilot: Pilot[None], pane: MessagePane) -> None:
        if start == "at the top":
            pane.scroll_home(animate=False)
            await settle(pilot)
            assert pane.scroll_y == 0 and not pane.following
        # Following: redrawn where the reader was, at the newest line. At the top:
        # another conversation opened (no marker), at its newest line too.
        pane.show(chat(0, 200), [], stay=start == "following")  # placed a refresh later
        MOVES[move](pane)  # the reader scrolls before it runs
        await settle(pilot)
        await settle(pilot)  # (the follow's own steps, had it not been stopped)
        # From the bottom (line 200 - page at the top), not from where the redraw
        # had left the pane (near its top) nor lost, and not undone by the follow.
        page = pane.scrollable_content_region.height
        assert_landed(pane, move, up_from=200 - page, down_from=200 - page)

    run_shown(scenario)
