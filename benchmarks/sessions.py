"""Memory per idle logged-in connection on the server, sans-IO.

Run: ``.venv/bin/python benchmarks/sessions.py [--quick] [--json]
[--sizes 1000,10000,100000] [--store sqlite|memory] [--plot DIR]``.

One :class:`ChatServer` (on a SQLite file in a temporary directory by default, as
the real server; ``--store memory`` keeps accounts and sessions in the process,
where they count too) with the transport's connection cap raised to the size
measured. Clients are :class:`ClientConnection` s at simulated addresses (one
address each, so no per-address limit binds) in a process of their own (so that
their garbage does not fragment the server's heap and count as its memory),
their datagrams carried over a pipe and the clock a number. They connect, register
and log in a thousand at a time; once a batch is logged in the clock moves past
the acknowledgement delay so that nothing is left in flight, and the batch's
client objects are dropped: what remains is what the server keeps for an idle
logged-in connection (its transport connection, its chat state and, with
``--store memory``, the account and the session).

Two figures per size, each in a fresh process so that sizes do not share a heap:

* **traced**: the bytes Python allocated and still holds (``tracemalloc``, which
  sees every Python allocation but not SQLite's own page cache), divided by the
  connections, after a warm-up batch that pays the one-off costs (imports,
  caches); with the lines that hold most of it;
  by default only up to 10,000 connections (``--trace-up-to``), as it slows the
  run several times and the figure does not depend on the size;
* **RSS**: the growth of the process's resident memory (``VmRSS``) over the same
  span, in a run without ``tracemalloc`` (whose bookkeeping would inflate it).

The issue's target: 100,000 connections under 400 MiB, at most 4 KiB each.
``--plot DIR`` draws ``memory.png`` (bytes per connection against connections).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import multiprocessing.connection
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import attrs

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
from udpchat_server.stores.sqlite import SQLiteStore

SERVER = ("127.0.0.1", 9999)
PASSWORD = "benchmark-password"
GENEROUS = RateLimit(burst=1_000_000, interval=1e-6)
#: Clients alive at once: bounds the generator's own memory, which must not count.
BATCH = 1000
#: Logged in before the baseline, to pay the one-off costs outside the figure.
WARMUP = 50
#: A clock step: far below every timer (the ACK delay is 25 ms, the idle timeout
#: 30 s), so that nothing expires while the clients are being added.
TICK = 0.0001
#: Past the ACK delay: the last acknowledgements go out, nothing stays in flight.
SETTLE = 0.05
TARGET_BYTES = 4096
DEADLINE = 1800.0  # seconds for one size, at most


def rss_bytes() -> int:
    """This process's resident memory (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Clients:
    """The current batch of clients, in a process of their own (see :class:`World`)."""

    def __init__(self) -> None:
        self.clients: dict[tuple[str, int], ClientConnection] = {}

    def start(self, first: int, count: int, now: float) -> list[tuple[tuple[str, int], bytes]]:
        """Forget the last batch; connect, register and log in ``count`` new clients."""
        self.clients = {}
        for i in range(first, first + count):
            address = (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 40000)
            client = ClientConnection(server_address=SERVER, random=SeededRandomSource(i + 10))
            client.connect(now)
            client.register(f"user{i:07d}", PASSWORD)
            client.login(f"user{i:07d}", PASSWORD)
            self.clients[address] = client
        return self.step(now, [])

    def step(
        self, now: float, incoming: list[tuple[tuple[str, int], bytes]]
    ) -> list[tuple[tuple[str, int], bytes]]:
        """Take the server's datagrams, fire what is due; what the clients send."""
        for address, data in incoming:
            if address in self.clients:  # earlier batches' clients are gone
                self.clients[address].receive_datagram(data, SERVER, now)
        outgoing: list[tuple[tuple[str, int], bytes]] = []
        for address, client in self.clients.items():
            while client.next_event() is not None:
                pass
            timer = client.get_timer()
            if timer is not None and timer <= now:
                client.handle_timer(now)
            outgoing.extend((address, data) for data, _ in client.datagrams_to_send(now))
        return outgoing

    def logged_in(self) -> bool:
        return all(c.username is not None for c in self.clients.values())


def clients_process(conn: multiprocessing.connection.Connection) -> None:
    """Serve :class:`Clients` calls until the pipe closes."""
    clients = Clients()
    while True:
        try:
            name, args = conn.recv()
        except EOFError:
            return
        conn.send(getattr(clients, name)(*args))


class World:
    """The server, fed by clients that live in another process: only the server's
    memory is in this one (clients allocated and freed beside it left their heap
    fragmented, which made the RSS figure mostly theirs)."""

    def __init__(self, store: Store, capacity: int) -> None:
        self.now = 1_800_000_000.0
        defaults = ServerConfig()
        config = ServerConfig(
            scrypt=ScryptParams(n=16, r=1, p=1),
            registrations_per_address=GENEROUS,
            request_rate=GENEROUS,
            # Every client connects at once from its own address: the caps on
            # connections and handshakes in progress must hold them all.
            transport=attrs.evolve(
                defaults.transport,
                max_connections=capacity,
                max_half_open=max(defaults.transport.max_half_open, 2 * BATCH),
            ),
            max_pending_hash_jobs=2 * BATCH,
        )
        self.server = ChatServer(
            store=store,
            static_key=ServerKey.generate(SeededRandomSource(1)),
            clock=lambda: self.now,
            config=config,
            random=SeededRandomSource(2),
        )
        self.added = 0
        self._pipe, child = multiprocessing.Pipe()
        self._helper = multiprocessing.Process(target=clients_process, args=(child,), daemon=True)
        self._helper.start()
        child.close()

    def close(self) -> None:
        self._pipe.close()
        self._helper.join(10)
        if self._helper.is_alive():
            self._helper.kill()

    def _call(self, name: str, *args: Any) -> Any:
        self._pipe.send((name, args))
        if not self._pipe.poll(DEADLINE):
            raise RuntimeError(f"the clients' process did not answer {name!r}")
        return self._pipe.recv()

    def add_batch(self, count: int) -> None:
        """Connect, register and log in ``count`` new clients, then forget them."""
        outgoing = self._call("start", self.added, count, self.now)
        self.added += count
        deadline = time.monotonic() + DEADLINE
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError("the batch did not log in in time")
            outgoing = self.step(TICK, outgoing)
            if self._call("logged_in"):
                break
        for _ in range(3):
            outgoing = self.step(SETTLE, outgoing)

    def step(
        self, advance: float, incoming: list[tuple[tuple[str, int], bytes]]
    ) -> list[tuple[tuple[str, int], bytes]]:
        """Feed the clients' datagrams, run the server's turn, move the clock; carry
        the server's datagrams to the clients and return what they send."""
        server = self.server
        for address, data in incoming:
            server.receive_datagram(data, address, self.now)
        end = server.end_batch(self.now, run_hashes=True)
        while server.next_event() is not None:
            pass
        out = [(address, data) for data, address in end.datagrams]
        self.now += advance
        result: list[tuple[tuple[str, int], bytes]] = self._call("step", self.now, out)
        return result


def measure(size: int, store_kind: str, trace: bool) -> dict[str, Any]:
    """Memory held for ``size`` idle logged-in connections (run in a fresh process)."""
    with tempfile.TemporaryDirectory() as tmp:
        store: Store = (
            SQLiteStore.open(Path(tmp) / "sessions.sqlite3")
            if store_kind == "sqlite"
            else MemoryStore()
        )
        if trace:
            tracemalloc.start()
        world = World(store, capacity=size + WARMUP + 16)
        world.add_batch(WARMUP)
        gc.collect()
        traced_before = tracemalloc.get_traced_memory()[0] if trace else 0
        snapshot_before = tracemalloc.take_snapshot() if trace else None
        rss_before = rss_bytes()
        started = time.monotonic()
        while world.added < WARMUP + size:
            world.add_batch(min(BATCH, WARMUP + size - world.added))
        seconds = time.monotonic() - started
        gc.collect()
        result: dict[str, Any] = {
            "connections": world.server.connection_count,
            "online_users": len(world.server.online_users),
            "seconds": seconds,
            "rss_bytes_per_conn": (rss_bytes() - rss_before) / size,
        }
        if trace and snapshot_before is not None:
            result["traced_bytes_per_conn"] = (
                tracemalloc.get_traced_memory()[0] - traced_before
            ) / size
            top = tracemalloc.take_snapshot().compare_to(snapshot_before, "lineno")[:8]
            result["top"] = [
                {"where": str(stat.traceback[0]), "bytes_per_conn": stat.size_diff / size}
                for stat in top
            ]
            tracemalloc.stop()
        world.close()
        store.close()
        expected = size + WARMUP
        if result["online_users"] != expected:
            raise RuntimeError(f"{result['online_users']} of {expected} logged in")
        return result


def child(conn: multiprocessing.connection.Connection, *args: Any) -> None:
    try:
        conn.send(measure(*args))
    except Exception as exc:
        conn.send(RuntimeError(repr(exc)))


def in_fresh_process(size: int, store_kind: str, trace: bool) -> dict[str, Any]:
    parent, conn = multiprocessing.Pipe()
    process = multiprocessing.Process(target=child, args=(conn, size, store_kind, trace))
    process.start()
    try:
        if not parent.poll(DEADLINE):
            raise RuntimeError(f"size {size} did not finish in {DEADLINE:.0f} s")
        result = parent.recv()
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, dict)
        return result
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="default 1000,10000,100000")
    parser.add_argument("--store", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument(
        "--trace-up-to",
        type=int,
        default=10_000,
        help="sizes above this get only the RSS figure (tracemalloc makes 100,000 slow)",
    )
    parser.add_argument("--quick", action="store_true", help="1,000 connections only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="DIR", type=Path, help="draw memory.png into DIR")
    args = parser.parse_args()
    default = "1000" if args.quick else "1000,10000,100000"
    sizes = [int(x) for x in (args.sizes or default).split(",")]
    rows = []
    for size in sizes:
        # tracemalloc costs several times the run and the figure is flat in the
        # size (7.8, 6.9 and 7.2 KB at 1,000, 10,000 and 100,000): the largest sizes
        # get the RSS figure only, unless asked.
        traced = in_fresh_process(size, args.store, trace=True) if size <= args.trace_up_to else {}
        plain = in_fresh_process(size, args.store, trace=False)
        rows.append(
            {
                "connections": size,
                "traced_bytes_per_conn": traced.get("traced_bytes_per_conn"),
                "rss_bytes_per_conn": plain["rss_bytes_per_conn"],
                "rss_mib_total": plain["rss_bytes_per_conn"] * size / 2**20,
                "seconds": plain["seconds"],
                "top": traced.get("top", []),
            }
        )
    largest = rows[-1]
    largest_traced = [row for row in rows if row["traced_bytes_per_conn"] is not None][-1:]
    summary = {
        "store": args.store,
        "sizes": rows,
        "bytes_per_idle_conn": (
            largest_traced[0]["traced_bytes_per_conn"] if largest_traced else None
        ),
        "bytes_per_idle_conn_at": largest_traced[0]["connections"] if largest_traced else None,
        "rss_bytes_per_idle_conn": largest["rss_bytes_per_conn"],
        "rss_bytes_per_idle_conn_at": largest["connections"],
        "target_bytes_per_conn": TARGET_BYTES,
    }
    if args.plot:
        from plots import memory_plot

        memory_plot(summary, args.plot)
    if args.json:
        print(json.dumps(summary))
        return
    print(f"idle logged-in connections, sans-IO server, store={args.store}")
    print("  connections  traced B/conn  RSS B/conn  RSS growth MiB  seconds to add")
    for row in rows:
        traced_text = (
            "-" if row["traced_bytes_per_conn"] is None else f"{row['traced_bytes_per_conn']:.0f}"
        )
        print(
            f"  {row['connections']:11d}  {traced_text:>13}"
            f"  {row['rss_bytes_per_conn']:10.0f}  {row['rss_mib_total']:14.1f}"
            f"  {row['seconds']:14.1f}"
        )
    print(f"  target: at most {TARGET_BYTES} B each (100,000 under 400 MiB)")
    if largest_traced:
        row = largest_traced[0]
        print(f"\n  where the bytes are ({row['connections']} connections, traced):")
        for entry in row["top"]:
            print(f"    {entry['bytes_per_conn']:8.0f} B/conn  {entry['where']}")


if __name__ == "__main__":
    main()
