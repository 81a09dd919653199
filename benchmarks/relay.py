"""End to end over loopback UDP: the real ``udpchat-server`` process under load,
beside a raw UDP relay driven the same way in the same run.

Run: ``.venv/bin/python benchmarks/relay.py [--quick] [--json] [--runs N]
[--workers 2] [--pairs 16] [--scaling 1,2,3,4] [--plot DIR] [--py-spy FILE]
[--profile FILE] [--server-python LABEL=PYTHON ...] [--no-e2ee]``.

What runs (only 127.0.0.1 is used; every wait is bounded):

* **the server**: a real ``udpchat-server`` subprocess (SQLite in a temporary
  directory, WAL, ``synchronous=FULL``: every batch is fsynced before its replies
  leave), ``--scrypt-n 16`` and the rate limits raised out of the way. Its CPU time
  is read from ``/proc/<pid>/stat`` (user + system, all threads) at the edges of
  each measurement window, and its resident memory from ``/proc/<pid>/status`` at
  the end.
* **the load generator**: ``--workers`` processes (default 2, one per core), each
  owning ``--pairs`` pairs of friends as :class:`ClientConnection` s on their own
  sockets. Both ends of a pair live in the same process, so the send time written
  into each message's text can be compared with the delivery time on the same
  clock. Recipients take every event, so their connections acknowledge deliveries
  as an application's would.
* **the raw relay** (the ceiling): a process that forwards each datagram to the
  receiver named in its first two bytes and does nothing else; the same worker
  processes, pairs and datagram size (that of a sealed one-message packet) drive it.

What is measured, each run on a fresh server:

* **saturation**: every sender keeps ``WINDOW`` messages in flight (sent, not yet
  delivered); after a warm-up, messages delivered per wall-clock second (each
  counted once, when the recipient's client emits ``MessageDelivered``). The same
  for the raw relay, so ``ratio`` = udpchat / raw.
* **latency at fixed offered rates**: the senders send on a fixed schedule
  (open loop), stepping up through the rates; latency runs from the time a message
  was *due* to be sent to its delivery event, so a generator that falls behind
  shows up as latency rather than hiding it (no coordinated omission). p50 and p99
  of the messages due inside the window; stepping stops after the first rate the
  system cannot carry (achieved below 90 % of offered) once 5,000/s is done.
  ``p99_crosses_5ms_at`` interpolates linearly between the last step under 5 ms
  and the first over it.
* **server CPU** per delivered message at saturation (and at each rate), and the
  share of one core the server used: at saturation the generator competes for
  the same two cores, so a share well under 1.0 means the generator, not the
  server, was the limit.

* **end-to-end encryption** (each run, unless ``--no-e2ee``): first, on a server
  of its own, the same pairs as devices (keys uploaded, each sender's device set
  fetched and its recipient's one-time key claimed), every message encrypted by
  vodozemac with its record, the first of each pair with its key share and one
  in a hundred a rotation's. The messages are encrypted ahead, outside every
  window (``prepare``: enough for 16,000 a second), so that a generator sends a
  ready message as the plain one sends a text and the server only relays; each
  message's due time is kept by id, since its text cannot carry it. Saturation,
  then 1,000/s offered; then every delivery is decrypted (outside the windows: a
  run with one that does not decrypt fails). The ratios are the same run's:
  encrypted over plain server CPU a message, at saturation and at 1,000/s (where
  both carry the load, so their batches are alike).

Several runs (``--runs``): each figure is the median, and the spread (min-max) is
shown. ``--scaling`` adds saturation (udpchat and the raw relay) with each number
of generator processes. ``--plot DIR`` draws ``latency.png`` (and, with
``--scaling``, ``throughput.png``). ``--py-spy FILE`` samples the server with py-spy
during the first run and prints its CPU split by layer (``benchmarks/layers.py``);
``--profile FILE`` runs the server under cProfile instead (one run; the profile is
written when the server stops) and prints the top functions by own time.

Builds side by side: ``--server-python pure=.venv/bin/python --server-python
compiled=/tmp/c/.venv/bin/python`` runs the server with each interpreter (an
environment where the pure or the mypyc-compiled wheel is installed) in the same
invocation, interleaved: run 1 pure then compiled, run 2 compiled then pure, and
so on, so that the machine's drift falls on both. The load generator stays this
interpreter's for both. Each build's figures, then the ratios (second build over
first) of the headline figures, computed run by run (the runs paired) and given
as their median.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udpchat_proto import ClientConnection, TransportConfig
from udpchat_proto import messages as m
from udpchat_proto.chat import session_id, token_hash
from udpchat_proto.e2ee import (
    ClaimedKey,
    CryptoState,
    Decrypted,
    DeviceSet,
    KeyShareReceived,
    Outgoing,
    direct_conversation,
)

HOST = "127.0.0.1"
PASSWORD = "benchmark-password"
#: Messages in flight per pair at saturation: half the transport's 32-packet window
#: on each side of the server is enough to keep it busy without piling up latency.
WINDOW = 32
#: Length of every message's text: the send time, then padding, about a typical line.
TEXT_SIZE = 60
#: Size of a raw-relay datagram: a sealed one-message DATA packet is about this big
#: (header, STREAM frame, the encoded ``send_message`` request and the AEAD tag).
RAW_SIZE = 130 + TEXT_SIZE
#: Connections per second the generator opens: the server accepts 50 handshakes
#: a second per address (``TransportConfig``), and every client is on 127.0.0.1.
CONNECT_RATE = 40.0
#: Latency target whose crossing is reported.
TARGET_P99_MS = 5.0
#: A step the system cannot carry: achieved below this share of offered.
OVERLOAD = 0.9
#: The offered rate whose p50 and p99 are the headline figures.
REFERENCE_RATE = 5000
#: Longest wait for the messages of a window to arrive after it ends.
DRAIN = 5.0
#: Longest wait for anything else (a reply, the server's start).
DEADLINE = 120.0
#: Server options that take the rate limits out of the benchmark's way.
NO_RATE_LIMITS = [
    "--message-rate",
    "1000000/0.000001",
    "--request-rate",
    "1000000/0.000001",
    "--logins-per-user",
    "1000/0.001",
    "--registrations-per-address",
    "1000/0.001",
    "--max-hash-jobs-per-address",
    "64",
    "--log-level",
    "warning",
]
#: The server's options: rate limits out of the way, cheap password hashes.
SERVER_OPTIONS = ["--scrypt-n", "16", *NO_RATE_LIMITS, "--max-pending-hash-jobs", "1024"]
FULL_RATES = [
    100,
    250,
    500,
    1000,
    1500,
    2000,
    2500,
    3000,
    4000,
    5000,
    6000,
    8000,
    10_000,
    15_000,
    20_000,
]
QUICK_RATES = [1000, 2000, 5000]
#: The encrypted messages made ahead, per pair, are enough for this many delivered
#: a second through the window (more than the server carries here): the
#: generators then only send what is ready, as the plain ones send a text. Past
#: them a generator encrypts as it sends (counted, ``e2ee_encrypted_live``).
POOL_RATE = 16_000
#: The offered rate at which the encrypted server's CPU a message is also measured,
#: against the plain server's at the same rate in the same run: both carry it, so
#: their batches are alike (at saturation each runs as fast as it can, and a
#: slower one's larger batches share their commit among more messages).
E2EE_RATE = 1000
#: The text of every encrypted message: as long as the plain ones' (``TEXT_SIZE``).
E2EE_TEXT = "an encrypted benchmark message: ".ljust(TEXT_SIZE, "x")


@dataclass(frozen=True)
class Timing:
    """How long each phase lasts (seconds)."""

    warmup: float
    saturation: float
    step: float
    rates: list[int]
    backlog: float
    """Longest wait for an overloaded step's backlog to clear."""


FULL = Timing(warmup=1.0, saturation=5.0, step=3.0, rates=FULL_RATES, backlog=40.0)
QUICK = Timing(warmup=0.5, saturation=2.0, step=1.0, rates=QUICK_RATES, backlog=15.0)


@dataclass(frozen=True)
class AckShape:
    """How the acknowledgements are shaped, for an experiment (``lowload.py``'s
    ``--max-ack-delay`` and ``--ack-every``); the defaults are the product's.

    Benchmark-only: the shipped defaults stay as they are.
    """

    max_ack_delay: float | None = None
    """The transport's ``max_ack_delay`` on the server and on every client, seconds
    (None: ``TransportConfig``'s default). Longer, a lone packet's ACK waits for a
    packet with data to ride on instead of leaving alone."""
    ack_every: int = 1
    """Each recipient acknowledges its deliveries this many at a time (one
    ``ack_delivery`` of that many ids; the protocol allows it: an
    acknowledgement moves the cursor past everything before it). 1: each on its own,
    as the client does by default. Must stay under half the server's delivery
    window (64), or the window stalls."""

    def client_config(self) -> TransportConfig | None:
        """The clients' transport settings (None: the default)."""
        if self.max_ack_delay is None:
            return None
        return TransportConfig(max_ack_delay=self.max_ack_delay)

    def server_preamble(self) -> str:
        """Python run in the server's process before its ``main()``: the transport's
        ``max_ack_delay`` set in the configuration that the command line builds (a
        patch of its private builder: the server has no option for transport
        settings, and an experiment should not add one to the product)."""
        if self.max_ack_delay is None:
            return ""
        return (
            "import attrs; from udpchat_server import cli; build = cli._config; "
            "cli._config = lambda *a: (lambda c: attrs.evolve(c, transport=attrs.evolve("
            f"c.transport, max_ack_delay={self.max_ack_delay!r})))(build(*a)); "
        )


# --- /proc readings --------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: the fields that follow it start
    # after its closing parenthesis; utime and stime are fields 14 and 15.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (``VmRSS``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# --- the two relays ----------------------------------------------------------------------


@contextlib.contextmanager
def udpchat_server(
    profile: str | None = None,
    options: list[str] = SERVER_OPTIONS,
    python: str = sys.executable,
    shape: AckShape = AckShape(),
) -> Iterator[tuple[int, int]]:
    """A real ``udpchat-server`` on 127.0.0.1, port 0, with ``options``, run by
    ``python`` (this interpreter by default), its acknowledgements shaped by
    ``shape`` (the product's by default); yields (pid, port)."""
    # The console script's entry point, run by this Python: found wherever the
    # package is installed; under cProfile the profile is written when it stops.
    if profile is None:
        code = shape.server_preamble() + "from udpchat_server.cli import main; main()"
    else:
        code = shape.server_preamble() + (
            "import cProfile, sys; from udpchat_server.cli import main; "
            "cProfile.run('main()', sys.argv.pop(1))"
        )
    with tempfile.TemporaryDirectory() as tmp:
        command = [python, "-c", code, *([profile] if profile else [])]
        command += ["--host", HOST, "--port", "0", "--db", f"{tmp}/bench.sqlite3"]
        # The control socket: the loop's counters (commits, turns) at a window's edges.
        command += ["--control", f"{tmp}/control.sock"]
        process = subprocess.Popen(
            [*command, *options], stdout=subprocess.PIPE, text=True, env=os.environ
        )
        try:
            assert process.stdout is not None
            # Bounded: the server prints this line at once, or exits.
            line = process.stdout.readline()
            if not line.startswith("listening on "):
                raise RuntimeError(f"udpchat-server did not start: {line!r}")
            port = int(line.split()[2].rsplit(":", 1)[1])
            yield process.pid, port
        finally:
            process.send_signal(signal.SIGTERM)  # a clean stop: cProfile writes its file
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def raw_relay(conn: multiprocessing.connection.Connection) -> None:
    """Forward each datagram to the receiver named by its first two bytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((HOST, 0))
    conn.send(sock.getsockname()[1])
    ports: dict[int, tuple[str, int]] = {}
    sock.settimeout(DEADLINE)  # ends by itself if the parent is gone
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


@contextlib.contextmanager
def raw_relay_process() -> Iterator[tuple[int, int]]:
    """The raw relay in its own process; yields (pid, port)."""
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=raw_relay, args=(child,), daemon=True)
    process.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("raw relay did not start")
        assert process.pid is not None
        yield process.pid, parent.recv()
    finally:
        process.terminate()
        process.join(10)


# --- the load generator (one per worker process) --------------------------------------


def text_for(due: float) -> str:
    """A message text carrying the time it was due to be sent."""
    return f"{due:.9f} ".ljust(TEXT_SIZE, "x")


class Peer:
    """One client on its own non-blocking socket."""

    def __init__(self, name: str, server: tuple[str, int], shape: AckShape = AckShape()) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.conn = ClientConnection(
            server_address=server,
            config=shape.client_config(),
            explicit_acks=shape.ack_every > 1,
        )
        self.ack_every = shape.ack_every
        #: Deliveries taken and not acknowledged yet (``ack_every`` > 1 only).
        self.unacknowledged: list[bytes] = []
        self.oks = 0
        self.errors = 0
        #: The refusals' texts, to say why (a set-up or a burst refused in part).
        self.refusals: list[str] = []
        #: Called with (delivery time, delivery) for each delivered message.
        self.on_delivery: Callable[[float, m.MessageDelivered], None] | None = None
        #: The answers of the encrypted set-up's requests, by request id.
        self.answers: dict[int, m.Response] = {}
        #: This device's end-to-end state (encrypted runs only).
        self.crypto: CryptoState | None = None

    def flush(self, now: float) -> None:
        for data, addr in self.conn.datagrams_to_send(now):
            # A full socket buffer is a lost datagram: the transport sends it again.
            with contextlib.suppress(BlockingIOError):
                self.sock.sendto(data, addr)

    def pump(self, now: float) -> None:
        """Read what has arrived, fire a due timer, take every event, send."""
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
                if self.on_delivery is not None:
                    self.on_delivery(now, event)
                if self.ack_every > 1:
                    self.unacknowledged.append(event.message.id)
                    if len(self.unacknowledged) >= self.ack_every:
                        self.conn.acknowledge(self.unacknowledged)
                        self.unacknowledged = []
            elif isinstance(event, m.Ok | m.LoggedIn | m.MessageAccepted):
                self.oks += 1
            elif isinstance(event, m.KeysStored | m.ConversationDevices | m.ClaimedKeys):
                self.answers[event.request_id] = event
            elif isinstance(event, m.ErrorResponse):
                self.errors += 1
                self.refusals.append(f"{event.code.value}: {event.message}")
        self.flush(now)


@dataclass
class Pair:
    """A sender and its friend, with what the sender has in flight."""

    sender: Peer
    recipient: Peer
    sent: int = 0
    delivered: int = 0
    #: Encrypted runs: the conversation's device set and the recipient's claimed
    #: one-time key (the sender's plan needs them to encrypt) ...
    device_set: DeviceSet | None = None
    claimed: tuple[ClaimedKey, ...] = ()
    #: ... the messages encrypted ahead (id, what ``encrypt`` gave), oldest first ...
    ready: collections.deque[tuple[bytes, Outgoing]] = field(default_factory=collections.deque)
    #: ... and what the recipient was delivered, decrypted after the windows.
    received: list[m.MessageDelivered] = field(default_factory=list)


@dataclass
class Window:
    """What one measurement window collects in one worker."""

    start: float
    end: float
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)
    due_in_window: int = 0


class Generator:
    """The pairs of one worker process and the loop that drives them."""

    def __init__(self, pairs: int, prefix: str) -> None:
        self.prefix = prefix
        self.count = pairs
        self.pairs: list[Pair] = []
        self.peers: list[Peer] = []
        self.selector = selectors.DefaultSelector()
        self.window: Window | None = None
        self.cpu_start = 0.0
        self.window_started = 0.0
        self.encrypted = False
        #: Encrypted runs: when each message in flight was due (its text cannot say).
        self.due: dict[bytes, float] = {}
        #: Encrypted runs: messages encrypted while sending, the ready ones used up.
        self.encrypted_live = 0
        #: The wall-clock time every encryption is made at (no rotation by age).
        self.at = time.time()

    # -- udpchat --

    def setup(
        self, port: int, workers: int, encrypted: bool = False, shape: AckShape = AckShape()
    ) -> None:
        """Connect, register, log in and befriend every pair (and, ``encrypted``,
        make each peer a device with its keys uploaded, and each sender's Olm
        session to its recipient: a device set and a claimed key), the clients'
        acknowledgements shaped by ``shape``."""
        server = (HOST, port)
        peers = [Peer(f"{self.prefix}u{i}", server, shape) for i in range(2 * self.count)]
        for peer in peers:
            self.selector.register(peer.sock, selectors.EVENT_READ, peer)
        deadline = time.monotonic() + DEADLINE
        self.peers = peers
        for peer in peers:
            # Paced: the server's per-address handshake limit is shared by all workers.
            self.drive(time.monotonic() + workers / CONNECT_RATE, deadline)
            now = time.monotonic()
            peer.conn.connect(now)
            peer.conn.register(peer.name, PASSWORD)
            peer.conn.login(peer.name, PASSWORD)
            peer.flush(now)
        self.drive_until(lambda: all(p.oks >= 2 for p in peers), deadline)
        for sender, recipient in zip(peers[0::2], peers[1::2], strict=True):
            pair = Pair(sender, recipient)
            recipient.on_delivery = self.delivery_handler(pair)
            sender.conn.invite(recipient.name)
            recipient.conn.invite(sender.name)  # inviting back makes friends
            now = time.monotonic()
            sender.flush(now)
            recipient.flush(now)
            self.pairs.append(pair)
        self.drive_until(lambda: all(p.oks >= 3 for p in peers), deadline)
        refusals = sorted({text for p in peers for text in p.refusals})
        if refusals:
            raise RuntimeError(f"the server refused part of the set-up: {refusals}")
        self.encrypted = encrypted
        if encrypted:
            self.devices(deadline)

    def _await(self, asked: dict[Peer, int], deadline: float) -> dict[Peer, m.Response]:
        """Send what each peer asked, wait (bounded) for every answer."""
        now = time.monotonic()
        for peer in asked:
            peer.flush(now)
        self.drive_until(lambda: all(r in p.answers for p, r in asked.items()), deadline)
        return {peer: peer.answers.pop(rid) for peer, rid in asked.items()}

    def devices(self, deadline: float) -> None:
        """Each peer a device (keys uploaded); each sender's device set and claim."""
        asked: dict[Peer, int] = {}
        for peer in self.peers:
            token = peer.conn.token
            assert token is not None
            peer.crypto = CryptoState.create(peer.name, session_id(token_hash(token)))
            upload = peer.crypto.keys_to_upload(published_one_time_keys=0)
            assert upload is not None
            asked[peer] = peer.conn.upload_keys(upload)
        for peer, answer in self._await(asked, deadline).items():
            assert isinstance(answer, m.KeysStored), answer
            assert peer.crypto is not None
            peer.crypto.mark_keys_published()
        sets = self._await(
            {
                pair.sender: pair.sender.conn.get_devices(
                    conversation=direct_conversation(pair.sender.name, pair.recipient.name)
                )
                for pair in self.pairs
            },
            deadline,
        )
        for pair in self.pairs:
            found = sets[pair.sender]
            assert isinstance(found, m.ConversationDevices), found
            pair.device_set = found.device_set
        claims = self._await(
            {
                pair.sender: pair.sender.conn.claim_keys([_device_of(pair.recipient)])
                for pair in self.pairs
            },
            deadline,
        )
        for pair in self.pairs:
            claimed = claims[pair.sender]
            assert isinstance(claimed, m.ClaimedKeys) and len(claimed.keys) == 1, claimed
            pair.claimed = claimed.keys

    def prepare(self, count: int) -> float:
        """Encrypt ``count`` messages ahead for each pair (outside every window):
        the first with its key share, one in a hundred a rotation's. Returns the
        CPU seconds it took per message."""
        start = time.process_time()
        for pair in self.pairs:
            for _ in range(count):
                pair.ready.append(self._encrypt(pair))
        return (time.process_time() - start) / max(1, count * len(self.pairs))

    def _encrypt(self, pair: Pair) -> tuple[bytes, Outgoing]:
        crypto, device_set = pair.sender.crypto, pair.device_set
        assert crypto is not None and device_set is not None
        message_id = os.urandom(16)
        out = crypto.encrypt(device_set, E2EE_TEXT, message_id, self.at, pair.claimed)
        # The messages go out in this order on one connection, each accepted (a
        # refusal fails the run): a share is never made twice.
        crypto.accepted(out)
        return message_id, out

    def verify(self) -> dict[str, int]:
        """Decrypt everything each recipient was delivered (after the windows):
        how many decrypted, and how many could not be (never any)."""
        decrypted = undecryptable = 0
        for pair in self.pairs:
            crypto = pair.recipient.crypto
            assert crypto is not None
            for push in pair.received:
                shares_ok = all(
                    isinstance(crypto.receive_key_share(share), KeyShareReceived)
                    for share in push.key_shares
                )
                record = push.message.ciphertext
                result = None if record is None else crypto.decrypt(record, push.message.id)
                if shares_ok and isinstance(result, Decrypted) and result.text == E2EE_TEXT:
                    decrypted += 1
                else:
                    undecryptable += 1
            pair.received.clear()
        return {"decrypted": decrypted, "undecryptable": undecryptable}

    def delivery_handler(self, pair: Pair) -> Callable[[float, m.MessageDelivered], None]:
        def handle(now: float, push: m.MessageDelivered) -> None:
            message = push.message
            pair.delivered += 1
            if self.encrypted:
                pair.received.append(push)
                due = self.due.pop(message.id, math.nan)
            window = self.window
            if window is None:
                return
            if window.start <= now < window.end:
                window.delivered += 1
            if not self.encrypted:  # (an encrypted one's due time was looked up above)
                due = float(message.text.split(" ", 1)[0])
            if window.start <= due < window.end:
                window.latencies.append(now - due)

        return handle

    def send(self, pair: Pair, due: float, now: float) -> None:
        if self.encrypted:
            if pair.ready:
                message_id, out = pair.ready.popleft()
            else:
                message_id, out = self._encrypt(pair)
                self.encrypted_live += 1
            self.due[message_id] = due
            pair.sender.conn.send_encrypted(
                pair.recipient.name, out.message, out.key_shares, message_id=message_id
            )
        else:
            pair.sender.conn.send_message(pair.recipient.name, text_for(due))
        pair.sent += 1
        if self.window is not None and self.window.start <= due < self.window.end:
            self.window.due_in_window += 1

    def saturate(self, start: float, warm: float, end: float) -> dict[str, Any]:
        """Keep ``WINDOW`` messages in flight per pair from ``start`` to ``end``."""
        self.window = Window(warm, end)
        self.sleep_until(start)
        self.window_started = start
        self.cpu_start = time.process_time()

        def top_up(now: float) -> float:
            for pair in self.pairs:
                if pair.sent - pair.delivered < WINDOW:
                    while pair.sent - pair.delivered < WINDOW:
                        self.send(pair, now, now)
                    pair.sender.flush(now)
            return now + 0.005

        self.drive(end, end + DEADLINE, top_up)
        return self.finish(end)

    def offer(
        self,
        rate: float,
        start: float,
        warm: float,
        end: float,
        *,
        also: Callable[[float], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Send ``rate`` messages a second on a fixed schedule, round robin (and
        call ``also(now)`` at every turn of the loop, for other work); the window
        ends at ``end``, or earlier once ``stop()`` is true."""
        self.window = Window(warm, end)
        self.sleep_until(start)
        self.window_started = start
        self.cpu_start = time.process_time()
        interval = 1.0 / rate
        sent = 0

        def on_schedule(now: float) -> float:
            nonlocal sent
            touched: set[int] = set()
            while (due := start + sent * interval) <= now:
                index = sent % len(self.pairs)
                self.send(self.pairs[index], due, now)
                touched.add(index)
                sent += 1
            for index in touched:
                self.pairs[index].sender.flush(now)
            if also is not None:
                also(now)
            return start + sent * interval

        self.drive(end, end + DEADLINE, on_schedule, stop)
        if time.monotonic() < end:  # stopped early: the window ends here
            end = time.monotonic()
            assert self.window is not None
            self.window.end = end
        return {**self.finish(end), "window_s": end - warm}

    def finish(self, end: float) -> dict[str, Any]:
        """Stop sending; wait (bounded) for what is in flight; the window's figures."""
        # The generator's own load (share of one core, warm-up included): near 1.0,
        # its queueing adds to the latencies and caps the throughput.
        busy = (time.process_time() - self.cpu_start) / max(1e-9, end - self.window_started)
        drained = self.drive_until(
            lambda: all(p.delivered >= p.sent for p in self.pairs), end + DRAIN, strict=False
        )
        window = self.window
        assert window is not None
        self.window = None
        missing = window.due_in_window - len(window.latencies)
        # What never arrived counts as at least the drain's length late.
        latencies = window.latencies + [time.monotonic() - window.end] * max(0, missing)
        return {
            "delivered": window.delivered,
            "latencies": latencies,
            "drained": drained,
            "generator_cpu_share": busy,
            "encrypted_live": self.encrypted_live,
        }

    def drain(self, seconds: float) -> bool:
        """Wait (at most ``seconds``) until every message sent has been delivered."""
        return self.drive_until(
            lambda: all(p.delivered >= p.sent for p in self.pairs),
            time.monotonic() + seconds,
            strict=False,
        )

    def close(self) -> None:
        for pair in self.pairs:
            for peer in (pair.sender, pair.recipient):
                self.selector.unregister(peer.sock)
                peer.sock.close()
        self.pairs = []
        self.peers = []
        self.encrypted = False
        self.due.clear()
        self.encrypted_live = 0

    # -- the loop --

    def sleep_until(self, when: float) -> None:
        self.drive(when, when + DEADLINE)

    def drive_until(self, done: Callable[[], bool], deadline: float, strict: bool = True) -> bool:
        """Run the loop until ``done()``; past ``deadline`` raise (or return False)."""
        while not done():
            now = time.monotonic()
            if now > deadline:
                if strict:
                    raise RuntimeError("the load generator exceeded its deadline")
                return False
            self.drive(min(now + 0.05, deadline), deadline)
        return True

    def drive(
        self,
        until: float,
        deadline: float,
        tick: Callable[[float], float] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Run the loop until ``until`` (or ``stop()``); ``tick(now)`` sends what is
        due and says when it next wants to run."""
        peers = self.peers
        while (now := time.monotonic()) < until and not (stop is not None and stop()):
            if now > deadline:
                raise RuntimeError("the load generator exceeded its deadline")
            wake = tick(now) if tick is not None else until
            timers = [t for peer in peers if (t := peer.conn.get_timer()) is not None]
            wake = min(wake, until, *timers)
            for key, _ in self.selector.select(max(0.0, wake - time.monotonic())):
                key.data.pump(time.monotonic())
            now = time.monotonic()
            for peer in peers:
                timer = peer.conn.get_timer()
                if timer is not None and timer <= now:
                    peer.pump(now)


def _device_of(peer: Peer) -> bytes:
    """The device id of ``peer``'s login session."""
    token = peer.conn.token
    assert token is not None
    return session_id(token_hash(token))


def raw_saturate(
    port: int, base: int, count: int, *, start: float, warm: float, end: float
) -> dict[str, Any]:
    """The raw relay's ceiling: ``WINDOW`` datagrams in flight per pair."""
    relay = (HOST, port)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    selector = selectors.DefaultSelector()
    try:
        for i, sock in enumerate((*senders, *receivers)):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((HOST, 0))
            sock.setblocking(False)
            if i >= count:
                selector.register(sock, selectors.EVENT_READ, i - count)
        for i, receiver in enumerate(receivers):
            receiver.sendto(struct.pack("!H", base + i) + b"register", relay)
        payloads = [struct.pack("!H", base + i) + bytes(RAW_SIZE - 2) for i in range(count)]
        sent = [0] * count
        received = [0] * count
        delivered = 0
        time.sleep(max(0.0, start - time.monotonic()))  # the relay has the receivers by now
        last = time.monotonic()
        while (now := time.monotonic()) < end:
            for i, sender in enumerate(senders):
                while sent[i] - received[i] < WINDOW:
                    try:
                        sender.sendto(payloads[i], relay)
                    except BlockingIOError:
                        break
                    sent[i] += 1
            events = selector.select(0.05)
            if not events and time.monotonic() - last > 0.05:
                # A datagram was lost (a full socket buffer): send again what is
                # missing, as any protocol would; the payloads are all alike.
                sent = list(received)
            for key, _ in events:
                index = key.data
                while True:
                    try:
                        receivers[index].recv(2048)
                    except BlockingIOError:
                        break
                    received[index] += 1
                    last = time.monotonic()
                    if warm <= last < end:
                        delivered += 1
        del now
        return {"delivered": delivered}
    finally:
        selector.close()
        for sock in (*senders, *receivers):
            sock.close()


def worker(conn: multiprocessing.connection.Connection, index: int, pairs: int) -> None:
    """A load-generator process: obeys the parent's commands, answers each."""
    generator = Generator(pairs, prefix=f"w{index}")
    while conn.poll(DEADLINE * 3):
        command, *args = conn.recv()
        try:
            if command == "setup":
                generator.setup(*args)
                result: Any = "ready"
            elif command == "saturate":
                result = generator.saturate(*args)
            elif command == "offer":
                result = generator.offer(*args)
            elif command == "drain":
                result = generator.drain(*args)
            elif command == "prepare":
                result = generator.prepare(*args)
            elif command == "verify":
                result = generator.verify()
            elif command == "close":
                generator.close()
                result = "closed"
            elif command == "raw":
                port, start, warm, end = args
                result = raw_saturate(port, index * pairs, pairs, start=start, warm=warm, end=end)
            else:
                return
        except Exception as exc:
            result = RuntimeError(f"worker {index}: {exc!r}")
        conn.send(result)


class Workers:
    """The load-generator processes, commanded together."""

    def __init__(self, count: int, pairs: int) -> None:
        self.conns: list[multiprocessing.connection.Connection] = []
        self.processes: list[multiprocessing.Process] = []
        for index in range(count):
            parent, child = multiprocessing.Pipe()
            process = multiprocessing.Process(
                target=worker, args=(child, index, pairs), daemon=True
            )
            process.start()
            self.conns.append(parent)
            self.processes.append(process)

    def call(self, *command: object, timeout: float = DEADLINE) -> list[Any]:
        for conn in self.conns:
            conn.send(command)
        results = []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise RuntimeError(f"a worker did not answer {command[0]!r} in time")
            result = conn.recv()
            if isinstance(result, Exception):
                raise result
            results.append(result)
        return results

    def stop(self) -> None:
        for conn in self.conns:
            conn.send(("exit",))
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


# --- one run -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, not idle or iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def loop_counters(pid: int) -> dict[str, Any]:
    """The counters of the ``udpchat-server`` process ``pid`` (``ctl status``), read
    through the control socket named on its command line; {} without one.

    The request costs the loop one turn, so that a window's edges add two."""
    from udpchat_server.control import call

    words = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    if "--control" not in words:
        return {}
    answer = call(Path(words[words.index("--control") + 1]), "status", {}, timeout=DEADLINE)
    counters: dict[str, Any] = answer.get("counters", {})
    return counters


def counted(before: dict[str, Any], after: dict[str, Any], name: str) -> float:
    """How much counter ``name`` grew between two readings (NaN: a server without it,
    such as an older build's without ``turns``)."""
    if name not in before or name not in after:
        return math.nan
    return float(after[name] - before[name])


def thread_state(pid: int) -> str:
    """The scheduler state of process ``pid``'s main thread (the server's loop):
    R running, S sleeping (in ``select``), D waiting on the disk (fsync)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


def windowed(
    call: Callable[[float, float, float], list[dict[str, Any]]],
    pid: int,
    warmup: float,
    length: float,
) -> tuple[list[dict[str, Any]], float, dict[str, float]]:
    """Run one window in every worker; (their results, server CPU seconds in it,
    shares of the server loop's states sampled every 5 ms, under ``"machine"``
    the cores the whole machine kept busy: others' processes share the cores, and
    under ``"commits"``, ``"turns"``, ``"commit_waits"`` and
    ``"commit_waits_overslept"`` how many the server loop made in it)."""
    start = time.monotonic() + 0.1  # every worker has its command by then
    warm, end = start + warmup, start + warmup + length
    results: list[list[dict[str, Any]]] = []
    # The workers answer after ``end``; meanwhile this (otherwise idle) process
    # samples the server at the window's edges, and its state in between.
    thread = threading.Thread(target=lambda: results.append(call(start, warm, end)))
    thread.start()
    time.sleep(max(0.0, warm - time.monotonic()))
    counters_start = loop_counters(pid)
    cpu_start, machine_start = cpu_seconds(pid), machine_busy_seconds()
    states: dict[str, int] = {}
    while time.monotonic() < end:
        state = thread_state(pid)
        states[state] = states.get(state, 0) + 1
        time.sleep(0.005)
    cpu = cpu_seconds(pid) - cpu_start
    machine = (machine_busy_seconds() - machine_start) / length
    counters_end = loop_counters(pid)
    thread.join(DEADLINE)
    if not results:
        raise RuntimeError("the workers did not answer")
    total = max(1, sum(states.values()))
    shares = {state: count / total for state, count in sorted(states.items())}
    names = ("commits", "turns", "commit_waits", "commit_waits_overslept")
    loop = {name: counted(counters_start, counters_end, name) for name in names}
    return results[0], cpu, {**shares, "machine": machine, **loop}


@contextlib.contextmanager
def py_spy(pid: int, path: str | None) -> Iterator[None]:
    """Record process ``pid`` with py-spy (raw collapsed stacks) while in the block."""
    if path is None:
        yield
        return
    # The one installed beside this Python (the bench extra), else the PATH's.
    beside = Path(sys.executable).with_name("py-spy")
    spy = str(beside) if beside.exists() else (shutil.which("py-spy") or "py-spy")
    command = [spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw"]
    recorder = subprocess.Popen(
        [*command, "--output", path, "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            recorder.wait(30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()


def encrypted_saturation(
    team: Workers,
    workers: int,
    pairs: int,
    timing: Timing,
    spy: str | None = None,
    *,
    python: str = sys.executable,
) -> dict[str, Any]:
    """Saturation on a fresh server with every message encrypted end to end: the
    generators send messages encrypted ahead (``prepare``, outside the window), so
    that they cost about what a plain send does; afterwards every delivery is
    decrypted (``verify``), outside the window too."""
    with udpchat_server(python=python) as (pid, port), py_spy(pid, spy):
        team.call("setup", port, workers, True)
        messages = POOL_RATE * (timing.warmup + timing.saturation)
        messages += E2EE_RATE * (timing.warmup / 2 + timing.step)
        count = math.ceil(messages / (workers * pairs))
        encrypt_cost = statistics.median(team.call("prepare", count, timeout=DEADLINE * 2))
        results, cpu, states = windowed(
            functools.partial(team.call, "saturate"), pid, timing.warmup, timing.saturation
        )
        if not all(r["drained"] for r in results):
            team.call("drain", timing.backlog)
        at_rate, rate_cpu, _ = windowed(
            functools.partial(team.call, "offer", E2EE_RATE / workers),
            pid,
            timing.warmup / 2,
            timing.step,
        )
        rate_delivered = sum(r["delivered"] for r in at_rate)
        if not all(r["drained"] for r in at_rate):
            team.call("drain", timing.backlog)
        checked = team.call("verify", timeout=DEADLINE * 2)
    team.call("close")
    delivered = sum(r["delivered"] for r in results)
    undecryptable = sum(c["undecryptable"] for c in checked)
    if undecryptable:
        raise RuntimeError(f"{undecryptable} encrypted deliveries did not decrypt")
    return {
        "e2ee_msgs_per_s": delivered / timing.saturation,
        "e2ee_server_cpu_us_per_msg": cpu / max(1, delivered) * 1e6,
        "e2ee_server_cpu_share": cpu / timing.saturation,
        "e2ee_generator_cpu_share": max(r["generator_cpu_share"] for r in results),
        "e2ee_machine_busy_cores": states["machine"],
        "e2ee_decrypted": sum(c["decrypted"] for c in checked),
        "e2ee_undecryptable": undecryptable,
        "e2ee_encrypted_live": sum(r["encrypted_live"] for r in at_rate),
        "e2ee_at_rate_achieved": rate_delivered / timing.step,
        "e2ee_at_rate_cpu_us_per_msg": rate_cpu / max(1, rate_delivered) * 1e6,
        "e2ee_encrypt_us": encrypt_cost * 1e6,
    }


def one_run(
    workers: int,
    pairs: int,
    timing: Timing,
    profile: str | None,
    spy: str | None = None,
    *,
    python: str = sys.executable,
    e2ee: bool = True,
) -> dict[str, Any]:
    """One fresh server (run by ``python``) and relay: every figure once (and
    first, ``e2ee``, the encrypted saturation on a server of its own, just before
    the plain one's)."""
    team = Workers(workers, pairs)
    try:
        encrypted = (
            encrypted_saturation(
                team, workers, pairs, timing, f"{spy}.e2ee" if spy else None, python=python
            )
            if e2ee and profile is None
            else {}
        )
        with udpchat_server(profile, python=python) as (pid, port), py_spy(pid, spy):
            team.call("setup", port, workers)
            results, cpu, states = windowed(
                functools.partial(team.call, "saturate"),
                pid,
                timing.warmup,
                timing.saturation,
            )
            delivered = sum(r["delivered"] for r in results)
            saturated = [x for r in results for x in r["latencies"]]
            if not all(r["drained"] for r in results):
                team.call("drain", timing.backlog)  # the rate steps start from empty
            run: dict[str, Any] = {
                "udpchat_msgs_per_s": delivered / timing.saturation,
                "server_cpu_us_per_msg": cpu / max(1, delivered) * 1e6,
                "server_cpu_share": cpu / timing.saturation,
                "saturated_p50_ms": percentile(saturated, 50) * 1e3,
                "generator_cpu_share": max(r["generator_cpu_share"] for r in results),
                "server_disk_wait_share": states.get("D", 0.0),
                # How the server's speed shapes its batches: a faster server
                # turns more often, each turn and commit carrying fewer messages.
                "saturated_turns_per_msg": states["turns"] / max(1, delivered),
                "saturated_commits_per_msg": states["commits"] / max(1, delivered),
                "machine_busy_cores": states["machine"],
                "other_processes_cores": states["machine"]
                - cpu / timing.saturation
                - sum(r["generator_cpu_share"] for r in results),
                "latency": [],
            }
            for rate in steps_to_run(timing.rates, run["latency"]):
                results, cpu, states = windowed(
                    functools.partial(team.call, "offer", rate / workers),
                    pid,
                    timing.warmup / 2,
                    timing.step,
                )
                latencies = [x for r in results for x in r["latencies"]]
                delivered = sum(r["delivered"] for r in results)
                achieved = delivered / timing.step
                drained = all(r["drained"] for r in results)
                if not drained:
                    # Past saturation the backlog outlives the window: let it clear
                    # (bounded) so that the next step starts from an empty pipeline.
                    drained = all(team.call("drain", timing.backlog, timeout=DEADLINE))
                run["latency"].append(
                    {
                        "offered": rate,
                        "achieved": achieved,
                        "p50_ms": percentile(latencies, 50) * 1e3,
                        "p99_ms": percentile(latencies, 99) * 1e3,
                        "server_cpu_us_per_msg": cpu / max(1, delivered) * 1e6,
                        "server_cpu_share": cpu / timing.step,
                        "generator_cpu_share": max(r["generator_cpu_share"] for r in results),
                        "server_disk_wait_share": states.get("D", 0.0),
                        "commits_per_msg": states["commits"] / max(1, delivered),
                        "turns_per_msg": states["turns"] / max(1, delivered),
                        "commit_waits": states["commit_waits"],
                        "commit_waits_overslept": states["commit_waits_overslept"],
                        "overloaded": achieved < OVERLOAD * rate,
                        "backlog_cleared": drained,
                    }
                )
            run["server_rss_mib"] = rss_mib(pid)
        team.call("close")
        run["raw_relay_msgs_per_s"], run["raw_relay_cpu_us_per_msg"] = raw_saturation(team, timing)
        run["ratio"] = run["udpchat_msgs_per_s"] / run["raw_relay_msgs_per_s"]
        if encrypted:
            run.update(encrypted)
            # The same run's two saturations, a few seconds apart on the same machine.
            run["e2ee_cpu_ratio"] = (
                encrypted["e2ee_server_cpu_us_per_msg"] / run["server_cpu_us_per_msg"]
            )
            run["e2ee_throughput_ratio"] = encrypted["e2ee_msgs_per_s"] / run["udpchat_msgs_per_s"]
            plain = next(s for s in run["latency"] if s["offered"] == E2EE_RATE)
            run["e2ee_at_rate_cpu_ratio"] = (
                encrypted["e2ee_at_rate_cpu_us_per_msg"] / plain["server_cpu_us_per_msg"]
            )
        run["p99_crosses_5ms_at"] = crossing(run["latency"])
        # Then the crossing is somewhere below the lowest rate stepped through.
        run["p99_over_5ms_at_lowest_step"] = run["latency"][0]["p99_ms"] > TARGET_P99_MS
        carried = [s["offered"] for s in run["latency"] if not s["overloaded"]]
        run["highest_sustained_rate"] = max(carried, default=0)
        return run
    finally:
        team.stop()


def raw_saturation(team: Workers, timing: Timing) -> tuple[float, float]:
    """The raw relay at saturation, driven by ``team`` (its clients closed): messages
    a second and the relay's CPU microseconds a message."""
    with raw_relay_process() as (relay_pid, relay_port):
        results, cpu, _ = windowed(
            functools.partial(team.call, "raw", relay_port),
            relay_pid,
            timing.warmup,
            timing.saturation,
        )
    delivered = sum(r["delivered"] for r in results)
    return delivered / timing.saturation, cpu / max(1, delivered) * 1e6


def saturation_point(workers: int, pairs: int, timing: Timing) -> dict[str, Any]:
    """Saturation only, for ``workers`` generator processes: udpchat and the raw relay."""
    team = Workers(workers, pairs)
    try:
        with udpchat_server() as (pid, port):
            team.call("setup", port, workers)
            results, cpu, _ = windowed(
                functools.partial(team.call, "saturate"), pid, timing.warmup, timing.saturation
            )
            delivered = sum(r["delivered"] for r in results)
            point = {
                "workers": workers,
                "udpchat_msgs_per_s": delivered / timing.saturation,
                "server_cpu_us_per_msg": cpu / max(1, delivered) * 1e6,
                "server_cpu_share": cpu / timing.saturation,
            }
        team.call("close")
        point["raw_relay_msgs_per_s"], _ = raw_saturation(team, timing)
        return point
    finally:
        team.stop()


def steps_to_run(rates: list[int], done: list[dict[str, Any]]) -> Iterator[int]:
    """The offered rates, ascending, as long as the system carries them; past the
    first overloaded one only 5,000/s (the issue's reference rate) is still run."""
    for rate in rates:
        if done and done[-1]["overloaded"]:
            if rate == REFERENCE_RATE and all(s["offered"] != rate for s in done):
                yield rate
            continue
        yield rate


def crossing(steps: list[dict[str, Any]]) -> float | None:
    """The offered rate at which p99 reaches the target, interpolated between steps
    (the lowest step if p99 is over the target there already)."""
    previous: dict[str, Any] | None = None
    for step in steps:
        if step["p99_ms"] > TARGET_P99_MS:
            if previous is None:
                return float(step["offered"])
            share = (TARGET_P99_MS - previous["p99_ms"]) / (step["p99_ms"] - previous["p99_ms"])
            return float(previous["offered"] + share * (step["offered"] - previous["offered"]))
        previous = step
    return None


# --- several runs --------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict[str, Any]], workers: int, pairs: int) -> dict[str, Any]:
    """Medians over the runs (and min/max as the spread)."""
    scalar = [
        "udpchat_msgs_per_s",
        "raw_relay_msgs_per_s",
        "ratio",
        "server_cpu_us_per_msg",
        "server_cpu_share",
        "server_rss_mib",
        "saturated_p50_ms",
        "generator_cpu_share",
        "server_disk_wait_share",
        "saturated_turns_per_msg",
        "saturated_commits_per_msg",
        "machine_busy_cores",
        "other_processes_cores",
        "raw_relay_cpu_us_per_msg",
        "highest_sustained_rate",
    ]
    if all("e2ee_cpu_ratio" in r for r in runs):
        scalar += [
            "e2ee_msgs_per_s",
            "e2ee_server_cpu_us_per_msg",
            "e2ee_server_cpu_share",
            "e2ee_generator_cpu_share",
            "e2ee_machine_busy_cores",
            "e2ee_encrypt_us",
            "e2ee_cpu_ratio",
            "e2ee_throughput_ratio",
            "e2ee_at_rate_achieved",
            "e2ee_at_rate_cpu_us_per_msg",
            "e2ee_at_rate_cpu_ratio",
        ]
    summary: dict[str, Any] = {name: statistics.median(r[name] for r in runs) for name in scalar}
    offered = sorted({step["offered"] for r in runs for step in r["latency"]})
    latency = []
    for rate in offered:
        steps = [s for r in runs for s in r["latency"] if s["offered"] == rate]
        latency.append(
            {
                "offered": rate,
                "achieved": statistics.median(s["achieved"] for s in steps),
                "p50_ms": statistics.median(s["p50_ms"] for s in steps),
                "p99_ms": statistics.median(s["p99_ms"] for s in steps),
                "p99_ms_min": min(s["p99_ms"] for s in steps),
                "p99_ms_max": max(s["p99_ms"] for s in steps),
                **{
                    name: statistics.median(s[name] for s in steps)
                    for name in (
                        "server_cpu_us_per_msg",
                        "server_cpu_share",
                        "server_disk_wait_share",
                        "generator_cpu_share",
                        "commits_per_msg",
                        "turns_per_msg",
                    )
                },
                "overloaded_runs": sum(s["overloaded"] for s in steps),
                "runs": len(steps),
            }
        )
    # (Absent when ``--rates`` leaves it out: then no headline p50 and p99.)
    nan = {"p50_ms": math.nan, "p99_ms": math.nan}
    at_5000 = next((s for s in latency if s["offered"] == REFERENCE_RATE), nan)
    crossings = [r["p99_crosses_5ms_at"] for r in runs if r["p99_crosses_5ms_at"] is not None]
    summary.update(
        {
            "p50_ms": at_5000["p50_ms"],
            "p99_ms": at_5000["p99_ms"],
            "latency": latency,
            "p99_crosses_5ms_at": statistics.median(crossings) if crossings else None,
            "p99_over_5ms_at_lowest_step": any(r["p99_over_5ms_at_lowest_step"] for r in runs),
            "runs": len(runs),
            "workers": workers,
            "pairs_per_worker": pairs,
            "connections": 2 * workers * pairs,
            "spread": {
                name: spread([r[name] for r in runs])
                for name in ("udpchat_msgs_per_s", "raw_relay_msgs_per_s", "ratio")
            },
        }
    )
    if "e2ee_cpu_ratio" in summary:
        for name in (
            "e2ee_cpu_ratio",
            "e2ee_msgs_per_s",
            "e2ee_throughput_ratio",
            "e2ee_at_rate_cpu_ratio",
        ):
            summary["spread"][name] = spread([r[name] for r in runs])
        summary["e2ee_cpu_ratios"] = [r["e2ee_cpu_ratio"] for r in runs]
        summary["e2ee_at_rate_cpu_ratios"] = [r["e2ee_at_rate_cpu_ratio"] for r in runs]
        for name in ("e2ee_decrypted", "e2ee_undecryptable", "e2ee_encrypted_live"):
            summary[name] = sum(r[name] for r in runs)
    if crossings:
        summary["spread"]["p99_crosses_5ms_at"] = spread(crossings)
    return summary


def print_table(summary: dict[str, Any]) -> None:
    s = summary
    print(
        f"{s['workers']} generator processes x {s['pairs_per_worker']} pairs "
        f"({s['connections']} connections) over 127.0.0.1; median of {s['runs']} runs "
        "[min-max]"
    )
    for name, label in (
        ("udpchat_msgs_per_s", "udpchat server (SQLite, fsync per batch)"),
        ("raw_relay_msgs_per_s", "raw UDP relay, no protocol"),
    ):
        sp = s["spread"][name]
        print(f"  {label:42} {sp['median']:9.0f} msg/s  [{sp['min']:.0f}-{sp['max']:.0f}]")
    sp = s["spread"]["ratio"]
    print(f"  {'ratio udpchat/raw':42} {sp['median']:9.3f}x      [{sp['min']:.3f}-{sp['max']:.3f}]")
    print(f"  {'server CPU per message at saturation':42} {s['server_cpu_us_per_msg']:9.0f} µs")
    print(f"  {'server CPU used at saturation':42} {s['server_cpu_share']:9.2f} cores")
    print(f"  {'server loop waiting on the disk (state D)':42} {s['server_disk_wait_share']:9.0%}")
    print(
        f"  {'turns, commits a message at saturation':42} {s['saturated_turns_per_msg']:9.4f}"
        f"  {s['saturated_commits_per_msg']:.4f}"
    )
    print(
        f"  {'machine busy at saturation (all processes)':42} {s['machine_busy_cores']:9.2f} cores"
    )
    print(
        f"  {'of which others (not server, generator)':42} {s['other_processes_cores']:9.2f} cores"
    )
    print(f"  {'busiest generator process at saturation':42} {s['generator_cpu_share']:9.2f} cores")
    print(f"  {'latency p50 at saturation':42} {s['saturated_p50_ms']:9.1f} ms")
    print(f"  {'raw relay CPU per message':42} {s['raw_relay_cpu_us_per_msg']:9.1f} µs")
    print(f"  {'server RSS at the end':42} {s['server_rss_mib']:9.1f} MiB")
    if "e2ee_cpu_ratio" in s:
        print("  end-to-end encrypted (a server of its own, just before the plain one):")
        sp = s["spread"]["e2ee_msgs_per_s"]
        label = "encrypted saturation"
        print(f"  {label:42} {sp['median']:9.0f} msg/s  [{sp['min']:.0f}-{sp['max']:.0f}]")
        label = "server CPU per encrypted message"
        print(f"  {label:42} {s['e2ee_server_cpu_us_per_msg']:9.0f} µs")
        sp = s["spread"]["e2ee_cpu_ratio"]
        label = "encrypted / plain CPU a message, per run"
        print(f"  {label:42} {sp['median']:9.3f}x      [{sp['min']:.3f}-{sp['max']:.3f}]")
        sp = s["spread"]["e2ee_throughput_ratio"]
        label = "encrypted / plain msg/s, per run"
        print(f"  {label:42} {sp['median']:9.3f}x      [{sp['min']:.3f}-{sp['max']:.3f}]")
        label = f"server CPU a message at {E2EE_RATE}/s, encrypted"
        print(f"  {label:42} {s['e2ee_at_rate_cpu_us_per_msg']:9.0f} µs")
        sp = s["spread"]["e2ee_at_rate_cpu_ratio"]
        label = f"encrypted / plain CPU a message at {E2EE_RATE}/s"
        print(f"  {label:42} {sp['median']:9.3f}x      [{sp['min']:.3f}-{sp['max']:.3f}]")
        label = "server CPU used, encrypted saturation"
        print(f"  {label:42} {s['e2ee_server_cpu_share']:9.2f} cores")
        label = "busiest generator, encrypted saturation"
        print(f"  {label:42} {s['e2ee_generator_cpu_share']:9.2f} cores")
        label = "a message encrypted ahead (generator CPU)"
        print(f"  {label:42} {s['e2ee_encrypt_us']:9.1f} µs")
        print(
            f"  {'deliveries decrypted afterwards':42} {s['e2ee_decrypted']:9d} "
            f"({s['e2ee_undecryptable']} undecryptable; {s['e2ee_encrypted_live']} "
            "encrypted while sending)"
        )
    print()
    print(
        "  offered/s  achieved/s   p50 ms   p99 ms  [p99 min-max]    "
        "server µs/msg  server cores  disk wait  generator cores"
    )
    for step in s["latency"]:
        p99_range = f"[{step['p99_ms_min']:.1f}-{step['p99_ms_max']:.1f}]"
        print(
            f"  {step['offered']:9d}  {step['achieved']:10.0f} {step['p50_ms']:8.2f} "
            f"{step['p99_ms']:8.2f}  {p99_range:16} {step['server_cpu_us_per_msg']:13.0f}"
            f"  {step['server_cpu_share']:12.2f}  {step['server_disk_wait_share']:9.0%}"
            f"  {step['generator_cpu_share']:15.2f}  {step['commits_per_msg']:11.2f}"
            f"  {step['turns_per_msg']:9.2f}"
        )
    crossing_at = s["p99_crosses_5ms_at"]
    where = "not reached" if crossing_at is None else f"{crossing_at:.0f} msg/s offered"
    if s["p99_over_5ms_at_lowest_step"]:
        where += " (over already at the lowest rate stepped: the crossing is below it)"
    print(f"\n  p99 crosses {TARGET_P99_MS:g} ms at: {where}")
    print(
        f"  highest offered rate carried (>= {OVERLOAD:.0%}): {s['highest_sustained_rate']:.0f}/s"
    )


#: The figures compared between builds: (key, label, unit, format).
COMPARED = (
    ("udpchat_msgs_per_s", "saturation", "msg/s", "{:,.0f}"),
    ("server_cpu_us_per_msg", "server CPU per message at saturation", "µs", "{:.1f}"),
    ("p99_5000", "p99 at 5,000/s offered", "ms", "{:.1f}"),
    ("p50_5000", "p50 at 5,000/s offered", "ms", "{:.1f}"),
    ("cpu_1000", "server CPU per message at 1,000/s", "µs", "{:.0f}"),
    ("p99_1000", "p99 at 1,000/s offered", "ms", "{:.1f}"),
    ("commits_1000", "commits per message at 1,000/s", "", "{:.2f}"),
    ("cpu_100", "server CPU per message at 100/s", "µs", "{:.0f}"),
    ("p99_100", "p99 at 100/s offered", "ms", "{:.1f}"),
    ("commits_100", "commits per message at 100/s", "", "{:.2f}"),
    ("server_rss_mib", "server RSS at the end", "MiB", "{:.1f}"),
)


def headline(run: dict[str, Any]) -> dict[str, float]:
    """The compared figures of one run (NaN for a rate it did not step through)."""
    steps = {step["offered"]: step for step in run["latency"]}

    def at(rate: int, key: str) -> float:
        return float(steps[rate][key]) if rate in steps else math.nan

    return {
        "udpchat_msgs_per_s": run["udpchat_msgs_per_s"],
        "server_cpu_us_per_msg": run["server_cpu_us_per_msg"],
        "p99_5000": at(REFERENCE_RATE, "p99_ms"),
        "p50_5000": at(REFERENCE_RATE, "p50_ms"),
        "cpu_1000": at(1000, "server_cpu_us_per_msg"),
        "p99_1000": at(1000, "p99_ms"),
        "commits_1000": at(1000, "commits_per_msg"),
        "cpu_100": at(100, "server_cpu_us_per_msg"),
        "p99_100": at(100, "p99_ms"),
        "commits_100": at(100, "commits_per_msg"),
        "server_rss_mib": run["server_rss_mib"],
    }


def compare(labels: list[str], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each build's median of the compared figures, and the ratios of each build to
    the first, run by run (runs paired in order), their median and spread."""
    first = labels[0]
    table: dict[str, Any] = {"builds": labels, "median": {}, "ratio": {}}

    def median(values: list[float]) -> float:
        # (A rate that a run did not step through, past its saturation, is NaN.)
        known = [v for v in values if not math.isnan(v)]
        return statistics.median(known) if known else math.nan

    for label in labels:
        figures = [headline(run) for run in runs[label]]
        table["median"][label] = {key: median([f[key] for f in figures]) for key, *_ in COMPARED}
    for label in labels[1:]:
        pairs = [(headline(a), headline(b)) for a, b in zip(runs[first], runs[label], strict=True)]
        table["ratio"][label] = {}
        for key, *_ in COMPARED:
            ratios = [b[key] / a[key] for a, b in pairs if not math.isnan(a[key] + b[key])]
            table["ratio"][label][key] = (
                spread(ratios) if ratios else {"median": math.nan, "min": math.nan, "max": math.nan}
            )
    return table


def print_comparison(table: dict[str, Any]) -> None:
    labels = table["builds"]
    first = labels[0]
    print(f"\nbuilds side by side (medians; ratio to {first}: run by run, median [min-max])")
    header = f"  {'figure':40} " + " ".join(f"{label:>12}" for label in labels)
    print(header + "".join(f"  {label + '/' + first:>24}" for label in labels[1:]))
    for key, label, unit, fmt in COMPARED:
        cells = " ".join(f"{fmt.format(table['median'][b][key]):>12}" for b in labels)
        ratios = "".join(
            "  {:>24}".format(f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]")
            for r in (table["ratio"][b][key] for b in labels[1:])
        )
        print(f"  {label + ' (' + unit + ')':40} {cells}{ratios}")


def print_profile(path: str) -> None:
    import pstats

    print(f"\nserver profile ({path}), top functions by own time:")
    pstats.Stats(path).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--pairs", type=int, default=16, help="pairs of friends per worker")
    parser.add_argument("--runs", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer rates")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the server (one run)")
    parser.add_argument(
        "--py-spy",
        metavar="FILE",
        dest="spy",
        help="record the server with py-spy in the first run; print its split by layer",
    )
    parser.add_argument(
        "--scaling",
        metavar="N,N,...",
        help="also saturation with each number of generator processes (e.g. 1,2,3,4)",
    )
    parser.add_argument("--plot", metavar="DIR", type=Path, help="draw the plots into DIR")
    parser.add_argument(
        "--server-python",
        metavar="LABEL=PYTHON",
        action="append",
        default=[],
        help="run the server with this interpreter (twice or more: builds side by side)",
    )
    parser.add_argument(
        "--no-e2ee",
        dest="e2ee",
        action="store_false",
        help="leave out the end-to-end encrypted saturation measured in each run",
    )
    parser.add_argument(
        "--rates",
        metavar="N,N,...",
        help="step through these offered rates only (e.g. 100,1000: the low-load figures)",
    )
    args = parser.parse_args()
    if args.rates and args.e2ee and str(E2EE_RATE) not in args.rates.split(","):
        parser.error(f"--rates without {E2EE_RATE} needs --no-e2ee (its figure is at that rate)")
    builds = [spec.split("=", 1) for spec in args.server_python]
    if any(len(build) != 2 for build in builds):
        parser.error("--server-python takes LABEL=PYTHON")
    if len(builds) > 1:
        if args.profile or args.spy or args.scaling or args.plot:
            parser.error("builds side by side: no --profile, --py-spy, --scaling or --plot")
        side_by_side(builds, args)
        return
    python = builds[0][1] if builds else sys.executable
    scaling = [int(n) for n in args.scaling.split(",")] if args.scaling else []
    for workers in [args.workers, *scaling]:
        if not 1 <= workers * args.pairs * 2 <= 200:
            parser.error("at most 200 connections: the server keeps 256 per address")
    timing = chosen_timing(args)
    runs = 1 if args.profile else (args.runs or (1 if args.quick else 3))
    results = [
        one_run(
            args.workers,
            args.pairs,
            timing,
            args.profile,
            args.spy if i == 0 else None,
            python=python,
            e2ee=args.e2ee,
        )
        for i in range(runs)
    ]
    summary = summarize(results, args.workers, args.pairs)
    if scaling:
        summary["scaling"] = [saturation_point(n, args.pairs, timing) for n in scaling]
    if args.json:
        print(json.dumps(summary))
    else:
        print_table(summary)
        for point in summary.get("scaling", []):
            print(
                f"  {point['workers']} generator processes: udpchat "
                f"{point['udpchat_msgs_per_s']:.0f} msg/s ({point['server_cpu_us_per_msg']:.0f}"
                f" µs, {point['server_cpu_share']:.2f} cores), raw relay "
                f"{point['raw_relay_msgs_per_s']:.0f} msg/s"
            )
    if args.profile:
        print_profile(args.profile)
    if args.spy and not args.json:
        from layers import print_split

        print_split(Path(args.spy))
    if args.plot:
        from plots import latency_plot, scaling_plot

        latency_plot(summary, args.plot)
        if scaling:
            scaling_plot(summary["scaling"], args.plot)


def retried(workers: int, pairs: int, timing: Timing, python: str, label: str) -> dict[str, Any]:
    """One run, started again once if it failed (on a loaded shared machine the
    set-up's logins can outlast their deadline): a build's lost run would unpair
    the others."""
    # (Builds compared side by side: the plain path only, as it was measured.)
    try:
        return one_run(workers, pairs, timing, None, python=python, e2ee=False)
    except RuntimeError as exc:
        print(f"{label}: the run failed ({exc}); once more", file=sys.stderr)
        return one_run(workers, pairs, timing, None, python=python, e2ee=False)


def chosen_timing(args: argparse.Namespace) -> Timing:
    """The phases' lengths (``--quick``), stepping through ``--rates`` if given."""
    timing = QUICK if args.quick else FULL
    if args.rates:
        timing = dataclasses.replace(timing, rates=sorted(int(n) for n in args.rates.split(",")))
    return timing


def side_by_side(builds: list[list[str]], args: argparse.Namespace) -> None:
    """``--server-python`` given twice or more: every build's runs, interleaved."""
    timing = chosen_timing(args)
    count = args.runs or (1 if args.quick else 3)
    labels = [label for label, _ in builds]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for i in range(count):
        # Alternate the order, so that a drift of the machine's load falls on both.
        for label, python in builds if i % 2 == 0 else builds[::-1]:
            runs[label].append(retried(args.workers, args.pairs, timing, python, label))
    summaries = {label: summarize(runs[label], args.workers, args.pairs) for label in labels}
    table = compare(labels, runs)
    if args.json:
        print(json.dumps({"builds": summaries, "comparison": table, "runs": runs}))
        return
    for label in labels:
        print(f"== {label} ({dict(builds)[label]})")
        print_table(summaries[label])
        print()
    print_comparison(table)


if __name__ == "__main__":
    main()
