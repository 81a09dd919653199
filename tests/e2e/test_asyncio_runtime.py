"""udpchat_proto.asyncio against the real programs: serve() with the SQLite store answers
the real ``udpchat-cli``; a bot on connect() keeps every message through a SIGKILLed and
restarted ``udpchat-server`` and a 30%-loss network. Every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from udpchat_proto import (
    ErrorCode,
    ScryptParams,
    ServerConfig,
    ServerKey,
    SystemRandomSource,
    TransportConfig,
)
from udpchat_proto import messages as m
from udpchat_proto.asyncio import (
    ChatClient,
    ConnectionLostError,
    RequestRefusedError,
    connect,
    serve,
)
from udpchat_server.stores.sqlite import SQLiteStore

from .conftest import PASSWORD, Result, ServerProcess, User, run_cli
from .udp_proxy import Faults, LossyProxy

pytestmark = pytest.mark.e2e

T = TypeVar("T")


def cli(home: Path, address: str, *args: str, stdin: str | None = None) -> Any:
    """``udpchat-cli --json ARGS``, which must succeed; its JSON object."""
    result: Result = run_cli(*args, "--json", home=home, server=address, stdin=stdin)
    assert result.code == 0 and result.err == "", result
    return result.json


def test_serve_with_the_sqlite_store_answers_the_cli(tmp_path: Path) -> None:
    key = ServerKey.generate(SystemRandomSource())
    config = ServerConfig(scrypt=ScryptParams(n=16))  # (as the e2e servers' UDPCHAT_SCRYPT_N)
    alice, bob = tmp_path / "alice", tmp_path / "bob"

    async def scenario() -> None:
        store = SQLiteStore.open(tmp_path / "chat.sqlite3")
        try:
            async with await serve(store=store, key=key, config=config) as service:
                address = f"127.0.0.1:{service.address[1]}"

                def talk() -> None:
                    for home, name in ((alice, "alice"), (bob, "bob")):
                        for command in ("register", "login"):
                            cli(home, address, command, name, "--password-stdin", stdin=PASSWORD)
                    cli(alice, address, "invite", "bob")
                    cli(bob, address, "accept", "alice")
                    cli(alice, address, "send", "bob", "hello from the CLI")
                    inbox = cli(bob, address, "inbox", "--wait", "5")["messages"]
                    assert [(m["from"], m["text"]) for m in inbox] == [
                        ("alice", "hello from the CLI")
                    ]

                await asyncio.wait_for(asyncio.to_thread(talk), 60)
                assert service.commits > 0
                port = service.address[1]
        finally:
            store.close()
        # Durable: a new service on the same file (and key) still has it all.
        store = SQLiteStore.open(tmp_path / "chat.sqlite3")
        try:
            async with await serve(store=store, key=key, config=config, port=port):
                history = await asyncio.wait_for(
                    asyncio.to_thread(cli, bob, f"127.0.0.1:{port}", "history", "alice"), 30
                )
                assert [m["text"] for m in history["messages"]] == ["hello from the CLI"]
        finally:
            store.close()

    asyncio.run(scenario())


# --- a bot through a restart and a lossy network -----------------------------------------

#: 30% of datagrams lost each way, some duplicated, some held back (reordered).
WEATHER = Faults(drop=0.30, duplicate=0.05, delay=0.10, max_delay=0.1)
SEED = 20261206
#: The bot notices a dead server within 4 s (the test's budget is ~30 s).
BOT_TRANSPORT = TransportConfig(
    handshake_timeout=4.0, idle_timeout=4.0, keepalive_interval=0.7, max_rto=1.0
)
MESSAGES = 10


async def persist(call: Callable[[], Awaitable[T]], *ok: ErrorCode) -> T | None:
    """A request not safe to repeat, repeated by the bot itself when its connection was
    lost before the answer (a refusal in ``ok`` says the first one did it)."""
    for _ in range(10):
        try:
            return await call()
        except ConnectionLostError:
            continue
        except RequestRefusedError as refused:
            if refused.code in ok:
                return None
            raise
    raise AssertionError("ten connections lost in a row")


class Bot:
    """An echo bot on udpchat_proto.asyncio, on its own thread and event loop."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.received: list[str] = []
        self.answered = 0
        self.ready = threading.Event()
        self.client: ChatClient | None = None
        self.failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="echo-bot", daemon=True)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(self._main())
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        self._loop.close()

    async def _main(self) -> None:
        try:
            async with await connect(self.address, config=BOT_TRANSPORT, timeout=20) as bot:
                self.client = bot
                await persist(lambda: bot.register("echo", PASSWORD), ErrorCode.USER_EXISTS)
                await persist(lambda: bot.login("echo", PASSWORD))
                self.ready.set()
                async for event in bot:
                    if isinstance(event, m.InvitationReceived):
                        inviter = event.from_user
                        await persist(
                            lambda: bot.accept(inviter),  # noqa: B023 (awaited here)
                            ErrorCode.NO_INVITATION,
                            ErrorCode.ALREADY_FRIENDS,
                        )
                    elif isinstance(event, m.MessageDelivered):
                        self.received.append(event.message.text)
                        await bot.send(event.message.sender, f"echo: {event.message.text}")
                        self.answered += 1
        except Exception as exc:
            self.failure = exc
            raise

    def __enter__(self) -> Bot:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # (the loop ended already)
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


def wait_for(what: str, condition: Callable[[], bool], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path).start()
    try:
        yield process
    finally:
        process.stop()
        process.kill()


@pytest.mark.slow(seconds=25)
def test_a_bot_loses_and_repeats_nothing_through_a_restart_and_loss(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = User("alice", tmp_path / "alice", server)
    alice.signup()
    texts = [f"message {i}" for i in range(1, MESSAGES + 1)]
    with (
        LossyProxy(
            ("127.0.0.1", server.port), seed=SEED, upstream=WEATHER, downstream=WEATHER
        ) as proxy,
        Bot(proxy.address) as bot,
    ):
        assert bot.ready.wait(20), bot.failure
        alice.ok("invite", "echo")
        wait_for("the bot accepts", lambda: bool(alice.ok("friends")["friends"]), 15)
        for text in texts[: MESSAGES // 2]:
            alice.ok("send", "echo", text)
        # SIGKILL (nothing committed after this instant survives), then the same
        # database, key and port again.
        server.kill()
        restarted = ServerProcess(tmp_path, db=server.db, port=server.port).start()
        try:
            for text in texts[MESSAGES // 2 :]:
                alice.ok("send", "echo", text)
            wait_for("the bot answers all", lambda: bot.answered >= MESSAGES, 25)
            echoes: list[str] = []
            deadline = time.monotonic() + 15
            while len(echoes) < MESSAGES and time.monotonic() < deadline:
                inbox = alice.ok("inbox", "--wait", "2")["messages"]
                echoes += [message["text"] for message in inbox if message["from"] == "echo"]
            time.sleep(1.0)  # (anything repeated would have arrived by now)
            echoes += [
                message["text"]
                for message in alice.ok("inbox")["messages"]
                if message["from"] == "echo"
            ]
        finally:
            restarted.stop()
            restarted.kill()
        assert bot.failure is None, bot.failure
        assert bot.received == texts  # each once, in order
        assert echoes == [f"echo: {text}" for text in texts]
        assert bot.client is not None and bot.client.attempts >= 2  # it did reconnect
        assert proxy.stats["up"].dropped > 0 and proxy.stats["down"].dropped > 0
