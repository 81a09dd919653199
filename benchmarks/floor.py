"""The floor of a message's path: the same processes and hops as udpchat's on
PostgreSQL and NATS (or SQLite), none of its logic, so that each latency that
``cluster.py`` measures stands beside what the machine gives the same path bare.

Run: ``.venv/bin/python benchmarks/floor.py [--only two_nodes,single] [--rate 200]
[--prefill 20000] [--json] [--postgres URL] [--nats URL]``; ``cluster.py`` measures
it beside each of its configurations in the same run (``--no-floor`` not to).

A message's path, for each configuration (``FLOORS``), everything on 127.0.0.1:

* the **generator** (``--workers`` processes, as ``cluster.py``'s) sends a datagram
  (the conversation, the recipient's port, and a 60-byte text that carries the time
  the message was due) to a **node** at ``--rate`` datagrams a second in all, open
  loop, round robin over its pairs: pair k sends to node k mod (the nodes);
* a node is a process with one loop thread (a selector over its UDP socket, its
  wake-up socket and its parent's pipe), as ``udpchat-server``'s: it reads every
  datagram waiting (a batch), takes each message's seq in its conversation (in
  memory), and stores the batch in one transaction: in PostgreSQL (psycopg 3, one
  pipeline: ``BEGIN``, one ``INSERT ... SELECT FROM unnest(...)`` into a table like
  udpchat's ``messages`` with the same columns, unique keys and index, ``COMMIT``:
  one round trip, the WAL's fsync), or in SQLite (``BEGIN``, the rows, ``COMMIT``,
  in WAL mode with ``synchronous=FULL``, as ``stores/sqlite.py`` sets it);
* then, by configuration:

  - ``sqlite``, ``single`` (a single server): it sends each message's text to its
    recipient from memory;
  - ``one_node`` (a cluster of one): it reads the batch's rows back (one
    ``SELECT`` of them by conversation and seq) and sends each text it read, then
    publishes the batch's keys on NATS (as a node writes its datagrams first and
    publishes after them);
  - ``two_nodes`` (across): it publishes the batch's keys on NATS (core NATS, no
    JetStream, from a bus thread running nats-py's asyncio loop, handed over with
    ``call_soon_threadsafe`` as ``udpchat_server.bus`` does, the switch interval
    at ``bus.SWITCH_INTERVAL``); the other node's bus thread hears them, wakes its
    loop through the wake-up socket, and the loop reads the rows (one ``SELECT``)
    and sends each text it read to its recipient. Both nodes do both halves, as
    both of udpchat's nodes do with pairs across.

* the generator's recipient socket reads the text, and the latency is from the
  time the message was due to its receipt (as ``relay.py``'s generator measures:
  a generator behind its schedule shows up as latency).

Measured twice on the same processes: on the empty table, then after the table
was filled with ``--prefill`` rows in one statement (``cluster.py`` passes the rows
its configuration's saturation left, so that PostgreSQL's indexes, WAL and
statistics are about the same size as for udpchat's after-saturation window).

Bounded: every process stops when its parent says, or after ``DEADLINE`` of
silence; every wait has a timeout; a configuration's database is dropped after it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.connection
import os
import selectors
import socket
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg

from relay import DEADLINE, DRAIN, HOST, TEXT_SIZE, percentile, text_for

#: Each configuration's floor: (store, nodes, publishes on the bus, reads its own rows
#: back before sending them). Named as ``cluster.py``'s configurations.
FLOORS = {
    "sqlite": ("sqlite", 1, False, False),
    "single": ("postgres", 1, False, False),
    "one_node": ("postgres", 1, True, True),
    "two_nodes": ("postgres", 2, True, False),
}
#: A datagram to a node: the conversation, the recipient's port, then the text.
HEADER = struct.Struct("!IH")
#: A key on the bus: (conversation, seq).
KEY = struct.Struct("!Iq")
#: The bus thread's switch interval, as ``udpchat_server.bus.SWITCH_INTERVAL``.
SWITCH_INTERVAL = 0.0005
#: The table, as udpchat's ``messages`` on PostgreSQL (``stores/postgres.py``: the
#: same columns, unique keys and index; no foreign key, there is no conversations
#: table here).
POSTGRES_TABLE = [
    """CREATE TABLE messages (
        position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id BYTEA NOT NULL UNIQUE,
        conversation BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        text TEXT NOT NULL,
        sent_at BIGINT NOT NULL,
        origin BYTEA,
        delivered_at DOUBLE PRECISION,
        UNIQUE (conversation, seq))""",
    "CREATE INDEX messages_by_time ON messages (sent_at)",
]
#: The same in SQLite (``stores/sqlite.py``'s columns).
SQLITE_TABLE = [
    """CREATE TABLE messages (
        position INTEGER PRIMARY KEY,
        id BLOB NOT NULL UNIQUE,
        conversation INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        text TEXT NOT NULL,
        sent_at INTEGER NOT NULL,
        UNIQUE (conversation, seq))""",
]
#: A batch's rows in one statement, as the node's ``ADD_MESSAGES`` takes them.
INSERT = (
    "INSERT INTO messages (id, conversation, seq, sender, recipient, text, sent_at) "
    "SELECT * FROM unnest(%s::bytea[], %s::bigint[], %s::bigint[], %s::text[], "
    "%s::text[], %s::text[], %s::bigint[])"
)
#: The rows a batch (or the news) names, in one statement: each by its key (a
#: join would let the planner, which guesses 100 rows for ``unnest``, hash the
#: table whole: 7-9 ms on 45,000 rows).
SELECT = (
    "SELECT m.text, m.recipient "
    "FROM unnest(%s::bigint[], %s::bigint[]) AS k (conversation, seq) "
    "CROSS JOIN LATERAL (SELECT text, recipient FROM messages "
    "WHERE conversation = k.conversation AND seq = k.seq) AS m"
)

Row = tuple[int, int, str]
"""A message as a node takes it: (conversation, the recipient's port, its text)."""
Key = tuple[int, int]
"""A stored message's key: (conversation, seq)."""


# --- the stores --------------------------------------------------------------------------


class Rows(Protocol):
    def store(self, batch: list[tuple[int, int, Row]]) -> None: ...
    def read(self, keys: list[Key]) -> list[tuple[str, str]]: ...
    def close(self) -> None: ...


class PostgresRows:
    """A node's connection to the floor's table (one round trip a call)."""

    def __init__(self, url: str) -> None:
        self.db = psycopg.connect(url, autocommit=True, connect_timeout=10)
        # As a node's connection: each statement planned for its values (a generic
        # plan made on the empty table is kept, and would scan the grown one) and
        # never compiled.
        self.db.execute("SET plan_cache_mode = force_custom_plan; SET jit = off")

    def store(self, batch: list[tuple[int, int, Row]]) -> None:
        """``batch``: (conversation, seq, row) each; one transaction, committed."""
        now = int(time.time() * 1e6)
        params = (
            [os.urandom(16) for _ in batch],
            [conversation for conversation, _, _ in batch],
            [seq for _, seq, _ in batch],
            [f"s{conversation}" for conversation, _, _ in batch],
            [str(row[1]) for _, _, row in batch],
            [row[2] for _, _, row in batch],
            [now] * len(batch),
        )
        with self.db.pipeline():  # BEGIN, the rows, COMMIT: one round trip
            self.db.execute("BEGIN")
            self.db.execute(INSERT, params)
            self.db.execute("COMMIT")

    def read(self, keys: list[Key]) -> list[tuple[str, str]]:
        conversations = [conversation for conversation, _ in keys]
        seqs = [seq for _, seq in keys]
        return [
            (str(text), str(recipient))
            for text, recipient in self.db.execute(SELECT, (conversations, seqs))
        ]

    def close(self) -> None:
        self.db.close()


class SqliteRows:
    """The floor's table in a SQLite file, with the server's pragmas."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")

    def store(self, batch: list[tuple[int, int, Row]]) -> None:
        now = int(time.time() * 1e6)
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "INSERT INTO messages (id, conversation, seq, sender, recipient, text, sent_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(os.urandom(16), c, seq, f"s{c}", str(row[1]), row[2], now) for c, seq, row in batch],
        )
        self.db.execute("COMMIT")

    def read(self, keys: list[Key]) -> list[tuple[str, str]]:
        found = []
        for conversation, seq in keys:
            found += self.db.execute(
                "SELECT text, recipient FROM messages WHERE conversation = ? AND seq = ?",
                (conversation, seq),
            ).fetchall()
        return [(str(text), str(recipient)) for text, recipient in found]

    def close(self) -> None:
        self.db.close()


def create_table(store: str, target: str) -> None:
    """The empty table in a fresh database (or file)."""
    if store == "sqlite":
        with contextlib.closing(sqlite3.connect(target, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode = WAL")
            for statement in SQLITE_TABLE:
                db.execute(statement)
        return
    with psycopg.connect(target, autocommit=True, connect_timeout=10) as db:
        for statement in POSTGRES_TABLE:
            db.execute(statement)


def prefill(store: str, target: str, count: int, conversations: int) -> None:
    """``count`` rows in the live conversations, before (below) the seqs the nodes
    take, so that their rows go where udpchat's would, at each conversation's end."""
    if count <= 0:
        return
    if store == "sqlite":
        with contextlib.closing(sqlite3.connect(target, isolation_level=None)) as db:
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO messages (id, conversation, seq, sender, recipient, text, "
                "sent_at) VALUES (?, ?, ?, 'prefill', '0', ?, ?)",
                (
                    (os.urandom(16), g % conversations, -1 - g // conversations, "x" * 60, g)
                    for g in range(count)
                ),
            )
            db.execute("COMMIT")
        return
    with psycopg.connect(target, autocommit=True, connect_timeout=10) as db:
        db.execute(
            "INSERT INTO messages (id, conversation, seq, sender, recipient, text, sent_at) "
            "SELECT uuid_send(gen_random_uuid()), g %% %s, -1 - g / %s, 'prefill', '0', "
            "repeat('x', 60), g FROM generate_series(0, %s) AS g",
            (conversations, conversations, count - 1),
        )


# --- a node ------------------------------------------------------------------------------


class Bus:
    """Core NATS on a thread of its own, as ``udpchat_server.bus.NatsBus``: nats-py's
    asyncio loop; a publish is handed over with ``call_soon_threadsafe``; what is
    heard is kept for the loop thread, which is woken through its wake-up socket."""

    def __init__(self, url: str, subject: str, wake: Callable[[], None]) -> None:
        self.url, self.subject, self.wake = url, subject, wake
        self.loop = asyncio.new_event_loop()
        self.lock = threading.Lock()
        self.heard: list[bytes] = []
        self.ready = threading.Event()
        self.nc: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self.thread.start()
        if not self.ready.wait(15) or self.nc is None:
            raise RuntimeError(f"cannot reach NATS at {self.url}")

    def publish(self, body: bytes) -> None:
        self.loop.call_soon_threadsafe(self._publish, body)

    def take(self) -> list[bytes]:
        with self.lock:
            heard, self.heard = self.heard, []
        return heard

    def close(self) -> None:
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self.loop)
            self.thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self._connect())
        self.loop.run_forever()

    async def _connect(self) -> None:
        import nats  # (as the node: only where the bus is used)

        try:
            self.nc = await nats.connect(self.url, connect_timeout=5, no_echo=True)
            await self.nc.subscribe(self.subject, cb=self._received)
        except Exception:
            self.nc = None
        self.ready.set()

    async def _received(self, msg: Any) -> None:
        with self.lock:
            self.heard.append(msg.data)
        self.wake()

    def _publish(self, body: bytes) -> None:
        if self.nc is not None:
            self.loop.create_task(self.nc.publish(self.subject, body))

    async def _close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        self.loop.stop()


def serve(
    conn: multiprocessing.connection.Connection,
    *,
    store: str,
    target: str,
    nats: str | None,
    subject: str,
    read_back: bool,
) -> None:
    """A node: see the module's docstring. Sends its port to the parent, then runs
    until the parent says ``stop`` (or is silent for ``DEADLINE``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    wake_in, wake_out = socket.socketpair()
    wake_in.setblocking(False)
    wake_out.setblocking(False)

    def wake() -> None:
        with contextlib.suppress(BlockingIOError):
            wake_out.send(b"\0")

    rows: Rows = SqliteRows(target) if store == "sqlite" else PostgresRows(target)
    bus = Bus(nats, subject, wake) if nats is not None else None
    if bus is not None:
        bus.start()
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "datagrams")
    selector.register(wake_in, selectors.EVENT_READ, "wake")
    selector.register(conn, selectors.EVENT_READ, "parent")
    seqs: dict[int, int] = {}
    # Each call's time (ms): what of the path is the store's, for the stats command.
    timed: dict[str, list[float]] = {"store_ms": [], "read_ms": []}
    conn.send(sock.getsockname()[1])

    def send(found: list[tuple[str, str]]) -> None:
        for text, recipient in found:
            with contextlib.suppress(BlockingIOError):
                sock.sendto(text.encode(), (HOST, int(recipient)))

    def timed_read(keys: list[Key]) -> list[tuple[str, str]]:
        began = time.perf_counter()
        found = rows.read(keys)
        timed["read_ms"].append((time.perf_counter() - began) * 1e3)
        return found

    silent_since = time.monotonic()
    try:
        while time.monotonic() - silent_since < DEADLINE:
            for key, _ in selector.select(1.0):
                if key.data == "parent":
                    try:
                        said = conn.recv()
                    except EOFError:  # the parent is gone
                        return
                    if said == "stop":
                        return
                    if said == "stats":  # the calls' times since the last ask
                        conn.send(timed)
                        timed = {"store_ms": [], "read_ms": []}
                    silent_since = time.monotonic()
                elif key.data == "datagrams":
                    batch = []
                    while True:
                        try:
                            data = sock.recv(2048)
                        except BlockingIOError:
                            break
                        conversation, port = HEADER.unpack_from(data)
                        seq = seqs[conversation] = seqs.get(conversation, 0) + 1
                        text = data[HEADER.size :].decode()
                        batch.append((conversation, seq, (conversation, port, text)))
                    if not batch:
                        continue
                    silent_since = time.monotonic()
                    began = time.perf_counter()
                    rows.store(batch)
                    timed["store_ms"].append((time.perf_counter() - began) * 1e3)
                    keys = [(conversation, seq) for conversation, seq, _ in batch]
                    if bus is None:  # a single server: pushed from memory
                        send([(row[2], str(row[1])) for _, _, row in batch])
                    elif read_back:  # a cluster of one: pushed from the database
                        send(timed_read(keys))
                    if bus is not None:  # the datagrams first, then the news
                        bus.publish(b"".join(KEY.pack(*k) for k in keys))
                else:
                    with contextlib.suppress(BlockingIOError):
                        while wake_in.recv(4096):
                            pass
                    assert bus is not None
                    keys = [
                        KEY.unpack_from(body, offset)
                        for body in bus.take()
                        for offset in range(0, len(body), KEY.size)
                    ]
                    if keys:
                        send(timed_read(keys))
    finally:
        if bus is not None:
            bus.close()
        rows.close()


# --- the generator -------------------------------------------------------------------------


def generate(conn: multiprocessing.connection.Connection, index: int, pairs: int) -> None:
    """A generator process: obeys ``offer`` commands (one window each) until ``stop``."""
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.bind((HOST, 0))
    inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inbox.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    inbox.bind((HOST, 0))
    inbox.setblocking(False)
    port = inbox.getsockname()[1]
    conn.send("ready")  # (a window scheduled before this would be over before it began)
    while conn.poll(DEADLINE):
        command, *args = conn.recv()
        if command != "offer":
            return
        ports, rate, start, warm, end = args
        conn.send(
            offer(
                out,
                inbox,
                port=port,
                index=index,
                pairs=pairs,
                ports=ports,
                rate=rate,
                start=start,
                warm=warm,
                end=end,
            )
        )


def offer(
    out: socket.socket,
    inbox: socket.socket,
    *,
    port: int,
    index: int,
    pairs: int,
    ports: list[int],
    rate: float,
    start: float,
    warm: float,
    end: float,
) -> dict[str, Any]:
    """``rate`` datagrams a second from ``start`` to ``end``, round robin over the
    pairs (pair k to node k mod the nodes); the latencies of those due from
    ``warm``, each from its due time to its receipt."""
    interval = 1.0 / rate
    sent = due_in_window = 0
    latencies: list[float] = []
    received = 0
    padding = TEXT_SIZE

    def receive() -> None:
        nonlocal received
        while True:
            try:
                data = inbox.recv(2048)
            except BlockingIOError:
                return
            now = time.monotonic()
            received += 1
            due = float(data.split(b" ", 1)[0])
            if warm <= due < end:
                latencies.append(now - due)

    selector = selectors.DefaultSelector()
    selector.register(inbox, selectors.EVENT_READ)
    time.sleep(max(0.0, start - time.monotonic()))
    while (now := time.monotonic()) < end:
        while (due := start + sent * interval) <= now:
            k = sent % pairs
            text = text_for(due)[:padding]
            datagram = HEADER.pack(index * pairs + k, port) + text.encode()
            out.sendto(datagram, (HOST, ports[k % len(ports)]))
            sent += 1
            due_in_window += warm <= due < end
        if selector.select(max(0.0, min(start + sent * interval, end) - time.monotonic())):
            receive()
    # What is in flight, bounded; what never came counts as the drain's length late.
    deadline = time.monotonic() + DRAIN
    while received < sent and time.monotonic() < deadline:
        if selector.select(max(0.0, deadline - time.monotonic())):
            receive()
    missing = due_in_window - len(latencies)
    latencies += [time.monotonic() - end] * max(0, missing)
    selector.close()
    return {"latencies": latencies, "sent": sent, "received": received}


# --- one configuration's floor --------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """How long the latency window lasts, and its warm-up (seconds)."""

    warmup: float
    latency: float


@contextlib.contextmanager
def fresh_target(store: str, admin_url: str) -> Iterator[str]:
    """A fresh database (its URL) or SQLite file (its path), gone after."""
    if store == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield str(Path(tmp) / "floor.sqlite3")
        return
    # (Imported here: cluster.py imports this module at its top.)
    from cluster import fresh_database

    with fresh_database(admin_url) as (url, _name):
        yield url


def measure(
    name: str,
    *,
    postgres: str,
    nats: str,
    workers: int,
    pairs: int,
    rate: float,
    window: Window,
    rows_after: int | None,
) -> dict[str, Any]:
    """``name``'s floor (``FLOORS``) on fresh processes and a fresh store: p50 and
    p99 at ``rate`` offered on the empty table (``floor_p50_ms``, ``floor_p99_ms``),
    then, unless ``rows_after`` is None, again after that many rows were stored
    (``floor_p50_after_ms``, ``floor_p99_after_ms``)."""
    store, count, bus, read_back = FLOORS[name]
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, as real nodes
    subject = f"udpchat.floor.{uuid.uuid4().hex}"
    conversations = workers * pairs
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(fresh_target(store, postgres))
        create_table(store, target)
        processes: list[tuple[Any, multiprocessing.connection.Connection]] = []

        def stop_all() -> None:
            for process, parent in processes:
                with contextlib.suppress(OSError):
                    parent.send("stop" if process.name.startswith("node") else ("stop",))
            for process, _ in processes:
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join(5)

        stack.callback(stop_all)
        ports, nodes = [], []
        for i in range(count):
            parent, child = spawn.Pipe()
            process = spawn.Process(
                target=serve,
                args=(child,),
                kwargs={
                    "store": store,
                    "target": target,
                    "nats": nats if bus else None,
                    "subject": subject,
                    "read_back": read_back,
                },
                name=f"node{i}",
                daemon=True,
            )
            process.start()
            processes.append((process, parent))
            nodes.append(parent)
            if not parent.poll(30):
                raise RuntimeError("a floor node did not start")
            ports.append(int(parent.recv()))
        generators = []
        for index in range(workers):
            parent, child = spawn.Pipe()
            process = spawn.Process(
                target=generate, args=(child, index, pairs), name=f"gen{index}", daemon=True
            )
            process.start()
            processes.append((process, parent))
            generators.append(parent)
        for parent in generators:  # started, imports done: the first window can be timed
            if not parent.poll(60) or parent.recv() != "ready":
                raise RuntimeError("a floor generator did not start")

        def latency(suffix: str) -> dict[str, Any]:
            start = time.monotonic() + 0.5  # every generator has its command by then
            warm = start + window.warmup / 2
            end = warm + window.latency
            for parent in generators:
                parent.send(("offer", ports, rate / workers, start, warm, end))
            results = []
            for parent in generators:
                if not parent.poll(end - time.monotonic() + DRAIN + 30):
                    raise RuntimeError("a floor generator did not answer")
                results.append(parent.recv())
            latencies = [x for r in results for x in r["latencies"]]
            if not latencies:
                raise RuntimeError("the floor's window measured nothing")
            found = {
                f"floor_p50{suffix}_ms": percentile(latencies, 50) * 1e3,
                f"floor_p99{suffix}_ms": percentile(latencies, 99) * 1e3,
                f"floor_received{suffix}": sum(r["received"] for r in results),
                f"floor_sent{suffix}": sum(r["sent"] for r in results),
            }
            # The nodes' own calls in the window (warm-up and drain included).
            timed: dict[str, list[float]] = {"store_ms": [], "read_ms": []}
            for parent in nodes:
                parent.send("stats")
                if not parent.poll(30):
                    raise RuntimeError("a floor node did not answer")
                for call, times in parent.recv().items():
                    timed[call] += times
            for call, times in timed.items():
                if times:
                    found[f"floor_{call[:-3]}{suffix}_p50_ms"] = percentile(times, 50)
                    found[f"floor_{call[:-3]}{suffix}_p99_ms"] = percentile(times, 99)
            return found

        # The first window warms the processes up (their imports, the first plans).
        figures = latency("")
        if rows_after is not None:
            prefill(store, target, rows_after, conversations)
            figures.update(latency("_after"))
            figures["floor_rows_after"] = rows_after
        return figures


def main() -> None:
    from cluster import DEFAULT_NATS, DEFAULT_POSTGRES, FULL, check_services, require_loopback

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated: " + ", ".join(FLOORS))
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--pairs", type=int, default=16, help="pairs per generator")
    parser.add_argument("--rate", type=float, default=200.0, help="offered datagrams/s")
    parser.add_argument("--prefill", type=int, default=20_000, help="rows before the second")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="administrative URL")
    parser.add_argument("--nats", default=DEFAULT_NATS, help="nats://HOST:PORT")
    args = parser.parse_args()
    names = list(FLOORS) if args.only is None else args.only.split(",")
    if not set(names) <= set(FLOORS):
        parser.error(f"--only names some of {', '.join(FLOORS)}")
    for url in (args.postgres, args.nats):
        require_loopback(url)
    check_services(args.postgres, args.nats)
    found = {
        name: measure(
            name,
            postgres=args.postgres,
            nats=args.nats,
            workers=args.workers,
            pairs=args.pairs,
            rate=args.rate,
            window=Window(FULL.warmup, FULL.latency),
            rows_after=args.prefill,
        )
        for name in names
    }
    if args.json:
        print(json.dumps(found))
        return
    print_floors(found, args.rate)


def print_floors(found: dict[str, dict[str, Any]], rate: float) -> None:
    """Each floor's p50 / p99 (ms), fresh and after the rows, with its nodes' calls."""
    print(f"  floor at {rate:.0f} msg/s offered, p50 / p99 ms: fresh, after the rows stored")
    for name, f in found.items():
        line = f"  {name:10} {f['floor_p50_ms']:6.2f} / {f['floor_p99_ms']:6.2f}"
        if "floor_p50_after_ms" in f:
            line += f"   {f['floor_p50_after_ms']:6.2f} / {f['floor_p99_after_ms']:6.2f}"
            line += f" ({f['floor_rows_after']:,} rows)"
            for call in ("store", "read"):
                if f"floor_{call}_after_p50_ms" in f:
                    line += (
                        f"; its {call} calls {f[f'floor_{call}_after_p50_ms']:.2f} / "
                        f"{f[f'floor_{call}_after_p99_ms']:.2f}"
                    )
        print(line)


if __name__ == "__main__":
    main()
