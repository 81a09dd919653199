"""udpchat_proto.asyncio on a real event loop, over loopback: serve() and connect(),
their requests and pushes, key pinning, a server restarted under a client (resume,
resend, each message once), a cluster's dead node, and acknowledgements that wait for
the application. Every wait is bounded (asyncio.timeout)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from tests.chat_helpers import test_config
from tests.relay import Relay
from udpchat_cli.device import ProfileCryptoStore
from udpchat_cli.profiles import Home
from udpchat_proto import MemoryStore, ServerKey, TransportConfig, ValidationError, fingerprint
from udpchat_proto import messages as m
from udpchat_proto.asyncio import (
    ChatClient,
    ChatService,
    ClientClosedError,
    ConnectionLostError,
    LinkState,
    MemoryCryptoStore,
    RequestRefusedError,
    ServerKeyChangedError,
    ServerKeyRefusedError,
    connect,
    serve,
)
from udpchat_proto.asyncio import start as start_client
from udpchat_proto.randomness import SeededRandomSource

T = TypeVar("T")

PASSWORD = "correct horse"
#: A lost server is noticed in 2 s and each attempt gives up after 1 s.
QUICK = TransportConfig(
    handshake_timeout=1.0, idle_timeout=2.0, keepalive_interval=0.5, max_rto=1.0
)
DELIVERED = m.MessageDelivered
KEY = ServerKey.generate(SeededRandomSource("asyncio-server"))


def run(test: Callable[[], Awaitable[T]], limit: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await test()

    return asyncio.run(bounded())


async def start(store: MemoryStore, port: int = 0) -> ChatService:
    return await serve(store=store, key=KEY, port=port, config=test_config())


STORES: dict[str, MemoryCryptoStore] = {}
"""Each user's device state, as its profile would keep it: a client started again
with the user's token (the same device) reads with the same state."""


def store_of(name: str) -> MemoryCryptoStore:
    return STORES.setdefault(name, MemoryCryptoStore())


@asynccontextmanager
async def user(service: ChatService, name: str, **options: object) -> AsyncIterator[ChatClient]:
    if "token" not in options:
        STORES[name] = MemoryCryptoStore()  # (a new login: a new device)
    client = await connect(
        service.address,
        server_key=KEY.public_bytes,
        config=QUICK,
        crypto_store=store_of(name),
        **options,  # type: ignore[arg-type]
    )
    try:
        if "token" not in options:
            await client.register(name, PASSWORD)
            await client.login(name, PASSWORD)
        yield client
    finally:
        client.close()


async def befriend(a: ChatClient, b: ChatClient, b_name: str, a_name: str) -> None:
    await a.invite(b_name)
    await next_of(b, m.InvitationReceived)
    await b.accept(a_name)


async def next_of(client: ChatClient, kind: type[T], limit: float = 5.0) -> T:
    """The next push of ``kind`` (the others are skipped, and so acknowledged)."""
    async with asyncio.timeout(limit):
        async for push in client:
            if isinstance(push, kind):
                return push
    raise AssertionError("the client ended")


def test_requests_pushes_and_a_refusal() -> None:
    async def scenario() -> None:
        async with await start(MemoryStore()) as service:
            async with user(service, "alice") as alice, user(service, "bob") as bob:
                assert alice.state is LinkState.CONNECTED and alice.username == "alice"
                await befriend(alice, bob, "bob", "alice")
                accepted = await alice.send("bob", "hello")
                delivered = await next_of(bob, m.MessageDelivered)
                assert delivered.message.text == "hello"
                assert delivered.message.id == accepted.message_id
                assert [f.username for f in (await bob.friends()).friends] == ["alice"]
                await bob.join("#lobby")
                history = await alice.history("bob")
                assert [message.text for message in history.messages] == ["hello"]
                with pytest.raises(RequestRefusedError) as refused:
                    await alice.send("carol", "who?")
                assert refused.value.code == "not_friends"
            assert service.commits > 0

    run(scenario)


def test_first_contact_pins_the_key_and_a_changed_key_is_refused() -> None:
    async def scenario() -> None:
        async with await start(MemoryStore()) as service:
            seen: list[str] = []

            def decide(key: bytes) -> bool:
                seen.append(fingerprint(key))
                return True

            client = await connect(service.address, on_first_contact=decide, config=QUICK)
            assert seen == [KEY.fingerprint] and client.server_key == KEY.public_bytes
            client.close()
            with pytest.raises(ServerKeyRefusedError):
                await connect(service.address, on_first_contact=lambda _key: False, config=QUICK)
            with pytest.raises(ServerKeyChangedError):
                await connect(service.address, server_key=b"\x01" * 32, config=QUICK)

    run(scenario)


def test_a_restarted_server_loses_and_repeats_nothing() -> None:
    async def scenario() -> None:
        store = MemoryStore()  # (what a durable store keeps across the restart)
        service = await start(store)
        port = service.address[1]
        states: list[LinkState] = []
        async with user(service, "alice") as alice, user(service, "bob") as bob:
            await befriend(alice, bob, "bob", "alice")
            bob._on_state = lambda state, _detail: states.append(state)
            await alice.send("bob", "before")
            await service.close()
            # While the server is down: a message waits in alice's client, one for bob
            # waits in the store once the server is back.
            sending = asyncio.ensure_future(alice.send("bob", "during"))
            await asyncio.sleep(0.3)
            service = await start(store, port)
            await sending
            await alice.send("bob", "after")
            texts = []
            async with asyncio.timeout(10):
                async for push in bob:
                    if isinstance(push, m.MessageDelivered):
                        texts.append(push.message.text)
                        if push.message.text == "after":
                            break
            assert texts == ["before", "during", "after"]
            assert LinkState.RECONNECTING in states and bob.state is LinkState.CONNECTED
        await service.close()

    run(scenario, limit=30.0)


def test_a_dead_node_of_a_cluster_is_passed_over() -> None:
    async def scenario() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        try:
            async with await start(MemoryStore()) as service:
                dead = silent.getsockname()
                client = await connect(
                    [dead, service.address], server_key=KEY.public_bytes, config=QUICK
                )
                assert client.node == service.address and client.attempts == 2
                await client.register("alice", PASSWORD)
                client.close()
        finally:
            silent.close()

    run(scenario)


def test_a_message_is_acknowledged_only_once_the_application_asks_for_the_next() -> None:
    async def scenario() -> None:
        service = await start(MemoryStore())
        async with service, user(service, "alice") as alice, user(service, "bob") as bob:
            await befriend(alice, bob, "bob", "alice")
            await next_of(alice, m.InvitationAnswered)
            token = bob.token
            await alice.send("bob", "handle me")
            first = await next_of(bob, m.MessageDelivered)
            # bob's process dies while handling it: nothing acknowledged it.
            crash(bob)
            async with user(service, "bob", token=token) as again:
                second = await next_of(again, m.MessageDelivered)
                assert second.message.id == first.message.id
                # Handled this time: asking for the next acknowledges it.
                with pytest.raises(TimeoutError):
                    await next_of(again, m.MessageDelivered, limit=0.5)
                delivered = again.delivered_ids
            assert delivered == {first.message.id}
            async with user(service, "bob", token=token) as third:
                with pytest.raises(TimeoutError):
                    await next_of(third, m.MessageDelivered, limit=1.0)

    run(scenario)


def test_closing_fails_what_waits_and_ends_the_events() -> None:
    async def scenario() -> None:
        async with await start(MemoryStore()) as service:
            client = await connect(service.address, server_key=KEY.public_bytes, config=QUICK)
            client.close()
            with pytest.raises(ClientClosedError):
                await client.online()
            assert [push async for push in client] == []

    run(scenario)


def crash(client: ChatClient) -> None:
    """The process dies: no close, no acknowledgement, the socket gone."""
    client._cancel_timer()
    if client._endpoint is not None:
        client._endpoint.close()
    client._conn = None
    client.state = LinkState.ENDED


def test_a_lost_answer_repeats_a_send_once_and_fails_what_is_not_safe_to_repeat() -> None:
    async def scenario() -> None:
        async with await start(MemoryStore()) as service:
            relay = await Relay.open(service.address)
            try:
                async with user(service, "bob") as bob:
                    client = await connect(relay.address, server_key=KEY.public_bytes, config=QUICK)
                    async with client as alice:
                        await alice.register("alice", PASSWORD)
                        await alice.login("alice", PASSWORD)
                        await befriend(alice, bob, "bob", "alice")
                        relay.drop_answers = True  # done by the server, never answered
                        sending = asyncio.ensure_future(alice.send("bob", "once"))
                        with pytest.raises(ConnectionLostError):
                            await alice.unfriend("carol")
                        relay.drop_answers = False
                        accepted = await sending
                        delivered = await next_of(bob, m.MessageDelivered)
                        assert delivered.message.id == accepted.message_id
                        with pytest.raises(TimeoutError):
                            await next_of(bob, m.MessageDelivered, limit=0.5)
                        assert alice.attempts == 2
            finally:
                relay.close()

    run(scenario)


def test_a_cluster_client_moves_to_the_next_node_when_one_dies() -> None:
    async def scenario() -> None:
        store = MemoryStore()  # (the nodes' shared database)
        first, second = await start(store), await start(store)
        try:
            async with user(service=first, name="alice") as alice:
                pass
            token = alice.token
            client = await connect(
                [first.address, second.address],
                server_key=KEY.public_bytes,
                token=token,
                config=QUICK,
                crypto_store=store_of("alice"),
            )
            async with client:
                assert client.node == first.address
                await first.close()
                # The next request waits for the next node, and is answered there.
                online = await client.online()
                assert online.usernames == ("alice",)
                assert client.node == second.address and client.username == "alice"
        finally:
            await first.close()
            await second.close()

    run(scenario)


def test_start_returns_at_once_and_next_events_takes_a_batch() -> None:
    async def scenario() -> None:
        async with await start(MemoryStore()) as service:
            async with user(service, "alice") as alice, user(service, "bob") as bob:
                await befriend(alice, bob, "bob", "alice")
                await next_of(alice, m.InvitationAnswered)
                token = bob.token
                bob.close()
                for text in ("one", "two", "three"):
                    await alice.send("bob", text)
            states: list[LinkState] = []
            client = start_client(
                service.address,
                server_key=KEY.public_bytes,
                token=token,
                config=QUICK,
                crypto_store=store_of("bob"),
                on_state=lambda state, _detail: states.append(state),
            )
            assert client.state is LinkState.CONNECTING
            async with client:
                await client.wait_connected(5)
                assert states == [LinkState.CONNECTED]
                texts: list[str] = []
                async with asyncio.timeout(5):
                    while len(texts) < 3:
                        batch = await client.next_events()
                        texts += [
                            p.message.text for p in batch if isinstance(p, m.MessageDelivered)
                        ]
                assert texts == ["one", "two", "three"]

    run(scenario)


def test_a_burst_from_several_clients_shares_a_commit() -> None:
    async def scenario() -> None:
        async with await start(MemoryStore()) as service:
            clients = []
            try:
                for i in range(5):
                    client = await connect(service.address, server_key=KEY.public_bytes)
                    clients.append(client)
                    await client.register(f"user{i}", PASSWORD)
                    await client.login(f"user{i}", PASSWORD)
                    await client.join("#burst")
                # Each client's first message shares its key (claims, which write,
                # and the shares): made before the burst, which is then one request
                # that writes per client (its get_devices only reads).
                for i, client in enumerate(clients):
                    await client.send("#burst", f"first {i}")
                commits = service.commits
                sends = [client.send("#burst", f"m{i}") for i, client in enumerate(clients)]
                await asyncio.gather(*sends)
                # Their datagrams arrive in the same rounds of the loop: the turn waits
                # for a round that reads nothing, and one commit answers them all (1
                # on a quiet machine; a loaded one splits the burst, 4 seen once with
                # the suite on 2 cores). Fewer commits than sends: some were shared.
                # (The pacing itself is test_commit_pacing.py's, on a fake clock.)
                assert 1 <= service.commits - commits < len(sends), service.commits - commits
            finally:
                for client in clients:
                    client.close()

    run(scenario)


def test_a_node_with_another_key_ends_the_client_with_a_typed_error() -> None:
    async def scenario() -> None:
        first = await start(MemoryStore())
        impostor = await serve(
            store=MemoryStore(),
            key=ServerKey.generate(SeededRandomSource("impostor")),
            config=test_config(),
        )
        events: list[tuple[LinkState, str]] = []
        try:
            client = await connect(
                [first.address, impostor.address],
                on_first_contact=lambda _key: True,  # pins the first node's key
                config=QUICK,
                on_state=lambda state, detail: events.append((state, detail)),
            )
            assert client.server_key == KEY.public_bytes
            await first.close()
            with pytest.raises(ServerKeyChangedError):
                await client.online()  # waits for the next node, which is refused
            with pytest.raises(ServerKeyChangedError):
                await anext(client)
            state, detail = events[-1]
            assert state is LinkState.ENDED and KEY.fingerprint in detail
            assert client.state is LinkState.ENDED
        finally:
            await first.close()
            await impostor.close()

    run(scenario)


def test_an_invalid_request_raises_to_its_caller_only() -> None:
    async def scenario() -> None:
        async with await start(MemoryStore()) as service, user(service, "alice") as alice:
            with pytest.raises(ValidationError) as invalid:
                await alice.send("bad name", "hi")
            assert invalid.value.code == "invalid_username"
            with pytest.raises(ZeroDivisionError):
                await alice.request(lambda _conn: 1 // 0)
            assert (await alice.online()).usernames == ("alice",)

    run(scenario)


def test_attempts_move_along_the_nodes_and_back_off_after_each_round() -> None:
    # Deterministic: the delays the client asks its loop for, with seeded jitter.
    async def scenario() -> list[float]:
        client = ChatClient(
            [("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)],
            server_key=KEY.public_bytes,
            on_first_contact=None,
            token=None,
            delivered_ids=(),
            config=QUICK,
            random=SeededRandomSource("backoff"),
            on_state=None,
        )
        delays: list[float] = []

        class Loop:
            def call_later(self, delay: float, _callback: object) -> None:
                delays.append(delay)

        client._loop = Loop()  # type: ignore[assignment]
        for _ in range(21):
            client._lost("no answer")
        return delays

    delays = run(scenario)
    rounds = [delays[i : i + 3] for i in range(0, 21, 3)]
    assert all(round_[:2] == [0.0, 0.0] for round_ in rounds)  # the next node at once
    backoffs = [round_[2] for round_ in rounds]  # after each round: 0.5 s doubling, ±20%
    for backoff, base in zip(backoffs, [0.5, 1, 2, 4, 8, 16, 30], strict=True):
        assert 0.8 * base <= backoff <= 1.2 * base, backoffs


def lock_is_free(home: Home, within: float) -> bool:
    """Whether another process could take the profile's crypto lock (tried until
    it can, ``within`` seconds at most)."""
    path = home.crypto("bob").path
    lock = path.with_name(path.name + ".lock")
    end = time.monotonic() + within
    with lock.open("a") as file:
        while True:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > end:
                    return False
                time.sleep(0.01)
                continue
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
            return True


def test_the_loop_runs_on_while_another_process_holds_the_profiles_crypto_lock(
    tmp_path: Path,
) -> None:
    """The chat's client on a profile's crypto state (its file and flock, as the
    chat uses it) while another process of the profile holds the lock (a scripted
    send, for a third of a second and more): the loop keeps turning, the delivery
    waits on the device's thread, and then comes in order, before what followed."""
    home = Home(tmp_path / "home")
    taken, released = threading.Event(), threading.Event()

    def another_process() -> None:
        # (Another open file of the lock: flock makes the client wait as it would
        # for another process. Held until the test is done, 3 s at most.)
        with home.crypto("bob").locked():
            taken.set()
            released.wait(3.0)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with await start(MemoryStore()) as service:
            bob = await connect(
                service.address,
                server_key=KEY.public_bytes,
                config=QUICK,
                crypto_store=ProfileCryptoStore(home, "bob"),
            )
            holder = threading.Thread(target=another_process)
            async with user(service, "alice") as alice:
                try:
                    await bob.register("bob", PASSWORD)
                    await bob.login("bob", PASSWORD)
                    await befriend(alice, bob, "bob", "alice")
                    await alice.join("#tea")
                    await bob.join("#tea")
                    holder.start()
                    await asyncio.to_thread(taken.wait, 3.0)
                    await alice.send("bob", "while the lock is held")
                    await alice.leave("#tea")  # a push that comes after it
                    gaps = []
                    end = loop.time() + 0.6
                    while loop.time() < end:
                        before = loop.time()
                        await asyncio.sleep(0.01)
                        gaps.append(loop.time() - before)
                    # The loop went on (a stall would be the whole hold), and
                    # nothing after the waiting delivery went ahead of it.
                    assert max(gaps) < 0.25, max(gaps)
                    assert bob.state is LinkState.CONNECTED and bob.pending == 0
                    released.set()
                    first = await next_of(bob, m.MessageDelivered)
                    assert first.message.text == "while the lock is held"
                    left = await next_of(bob, m.RoomMembershipChanged)
                    assert (left.username, left.joined) == ("alice", False)
                    # And a send of bob's own (its state under the same lock) goes.
                    await bob.send("alice", "and back")
                    reply = await next_of(alice, m.MessageDelivered)
                    assert reply.message.text == "and back"
                    # A send cancelled half-way leaves the lock (another process
                    # takes it), and the next send goes.
                    for turns in (1, 3, 10):
                        sending = asyncio.ensure_future(bob.send("alice", "cancelled"))
                        for _ in range(turns):
                            await asyncio.sleep(0)
                        sending.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await sending
                        assert await asyncio.to_thread(lock_is_free, home, 3.0)
                    await bob.send("alice", "after the cancelled ones")
                finally:
                    released.set()
                    bob.close()
            await asyncio.to_thread(holder.join, 5.0)

    run(scenario)
