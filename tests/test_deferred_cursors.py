"""Acknowledgements wait in memory (CURSOR_WRITE_DELAY) unless a write carries them.

At low load a delivered message then costs one commit (its send), not two; a crash
before the cursor write only pushes messages again, which the client drops; a
failed request or a lost batch puts back what it had written of them. A batch that
writes anyway carries them only once a session has CARRIED_ACKNOWLEDGEMENTS of
them: fewer wait for the timer, so that a commit does not write cursors (and its
receipts cost no push) for every message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from tests.chat_helpers import ChatUser, ChatWorld, StoreFactory, texts_of
from udpchat_proto import messages as m
from udpchat_proto.chat.deliveries import CURSOR_WRITE_DELAY
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.passwords import PasswordHash, ScryptParams
from udpchat_proto.chat.requests import token_hash, utc_from_posix
from udpchat_proto.chat.store import (
    CARRIED_ACKNOWLEDGEMENTS,
    CURSOR_READERS,
    STORE_WRITES,
    Store,
    StoreUnavailableError,
    WriteTrackingStore,
)
from udpchat_server.stores.sqlite import SQLiteStore

T_ACK = 1_714_564_800.0
"""When the acknowledgements in these tests are made (POSIX seconds)."""


def waiting_for(world: ChatWorld, name: str, token: bytes | None) -> list[str]:
    """What the store itself (not the server's view) still holds for a session."""
    assert token is not None
    inner: Store = world.store.inner
    return texts_of(inner.pending_deliveries(name, token_hash(token), 100))


def test_a_delivered_message_costs_one_commit_and_the_cursor_follows(
    stores: StoreFactory,
) -> None:
    world = ChatWorld(stores)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    world.settle(2 * CURSOR_WRITE_DELAY)
    commits = world.store.commits
    for i in range(5):
        alice.send("bob", f"m{i}")

        def delivered(count: int = i + 1) -> bool:
            return len(bob.received()) == count

        world.run_until(delivered)
    # Delivered and acknowledged, within a fraction of the delay: one commit per
    # send (none carried the few acknowledgements before it), and the cursor
    # moves still wait in memory ...
    world.net.run_for(CURSOR_WRITE_DELAY / 4)
    assert bob.texts() == ["m0", "m1", "m2", "m3", "m4"]
    assert world.store.commits - commits == 5
    assert not world.server.writes_pending
    assert waiting_for(world, "bob", bob.token) == ["m0", "m1", "m2", "m3", "m4"]
    # ... (and the server does not push them again meanwhile) ...
    world.net.run_for(CURSOR_WRITE_DELAY / 4)
    assert bob.texts() == ["m0", "m1", "m2", "m3", "m4"]
    # ... until the timer writes them, in one more commit.
    world.settle(2 * CURSOR_WRITE_DELAY)
    assert world.store.commits - commits == 6
    assert waiting_for(world, "bob", bob.token) == []


def delivered_and_acknowledged(stores: StoreFactory, text: str) -> tuple[ChatWorld, ChatUser]:
    """alice sent bob ``text``; he took it, and his acknowledgement waits in memory."""
    world = ChatWorld(stores)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    alice.send("bob", text)
    world.run_until(lambda: bob.texts() == [text])
    world.net.run_for(CURSOR_WRITE_DELAY / 4)
    return world, bob


def test_a_write_in_the_batch_leaves_a_few_cursors_to_the_timer(stores: StoreFactory) -> None:
    world, bob = delivered_and_acknowledged(stores, "hello")
    assert waiting_for(world, "bob", bob.token) == ["hello"]
    # bob's own send is a write; its commit does not carry one acknowledgement ...
    commits = world.store.commits
    bob.send("alice", "hi")
    assert world.store.commits - commits == 1
    assert waiting_for(world, "bob", bob.token) == ["hello"]
    # ... the timer does, within CURSOR_WRITE_DELAY of it, and alice's receipt follows.
    world.net.run_for(CURSOR_WRITE_DELAY)
    assert waiting_for(world, "bob", bob.token) == []
    alice = world.users["alice"]
    assert [r.to for p in alice.pushes(m.DeliveryReceipts) for r in p.receipts] == ["bob"]


def test_a_write_in_the_batch_carries_many_cursors_with_it(stores: StoreFactory) -> None:
    world = ChatWorld(stores)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    world.settle(2 * CURSOR_WRITE_DELAY)
    texts = [f"m{i}" for i in range(CARRIED_ACKNOWLEDGEMENTS)]
    for text in texts:
        alice.send("bob", text)
    world.run_until(lambda: bob.texts() == texts)
    world.net.run_for(CURSOR_WRITE_DELAY / 4)  # acknowledged, not yet written
    assert waiting_for(world, "bob", bob.token) == texts
    # bob's own send is a write: its commit carries the acknowledgements.
    bob.send("alice", "hi")
    assert waiting_for(world, "bob", bob.token) == []


def test_a_crash_before_the_cursor_write_only_pushes_again(tmp_path: Path) -> None:
    # On SQLite: the memory store outlives a restart, so nothing would be lost.
    world, bob = delivered_and_acknowledged(StoreFactory("sqlite", tmp_path / "db"), "once")
    world.restart_server()  # the acknowledgement dies with the process
    bob.crash()
    bob.connect()
    bob.resume()
    world.settle()
    # Pushed again, and the client drops the repeat: shown once, counted.
    assert bob.texts() == ["once"]
    assert bob.conn.stats.duplicate_deliveries == 1
    world.settle(2 * CURSOR_WRITE_DELAY)
    assert waiting_for(world, "bob", bob.token) == []


# --- the tracker itself, on the memory store ------------------------------------------------


class FailingCommits(MemoryStore):
    """A memory store whose commits can be made to fail (the batch is then lost)."""

    fail = False

    def commit(self) -> None:
        if self.fail:
            raise StoreUnavailableError("disk full")


def stored(store: MemoryStore, *texts: str) -> tuple[bytes, list[bytes]]:
    """alice and bob, bob's session, and alice's messages to him (committed)."""
    password = PasswordHash(salt=b"s" * 16, params=ScryptParams(n=16, r=1, p=1), digest=b"d" * 32)
    for name in ("alice", "bob"):
        store.create_account(name, password, 0.0)
    store.add_friendship("alice", "bob", 0.0)
    session = b"s" * 32
    store.create_session(session, "bob", 0.0)
    ids = []
    for i, text in enumerate(texts):
        message = m.ChatMessage(
            id=bytes([i + 1]) * 16, sender="alice", to="bob", text=text, sent_at=utc_from_posix(0)
        )
        store.add_message(message)
        ids.append(message.id)
    store.commit()
    return session, ids


def tracked(
    inner: MemoryStore, *texts: str, carry_at: int = 1
) -> tuple[WriteTrackingStore, Store, bytes, list[bytes]]:
    """A tracker over ``inner`` (holding ``stored``'s messages), the tracker as a
    Store, bob's session and the messages' ids; by default its commits carry every
    acknowledgement (``carry_at``)."""
    session, ids = stored(inner, *texts)
    tracker = WriteTrackingStore(inner, carry_at=carry_at)
    return tracker, cast(Store, tracker), session, ids


def pending(store: Store, session: bytes) -> list[str]:
    return texts_of(store.pending_deliveries("bob", session, 10))


def test_the_tracker_leaves_out_what_waits_and_still_finds_the_end() -> None:
    inner = MemoryStore()
    tracker, view, session, ids = tracked(inner, "a", "b", "c")
    view.acknowledge("bob", session, ids[:2], T_ACK)
    assert not tracker.dirty and tracker.acknowledgements_deferred
    assert pending(inner, session) == ["a", "b", "c"]
    assert pending(view, session) == ["c"]
    # A page of one that leaves out two: "c" is still found, so a short answer
    # still means the end of the backlog.
    assert texts_of(view.pending_deliveries("bob", session, 1)) == ["c"]
    assert texts_of(view.pending_deliveries("bob", session, 0)) == []


def test_the_tracker_writes_them_with_the_next_commit_that_has_writes() -> None:
    inner = MemoryStore()
    tracker, view, session, ids = tracked(inner, "a", "b")
    view.acknowledge("bob", session, ids[:1], T_ACK)
    view.add_invitation("bob", "carol", 0.0)
    tracker.commit()
    assert not tracker.acknowledgements_deferred
    assert pending(inner, session) == ["b"]


def test_the_tracker_leaves_fewer_than_carry_at_to_the_timer() -> None:
    inner = MemoryStore()
    tracker, view, session, ids = tracked(inner, "a", "b", "c", carry_at=2)
    view.acknowledge("bob", session, ids[:1], T_ACK)
    view.add_invitation("bob", "carol", 0.0)
    tracker.commit()
    assert tracker.acknowledgements_deferred
    assert pending(inner, session) == ["a", "b", "c"]
    # A second id of the same session makes the next commit carry them all.
    view.acknowledge("bob", session, ids[1:2], T_ACK)
    view.add_invitation("bob", "dave", 0.0)
    tracker.commit()
    assert not tracker.acknowledgements_deferred
    assert pending(inner, session) == ["c"]
    # The timer's flush writes any number.
    view.acknowledge("bob", session, ids[2:], T_ACK)
    tracker.flush_acknowledgements()
    tracker.commit()
    assert pending(inner, session) == []


def test_a_commit_carries_only_the_sessions_that_have_carry_at() -> None:
    inner = MemoryStore()
    tracker, view, session, ids = tracked(inner, "a", "b", carry_at=2)
    other = b"t" * 32  # bob's second login session
    inner.create_session(other, "bob", 0.0)
    inner.commit()
    view.acknowledge("bob", other, ids[:1], T_ACK)
    view.acknowledge("bob", session, ids, T_ACK)
    view.add_invitation("bob", "carol", 0.0)
    tracker.commit()
    assert pending(inner, session) == []
    assert pending(inner, other) == ["a", "b"]  # one id: it waits for the timer
    assert tracker.acknowledgements_deferred
    tracker.flush_acknowledgements()
    tracker.commit()
    assert pending(inner, other) == ["b"]


def test_a_failed_request_puts_back_what_it_wrote_of_them() -> None:
    inner = MemoryStore()
    tracker, view, session, ids = tracked(inner, "a", "b")
    view.acknowledge("bob", session, ids, T_ACK)
    with pytest.raises(RuntimeError), view.atomic():
        # A write that needs the cursors written first (a new session copies them) ...
        view.create_session(b"t" * 32, "bob", 0.0)
        assert not tracker.acknowledgements_deferred
        raise RuntimeError("... then the request fails")
    # The memory store has no savepoints to undo them; a real one does, and the
    # tracker cannot tell which: they wait again, and writing them twice is harmless.
    assert tracker.acknowledgements_deferred
    tracker.commit()
    assert pending(inner, session) == []


def test_a_lost_batch_puts_them_back_for_the_next() -> None:
    inner = FailingCommits()
    tracker, view, session, ids = tracked(inner, "a", "b")
    view.acknowledge("bob", session, ids[:1], T_ACK)
    view.add_invitation("bob", "carol", 0.0)
    inner.fail = True
    with pytest.raises(StoreUnavailableError):
        tracker.commit()
    assert tracker.acknowledgements_deferred and not tracker.dirty
    view.acknowledge("bob", session, ids[1:], T_ACK)
    inner.fail = False
    tracker.flush_acknowledgements()
    assert tracker.dirty
    tracker.commit()
    assert not tracker.acknowledgements_deferred
    assert pending(inner, session) == []


def test_what_waits_for_the_cursors_is_writes_only() -> None:
    # The tracker marks the batch dirty before each of them: they must write.
    assert CURSOR_READERS <= STORE_WRITES


class HalfFailingAcknowledgements(SQLiteStore):
    """A SQLite store whose acknowledge_many fails after its first statements (as a
    full disk would refuse the cursor upserts after the delivery marks)."""

    fail = False

    def acknowledge_many(self, acknowledgements: Any, now: float) -> Any:
        receipts = super().acknowledge_many(acknowledgements, now)
        if self.fail:
            raise StoreUnavailableError("disk full")
        return receipts


def test_a_flush_that_fails_at_commit_leaves_nothing_half_written(tmp_path: Path) -> None:
    # Found by review: the flush at commit ran outside any savepoint, so a failure
    # half-way left its delivery marks in the batch (and a later commit kept them,
    # with no receipt ever reported); the acknowledgements are put back.
    inner = cast(
        HalfFailingAcknowledgements, HalfFailingAcknowledgements.open(tmp_path / "db.sqlite3")
    )
    session, ids = stored(inner, "a")  # type: ignore[arg-type]
    tracker = WriteTrackingStore(inner, carry_at=1)
    view = cast(Store, tracker)
    view.acknowledge("bob", session, ids, T_ACK)
    view.add_invitation("bob", "carol", 0.0)
    inner.fail = True
    tracker.commit()  # the rest of the batch commits; the acknowledgement waits
    assert inner.has_invitation("bob", "carol")
    assert tracker.acknowledgements_deferred and tracker.take_receipts() == []
    stored_message = inner.get_message(ids[0])
    assert stored_message is not None and stored_message.delivered_at is None
    inner.fail = False
    tracker.commit()
    assert [r.message_id for r in tracker.take_receipts()] == ids
    assert pending(inner, session) == []
    inner.close()
