"""The full-screen chat (``ChatApp``) headless, with a stand-in for its link: the
test answers each request, and hands over each push, when it chooses. What the
pane shows is checked whatever order the pushes, the history's answers, the sends'
answers and the redraws come in (on a real server that order is the network's and
the machine's load's: ``tests/e2e/test_chat_tui.py``)."""

from __future__ import annotations

import asyncio
import datetime
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from tests.chat_tui_helpers import settle, shown, top
from udpchat_cli.chat import app as chat_app
from udpchat_cli.chat.app import ChatApp, Composer, MessagePane, ProfileBook
from udpchat_cli.chat.link import Answer, LinkState
from udpchat_proto import messages as m
from udpchat_proto.asyncio import ClientPush

SIZE = (100, 30)
T0 = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)


class FakeLink:
    """Takes ChatLink's place: keeps each request's answer callback for the test."""

    def __init__(
        self,
        *,
        on_pushes: Callable[[list[ClientPush]], None],
        on_state: Callable[[LinkState, str], None],
        **_settings: object,
    ) -> None:
        self.on_pushes = on_pushes
        self.on_state = on_state
        self.state = LinkState.CONNECTING
        self.unsent = 0
        self.requests: dict[str, Answer] = {}
        """The latest request of each kind (``list_friends`` ...) not answered yet."""
        self.histories: list[Answer] = []
        self.sends: list[Answer] = []

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def connect(self) -> None:
        self.state = LinkState.CONNECTED
        self.on_state(LinkState.CONNECTED, "")

    def request(self, issue: Callable[[Any], int], answer: Answer) -> bool:
        self.requests[str(issue(_Names()))] = answer
        return True

    def answer(self, name: str, response: m.Response) -> None:
        self.requests.pop(name)(response)

    def history(
        self, peer: str, count: int, answer: Answer, *, before: bytes | None = None
    ) -> bool:
        self.histories.append(answer)
        return True

    def send_message(self, to: str, text: str, answer: Answer) -> bytes:
        self.sends.append(answer)
        return b""


class _Names:
    """A connection whose every request is its own name (what FakeLink files it by)."""

    def __getattr__(self, name: str) -> Callable[..., str]:
        return lambda *_args, **_kwargs: name


def message(n: int, text: str, sender: str = "bob", to: str = "alice") -> m.ChatMessage:
    return m.ChatMessage(
        id=bytes([n]) * 16,
        sender=sender,
        to=to,
        text=text,
        sent_at=T0 + datetime.timedelta(seconds=n),
    )


def run(
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[[ChatApp, Pilot[int], FakeLink], Coroutine[Any, Any, None]],
) -> None:
    """Alice's chat, connected, bob her only friend, his conversation open (its
    first page of history asked and not answered yet)."""
    links: list[FakeLink] = []

    def link_for(**settings: Any) -> FakeLink:
        links.append(FakeLink(**settings))
        return links[-1]

    monkeypatch.setattr(chat_app, "ChatLink", link_for)
    book = ProfileBook(
        record=lambda _messages: None,
        mark_shown=lambda _ids: None,
        unshown=[],
        delivered=frozenset(),
    )

    async def main() -> None:
        app = ChatApp(
            username="alice",
            server_name="127.0.0.1:9",
            servers=[("127.0.0.1", 9)],
            server_key=bytes(32),
            token=bytes(16),
            book=book,
        )
        async with app.run_test(size=SIZE) as pilot:
            (link,) = links
            link.connect()
            link.answer(
                "list_friends",
                m.Friends(request_id=1, friends=(m.UserPresence(username="bob", online=True),)),
            )
            link.answer("list_rooms", m.Rooms(request_id=2, rooms=()))
            link.answer("list_invitations", m.Invitations(request_id=3, incoming=(), outgoing=()))
            assert app.model.current == "bob" and len(link.histories) == 1
            await settle(pilot)
            await scenario(app, pilot, link)

    asyncio.run(asyncio.wait_for(main(), timeout=60))


HELLO = message(1, "hello alice")
FORGED = message(2, "ok\n00:00 mallory: fake")
OLDER = message(0, "read elsewhere")  # (only the history brings it)
EXPECTED = ["bob: read elsewhere", "bob: hello alice", "bob: ok", "| 00:00 mallory: fake"]
"""Each once, in this order, whatever the order they came in."""

STEPS: dict[str, Callable[[ChatApp, FakeLink], None]] = {
    "hello pushed": lambda app, link: link.on_pushes([m.MessageDelivered(message=HELLO)]),
    "forged pushed": lambda app, link: link.on_pushes([m.MessageDelivered(message=FORGED)]),
    "history": lambda app, link: link.histories[0](
        m.History(request_id=4, messages=(OLDER, HELLO, FORGED))
    ),
    "reopened": lambda app, link: app.action_nth(1),  # (Alt+1: bob, drawn from scratch)
}


def in_order(app: ChatApp) -> list[str]:
    return [part for line in shown(app) for part in EXPECTED if part in line]


@pytest.mark.parametrize("pause", [False, True], ids=["at-once", "a-refresh-between"])
@pytest.mark.parametrize("order", list(itertools.permutations(STEPS)), ids=" then ".join)
def test_each_message_is_shown_once_whatever_the_order(
    monkeypatch: pytest.MonkeyPatch, order: tuple[str, ...], pause: bool
) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[int], link: FakeLink) -> None:
        for step in order:
            STEPS[step](app, link)
            # Never twice, not even while a redraw replaces the pane's lines.
            drawn = in_order(app)
            assert len(drawn) == len(set(drawn)), (step, shown(app))
            if pause:
                await pilot.pause()
        await settle(pilot)
        assert in_order(app) == EXPECTED, shown(app)
        # Nothing hidden stays behind.
        assert all(line.display for line in app.query_one(MessagePane).query(Static))

    run(monkeypatch, scenario)


def test_a_sent_message_the_history_brought_first_is_shown_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[int], link: FakeLink) -> None:
        app.query_one(Composer).insert("hi bob")
        await pilot.press("enter")
        await settle(pilot)
        (answer,) = link.sends
        mine = message(3, "hi bob", sender="alice", to="bob")
        # The send's answer is late (lost with a connection, the message sent again
        # after the reconnect): a page of history has it first.
        link.histories[0](m.History(request_id=4, messages=(HELLO, mine)))
        await settle(pilot)
        answer(m.MessageAccepted(request_id=5, message_id=mine.id, sent_at=mine.sent_at))
        await settle(pilot)
        assert sum("alice: hi bob" in line for line in shown(app)) == 1, shown(app)
        assert [message.text for message in app.model.conversations["bob"].messages] == [
            "hello alice",
            "hi bob",
        ]

    run(monkeypatch, scenario)


LATER = [message(100 + n, f"line {100 + n}") for n in range(60)]
EARLIER = [message(n, f"line {n}") for n in range(40, 100)]
KEYS = {"pageup": -1, "pagedown": 1}
"""The pages each key moves."""


@pytest.mark.parametrize("key", [*KEYS, "end"])
def test_a_key_pressed_while_history_is_drawn_is_not_undone(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[int], link: FakeLink) -> None:
        pane = app.query_one(MessagePane)
        link.on_pushes([m.MessageDelivered(message=message) for message in LATER])
        await settle(pilot)
        await pilot.press("pageup", "pageup")  # (a page down then stays above the bottom)
        await settle(pilot)
        read = int(top(app).removeprefix("line "))
        # The first page of history comes: drawn again, the reader's line kept (after a
        # refresh), and a key pressed at once.
        link.histories[0](m.History(request_id=4, messages=(*EARLIER, *LATER)))
        await pilot.press(key)
        await settle(pilot)
        if key == "end":
            assert pane.at_bottom and pane.following
        else:
            page = pane.scrollable_content_region.height
            assert top(app) == f"line {read + KEYS[key] * page}"
            assert not pane.following

    run(monkeypatch, scenario)


@pytest.mark.parametrize("key", [*KEYS, "end"])
def test_a_key_pressed_as_a_conversation_opens_at_new_messages_is_not_undone(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[int], link: FakeLink) -> None:
        pane = app.query_one(MessagePane)
        earlier = [message(n, f"line {n}", sender="carol") for n in range(50)]
        link.histories[0](m.History(request_id=4, messages=()))
        app.model.add_history("carol", earlier)
        unread = [message(n, f"line {n}", sender="carol") for n in range(50, 100)]
        link.on_pushes([m.MessageDelivered(message=message) for message in unread])
        await settle(pilot)
        app.action_next_unread()  # carol's, at "new messages" (after a refresh) ...
        await pilot.press(key)  # ... and a key at once
        await settle(pilot)
        if key == "end":
            assert pane.at_bottom and pane.following
        else:
            page = pane.scrollable_content_region.height
            # ... line 49, the marker's row, line 50 ...
            assert top(app) == f"line {50 - page if key == 'pageup' else 49 + page}"

    run(monkeypatch, scenario)


def test_a_page_down_pressed_as_messages_arrive_reaches_them_and_leaves_them_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[int], link: FakeLink) -> None:
        pane = app.query_one(MessagePane)
        link.histories[0](m.History(request_id=4, messages=tuple(LATER)))
        await settle(pilot)
        pane.scroll_to(y=pane.max_scroll_y - 3, animate=False)  # a few rows up
        await settle(pilot)
        assert not pane.following
        old_bottom, read = pane.max_scroll_y, pane.scroll_y
        arriving = [message(160 + n, f"line {160 + n}") for n in range(30)]
        link.on_pushes([m.MessageDelivered(message=message) for message in arriving])
        # Page Down before they are laid out (Pilot's press would wait for a refresh
        # first; a terminal's key read with the push need not).
        app.action_page(1)
        await settle(pilot)
        assert pane.scroll_y == read + pane.scrollable_content_region.height > old_bottom
        assert not pane.following
        # Lines below not seen yet: still unread (before, the page stopped at the old
        # bottom, where the chat counted every line as read).
        assert app.model.conversations["bob"].unread == len(arriving)

    run(monkeypatch, scenario)


def test_a_history_answer_after_the_jump_to_new_messages_leaves_the_reader_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario(app: ChatApp, pilot: Pilot[int], link: FakeLink) -> None:
        pane = app.query_one(MessagePane)
        carols = [message(n, f"line {n}", sender="carol") for n in range(50, 200)]
        link.histories[0](m.History(request_id=4, messages=()))
        app.model.add_history("carol", carols[50:100])  # read
        link.on_pushes([m.MessageDelivered(message=message) for message in carols[100:]])
        await settle(pilot)
        app.action_next_unread()  # carol's, at "new messages"; her history asked
        await settle(pilot)
        assert top(app) == "── new messages ──"
        # Her first page of history: older lines above, the conversation redrawn.
        link.histories[1](m.History(request_id=5, messages=tuple(carols)))
        await settle(pilot)
        assert "line 50" in "\n".join(shown(app))
        assert top(app) == "── new messages ──"
        assert not pane.following

    run(monkeypatch, scenario)
