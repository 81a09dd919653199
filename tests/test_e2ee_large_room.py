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

from tests.chat_helpers import ChatWorld, StoreFactory, test_config
from tests.test_e2ee_wire import Device
from udpchat_proto import messages as m

ROOM = "#full"
MEMBERS = 256
DEVICES_EACH = 2


@pytest.fixture(params=["memory", "sqlite"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChatWorld]:
    chat = ChatWorld(
        StoreFactory(request.param, tmp_path / "db.sqlite3"),
        seed=256,
        config=test_config(max_room_members=MEMBERS),
    )
    yield chat
    chat.check_server_health()


def full_room(world: ChatWorld) -> list[list[Device]]:
    """MEMBERS users in ROOM, each with DEVICES_EACH devices whose keys are uploaded."""
    members = []
    for n in range(MEMBERS):
        name = f"member{n:03d}"
        first = world.user(name, device="0")
        first.connect()
        first.ok(first.conn.register(name, first.password))
        devices = [Device(world, first).log_in()]
        devices += [
            Device(world, world.user(name, device=str(d))).log_in() for d in range(1, DEVICES_EACH)
        ]
        first.ok(first.conn.join_room(ROOM))
        members.append(devices)
    return members


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


def test_a_rotation_in_a_room_of_256_members_of_two_devices_reaches_every_device(
    world: ChatWorld,
) -> None:
    members = full_room(world)
    everyone = [device for devices in members for device in devices]
    sender = members[0][0]
    others = [device for device in everyone if device is not sender]
    assert len(others) == MEMBERS * DEVICES_EACH - 1

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
    assert world.server._staging.held_bytes == 0  # noqa: SLF001
