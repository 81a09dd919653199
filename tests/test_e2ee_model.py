"""End-to-end encryption against a model server, in any order of events (issue 26):
members join and leave rooms, devices log in, log out or are revoked, devices send
(sometimes on a stale view of the conversation's devices, which the server refuses
with ``devices_changed``), are restarted from their saved state, time passes.

The model server keeps what the chat server will: members, device records and
one-time keys, each conversation's device set and its version, and each device's
ordered, exactly-once stream (key shares ahead of the messages that need them).

The promises: every message is readable on exactly the devices that were its
members' devices when it was sent (and its sender's), on no other (an ended
device, a later one, a non-member: their states are kept to try); no delivery is
ever undecryptable (every key share taken, every message decrypted on arrival).
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from tests.e2ee_helpers import KeyServer
from udpchat_proto.e2ee import (
    CryptoState,
    Decrypted,
    DeviceRef,
    DeviceSet,
    Dropped,
    EncryptedMessage,
    KeyShare,
    KeyShareReceived,
    direct_conversation,
)

USERS = ("ann", "ben", "cat")
ROOMS = ("#one", "#two")
DIRECT = direct_conversation("ann", "ben")
KEY = bytes(range(32))
DAY = 24 * 3600.0


@attrs.frozen
class Sent:
    message: EncryptedMessage
    message_id: bytes
    text: str
    sender: DeviceRef
    readers: frozenset[DeviceRef]
    """The devices of the conversation's members when it was accepted."""


class E2eeModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.keys = KeyServer()
        self.members: dict[str, set[str]] = {room: set() for room in ROOMS}
        self.members[DIRECT] = {"ann", "ben"}
        self.versions = dict.fromkeys(self.members, 0)
        self.live: dict[DeviceRef, CryptoState] = {}
        self.every: dict[DeviceRef, CryptoState] = {}  # (ended ones too: they try)
        self.streams: dict[DeviceRef, list[tuple[Any, ...]]] = {}
        self.views: dict[tuple[DeviceRef, str], DeviceSet] = {}
        self.sent: list[Sent] = []
        self.at = 1_000_000.0
        self.count = 0
        self.refusals = 0

    # --- the server -----------------------------------------------------------

    def changed(self, user: str) -> None:
        """A device of ``user`` or their membership changed: every conversation
        they are in has a new device set."""
        for conversation, members in self.members.items():
            if user in members:
                self.versions[conversation] += 1

    def device_set(self, conversation: str) -> DeviceSet:
        return self.keys.device_set(
            conversation, self.members[conversation], self.versions[conversation]
        )

    def submit(self, ref: DeviceRef, conversation: str, text: str) -> None:
        """A client's send, with its devices_changed retries."""
        device = self.live[ref]
        self.count += 1
        message_id = self.count.to_bytes(16, "big")
        for _attempt in range(3):
            view = self.views.get((ref, conversation)) or self.device_set(conversation)
            plan = device.plan_send(view, self.at)
            out = device.encrypt(view, text, message_id, self.at, self.keys.claim(plan.claims))
            current = self.device_set(conversation)
            if out.message.device_set_version != current.version:
                self.refusals += 1  # devices_changed: the client takes the new set
                self.views[ref, conversation] = current
                continue
            self.views[ref, conversation] = current
            readers = {(k.user, k.device_id) for k in current.devices}
            assert {(s.recipient, s.recipient_device) for s in out.key_shares} <= readers
            for share in out.key_shares:
                self.streams[share.recipient, share.recipient_device].append(("share", share))
            for reader in readers - {ref}:
                self.streams[reader].append(("message", out.message, message_id, text))
            device.accepted(out)
            self.sent.append(Sent(out.message, message_id, text, ref, frozenset(readers | {ref})))
            return
        raise AssertionError("three refusals in a row with nothing changing in between")

    # --- rules ----------------------------------------------------------------

    @initialize()
    def everyone_in_one(self) -> None:
        # (a start where sends can happen: each user a device, all in #one)
        for user in USERS:
            self.login(user)
            self.membership(user, "#one", joins=True)

    @rule(user=st.sampled_from(USERS))
    def login(self, user: str) -> None:
        device = self.keys.login(user)
        ref = (user, device.device_id)
        self.live[ref] = self.every[ref] = device
        self.streams[ref] = []
        self.changed(user)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), revoked=st.booleans())
    def end_device(self, data: st.DataObject, revoked: bool) -> None:
        # (logout, revoke, logout --all, expiry: the server deletes its keys alike;
        # ``revoked`` only says whether the device heard of it: its stream is kept
        # unread either way, as a stolen device's would be)
        ref = data.draw(st.sampled_from(sorted(self.live)))
        del self.live[ref]
        self.keys.logout(ref)
        if not revoked:
            self.deliver_to(ref, self.every[ref])
        self.changed(ref[0])

    @rule(user=st.sampled_from(USERS), room=st.sampled_from(ROOMS), joins=st.booleans())
    def membership(self, user: str, room: str, joins: bool) -> None:
        if (user in self.members[room]) != joins:
            self.members[room].symmetric_difference_update({user})
            self.versions[room] += 1  # (only this room's set changed)

    @precondition(lambda self: self.live)
    @rule(
        data=st.data(),
        conversation=st.sampled_from((*ROOMS, DIRECT)),
        fresh=st.sampled_from((False, False, True)),
        count=st.integers(1, 3),
    )
    def send(self, data: st.DataObject, conversation: str, fresh: bool, count: int) -> None:
        # (fresh: the client asks for the device set first; otherwise it uses the
        # one it last saw, and the server refuses a stale one: devices_changed)
        senders = sorted(r for r in self.live if r[0] in self.members[conversation])
        if not senders:
            return  # (the server answers not_a_member: nothing to encrypt)
        ref = data.draw(st.sampled_from(senders))
        if conversation == DIRECT and not any(
            keys.user != ref[0] for keys in self.device_set(conversation).devices
        ):
            return  # (no_device: the other has no device to receive it)
        if fresh:
            self.views.pop((ref, conversation), None)
        for _ in range(count):
            self.submit(ref, conversation, f"message {self.count + 1} from {ref[0]}")

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(sorted(self.live)))
        self.deliver_to(ref, self.live[ref])

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(sorted(self.live)))
        self.deliver_to(ref, self.live[ref])
        state = CryptoState.from_bytes(self.live[ref].to_bytes(KEY), KEY)
        self.live[ref] = self.every[ref] = state

    @rule(days=st.sampled_from((1, 3, 8)))
    def time_passes(self, days: int) -> None:
        self.at += days * DAY

    def deliver_to(self, ref: DeviceRef, device: CryptoState) -> None:
        """The device's stream, in order, once: nothing may fail to decrypt."""
        stream, self.streams[ref] = self.streams[ref], []
        for item in stream:
            if item[0] == "share":
                share: KeyShare = item[1]
                assert isinstance(device.receive_key_share(share), KeyShareReceived)
            else:
                _, message, message_id, text = item
                result = device.decrypt(message, message_id)
                assert isinstance(result, Decrypted), f"undecryptable: {result}"
                assert result.text == text
        if ref in self.live:
            self.keys.top_up(device)

    def teardown(self) -> None:
        for ref, device in self.every.items():
            self.deliver_to(ref, device)
        for sent in self.sent:
            for ref, device in self.every.items():
                result = device.decrypt(sent.message, sent.message_id)
                if ref in sent.readers:
                    assert isinstance(result, Decrypted) and result.text == sent.text
                else:
                    assert isinstance(result, Dropped), (ref, sent)
                    assert result.reason == "unknown_session", result


# Tens of seconds: started first with -n (tests/conftest.py), not left to end the run.
pytestmark = pytest.mark.slow

E2eeModel.TestCase.settings = settings(settings(), stateful_step_count=40, deadline=None)
test_every_message_is_readable_on_exactly_its_devices = E2eeModel.TestCase
