"""Two nodes' batches on one PostgreSQL database can deadlock: the loser's call
raises a ``conflict`` StoreUnavailableError inside its savepoint, its batch stands,
and the winner goes on once the loser commits."""

from __future__ import annotations

import threading

import pytest

from tests.services import POSTGRES_URL, postgres_store
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
