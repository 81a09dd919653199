"""What SQLite deletes leaves its files (issue 23, item 10): a deleted account's
password record and sessions, and a replaced password, are not in the raw bytes
of the database, its ``-wal`` or its ``-shm`` after the commit."""

from __future__ import annotations

import datetime
import os
import sqlite3
import time
from pathlib import Path

from udpchat_proto.chat.messages import ChatMessage
from udpchat_proto.chat.passwords import PasswordHash, ScryptParams
from udpchat_server.stores.sqlite import SQLiteStore

NOW = 1_714_564_800.0


def record(seed: int) -> PasswordHash:
    """A password record whose salt and digest are unmistakable in a file."""
    return PasswordHash(
        salt=os.urandom(12) + seed.to_bytes(4, "big"),
        params=ScryptParams(n=16),
        digest=os.urandom(28) + seed.to_bytes(4, "big"),
    )


def raw(path: Path) -> bytes:
    """The database, its -wal and its -shm, as bytes on disk (the ones that exist)."""
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    return b"".join(file.read_bytes() for file in files if file.exists())


def traces(password: PasswordHash) -> list[bytes]:
    """The ways a password record sits in a file: its text, and its salt and
    digest (in hex, as the text holds them)."""
    return [
        password.to_string().encode(),
        password.salt.hex().encode(),
        password.digest.hex().encode(),
    ]


def test_a_deleted_account_leaves_nothing_of_its_password_or_sessions(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    alice, bob = record(1), record(2)
    alice_token, bob_token = os.urandom(32), os.urandom(32)
    with SQLiteStore.open(path) as store:
        store.create_account("alice", alice, NOW)
        store.create_account("bob", bob, NOW)
        store.create_session(alice_token, "alice", NOW)
        store.create_session(bob_token, "bob", NOW)
        store.add_friendship("alice", "bob", NOW)
        store.add_message(
            ChatMessage(
                id=os.urandom(16),
                sender="bob",
                to="alice",
                text="waiting for alice",
                sent_at=datetime.datetime.fromtimestamp(NOW, datetime.UTC),
            )
        )
        store.commit()
        before = raw(path)
        assert all(trace in before for trace in traces(alice))  # (the test can see them)
        assert alice_token in before
        store.delete_account("alice", NOW)
        store.commit()
        after = raw(path)
        # Alice's record, token and undelivered message are gone; bob's stay.
        for trace in [*traces(alice), alice_token, b"waiting for alice"]:
            assert trace not in after, trace
        assert all(trace in after for trace in traces(bob))
        assert bob_token in after
        assert Path(f"{path}-wal").stat().st_size == 0  # (TRUNCATE: emptied)


def test_a_replaced_password_leaves_nothing_of_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    old, new = record(3), record(4)
    with SQLiteStore.open(path) as store:
        store.create_account("alice", old, NOW)
        store.commit()
        assert store.set_password("alice", new)
        store.commit()
        after = raw(path)
        for trace in traces(old):
            assert trace not in after, trace
        assert new.to_string().encode() in after


def test_a_busy_checkpoint_is_tried_again_after_the_next_commit(tmp_path: Path) -> None:
    """A reader that holds the WAL (another connection in a read transaction) stops
    the checkpoint from emptying it, at once (the loop never waits for it); the
    next commit after it lets go does."""
    path = tmp_path / "db.sqlite3"
    alice = record(5)
    with SQLiteStore.open(path) as store:
        store.create_account("alice", alice, NOW)
        store.create_account("bob", record(6), NOW)
        store.commit()
        reader = sqlite3.connect(path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM accounts").fetchone()
            store.delete_account("alice", NOW)
            started = time.monotonic()
            store.commit()  # the checkpoint is busy: nothing fails, nothing waits
            assert time.monotonic() - started < 1.0
        finally:
            reader.close()
        assert store.get_account("alice") is None
        store.create_account("carol", record(7), NOW)
        store.commit()
        after = raw(path)
        for trace in traces(alice):
            assert trace not in after, trace
