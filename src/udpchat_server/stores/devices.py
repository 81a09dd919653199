"""End-to-end encryption: the devices' keys, an encrypted message's record and
devices (in its row of ``messages``) and key shares, and the Store methods over
them.

Written once for SQLite and PostgreSQL (see :mod:`.primitives`). A new column goes
at the end of its table here, beside the statement that writes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from udpchat_proto import StoredMessage
from udpchat_proto import messages as m
from udpchat_proto.e2ee import ClaimedKey, DeviceKeys, EncryptedMessage, KeyShare, OneTimeKey

from .primitives import SqlPrimitives
from .records import has_device, pack, pack_devices, sealed_size_of, unpack, unpack_device
from .schema import Column, Index, Kind, Table

__all__ = ["TABLES", "DevicesSQL"]

_TEXT, _INT, _TIME, _BYTES, _BOOL, _ID = Kind
_SESSION_CASCADE: Final = "sessions (token_hash) ON DELETE CASCADE"
_MESSAGE_CASCADE: Final = "messages (id) ON DELETE CASCADE"

TABLES: Final = (
    # End-to-end encryption. A device is a login session with keys: its rows go
    # with the session (every way one ends), a message's with the message. The
    # records are the devices' own (udpchat_server.stores.records: JSON, hex).
    Table(
        "device_keys",
        (
            Column("token_hash", _BYTES, key=True, references=_SESSION_CASCADE),
            Column("device_id", _BYTES, unique=True),  # the session's id
            Column("username", _TEXT),
            Column("record", _BYTES),  # DeviceKeys, self-signed
            Column("created_at", _TIME),
            Column("fallback", _BYTES, null=True),  # a OneTimeKey (fallback)
            Column("fallback_used", _BOOL, default=0),  # a claim took it
        ),
        indexes=(Index("device_keys_by_user", ("username", "created_at")),),
    ),
    # Claimed once: a claim deletes the row it hands out.
    Table(
        "one_time_keys",
        (
            Column("device_id", _BYTES, references="device_keys (device_id) ON DELETE CASCADE"),
            Column("key_id", _TEXT),
            Column("record", _BYTES),  # a OneTimeKey
        ),
        key=("device_id", "key_id"),
    ),
    # The key shares sent with a message, delivered with it to their devices: in
    # the device's stream at the message's place (the same cursor).
    Table(
        "message_key_shares",
        (
            Column("message_id", _BYTES, references=_MESSAGE_CASCADE),
            Column("device_id", _BYTES),
            Column("number", _INT),  # the order sent
            Column("record", _BYTES),  # a KeyShare
        ),
        key=("message_id", "device_id", "number"),
    ),
)
"""End-to-end encryption: devices' keys, one-time keys, and the key shares an
encrypted message stores beside its row (its record and its devices are in the
row: :mod:`.messages`)."""


class DevicesSQL(SqlPrimitives):
    """The Store methods over devices' keys and encrypted messages' records."""

    # A device's rows go with its session (ON DELETE CASCADE: every way a session
    # ends), a message's with the message.

    def set_device_keys(self, token_hash: bytes, keys: DeviceKeys, now: float) -> bool:
        if self.get_session(token_hash) is None:
            return False
        return bool(
            self._execute(
                "INSERT INTO device_keys (token_hash, device_id, username, record, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (token_hash, keys.device_id, keys.user, pack(keys), now),
            ).rowcount
        )

    def session_device(self, token_hash: bytes) -> DeviceKeys | None:
        row = self._select(
            "SELECT record FROM device_keys WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return None if row is None else unpack_device(row[0])

    def devices_of(self, usernames: Sequence[str]) -> list[tuple[DeviceKeys, float]]:
        if not usernames:
            return []
        rows = self._select_in(
            "SELECT record, created_at, username, device_id FROM device_keys WHERE username {in}",
            sorted(set(usernames)),
            {},
        )
        found = [(unpack_device(row[0]), row[1]) for row in rows]
        return sorted(found, key=lambda item: (item[0].user, item[1], item[0].device_id))

    def add_one_time_keys(self, device_id: bytes, keys: Sequence[OneTimeKey]) -> None:
        if not self._exists("SELECT 1 FROM device_keys WHERE device_id = ?", device_id):
            return
        one_time = [key for key in keys if not key.fallback]
        if one_time:
            self._executemany(
                "INSERT INTO one_time_keys (device_id, key_id, record) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(device_id, key.key_id, pack(key)) for key in one_time],
            )
        for key in keys:
            if key.fallback:
                self._execute(
                    "UPDATE device_keys SET fallback = ?, fallback_used = ? WHERE device_id = ?",
                    (pack(key), False, device_id),
                )

    def key_counts(self, device_id: bytes) -> tuple[int, bool]:
        row = self._select(
            "SELECT (SELECT COUNT(*) FROM one_time_keys AS o WHERE o.device_id = d.device_id), "
            "d.fallback_used FROM device_keys AS d WHERE d.device_id = ?",
            (device_id,),
        ).fetchone()
        return (0, False) if row is None else (row[0], bool(row[1]))

    def claim_key(self, device_id: bytes, *, one_time: bool = True) -> ClaimedKey | None:
        device = self._select(
            "SELECT record, fallback FROM device_keys WHERE device_id = ?", (device_id,)
        ).fetchone()
        if device is None:
            return None
        # One statement takes the key: a concurrent claim (another node) that
        # picked the same one deletes nothing, and gets the fallback key instead.
        taken = (
            self._execute(
                "DELETE FROM one_time_keys WHERE device_id = ? AND key_id = "
                "(SELECT key_id FROM one_time_keys WHERE device_id = ? ORDER BY key_id LIMIT 1) "
                "RETURNING record",
                (device_id, device_id),
            ).fetchone()
            if one_time
            else None
        )
        if taken is not None:
            key = unpack(OneTimeKey, taken[0])
        elif device[1] is not None:
            self._execute(
                "UPDATE device_keys SET fallback_used = ? WHERE device_id = ?", (True, device_id)
            )
            key = unpack(OneTimeKey, device[1])
        else:
            return None
        return ClaimedKey(device=unpack(DeviceKeys, device[0]), one_time_key=key)

    def add_encrypted(
        self,
        message_id: bytes,
        ciphertext: EncryptedMessage,
        devices: Sequence[bytes],
        key_shares: Sequence[tuple[bytes, KeyShare]],
        *,
        sealed_bytes: int | None = None,
    ) -> None:
        # The record and the device set go into the message's own row, one UPDATE
        # (PostgreSQL's staged sends: their rows are inserted with the batch's);
        # what is stored beside or in it counts against the sender's quota, in
        # this transaction, and goes back with the row (statements.STORED_SIZE).
        size = sealed_size_of(ciphertext, key_shares, sealed_bytes)
        self._execute(
            "UPDATE messages SET sealed_bytes = ?, record = ?, devices = ? WHERE id = ?",
            (size, pack(ciphertext), pack_devices(devices), message_id),
        )
        self._charge(ciphertext.sender, size)
        self._add_key_shares(message_id, key_shares)

    def _add_key_shares(
        self, message_id: bytes, key_shares: Sequence[tuple[bytes, KeyShare]]
    ) -> None:
        if key_shares:  # (most messages carry none: their session was shared before)
            self._executemany(
                "INSERT INTO message_key_shares (message_id, device_id, number, record) "
                "VALUES (?, ?, ?, ?)",
                [
                    (message_id, device_id, number, pack(share))
                    for number, (device_id, share) in enumerate(key_shares)
                ],
            )

    def add_encrypted_message(
        self,
        message: m.ChatMessage,
        origin: bytes | None,
        ciphertext: EncryptedMessage,
        devices: Sequence[bytes],
        key_shares: Sequence[tuple[bytes, KeyShare]],
        *,
        sealed_bytes: int | None = None,
    ) -> StoredMessage:
        """Both writes in an atomic block (SQLite does it its own way)."""
        with self.atomic():
            stored = self.add_message(message, origin)
            self.add_encrypted(
                message.id, ciphertext, devices, key_shares, sealed_bytes=sealed_bytes
            )
        return stored

    def key_shares_for(self, message_id: bytes, device_id: bytes) -> list[KeyShare]:
        rows = self._select(
            "SELECT record FROM message_key_shares WHERE message_id = ? AND device_id = ? "
            "ORDER BY number",
            (message_id, device_id),
        ).fetchall()
        return [unpack(KeyShare, row[0]) for row in rows]

    def stored_for_device(self, device_id: bytes, message_ids: Sequence[bytes]) -> set[bytes]:
        if not message_ids:
            return set()
        rows = self._select_in(
            "SELECT id, devices FROM messages WHERE devices IS NOT NULL AND id {in}",
            list(message_ids),
            {},
        )
        return {bytes(row[0]) for row in rows if has_device(row[1], device_id)}
