"""Store cost: messages stored per second, beside a raw sqlite3 ceiling in the same run.

Run: ``.venv/bin/python benchmarks/store.py``. Everything runs in a temporary
directory on the same disk, with the same pragmas (WAL, ``synchronous=FULL``), so
the figures that matter are the ratios, not the absolute numbers. It prints the
median over several repeats of:

* ``add_message`` + one ``commit`` per batch (the server's group commit), for
  :class:`SQLiteStore` and :class:`MemoryStore`;
* the ceiling: a raw ``INSERT`` of the same columns into a bare table (no
  conversation counter, no uniqueness check, no indexes), committed per batch;
* ``pending_deliveries`` on a 10,000-message backlog spread over 20 conversations,
  a 100-message page and the whole backlog, then acknowledging the page.
"""

from __future__ import annotations

import datetime
import functools
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from udpchat_proto import MemoryStore, Store
from udpchat_proto import messages as m
from udpchat_server.stores.sqlite import SQLiteStore

REPEATS = 5
BATCHES = 20
BATCH = 100
BACKLOG = 10_000
CONVERSATIONS = 20
T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
TOKEN = b"\x01" * 32


def make_messages(count: int, start: int) -> list[m.ChatMessage]:
    return [
        m.ChatMessage(
            id=(start + n).to_bytes(16, "big"),
            sender=f"user{n % CONVERSATIONS}",
            to="alice",
            text="Hello Alice! Are we still on for lunch tomorrow at noon?",
            sent_at=T0 + datetime.timedelta(microseconds=start + n),
        )
        for n in range(count)
    ]


def store_rate(make: Callable[[], Store], batches: list[list[m.ChatMessage]]) -> float:
    store = make()
    try:
        started = time.perf_counter()
        for batch in batches:
            for chat in batch:
                store.add_message(chat)
            store.commit()
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    return sum(map(len, batches)) / elapsed


def raw_rate(path: Path, batches: list[list[m.ChatMessage]]) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute(
        "CREATE TABLE messages (position INTEGER PRIMARY KEY, id BLOB, conversation TEXT, "
        "sender TEXT, recipient TEXT, text TEXT, sent_at INTEGER)"
    )
    try:
        started = time.perf_counter()
        for batch in batches:
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO messages (id, conversation, sender, recipient, text, sent_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(c.id, c.sender, c.sender, c.to, c.text, c.sent_at.timestamp()) for c in batch],
            )
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        db.close()
    return sum(map(len, batches)) / elapsed


def pending_times(make: Callable[[], Store]) -> tuple[float, float, float]:
    """Milliseconds for a 100-page, the whole backlog, and acknowledging the page."""
    store = make()
    try:
        store.create_session(TOKEN, "alice", 0.0)
        for chat in make_messages(BACKLOG, 1):
            store.add_message(chat)
        store.commit()
        started = time.perf_counter()
        page = store.pending_deliveries("alice", TOKEN, 100)
        page_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        everything = store.pending_deliveries("alice", TOKEN, BACKLOG)
        all_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        store.acknowledge("alice", TOKEN, [message.id for message in page], 1.0)
        store.commit()
        ack_ms = (time.perf_counter() - started) * 1e3
        assert len(page) == 100
        assert len(everything) == BACKLOG
        assert len(store.pending_deliveries("alice", TOKEN, BACKLOG)) == BACKLOG - 100
    finally:
        store.close()
    return page_ms, all_ms, ack_ms


def main() -> None:
    rates: dict[str, list[float]] = {"SQLiteStore": [], "raw sqlite3 INSERT": [], "MemoryStore": []}
    pending: dict[str, list[tuple[float, float, float]]] = {"SQLiteStore": [], "MemoryStore": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(REPEATS):
            batches = [
                make_messages(BATCH, 1 + (repeat * BATCHES + b) * BATCH) for b in range(BATCHES)
            ]
            path = Path(tmp) / f"store{repeat}.sqlite3"
            rates["SQLiteStore"].append(
                store_rate(functools.partial(SQLiteStore.open, path), batches)
            )
            rates["raw sqlite3 INSERT"].append(raw_rate(Path(tmp) / f"raw{repeat}.db", batches))
            rates["MemoryStore"].append(store_rate(MemoryStore, batches))
            backlog_path = Path(tmp) / f"backlog{repeat}.sqlite3"
            pending["SQLiteStore"].append(
                pending_times(functools.partial(SQLiteStore.open, backlog_path))
            )
            pending["MemoryStore"].append(pending_times(MemoryStore))

    print(
        f"add_message + commit, {BATCHES} batches of {BATCH} messages, "
        f"median of {REPEATS} (WAL, synchronous=FULL)"
    )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, rate in medians.items():
        print(f"  {name:20s} {rate:10,.0f} messages/s")
    ratio = medians["SQLiteStore"] / medians["raw sqlite3 INSERT"]
    print(f"  ratio SQLiteStore / raw INSERT ceiling: {ratio:.2f}")
    print(f"pending_deliveries on a {BACKLOG:,}-message backlog in {CONVERSATIONS} conversations")
    for name, samples in pending.items():
        page, whole, ack = (statistics.median(column) for column in zip(*samples, strict=True))
        print(
            f"  {name:12s} first 100: {page:7.2f} ms   all {BACKLOG:,}: {whole:7.1f} ms   "
            f"acknowledge 100 + commit: {ack:6.2f} ms"
        )


if __name__ == "__main__":
    main()
