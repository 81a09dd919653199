"""A cluster on PostgreSQL and NATS: one node against two on the same database,
throughput and cross-node delivery latency, with a single SQLite server's figures
measured beside them in the same run.

Run: ``.venv/bin/python benchmarks/cluster.py [--quick] [--json] [--runs N]
[--workers 2] [--pairs 16] [--rate 200] [--no-floor] [--postgres URL] [--nats URL]``.

It needs PostgreSQL (``--postgres``, an administrative URL: default
``postgresql://postgres@127.0.0.1:5432/postgres``, the ``UDPCHAT_TEST_POSTGRES`` of
the tests) and NATS (``--nats``, default ``nats://127.0.0.1:4222``), both on this
machine: a host that is not a loopback address is refused, so that nothing leaves
it. Each configuration gets a database of its own (``CREATE DATABASE``), dropped
after it, whatever happens.

What runs (only 127.0.0.1 is used; every wait is bounded):

* **the nodes**: real ``udpchat-server`` processes started as ``relay.py`` starts
  its server (``--scrypt-n 16``, rate limits out of the way), on
  ``--db postgresql://.../FRESH --bus nats://... --key-file K --port 0``: every node
  of a cluster shares the database, the bus and the key file (the first node
  creates the schema and the key, then the second starts). The SQLite reference is
  the same server with a SQLite file in a temporary directory (WAL,
  ``synchronous=FULL``), no bus. Every process is stopped (SIGTERM, then SIGKILL
  after 30 s) when its configuration ends, on error too.
* **the load generator**: ``--workers`` processes of ``--pairs`` pairs of friends
  each, ``relay.py``'s generator (both ends of a pair in one process, so send and
  delivery times are read on one clock; recipients take every event, so they
  acknowledge as an application would). Where each end connects is the layout:

  - ``one``: both ends on the single node (SQLite, and PostgreSQL with one node);
  - ``across``: pair k sends on node k mod 2 and receives on the other node, so
    every message crosses nodes (through a hint on NATS) and both nodes take half
    of the sends and half of the pushes;
  - ``local``: pair k is wholly on node k mod 2: the load is spread over both
    nodes, but no message crosses.

The configurations, in this order in every run, each on fresh processes and a
fresh database: SQLite (one server), PostgreSQL without the bus (a single
server), PostgreSQL one node (a cluster of one: with the bus, as a node runs),
PostgreSQL two nodes ``across``, PostgreSQL two nodes ``local``. In each, after
the set-up (not timed):

* **latency on the fresh store** (below), then
* **saturation**: every sender keeps ``WINDOW`` messages in flight; after a
  warm-up, messages delivered per wall-clock second. Beside it the nodes' CPU per
  message (all nodes together, from ``/proc/<pid>/stat``) and PostgreSQL's (its
  backends serving this database, found in ``pg_stat_activity``).
* **latency** at ``--rate`` messages a second offered in all (open loop, as in
  ``relay.py``: from the time a message was due to be sent to its delivery event
  at the recipient, so a generator falling behind shows up as latency); p50 and
  p99 of the messages due inside the window. In ``across`` every message is a
  cross-node delivery; in ``one`` and ``local`` a same-node one. Measured twice:
  on the fresh store, and again after saturation (``p50_after_ms``,
  ``p99_after_ms``), with what saturation stored: a cost that grows with the
  history shows there.

**Each latency beside its floor** (``floor.py``, unless ``--no-floor``): right
after each configuration but the two nodes ``local``, the same path without
udpchat (the same processes and hops, the generator's datagram, the one
transaction, the bus, the other node's read) on fresh processes and a fresh store,
at the same rate, on the empty table (``floor_p50_ms``, ``floor_p99_ms``) and after
storing as many rows as the configuration's store held at its end
(``stored_after``; ``floor_p50_after_ms``, ``floor_p99_after_ms``, and the floor's
store and read calls). ``over_floor`` gives each latency over its floor's (each
run's ratio, then the median and spread), ``cross_node_p99_after_over_floor`` the
target's.

The headline ratios: two nodes' throughput over one node's (both ``across`` and
``local``), one node's and the single PostgreSQL server's over SQLite's, and the
cross-node p50 over the same-node one (one node), on the fresh store. ``--runs``
(default 3, 1 with ``--quick``): each figure is the median, with the spread
(min-max).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import multiprocessing
import multiprocessing.connection
import os
import select
import selectors
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import floor  # the sibling benchmark: each configuration's floor
import psycopg

# The sibling benchmark's load generator and readings.
from relay import (
    CONNECT_RATE,
    DEADLINE,
    HOST,
    PASSWORD,
    SERVER_OPTIONS,
    Generator,
    Pair,
    Peer,
    Workers,
    cpu_seconds,
    machine_busy_seconds,
    percentile,
    py_spy,
    spread,
)

DEFAULT_POSTGRES = os.environ.get(
    "UDPCHAT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DEFAULT_NATS = os.environ.get("UDPCHAT_TEST_NATS", "nats://127.0.0.1:4222")
#: The longest a node may take to print its ``listening on`` line (it waits up to
#: 15 s for NATS before it gives up).
START_TIMEOUT = 30.0
#: The configurations of a run: (name, store, nodes, layout, what it stands for). The
#: store ``sqlite`` is a file, ``postgres`` a fresh database without the bus (a single
#: server), ``cluster`` a fresh database and the bus (every node, even alone).
CONFIGURATIONS = [
    ("sqlite", "sqlite", 1, "one", "SQLite, one server"),
    ("single", "postgres", 1, "one", "PostgreSQL, one server, no bus"),
    ("one_node", "cluster", 1, "one", "PostgreSQL + NATS, one node"),
    ("two_nodes", "cluster", 2, "across", "PostgreSQL + NATS, two nodes, pairs across"),
    ("two_nodes_local", "cluster", 2, "local", "PostgreSQL + NATS, two nodes, pairs local"),
]


@dataclass(frozen=True)
class Timing:
    """How long each window lasts (seconds)."""

    warmup: float
    saturation: float
    latency: float


FULL = Timing(warmup=1.0, saturation=5.0, latency=8.0)
QUICK = Timing(warmup=0.5, saturation=1.5, latency=1.0)


# --- the services and the nodes ----------------------------------------------------------


def require_loopback(url: str) -> None:
    """Refuse a service URL whose host is not this machine's loopback."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"error: {url} is not on a loopback address: the benchmark stays local")


def check_services(postgres: str, nats: str) -> None:
    """Exit with one line if PostgreSQL or NATS cannot be reached (bounded)."""
    try:
        psycopg.connect(postgres, connect_timeout=5).close()
    except psycopg.Error as exc:
        raise SystemExit(f"error: cannot reach PostgreSQL at {postgres}: {exc}") from None
    parts = urllib.parse.urlsplit(nats)
    try:
        socket.create_connection((parts.hostname or HOST, parts.port or 4222), 5).close()
    except OSError as exc:
        raise SystemExit(f"error: cannot reach NATS at {nats}: {exc}") from None


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[tuple[str, str]]:
    """A new, empty PostgreSQL database; yields (its URL, its name); dropped after."""
    name = f"udpchat_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin_url.rsplit("/", 1)[0] + "/" + name, name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def backend_pids(admin_url: str, database: str) -> list[int]:
    """The PostgreSQL backends serving ``database`` now (the nodes' connections)."""
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return [int(row[0]) for row in rows]


def free_tcp_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a node's metrics)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """A node's counters, from its ``/metrics`` (``name_total value`` lines)."""
    with socket.create_connection((HOST, port), timeout=5) as conn:
        conn.sendall(f"GET /metrics HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    found: dict[str, float] = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("udpchat_") and "{" not in name:
            with contextlib.suppress(ValueError):
                found[name] = float(value)
    return found


@contextlib.contextmanager
def node(arguments: list[str], log: Path) -> Iterator[tuple[int, int, int]]:
    """A real ``udpchat-server`` on 127.0.0.1, port 0, with ``arguments`` (and
    relay.py's options) and its metrics on a free port; yields (pid, port, metrics
    port). Its log goes to ``log``."""
    metrics = free_tcp_port()
    # The console script's entry point, run by this Python (and its PYTHONPATH).
    command = [sys.executable, "-c", "from udpchat_server.cli import main; main()"]
    command += ["--host", HOST, "--port", "0", "--metrics", f"{HOST}:{metrics}"]
    command += [*arguments, *SERVER_OPTIONS]
    with log.open("a") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"udpchat-server did not start: {line!r}\n{tail}")
        port = int(line.split()[2].rsplit(":", 1)[1])
        yield process.pid, port, metrics
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Nodes:
    """The running nodes of one configuration."""

    pids: list[int]
    ports: list[int]
    metrics: list[int]
    """Each node's metrics port (``/metrics``: its round trips and commits)."""
    database: str | None
    """The PostgreSQL database's name (None for SQLite)."""
    url: str | None = None
    """The PostgreSQL database's URL, or the SQLite file's path."""


@contextlib.contextmanager
def configuration(store: str, count: int, postgres: str, nats: str) -> Iterator[Nodes]:
    """``count`` nodes on a fresh ``store`` (see ``CONFIGURATIONS``)."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if store == "sqlite":
            pid, port, metrics = stack.enter_context(
                node(["--db", f"{tmp}/bench.sqlite3"], tmp / "log")
            )
            yield Nodes([pid], [port], [metrics], None, f"{tmp}/bench.sqlite3")
            return
        url, name = stack.enter_context(fresh_database(postgres))
        shared = ["--db", url, "--key-file", str(tmp / "cluster.key")]
        if store == "cluster":
            shared += ["--bus", nats]
        started = [
            # One after the other: the first creates the schema and the key file.
            stack.enter_context(node(shared, tmp / f"node{i}.log"))
            for i in range(count)
        ]
        yield Nodes(
            [pid for pid, _, _ in started],
            [port for _, port, _ in started],
            [metrics for _, _, metrics in started],
            name,
            url,
        )


# --- the load generator ----------------------------------------------------------------------


def ends(layout: str, k: int) -> tuple[int, int]:
    """The nodes (indexes) of pair ``k``'s sender and recipient."""
    if layout == "one":
        return 0, 0
    if layout == "across":
        return k % 2, (k + 1) % 2
    if layout == "local":
        return k % 2, k % 2
    raise ValueError(layout)


class ClusterGenerator(Generator):
    """relay.py's generator, each end of a pair on the node its layout says."""

    def setup_nodes(self, ports: list[int], layout: str, workers: int) -> None:
        """Connect, register, log in and befriend every pair (bounded)."""
        senders, recipients = [], []
        for k in range(self.count):
            a, b = ends(layout, k)
            senders.append(Peer(f"{self.prefix}s{k}", (HOST, ports[a])))
            recipients.append(Peer(f"{self.prefix}r{k}", (HOST, ports[b])))
        peers = [*senders, *recipients]
        for peer in peers:
            self.selector.register(peer.sock, selectors.EVENT_READ, peer)
        self.peers = peers
        deadline = time.monotonic() + DEADLINE
        for peer in peers:
            # Paced: each node accepts 50 handshakes a second from one address.
            self.drive(time.monotonic() + workers / CONNECT_RATE, deadline)
            now = time.monotonic()
            peer.conn.connect(now)
            peer.conn.register(peer.name, PASSWORD)
            peer.conn.login(peer.name, PASSWORD)
            peer.flush(now)
        self.drive_until(lambda: all(p.oks >= 2 for p in peers), deadline)
        # The invitation is stored before it is accepted: the two ends may be on
        # two nodes, and each answer means its transaction has committed.
        for sender, recipient in zip(senders, recipients, strict=True):
            sender.conn.invite(recipient.name)
            sender.flush(time.monotonic())
        self.drive_until(lambda: all(p.oks >= 3 for p in senders), deadline)
        for sender, recipient in zip(senders, recipients, strict=True):
            pair = Pair(sender, recipient)
            recipient.on_delivery = self.delivery_handler(pair)
            recipient.conn.accept_invitation(sender.name)
            recipient.flush(time.monotonic())
            self.pairs.append(pair)
        self.drive_until(lambda: all(p.oks >= 3 for p in recipients), deadline)
        refusals = sorted({text for p in peers for text in p.refusals})
        if refusals:
            raise RuntimeError(f"a node refused part of the set-up: {refusals}")


def worker(conn: multiprocessing.connection.Connection, index: int, pairs: int) -> None:
    """A load-generator process: obeys the parent's commands, answers each."""
    generator = ClusterGenerator(pairs, prefix=f"w{index}")
    while conn.poll(DEADLINE * 3):
        command, *args = conn.recv()
        try:
            if command == "setup":
                generator.setup_nodes(*args)
                result: Any = "ready"
            elif command == "saturate":
                result = generator.saturate(*args)
            elif command == "offer":
                result = generator.offer(*args)
            elif command == "drain":
                result = generator.drain(*args)
            else:
                return
        except Exception as exc:
            result = RuntimeError(f"worker {index}: {exc!r}")
        conn.send(result)


class Team(Workers):
    """relay.py's worker processes, running this benchmark's generator."""

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


# --- one configuration, one run ------------------------------------------------------------


def window(
    call: Callable[[float, float, float], list[dict[str, Any]]],
    pids: list[int],
    warmup: float,
    length: float,
) -> tuple[list[dict[str, Any]], dict[int, float], float]:
    """Run one window in every worker; (their results, the CPU seconds of each of
    ``pids`` inside it, the cores the whole machine kept busy)."""
    start = time.monotonic() + 0.1  # every worker has its command by then
    warm, end = start + warmup, start + warmup + length
    results: list[list[dict[str, Any]]] = []
    thread = threading.Thread(target=lambda: results.append(call(start, warm, end)))
    thread.start()

    def cpu() -> dict[int, float]:
        seconds = {}
        for pid in pids:
            with contextlib.suppress(OSError):  # a backend that has gone
                seconds[pid] = cpu_seconds(pid)
        return seconds

    time.sleep(max(0.0, warm - time.monotonic()))
    cpu_start, machine_start = cpu(), machine_busy_seconds()
    time.sleep(max(0.0, end - time.monotonic()))
    cpu_end, machine_end = cpu(), machine_busy_seconds()
    thread.join(DEADLINE * 2)
    if not results:
        raise RuntimeError("the workers did not answer")
    used = {pid: cpu_end[pid] - cpu_start[pid] for pid in cpu_start if pid in cpu_end}
    return results[0], used, (machine_end - machine_start) / length


def measure(
    nodes: Nodes,
    layout: str,
    *,
    team: Team,
    workers: int,
    timing: Timing,
    rate: float,
    admin: str,
    spy: str | None = None,
    latency_only: bool = False,
) -> dict[str, Any]:
    """Set up the pairs on ``nodes``; latency at ``rate`` offered on the fresh
    store, saturation, then the same latency again (with what saturation stored).
    With ``spy``, py-spy records the first node during saturation into that file;
    with ``latency_only``, only the first latency window is measured."""
    team.call("setup", nodes.ports, layout, workers, timeout=DEADLINE * 2)

    def latency(suffix: str) -> dict[str, Any]:
        results, _, _ = window(
            lambda s, w, e: team.call("offer", rate / workers, s, w, e),
            [],
            timing.warmup / 2,
            timing.latency,
        )
        latencies = [x for r in results for x in r["latencies"]]
        achieved = sum(r["delivered"] for r in results) / timing.latency
        if not all(r["drained"] for r in results):
            team.call("drain", 30.0, timeout=DEADLINE)  # the next window starts empty
        return {
            f"p50{suffix}_ms": percentile(latencies, 50) * 1e3,
            f"p99{suffix}_ms": percentile(latencies, 99) * 1e3,
            f"achieved{suffix}": achieved,
        }

    figures = latency("")
    if latency_only:
        return figures
    postgres = backend_pids(admin, nodes.database) if nodes.database else []
    counted: list[list[dict[str, float]]] = []

    def counting(s: float, w: float, e: float) -> list[dict[str, Any]]:
        # The nodes' counters at both ends of the saturation window (each node's
        # snapshot is at most a second old at both: the lags cancel).
        def read() -> None:
            for moment in (w, e):
                time.sleep(max(0.0, moment - time.monotonic()))
                counted.append([scrape(port) for port in nodes.metrics])

        reader = threading.Thread(target=read)
        reader.start()
        found: list[dict[str, Any]] = team.call("saturate", s, w, e)
        reader.join(DEADLINE)
        return found

    with py_spy(nodes.pids[0], spy):
        results, used, machine = window(
            counting,
            [*nodes.pids, *postgres],
            timing.warmup,
            timing.saturation,
        )
    delivered = max(1, sum(r["delivered"] for r in results))

    def change(name: str) -> float:
        return sum(
            after.get(name, 0.0) - before.get(name, 0.0)
            for before, after in zip(counted[0], counted[1], strict=True)
        )

    commits = change("udpchat_commits_total")
    round_trips = change("udpchat_store_round_trips_total")
    stored = change("udpchat_messages_stored_total")
    node_cpu = sum(used.get(pid, 0.0) for pid in nodes.pids)
    postgres_cpu = sum(used.get(pid, 0.0) for pid in postgres)
    figures.update(
        {
            "msgs_per_s": delivered / timing.saturation,
            "delivered_in_saturation": sum(r["delivered"] for r in results),
            "node_cpu_us_per_msg": node_cpu / delivered * 1e6,
            "node_cores": node_cpu / timing.saturation,
            "postgres_cpu_us_per_msg": postgres_cpu / delivered * 1e6 if postgres else None,
            "postgres_cores": postgres_cpu / timing.saturation if postgres else None,
            "machine_busy_cores": machine,
            "round_trips_per_batch": round_trips / commits if postgres and commits else None,
            "round_trips_per_msg": round_trips / stored if postgres and stored else None,
            "msgs_per_batch": stored / commits if commits else None,
        }
    )
    if not all(r["drained"] for r in results):
        team.call("drain", 30.0, timeout=DEADLINE)  # the latency window starts empty
    figures.update(latency("_after"))
    figures["stored_after"] = stored_rows(nodes)
    return figures


def stored_rows(nodes: Nodes) -> int | None:
    """The messages the configuration's store holds now (its floor is measured
    again after storing as many)."""
    if nodes.url is None:
        return None
    if nodes.database is None:
        with contextlib.closing(sqlite3.connect(f"file:{nodes.url}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    with psycopg.connect(nodes.url, autocommit=True, connect_timeout=10) as db:
        row = db.execute("SELECT count(*) FROM messages").fetchone()
    return None if row is None else int(row[0])


def one_run(
    workers: int,
    pairs: int,
    *,
    timing: Timing,
    rate: float,
    postgres: str,
    nats: str,
    spy: str | None = None,
    only: list[str] | None = None,
    latency_only: bool = False,
    with_floor: bool = True,
) -> dict[str, dict[str, Any]]:
    """Every configuration (or those named in ``only``) once, each on fresh
    processes and a fresh store (with ``spy``, the one node's saturation recorded
    by py-spy into that file; with ``latency_only``, the fresh store's latency
    alone). With ``with_floor``, right after each configuration that has one
    (``floor.FLOORS``), its floor: the same path without udpchat, on fresh processes
    and a fresh store, at the same rate, fresh and then (unless ``latency_only``)
    after storing as many rows as the configuration's store held at its end."""
    run: dict[str, dict[str, Any]] = {}
    for name, store, count, layout, _ in CONFIGURATIONS:
        if only is not None and name not in only:
            continue
        team = Team(workers, pairs)
        try:
            with configuration(store, count, postgres, nats) as nodes:
                run[name] = measure(
                    nodes,
                    layout,
                    team=team,
                    workers=workers,
                    timing=timing,
                    rate=rate,
                    admin=postgres,
                    spy=spy if name == "one_node" else None,
                    latency_only=latency_only,
                )
        finally:
            team.stop()
        if with_floor and name in floor.FLOORS:
            run[name].update(
                floor.measure(
                    name,
                    postgres=postgres,
                    nats=nats,
                    workers=workers,
                    pairs=pairs,
                    rate=rate,
                    window=floor.Window(timing.warmup, timing.latency),
                    rows_after=run[name].get("stored_after"),
                )
            )
    return run


# --- refill_all: every window of a node in one query ---------------------------------------


#: A node's connections for the refill figure (one session each), and how many
#: messages each user has: half of them acknowledged, so half the windows refill.
REFILL_CONNECTIONS = 10_000
REFILL_MESSAGES = 4


def refill_all_figures(admin_url: str, connections: int, repeats: int = 5) -> dict[str, Any]:
    """What ``refill_all`` asks the database at ``connections`` connections on a node:
    one ``pending_deliveries_many`` for every session, timed ``repeats`` times on a
    fresh database (users in pairs, each pair a direct conversation with
    ``REFILL_MESSAGES`` messages a user; half the sessions acknowledged theirs)."""
    from udpchat_proto.chat import session_id
    from udpchat_server.stores import batched
    from udpchat_server.stores.postgres import PostgresStore

    with fresh_database(admin_url) as (url, _name):
        store = PostgresStore.open(url)
        try:
            db = store.connection
            with db.transaction():
                db.execute(
                    "INSERT INTO sessions (token_hash, username, created_at, last_used_at) "
                    "SELECT sha256(int4send(g)), 'u' || g, 1, 1 FROM generate_series(0, %s) AS g",
                    (connections - 1,),
                )
                db.execute(
                    "INSERT INTO conversations (key, is_room, created_at, last_seq) "
                    "SELECT 'u' || (2 * g) || ' u' || (2 * g + 1), FALSE, 1, %s "
                    "FROM generate_series(0, %s) AS g",
                    (2 * REFILL_MESSAGES, connections // 2 - 1),
                )
                db.execute(
                    "INSERT INTO participants (conversation, username, floor_seq, joined_at) "
                    "SELECT c.id, u.name, 0, 1 FROM conversations AS c "
                    "CROSS JOIN LATERAL unnest(string_to_array(c.key, ' ')) AS u (name)"
                )
                db.execute(
                    "INSERT INTO messages (id, conversation, seq, sender, recipient, text, "
                    "sent_at, origin) "
                    "SELECT uuid_send(gen_random_uuid()), c.id, s, "
                    "split_part(c.key, ' ', 1 + s %% 2), split_part(c.key, ' ', 2 - s %% 2), "
                    "'hello', 1000000 * s, NULL "
                    "FROM conversations AS c CROSS JOIN generate_series(1, %s) AS s",
                    (2 * REFILL_MESSAGES,),
                )
                db.execute(
                    "INSERT INTO session_cursors (token_hash, conversation, seq) "
                    "SELECT s.token_hash, p.conversation, %s FROM sessions AS s "
                    "JOIN participants AS p ON p.username = s.username "
                    "WHERE substr(s.username, 2)::int %% 4 < 2",
                    (2 * REFILL_MESSAGES,),
                )
            db.execute("ANALYZE")
            asked = [
                (name, bytes(hashed), 32)
                for name, hashed in db.execute("SELECT username, token_hash FROM sessions")
            ]
            params = {
                "users": [name for name, _, _ in asked],
                "sessions": [hashed for _, hashed, _ in asked],
                "devices": [session_id(hashed) for _, hashed, _ in asked],
                "limits": [limit for _, _, limit in asked],
            }
            timings, query, trips, found = [], [], [], 0
            for _ in range(repeats):
                # The query alone (its round trip, rows in binary) ...
                started = time.perf_counter()
                store._select_binary(batched.PENDING, params)
                query.append((time.perf_counter() - started) * 1e3)
                # ... and the whole call, the messages built.
                before, started = store.round_trips, time.perf_counter()
                pending = store.pending_deliveries_many(asked)
                timings.append((time.perf_counter() - started) * 1e3)
                trips.append(store.round_trips - before)
                found = sum(1 for p in pending if p)
            messages = sum(len(p) for p in pending)
            # After a bus outage most windows have nothing new: every session
            # caught up, the query finds nothing to read.
            db.execute(
                "INSERT INTO session_cursors (token_hash, conversation, seq) "
                "SELECT s.token_hash, p.conversation, %s FROM sessions AS s "
                "JOIN participants AS p ON p.username = s.username "
                "ON CONFLICT (token_hash, conversation) DO UPDATE SET seq = EXCLUDED.seq",
                (2 * REFILL_MESSAGES,),
            )
            db.execute("ANALYZE")
            caught_up = []
            for _ in range(repeats):
                started = time.perf_counter()
                store.pending_deliveries_many(asked)
                caught_up.append((time.perf_counter() - started) * 1e3)
        finally:
            store.close()
    return {
        "connections": connections,
        "query_ms": statistics.median(query),
        "query_ms_spread": spread(query),
        "ms": statistics.median(timings),
        "ms_spread": spread(timings),
        "queries": max(trips),
        "windows_with_pending": found,
        "messages": messages,
        "caught_up_ms": statistics.median(caught_up),
        "caught_up_ms_spread": spread(caught_up),
    }


# --- several runs -------------------------------------------------------------------------


#: The per-configuration figures whose medians are reported.
FIGURES = [
    "msgs_per_s",
    "p50_ms",
    "p99_ms",
    "node_cpu_us_per_msg",
    "node_cores",
    "postgres_cpu_us_per_msg",
    "postgres_cores",
    "machine_busy_cores",
    "round_trips_per_batch",
    "round_trips_per_msg",
    "msgs_per_batch",
    "achieved",
    "p50_after_ms",
    "p99_after_ms",
    "achieved_after",
    "stored_after",
    # Each configuration's floor (``floor.py``), where it has one, and its nodes'
    # store and read calls (one round trip each) after the rows.
    "floor_p50_ms",
    "floor_p99_ms",
    "floor_p50_after_ms",
    "floor_p99_after_ms",
    "floor_store_after_p50_ms",
    "floor_store_after_p99_ms",
    "floor_read_after_p50_ms",
    "floor_read_after_p99_ms",
]
#: Latencies set beside their floor's: (udpchat's figure, the floor's).
OVER_FLOOR = [
    ("p50_ms", "floor_p50_ms"),
    ("p99_ms", "floor_p99_ms"),
    ("p50_after_ms", "floor_p50_after_ms"),
    ("p99_after_ms", "floor_p99_after_ms"),
]


def median_of(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(
    runs: list[dict[str, dict[str, Any]]], workers: int, pairs: int, rate: float
) -> dict[str, Any]:
    """Medians over the runs, the ratios (each run's, then their median) and the
    spread (min-max) of the headline figures."""
    configurations = {
        name: {figure: median_of([r[name].get(figure) for r in runs]) for figure in FIGURES}
        for name, *_ in CONFIGURATIONS
    }
    ratios = {
        "two_over_one": [r["two_nodes"]["msgs_per_s"] / r["one_node"]["msgs_per_s"] for r in runs],
        "two_local_over_one": [
            r["two_nodes_local"]["msgs_per_s"] / r["one_node"]["msgs_per_s"] for r in runs
        ],
        "one_node_over_sqlite": [
            r["one_node"]["msgs_per_s"] / r["sqlite"]["msgs_per_s"] for r in runs
        ],
        "single_over_sqlite": [r["single"]["msgs_per_s"] / r["sqlite"]["msgs_per_s"] for r in runs],
        "cross_over_same_p50": [r["two_nodes"]["p50_ms"] / r["one_node"]["p50_ms"] for r in runs],
    }
    # Each latency over its floor's, in each run (then the median and spread).
    over_floor = {
        name: {
            figure: values
            for figure, floor_figure in OVER_FLOOR
            if (
                values := [
                    r[name][figure] / r[name][floor_figure]
                    for r in runs
                    if r[name].get(figure) and r[name].get(floor_figure)
                ]
            )
        }
        for name, *_ in CONFIGURATIONS
        if any(floor_figure in r[name] for r in runs for _, floor_figure in OVER_FLOOR)
    }
    cross = configurations["two_nodes"]
    summary: dict[str, Any] = {
        "sqlite_msgs_per_s": configurations["sqlite"]["msgs_per_s"],
        "one_node_msgs_per_s": configurations["one_node"]["msgs_per_s"],
        "two_nodes_msgs_per_s": configurations["two_nodes"]["msgs_per_s"],
        "two_nodes_local_msgs_per_s": configurations["two_nodes_local"]["msgs_per_s"],
        "cross_node_p50_ms": configurations["two_nodes"]["p50_ms"],
        "cross_node_p99_ms": configurations["two_nodes"]["p99_ms"],
        "same_node_p50_ms": configurations["one_node"]["p50_ms"],
        "same_node_p99_ms": configurations["one_node"]["p99_ms"],
        "single_msgs_per_s": configurations["single"]["msgs_per_s"],
        "single_p50_ms": configurations["single"]["p50_ms"],
        "single_p99_ms": configurations["single"]["p99_ms"],
        "cross_node_p50_after_ms": configurations["two_nodes"]["p50_after_ms"],
        "cross_node_p99_after_ms": configurations["two_nodes"]["p99_after_ms"],
        "same_node_p50_after_ms": configurations["one_node"]["p50_after_ms"],
        "same_node_p99_after_ms": configurations["one_node"]["p99_after_ms"],
        "sqlite_p50_ms": configurations["sqlite"]["p50_ms"],
        "sqlite_p99_ms": configurations["sqlite"]["p99_ms"],
        **{name: statistics.median(values) for name, values in ratios.items()},
        "cross_node_floor_p50_after_ms": cross["floor_p50_after_ms"],
        "cross_node_floor_p99_after_ms": cross["floor_p99_after_ms"],
        "cross_node_p50_after_over_floor": median_of(
            over_floor.get("two_nodes", {}).get("p50_after_ms", [])
        ),
        "cross_node_p99_after_over_floor": median_of(
            over_floor.get("two_nodes", {}).get("p99_after_ms", [])
        ),
        "over_floor": {
            name: {figure: spread(values) for figure, values in ratios_of.items()}
            for name, ratios_of in over_floor.items()
        },
        "configurations": configurations,
        "spread": {
            **{
                f"{name}_{figure}": spread([r[name][figure] for r in runs])
                for name, *_ in CONFIGURATIONS
                for figure in ("msgs_per_s", "p50_ms", "p99_ms", "p50_after_ms", "p99_after_ms")
            },
            **{
                f"{name}_{figure}": spread(values)
                for name, *_ in CONFIGURATIONS
                for figure in (
                    "floor_p50_ms",
                    "floor_p99_ms",
                    "floor_p50_after_ms",
                    "floor_p99_after_ms",
                )
                if (values := [r[name][figure] for r in runs if figure in r[name]])
            },
            **{name: spread(values) for name, values in ratios.items()},
        },
        "runs": len(runs),
        "workers": workers,
        "pairs_per_worker": pairs,
        "connections": 2 * workers * pairs,
        "rate": rate,
    }
    return summary


def summarize_latency(runs: list[dict[str, dict[str, Any]]], rate: float) -> dict[str, Any]:
    """``--latency-only``: each configuration's p50 and p99 at ``rate``, medians
    over the runs with their spread."""
    return {
        "rate": rate,
        "runs": len(runs),
        "latency": {
            name: {
                figure: spread(values)
                for figure in ("p50_ms", "p99_ms", "achieved", "floor_p50_ms", "floor_p99_ms")
                if (values := [r[name][figure] for r in runs if figure in r[name]])
            }
            for name in runs[0]
        },
    }


def print_latency(s: dict[str, Any]) -> None:
    """``--latency-only``'s table."""
    labels = {name: label for name, *_, label in CONFIGURATIONS}
    offered = f"latency at {s['rate']:.0f} msg/s offered, median of {s['runs']} runs"
    print(f"  {offered:46} {'p50 ms':>8} {'[min-max]':>13}  {'p99 ms':>8} {'[min-max]':>13}")
    for name, figures in s["latency"].items():
        p50, p99 = figures["p50_ms"], figures["p99_ms"]
        line = (
            f"  {labels[name]:46} {p50['median']:8.2f} {bracket(p50, 1):>13}"
            f"  {p99['median']:8.2f} {bracket(p99, 1):>13}"
        )
        if "floor_p99_ms" in figures:
            line += (
                f"   its floor {figures['floor_p50_ms']['median']:6.2f}"
                f" / {figures['floor_p99_ms']['median']:6.2f}"
            )
        print(line)


def bracket(values: dict[str, float], digits: int = 0) -> str:
    """``[min-max]`` of a spread."""
    return f"[{values['min']:.{digits}f}-{values['max']:.{digits}f}]"


def or_dash(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(s: dict[str, Any]) -> None:
    sp = s["spread"]
    print(
        f"{s['workers']} generator processes x {s['pairs_per_worker']} pairs "
        f"({s['connections']} connections) over 127.0.0.1; median of {s['runs']} runs "
        "[min-max]"
    )
    print(
        f"\n  {'saturation':46} {'msg/s':>22}  {'node µs/msg':>11}  {'PG µs/msg':>9}"
        f"  {'node cores':>10}  {'PG cores':>8}  {'machine':>7}"
    )
    for name, _, _, _, label in CONFIGURATIONS:
        c = s["configurations"][name]
        print(
            f"  {label:46} {c['msgs_per_s']:6.0f} {bracket(sp[name + '_msgs_per_s']):>15}"
            f"  {c['node_cpu_us_per_msg']:11.0f}  {or_dash(c['postgres_cpu_us_per_msg'], 0):>9}"
            f"  {c['node_cores']:10.2f}  {or_dash(c['postgres_cores'], 2):>8}"
            f"  {c['machine_busy_cores']:7.2f}"
        )
    offered = f"latency at {s['rate']:.0f} msg/s offered"
    print(
        f"\n  {offered:46} {'fresh: p50 ms':>13}  {'p99 ms':>20}"
        f"    {'after saturation: p50 ms':>24}  {'p99 ms':>8}"
    )
    for name, _, _, _, label in CONFIGURATIONS:
        c = s["configurations"][name]
        print(
            f"  {label:46} {c['p50_ms']:13.2f}  {c['p99_ms']:8.2f}"
            f" {bracket(sp[name + '_p99_ms'], 1):>11}    {c['p50_after_ms']:24.2f}"
            f"  {c['p99_after_ms']:8.2f} {bracket(sp[name + '_p99_after_ms'], 1)}"
        )
    if s["over_floor"]:
        print_floors(s)
    print()
    print(
        f"\n  {'round trips to PostgreSQL at saturation':46} {'per batch':>10}  "
        f"{'per message':>11}  {'messages a batch':>16}"
    )
    for name, _, _, _, label in CONFIGURATIONS:
        c = s["configurations"][name]
        if c["round_trips_per_batch"] is not None:
            print(
                f"  {label:46} {c['round_trips_per_batch']:10.2f}  "
                f"{c['round_trips_per_msg']:11.3f}  {or_dash(c['msgs_per_batch'], 1):>16}"
            )
    refill = s.get("refill")
    if refill:
        print(
            f"\n  refill_all at {refill['connections']:,} connections: {refill['queries']} query, "
            f"{refill['query_ms']:.1f} ms {bracket(refill['query_ms_spread'], 1)}; with the "
            f"{refill['messages']:,} messages built: {refill['ms']:.1f} ms "
            f"{bracket(refill['ms_spread'], 1)} ({refill['windows_with_pending']:,} windows "
            f"with something pending); every window caught up: {refill['caught_up_ms']:.1f} ms "
            f"{bracket(refill['caught_up_ms_spread'], 1)}"
        )
    print()
    for name, label in (
        ("two_over_one", "two nodes (across) / one node, msg/s"),
        ("two_local_over_one", "two nodes (local) / one node, msg/s"),
        ("one_node_over_sqlite", "one node / SQLite, msg/s"),
        ("single_over_sqlite", "PostgreSQL without the bus / SQLite, msg/s"),
        ("cross_over_same_p50", "cross-node p50 / same-node p50, fresh"),
    ):
        print(f"  {label:46} {s[name]:6.2f}x  {bracket(sp[name], 2)}")


def pair(p50: float | None, p99: float | None) -> str:
    """``p50 / p99``, or dashes."""
    return f"{or_dash(p50, 2):>6} / {or_dash(p99, 2):>6}"


def print_floors(s: dict[str, Any]) -> None:
    """Each latency beside its floor's (``floor.py``), medians, and the ratios."""
    print(
        f"\n  {'beside its floor, p50 / p99 ms':46} {'fresh':>15} {'floor':>15} {'x p99':>6}"
        f"   {'after saturation':>16} {'floor':>15} {'x p50':>6} {'x p99':>6}  floor's rows"
    )
    for name, _, _, _, label in CONFIGURATIONS:
        if name not in s["over_floor"]:
            continue
        c, ratios = s["configurations"][name], s["over_floor"][name]

        def times(figure: str, ratios: dict[str, Any] = ratios) -> str:
            return f"{ratios[figure]['median']:6.2f}" if figure in ratios else f"{'-':>6}"

        print(
            f"  {label:46} {pair(c['p50_ms'], c['p99_ms'])} "
            f"{pair(c['floor_p50_ms'], c['floor_p99_ms'])} {times('p99_ms')}"
            f"   {pair(c['p50_after_ms'], c['p99_after_ms']):>16} "
            f"{pair(c['floor_p50_after_ms'], c['floor_p99_after_ms'])} "
            f"{times('p50_after_ms')} {times('p99_after_ms')}  "
            f"{or_dash(c['stored_after'], 0)}"
        )
    heading = "its floor's nodes' calls after the rows, p50 / p99 ms"
    print(f"  {heading:46}")
    for name, _, _, _, label in CONFIGURATIONS:
        c = s["configurations"].get(name, {})
        calls = [
            f"{call} {c[f'floor_{call}_after_p50_ms']:.2f} / {c[f'floor_{call}_after_p99_ms']:.2f}"
            for call in ("store", "read")
            if c.get(f"floor_{call}_after_p50_ms") is not None
        ]
        if calls:
            print(f"  {label:46} {'; '.join(calls)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per worker (16; 6 quick)")
    parser.add_argument("--runs", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--rate", type=float, default=200.0, help="offered msg/s for latency")
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer pairs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="administrative URL")
    parser.add_argument("--nats", default=DEFAULT_NATS, help="the bus, nats://HOST:PORT")
    parser.add_argument(
        "--py-spy",
        dest="spy",
        help="record the one node's saturation with py-spy in the first run (raw "
        "stacks into this file); print its split by layer",
    )
    parser.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="without each configuration's floor (floor.py: the same path, no udpchat)",
    )
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="only the latency window on the fresh store (no saturation, no refill_all)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated configurations to run (with --latency-only): "
        + ", ".join(name for name, *_ in CONFIGURATIONS),
    )
    args = parser.parse_args()
    only = None if args.only is None else args.only.split(",")
    names = [name for name, *_ in CONFIGURATIONS]
    if only is not None and (not args.latency_only or not set(only) <= set(names)):
        parser.error(f"--only goes with --latency-only and names some of {', '.join(names)}")
    pairs = args.pairs or (6 if args.quick else 16)
    if not 1 <= args.workers * pairs * 2 <= 200:
        parser.error("at most 200 connections: a node keeps 256 per address")
    if args.workers < 1 or args.rate <= 0:
        parser.error("--workers and --rate must be positive")
    for url in (args.postgres, args.nats):
        require_loopback(url)
    check_services(args.postgres, args.nats)
    timing = QUICK if args.quick else FULL
    runs = [
        one_run(
            args.workers,
            pairs,
            timing=timing,
            rate=args.rate,
            postgres=args.postgres,
            nats=args.nats,
            spy=args.spy if n == 0 else None,
            only=only,
            latency_only=args.latency_only,
            with_floor=args.floor,
        )
        for n in range(args.runs or (1 if args.quick else 3))
    ]
    if args.latency_only:
        latency = summarize_latency(runs, args.rate)
        if args.json:
            print(json.dumps(latency))
        else:
            print_latency(latency)
        return
    summary = summarize(runs, args.workers, pairs, args.rate)
    summary["refill"] = refill_all_figures(
        args.postgres, 1000 if args.quick else REFILL_CONNECTIONS, repeats=3 if args.quick else 5
    )
    if args.spy:
        from layers import split  # the sibling: a py-spy profile by layer

        layers, top = split(Path(args.spy))
        summary["profile"] = {"layers": layers, "top": top}
    if args.json:
        print(json.dumps(summary))
    else:
        print_table(summary)
        if "profile" in summary:
            print("\n  the one node's samples at saturation, by layer (py-spy):")
            for layer, share in summary["profile"]["layers"].items():
                print(f"  {layer:46} {share:6.1%}")
            print("  the functions with the most samples of their own:")
            for function, share in summary["profile"]["top"]:
                print(f"  {function[:70]:70} {share:6.1%}")


if __name__ == "__main__":
    main()
