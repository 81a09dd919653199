"""What is particular to the PostgreSQL store (the contract suite in test_store.py
runs on it too): two nodes' batches that deadlock, and a sending session's cursor
that keeps up with its own messages."""

from __future__ import annotations

import datetime
import threading

import pytest

from tests.services import POSTGRES_URL, postgres_store
from udpchat_proto.chat import messages as m
from udpchat_proto.chat.store import StoreUnavailableError
from udpchat_server.postgres_store import PostgresStore


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

    from udpchat_server.postgres_store import unavailable

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
