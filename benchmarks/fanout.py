"""Room fan-out: messages delivered per second to a room of 100 members, beside
direct messages measured in the same run.

Run: ``.venv/bin/python benchmarks/fanout.py [--store sqlite|memory]``.

Everything runs in one process through the sans-IO core: one :class:`ChatServer`
(on a SQLite file in a temporary directory by default, with the real group commit
of the server loop) and 101 :class:`ClientConnection` s; datagrams are carried
between them in memory (no sockets), and the clock is a counter that jumps to the
next timer, so only CPU is measured (``time.process_time``, server and clients
together, since they share the process; the time SQLite waits in fsync at each
group commit is not CPU and is not counted).

* **room**: one member sends N messages to a room of 100 members; the figure is
  deliveries per CPU second (each message counts once per receiving member).
* **direct** (the ceiling): 99 pairs of friends, each sender sending N messages
  to its own friend, so that both runs deliver the same number of messages
  through the same server.

The ratio is room rate / direct rate: above 1 the room's single store write per
message (one log entry, 99 cursors) pays off against 99 separate writes.
"""

from __future__ import annotations

import argparse
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
from udpchat_server.stores.sqlite import SQLiteStore

MEMBERS = 100
MESSAGES = 40  # room: 40 x 99 deliveries
RUNS = 5
SERVER = ("127.0.0.1", 9999)
PASSWORD = "benchmark-password"
GENEROUS = RateLimit(burst=1_000_000, interval=1e-6)


class World:
    """A server and its clients, with datagrams carried in memory."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.now = 1_800_000_000.0
        config = ServerConfig(
            scrypt=ScryptParams(n=16, r=1, p=1),
            registrations_per_address=GENEROUS,
            message_rate=GENEROUS,
            request_rate=GENEROUS,
            max_room_members=MEMBERS,
        )
        self.server = ChatServer(
            store=store,
            static_key=ServerKey.generate(SeededRandomSource(1)),
            clock=lambda: self.now,
            config=config,
            random=SeededRandomSource(2),
        )
        self.clients: dict[tuple[str, int], ClientConnection] = {}
        self.delivered = 0
        self.answers: dict[tuple[str, int], list[object]] = {}

    def add_client(self, index: int) -> ClientConnection:
        address = (f"127.0.{index // 250}.{index % 250 + 2}", 40000 + index)
        client = ClientConnection(server_address=SERVER, random=SeededRandomSource(1000 + index))
        client.connect(self.now)
        self.clients[address] = client
        self.answers[address] = []
        return client

    def step(self) -> bool:
        """Carry every datagram once, as the server loop would; True if anything moved."""
        moved = False
        for address, client in self.clients.items():
            for data, _ in client.datagrams_to_send(self.now):
                self.server.receive_datagram(data, address, self.now)
                moved = True
        for data, address in self.server.end_batch(self.now, run_hashes=True).datagrams:
            self.clients[address].receive_datagram(data, SERVER, self.now)
            moved = True
        for address, client in self.clients.items():
            while (event := client.next_event()) is not None:
                if isinstance(event, m.MessageDelivered):
                    self.delivered += 1
                else:
                    self.answers[address].append(event)
        return moved

    def run_until(self, done: Callable[[], bool], max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            if done():
                return
            if not self.step():
                timers = [t for t in self._timers() if t is not None]
                if not timers:
                    raise RuntimeError("stalled with no timer")
                self.now = max(self.now, min(timers))
                # (The server's fire in its next end_batch.)
                for client in self.clients.values():
                    client.handle_timer(self.now)
        raise RuntimeError("did not finish")

    def _timers(self) -> list[float | None]:
        return [self.server.get_timer(), *(c.get_timer() for c in self.clients.values())]

    def request(self, client: ClientConnection, call: Callable[[], int]) -> None:
        address = next(a for a, c in self.clients.items() if c is client)
        before = len(self.answers[address])
        call()
        self.run_until(lambda: len(self.answers[address]) > before)


def oks(answers: list[object]) -> int:
    return sum(isinstance(answer, m.Ok) for answer in answers)


def sign_up(world: World, count: int) -> list[ClientConnection]:
    clients: list[ClientConnection] = []
    # In batches: the server refuses (rate_limited) past 64 pending password hashes.
    for start in range(0, count, 16):
        batch = [world.add_client(i) for i in range(start, min(start + 16, count))]
        clients.extend(batch)
        for i, client in enumerate(batch, start):
            client.register(f"user{i}", PASSWORD)
            client.login(f"user{i}", PASSWORD)
        world.run_until(lambda: all(c.username is not None for c in clients))
    return clients


def room_run(store: Store) -> tuple[float, int]:
    world = World(store)
    clients = sign_up(world, MEMBERS)
    for client in clients:
        client.join_room("#bench")
    world.run_until(lambda: all(oks(a) >= 2 for a in world.answers.values()))
    world.delivered = 0
    target = MESSAGES * (MEMBERS - 1)
    start = time.process_time()
    for i in range(MESSAGES):
        clients[0].send_message("#bench", f"room message {i}")
    world.run_until(lambda: world.delivered >= target)
    return time.process_time() - start, world.delivered


def direct_run(store: Store) -> tuple[float, int]:
    # 99 senders, each with its own friend: the same deliveries as the room run.
    world = World(store)
    clients = sign_up(world, 2 * (MEMBERS - 1))
    pairs = [(clients[2 * i], clients[2 * i + 1]) for i in range(MEMBERS - 1)]
    for sender, recipient in pairs:
        sender.invite(recipient.username or "")
        recipient.invite(sender.username or "")  # inviting back makes them friends
    # Each client's answers: ok (register), logged_in, ok (invite).
    world.run_until(lambda: all(oks(a) >= 2 for a in world.answers.values()))
    world.delivered = 0
    target = MESSAGES * (MEMBERS - 1)
    start = time.process_time()
    for i in range(MESSAGES):
        for sender, recipient in pairs:
            sender.send_message(recipient.username or "", f"direct message {i}")
    world.run_until(lambda: world.delivered >= target)
    return time.process_time() - start, world.delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"room": [], "direct": []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(RUNS):
            for name, func in (("room", room_run), ("direct", direct_run)):
                if args.store == "sqlite":
                    store: Store = SQLiteStore.open(Path(tmp) / f"{name}{run}.sqlite3")
                else:
                    store = MemoryStore()
                seconds, delivered = func(store)
                store.close()
                rates[name].append(delivered / seconds)
    room = statistics.median(rates["room"])
    direct = statistics.median(rates["direct"])
    print(
        f"store={args.store}; {MESSAGES * (MEMBERS - 1)} deliveries per run; "
        f"median of {RUNS} runs; CPU seconds (server and clients in one process)"
    )
    print(f"  room of {MEMBERS} members   {room:9.0f} deliveries/s")
    print(f"  direct messages       {direct:9.0f} deliveries/s")
    print(f"  ratio room/direct     {room / direct:9.2f}x")


if __name__ == "__main__":
    main()
