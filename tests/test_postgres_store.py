"""What is particular to the PostgreSQL store (the contract suite in test_store.py
runs on it too): two nodes' batches that deadlock, a sending session's cursor that
keeps up with its own messages, and the stored bytes counted by a migration."""

from __future__ import annotations

import datetime
import threading
import uuid
from pathlib import Path
from typing import Any, cast
from unittest import mock

import attrs
import psycopg
import pytest

from tests.services import POSTGRES_URL, postgres_database, postgres_store
from tests.test_sql_layer import released_sql
from udpchat_proto import Store
from udpchat_proto import messages as m
from udpchat_proto.chat.passwords import PasswordHash, ScryptParams
from udpchat_proto.chat.store import StoreUnavailableError, WriteTrackingStore, stored_size
from udpchat_server.migrate import migrate
from udpchat_server.stores import batched
from udpchat_server.stores.postgres import MIGRATIONS, PostgresStore
from udpchat_server.stores.sqlite import SQLiteStore


def test_a_deadlock_between_two_nodes_is_a_conflict_within_the_savepoint() -> None:
    with postgres_store() as first:
        second = PostgresStore.open(POSTGRES_URL, schema=first._schema)
        try:
            first.join_room("#a", "u", 1.0)  # each batch holds one row ...
            second.join_room("#b", "u", 1.0)
            failures: dict[str, BaseException] = {}

            def cross(name: str, store: PostgresStore, room: str) -> None:
                try:
                    with store.atomic():  # ... and wants the other's
                        store.join_room(room, "u", 2.0)
                except StoreUnavailableError as exc:
                    failures[name] = exc
                    store.commit()  # the loser's batch stands: the winner goes on

            threads = [
                threading.Thread(target=cross, args=("first", first, "#b")),
                threading.Thread(target=cross, args=("second", second, "#a")),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert not any(thread.is_alive() for thread in threads)
            assert len(failures) == 1
            (loser,) = failures.values()
            assert isinstance(loser, StoreUnavailableError) and loser.conflict
            winner = second if "first" in failures else first
            winner.commit()
            # Both batches' first rows are there, and the winner's second.
            assert sorted(r for r, _n in first.rooms_of("u")) == ["#a", "#b"]
        finally:
            second.close()


def test_other_failures_are_no_conflict() -> None:
    pytest.importorskip("psycopg")
    import psycopg

    from udpchat_server.stores.postgres import unavailable

    lost = unavailable(psycopg.errors.DiskFull("no space left on device"))
    assert lost is not None and lost.reason == "disk full" and not lost.conflict


def test_a_session_that_only_sends_keeps_its_cursor_up_with_its_own_messages() -> None:
    # Its own messages are never pushed to it; were its cursor left behind, each
    # look for what is pending would walk all it ever sent.
    phone, laptop = b"p" * 32, b"l" * 32
    with postgres_store() as store:
        store.create_session(phone, "alice", 1.0)
        store.create_session(laptop, "alice", 1.0)
        store.join_room("#r", "alice", 1.0)
        for n in range(5):
            store.add_message(chat("alice", "#r", n), origin=phone)
            store.add_message(chat("alice", "bob", n), origin=phone)
        store.commit()
        cursors = dict(
            store._read().execute(
                "SELECT c.key, s.seq FROM session_cursors AS s "
                "JOIN conversations AS c ON c.id = s.conversation WHERE s.token_hash = %s",
                (phone,),
            )
        )
        assert cursors == {"#r": 5, "alice bob": 5}
        assert store.pending_deliveries("alice", phone, 10) == []
        # Her other device has them all still, in order.
        texts = [d.text for d in store.pending_deliveries("alice", laptop, 20)]
        assert texts == [t for n in range(5) for t in (f"#r {n}", f"bob {n}")]


def chat(sender: str, to: str, n: int) -> m.ChatMessage:
    return m.ChatMessage(
        id=bytes([n, len(to)]) * 8,
        sender=sender,
        to=to,
        text=f"{to} {n}",
        sent_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    )


# --- the storage quota's counter ------------------------------------------------------------


def test_version_3_counts_what_was_stored_before_it() -> None:
    schema = f"test_{uuid.uuid4().hex[:12]}"
    password = PasswordHash(salt=b"s" * 16, params=ScryptParams(n=16), digest=b"d" * 32)
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
            db.execute(f'CREATE SCHEMA "{schema}"')
            db.execute(f'SET search_path TO "{schema}"')
            for statement in released_sql(MIGRATIONS[:2]):
                db.execute(statement)
            db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            db.execute("INSERT INTO schema_version VALUES (2)")
            for name in ("alice", "bob", "carol"):
                db.execute(
                    "INSERT INTO accounts (username, password, created_at) VALUES (%s, %s, 1)",
                    (name, password.to_string()),
                )
            db.execute(
                "INSERT INTO conversations (key, is_room, last_seq, created_at) "
                "VALUES ('alice bob', FALSE, 3, 1)"
            )
            for seq, sender, text in ((1, "alice", "hi"), (2, "alice", "héllo"), (3, "bob", "yo")):
                db.execute(
                    "INSERT INTO messages (id, conversation, seq, sender, recipient, text, "
                    "sent_at) SELECT %s, id, %s, %s, 'x', %s, 0 FROM conversations",
                    (bytes([seq]) * 16, seq, sender, text),
                )
        with PostgresStore.open(POSTGRES_URL, schema=schema) as store:
            assert store.stored_bytes("alice") == stored_size("hi") + stored_size("héllo")
            assert store.stored_bytes("bob") == stored_size("yo")
            assert store.stored_bytes("carol") == 0
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_the_move_from_sqlite_keeps_each_accounts_stored_bytes(tmp_path: Path) -> None:
    password = PasswordHash(salt=b"s" * 16, params=ScryptParams(n=16), digest=b"d" * 32)
    source = tmp_path / "single.sqlite3"
    with SQLiteStore.open(source) as single:
        for name in ("alice", "bob"):
            single.create_account(name, password, 1.0)
        single.add_message(chat("alice", "bob", 1))
        single.add_message(chat("alice", "#r", 2))
        single.commit()
        expected = {name: single.stored_bytes(name) for name in ("alice", "bob")}
    assert expected["alice"] > 0
    with postgres_database() as url:
        migrate(source, url)
        with PostgresStore.open(url) as moved:
            assert {name: moved.stored_bytes(name) for name in expected} == expected


# --- a node's batch: a few statements whatever its size ---------------------------------------


def direct(sender: str, to: str, n: int) -> m.ChatMessage:
    return m.ChatMessage(
        id=uuid.uuid4().bytes,
        sender=sender,
        to=to,
        text=f"{sender} {n}",
        sent_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    )


def test_a_batch_with_a_failure_in_the_middle_is_rolled_back_whole() -> None:
    with postgres_store() as store:
        # The disk fills up as the second message of a batch is written.
        store.connection.execute(
            "CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.text = 'bob 1' THEN RAISE EXCEPTION 'no space' USING ERRCODE = '53100'; "
            "END IF; RETURN NEW; END $$"
        )
        store.connection.execute(
            "CREATE TRIGGER disk_full BEFORE INSERT ON messages "
            "FOR EACH ROW EXECUTE FUNCTION disk_full()"
        )
        store.create_session(b"a" * 32, "alice", 1.0)
        store.commit()
        store.create_session(b"b" * 32, "bob", 2.0)  # an earlier write of the batch
        with pytest.raises(StoreUnavailableError) as full:
            store.add_messages([(direct("bob", "alice", n), None) for n in range(3)])
        assert full.value.reason == "disk full" and not full.value.conflict
        with pytest.raises(StoreUnavailableError):
            store.add_messages([(direct("bob", "alice", 9), None)])  # refused: lost
        with pytest.raises(StoreUnavailableError):
            store.commit()
        # Nothing of the batch is kept: no message, no seq, no session.
        assert store.pending_deliveries("alice", b"a" * 32, 10) == []
        assert store.get_session(b"b" * 32) is None
        # The next batch is a new one.
        store.add_messages([(direct("bob", "alice", 2), None)])
        store.commit()
        stored = store.get_message(store.pending_deliveries("alice", b"a" * 32, 10)[0].id)
        assert stored is not None and stored.seq == 1 and stored.message.text == "bob 2"


def test_two_nodes_storing_messages_that_deadlock_lose_only_the_statement() -> None:
    with postgres_store() as first:
        second = PostgresStore.open(POSTGRES_URL, schema=first._schema)
        try:
            first.add_messages([(direct("a", "b", 0), None)])  # each batch holds a row ...
            second.add_messages([(direct("c", "d", 0), None)])
            failures: dict[str, StoreUnavailableError] = {}

            def cross(name: str, store: PostgresStore, sender: str, to: str) -> None:
                try:
                    # ... and wants the other's (its conversation's seq).
                    store.add_messages([(direct(sender, to, 1), None)])
                except StoreUnavailableError as exc:
                    failures[name] = exc
                    store.commit()  # the loser's batch stands: the winner goes on

            threads = [
                threading.Thread(target=cross, args=("first", first, "c", "d")),
                threading.Thread(target=cross, args=("second", second, "a", "b")),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert not any(thread.is_alive() for thread in threads)
            assert len(failures) == 1
            (loser,) = failures.values()
            assert loser.conflict
            winner = second if "first" in failures else first
            winner.commit()
            # Both batches' first messages are there, the winner's second, no gap.
            seqs = first._read().execute(
                "SELECT c.key, array_agg(m.seq ORDER BY m.seq) FROM messages AS m "
                "JOIN conversations AS c ON c.id = m.conversation GROUP BY c.key"
            )
            assert sorted(found for _key, found in seqs) == [[1], [1, 2]]
        finally:
            second.close()


def test_a_serialization_failure_storing_a_nodes_messages_is_retried() -> None:
    with postgres_store() as store:
        store.connection.execute(
            "CREATE FUNCTION serialization_failure() RETURNS int LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'lost a race' USING ERRCODE = '40001'; END $$"
        )
        store.create_session(b"a" * 32, "alice", 1.0)
        store.commit()
        tracker = WriteTrackingStore(store, stage_messages=True)
        real = store.add_messages
        calls: list[int] = []

        def racing(messages: Any) -> Any:
            calls.append(len(messages))
            if len(calls) > 1:
                return real(messages)
            # The first try fails in PostgreSQL as a lost race does.
            losing = "SELECT serialization_failure(), 1 WHERE %(ids)s::bytea[] IS NOT NULL"
            with mock.patch.object(batched, "ADD_MESSAGES", losing):
                return real(messages)

        store.add_messages = racing  # type: ignore[method-assign]
        cast(Store, tracker).create_session(b"b" * 32, "bob", 1.0)  # the batch's earlier write
        refused: list[None] = []
        tracker.stage_message(direct("bob", "alice", 0), b"b" * 32, lambda: refused.append(None))
        tracker.commit()
        assert calls == [1, 1] and tracker.conflicts_retried == 1 and refused == []
        # The conflict undid its own statement only: the whole batch committed.
        assert store.get_session(b"b" * 32) is not None
        texts = [d.text for d in store.pending_deliveries("alice", b"a" * 32, 10)]
        assert texts == ["bob 0"]


def test_a_nodes_batch_costs_four_round_trips_whatever_its_size() -> None:
    with postgres_store() as store:
        sessions = [bytes([n]) * 32 for n in range(1, 41)]
        for n, hashed in enumerate(sessions):
            store.create_session(hashed, f"u{n}", 1.0)
        store.commit()
        tracker = WriteTrackingStore(store, stage_messages=True)
        previous: list[m.ChatMessage] = []
        for size in (1, 20, 200):
            before = store.round_trips
            sent = [direct(f"u{n % 40}", f"u{(n + 1) % 40}", n) for n in range(size)]
            for message in sent:
                tracker.stage_message(message, sessions[int(message.sender[1:])], lambda: None)
            for message in previous:  # the last batch's messages, acknowledged now
                tracker.acknowledge(message.to, sessions[int(message.to[1:])], [message.id], 2.0)
            tracker.commit()
            found = tracker.pending_deliveries_many([(f"u{n}", sessions[n], 64) for n in range(40)])
            assert sum(len(f) for f in found) == size
            assert store.round_trips - before <= 4, size
            previous = sent


def test_a_few_sessions_pending_read_runs_in_its_generic_plan_and_finds_the_same() -> None:
    # The other node of a cross-node message reads one session or two: planning
    # the read for their values was most of its time. Its generic plan must find
    # what the planned one does, and leave every other statement planned.
    with postgres_store() as store:
        sessions = [bytes([n]) * 32 for n in range(1, 21)]
        for n, hashed in enumerate(sessions):
            store.create_session(hashed, f"u{n}", 1.0)
        for n in range(40):
            store.add_message(direct(f"u{n % 20}", f"u{(n + 1) % 20}", n))
        store.acknowledge("u1", sessions[1], [], 2.0)
        store.commit()
        asked = [(f"u{n}", sessions[n], 3) for n in range(20)]
        everyone = store.pending_deliveries_many(asked)  # more than a few: planned
        assert sum(len(found) for found in everyone) == 40
        for _ in range(8):  # (psycopg prepares a statement on its fifth run)
            for n in range(0, 20, 2):
                assert store.pending_deliveries_many(asked[n : n + 2]) == everyone[n : n + 2]
        db = store.connection
        plans = db.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE %s",
            ("%each cursor looked up by its key%",),
        ).fetchall()
        assert plans and all(generic > 0 and custom == 0 for generic, custom in plans)
        assert db.execute("SHOW plan_cache_mode").fetchone() == ("force_custom_plan",)


def test_a_failed_read_in_the_generic_plan_leaves_no_statement_generic() -> None:
    with postgres_store() as store:
        with pytest.raises(psycopg.errors.DivisionByZero):
            store._select_binary("SELECT 1 / 0", {}, generic=True)
        # The error aborted the pipeline's transaction, and the SET with it.
        db = store.connection
        assert db.execute("SHOW plan_cache_mode").fetchone() == ("force_custom_plan",)


def _stored_bytes(store: PostgresStore, user: str) -> int:
    row = store.connection.execute(
        "SELECT stored_bytes FROM accounts WHERE username = %s", (user,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def _one_trip_world(store: PostgresStore) -> tuple[WriteTrackingStore, list[bytes]]:
    sessions = [bytes([n]) * 32 for n in range(1, 5)]
    for n, hashed in enumerate(sessions):
        store.create_session(hashed, f"u{n}", 1.0)
        store.create_account(
            f"u{n}", PasswordHash(salt=b"s" * 16, params=ScryptParams(n=16), digest=b"d" * 32), 1.0
        )
    store.commit()
    return WriteTrackingStore(store, stage_messages=True), sessions


def test_a_batch_of_messages_and_acknowledgements_commits_in_one_round_trip() -> None:
    # At low load a batch is a message or two and the acknowledgements waiting:
    # their statements and the COMMIT go in one pipeline, the stored bytes counted
    # in SQL from the rows the batch stored (not an id taken already, nor the
    # second of an id sent twice).
    with postgres_store() as store:
        tracker, sessions = _one_trip_world(store)
        first = [direct("u0", "u1", n) for n in range(3)]
        for message in first:
            tracker.stage_message(message, sessions[0], lambda: None)
        before = store.round_trips
        tracker.commit()
        assert store.round_trips - before == 1
        assert _stored_bytes(store, "u0") == sum(stored_size(x.text) for x in first)
        # The next batch: a new message, one whose id is taken, one sent twice in it;
        # and u1's acknowledgements of the first, carried by the timer's write.
        again = direct("u0", "u1", 9)
        taken = attrs.evolve(direct("u0", "u1", 7), id=first[0].id)
        staged = [direct("u0", "u1", 3), taken, again, again]
        refused: list[int] = []
        for n, message in enumerate(staged):
            tracker.stage_message(message, sessions[0], lambda n=n: refused.append(n))  # type: ignore[misc]
        tracker.acknowledge("u1", sessions[1], [x.id for x in first], 2.0)
        tracker.carry_deferred()
        before = store.round_trips
        tracker.commit()
        assert store.round_trips - before == 1
        assert refused == [1, 3]
        assert not tracker.acknowledgements_deferred
        receipts = tracker.take_receipts()
        assert sorted(r.message_id for r in receipts) == sorted(x.id for x in first)
        kept = [*first, staged[0], again]
        assert _stored_bytes(store, "u0") == sum(stored_size(x.text) for x in kept)
        assert store.pending_deliveries("u1", sessions[1], 10) == [staged[0], again]


def test_a_conflict_in_the_one_round_trip_commit_does_the_batch_again() -> None:
    with postgres_store() as store:
        tracker, sessions = _one_trip_world(store)
        store.connection.execute(
            "CREATE OR REPLACE FUNCTION serialization_failure() RETURNS int LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'lost a race' USING ERRCODE = '40001'; END $$"
        )
        real = store.store_and_commit
        calls: list[int] = []

        def racing(messages: Any, acknowledgements: Any, now: float) -> Any:
            calls.append(len(messages))
            if len(calls) > 1:
                return real(messages, acknowledgements, now)
            losing = "SELECT serialization_failure(), 1 WHERE %(ids)s::bytea[] IS NOT NULL"
            with mock.patch.object(batched, "ADD_MESSAGES", losing):
                return real(messages, acknowledgements, now)

        store.store_and_commit = racing  # type: ignore[method-assign]
        message = direct("u0", "u1", 0)
        tracker.stage_message(message, sessions[0], lambda: None)
        tracker.commit()
        assert calls == [1, 1] and tracker.conflicts_retried == 1
        assert _stored_bytes(store, "u0") == stored_size(message.text)
        assert store.pending_deliveries("u1", sessions[1], 10) == [message]


def test_acknowledgements_that_fail_in_the_one_round_trip_commit_wait_again() -> None:
    with postgres_store() as store:
        tracker, sessions = _one_trip_world(store)
        earlier = direct("u0", "u1", 0)
        store.add_message(earlier)
        store.commit()
        message = direct("u0", "u1", 1)
        tracker.stage_message(message, sessions[0], lambda: None)
        tracker.acknowledge("u1", sessions[1], [earlier.id], 2.0)
        tracker.carry_deferred()
        failing = "SELECT 1 / 0 WHERE %(ids)s::bytea[] IS NOT NULL"
        before = store.round_trips
        with mock.patch.object(batched, "ACKNOWLEDGE", failing):
            tracker.commit()
        assert store.round_trips - before == 2  # (the rest committed without them)
        assert tracker.acknowledgements_deferred and tracker.take_receipts() == []
        assert _stored_bytes(store, "u0") == stored_size(earlier.text) + stored_size(message.text)
        assert store.pending_deliveries("u1", sessions[1], 10) == [earlier, message]
        tracker.commit()  # (nothing carried: they wait for the timer)
        tracker.carry_deferred()
        tracker.commit()
        assert [r.message_id for r in tracker.take_receipts()] == [earlier.id]
        assert store.pending_deliveries("u1", sessions[1], 10) == [message]
