"""End-to-end encryption's cost on a client (vodozemac's Olm and Megolm, and the
bookkeeping of ``udpchat_proto.e2ee`` around them).

Run: ``.venv/bin/python benchmarks/e2ee.py [--quick] [--json] [--runs 5]``. Prints
medians over the runs, in CPU time of this process (``time.process_time``):

* **per message**: a sender's ``encrypt`` and a receiver's ``decrypt`` of a typical
  text, over whole Megolm sessions (100 messages, then a rotation: its key share
  and the receiver taking it are in the figure, amortised);
* **sharing a key with a room** of 256 members of two devices each: the sender
  opens an Olm session to each of the 512 devices (a claimed one-time key each)
  and encrypts a share for each, plus the message; the same again once the
  sessions exist (a rotation); and a receiver taking its share (a new inbound Olm
  session from a pre-key message).

The devices are made and their keys uploaded before the clock starts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable

from udpchat_proto.e2ee import (
    ClaimedKey,
    CryptoState,
    Decrypted,
    DeviceSet,
    KeyShareReceived,
    OneTimeKey,
)

TEXT = "Hello Bob! Are we still on for lunch tomorrow at noon? 🍜"
ROOM = "#bench"
_ids = itertools.count(1)


class Member:
    """A device with its uploaded one-time keys, as the server would hold them."""

    def __init__(self, user: str) -> None:
        self.state = CryptoState.create(user, next(_ids).to_bytes(16, "big"))
        upload = self.state.keys_to_upload(published_one_time_keys=0)
        assert upload is not None
        self.state.mark_keys_published()
        self.one_time: list[OneTimeKey] = list(upload.one_time_keys)

    def claim(self) -> ClaimedKey:
        return ClaimedKey(device=self.state.device_keys, one_time_key=self.one_time.pop())


def cpu(func: Callable[[], object]) -> float:
    start = time.process_time()
    func()
    return time.process_time() - start


def per_message(sessions: int) -> float:
    """CPU seconds per message (encrypt + decrypt), over ``sessions`` sessions."""
    alice, bob = Member("alice"), Member("bob")
    devices = DeviceSet(
        conversation=ROOM, version=1, devices=(alice.state.device_keys, bob.state.device_keys)
    )
    count = sessions * 100

    def run() -> None:
        for n in range(count):
            message_id = n.to_bytes(16, "big")
            plan = alice.state.plan_send(devices, 0.0)
            claims = [bob.claim()] if plan.claims else []
            out = alice.state.encrypt(devices, TEXT, message_id, 0.0, claims)
            alice.state.accepted(out)
            for share in out.key_shares:
                assert isinstance(bob.state.receive_key_share(share), KeyShareReceived)
            assert isinstance(bob.state.decrypt(out.message, message_id), Decrypted)

    return cpu(run) / count


def room_share(members: list[Member]) -> tuple[float, float, float]:
    """CPU seconds: a first share to every device of the room (Olm sessions made),
    a rotation's share (sessions exist), a receiver taking its share."""
    sender = Member("sender")
    devices = DeviceSet(
        conversation=ROOM,
        version=1,
        devices=(sender.state.device_keys, *(m.state.device_keys for m in members)),
    )
    claims = [m.claim() for m in members]  # (the server's answer, before the clock)
    outs = []

    def first() -> None:
        plan = sender.state.plan_send(devices, 0.0)
        assert len(plan.claims) == len(members)
        outs.append(sender.state.encrypt(devices, TEXT, bytes(16), 0.0, claims))

    first_cost = cpu(first)
    sender.state.accepted(outs[0])
    later = DeviceSet(conversation=ROOM, version=2, devices=devices.devices)

    def rotation() -> None:
        # (7 days later: a new session, shared over the Olm sessions that exist)
        plan = sender.state.plan_send(later, 8 * 86400.0)
        assert plan.rotate and not plan.claims
        sender.state.encrypt(later, TEXT, bytes(15) + b"\x01", 8 * 86400.0)

    rotation_cost = cpu(rotation)
    share = outs[0].key_shares[0]
    receiver = members[0].state
    take_cost = cpu(lambda: receiver.receive_key_share(share))
    return first_cost, rotation_cost, take_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small room, few runs")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    runs = 2 if args.quick else args.runs
    users = 8 if args.quick else 256
    sessions = 1 if args.quick else 10

    message = statistics.median(per_message(sessions) for _ in range(runs))
    # Two devices per member; each run's sender claims one one-time key of each.
    members = [Member(f"user{i}") for i in range(users) for _ in range(2)]
    results = [room_share(members) for _ in range(runs)]
    first = statistics.median(r[0] for r in results)
    rotation = statistics.median(r[1] for r in results)
    take = statistics.median(r[2] for r in results)
    summary = {
        "runs": runs,
        "message_us": round(message * 1e6, 1),
        "room_members": users,
        "room_devices": len(members),
        "first_share_ms": round(first * 1e3, 1),
        "rotation_share_ms": round(rotation * 1e3, 1),
        "take_share_us": round(take * 1e6, 1),
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"median of {runs} runs, CPU time of this process")
    print(f"  per message, encrypt + decrypt ({sessions} x 100):  {summary['message_us']:8.1f} us")
    print(
        f"  key to a room of {users} members x 2 devices ({len(members)}), "
        f"Olm sessions made:  {summary['first_share_ms']:8.1f} ms"
    )
    print(
        f"  the same on a rotation (sessions exist):       {summary['rotation_share_ms']:8.1f} ms"
    )
    print(f"  a receiver taking its share (new Olm session): {summary['take_share_us']:8.1f} us")


if __name__ == "__main__":
    main()
