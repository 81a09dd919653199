"""An encrypted message's record and device set in its own row of ``messages``
(SQLite's schema 11, PostgreSQL's 6): the shape a send writes, the device-set
encoding, and the upgrade of a database that kept them in two tables beside
the row (``message_ciphertexts``, ``message_devices``)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import POSTGRES_URL, postgres_database, postgres_store
from tests.test_sql_layer import postgres_schema, released_sql
from tests.test_store import (
    ALICE_LAPTOP,
    ALICE_PHONE,
    BOB_PHONE,
    PASSWORD,
    device_keys,
    encrypted,
    message,
    share_for,
    with_device,
)
from udpchat_proto import Store
from udpchat_proto.chat import sealed_size, stored_size
from udpchat_proto.chat.messages import ChatMessage
from udpchat_proto.e2ee import DEVICE_ID_SIZE, DeviceKeys, KeyShare
from udpchat_server.migrate import migrate
from udpchat_server.stores import derive, records
from udpchat_server.stores import postgres as postgres_module
from udpchat_server.stores import sqlite as sqlite_module
from udpchat_server.stores.base import to_micros
from udpchat_server.stores.dialect import POSTGRES, SQLITE, Dialect
from udpchat_server.stores.postgres import PostgresStore
from udpchat_server.stores.sqlite import SQLiteStore

_GONE = {"message_ciphertexts", "message_devices"}

SqlStore = SQLiteStore | PostgresStore


def test_a_device_set_is_its_ids_sorted_once_each_end_to_end() -> None:
    a, b, c = (bytes([n]) * DEVICE_ID_SIZE for n in (3, 1, 2))
    packed = records.pack_devices([a, b, c, a])
    assert packed == b + c + a
    assert records.unpack_devices(packed) == {a, b, c}
    assert records.unpack_devices(memoryview(packed)) == {a, b, c}
    assert records.unpack_devices(None) == frozenset()
    assert records.pack_devices([]) == b""
    assert records.has_device(packed, c)
    assert not records.has_device(packed, b"\x09" * DEVICE_ID_SIZE)
    # A search that straddles two ids never names a device: none is of another size.
    with pytest.raises(ValueError, match="16 bytes"):
        records.pack_devices([a, b"short"])


@contextlib.contextmanager
def each_sql_store(tmp_path: Path) -> Iterator[list[SqlStore]]:
    with SQLiteStore.open(tmp_path / "db.sqlite3") as lite, postgres_store() as pg:
        yield [lite, pg]


def _row(store: SqlStore, message_id: bytes) -> tuple[Any, ...]:
    dialect = SQLITE if isinstance(store, SQLiteStore) else POSTGRES
    statement = "SELECT sealed_bytes, record, devices FROM messages WHERE id = ?"
    cursor = store.connection.execute(dialect.sql(statement), (message_id,))
    row = cursor.fetchone()
    assert row is not None
    return tuple(row)


def _tables(store: SqlStore) -> set[str]:
    if isinstance(store, SQLiteStore):
        return set(derive.sqlite_tables(store.connection))
    assert isinstance(store, PostgresStore)
    return set(derive.postgres_tables(store.connection))


@pytest.mark.parametrize("staged", [False, True])
def test_an_encrypted_send_writes_its_record_and_devices_into_its_row(
    tmp_path: Path, staged: bool
) -> None:
    # As add_encrypted_message writes it, and as a staged send does (its row
    # inserted with the batch's, then add_encrypted: one UPDATE of that row).
    with each_sql_store(tmp_path) as stores:
        for store in stores:
            alice = with_device(store, "alice", ALICE_PHONE)
            bob = with_device(store, "bob", BOB_PHONE)
            store.add_friendship("alice", "bob", 1.0)
            sealed = encrypted("alice", "bob", ALICE_PHONE)
            assert sealed.ciphertext is not None
            shares = [(bob.device_id, share_for(alice, bob, 1))]
            devices = [bob.device_id, alice.device_id]
            if staged:
                store.add_message(sealed, ALICE_PHONE)
                store.add_encrypted(sealed.id, sealed.ciphertext, devices, shares)
            else:
                store.add_encrypted_message(sealed, ALICE_PHONE, sealed.ciphertext, devices, shares)
            store.commit()
            size, record, packed = _row(store, sealed.id)
            assert size == sealed_size(sealed.ciphertext, [shares[0][1]])
            assert bytes(record) == records.pack(sealed.ciphertext)
            assert bytes(packed) == min(devices) + max(devices)
            assert not _tables(store) & _GONE
            assert store.pending_deliveries("bob", BOB_PHONE, 10) == [sealed]


def test_the_quota_takes_the_size_the_caller_counted(store: Store) -> None:
    # The server counts sealed_size for its quota check before it stores the
    # message: the store takes that figure rather than counting it again.
    alice = with_device(store, "alice", ALICE_PHONE)
    bob = with_device(store, "bob", BOB_PHONE)
    store.add_friendship("alice", "bob", 1.0)
    store.commit()
    used = store.stored_bytes("alice")
    sealed = encrypted("alice", "bob", ALICE_PHONE)
    assert sealed.ciphertext is not None
    store.add_encrypted_message(
        sealed,
        ALICE_PHONE,
        sealed.ciphertext,
        [alice.device_id, bob.device_id],
        [],
        sealed_bytes=12_345,
    )
    store.commit()
    assert store.stored_bytes("alice") == used + stored_size("") + 12_345


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        from udpchat_proto.chat.memory_store import MemoryStore

        yield MemoryStore()
    else:
        with SQLiteStore.open(tmp_path / "db.sqlite3") as sqlite_store:
            yield sqlite_store


# --- the upgrade of a database that kept them beside the row ---------------------------


def _fill_old(
    run: Callable[[str, tuple[Any, ...]], object],
) -> tuple[ChatMessage, ChatMessage, dict[str, DeviceKeys], KeyShare]:
    """Into a database at the schema before the move (with ``sealed_bytes``, which
    the releases before it derived): alice's phone and laptop, bob's phone, a text
    from bob to alice, then a message bob encrypted for alice's phone and his own
    (with a key share for the phone), kept as those releases kept it."""
    devices = {
        "alice phone": device_keys("alice", ALICE_PHONE),
        "alice laptop": device_keys("alice", ALICE_LAPTOP),
        "bob phone": device_keys("bob", BOB_PHONE),
    }
    for user in ("alice", "bob"):
        run(
            "INSERT INTO accounts (username, password, created_at) VALUES (?, ?, 1.0)",
            (user, PASSWORD.to_string()),
        )
    for token_hash, keys in zip(
        (ALICE_PHONE, ALICE_LAPTOP, BOB_PHONE), devices.values(), strict=True
    ):
        run(
            "INSERT INTO sessions (token_hash, username, created_at, last_used_at) "
            "VALUES (?, ?, 1.0, 1.0)",
            (token_hash, keys.user),
        )
        run(
            "INSERT INTO device_keys (token_hash, device_id, username, record, created_at) "
            "VALUES (?, ?, ?, ?, 1.0)",
            (token_hash, keys.device_id, keys.user, records.pack(keys)),
        )
    run(
        "INSERT INTO conversations (key, is_room, last_seq, created_at) "
        "VALUES ('alice bob', ?, 2, 1.0)",
        (False,),
    )
    for user in ("alice", "bob"):
        run(
            "INSERT INTO participants (conversation, username, floor_seq, joined_at) "
            "SELECT id, ?, 0, 1.0 FROM conversations",
            (user,),
        )
    plain = message("bob", "alice", "before")
    sealed = encrypted("bob", "alice", BOB_PHONE)
    assert sealed.ciphertext is not None
    share = share_for(devices["bob phone"], devices["alice phone"], 1)
    size = sealed_size(sealed.ciphertext, [share])
    for seq, sent in ((1, plain), (2, sealed)):
        run(
            "INSERT INTO messages (id, conversation, seq, sender, recipient, text, sent_at, "
            "origin, sealed_bytes) SELECT ?, id, ?, 'bob', 'alice', ?, ?, ?, ? FROM conversations",
            (sent.id, seq, sent.text, to_micros(sent.sent_at), BOB_PHONE, size if seq == 2 else 0),
        )
    run(
        "INSERT INTO message_ciphertexts (message_id, record) VALUES (?, ?)",
        (sealed.id, records.pack(sealed.ciphertext)),
    )
    for keys in (devices["bob phone"], devices["alice phone"]):
        run(
            "INSERT INTO message_devices (message_id, device_id) VALUES (?, ?)",
            (sealed.id, keys.device_id),
        )
    run(
        "INSERT INTO message_key_shares (message_id, device_id, number, record) "
        "VALUES (?, ?, 0, ?)",
        (sealed.id, devices["alice phone"].device_id, records.pack(share)),
    )
    run(
        "UPDATE accounts SET stored_bytes = ? WHERE username = 'bob'",
        (2 * stored_size("") + len(plain.text.encode()) + size,),
    )
    return plain, sealed, devices, share


def _read_as_before(
    store: SqlStore,
    plain: ChatMessage,
    sealed: ChatMessage,
    devices: dict[str, DeviceKeys],
    share: KeyShare,
) -> None:
    """What each device reads of the upgraded database: what it read before."""
    phone, laptop = devices["alice phone"], devices["alice laptop"]
    assert not _tables(store) & _GONE
    assert store.pending_deliveries("alice", ALICE_PHONE, 10) == [plain, sealed]
    assert store.pending_deliveries("alice", ALICE_LAPTOP, 10) == [plain]
    assert store.pending_deliveries_many(
        [("alice", ALICE_PHONE, 10), ("alice", ALICE_LAPTOP, 10)]
    ) == [[plain, sealed], [plain]]
    assert store.stored_for_device(phone.device_id, [plain.id, sealed.id]) == {sealed.id}
    assert store.stored_for_device(laptop.device_id, [plain.id, sealed.id]) == set()
    assert store.history("alice", "bob", 10) == [plain, sealed]
    stored = store.get_message(sealed.id)
    assert stored is not None and stored.message == sealed
    assert store.key_shares_for(sealed.id, phone.device_id) == [share]
    # The device set came over whole, and the quota's counter is unchanged.
    assert bytes(_row(store, sealed.id)[2]) == records.pack_devices(
        [phone.device_id, devices["bob phone"].device_id]
    )
    assert store.stored_bytes("bob") == 2 * stored_size("") + len(plain.text) + _row_size(
        sealed, share
    )
    # Deleting them (with their recipient's account) gives back what they counted,
    # row and record together.
    store.delete_account("alice", 100.0)
    store.commit()
    assert store.get_message(sealed.id) is None
    assert store.stored_bytes("bob") == 0


def _row_size(sealed: ChatMessage, share: KeyShare) -> int:
    assert sealed.ciphertext is not None
    return sealed_size(sealed.ciphertext, [share])


def _runner(db: Any, dialect: Dialect) -> Callable[[str, tuple[Any, ...]], object]:
    return lambda statement, params: db.execute(dialect.sql(statement), params)


def test_sqlite_version_11_moves_each_record_and_device_set_into_its_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v10.sqlite3"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as old:
        for statement in released_sql(sqlite_module.MIGRATIONS[:10]):
            old.execute(statement)
        old.execute("ALTER TABLE messages ADD COLUMN sealed_bytes INTEGER NOT NULL DEFAULT 0")
        old.execute("PRAGMA user_version = 10")
        old.execute("PRAGMA foreign_keys = ON")
        filled = _fill_old(_runner(old, SQLITE))
    with SQLiteStore.open(path) as store:
        assert store.connection.execute("PRAGMA user_version").fetchone() == (11,)
        _read_as_before(store, *filled)


def test_postgres_version_6_moves_each_record_and_device_set_into_its_row() -> None:
    with postgres_schema() as (db, namespace):
        db.execute(f'SET search_path TO "{namespace}"')
        for statement in released_sql(postgres_module.MIGRATIONS[:5], POSTGRES):
            db.execute(statement)
        db.execute("ALTER TABLE messages ADD COLUMN sealed_bytes BIGINT NOT NULL DEFAULT 0")
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (5)")
        filled = _fill_old(_runner(db, POSTGRES))
        with PostgresStore.open(POSTGRES_URL, schema=namespace) as store:
            version = store.connection.execute("SELECT version FROM schema_version").fetchone()
            assert version == (6,)
            _read_as_before(store, *filled)


def test_the_move_from_sqlite_keeps_each_record_and_device_set(tmp_path: Path) -> None:
    # udpchat-server migrate copies the declared columns: the record and the
    # device set come over in the row, and each device reads what it read.
    source = tmp_path / "single.sqlite3"
    with SQLiteStore.open(source) as single:
        alice = with_device(single, "alice", ALICE_PHONE)
        with_device(single, "alice", ALICE_LAPTOP)
        bob = with_device(single, "bob", BOB_PHONE)
        single.add_friendship("alice", "bob", 1.0)
        sealed = encrypted("bob", "alice", BOB_PHONE)
        assert sealed.ciphertext is not None
        share = share_for(bob, alice, 1)
        single.add_encrypted_message(
            sealed,
            BOB_PHONE,
            sealed.ciphertext,
            [alice.device_id, bob.device_id],
            [(alice.device_id, share)],
        )
        single.commit()
    with postgres_database() as url:
        migrate(source, url)
        with PostgresStore.open(url) as moved:
            assert moved.pending_deliveries("alice", ALICE_PHONE, 10) == [sealed]
            assert moved.pending_deliveries("alice", ALICE_LAPTOP, 10) == []
            assert moved.stored_for_device(alice.device_id, [sealed.id]) == {sealed.id}
            assert moved.key_shares_for(sealed.id, alice.device_id) == [share]
