"""The full-screen chat's message pane (``MessagePane``) on its own, headless: when
it follows new lines and when it leaves the reader where they are. The pane scrolls
after Textual's refreshes, so the order of a follow and a key press is set here
step by step, not left to a machine's speed (the end-to-end test of the same
promise, ``tests/e2e/test_chat_tui.py``, meets it under whatever load CI has)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Static

from udpchat_cli.chat.app import MessagePane

SIZE = (80, 20)


class PaneApp(App[None]):
    def compose(self) -> ComposeResult:
        yield MessagePane()


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


async def settle(pilot: Pilot[None]) -> None:
    """Let every pending refresh and what waits after it run (a follow takes two)."""
    for _ in range(4):
        await pilot.pause()


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
