"""End-to-end encryption against the real server, in any order of events (issue 26
phase 2a): devices log in and out, members join and leave the room, devices send
to the room and to friends. Real CryptoStates, the real ChatServer on the
simulated network.

The promises: every device decrypts every message it is delivered (each key
share taken first), once, in order; it is delivered exactly the messages whose
conversation's devices it was among when they were accepted (its own aside); a
direct message to a user with no device is refused ``no_device``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.chat_helpers import GENEROUS, ChatWorld, StoreFactory, test_config
from tests.test_e2ee_wire import Device
from udpchat_proto.e2ee import direct_conversation
from udpchat_proto.errors import ErrorCode

USERS = ("ann", "ben", "cat")
ROOM = "#r"


class ServerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.world = ChatWorld(
            StoreFactory("memory", Path(self._dir.name) / "db"),
            seed=2626,
            config=test_config(logins_per_user=GENEROUS),
        )
        self.devices: dict[str, list[Device]] = {user: [] for user in USERS}
        self.members: set[str] = set()
        self.expected: dict[int, list[bytes]] = {}
        """Per device (by id()), the message ids it must be delivered, in order."""
        self.logins = 0
        self.texts = 0

    @initialize()
    def start(self) -> None:
        for user in USERS:
            first = self.world.user(user, device="0")
            first.connect()
            first.ok(first.conn.register(user, first.password))
            device = Device(self.world, first).log_in()
            self.devices[user].append(device)
            self.expected[id(device)] = []
        ann, ben, cat = (self.devices[user][0].user for user in USERS)
        self.world.befriend(ann, ben)
        self.world.befriend(ann, cat)
        self.world.befriend(ben, cat)

    def teardown(self) -> None:
        self.world.check_server_health()
        self._dir.cleanup()

    def live(self) -> list[Device]:
        return [device for devices in self.devices.values() for device in devices]

    @rule(user=st.sampled_from(USERS))
    def log_in(self, user: str) -> None:
        self.logins += 1
        device = Device(self.world, self.world.user(user, device=f"d{self.logins}")).log_in()
        self.devices[user].append(device)
        self.expected[id(device)] = []

    @precondition(lambda self: any(len(devices) > 0 for devices in self.devices.values()))
    @rule(data=st.data())
    def log_out(self, data: st.DataObject) -> None:
        device = data.draw(st.sampled_from(self.live()))
        self.check(device)
        device.user.ok(device.user.conn.logout())
        self.devices[device.name].remove(device)

    @precondition(lambda self: any(self.devices.values()))
    @rule(data=st.data(), join=st.booleans())
    def membership(self, data: st.DataObject, join: bool) -> None:
        device = data.draw(st.sampled_from(self.live()))
        conn = device.user.conn
        if join:
            device.user.ok(conn.join_room(ROOM))
            self.members.add(device.name)
        elif device.name in self.members:
            device.user.ok(conn.leave_room(ROOM))
            self.members.discard(device.name)

    @precondition(lambda self: any(self.devices.values()))
    @rule(data=st.data(), to=st.sampled_from((*USERS, ROOM)))
    def send(self, data: st.DataObject, to: str) -> None:
        sender = data.draw(st.sampled_from(self.live()))
        if to == sender.name or (to == ROOM and sender.name not in self.members):
            return
        self.texts += 1
        text = f"{self.texts} from {sender.user.label}"
        readers = [
            device
            for user in ((*self.members,) if to == ROOM else (sender.name, to))
            for device in self.devices[user]
            if device is not sender
        ]
        if to != ROOM and not self.devices[to]:
            device_set = sender.device_set(to)
            assert direct_conversation(sender.name, to) == device_set.conversation
            message_id = (10**9 + self.texts).to_bytes(16, "big")
            out = sender.encrypt(device_set, text, message_id)
            sender.user.refused(
                sender.user.conn.send_encrypted(
                    to, out.message, out.key_shares, message_id=message_id
                ),
                ErrorCode.NO_DEVICE,
            )
            return
        # Sometimes on the set it last saw: a stale one is refused and sent again.
        accepted, _refusals = sender.send(to, text)
        for device in readers:
            self.expected[id(device)].append(accepted.message_id)

    def check(self, device: Device) -> None:
        device.read()  # every share taken, every message decrypted (asserted there)
        assert device.ids == self.expected[id(device)], device.user.label

    @invariant()
    def every_device_has_exactly_its_messages(self) -> None:
        self.world.settle(1.0)
        for device in self.live():
            self.check(device)


# Tens of seconds: started first with -n (tests/conftest.py), not left to end the run.
pytestmark = pytest.mark.slow

ServerModel.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
TestServerModel = ServerModel.TestCase
