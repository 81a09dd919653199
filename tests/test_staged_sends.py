"""A server whose store is a round trip away (PostgreSQL) stages each batch's new
messages and stores them in one call (``Store.add_messages``): what a client sees
must be what it saw when each was stored at once. Sans-IO, on the memory and
SQLite stores (the PostgreSQL store's own side: test_postgres_store.py)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.chat_helpers import ChatWorld, StoreFactory
from udpchat_proto import StoreUnavailableError
from udpchat_proto import messages as m
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.messages import ChatMessage
from udpchat_proto.chat.passwords import PasswordHash, ScryptParams
from udpchat_proto.chat.store import WriteTrackingStore, stored_size
from udpchat_proto.errors import ErrorCode
from udpchat_server.stores.sqlite import SQLiteStore

PASSWORD_HASH = PasswordHash(salt=b"s" * 16, params=ScryptParams(n=16), digest=b"d" * 32)


@pytest.fixture(params=["memory", "sqlite"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> ChatWorld:
    return ChatWorld(StoreFactory(request.param, tmp_path / "chat.sqlite3"), stage_messages=True)


def test_a_staged_message_is_pushed_once_stored_and_a_retry_gets_the_first_answer(
    world: ChatWorld,
) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    first = alice.send("bob", "hello")
    world.settle()
    assert bob.texts() == ["hello"]
    # The acceptance was lost, say: the same id again is the same message.
    again = alice.ok(
        alice.conn.send_message("bob", "hello", message_id=first.message_id), m.MessageAccepted
    )
    assert again.sent_at == first.sent_at
    world.settle()
    assert bob.texts() == ["hello"]
    assert [h.text for h in world.store.history("alice", "bob", 10)] == ["hello"]


def test_a_staged_message_with_someone_elses_id_is_refused_and_pushed_to_nobody(
    world: ChatWorld,
) -> None:
    alice, bob, carol = world.signed_up("alice", "bob", "carol")
    world.befriend(alice, bob)
    world.befriend(carol, bob)
    first = alice.send("bob", "from alice")
    carol.refused(
        carol.conn.send_message("bob", "from carol", message_id=first.message_id),
        ErrorCode.BAD_REQUEST,
    )
    world.settle()
    assert bob.texts() == ["from alice"]
    assert world.server.stats.messages_accepted == 1


def test_a_batch_of_sends_is_stored_in_one_call(world: ChatWorld) -> None:
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    store = world.store
    original = store.add_messages
    calls: list[int] = []

    def counting(messages: Any) -> Any:
        calls.append(len(messages))
        return original(messages)

    store.add_messages = counting  # type: ignore[method-assign]
    # Pipelined: the five requests reach the server together.
    requests = [alice.conn.send_message("bob", f"m{n}") for n in range(5)]
    for request in requests:
        alice.ok(request, m.MessageAccepted)
    world.settle()
    assert bob.texts() == [f"m{n}" for n in range(5)]
    assert sum(calls) == 5 and len(calls) < 5


def test_a_failure_writing_what_refers_to_a_staged_message_loses_the_whole_batch(
    tmp_path: Path,
) -> None:
    # An encrypted message's devices and shares are written once it is stored (its
    # ``stored`` callback, inside the flush): if that write fails, the message must
    # not be committed without them (no device would be given it), nor answered.
    store = SQLiteStore.open(tmp_path / "chat.sqlite3")
    try:
        tracker = WriteTrackingStore(store, stage_messages=True)
        message = m.ChatMessage(
            id=bytes(16),
            sender="alice",
            to="bob",
            text="hi",
            sent_at=datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC),
        )

        def stored() -> None:
            raise StoreUnavailableError("the disk is full")

        tracker.stage_message(message, None, lambda: None, stored, writes=True)
        with pytest.raises(StoreUnavailableError):
            tracker.commit()
        assert store.get_message(bytes(16)) is None
    finally:
        store.close()


def test_a_staged_encrypted_messages_sealed_bytes_count_before_it_is_stored() -> None:
    """The batch's next message of the same sender is checked against the quota
    with what the staged one will store beside its row."""
    inner = MemoryStore()
    inner.create_account("alice", PASSWORD_HASH, 1.0)
    inner.create_account("bob", PASSWORD_HASH, 1.0)
    tracker = WriteTrackingStore(inner, stage_messages=True)
    sealed = ChatMessage(
        id=b"\x01" * 16,
        sender="alice",
        to="bob",
        text="hi",  # (an encrypted one's is empty: only the sizes matter here)
        sent_at=datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC),
    )
    charged: list[int] = []
    tracker.stage_message(
        sealed, None, lambda: None, lambda: charged.append(1), writes=True, sealed=5000
    )
    assert tracker.stored_bytes("alice") == stored_size("hi") + 5000
    assert tracker.stored_bytes("bob") == 0
    tracker.flush_messages()
    assert charged == [1]
    # (Stored now: what its ``stored`` callback charges is the inner store's to count.)
    assert tracker.stored_bytes("alice") == stored_size("hi")
