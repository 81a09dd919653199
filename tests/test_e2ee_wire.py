"""End-to-end encryption on the wire and in the server (issue 26 phase 2a).

Real :class:`~udpchat_proto.e2ee.CryptoState`\\ s in the clients, the real server
state machine and store on the simulated network: every device decrypts
everything it receives, once, in order; ``devices_changed`` then a resend that
succeeds; ``no_device``; a new device's history starts where it joined; the
plaintext send of version 1 still works, stored ``encrypted: false``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import attrs
import pytest
from hypothesis import given, settings

from tests import strategies
from tests.chat_helpers import ChatUser, ChatWorld, StoreFactory, test_config
from tests.test_cluster_hints import NODE_B, Cluster
from tests.test_cluster_hints import PASSWORD as CLUSTER_PASSWORD
from tests.test_cluster_hints import signed_up as cluster_signed_up
from udpchat_proto import messages as m
from udpchat_proto.bus import News, news_bodies, parse
from udpchat_proto.chat.codec import encode
from udpchat_proto.chat.handlers.messages import _encrypted_message
from udpchat_proto.chat.tokens import session_id, token_hash
from udpchat_proto.e2ee import (
    ONE_TIME_KEYS_TARGET,
    ClaimedKey,
    CryptoState,
    Decrypted,
    DeviceSet,
    KeyShareReceived,
    OneTimeKey,
    Outgoing,
    direct_conversation,
)
from udpchat_proto.errors import ErrorCode
from udpchat_proto.ratelimit import RateLimit

T = TypeVar("T")
_message_ids = itertools.count(1)


class Device:
    """One device: a connection of a user, logged in, and its crypto state (what
    phase 2b keeps in the profile)."""

    def __init__(self, world: ChatWorld, user: ChatUser) -> None:
        self.world = world
        self.user = user
        self.state: CryptoState | None = None
        self.seen = 0
        """How many deliveries of the connection's events were read."""
        self.texts: list[str] = []
        """What this device decrypted, in order."""
        self.ids: list[bytes] = []

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def device_id(self) -> bytes:
        assert self.user.token is not None
        return session_id(token_hash(self.user.token))

    def log_in(self) -> Device:
        """Log in (a new device) and upload its keys."""
        if self.user.connection is None:
            self.user.connect()
        self.user.login()
        self.seen = 0
        self.state = CryptoState.create(self.name, self.device_id)
        upload = self.state.keys_to_upload(published_one_time_keys=0)
        assert upload is not None
        stored = self.user.ok(self.user.conn.upload_keys(upload), m.KeysStored)
        assert stored.one_time_keys == ONE_TIME_KEYS_TARGET and not stored.fallback_used
        self.state.mark_keys_published()
        return self

    def device_set(self, to: str) -> DeviceSet:
        conversation = to if to.startswith("#") else direct_conversation(self.name, to)
        answer = self.user.ok(
            self.user.conn.get_devices(conversation=conversation), m.ConversationDevices
        )
        return answer.device_set

    def send(
        self, to: str, text: str, *, device_set: DeviceSet | None = None
    ) -> tuple[m.MessageAccepted, int]:
        """Send as a client does: plan, claim, encrypt, send; again on
        ``devices_changed`` with the set it carries. Returns the acceptance and how
        many refusals came first."""
        assert self.state is not None
        current = device_set if device_set is not None else self.device_set(to)
        message_id = next(_message_ids).to_bytes(16, "big")
        refusals = 0
        while True:
            out = self.encrypt(current, text, message_id)
            response = self.user.wait(
                self.user.conn.send_encrypted(
                    to, out.message, out.key_shares, message_id=message_id
                )
            )
            if isinstance(response, m.MessageAccepted):
                self.state.accepted(out)
                return response, refusals
            assert isinstance(response, m.ErrorResponse), response
            assert response.code is ErrorCode.DEVICES_CHANGED, response
            assert response.device_set is not None
            current = response.device_set
            refusals += 1

    def encrypt(self, device_set: DeviceSet, text: str, message_id: bytes) -> Outgoing:
        """Plan, claim the keys the plan needs, encrypt."""
        assert self.state is not None
        at = self.world.wall_clock()
        plan = self.state.plan_send(device_set, at)
        claimed: tuple[ClaimedKey, ...] = ()
        if plan.claims:
            answer = self.user.ok(
                self.user.conn.claim_keys(ref[1] for ref in plan.claims), m.ClaimedKeys
            )
            claimed = answer.keys
        return self.state.encrypt(device_set, text, message_id, at, claimed)

    def read(self) -> list[str]:
        """Take the new deliveries of the current connection: each share first,
        then the message; every one must decrypt. Returns the new texts."""
        assert self.state is not None
        events = self.user.events()
        new: list[str] = []
        for push in events[self.seen :]:
            if not isinstance(push, m.MessageDelivered):
                continue
            for share in push.key_shares:
                taken = self.state.receive_key_share(share)
                assert isinstance(taken, KeyShareReceived), taken
            message = push.message
            if not message.encrypted:
                new.append(message.text)
                continue
            assert message.ciphertext is not None
            result = self.state.decrypt(message.ciphertext, message.id)
            assert isinstance(result, Decrypted), result
            assert result.sender == message.sender
            new.append(result.text)
            self.ids.append(message.id)
        self.seen = len(events)
        self.texts.extend(new)
        return new


@pytest.fixture(params=["memory", "sqlite", "memory-staged", "sqlite-staged"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChatWorld]:
    # (staged: as a server on PostgreSQL does, the batch's messages stored in one
    # call, an encrypted one's devices and shares right after it, before the commit)
    kind, _, staged = str(request.param).partition("-")
    chat = ChatWorld(
        StoreFactory(kind, tmp_path / "db.sqlite3"), seed=26, stage_messages=bool(staged)
    )
    yield chat
    chat.check_server_health()


def signed_up_devices(world: ChatWorld, name: str, count: int) -> list[Device]:
    """A registered user with ``count`` devices logged in, keys uploaded."""
    first = world.user(name, device="0")
    first.connect()
    first.ok(first.conn.register(name, first.password))
    devices = [Device(world, first).log_in()]
    for n in range(1, count):
        devices.append(Device(world, world.user(name, device=str(n))).log_in())
    return devices


def test_two_users_with_two_devices_each_read_everything_once_in_order(
    world: ChatWorld,
) -> None:
    alice = signed_up_devices(world, "alice", 2)
    bob = signed_up_devices(world, "bob", 2)
    world.befriend(alice[0].user, bob[0].user)
    sent: list[tuple[Device, str]] = []
    for n in range(6):
        sender = (alice[0], bob[0], alice[1], bob[1])[n % 4]
        to = "bob" if sender.name == "alice" else "alice"
        text = f"{n}: from {sender.name}'s {sender.user.label}"
        sender.send(to, text)
        sent.append((sender, text))
    world.settle()
    for device in (*alice, *bob):
        device.read()
        # Everything, but what this very device sent, in the order sent.
        assert device.texts == [text for sender, text in sent if sender is not device]
        assert len(set(device.ids)) == len(device.ids)  # once
    # Stored encrypted: the server holds no text.
    stored = world.store.get_message(alice[0].ids[0])
    assert stored is not None and stored.message.encrypted and stored.message.text == ""


def test_a_stale_set_is_refused_devices_changed_and_the_resend_reaches_the_new_device(
    world: ChatWorld,
) -> None:
    (alice,) = signed_up_devices(world, "alice", 1)
    (bob,) = signed_up_devices(world, "bob", 1)
    world.befriend(alice.user, bob.user)
    stale = alice.device_set("bob")
    alice.send("bob", "one", device_set=stale)
    bob_laptop = Device(world, world.user("bob", device="laptop")).log_in()
    accepted, refusals = alice.send("bob", "two", device_set=stale)
    assert refusals == 1
    world.settle()
    assert bob.read() == ["one", "two"]
    # The new device reads from when it joined: "two", never "one".
    assert bob_laptop.read() == ["two"]
    assert bob_laptop.ids == [accepted.message_id]


def test_a_direct_message_to_a_user_with_no_device_is_refused_no_device(
    world: ChatWorld,
) -> None:
    (alice,) = signed_up_devices(world, "alice", 1)
    (bob,) = signed_up_devices(world, "bob", 1)
    world.befriend(alice.user, bob.user)
    current = alice.device_set("bob")
    alice.send("bob", "before", device_set=current)
    bob.user.ok(bob.user.conn.logout())  # bob's only device ends
    assert alice.state is not None
    out = alice.state.encrypt(current, "anyone?", b"\x07" * 16, world.wall_clock())
    refused = alice.user.refused(
        alice.user.conn.send_encrypted("bob", out.message, out.key_shares, message_id=b"\x07" * 16),
        ErrorCode.NO_DEVICE,
    )
    assert refused.message == "bob has no logged-in device to receive it"
    assert world.store.get_message(b"\x07" * 16) is None  # nothing stored


def test_a_room_with_devices_coming_and_going(world: ChatWorld) -> None:
    alice = signed_up_devices(world, "alice", 2)
    bob = signed_up_devices(world, "bob", 1)
    carol = signed_up_devices(world, "carol", 1)
    for device in (alice[0], bob[0], carol[0]):
        device.user.ok(device.user.conn.join_room("#e2ee"))
    alice[0].send("#e2ee", "hello all")
    bob[0].send("#e2ee", "hi alice")
    # Carol's second device comes; alice's laptop goes (logout ends the device).
    carol_tablet = Device(world, world.user("carol", device="tablet")).log_in()
    alice[1].read()
    alice[1].user.ok(alice[1].user.conn.logout())
    _accepted, refusals = alice[0].send("#e2ee", "after the change")
    assert refusals == 0  # (a fresh set: asked before sending)
    carol[0].send("#e2ee", "from carol")
    # Bob leaves; what is sent after never reaches him.
    bob[0].user.ok(bob[0].user.conn.leave_room("#e2ee"))
    alice[0].send("#e2ee", "without bob")
    world.settle()
    assert alice[0].read() == ["hi alice", "from carol"]
    assert alice[1].texts == ["hello all", "hi alice"]
    assert bob[0].read() == ["hello all", "after the change", "from carol"]
    assert carol[0].read() == ["hello all", "hi alice", "after the change", "without bob"]
    assert carol_tablet.read() == ["after the change", "from carol", "without bob"]
    # History: the tablet is given only what was stored for it.
    page = carol_tablet.user.ok(carol_tablet.user.conn.get_history("#e2ee"), m.History)
    assert [message.id for message in page.messages] == carol_tablet.ids
    older = carol[0].user.ok(carol[0].user.conn.get_history("#e2ee"), m.History)
    # The phone was there from the start: all five (its own "from carol" too).
    assert len(older.messages) == 5
    assert set(carol[0].ids) < {message.id for message in older.messages}
    assert alice[0].state is not None
    # A removed device never reads what is sent after: alice rotated when her
    # laptop left, so its session is not the one "after the change" used.
    first, later = (
        world.store.get_message(carol[0].ids[0]),
        world.store.get_message(carol[0].ids[2]),
    )
    assert first is not None and later is not None
    assert first.message.ciphertext is not None and later.message.ciphertext is not None
    assert first.message.ciphertext.session_id != later.message.ciphertext.session_id


def test_the_plaintext_send_of_version_1_still_works_stored_unencrypted(
    world: ChatWorld,
) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    accepted = alice.send("bob", "plain")
    world.settle()
    [received] = bob.received()
    assert received.text == "plain" and not received.encrypted
    stored = world.store.get_message(accepted.message_id)
    assert stored is not None and not stored.message.encrypted


def test_devices_are_listed_to_friends_and_co_members_only(world: ChatWorld) -> None:
    (alice,) = signed_up_devices(world, "alice", 1)
    (bob,) = signed_up_devices(world, "bob", 1)
    (carol,) = signed_up_devices(world, "carol", 1)
    mine = alice.user.ok(alice.user.conn.get_devices(user="alice"), m.UserDevices)
    assert [device.keys.device_id for device in mine.devices] == [alice.device_id]
    alice.user.refused(alice.user.conn.get_devices(user="bob"), ErrorCode.NOT_FRIENDS)
    alice.user.refused(alice.user.conn.get_devices(user="nobody"), ErrorCode.NOT_FRIENDS)
    world.befriend(alice.user, bob.user)
    theirs = alice.user.ok(alice.user.conn.get_devices(user="bob"), m.UserDevices)
    assert [device.keys for device in theirs.devices] == [
        bob.state.device_keys if bob.state else None
    ]
    for device in (alice, carol):
        device.user.ok(device.user.conn.join_room("#both"))
    alice.user.ok(alice.user.conn.get_devices(user="carol"), m.UserDevices)
    # A claim for a stranger's device gets nothing.
    (dave,) = signed_up_devices(world, "dave", 1)
    claimed = alice.user.ok(alice.user.conn.claim_keys([dave.device_id]), m.ClaimedKeys)
    assert claimed.keys == ()


def test_a_new_device_is_announced_to_the_devices_that_share_a_conversation(
    world: ChatWorld,
) -> None:
    (alice,) = signed_up_devices(world, "alice", 1)
    (bob,) = signed_up_devices(world, "bob", 1)
    world.befriend(alice.user, bob.user)
    laptop = Device(world, world.user("bob", device="laptop")).log_in()
    world.settle()
    added = [
        push for push in alice.user.conn.take_device_pushes() if isinstance(push, m.DeviceAdded)
    ]
    assert [(push.user, push.device.device_id) for push in added] == [("bob", laptop.device_id)]
    # Bob's own other device is told too.
    assert [
        push.device.device_id
        for push in bob.user.conn.take_device_pushes()
        if isinstance(push, m.DeviceAdded)
    ] == [laptop.device_id]


def test_claims_that_take_one_time_keys_tell_their_device_to_upload_more(
    world: ChatWorld,
) -> None:
    (alice,) = signed_up_devices(world, "alice", 1)
    (bob,) = signed_up_devices(world, "bob", 1)
    world.befriend(alice.user, bob.user)
    alice.send("bob", "one")
    world.settle()
    [low] = bob.user.conn.take_device_pushes()
    assert isinstance(low, m.OneTimeKeysLow)
    assert low.one_time_keys == ONE_TIME_KEYS_TARGET - 1 and not low.fallback_used
    assert bob.state is not None
    upload = bob.state.keys_to_upload(published_one_time_keys=low.one_time_keys)
    assert upload is not None
    stored = bob.user.ok(bob.user.conn.upload_keys(upload), m.KeysStored)
    assert stored.one_time_keys == ONE_TIME_KEYS_TARGET


@pytest.mark.parametrize("ending", ["revoke", "logout_all", "change_password"])
def test_a_device_ended_any_way_leaves_the_set_and_the_next_send_rotates(
    world: ChatWorld, ending: str
) -> None:
    (alice,) = signed_up_devices(world, "alice", 1)
    bob, bob_laptop = signed_up_devices(world, "bob", 2)
    world.befriend(alice.user, bob.user)
    before = alice.device_set("bob")
    alice.send("bob", "to both", device_set=before)
    conn = bob.user.conn
    if ending == "revoke":
        bob.user.ok(conn.revoke_session(bob_laptop.device_id))
    elif ending == "logout_all":
        bob.user.ok(conn.logout_all(), m.LoggedOutAll)
    else:
        bob.user.ok(conn.change_password(bob.user.password, "another password"))
    after = alice.device_set("bob")
    assert bob_laptop.device_id not in {keys.device_id for keys in after.devices}
    assert after.version != before.version
    if ending == "logout_all":  # bob has no device left: nothing to rotate to
        assert {keys.user for keys in after.devices} == {"alice"}
        return
    accepted, refusals = alice.send("bob", "to the phone", device_set=before)
    assert refusals == 1
    world.settle()
    assert bob.read() == ["to both", "to the phone"]
    first, second = (world.store.get_message(message_id) for message_id in bob.ids)
    assert first is not None and second is not None
    assert first.message.ciphertext is not None and second.message.ciphertext is not None
    # Rotated: the ended device's key never opens what came after.
    assert first.message.ciphertext.session_id != second.message.ciphertext.session_id
    assert accepted.message_id == bob.ids[-1]


def test_key_shares_and_encrypted_messages_cross_a_clusters_nodes() -> None:
    """Alice on one node, Bob's two devices on the other: the shares reach Bob's
    devices with the message, through the database and the batch's news."""
    cluster = Cluster()
    alice, bob = cluster_signed_up(cluster)
    bob_laptop = cluster.client("bob", NODE_B, 5003)
    cluster.run()
    bob_laptop.login("bob", CLUSTER_PASSWORD)
    cluster.run()
    states = {}
    for port, conn, name in ((5001, alice, "alice"), (5002, bob, "bob"), (5003, bob_laptop, "bob")):
        assert conn.token is not None
        state = CryptoState.create(name, session_id(token_hash(conn.token)))
        upload = state.keys_to_upload(published_one_time_keys=0)
        assert upload is not None
        conn.upload_keys(upload)
        cluster.run()
        assert cluster.received(port, m.KeysStored)
        state.mark_keys_published()
        states[port] = state

    def answer(port: int, kind: type[T]) -> T:
        cluster.run()
        return cluster.received(port, kind)[-1]

    sender = states[5001]
    alice.get_devices(conversation="alice,bob")
    device_set = answer(5001, m.ConversationDevices).device_set
    plan = sender.plan_send(device_set, cluster.wall())
    alice.claim_keys(ref[1] for ref in plan.claims)
    claimed = answer(5001, m.ClaimedKeys).keys
    out = sender.encrypt(device_set, "across nodes", b"\x42" * 16, cluster.wall(), claimed)
    alice.send_encrypted("bob", out.message, out.key_shares, message_id=b"\x42" * 16)
    cluster.run(0.5)  # under any timer: the news brought it
    assert cluster.received(5001, m.MessageAccepted)
    for port in (5002, 5003):
        [push] = cluster.received(port, m.MessageDelivered)
        [share] = push.key_shares
        assert isinstance(states[port].receive_key_share(share), KeyShareReceived)
        assert push.message.ciphertext is not None
        decrypted = states[port].decrypt(push.message.ciphertext, push.message.id)
        assert isinstance(decrypted, Decrypted) and decrypted.text == "across nodes"


def test_a_new_device_is_announced_on_every_node_of_a_cluster() -> None:
    """Alice's device on one node, Bob's on the other: each hears of the other's
    new devices through the news; a connection that is no device hears nothing."""
    cluster = Cluster()
    alice, bob = cluster_signed_up(cluster)
    plain = cluster.client("alice", NODE_B, 5004)  # alice, version 1: never a device
    cluster.run()
    plain.login("alice", CLUSTER_PASSWORD)
    cluster.run()
    devices = {}
    for conn, name in ((alice, "alice"), (bob, "bob")):
        assert conn.token is not None
        state = CryptoState.create(name, session_id(token_hash(conn.token)))
        upload = state.keys_to_upload(published_one_time_keys=0)
        assert upload is not None
        conn.upload_keys(upload)
        cluster.run(0.5)  # under any timer: the news brought it
        devices[name] = state.device_keys
    added = [push for push in alice.take_device_pushes() if isinstance(push, m.DeviceAdded)]
    assert [push.device for push in added] == [devices["bob"]]
    assert plain.take_device_pushes() == []
    assert not any(isinstance(e, m.DeviceAdded) for e in cluster.events[("127.0.0.2", 5004)])


class BusCluster(Cluster):
    """The cluster, its news carried as the bus carries them: encoded into bodies
    and parsed back on the other node."""

    def deliver_news(self) -> bool:
        published, self.published = self.published, []
        for node_address, news in published:
            for body in news_bodies(news):
                said = parse(str(node_address), body)
                assert isinstance(said, News)
                for other_address, other in self.nodes.items():
                    if other_address != node_address:
                        other.receive_news(said.node, said.news, self.now)
        return bool(published)


def test_one_time_keys_low_reaches_the_device_on_another_node_and_only_it() -> None:
    """Alice claims on one node a key of Bob's phone, connected to the other: the
    news names the phone, and only its connections there hear that its keys ran
    low (not Bob's laptop beside it); it uploads more at once."""
    cluster = BusCluster()
    alice, bob = cluster_signed_up(cluster)
    laptop = cluster.client("bob", NODE_B, 5003)
    cluster.run()
    laptop.login("bob", CLUSTER_PASSWORD)
    cluster.run()
    states = {}
    for conn, name, port in ((alice, "alice", 5001), (bob, "bob", 5002), (laptop, "bob", 5003)):
        assert conn.token is not None
        state = CryptoState.create(name, session_id(token_hash(conn.token)))
        upload = state.keys_to_upload(published_one_time_keys=0)
        assert upload is not None
        conn.upload_keys(upload)
        cluster.run()
        [stored] = cluster.received(port, m.KeysStored)
        assert stored.one_time_keys == ONE_TIME_KEYS_TARGET
        state.mark_keys_published()
        states[port] = state
    for conn in (alice, bob, laptop):
        conn.take_device_pushes()  # (the device_added of the others)
    phone = states[5002].device_id
    alice.claim_keys([phone])
    cluster.run(0.5)  # under any timer: the news brought it
    [claimed] = cluster.received(5001, m.ClaimedKeys)[-1].keys
    assert claimed.device.device_id == phone
    assert bob.take_device_pushes() == [
        m.OneTimeKeysLow(one_time_keys=ONE_TIME_KEYS_TARGET - 1, fallback_used=False)
    ]
    assert laptop.take_device_pushes() == []
    assert alice.take_device_pushes() == []
    # What the phone does with it: upload more, back to the target.
    upload = states[5002].keys_to_upload(published_one_time_keys=ONE_TIME_KEYS_TARGET - 1)
    assert upload is not None and len(upload.one_time_keys) == 1
    bob.upload_keys(upload)
    cluster.run()
    assert cluster.received(5002, m.KeysStored)[-1].one_time_keys == ONE_TIME_KEYS_TARGET


def test_a_friend_claiming_in_a_loop_drains_no_one_time_keys_and_is_slowed(
    tmp_path: Path,
) -> None:
    """Claims of one device's one-time keys are within its own budget (10, then
    one every 6 s; the fallback key answers beyond it, to anyone), and a claimer's
    claims within theirs (``rate_limited`` beyond it, nothing claimed)."""
    world = ChatWorld(
        StoreFactory("memory", tmp_path / "db.sqlite3"),
        seed=26,
        config=test_config(key_claims_per_user=RateLimit(burst=30, interval=1.0)),
    )
    (alice,) = signed_up_devices(world, "alice", 1)
    (bob,) = signed_up_devices(world, "bob", 1)
    (carol,) = signed_up_devices(world, "carol", 1)
    world.befriend(alice.user, bob.user)
    world.befriend(carol.user, bob.user)

    def claim(device: Device) -> OneTimeKey:
        answer = device.user.ok(device.user.conn.claim_keys([bob.device_id]), m.ClaimedKeys)
        [key] = answer.keys
        return key.one_time_key

    taken = [claim(alice) for _ in range(10)]
    assert not any(key.fallback for key in taken) and len({k.key_id for k in taken}) == 10
    # Past the device's budget: its fallback key, to her and to anyone else; the
    # rest of its one-time keys stay for later.
    assert all(claim(alice).fallback for _ in range(5))
    assert claim(carol).fallback
    assert world.store.key_counts(bob.device_id) == (ONE_TIME_KEYS_TARGET - 10, True)
    # Past the claimer's own budget (30 here): refused, nothing claimed; carol's
    # claims are hers.
    for _ in range(30 - 15):
        claim(alice)
    refused = alice.user.refused(
        alice.user.conn.claim_keys([bob.device_id]), ErrorCode.RATE_LIMITED
    )
    assert "claiming keys too fast" in refused.message
    assert claim(carol).fallback
    # Time gives both back: a one-time key again after 6 s.
    world.net.run_for(6.0)
    again = claim(alice)
    assert not again.fallback and again.key_id not in {key.key_id for key in taken}
    assert world.store.key_counts(bob.device_id) == (ONE_TIME_KEYS_TARGET - 11, True)
    world.check_server_health()


@settings(max_examples=200)
@given(message=strategies.chat_messages.filter(lambda message: message.ciphertext is not None))
def test_the_server_builds_an_accepted_encrypted_message_as_the_class_would(
    message: m.ChatMessage,
) -> None:
    # The handler builds it without its checks (every value was checked before):
    # the same message, every field set, the same bytes on the wire.
    assert message.ciphertext is not None
    built = _encrypted_message(
        message.id, message.sender, message.to, message.sent_at, message.ciphertext
    )
    assert built == message and repr(built) == repr(message)
    assert attrs.asdict(built, recurse=False) == attrs.asdict(message, recurse=False)
    assert encode(m.MessageDelivered(message=built)) == encode(m.MessageDelivered(message=message))
