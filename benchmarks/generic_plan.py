"""``ADD_MESSAGES`` in its generic plan, or planned for its values (the node's way):
what each does to a one-message batch's one-round-trip commit
(``PostgresStore.store_and_commit``), on a database grown as ``cluster.py``'s
saturation grows it. In one process, the two ways alternated batch by batch.

Run: ``.venv/bin/python benchmarks/generic_plan.py [--grown 20000] [--batches 300]
[--postgres URL]`` (a fresh database, dropped after).

The phases, on one connection (autovacuum off on the database's tables, so that no
``ANALYZE`` comes in the middle, as it may in ``cluster.py``'s windows):

1. *fresh*: ``--batches`` one-message batches on the empty tables; the generic plan
   is made here, on the fresh tables' (missing) statistics, and a prepared
   statement keeps it until its tables' statistics change;
2. *grown, the fresh plan kept*: ``--grown`` messages stored in batches of 500
   between 32 pairs of users (as the saturation phase does, planned for their
   values), then ``--batches`` one-message batches: the generic plan is still
   the one made on the empty tables;
3. *grown, analysed*: ``ANALYZE`` (a new generic plan, made on the grown tables'
   statistics), then ``--batches`` one-message batches.

Each batch is timed around ``store_and_commit`` (``BEGIN``, ``ADD_MESSAGES``,
``ADD_STORED_USAGE``, ``COMMIT``: one round trip, the WAL's fsync included); the
generic way sets ``plan_cache_mode`` around the statement in the same pipeline, as
the store does for its few sessions' pending read.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from typing import Any

from cluster import DEFAULT_POSTGRES, fresh_database, require_loopback

from relay import percentile
from udpchat_proto import PasswordHash, ScryptParams
from udpchat_proto import messages as m
from udpchat_server.stores import batched
from udpchat_server.stores.postgres import PostgresStore

PAIRS = 32
GROWN_BATCH = 500
TABLES = ("messages", "conversations", "participants", "session_cursors", "accounts")


def message(pair: int, n: int) -> m.ChatMessage:
    """A 60-character message from pair ``pair``'s sender to its recipient."""
    return m.ChatMessage(
        id=os.urandom(16),
        sender=f"s{pair}",
        to=f"r{pair}",
        text=f"{n:09d} ".ljust(60, "x"),
        sent_at=datetime.datetime.now(datetime.UTC),
    )


def generic_around_add_messages(store: PostgresStore, generic: list[bool]) -> None:
    """While ``generic[0]``, ``ADD_MESSAGES`` runs in its generic plan: the
    connection's ``execute`` sets ``plan_cache_mode`` before it and back after it
    (in the same pipeline, so no round trip is added)."""
    db = store.connection
    execute = db.execute

    def wrapped(query: Any, params: Any = None, **kwargs: Any) -> Any:
        if query is not batched.ADD_MESSAGES or not generic[0]:
            return execute(query, params, **kwargs)
        execute("SET plan_cache_mode = force_generic_plan")
        cursor = execute(query, params, **kwargs)
        execute("SET plan_cache_mode = force_custom_plan")
        return cursor

    db.execute = wrapped  # type: ignore[method-assign]


def phase(store: PostgresStore, generic: list[bool], batches: int) -> dict[str, Any]:
    """``batches`` one-message batches, the two ways alternated; each way's times;
    then as many again with the commit not waiting for the WAL's fsync
    (``synchronous_commit = off`` for this connection: the plan's share, without
    the disk's)."""
    found = {"": timed(store, generic, batches)}
    store.connection.execute("SET synchronous_commit = off")
    found[", no fsync wait"] = timed(store, generic, batches)
    store.connection.execute("SET synchronous_commit = on")
    return found


def timed(store: PostgresStore, generic: list[bool], batches: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"custom": [], "generic": []}
    for n in range(batches):
        generic[0] = n % 2 == 1
        batch = [(message(n % PAIRS, n), None)]
        started = time.perf_counter()
        store.store_and_commit(batch, [], time.time())
        times["generic" if generic[0] else "custom"].append((time.perf_counter() - started) * 1e3)
    generic[0] = False
    return {
        way: {
            "p50_ms": percentile(found, 50),
            "p90_ms": percentile(found, 90),
            "p99_ms": percentile(found, 99),
            "mean_ms": statistics.fmean(found),
        }
        for way, found in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grown", type=int, default=20_000, help="messages before phase 2")
    parser.add_argument("--batches", type=int, default=300, help="one-message batches a phase")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="administrative URL")
    args = parser.parse_args()
    require_loopback(args.postgres)
    hashed = PasswordHash(salt=b"s" * 16, params=ScryptParams(n=16), digest=b"d" * 32)
    with fresh_database(args.postgres) as (url, _name):
        store = PostgresStore.open(url)
        try:
            db = store.connection
            for table in TABLES:
                db.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
            for pair in range(PAIRS):
                for name in (f"s{pair}", f"r{pair}"):
                    store.create_account(name, hashed, 1.0)
            store.commit()
            generic = [False]
            generic_around_add_messages(store, generic)
            found = {f"fresh{k}": v for k, v in phase(store, generic, args.batches).items()}
            for start in range(0, args.grown, GROWN_BATCH):
                count = min(GROWN_BATCH, args.grown - start)
                batch = [(message((start + k) % PAIRS, start + k), None) for k in range(count)]
                store.store_and_commit(batch, [], time.time())
            for k, v in phase(store, generic, args.batches).items():
                found[f"grown, fresh plan kept{k}"] = v
            db.execute("ANALYZE")
            for k, v in phase(store, generic, args.batches).items():
                found[f"grown, analysed{k}"] = v
        finally:
            store.close()
    print(json.dumps(found))
    for name, ways in found.items():
        for way, figures in ways.items():
            print(
                f"  {name:38} {way:8} p50 {figures['p50_ms']:6.2f}  p90 {figures['p90_ms']:6.2f}"
                f"  p99 {figures['p99_ms']:6.2f}  mean {figures['mean_ms']:6.2f} ms"
            )


if __name__ == "__main__":
    main()
