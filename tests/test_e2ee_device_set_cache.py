"""The server keeps a conversation's device set between encrypted sends
(``Caches.device_set``): every change of a set makes the next send see the new
one, whatever changed it (keys uploaded, a session ended any way, an account
deleted or disabled, a join, a leave), and a cluster's node sees another node's
change at its next send (it keeps a set for one batch only)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from tests.chat_helpers import ChatWorld, StoreFactory, test_config
from tests.test_cluster_hints import NODE_A, NODE_B, Cluster
from tests.test_cluster_hints import PASSWORD as CLUSTER_PASSWORD
from tests.test_cluster_hints import signed_up as cluster_signed_up
from tests.test_e2ee_wire import Device, signed_up_devices
from tests.test_store import PASSWORD as STORED_PASSWORD
from udpchat_proto import messages as m
from udpchat_proto.chat.client import ClientConnection
from udpchat_proto.chat.devicesets import current_device_set
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.store import Store, WriteTrackingStore
from udpchat_proto.chat.tokens import session_id, token_hash
from udpchat_proto.e2ee import ClaimedKey, CryptoState, DeviceKeys, DeviceSet
from udpchat_proto.errors import ErrorCode

ROOM = "#kept"
LIFETIME = 1000.0
"""Seconds an unused session lives here (the expiry's case)."""

EVENTS = [
    "upload",
    "logout",
    "revoke",
    "logout_all",
    "change_password",
    "expiry",
    "delete_account",
    "disable",
    "join",
    "leave",
]


@pytest.fixture(params=["memory", "sqlite", "sqlite-staged"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChatWorld]:
    kind, _, staged = str(request.param).partition("-")
    chat = ChatWorld(
        StoreFactory(kind, tmp_path / "db.sqlite3"),
        seed=2626,
        config=test_config(session_lifetime=LIFETIME, session_sweep_interval=10.0),
        stage_messages=bool(staged),
    )
    yield chat
    chat.check_server_health()


def _change(
    world: ChatWorld, event: str, bob: Device, laptop: Device, carol: Device
) -> Device | None:
    """Make ``event`` happen to the room's set; the new device it brought, if any."""
    conn = bob.user.conn
    if event == "upload":
        return Device(world, world.user("bob", device="new")).log_in()
    if event == "logout":
        laptop.user.ok(laptop.user.conn.logout())
    elif event == "revoke":
        bob.user.ok(conn.revoke_session(laptop.device_id))
    elif event == "logout_all":
        bob.user.ok(conn.logout_all(), m.LoggedOutAll)
    elif event == "change_password":
        bob.user.ok(conn.change_password(bob.user.password, "another password"))
    elif event == "expiry":
        laptop.user.close()  # unused from now on: the sweep ends it
        world.step_wall_clock(LIFETIME + 1)
        world.settle(15.0)
    elif event == "delete_account":
        bob.user.ok(conn.delete_account(bob.user.password))
    elif event == "disable":
        assert world.server.disable_account("bob", world.net.now)
        world.settle()
    elif event == "join":
        carol.user.ok(carol.user.conn.join_room(ROOM))
    else:
        assert event == "leave"
        bob.user.ok(conn.leave_room(ROOM))
    return None


@pytest.mark.parametrize("event", EVENTS)
def test_each_change_of_a_set_is_seen_by_the_next_send(world: ChatWorld, event: str) -> None:
    (alice,) = signed_up_devices(world, "alice", 1)
    bob, laptop = signed_up_devices(world, "bob", 2)
    (carol,) = signed_up_devices(world, "carol", 1)
    for device in (alice, bob):
        device.user.ok(device.user.conn.join_room(ROOM))
    before = alice.device_set(ROOM)
    # Two sends on the set as it stands: the second finds it kept.
    for text in ("first", "second"):
        _accepted, refusals = alice.send(ROOM, text, device_set=before)
        assert refusals == 0
    ids = {device.device_id for device in (alice, bob, laptop, carol)}
    newcomer = _change(world, event, bob, laptop, carol)
    if newcomer is not None:
        ids.add(newcomer.device_id)
    # The set as the store has it now (read, not kept):
    store = world.store
    now = current_device_set(store, ROOM, store.room_members(ROOM))
    assert now.version != before.version
    # The send on the old set is refused devices_changed (the client then sends
    # again on the new one, by itself): the server did not take the kept set.
    accepted, refusals = alice.send(ROOM, "after", device_set=before)
    assert refusals == 1
    world.settle()
    stored_for = {
        device for device in ids if store.stored_for_device(device, [accepted.message_id])
    }
    assert stored_for == {keys.device_id for keys in now.devices}
    if newcomer is not None:
        assert newcomer.read() == ["after"]
    if event == "join":
        assert carol.read() == ["after"]


def test_the_generation_moves_on_with_what_may_change_a_set_only() -> None:
    store = MemoryStore()
    tracker = WriteTrackingStore(store)
    through = cast(Store, tracker)
    store.create_account("alice", STORED_PASSWORD, 1.0)
    start = tracker.device_generation
    through.create_session(b"\x01" * 32, "alice", 2.0)  # no keys yet: no device
    through.add_friendship("alice", "bob", 3.0)
    assert tracker.device_generation == start
    keys = DeviceKeys(
        user="alice",
        device_id=session_id(b"\x01" * 32),
        curve25519=b"\x02" * 32,
        ed25519=b"\x03" * 32,
        signature=b"\x04" * 64,
    )
    through.set_device_keys(b"\x01" * 32, keys, 4.0)
    assert tracker.device_generation == start + 1
    through.join_room(ROOM, "alice", 5.0)
    through.delete_session(b"\x01" * 32)
    assert tracker.device_generation == start + 3
    tracker.batch_lost()  # what was read meanwhile may be undone
    assert tracker.device_generation == start + 4


def test_a_device_uploaded_on_another_node_is_seen_by_the_next_send_on_this_one() -> None:
    """Alice on one node, Bob's devices on the other: Bob's new device, uploaded
    there, makes Alice's next send on the old set a devices_changed here."""
    cluster = Cluster()
    alice, bob = cluster_signed_up(cluster)
    states: dict[int, CryptoState] = {}

    def upload(port: int, conn: ClientConnection, name: str) -> None:
        token = conn.token
        assert token is not None
        state = CryptoState.create(name, session_id(token_hash(token)))
        upload = state.keys_to_upload(published_one_time_keys=0)
        assert upload is not None
        conn.upload_keys(upload)
        cluster.run()
        assert cluster.received(port, m.KeysStored)
        state.mark_keys_published()
        states[port] = state

    upload(5001, alice, "alice")
    upload(5002, bob, "bob")

    def send(text: str, message_id: bytes, device_set: DeviceSet) -> m.Response:
        sender = states[5001]
        plan = sender.plan_send(device_set, cluster.wall())
        claimed: tuple[ClaimedKey, ...] = ()
        if plan.claims:
            alice.claim_keys(ref[1] for ref in plan.claims)
            cluster.run()
            claimed = cluster.received(5001, m.ClaimedKeys)[-1].keys
        out = sender.encrypt(device_set, text, message_id, cluster.wall(), claimed)
        alice.send_encrypted("bob", out.message, out.key_shares, message_id=message_id)
        cluster.run(0.5)
        answer = [
            event
            for event in cluster.events[("127.0.0.2", 5001)]
            if isinstance(event, (m.MessageAccepted, m.ErrorResponse))
        ][-1]
        if isinstance(answer, m.MessageAccepted):
            sender.accepted(out)
        return answer

    alice.get_devices(conversation="alice,bob")
    cluster.run()
    before = cluster.received(5001, m.ConversationDevices)[-1].device_set
    assert isinstance(send("one", b"\x01" * 16, before), m.MessageAccepted)
    assert isinstance(send("two", b"\x02" * 16, before), m.MessageAccepted)
    # A node keeps a set for its batch only: the other nodes' writes pass it by.
    assert cluster.nodes[NODE_A]._caches._device_sets == {}
    laptop = cluster.client("bob", NODE_B, 5003)
    cluster.run()
    laptop.login("bob", CLUSTER_PASSWORD)
    cluster.run()
    upload(5003, laptop, "bob")
    refused = send("three", b"\x03" * 16, before)
    assert isinstance(refused, m.ErrorResponse)
    assert refused.code is ErrorCode.DEVICES_CHANGED
    assert refused.device_set is not None
    assert states[5003].device_id in {keys.device_id for keys in refused.device_set.devices}
