"""``udpchat-cli chat`` driven headless by Textual's Pilot against the real server,
with the other people on the scripted CLI. Every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.pilot import Pilot
from textual.widgets import Static

from tests.chat_tui_helpers import shown
from udpchat_cli.chat.app import ChatApp, Composer, MessagePane
from udpchat_cli.chat.link import LinkState
from udpchat_cli.device import DeviceKeeper
from udpchat_cli.profiles import Home
from udpchat_cli.session import Session, parse_servers
from udpchat_proto import messages as m

from .conftest import ServerProcess, User, befriend

pytestmark = pytest.mark.e2e

MakeUser = Callable[..., User]
SIZE = (120, 40)


def chat_for(user: User) -> ChatApp:
    home = Home(user.home)
    server = user.server.address
    key = home.known_servers.get(server)
    assert key is not None
    return ChatApp.for_profile(home, "default", server, parse_servers(server), key)


async def until(
    pilot: Pilot[Any], done: Callable[[], bool], what: str, limit: float = 15.0
) -> None:
    end = time.monotonic() + limit
    while not done():
        if time.monotonic() > end:
            app = pilot.app
            assert isinstance(app, ChatApp)
            raise AssertionError(
                f"timed out waiting for {what}; the pane:\n{pane_text(app)}\n"
                f"the sidebar:\n{sidebar(app)}"
            )
        await pilot.pause(0.05)


async def cli(user: User, *args: str) -> Any:
    """A CLI command of another person, off the loop (the chat keeps running)."""
    return await asyncio.to_thread(user.ok, *args)


def unshown(user: User) -> list[str]:
    return [message.text for message in Home(user.home).load("default").unshown]


def pane_text(app: ChatApp) -> str:
    """The pane's rows as the terminal draws them, a string (what is waited for)."""
    return "\n".join(shown(app))


def sidebar(app: ChatApp) -> str:
    return str(app.query_one("#conversations", Static).render())


async def type_line(pilot: Pilot[Any], text: str) -> None:
    composer = pilot.app.query_one(Composer)
    composer.insert(text)
    await pilot.press("enter")


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, timeout=120))


@pytest.mark.slow(seconds=17)
def test_two_people_find_each_other_and_talk(make_user: MakeUser, server: ServerProcess) -> None:
    alice, bob, carol, dave = (make_user(name) for name in ("alice", "bob", "carol", "dave"))
    befriend(bob, alice)
    bob.ok("send", "alice", "hello alice")
    bob.ok("send", "alice", "\x1b[31mRED\x07 [N] and [b]bold[/b]")
    bob.ok("send", "alice", "ok\n00:00 mallory: fake \u202eevil\u2028")

    async def scenario() -> None:
        app = chat_for(alice)
        bells = 0

        def bell() -> None:
            nonlocal bells
            bells += 1

        app.bell = bell  # type: ignore[method-assign]
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.link_state is LinkState.CONNECTED, "connected")
            await until(pilot, lambda: "bob" in sidebar(app), "bob in the sidebar")
            await until(pilot, lambda: "hello alice" in pane_text(app), "bob's message")
            assert "connected to" in str(app.query_one("#status", Static).render())
            # Shown as typed: no markup, no control character reaches the terminal.
            assert "\\x1b[31mRED\\x07 [N] and [b]bold[/b]" in pane_text(app)
            assert "\x1b" not in pane_text(app)
            # A line of a text cannot pass for another sender's: it is marked.
            await until(pilot, lambda: "mallory" in pane_text(app), "the forged line")
            lines = [line for line in pane_text(app).split("\n") if "mallory" in line]
            assert len(lines) == 1, pane_text(app)
            (forged,) = lines
            assert forged.lstrip() == "| 00:00 mallory: fake \\u202eevil\\u2028"
            assert forged.startswith(" ")
            # Typing and Enter sends to the open conversation.
            await type_line(pilot, "hi bob")
            await until(pilot, lambda: "alice: hi bob" in pane_text(app), "her own line")
            inbox = await cli(bob, "inbox")
            assert [x["text"] for x in inbox["messages"]] == ["hi bob"]
            # A room: /join opens it; bob writes there while alice reads bob.
            await type_line(pilot, "/join general")
            await until(pilot, lambda: app.model.current == "#general", "the room open")
            await cli(bob, "join", "general")
            await pilot.press("alt+1")  # bob (friends first)
            await until(pilot, lambda: app.model.current == "bob", "bob open")
            await cli(bob, "send", "#general", "room news")
            await until(pilot, lambda: "general (1)" in sidebar(app), "an unread count")
            assert bells >= 1
            # Saved in the profile before it was acknowledged, not shown yet: a
            # chat killed now would lose nothing (inbox would show it).
            assert "room news" in unshown(alice)
            # Alt+A jumps to it; the count goes, the marker shows where news starts.
            await pilot.press("alt+a")
            await until(pilot, lambda: app.model.current == "#general", "the unread room")
            assert "general (1)" not in sidebar(app)
            assert "new messages" in pane_text(app) and "room news" in pane_text(app)
            assert "room news" not in unshown(alice)
            # Ctrl+N / Ctrl+P move through the list; Ctrl+K jumps by name.
            await pilot.press("ctrl+p")
            await until(pilot, lambda: app.model.current == "bob", "previous")
            await pilot.press("ctrl+n")
            await until(pilot, lambda: app.model.current == "#general", "next")
            await pilot.press("ctrl+k")
            await pilot.press("b", "o", "enter")
            await until(pilot, lambda: app.model.current == "bob", "jumped to bob")
            # Invitations: carol's appears at once; /accept makes a friend.
            await cli(carol, "invite", "alice")
            await until(pilot, lambda: "carol" in app.model.incoming, "carol's invitation")
            await type_line(pilot, "/accept carol")
            await until(pilot, lambda: "carol" in sidebar(app), "carol a friend")
            # Refusals show the server's message, never a traceback.
            await type_line(pilot, "/invite alice")
            await until(pilot, lambda: "cannot invite yourself" in pane_text(app), "a refusal")
            await type_line(pilot, "/frobnicate")
            await until(pilot, lambda: "unknown command" in pane_text(app), "a bad command")
            await type_line(pilot, "x" * 5000)
            await until(pilot, lambda: "not sent" in pane_text(app), "too long refused")
            assert app.query_one(Composer).text == "x" * 5000  # kept for editing
            app.query_one(Composer).clear()
            await type_line(pilot, "/help")
            await until(pilot, lambda: "/msg USER" in pane_text(app), "the help")
            await type_line(pilot, "/history 5")
            # /msg opens (and sends); /leave leaves the room.
            await type_line(pilot, "/msg carol welcome")
            await until(pilot, lambda: "alice: welcome" in pane_text(app), "sent to carol")
            await type_line(pilot, "/leave general")
            await until(pilot, lambda: "#general" not in app.model.conversations, "left")
            # /invite and /cancel; /decline; /unfriend.
            await type_line(pilot, "/invite dave")
            await until(pilot, lambda: "dave" in app.model.outgoing, "dave invited")
            assert (await cli(dave, "invitations"))["incoming"] == ["alice"]
            await type_line(pilot, "/cancel dave")
            await until(pilot, lambda: "dave" not in app.model.outgoing, "cancelled")
            await cli(dave, "invite", "alice")
            await until(pilot, lambda: "dave" in app.model.incoming, "dave's invitation")
            await type_line(pilot, "/decline dave")
            await until(pilot, lambda: "dave" not in app.model.incoming, "declined")
            assert (await cli(dave, "invitations"))["outgoing"] == []
            await type_line(pilot, "/unfriend carol")
            # (Her conversation stays while it has messages; she is no friend.)
            await until(
                pilot, lambda: not app.model.conversations["carol"].friend, "carol unfriended"
            )
            assert (await cli(carol, "friends"))["friends"] == []
            await type_line(pilot, "/quit")
        assert app.return_code == 0

    run(scenario())
    # Shown in the chat: a later inbox does not show them again.
    assert alice.ok("inbox") == {"messages": []}
    # What carol got.
    assert [x["text"] for x in carol.ok("inbox")["messages"]] == ["welcome"]


def test_the_pane_follows_new_messages_only_at_its_bottom(
    fast_server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = (User(name, tmp_path / f"home-{name}", fast_server) for name in ("alice", "bob"))
    alice.signup()
    bob.signup()
    befriend(bob, alice)
    send_many(bob, "alice", [f"line {n}" for n in range(60)])

    async def scenario() -> None:
        app = chat_for(alice)
        async with app.run_test(size=SIZE) as pilot:
            pane = app.query_one(MessagePane)
            await until(pilot, lambda: "line 59" in pane_text(app), "the backlog")
            # Where the pane starts depends on when the backlog came: opened with it
            # unread, at "new messages" (and a history answer after does not move
            # it); opened first, following it to its end. A press made while lines
            # settle is tests/test_chat_pane.py's and test_chat_screen.py's.
            await pilot.press("end")
            await until(pilot, lambda: pane.at_bottom and pane.max_scroll_y > 0, "at the bottom")
            await pilot.press("pageup")
            await until(pilot, lambda: not pane.at_bottom, "scrolled up")
            held = pane.scroll_y
            await cli(bob, "send", "alice", "while you scroll")
            await until(pilot, lambda: "while you scroll" in pane_text(app), "the new line")
            await pilot.pause(0.3)
            assert pane.scroll_y == held  # not dragged down
            assert app.model.conversations["bob"].unread == 1
            await pilot.press("end")
            await until(pilot, lambda: pane.at_bottom, "back at the newest")
            assert app.model.conversations["bob"].unread == 0
            await cli(bob, "send", "alice", "followed")
            await until(pilot, lambda: "followed" in pane_text(app), "the next line")
            await until(pilot, lambda: pane.at_bottom, "followed to the bottom")
            await pilot.press("pageup", "pagedown")
            await pilot.press("ctrl+q")
        assert app.return_code == 0

    run(scenario())


def test_a_long_paste_asks_first_and_alt_enter_makes_a_new_line(
    make_user: MakeUser, server: ServerProcess
) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    befriend(bob, alice)

    async def scenario() -> None:
        app = chat_for(alice)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.model.current == "bob", "bob open")
            composer = app.query_one(Composer)
            composer.focus()
            await pilot.press("a", "alt+enter", "b")
            assert composer.text == "a\nb"
            await pilot.press("enter")
            await until(pilot, lambda: "alice: a" in pane_text(app), "two lines sent")
            # A one-line paste goes in once; one of several lines (terminals send
            # their breaks as carriage returns) asks first.
            app.post_message(events.Paste("single"))
            await until(pilot, lambda: composer.text == "single", "the paste, once")
            composer.clear()
            app.post_message(events.Paste("one\rtwo\rthree"))
            await until(pilot, lambda: len(app.screen_stack) > 1, "the question")
            await pilot.press("n")
            await until(pilot, lambda: composer.text == "one\ntwo\nthree", "kept for editing")
            composer.clear()
            app.post_message(events.Paste("four\r\nfive"))
            await until(pilot, lambda: len(app.screen_stack) > 1, "asked again")
            await pilot.press("y")
            await until(pilot, lambda: "alice: four" in pane_text(app), "sent after yes")
            await pilot.press("ctrl+q")

    run(scenario())
    texts = [x["text"] for x in bob.ok("inbox")["messages"]]
    assert texts == ["a\nb", "four\nfive"]


def test_chat_refuses_before_drawing_anything_when_not_logged_in(
    make_user: MakeUser,
) -> None:
    nobody = make_user("nobody", signup=False)
    result = nobody.run("chat")
    assert result.code == 1 and result.json["error"] == "not_logged_in", result
    assert "\x1b[" not in result.out + result.err  # no screen was drawn


def test_it_fits_an_80x24_terminal(make_user: MakeUser, server: ServerProcess) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    befriend(bob, alice)

    async def scenario() -> None:
        app = chat_for(alice)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.model.current == "bob", "bob open")
            assert "○ bob" in sidebar(app)
            # bob comes online (his listen): the mark changes.
            listener = bob.listen("--for", "5")
            try:
                await until(pilot, lambda: "● bob" in sidebar(app), "bob online")
            finally:
                listener.kill()
                listener.communicate(timeout=10)
            status = app.query_one("#status", Static)
            composer = app.query_one(Composer)
            assert status.region.bottom <= 24 and status.region.width > 0
            assert composer.region.height >= 2 and composer.region.bottom <= status.region.y
            assert "bob" in sidebar(app)
            await pilot.press("ctrl+q")
        assert app.return_code == 0

    run(scenario())


def send_many(user: User, to: str, texts: list[str]) -> None:
    """Send many messages on one connection (a CLI process each would be slow)."""
    home = Home(user.home)
    profile = home.load("default")
    assert profile.token is not None
    server = user.server.address
    with Session(server=server, pinned=home.known_servers.get(server), timeout=10) as session:
        session.open()
        token = profile.token
        assert isinstance(session.request(lambda conn: conn.resume(token)), m.LoggedIn)
        device = DeviceKeeper(home, "default")  # (encrypted, as the CLI sends)
        for text in texts:
            answer = device.send(session, to, text, os.urandom(16))
            assert isinstance(answer, m.MessageAccepted), answer


@pytest.fixture
def fast_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose message and request rates let a test fill a conversation at
    once (130 encrypted sends are about 250 requests on one connection: past the
    default burst of 200, a fast machine outruns its refill of 100 a second)."""
    (tmp_path / "fast").mkdir()
    options = ("--message-rate", "500/0.01", "--request-rate", "1000/0.001")
    process = ServerProcess(tmp_path / "fast", options=options).start()
    try:
        yield process
    finally:
        process.stop()
        process.kill()


def test_scrolling_to_the_top_loads_older_history(
    fast_server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = (User(name, tmp_path / f"home-{name}", fast_server) for name in ("alice", "bob"))
    alice.signup()
    bob.signup()
    befriend(bob, alice)
    send_many(bob, "alice", [f"old {n}" for n in range(130)])
    alice.ok("inbox")  # read elsewhere: only history brings them back

    async def scenario() -> None:
        app = chat_for(alice)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "old 129" in pane_text(app), "the newest page")
            assert "old 79" not in pane_text(app)
            for _ in range(40):
                if "old 0" in pane_text(app):
                    break
                await pilot.press("pageup")
                await pilot.pause(0.2)
            assert "old 0" in pane_text(app) and "old 79" in pane_text(app)
            texts = [x.text for x in app.model.conversations["bob"].messages]
            assert texts == [f"old {n}" for n in range(130)]  # each once, in order
            await pilot.press("ctrl+q")

    run(scenario())
