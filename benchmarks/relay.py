"""End to end over loopback UDP: messages relayed per second by the real server loop,
beside a raw UDP relay with no protocol measured in the same run.

Run: ``.venv/bin/python benchmarks/relay.py [--pairs 10] [--messages 300]``.

Two processes each time (the machine has two cores): a relay and a load generator.

* **udpchat**: the real :class:`~udpchat_server.loop.ServerLoop` around a
  :class:`ChatServer` on a SQLite file (WAL, ``synchronous=FULL``: every batch is
  fsynced before its replies leave), rate limits raised out of the way. The load
  generator runs ``pairs`` pairs of friends as :class:`ClientConnection` s on their
  own sockets; every sender queues ``messages`` messages to its friend at once, and
  the clock runs until every recipient has them all (each message: handshake-era
  keys, sealed packets, acknowledgement ranges, a store commit, the
  acceptance to the sender, the push to the recipient and the recipient's
  delivery acknowledgement).
* **raw relay** (the ceiling): a process that forwards each datagram it receives
  to the recipient named in its first two bytes, and nothing else. The same
  senders send datagrams of the size of a sealed chat message, each keeping at
  most 32 unreceived (as the transport's window does) and sending again, after
  50 ms of silence, whatever a full socket buffer dropped.

The figure is messages delivered per wall-clock second, median of ``--runs``; the
ratio is udpchat / raw. Only 127.0.0.1 is used; every wait is bounded.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import select
import signal
import socket
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from udpchat_proto import RateLimit, SystemRandomSource
from udpchat_proto.chat import ChatServer, ClientConnection, ScryptParams, ServerConfig
from udpchat_proto.chat import messages as m
from udpchat_proto.transport import ServerKey
from udpchat_server.loop import ServerLoop
from udpchat_server.sqlite_store import SQLiteStore

HOST = "127.0.0.1"
DEADLINE = 120.0  # seconds: no run may take longer
WINDOW = 32
PASSWORD = "benchmark-password"
TEXT = "A typical chat message of about sixty bytes, give or take."
GENEROUS = RateLimit(burst=1_000_000, interval=1e-6)


# --- the two relays (each in its own process) ----------------------------------------


def udpchat_server(db: str, conn: multiprocessing.connection.Connection) -> None:
    store = SQLiteStore.open(db)
    config = ServerConfig(
        scrypt=ScryptParams(n=16, r=1, p=1),
        registrations_per_address=GENEROUS,
        login_failures_per_address=GENEROUS,
        message_rate=GENEROUS,
        request_rate=GENEROUS,
    )
    server = ChatServer(
        store=store,
        static_key=ServerKey.generate(SystemRandomSource()),
        clock=time.time,
        config=config,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    loop = ServerLoop(server=server, store=store, sock=sock)
    conn.send(sock.getsockname()[1])
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    loop.run()
    store.commit()
    store.close()


def raw_relay(conn: multiprocessing.connection.Connection) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    conn.send(sock.getsockname()[1])
    ports: dict[int, tuple[str, int]] = {}
    sock.settimeout(DEADLINE)
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except TimeoutError:
            return
        (index,) = struct.unpack_from("!H", data)
        if data[2:] == b"register":
            ports[index] = addr
        elif index in ports:
            sock.sendto(data, ports[index])


def start(target: Callable[..., None], *args: object) -> tuple[multiprocessing.Process, int]:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    if not parent.poll(30):
        process.kill()
        raise RuntimeError("relay did not start")
    port: int = parent.recv()
    return process, port


# --- the udpchat load generator ----------------------------------------------------------


class Peer:
    def __init__(self, name: str, server: tuple[str, int]) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.conn = ClientConnection(server_address=server)
        self.server = server
        self.delivered = 0
        self.answers: list[object] = []

    def flush(self, now: float) -> None:
        for data, addr in self.conn.datagrams_to_send(now):
            self.sock.sendto(data, addr)

    def pump(self, now: float) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            self.conn.receive_datagram(data, (addr[0], addr[1]), now)
        timer = self.conn.get_timer()
        if timer is not None and timer <= now:
            self.conn.handle_timer(now)
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, m.MessageDelivered):
                self.delivered += 1
            else:
                self.answers.append(event)
        self.flush(now)


def drive(peers: list[Peer], done: Callable[[], bool], deadline: float) -> None:
    by_fd = {peer.sock.fileno(): peer for peer in peers}
    while not done():
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError("benchmark run exceeded its deadline")
        timers = [t for p in peers if (t := p.conn.get_timer()) is not None]
        timeout = max(0.0, min(timers, default=now + 0.1) - now)
        readable, _, _ = select.select(list(by_fd), [], [], min(timeout, 0.1))
        now = time.monotonic()
        for fd in readable:
            by_fd[fd].pump(now)
        for peer in peers:
            timer = peer.conn.get_timer()
            if timer is not None and timer <= now:
                peer.pump(now)


def oks(peer: Peer) -> int:
    return sum(isinstance(a, m.Ok | m.LoggedIn) for a in peer.answers)


def udpchat_run(pairs: int, messages: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        process, port = start(udpchat_server, str(Path(tmp) / "bench.sqlite3"))
        server = (HOST, port)
        peers = [Peer(f"user{i}", server) for i in range(2 * pairs)]
        try:
            deadline = time.monotonic() + DEADLINE
            now = time.monotonic()
            for peer in peers:
                peer.conn.connect(now)
                peer.conn.register(peer.name, PASSWORD)
                peer.conn.login(peer.name, PASSWORD)
                peer.flush(now)
            drive(peers, lambda: all(oks(p) >= 2 for p in peers), deadline)
            senders, recipients = peers[0::2], peers[1::2]
            for sender, recipient in zip(senders, recipients, strict=True):
                sender.conn.invite(recipient.name)
                recipient.conn.invite(sender.name)  # inviting back makes friends
                sender.flush(now)
                recipient.flush(now)
            drive(peers, lambda: all(oks(p) >= 3 for p in peers), deadline)
            start_time = time.perf_counter()
            now = time.monotonic()
            for sender, recipient in zip(senders, recipients, strict=True):
                for _ in range(messages):
                    sender.conn.send_message(recipient.name, TEXT)
                sender.flush(now)
            total = pairs * messages
            drive(peers, lambda: sum(r.delivered for r in recipients) >= total, deadline)
            return total / (time.perf_counter() - start_time)
        finally:
            for peer in peers:
                peer.sock.close()
            process.terminate()
            process.join(10)


def raw_run(pairs: int, messages: int, size: int) -> float:
    process, port = start(raw_relay)
    relay = (HOST, port)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(pairs)]
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(pairs)]
    try:
        for sock in (*senders, *receivers):
            sock.bind((HOST, 0))
            sock.setblocking(False)
        for index, receiver in enumerate(receivers):
            receiver.sendto(struct.pack("!H", index) + b"register", relay)
        time.sleep(0.2)  # the relay has learnt the receivers' ports (a setup step, untimed)
        payloads = [struct.pack("!H", i) + bytes(size - 2) for i in range(pairs)]
        sent = [0] * pairs
        received = [0] * pairs
        deadline = time.monotonic() + DEADLINE
        start_time = time.perf_counter()
        fds = {r.fileno(): i for i, r in enumerate(receivers)}
        while sum(received) < pairs * messages:
            if time.monotonic() > deadline:
                raise RuntimeError("raw relay run exceeded its deadline")
            for i, sender in enumerate(senders):
                while sent[i] < messages and sent[i] - received[i] < WINDOW:
                    sender.sendto(payloads[i], relay)
                    sent[i] += 1
            readable, _, _ = select.select(list(fds), [], [], 0.05)
            if not readable:
                # A datagram was lost (a full socket buffer): send the missing ones
                # again, as any protocol would; the payloads are all alike.
                sent = list(received)
            for fd in readable:
                index = fds[fd]
                while True:
                    try:
                        receivers[index].recv(2048)
                    except BlockingIOError:
                        break
                    received[index] += 1
        return pairs * messages / (time.perf_counter() - start_time)
    finally:
        for sock in (*senders, *receivers):
            sock.close()
        process.terminate()
        process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=300, help="per sender")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    # A sealed one-message DATA packet: header + frames + tag, about this size.
    size = 130 + len(TEXT)
    chat, raw = [], []
    for _ in range(args.runs):
        chat.append(udpchat_run(args.pairs, args.messages))
        raw.append(raw_run(args.pairs, args.messages, size))
    chat_rate, raw_rate = statistics.median(chat), statistics.median(raw)
    print(
        f"{args.pairs} pairs x {args.messages} messages over 127.0.0.1; "
        f"median of {args.runs} runs; wall clock"
    )
    print(f"  udpchat server (SQLite, fsync per batch)  {chat_rate:9.0f} messages/s")
    print(f"  raw UDP relay, no protocol                {raw_rate:9.0f} messages/s")
    print(f"  ratio udpchat/raw                         {chat_rate / raw_rate:9.3f}x")


if __name__ == "__main__":
    main()
