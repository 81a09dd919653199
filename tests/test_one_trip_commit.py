"""A batch whose only writes are its staged messages and the acknowledgements it
carries ends in one store call where the store can (``CommitsInOneTrip``:
PostgreSQL's pipeline, whose own side is in test_postgres_store.py). Sans-IO, on
a memory store that does it in steps and counts the calls."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest

from tests.chat_helpers import ChatWorld, StoreFactory
from tests.test_deferred_cursors import T_ACK, pending, stored, waiting_for
from udpchat_proto import messages as m
from udpchat_proto.chat.deliveries import CURSOR_WRITE_DELAY
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.requests import utc_from_posix
from udpchat_proto.chat.store import (
    Acknowledgement,
    CommitsInOneTrip,
    Receipt,
    Store,
    StoredMessage,
    StoreUnavailableError,
    WriteTrackingStore,
)


class OneTripStore(MemoryStore):
    """A memory store with ``store_and_commit`` (the steps of one call), which
    counts its calls and can be made to lose the next races."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.races_lost = 0
        """How many of the next calls fail as a lost race (nothing kept)."""
        self.opened = False
        """What ``transaction_open`` says (the tests set it)."""

    @property
    def transaction_open(self) -> bool:
        return self.opened

    def store_and_commit(
        self,
        messages: Sequence[tuple[m.ChatMessage, bytes | None]],
        acknowledgements: Sequence[Acknowledgement],
        now: float,
    ) -> tuple[list[StoredMessage | None], list[Receipt] | None]:
        self.calls += 1
        if self.races_lost:
            self.races_lost -= 1
            raise StoreUnavailableError("database conflict", conflict=True)
        found = self.add_messages(messages)
        receipts = self.acknowledge_many(acknowledgements, now)
        self.commit()
        return found, receipts


def message(n: int, text: str, *, sender: str = "alice") -> m.ChatMessage:
    return m.ChatMessage(
        id=bytes([n]) * 16, sender=sender, to="bob", text=text, sent_at=utc_from_posix(0)
    )


def test_sends_and_carried_acknowledgements_end_the_batch_in_one_call() -> None:
    inner = OneTripStore()
    assert isinstance(inner, CommitsInOneTrip)
    session, ids = stored(inner, "a", "b")
    tracker = WriteTrackingStore(inner, stage_messages=True)
    refused: list[str] = []
    for n, text in ((7, "c"), (1, "taken"), (8, "d")):
        tracker.stage_message(message(n, text), None, lambda t=text: refused.append(t))  # type: ignore[misc]
    cast(Store, tracker).acknowledge("bob", session, ids, T_ACK)
    tracker.carry_deferred()  # (the timer's write)
    tracker.commit()
    assert inner.calls == 1 and refused == ["taken"]
    assert not tracker.dirty and not tracker.acknowledgements_deferred
    assert sorted(r.message_id for r in tracker.take_receipts()) == sorted(ids)
    assert pending(inner, session) == ["c", "d"]


def test_a_batch_that_wrote_before_commits_in_steps() -> None:
    inner = OneTripStore()
    session, _ids = stored(inner)
    tracker = WriteTrackingStore(inner, stage_messages=True)
    cast(Store, tracker).add_invitation("bob", "carol", 0.0)
    inner.opened = True  # (what a store a round trip away would say now)
    tracker.stage_message(message(7, "c"), None, lambda: None)
    tracker.commit()
    assert inner.calls == 0 and pending(inner, session) == ["c"]


def test_a_lost_race_does_the_whole_batch_again_and_then_gives_up() -> None:
    inner = OneTripStore()
    session, ids = stored(inner, "a")
    tracker = WriteTrackingStore(inner, stage_messages=True)
    inner.races_lost = 1
    tracker.stage_message(message(7, "c"), None, lambda: None)
    cast(Store, tracker).acknowledge("bob", session, ids, T_ACK)
    tracker.carry_deferred()
    tracker.commit()
    assert inner.calls == 2 and tracker.conflicts_retried == 1
    assert pending(inner, session) == ["c"]
    # Every try lost: the batch is lost, its acknowledgements wait again.
    inner.races_lost = 10
    tracker.stage_message(message(8, "d"), None, lambda: None)
    cast(Store, tracker).acknowledge("bob", session, [bytes([7]) * 16], T_ACK)
    tracker.carry_deferred()
    with pytest.raises(StoreUnavailableError):
        tracker.commit()
    assert tracker.acknowledgements_deferred and not tracker.dirty
    assert pending(inner, session) == ["c"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_timer_of_a_staging_server_has_the_commit_write_the_cursors(
    kind: str, tmp_path: Path
) -> None:
    # The cursors wait in memory as on any server, then go with one commit.
    world = ChatWorld(StoreFactory(kind, tmp_path / "chat.sqlite3"), stage_messages=True)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    world.settle(2 * CURSOR_WRITE_DELAY)
    alice.send("bob", "hello")
    world.run_until(lambda: bob.texts() == ["hello"])
    world.net.run_for(CURSOR_WRITE_DELAY / 4)
    commits = world.store.commits
    assert waiting_for(world, "bob", bob.token) == ["hello"]
    world.settle(2 * CURSOR_WRITE_DELAY)
    assert world.store.commits - commits == 1
    assert waiting_for(world, "bob", bob.token) == []
    assert bob.texts() == ["hello"]
