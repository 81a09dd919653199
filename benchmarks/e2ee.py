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
  session from a pre-key message);
* **the same room end to end through the server role** (``--server``): a real
  ``ChatServer`` (MemoryStore, or SQLite in a temporary directory) and 512 real
  ``ClientConnection`` s in this process, datagrams carried in memory, the clock
  a counter that jumps to the next timer. From the sender asking for the room's
  device set to the server's acceptance (claims of 511 keys, 511 shares encrypted,
  staged in ``share_keys`` batches and sent), then until every other device has
  taken its share and decrypted the message; the same for the next rotation. CPU
  of the whole process (server and clients), and the wire's bytes;
* **what encryption costs the server a message** (``--relay``): the server role
  alone (its calls timed apart from the clients'), SQLite in a temporary
  directory, 16 pairs of friends sending direct messages in bursts of 8 each,
  plain and then encrypted (a message with its record, the first with its key
  share), alternately on fresh servers: the ratio of server CPU a delivered
  message, encrypted over plain, each pair of runs's, then the median. The
  ciphertexts are made before the clock starts. ``relay.py`` measures the same
  through the real server process, where the shared machine's noise is larger.

The devices are made and their keys uploaded before the clock starts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from udpchat_proto import (
    ChatServer,
    ClientConnection,
    MemoryStore,
    RateLimit,
    ScryptParams,
    SeededRandomSource,
    ServerConfig,
    ServerKey,
    Store,
)
from udpchat_proto import messages as m
from udpchat_proto.chat import session_id, token_hash
from udpchat_proto.e2ee import (
    ClaimedKey,
    CryptoState,
    Decrypted,
    DeviceSet,
    KeyShareReceived,
    OneTimeKey,
    Outgoing,
    direct_conversation,
)
from udpchat_server.stores.sqlite import SQLiteStore

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


SERVER = ("127.0.0.1", 9999)
PASSWORD = "benchmark-password"
GENEROUS = RateLimit(burst=1_000_000, interval=1e-6)


class World:
    """A server and its clients in one process, datagrams carried in memory (as
    ``benchmarks/fanout.py``'s), each client a device with its crypto state."""

    def __init__(self, store: Store, members: int) -> None:
        self.now = 1_800_000_000.0
        config = ServerConfig(
            scrypt=ScryptParams(n=16, r=1, p=1),
            registrations_per_address=GENEROUS,
            message_rate=GENEROUS,
            request_rate=GENEROUS,
            logins_per_user=GENEROUS,
            max_room_members=members,
        )
        self.server = ChatServer(
            store=store,
            static_key=ServerKey.generate(SeededRandomSource(1)),
            clock=lambda: self.now,
            config=config,
            random=SeededRandomSource(2),
        )
        self.clients: dict[tuple[str, int], ClientConnection] = {}
        self.events: dict[tuple[str, int], list[object]] = {}
        self.bytes_in = 0
        """What the clients sent the server (datagrams, the transport's bytes too)."""
        self.server_cpu = 0.0
        """CPU seconds spent in the server's calls (the rest: clients and carrying)."""

    def add_client(self, index: int) -> tuple[str, int]:
        address = (f"127.0.{index // 250}.{index % 250 + 2}", 40000 + index)
        client = ClientConnection(server_address=SERVER, random=SeededRandomSource(1000 + index))
        client.connect(self.now)
        self.clients[address] = client
        self.events[address] = []
        return address

    def step(self) -> bool:
        moved = False
        for address, client in self.clients.items():
            for data, _ in client.datagrams_to_send(self.now):
                self.bytes_in += len(data)
                start = time.process_time()
                self.server.receive_datagram(data, address, self.now)
                self.server_cpu += time.process_time() - start
                moved = True
        start = time.process_time()
        batch = self.server.end_batch(self.now, run_hashes=True)
        self.server_cpu += time.process_time() - start
        for data, address in batch.datagrams:
            self.clients[address].receive_datagram(data, SERVER, self.now)
            moved = True
        for address, client in self.clients.items():
            while (event := client.next_event()) is not None:
                self.events[address].append(event)
        return moved

    def run_until(self, done: Callable[[], bool], max_steps: int = 20_000) -> None:
        for _ in range(max_steps):
            if done():
                return
            if not self.step():
                timers = [self.server.get_timer(), *(c.get_timer() for c in self.clients.values())]
                self.now = max(self.now, min(t for t in timers if t is not None))
                for client in self.clients.values():
                    client.handle_timer(self.now)
        raise RuntimeError("did not finish")

    def answer(self, address: tuple[str, int], request_id: int) -> object:
        self.run_until(
            lambda: any(getattr(e, "request_id", None) == request_id for e in self.events[address])
        )
        return next(e for e in self.events[address] if getattr(e, "request_id", None) == request_id)


class Device:
    """A logged-in connection with its keys uploaded."""

    def __init__(self, world: World, address: tuple[str, int], user: str) -> None:
        self.world, self.address, self.user = world, address, user
        self.state: CryptoState | None = None
        self.read = 0

    @property
    def conn(self) -> ClientConnection:
        return self.world.clients[self.address]

    def take(self) -> int:
        """Take this device's new deliveries (shares first); how many decrypted."""
        assert self.state is not None
        done = 0
        events = self.world.events[self.address]
        for event in events[self.read :]:
            if isinstance(event, m.MessageDelivered):
                for share in event.key_shares:
                    assert isinstance(self.state.receive_key_share(share), KeyShareReceived)
                assert event.message.ciphertext is not None
                result = self.state.decrypt(event.message.ciphertext, event.message.id)
                assert isinstance(result, Decrypted), result
                done += 1
        self.read = len(events)
        return done


def full_room(world: World, users: int) -> list[Device]:
    """``users`` members of ROOM with two devices each, keys uploaded."""
    devices: list[Device] = []
    for start in range(0, users, 16):  # the server queues at most 64 password hashes
        batch = []
        for n in range(start, min(start + 16, users)):
            for d in range(2):
                device = Device(world, world.add_client(2 * n + d), f"user{n}")
                if d == 0:  # (the second device logs in once the account exists)
                    world.answer(device.address, device.conn.register(device.user, PASSWORD))
                device.conn.login(device.user, PASSWORD)
                batch.append(device)

        def logged_in(batch: list[Device] = batch) -> bool:
            return all(d.conn.token is not None for d in batch)

        world.run_until(logged_in)
        devices += batch
    for device in devices:
        token = device.conn.token
        assert token is not None
        device_id = session_id(token_hash(token))  # a device is its login session
        device.state = CryptoState.create(device.user, device_id)
        upload = device.state.keys_to_upload(published_one_time_keys=0)
        assert upload is not None
        device.conn.upload_keys(upload)
        device.state.mark_keys_published()
        if device.address[1] % 2 == 0:
            device.conn.join_room(ROOM)
    world.run_until(lambda: all(d.conn.pending_requests == 0 for d in devices))
    return devices


def send_through_server(world: World, sender: Device, text: str, message_id: bytes) -> None:
    """What a client does: the device set, claims, encrypt, share_keys and send."""
    assert sender.state is not None
    found = world.answer(sender.address, sender.conn.get_devices(conversation=ROOM))
    assert isinstance(found, m.ConversationDevices)
    device_set = found.device_set
    plan = sender.state.plan_send(device_set, world.now)
    claimed: tuple[ClaimedKey, ...] = ()
    if plan.claims:
        answer = world.answer(sender.address, sender.conn.claim_keys(r[1] for r in plan.claims))
        assert isinstance(answer, m.ClaimedKeys)
        claimed = answer.keys
    out = sender.state.encrypt(device_set, text, message_id, world.now, claimed)
    accepted = world.answer(
        sender.address,
        sender.conn.send_encrypted(ROOM, out.message, out.key_shares, message_id=message_id),
    )
    assert isinstance(accepted, m.MessageAccepted), accepted
    sender.state.accepted(out)


def room_through_server(store: Store, users: int) -> dict[str, float]:
    """CPU seconds and bytes of a first share and of a rotation, end to end."""
    world = World(store, users)
    devices = full_room(world, users)
    sender, others = devices[0], devices[1:]
    figures: dict[str, float] = {}
    for name, message_id in (("first", bytes(16)), ("rotation", bytes(15) + b"\x01")):
        if name == "rotation":
            world.now += 8 * 86400.0  # a week later: a new session over the Olm ones
        sent, served = world.bytes_in, world.server_cpu
        start = time.process_time()
        send_through_server(world, sender, f"{name} to the room", message_id)
        figures[f"{name}_accepted_s"] = time.process_time() - start
        figures[f"{name}_server_accepted_s"] = world.server_cpu - served
        figures[f"{name}_bytes"] = world.bytes_in - sent
        pending = set(range(len(others)))

        def everyone_read(message_id: bytes = message_id, pending: set[int] = pending) -> bool:
            for index in list(pending):
                others[index].take()
                if _has_read(others[index], message_id):
                    pending.discard(index)
            return not pending

        world.run_until(everyone_read)
        figures[f"{name}_read_s"] = time.process_time() - start
        figures[f"{name}_server_read_s"] = world.server_cpu - served
    return figures


#: The relay comparison: pairs of friends, messages each sender sends, how many
#: each sends at once before all are delivered (a batch of 16 x 8 on the server).
RELAY_PAIRS = 16
RELAY_MESSAGES = 400
RELAY_BURST = 8
RELAY_TEXT = "a benchmark message, as long as relay.py's: ".ljust(60, "x")


def relay_cost(
    store: Store, *, encrypted: bool, messages: int = RELAY_MESSAGES, text: str = RELAY_TEXT
) -> float:
    """Server CPU seconds a delivered direct message, plain or ``encrypted``, each
    message ``text`` (encrypted: its ciphertext)."""
    world = World(store, 2)
    devices: list[Device] = []
    for n in range(2 * RELAY_PAIRS):
        device = Device(world, world.add_client(n), f"user{n}")
        world.answer(device.address, device.conn.register(device.user, PASSWORD))
        world.answer(device.address, device.conn.login(device.user, PASSWORD))
        devices.append(device)
    pairs = list(zip(devices[0::2], devices[1::2], strict=True))
    for sender, recipient in pairs:
        world.answer(sender.address, sender.conn.invite(recipient.user))
        world.answer(recipient.address, recipient.conn.invite(sender.user))
    ready: dict[str, list[tuple[bytes, Outgoing]]] = {}
    if encrypted:
        for device in devices:
            token = device.conn.token
            assert token is not None
            device.state = CryptoState.create(device.user, session_id(token_hash(token)))
            upload = device.state.keys_to_upload(published_one_time_keys=0)
            assert upload is not None
            world.answer(device.address, device.conn.upload_keys(upload))
            device.state.mark_keys_published()
        for sender, recipient in pairs:
            assert sender.state is not None and recipient.state is not None
            conversation = direct_conversation(sender.user, recipient.user)
            found = world.answer(sender.address, sender.conn.get_devices(conversation=conversation))
            assert isinstance(found, m.ConversationDevices)
            claimed = world.answer(
                sender.address, sender.conn.claim_keys([recipient.state.device_id])
            )
            assert isinstance(claimed, m.ClaimedKeys)
            outs = ready[sender.user] = []
            for n in range(messages):
                message_id = (n + 1).to_bytes(4, "big") + sender.state.device_id[:12]
                out = sender.state.encrypt(
                    found.device_set, text, message_id, world.now, claimed.keys
                )
                sender.state.accepted(out)
                outs.append((message_id, out))
    served = world.server_cpu
    delivered = 0
    for start in range(0, messages, RELAY_BURST):
        for sender, recipient in pairs:
            for n in range(start, min(start + RELAY_BURST, messages)):
                if encrypted:
                    message_id, out = ready[sender.user][n]
                    sender.conn.send_encrypted(
                        recipient.user, out.message, out.key_shares, message_id=message_id
                    )
                else:
                    sender.conn.send_message(recipient.user, text)
        target = delivered + len(pairs) * (min(start + RELAY_BURST, messages) - start)

        def all_delivered(target: int = target) -> bool:
            return _delivered(world, pairs) >= target

        world.run_until(all_delivered)
        delivered = target
    cost = (world.server_cpu - served) / delivered
    if encrypted:  # every delivery decrypts (outside the measurement)
        for _, recipient in pairs:
            assert recipient.take() == messages
    return cost


def _delivered(world: World, pairs: list[tuple[Device, Device]]) -> int:
    return sum(
        isinstance(event, m.MessageDelivered)
        for _, recipient in pairs
        for event in world.events[recipient.address]
    )


def relay_ratio(runs: int, messages: int = RELAY_MESSAGES) -> dict[str, float]:
    """Plain and encrypted alternately, each on a fresh SQLite server: medians of
    the server CPU a message (µs) and of each pair of runs' ratio."""
    plain, sealed, ratios = [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            costs = {}
            for encrypted in (False, True):
                store = SQLiteStore.open(Path(tmp) / f"relay-{encrypted}.sqlite3")
                costs[encrypted] = relay_cost(store, encrypted=encrypted, messages=messages)
                store.close()
        plain.append(costs[False])
        sealed.append(costs[True])
        ratios.append(costs[True] / costs[False])
    return {
        "relay_plain_us": round(statistics.median(plain) * 1e6, 1),
        "relay_encrypted_us": round(statistics.median(sealed) * 1e6, 1),
        "relay_ratio": round(statistics.median(ratios), 3),
        "relay_ratio_min": round(min(ratios), 3),
        "relay_ratio_max": round(max(ratios), 3),
    }


def _has_read(device: Device, message_id: bytes) -> bool:
    return any(
        isinstance(e, m.MessageDelivered) and e.message.id == message_id
        for e in device.world.events[device.address]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small room, few runs")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--relay",
        action="store_true",
        help="also the server's CPU a direct message, encrypted against plain (SQLite)",
    )
    parser.add_argument(
        "--server",
        choices=["memory", "sqlite"],
        help="also the room end to end through a ChatServer on this store (one run)",
    )
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
    if args.server is not None:
        with tempfile.TemporaryDirectory() as tmp:
            store: Store = (
                MemoryStore()
                if args.server == "memory"
                else SQLiteStore.open(Path(tmp) / "e2ee.sqlite3")
            )
            through = room_through_server(store, users)
            store.close()
        summary["server_store"] = args.server
        for key, value in through.items():
            if key.endswith("_s"):  # seconds, given in ms
                summary[f"{key[:-2]}_ms"] = round(value * 1e3, 1)
            else:
                summary[key] = int(value)
    if args.relay:
        summary.update(relay_ratio(runs, 40 if args.quick else RELAY_MESSAGES))
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
    if args.relay:
        print(
            f"the server's CPU a direct message, SQLite, {RELAY_PAIRS} pairs in bursts of "
            f"{RELAY_BURST}: plain {summary['relay_plain_us']:.1f} us, encrypted "
            f"{summary['relay_encrypted_us']:.1f} us; encrypted / plain "
            f"{summary['relay_ratio']:.3f}x [{summary['relay_ratio_min']:.3f}-"
            f"{summary['relay_ratio_max']:.3f}]"
        )
    if args.server is None:
        return
    print(f"through a ChatServer on {args.server} (one run, CPU of server and all clients):")
    for name in ("first", "rotation"):
        print(
            f"  {name}: accepted after {summary[f'{name}_accepted_ms']:8.1f} ms "
            f"(the server's part {summary[f'{name}_server_accepted_ms']:.1f} ms; "
            f"{summary[f'{name}_bytes']} bytes sent), read by all {len(members) - 1} "
            f"other devices after {summary[f'{name}_read_ms']:8.1f} ms "
            f"(the server's part {summary[f'{name}_server_read_ms']:.1f} ms)"
        )


if __name__ == "__main__":
    main()
