"""What the end-to-end tests share: a key server as the chat server will keep one
(device records, one-time keys handed out once, fallback keys), and a device made
and registered with it in one call."""

from __future__ import annotations

import itertools

import attrs

from udpchat_proto.e2ee import (
    ClaimedKey,
    CryptoState,
    DeviceKeys,
    DeviceRef,
    DeviceSet,
    OneTimeKey,
    Outgoing,
)

_ids = itertools.count(1)


def new_device_id() -> bytes:
    """A fresh 16-byte device id (a login session's id), distinct in a test run."""
    return next(_ids).to_bytes(16, "big")


@attrs.define
class KeyServer:
    """Device records and one-time keys, as the server keeps them."""

    devices: dict[DeviceRef, DeviceKeys] = attrs.Factory(dict)
    one_time: dict[DeviceRef, list[OneTimeKey]] = attrs.Factory(dict)
    fallback: dict[DeviceRef, OneTimeKey] = attrs.Factory(dict)
    fallback_used: set[DeviceRef] = attrs.Factory(set)

    def login(self, user: str) -> CryptoState:
        """A new device of ``user``, its keys uploaded."""
        state = CryptoState.create(user, new_device_id())
        self.top_up(state)
        return state

    def top_up(self, state: CryptoState) -> None:
        """Upload what the device says it needs, as its client would."""
        ref = (state.user, state.device_id)
        upload = state.keys_to_upload(
            published_one_time_keys=len(self.one_time.get(ref, [])),
            fallback_used=ref in self.fallback_used,
        )
        if upload is None:
            return
        self.devices[ref] = upload.device_keys
        self.one_time.setdefault(ref, []).extend(upload.one_time_keys)
        if upload.fallback_key is not None:
            self.fallback[ref] = upload.fallback_key
            self.fallback_used.discard(ref)
        state.mark_keys_published()

    def logout(self, ref: DeviceRef) -> None:
        """The device ended: its keys are deleted."""
        self.devices.pop(ref, None)
        self.one_time.pop(ref, None)
        self.fallback.pop(ref, None)

    def claim(self, refs: tuple[DeviceRef, ...]) -> list[ClaimedKey]:
        """One key per device: a one-time key (removed), else its fallback key."""
        answers = []
        for ref in refs:
            keys = self.one_time.get(ref)
            if keys:
                key = keys.pop(0)
            else:
                key = self.fallback[ref]
                self.fallback_used.add(ref)
            answers.append(ClaimedKey(device=self.devices[ref], one_time_key=key))
        return answers

    def device_set(self, conversation: str, users: set[str], version: int) -> DeviceSet:
        """The conversation's devices: every device of every member."""
        return DeviceSet(
            conversation=conversation,
            version=version,
            devices=tuple(
                keys for (user, _), keys in sorted(self.devices.items()) if user in users
            ),
        )

    def send(
        self, sender: CryptoState, device_set: DeviceSet, text: str, message_id: bytes, at: float
    ) -> Outgoing:
        """Plan, claim and encrypt, as a client does (the server accepts it)."""
        plan = sender.plan_send(device_set, at)
        out = sender.encrypt(device_set, text, message_id, at, self.claim(plan.claims))
        sender.accepted(out)
        return out
