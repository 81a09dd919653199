"""What one account may store (issue 23, item 6): a per-user quota on the bytes of
messages it has stored, refused ``quota_exceeded``, and retention on by default for
what every device has received, so that the quota frees up as messages age.

Before: one account could store 1.7 GB a day (5 messages of 4 KB a second, for
ever: retention was off by default), and nothing bounded it.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from tests.chat_helpers import GENEROUS, ChatWorld, StoreFactory, test_config
from tests.test_e2ee_wire import signed_up_devices
from udpchat_proto import ServerConfig
from udpchat_proto import messages as m
from udpchat_proto.chat.store import KEY_SHARE_OVERHEAD, sealed_size, stored_size
from udpchat_proto.errors import ErrorCode
from udpchat_server.cli import _config

DAY = 86400.0
TEXT = "x" * 1000
QUOTA = 3 * stored_size(TEXT)
"""Room for three messages of TEXT."""


def quota_world(stores: StoreFactory, **changes: object) -> ChatWorld:
    return ChatWorld(stores, config=test_config(max_stored_per_user=QUOTA, **changes))


def test_a_user_over_the_quota_is_refused_and_nothing_is_stored(stores: StoreFactory) -> None:
    world = quota_world(stores)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    for user in (alice, bob):
        user.ok(user.conn.join_room("#tea"))
    alice.send("bob", TEXT)
    alice.send("#tea", TEXT)  # a room message counts once, whatever its members
    first = alice.send("bob", TEXT)
    refused = alice.refused(
        alice.conn.send_message("bob", "one byte more"), ErrorCode.QUOTA_EXCEEDED
    )
    assert refused.message.startswith(
        f"your stored messages take {QUOTA / 1024:.1f} KiB of the {QUOTA / 1024:.1f} KiB"
    )
    assert "deleted 30 days after it was sent" in refused.message
    alice.refused(alice.conn.send_message("#tea", "x"), ErrorCode.QUOTA_EXCEEDED)
    # A message that was stored, sent again (its acceptance lost), is accepted again.
    again = alice.ok(
        alice.conn.send_message("bob", TEXT, message_id=first.message_id), m.MessageAccepted
    )
    assert again.sent_at == first.sent_at
    world.settle()
    assert bob.texts() == [TEXT, TEXT, TEXT]  # nothing refused was stored
    assert world.store.stored_bytes("alice") == QUOTA
    # Another user's quota is their own.
    bob.send("alice", "still fine")
    world.check_server_health()


def test_the_count_survives_a_restart(stores: StoreFactory) -> None:
    world = quota_world(stores)
    alice, bob = world.signed_up("alice", "bob")
    world.befriend(alice, bob)
    for _ in range(3):
        alice.send("bob", TEXT)
    world.restart_server()
    alice.connect()
    alice.resume()
    alice.refused(alice.conn.send_message("bob", "x"), ErrorCode.QUOTA_EXCEEDED)


def test_retention_frees_the_quota_of_what_every_device_has_only(stores: StoreFactory) -> None:
    # The default retention (30 days) with the quota.
    world = quota_world(stores, session_lifetime=90 * DAY, session_max_age=90 * DAY)
    alice, bob, carol = world.signed_up("alice", "bob", "carol")
    world.befriend(alice, bob)
    world.befriend(carol, bob)
    for _ in range(3):
        alice.send("bob", TEXT)
    world.run_until(lambda: len(bob.texts()) == 3, what="bob reads alice's")
    world.settle(1.0)  # (his acknowledgements written)
    bob.close()
    for _ in range(3):
        carol.send("bob", TEXT)  # bob has none of these
    alice.close()
    carol.close()
    world.net.run_for(31 * DAY, max_steps=10_000_000)
    # alice's were delivered 31 days ago: deleted, her quota is free again.
    assert world.store.stored_bytes("alice") == 0
    alice.connect()
    alice.resume()
    alice.send("bob", "room again")
    # carol's still wait for bob: kept (and still counted), and then delivered.
    assert world.store.stored_bytes("carol") == QUOTA
    carol.connect()
    carol.resume()
    carol.refused(carol.conn.send_message("bob", "x"), ErrorCode.QUOTA_EXCEEDED)
    bob.connect()
    bob.resume()
    world.run_until(lambda: len(bob.texts()) == 7, what="bob's backlog")
    assert bob.texts()[3:] == [TEXT, TEXT, TEXT, "room again"]


def test_retention_and_the_quota_are_on_by_default_and_0_turns_them_off() -> None:
    assert ServerConfig().retain_days == 30.0
    assert ServerConfig().max_stored_per_user == 64 * 1024 * 1024
    given = {"retain_days": None, "max_stored_per_user": None}
    assert _config(given, None) == ServerConfig()
    off = _config({"retain_days": 0.0, "max_stored_per_user": 0}, None)
    assert (off.retain_days, off.max_stored_per_user) == (None, None)
    # Refused with the operator's word for it when retention is off.
    world = ChatWorld(
        StoreFactory("memory", Path("unused")),
        config=test_config(max_stored_per_user=stored_size("x"), retain_days=None),
    )
    (alice,) = world.signed_up("alice")
    alice.ok(alice.conn.join_room("#tea"))
    alice.send("#tea", "x")
    refused = alice.refused(alice.conn.send_message("#tea", "x"), ErrorCode.QUOTA_EXCEEDED)
    assert refused.message.endswith("it keeps every message: ask its operator")


# --- end-to-end encrypted messages: their record and key shares count too -----------------

ROOM = "#many"
BOB_DEVICES = m.MAX_SHARES_PER_REQUEST + 5
"""More devices than one request carries shares for: a rotation stages some."""


@pytest.mark.parametrize("stage_messages", [False, True], ids=["at_once", "staged"])
def test_an_encrypted_messages_ciphertext_and_shares_staged_ones_included_count(
    stores: StoreFactory, stage_messages: bool
) -> None:
    """The record and every key share count, those staged ahead in ``share_keys``
    included; on a server that stages its batch's messages (PostgreSQL) too."""
    world = ChatWorld(
        stores,
        stage_messages=stage_messages,
        seed=26,
        config=test_config(max_sessions_per_user=BOB_DEVICES + 1, logins_per_user=GENEROUS),
    )
    alice = signed_up_devices(world, "alice", 1)[0]
    bob = signed_up_devices(world, "bob", BOB_DEVICES)
    for first in (alice, bob[0]):
        first.user.ok(first.user.conn.join_room(ROOM))
    message_id = b"\x26" * 16
    out = alice.encrypt(alice.device_set(ROOM), "to every device", message_id)
    assert len(out.key_shares) == BOB_DEVICES  # (a share for each of bob's devices)
    full = stored_size("") + sealed_size(out.message, out.key_shares)
    in_the_request = stored_size("") + sealed_size(
        out.message, out.key_shares[-m.MAX_SHARES_PER_REQUEST :]
    )
    # Each share counts its bytes and the sender keys it is stored with: far
    # more than the row alone (what the quota counted before).
    assert full > in_the_request > stored_size("") + 16 * KEY_SHARE_OVERHEAD

    def send(quota: int) -> m.Response:
        world.config = attrs.evolve(world.config, max_stored_per_user=quota)
        world.restart_server()
        alice.user.connect()
        alice.user.resume()
        request = alice.user.conn.send_encrypted(
            ROOM, out.message, out.key_shares, message_id=message_id
        )
        return alice.user.wait(request)

    # One byte short of the record and every share: refused, though what the
    # request itself carries fits (the staged shares count).
    refused = send(full - 1)
    assert isinstance(refused, m.ErrorResponse) and refused.code is ErrorCode.QUOTA_EXCEEDED
    assert world.store.get_message(message_id) is None
    assert world.store.stored_bytes("alice") == 0
    accepted = send(full)
    assert isinstance(accepted, m.MessageAccepted)
    assert world.store.stored_bytes("alice") == full
    for device in bob:  # (back after the restarts)
        device.user.connect()
        device.user.resume()
    world.settle()
    for device in bob:
        assert device.read() == ["to every device"]
    # Retention gives it all back once every device has it.
    world.settle(1.0)
    for device in bob:
        device.user.close()
    alice.user.close()
    world.net.run_for(31 * DAY, max_steps=10_000_000)
    assert world.store.stored_bytes("alice") == 0
    world.check_server_health()
