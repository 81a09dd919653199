"""The interactive chat's connection (``udpchat_cli.chat.link``, over
``udpchat_proto.asyncio``) against a real server state machine served on loopback
(``serve``), through a relay the test can cut or make lose the server's answers.
Every wait is bounded."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable

import pytest

from tests.chat_helpers import test_config
from tests.relay import Relay
from udpchat_cli.chat.link import ChatLink, LinkState
from udpchat_proto import (
    ErrorCode,
    MemoryStore,
    ServerKey,
    TransportConfig,
    ValidationError,
)
from udpchat_proto import messages as m
from udpchat_proto.asyncio import ChatClient, ChatService, ClientPush, connect, serve
from udpchat_proto.chat import token_hash
from udpchat_proto.chat.passwords import PasswordHash, ScryptParams
from udpchat_proto.randomness import SeededRandomSource

TOKEN = b"t" * 32
BOB_TOKEN = b"b" * 32
PASSWORD = PasswordHash(salt=b"s" * 16, params=ScryptParams(n=16, r=1, p=1), digest=b"d" * 32)
#: A lost server is noticed in 2 s, each attempt gives up after 1 s.
QUICK = TransportConfig(
    handshake_timeout=1.0, idle_timeout=2.0, keepalive_interval=0.5, max_rto=1.0
)
KEY = ServerKey.generate(SeededRandomSource("link-key"))


class World:
    """A server on loopback, a relay in front of it, and one link through the relay."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        now = datetime.datetime.now(datetime.UTC).timestamp()
        for name in ("alice", "bob"):
            self.store.create_account(name, PASSWORD, now)
        self.store.add_friendship("alice", "bob", now)
        self.store.create_session(token_hash(TOKEN), "alice", now)
        self.store.create_session(token_hash(BOB_TOKEN), "bob", now)
        self.pushes: list[ClientPush] = []
        self.states: list[tuple[LinkState, str]] = []
        self.service: ChatService | None = None
        self.relay: Relay | None = None
        self.link: ChatLink | None = None
        self.bob: ChatClient | None = None

    async def start(self) -> ChatLink:
        self.service = await serve(store=self.store, key=KEY, config=test_config())
        self.relay = relay = await Relay.open(self.service.address)
        # bob's device (its keys uploaded once resumed): what alice encrypts for.
        self.bob = bob = await connect(
            self.service.address, server_key=KEY.public_bytes, token=BOB_TOKEN, config=QUICK
        )
        while True:
            devices = await bob.request(lambda conn: conn.get_devices(user="bob"))
            if isinstance(devices, m.UserDevices) and devices.devices:
                break
            await asyncio.sleep(0.02)
        self.link = ChatLink(
            servers=[relay.address],
            server_key=KEY.public_bytes,
            token=TOKEN,
            on_pushes=self.pushes.extend,
            on_state=lambda state, detail: self.states.append((state, detail)),
            random=SeededRandomSource("link-client"),
            config=QUICK,
        )
        self.link.start()
        return self.link

    async def stop(self) -> None:
        if self.link is not None:
            self.link.close()
        if self.bob is not None:
            self.bob.close()
        if self.relay is not None:
            self.relay.close()
        if self.service is not None:
            await self.service.close()

    def messages(self) -> list[str]:
        return [p.message.text for p in self.pushes if isinstance(p, m.MessageDelivered)]

    def store_from_bob(self, text: str) -> None:
        self.store.add_message(
            m.ChatMessage(
                id=text.encode().ljust(16, b".")[:16],
                sender="bob",
                to="alice",
                text=text,
                sent_at=datetime.datetime.now(datetime.UTC),
            )
        )
        self.store.commit()


async def until(condition: Callable[[], bool], limit: float = 20.0) -> None:
    # (bounded loosely: on a loaded machine a handshake can miss its 1 s timeout a
    # few times, and the reconnect's backoff doubles each round)
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.02)


def scenario(test: Callable[[World, ChatLink], Awaitable[None]], *waiting: str) -> None:
    """Run ``test`` once the link is connected (``waiting``: messages stored before)."""

    async def run() -> None:
        world = World()
        for text in waiting:
            world.store_from_bob(text)
        async with asyncio.timeout(60):
            link = await world.start()
            try:
                await until(lambda: link.state is LinkState.CONNECTED)
                await test(world, link)
            finally:
                await world.stop()

    asyncio.run(run())


def test_it_connects_resumes_and_receives_what_waits() -> None:
    async def test(world: World, link: ChatLink) -> None:
        await until(lambda: world.messages() == ["while you were away"])
        assert [state for state, _ in world.states] == [LinkState.CONNECTED]

    scenario(test, "while you were away")


def test_requests_are_answered_and_refused_while_not_connected() -> None:
    async def test(world: World, link: ChatLink) -> None:
        answers: list[m.Response | None] = []
        assert link.request(lambda conn: conn.list_friends(), answers.append)
        await until(lambda: bool(answers))
        assert isinstance(answers[0], m.Friends)
        assert world.relay is not None
        world.relay.up = False
        await until(lambda: link.state is LinkState.RECONNECTING)
        assert not link.request(lambda conn: conn.list_friends(), answers.append)

    scenario(test)


def test_it_reconnects_and_catches_up_without_loss_or_repeat() -> None:
    async def test(world: World, link: ChatLink) -> None:
        assert world.relay is not None
        # (Written behind the server's back: pushed by a later refill, or on the next
        # connection.)
        world.store_from_bob("one")
        await asyncio.sleep(0.5)
        world.relay.up = False
        await until(lambda: link.state is LinkState.RECONNECTING)
        attempts = link.attempts
        await asyncio.sleep(3.0)
        # While it is down, it keeps trying, spaced out (backoff from 0.5 s).
        assert 1 <= link.attempts - attempts <= 4
        world.store_from_bob("two")
        world.relay.up = True
        await until(lambda: link.state is LinkState.CONNECTED)
        await until(lambda: "two" in world.messages())
        await asyncio.sleep(0.3)
        assert world.messages() == ["one", "two"]

    scenario(test)


def test_a_message_typed_while_down_is_sent_once_when_back() -> None:
    async def test(world: World, link: ChatLink) -> None:
        assert world.relay is not None
        world.relay.up = False
        await until(lambda: link.state is LinkState.RECONNECTING)
        answers: list[m.Response | None] = []
        link.send_message("bob", "typed while down", answers.append)
        assert link.unsent == 1
        world.relay.up = True
        await until(lambda: bool(answers))
        assert isinstance(answers[0], m.MessageAccepted) and link.unsent == 0
        # Stored once, and encrypted: the server holds no text of it.
        assert [(x.text, x.encrypted) for x in world.store.history("alice", "bob", 10)] == [
            ("", True)
        ]

    scenario(test)


def test_a_send_whose_answer_was_lost_is_stored_once() -> None:
    async def test(world: World, link: ChatLink) -> None:
        assert world.relay is not None
        answers: list[m.Response | None] = []
        world.relay.drop_answers = True  # the server stores it; its acceptance never arrives
        link.send_message("bob", "once", answers.append)
        await until(lambda: link.state is LinkState.RECONNECTING)
        assert not answers
        world.relay.drop_answers = False
        await until(lambda: bool(answers))
        assert isinstance(answers[0], m.MessageAccepted)
        # Stored once, and encrypted (the server holds no text).
        assert [(x.text, x.encrypted) for x in world.store.history("alice", "bob", 10)] == [
            ("", True)
        ]

    scenario(test)


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
    link = ChatLink(
        servers=[("127.0.0.1", 9)],
        server_key=KEY.public_bytes,
        token=TOKEN,
        on_pushes=lambda _pushes: None,
        on_state=lambda _state, _detail: None,
    )
    with pytest.raises(ValidationError) as refused:
        link.send_message(to, text, lambda _answer: None)
    assert refused.value.code is code
    assert link.unsent == 0


def test_a_recipient_is_taken_in_any_case() -> None:
    async def test(world: World, link: ChatLink) -> None:
        answers: list[m.Response | None] = []
        link.send_message("Bob", "hi", answers.append)
        await until(lambda: bool(answers))
        assert isinstance(answers[0], m.MessageAccepted)
        # Stored once, and encrypted (the server holds no text).
        assert [(x.text, x.encrypted) for x in world.store.history("alice", "bob", 10)] == [
            ("", True)
        ]

    scenario(test)


def test_an_ended_session_ends_the_link_for_good() -> None:
    async def test(world: World, link: ChatLink) -> None:
        assert world.relay is not None
        world.store.delete_session(token_hash(TOKEN))
        world.store.commit()
        world.relay.up = False
        await until(lambda: link.state is LinkState.RECONNECTING)
        world.relay.up = True
        await until(lambda: link.state is LinkState.ENDED)
        state, detail = world.states[-1]
        assert state is LinkState.ENDED and "log in again" in detail
        attempts = link.attempts
        await asyncio.sleep(1.5)
        assert link.attempts == attempts  # no more tries

    scenario(test)


def test_close_ends_it_politely() -> None:
    async def test(world: World, link: ChatLink) -> None:
        assert world.service is not None and world.bob is not None
        world.bob.close()  # (bob's device: not the link's connection)
        link.close()
        await until(
            lambda: world.service is not None and world.service.server.connection_count == 0
        )
        assert link.state is LinkState.ENDED

    scenario(test)
