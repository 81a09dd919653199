"""The client-side driver of end-to-end encryption (issue 26 phase 2b):
:class:`~udpchat_proto.chat.ClientCrypto` against the real server on the simulated
network. A send's steps (device set, claim, encrypted send) and its re-plan on
``devices_changed`` never reach the caller; deliveries decrypt, each share first;
a ``device_added`` push is an event; ``one_time_keys_low`` asks for an upload;
``no_device`` is the send's answer."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.chat_helpers import ChatUser, ChatWorld, StoreFactory
from udpchat_proto import messages as m
from udpchat_proto.chat import (
    ClientCrypto,
    DecryptedMessage,
    MessageDropped,
    SendFlow,
    fingerprint_of,
)
from udpchat_proto.e2ee import CryptoState
from udpchat_proto.errors import ErrorCode

_ids = itertools.count(1)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[ChatWorld]:
    chat = ChatWorld(StoreFactory("memory", tmp_path / "db"), seed=262)
    yield chat
    chat.check_server_health()


class Client:
    """A ChatUser and its ClientCrypto, driven as a runtime drives them."""

    def __init__(self, user: ChatUser) -> None:
        self.user = user
        self.crypto: ClientCrypto | None = None
        self.seen = 0
        self.saves = 0

    def log_in(self) -> Client:
        if self.user.connection is None:
            self.user.connect()
        logged_in = self.user.login()
        self.crypto = ClientCrypto.create(logged_in.username, logged_in.token)
        self.upload()
        return self

    def upload(self) -> None:
        assert self.crypto is not None
        while (issue := self.crypto.upload()) is not None:
            self.crypto.keys_stored(self.user.ok(issue(self.user.conn), m.KeysStored))

    def run(self, flow: SendFlow) -> m.Response:
        steps = 0
        while (step := flow.step()) is not None:
            steps += 1
            if step.save_first:
                self.saves += 1
            flow.answer(self.user.wait(step.issue(self.user.conn)))
        assert flow.result is not None
        return flow.result

    def send(self, to: str, text: str) -> m.Response:
        assert self.crypto is not None
        message_id = next(_ids).to_bytes(16, "big")
        return self.run(self.crypto.send(to, text, message_id, self.user.world.wall_clock()))

    def read(self) -> list[m.ChatMessage]:
        assert self.crypto is not None
        events = self.user.events()
        shown: list[m.ChatMessage] = []
        for push in events[self.seen :]:
            if isinstance(push, m.MessageDelivered):
                read = self.crypto.read(push)
                assert not read.dropped, read.dropped
                assert read.message is not None
                shown.append(read.message)
        self.seen = len(events)
        return shown


def signed_up(world: ChatWorld, name: str, devices: int) -> list[Client]:
    first = world.user(name, device="0")
    first.connect()
    first.ok(first.conn.register(name, first.password))
    clients = [Client(first).log_in()]
    clients += [Client(world.user(name, device=str(n))).log_in() for n in range(1, devices)]
    return clients


def test_a_send_re_plans_by_itself_and_every_device_decrypts(world: ChatWorld) -> None:
    alice = signed_up(world, "alice", 2)
    bob = signed_up(world, "bob", 1)
    world.befriend(alice[0].user, bob[0].user)
    accepted = alice[0].send("bob", "one")
    assert isinstance(accepted, m.MessageAccepted)
    # bob gains a device: alice's remembered set is stale, the flow re-plans unseen.
    bob.append(Client(world.user("bob", device="1")).log_in())
    assert isinstance(alice[0].send("bob", "two"), m.MessageAccepted)
    world.settle(1.0)
    first = bob[0].read()
    assert [(msg.text, msg.encrypted) for msg in first] == [("one", True), ("two", True)]
    assert all(isinstance(msg, DecryptedMessage) for msg in first)
    assert [msg.text for msg in bob[1].read()] == ["two"]  # from its join on
    assert [msg.text for msg in alice[1].read()] == ["one", "two"]  # the sender's other device
    assert alice[0].saves == 3  # before each encrypted send left (the refused one too)


def test_history_decrypts_and_device_added_is_an_event(world: ChatWorld) -> None:
    alice = signed_up(world, "alice", 1)[0]
    bob = signed_up(world, "bob", 1)[0]
    world.befriend(alice.user, bob.user)
    alice.send("bob", "hello")
    world.settle(1.0)
    bob.read()
    assert bob.crypto is not None and alice.crypto is not None
    answer = bob.user.ok(bob.user.conn.get_history("alice"), m.History)
    shown, drops = bob.crypto.read_history(answer.messages)
    assert [msg.text for msg in shown] == ["hello"] and not drops
    mine = alice.user.ok(alice.user.conn.get_history("bob"), m.History)
    assert [msg.text for msg in alice.crypto.read_history(mine.messages)[0]] == ["hello"]
    new = Client(world.user("bob", device="9")).log_in()
    world.settle(1.0)
    pushes = alice.user.conn.take_device_pushes()
    added = [alice.crypto.device_push(push) for push in pushes]
    events = [event for event in added if isinstance(event, m.DeviceAdded)]
    assert [event.device.device_id for event in events] == [new.crypto.state.device_id]  # type: ignore[union-attr]
    assert fingerprint_of(events[0]) == new.crypto.state.fingerprint  # type: ignore[union-attr]


def test_no_device_is_the_answer_and_a_room_reads(world: ChatWorld) -> None:
    alice = signed_up(world, "alice", 1)[0]
    bob = signed_up(world, "bob", 1)[0]
    carol = signed_up(world, "carol", 1)[0]
    world.befriend(alice.user, bob.user)
    bob.user.ok(bob.user.conn.logout())
    refused = alice.send("bob", "anyone?")
    assert isinstance(refused, m.ErrorResponse) and refused.code is ErrorCode.NO_DEVICE
    for client in (alice, carol):
        client.user.ok(client.user.conn.join_room("#r"))
    assert isinstance(alice.send("#r", "hi room"), m.MessageAccepted)
    world.settle(1.0)
    assert [msg.text for msg in carol.read()] == ["hi room"]


def test_one_time_keys_low_asks_for_an_upload(world: ChatWorld) -> None:
    alice = signed_up(world, "alice", 1)[0]
    bob = signed_up(world, "bob", 1)[0]
    world.befriend(alice.user, bob.user)
    assert bob.crypto is not None and bob.crypto.upload() is None
    alice.send("bob", "claims one of bob's keys")
    world.settle(1.0)
    for push in bob.user.conn.take_device_pushes():
        bob.crypto.device_push(push)
    issue = bob.crypto.upload()
    assert issue is not None
    stored = bob.user.ok(issue(bob.user.conn), m.KeysStored)
    bob.crypto.keys_stored(stored)
    assert stored.one_time_keys >= 25 and bob.crypto.upload() is None


def test_a_device_that_uploaded_keys_may_not_send_text(world: ChatWorld) -> None:
    alice = signed_up(world, "alice", 1)[0]
    bob = signed_up(world, "bob", 1)[0]
    world.befriend(alice.user, bob.user)
    refused = alice.user.refused(
        alice.user.conn.send_message("bob", "in clear"), ErrorCode.BAD_REQUEST
    )
    assert refused.message == "this device encrypts: send encrypted"
    # A version 1 client (no keys uploaded) still sends text, stored "encrypted": false.
    old = world.user("alice", device="v1")
    old.connect()
    old.login()
    old.ok(old.conn.send_message("bob", "from an old client"), m.MessageAccepted)
    world.settle(1.0)
    assert [(msg.text, msg.encrypted) for msg in bob.read()] == [("from an old client", False)]


def test_a_connection_asks_the_store_for_its_device_once_not_at_every_send(
    world: ChatWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The plaintext send's device check was one store read a message: on PostgreSQL,
    # one round trip each (benchmarks/cluster.py: a batch's handful became one a
    # message). A connection learns it once, and from its own upload.
    bob = signed_up(world, "bob", 1)[0]
    old = world.user("alice")
    old.connect()
    old.ok(old.conn.register("alice", old.password))
    old.login()
    world.befriend(old, bob.user)
    asked: list[bytes] = []
    session_device = world.store.session_device

    def counted(token_hash: bytes) -> object:
        asked.append(token_hash)
        return session_device(token_hash)

    monkeypatch.setattr(world.store, "session_device", counted)
    for n in range(3):
        old.ok(old.conn.send_message("bob", f"clear {n}"), m.MessageAccepted)
    assert len(asked) == 1
    # Its own upload turns it into a device: text is refused from then on, unasked.
    assert old.token is not None
    crypto = ClientCrypto.create("alice", old.token)
    issue = crypto.upload()
    assert issue is not None
    old.ok(issue(old.conn), m.KeysStored)
    before = len(asked)  # (the upload reads the session's device itself)
    refused = old.refused(old.conn.send_message("bob", "in clear"), ErrorCode.BAD_REQUEST)
    assert refused.message == "this device encrypts: send encrypted"
    assert len(asked) == before


def test_device_added_pins_the_device_and_a_changed_key_is_dropped(world: ChatWorld) -> None:
    alice = signed_up(world, "alice", 1)[0]
    bob = signed_up(world, "bob", 1)[0]
    world.befriend(alice.user, bob.user)
    Client(world.user("bob", device="2")).log_in()
    world.settle(1.0)
    assert alice.crypto is not None
    (push,) = [p for p in alice.user.conn.take_device_pushes() if isinstance(p, m.DeviceAdded)]
    assert alice.crypto.device_push(push) == push
    assert alice.crypto.state.known_device("bob", push.device.device_id) is not None
    # The same device id stated with another device's keys: never trusted.
    forged = m.DeviceAdded(
        user="bob",
        device=attrs.evolve(bob.crypto.state.device_keys, device_id=push.device.device_id),  # type: ignore[union-attr]
    )
    dropped = alice.crypto.device_push(forged)
    assert isinstance(dropped, MessageDropped) and dropped.reason == "key_changed"


def test_a_device_whose_first_upload_was_lost_uploads_it_when_loaded(world: ChatWorld) -> None:
    # The login made and saved the device, then its connection went before the
    # server confirmed the upload (the chat cut off, a command timed out): the state
    # loaded next holds those keys still unpublished, and uploads them, once.
    key = b"k" * 32
    user = world.user("alice")
    user.connect()
    user.ok(user.conn.register("alice", user.password))
    logged_in = user.login()
    made = ClientCrypto.create(logged_in.username, logged_in.token)
    assert made.state.keys_pending and made.upload() is not None  # (lost on the way)
    saved = made.state.to_bytes(key)

    loaded = ClientCrypto(CryptoState.from_bytes(saved, key))
    assert loaded.state.keys_pending
    issue = loaded.upload()
    assert issue is not None
    loaded.keys_stored(user.ok(issue(user.conn), m.KeysStored))
    assert not loaded.state.keys_pending and loaded.upload() is None
    # The server holds its keys: it is a device others can encrypt for.
    devices = user.ok(user.conn.get_devices(user="alice"), m.UserDevices)
    assert [device.keys.device_id for device in devices.devices] == [made.state.device_id]
    # Loaded again once confirmed: nothing to upload until the server asks.
    again = ClientCrypto(CryptoState.from_bytes(loaded.state.to_bytes(key), key))
    assert not again.state.keys_pending and again.upload() is None
