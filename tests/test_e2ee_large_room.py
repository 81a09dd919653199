"""A full room, end to end through the real server (issue 26): 256 members with two
devices each. A rotation's 511 key shares do not fit one request (the server takes
64 KiB at most): they are staged in ``share_keys`` batches ahead of the send, and
every one of the other 511 devices decrypts the message, its share taken first.
Real CryptoStates, the real ChatServer on the simulated network, both stores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chat_helpers import ChatUser, ChatWorld, StoreFactory, test_config
from tests.test_e2ee_wire import Device
from udpchat_proto import messages as m
from udpchat_proto.e2ee import CryptoState

ROOM = "#full"
MEMBERS = 256
DEVICES_EACH = 2


#: The full room on the memory store; on SQLite a room of 40 (80 devices: still five
#: times the shares one request carries, so staged the same way) keeps the suite's
#: time (the full room costs ~17 s of CPU on either).
SIZES = {"memory": MEMBERS, "sqlite": 40}


@pytest.fixture(params=sorted(SIZES))
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def world(store_kind: str, tmp_path: Path) -> Iterator[ChatWorld]:
    chat = ChatWorld(
        StoreFactory(store_kind, tmp_path / "db.sqlite3"),
        seed=256,
        # Every login at once: the password hashes may all queue.
        config=test_config(
            max_room_members=MEMBERS,
            max_pending_hash_jobs=MEMBERS * DEVICES_EACH,
            max_hash_jobs_per_address=MEMBERS * DEVICES_EACH,
            max_hash_jobs_per_user=DEVICES_EACH,
        ),
    )
    yield chat
    chat.check_server_health()


def full_room(world: ChatWorld, size: int) -> list[list[Device]]:
    """``size`` users in ROOM, each with DEVICES_EACH devices whose keys are uploaded.

    Each step for all devices at once (what Device.log_in does one by one): the
    simulated network then runs a few dozen rounds, not thousands."""
    names = [f"member{n:03d}" for n in range(size)]
    users = [[world.user(name, device=str(d)) for d in range(DEVICES_EACH)] for name in names]
    everyone = [user for devices in users for user in devices]
    for user in everyone:
        user.connect(wait=False)
    world.run_until(lambda: all(user.conn.is_connected for user in everyone), what="connected")
    firsts = [devices[0] for devices in users]
    _all_ok([(user, user.conn.register(user.name, user.password)) for user in firsts])
    answers = _all_ok([(user, user.conn.login(user.name, user.password)) for user in everyone])
    members = []
    for devices in users:
        made = []
        for user in devices:
            answer = answers[user.label]
            assert isinstance(answer, m.LoggedIn)
            user.token = answer.token
            device = Device(world, user)
            device.state = CryptoState.create(user.name, device.device_id)
            made.append(device)
        members.append(made)
    uploads = []
    for device in (device for devices in members for device in devices):
        assert device.state is not None
        upload = device.state.keys_to_upload(published_one_time_keys=0)
        assert upload is not None
        uploads.append((device.user, device.user.conn.upload_keys(upload)))
    _all_ok(uploads)
    for device in (device for devices in members for device in devices):
        assert device.state is not None
        device.state.mark_keys_published()
    _all_ok([(user, user.conn.join_room(ROOM)) for user in firsts])
    world.settle()
    return members


def _all_ok(requests: list[tuple[ChatUser, int]]) -> dict[str, m.Response]:
    """Run until every request is answered, none refused; the answers by user label."""
    world = requests[0][0].world
    world.run_until(
        lambda: all(user.response(rid) is not None for user, rid in requests),
        max_time=120.0,
        what="every request answered",
    )
    answers: dict[str, m.Response] = {}
    for user, rid in requests:
        answer = user.response(rid)
        assert answer is not None and not isinstance(answer, m.ErrorResponse), answer
        answers[user.label] = answer
    return answers


def read_all(world: ChatWorld, devices: list[Device], count: int) -> None:
    """Every device has decrypted ``count`` messages (each share taken first)."""
    world.run_until(
        lambda: all(
            sum(isinstance(e, m.MessageDelivered) for e in d.user.events()) >= count
            for d in devices
        ),
        max_time=120.0,
        what="every device is delivered the message",
    )
    for device in devices:
        device.read()  # asserts each share opens and the message decrypts


@pytest.mark.slow  # (the full room: tens of seconds, started first with -n)
def test_a_rotation_in_a_room_of_256_members_of_two_devices_reaches_every_device(
    world: ChatWorld, store_kind: str
) -> None:
    size = SIZES[store_kind]
    members = full_room(world, size)
    everyone = [device for devices in members for device in devices]
    sender = members[0][0]
    others = [device for device in everyone if device is not sender]
    assert len(others) == size * DEVICES_EACH - 1

    accepted, refusals = sender.send(ROOM, "to all 511")
    assert refusals == 0
    stored = world.store.get_message(accepted.message_id)
    assert stored is not None and stored.message.text == ""
    read_all(world, others, 1)
    assert all(device.texts == ["to all 511"] for device in others)

    # A device leaves: the next send rotates, 510 shares on the Olm sessions made.
    gone = members[-1][-1]
    gone.user.ok(gone.user.conn.logout())
    others.remove(gone)
    _accepted, refusals = sender.send(ROOM, "after the rotation")
    assert refusals == 0
    read_all(world, others, 2)
    assert all(device.texts == ["to all 511", "after the rotation"] for device in others)
    assert gone.texts == ["to all 511"]
    # Nothing staged is left behind once the sends were taken.
    assert world.server._staging.held_bytes == 0
