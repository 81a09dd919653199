"""The interactive chat's connection (``udpchat_cli.chat.link``) against the real
server state machine, in-process: a fake clock, a fake network that can go down,
no sockets and no sleeps."""

from __future__ import annotations

import datetime
import heapq
import itertools
from collections.abc import Callable

import attrs
import pytest

from tests.chat_helpers import test_config
from udpchat_cli.chat.link import ChatLink, LinkState
from udpchat_proto import Address, ChatServer, ErrorCode, MemoryStore, ServerKey, ValidationError
from udpchat_proto import messages as m
from udpchat_proto.chat import token_hash
from udpchat_proto.chat.passwords import PasswordHash, ScryptParams
from udpchat_proto.randomness import SeededRandomSource

SERVER: Address = ("127.0.0.1", 9999)
CLIENT: Address = ("127.0.0.1", 40000)
TOKEN = b"t" * 32
PASSWORD = PasswordHash(salt=b"s" * 16, params=ScryptParams(n=16, r=1, p=1), digest=b"d" * 32)


@attrs.define
class Handle:
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class World:
    """One server, one link, a clock and a wire that can be cut."""

    def __init__(self, seed: str = "link") -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, Callable[[], object], Handle]] = []
        self._order = itertools.count()
        self.store = MemoryStore()
        for name in ("alice", "bob"):
            self.store.create_account(name, PASSWORD, 0.0)
        self.store.add_friendship("alice", "bob", 0.0)
        self.store.create_session(token_hash(TOKEN), "alice", 1_700_000_000.0 + self.now)
        self.key = ServerKey.generate(SeededRandomSource(f"{seed}-key"))
        self.server = self._new_server()
        self.up = True
        self.drop_answers = False
        """Lose everything the server sends (the server still works)."""
        self.to_server: list[bytes] = []
        self.pushes: list[m.Push] = []
        self.states: list[tuple[LinkState, str]] = []
        self.link = ChatLink(
            servers=[SERVER],
            server_key=self.key.public_bytes,
            token=TOKEN,
            send=lambda data, addr: self.to_server.append(data),
            scheduler=self,
            on_pushes=self.pushes.extend,
            on_state=lambda state, detail: self.states.append((state, detail)),
            random=SeededRandomSource(f"{seed}-client"),
        )

    def _new_server(self) -> ChatServer:
        return ChatServer(
            store=self.store,
            static_key=self.key,
            clock=lambda: 1_700_000_000.0 + self.now,
            config=test_config(),
            random=SeededRandomSource(f"server-{self.now}"),
        )

    # --- the Scheduler protocol ---

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> Handle:
        handle = Handle()
        heapq.heappush(self._timers, (when, next(self._order), callback, handle))
        return handle

    # --- running ---

    def _exchange(self) -> None:
        for _ in range(100):
            sent, self.to_server = self.to_server, []
            if self.up:
                for data in sent:
                    self.server.receive_datagram(data, CLIENT, self.now)
            replies = self.server.end_batch(self.now, run_hashes=True).datagrams
            if self.up and not self.drop_answers:
                for data, _addr in replies:
                    self.link.datagram_received(data, SERVER)
            if not self.to_server:
                return

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        end = self.now + seconds
        self._exchange()
        while self.now < end and not (until is not None and until()):
            server_timer = self.server.get_timer()
            next_link = self._timers[0][0] if self._timers else end
            step = min(end, next_link, server_timer if server_timer is not None else end)
            self.now = max(self.now, step)
            if server_timer is not None and server_timer <= self.now:
                self.server.handle_timer(self.now)
            while self._timers and self._timers[0][0] <= self.now:
                _when, _n, callback, handle = heapq.heappop(self._timers)
                if not handle.cancelled:
                    callback()
            self._exchange()

    def messages(self) -> list[str]:
        return [p.message.text for p in self.pushes if isinstance(p, m.MessageDelivered)]

    def store_from_bob(self, text: str) -> None:
        self.store.add_message(
            m.ChatMessage(
                id=text.encode().ljust(16, b".")[:16],
                sender="bob",
                to="alice",
                text=text,
                sent_at=datetime.datetime.fromtimestamp(1_700_000_000 + self.now, datetime.UTC),
            )
        )


def connected(world: World) -> World:
    world.link.start()
    world.run(5.0, until=lambda: world.link.state is LinkState.CONNECTED)
    assert world.link.state is LinkState.CONNECTED
    return world


def test_it_connects_resumes_and_receives_what_waits() -> None:
    world = World()
    world.store_from_bob("while you were away")
    connected(world)
    world.run(1.0)
    assert world.messages() == ["while you were away"]
    assert [state for state, _ in world.states] == [LinkState.CONNECTED]


def test_requests_are_answered_and_refused_while_not_connected() -> None:
    world = connected(World())
    answers: list[m.Response | None] = []
    assert world.link.request(lambda conn: conn.list_friends(), answers.append)
    world.run(1.0, until=lambda: bool(answers))
    assert isinstance(answers[0], m.Friends)
    world.up = False
    world.run(120.0, until=lambda: world.link.state is LinkState.RECONNECTING)
    assert not world.link.request(lambda conn: conn.list_friends(), answers.append)


def test_it_reconnects_with_backoff_and_catches_up_without_loss_or_repeat() -> None:
    world = connected(World())
    world.store_from_bob("one")
    world.run(2.0)  # (pushed by the refill of a later turn, or on the next connection)
    world.up = False
    world.run(120.0, until=lambda: world.link.state is LinkState.RECONNECTING)
    assert world.link.state is LinkState.RECONNECTING
    # While it is down, attempts are spaced out more and more.
    attempts = world.link.attempts
    world.run(60.0)
    assert 2 <= world.link.attempts - attempts <= 6
    world.store_from_bob("two")
    world.up = True
    world.run(60.0, until=lambda: world.link.state is LinkState.CONNECTED)
    assert world.states[-1][0] is LinkState.CONNECTED
    world.run(2.0)
    assert world.messages().count("one") == 1
    assert world.messages()[-1] == "two" and world.messages().count("two") == 1


def test_a_message_typed_while_down_is_sent_once_when_back() -> None:
    world = connected(World())
    world.up = False
    world.run(120.0, until=lambda: world.link.state is LinkState.RECONNECTING)
    answers: list[m.Response | None] = []
    world.link.send_message("bob", "typed while down", answers.append)
    world.up = True
    world.run(60.0, until=lambda: bool(answers))
    assert isinstance(answers[0], m.MessageAccepted)
    assert [x.text for x in world.store.history("alice", "bob", 10)] == ["typed while down"]


def test_a_send_whose_answer_was_lost_is_stored_once() -> None:
    world = connected(World())
    answers: list[m.Response | None] = []
    world.drop_answers = True  # the server stores it; its acceptance never arrives
    world.link.send_message("bob", "once", answers.append)
    world.run(60.0, until=lambda: world.link.state is LinkState.RECONNECTING)
    assert not answers
    world.drop_answers = False
    world.run(60.0, until=lambda: bool(answers))
    assert isinstance(answers[0], m.MessageAccepted)
    assert [x.text for x in world.store.history("alice", "bob", 10)] == ["once"]


@pytest.mark.parametrize(
    ("to", "text", "code"),
    [
        ("bad name", "hi", ErrorCode.INVALID_USERNAME),
        ("#", "hi", ErrorCode.INVALID_ROOM),
        ("bob", "", ErrorCode.INVALID_TEXT),
        ("bob", "x" * 4097, ErrorCode.TOO_LARGE),
    ],
)
def test_an_invalid_message_is_refused_and_never_queued(
    to: str, text: str, code: ErrorCode
) -> None:
    world = connected(World())
    world.to_server.clear()
    with pytest.raises(ValidationError) as refused:
        world.link.send_message(to, text, lambda _answer: None)
    assert refused.value.code is code
    assert world.link.unsent == 0 and not world.to_server


def test_a_recipient_is_taken_in_any_case() -> None:
    world = connected(World())
    answers: list[m.Response | None] = []
    world.link.send_message("Bob", "hi", answers.append)
    world.run(10.0, until=lambda: bool(answers))
    assert isinstance(answers[0], m.MessageAccepted)
    assert [x.text for x in world.store.history("alice", "bob", 10)] == ["hi"]


def test_an_ended_session_ends_the_link_for_good() -> None:
    world = connected(World())
    world.store.delete_session(token_hash(TOKEN))
    world.up = False
    world.run(120.0, until=lambda: world.link.state is LinkState.RECONNECTING)
    world.up = True
    world.run(60.0, until=lambda: world.link.state is LinkState.ENDED)
    state, detail = world.states[-1]
    assert state is LinkState.ENDED and "log in again" in detail
    attempts = world.link.attempts
    world.run(120.0)
    assert world.link.attempts == attempts  # no more tries


def test_close_ends_it_politely() -> None:
    world = connected(World())
    world.link.close()
    world.run(1.0)
    assert world.link.state is LinkState.ENDED
    assert world.server.connection_count == 0
