"""The end-to-end encryption layer, part by part: device records and uploads, key
shares, group sessions and their rotation, the planner, decryption and its drops,
tampering, replays, and the state saved and loaded. No sockets, no clock: ``at``
is a number the test picks; vodozemac draws its own keys, so tests check
behaviour, never key bytes."""

from __future__ import annotations

import attrs
import cattrs
import pytest

from tests.e2ee_helpers import KeyServer, new_device_id
from udpchat_proto import LocalProtocolError, ValidationError
from udpchat_proto.e2ee import (
    CRYPTO_DROP_REASONS,
    MAX_MESSAGE_CIPHERTEXT,
    ONE_TIME_KEYS_TARGET,
    ROTATE_AFTER_MESSAGES,
    ROTATE_AFTER_SECONDS,
    CryptoState,
    Decrypted,
    DeviceKeys,
    DeviceSet,
    DeviceTrustError,
    Dropped,
    EncryptedMessage,
    KeyShare,
    KeyShareReceived,
    Outgoing,
    StateError,
    check_conversation,
    device_fingerprint,
    direct_conversation,
    normalize_fingerprint,
    verify_device_keys,
)

KEY = bytes(range(32))
ROOM = "#general"


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def deliver(out: Outgoing, *devices: CryptoState) -> None:
    """Hand each device its key shares, as its stream does."""
    for device in devices:
        for share in out.key_shares:
            if share.recipient_device == device.device_id:
                assert isinstance(device.receive_key_share(share), KeyShareReceived)


def read(device: CryptoState, out: Outgoing, message_id: bytes) -> str:
    result = device.decrypt(out.message, message_id)
    assert isinstance(result, Decrypted), result
    return result.text


@pytest.fixture
def server() -> KeyServer:
    return KeyServer()


# --- devices --------------------------------------------------------------------


def test_a_device_uploads_signed_keys_and_tops_them_up(server: KeyServer) -> None:
    alice = CryptoState.create("alice", new_device_id())
    upload = alice.keys_to_upload(published_one_time_keys=0)
    assert upload is not None
    assert upload.device_keys == alice.device_keys
    assert verify_device_keys(upload.device_keys)
    assert len(upload.one_time_keys) == ONE_TIME_KEYS_TARGET
    assert upload.fallback_key is not None and upload.fallback_key.fallback
    alice.mark_keys_published()
    # Full: nothing to send. Ten claimed: ten more, no new fallback key.
    assert alice.keys_to_upload(published_one_time_keys=ONE_TIME_KEYS_TARGET) is None
    again = alice.keys_to_upload(published_one_time_keys=ONE_TIME_KEYS_TARGET - 10)
    assert again is not None and len(again.one_time_keys) == 10 and again.fallback_key is None
    assert {k.key for k in again.one_time_keys}.isdisjoint(k.key for k in upload.one_time_keys)
    alice.mark_keys_published()
    # A claim took the fallback key: a new one.
    renewed = alice.keys_to_upload(published_one_time_keys=ONE_TIME_KEYS_TARGET, fallback_used=True)
    assert renewed is not None and renewed.fallback_key is not None
    assert renewed.fallback_key.key != upload.fallback_key.key


def test_a_forged_device_record_does_not_verify(server: KeyServer) -> None:
    keys = server.login("alice").device_keys
    other = server.login("mallory").device_keys
    assert not verify_device_keys(attrs.evolve(keys, user="mallory"))
    assert not verify_device_keys(attrs.evolve(keys, curve25519=other.curve25519))
    assert not verify_device_keys(attrs.evolve(keys, signature=other.signature))


def test_fingerprints_are_six_groups_of_five_digits(server: KeyServer) -> None:
    alice = server.login("alice")
    text = alice.fingerprint
    assert text == device_fingerprint(alice.device_keys.ed25519)
    groups = text.split(" ")
    assert len(groups) == 6 and all(len(g) == 5 and g.isdigit() for g in groups)
    assert normalize_fingerprint(text.replace(" ", "")) == text
    assert (
        normalize_fingerprint(" ".join(text.replace(" ", "")[i : i + 3] for i in range(0, 30, 3)))
        == text
    )
    assert normalize_fingerprint("not digits") == "not digits"
    assert server.login("alice").fingerprint != text


def test_verifying_a_device_compares_its_fingerprint(server: KeyServer) -> None:
    alice, bob = server.login("alice"), server.login("bob")
    devices = server.device_set(ROOM, {"alice", "bob"}, 1)
    alice.plan_send(devices, 0.0)
    known = alice.known_device("bob", bob.device_id)
    assert known is not None and not known.verified
    assert not alice.verify("bob", bob.device_id, "00000 00000 00000 00000 00000 00000")
    assert alice.verify("bob", bob.device_id, bob.fingerprint.replace(" ", ""))
    assert [d.verified for d in alice.known_devices("bob")] == [True]
    with pytest.raises(LocalProtocolError):
        alice.verify("carol", new_device_id(), bob.fingerprint)


# --- conversations --------------------------------------------------------------


def test_conversation_names() -> None:
    assert direct_conversation("bob", "alice") == "alice,bob" == direct_conversation("alice", "bob")
    check_conversation("#general")
    check_conversation("alice,bob")
    for bad in ("bob,alice", "alice,alice", "alice", "#", "a,b,c", 3):
        with pytest.raises(ValidationError):
            check_conversation(bad)
    with pytest.raises(ValidationError):
        direct_conversation("alice", "alice")


# --- sending and receiving ------------------------------------------------------


def test_every_device_of_every_member_reads_a_message(server: KeyServer) -> None:
    alice, alice2, bob, bob2 = (server.login(u) for u in ("alice", "alice", "bob", "bob"))
    conversation = direct_conversation("alice", "bob")
    devices = server.device_set(conversation, {"alice", "bob"}, 1)
    out = server.send(alice, devices, "Hi Bob!", mid(1), 0.0)
    # A share each for the three other devices (the sender's own other one too).
    assert {s.recipient_device for s in out.key_shares} == {
        alice2.device_id,
        bob.device_id,
        bob2.device_id,
    }
    deliver(out, alice2, bob, bob2)
    for device in (alice, alice2, bob, bob2):  # (the sender reads its own: history)
        result = device.decrypt(out.message, mid(1))
        assert isinstance(result, Decrypted)
        assert (result.text, result.sender, result.sender_device) == (
            "Hi Bob!",
            "alice",
            alice.device_id,
        )
    # The next message needs no share: the session is the same.
    second = server.send(alice, devices, "still there?", mid(2), 1.0)
    assert second.key_shares == () and second.message.session_id == out.message.session_id
    assert [read(d, second, mid(2)) for d in (bob, bob2)] == ["still there?"] * 2
    # And bob answers over his own session, on Olm sessions that already exist.
    answer = server.send(bob, devices, "Hi Alice", mid(3), 2.0)
    deliver(answer, alice, alice2, bob2)
    assert read(alice, answer, mid(3)) == "Hi Alice"


def test_the_text_rules_are_checked_before_sending(server: KeyServer) -> None:
    alice, _ = server.login("alice"), server.login("bob")
    devices = server.device_set(ROOM, {"alice", "bob"}, 1)
    for bad in ("", "a\x00b", "x" * 4097):
        with pytest.raises(ValidationError):
            alice.encrypt(devices, bad, mid(1), 0.0)


def test_the_longest_text_fits_the_servers_bound(server: KeyServer) -> None:
    conversation = direct_conversation("a" * 32, "b" * 32)
    sender, reader = server.login("a" * 32), server.login("b" * 32)
    devices = server.device_set(conversation, {"a" * 32, "b" * 32}, 1)
    text = "\U0001f600" * 1024  # 4096 bytes of UTF-8
    out = server.send(sender, devices, text, mid(1), 0.0)
    assert len(out.message.ciphertext) <= MAX_MESSAGE_CIPHERTEXT
    deliver(out, reader)
    assert read(reader, out, mid(1)) == text


def test_a_missing_claim_is_the_callers_mistake(server: KeyServer) -> None:
    alice, _ = server.login("alice"), server.login("bob")
    devices = server.device_set(ROOM, {"alice", "bob"}, 1)
    assert len(alice.plan_send(devices, 0.0).claims) == 1
    with pytest.raises(LocalProtocolError, match="no one-time key claimed"):
        alice.encrypt(devices, "hi", mid(1), 0.0)


def test_a_one_time_key_not_signed_by_its_device_is_refused(server: KeyServer) -> None:
    alice, bob, mallory = server.login("alice"), server.login("bob"), server.login("mallory")
    devices = server.device_set(ROOM, {"alice", "bob"}, 1)
    (claim,) = server.claim(alice.plan_send(devices, 0.0).claims)
    (forged,) = server.claim(((mallory.user, mallory.device_id),))
    bad = attrs.evolve(claim, one_time_key=forged.one_time_key)
    with pytest.raises(DeviceTrustError, match="not signed"):
        alice.encrypt(devices, "hi", mid(1), 0.0, [bad])
    assert bob.device_id == claim.device.device_id


def test_the_fallback_key_opens_sessions_when_one_time_keys_run_out(server: KeyServer) -> None:
    bob = server.login("bob")
    server.one_time[bob.user, bob.device_id].clear()
    senders = [server.login(f"user{i}") for i in range(3)]
    for i, sender in enumerate(senders):
        devices = server.device_set(ROOM, {sender.user, "bob"}, i)
        out = server.send(sender, devices, f"hello {i}", mid(i), 0.0)
        deliver(out, bob)
        assert read(bob, out, mid(i)) == f"hello {i}"
    assert (bob.user, bob.device_id) in server.fallback_used
    server.top_up(bob)  # a new fallback key, and one-time keys again
    assert (bob.user, bob.device_id) not in server.fallback_used
    assert len(server.one_time[bob.user, bob.device_id]) == ONE_TIME_KEYS_TARGET


# --- the device set: devices_changed, rotation ----------------------------------


def test_a_refused_send_is_planned_again_for_the_new_set(server: KeyServer) -> None:
    alice, bob = server.login("alice"), server.login("bob")
    first = server.device_set(ROOM, {"alice", "bob"}, 1)
    refused = alice.encrypt(
        first, "hi", mid(1), 0.0, server.claim(alice.plan_send(first, 0.0).claims)
    )
    # The server refuses it (devices_changed: bob2 came): nothing is marked delivered,
    # and the next plan shares with both bob devices, bob's again.
    bob2 = server.login("bob")
    second = server.device_set(ROOM, {"alice", "bob"}, 2)
    plan = alice.plan_send(second, 0.0)
    assert not plan.rotate
    assert set(plan.share_with) == {("bob", bob.device_id), ("bob", bob2.device_id)}
    assert plan.claims == (("bob", bob2.device_id),)  # (bob has an Olm session now)
    out = alice.encrypt(second, "hi", mid(1), 0.0, server.claim(plan.claims))
    alice.accepted(out)
    assert out.message.device_set_version == 2
    assert out.message.session_id == refused.message.session_id
    deliver(out, bob, bob2)
    assert [read(d, out, mid(1)) for d in (bob, bob2)] == ["hi", "hi"]
    assert alice.plan_send(second, 1.0).share_with == ()


def test_a_device_that_leaves_makes_the_session_rotate(server: KeyServer) -> None:
    alice, bob, carol = (server.login(u) for u in ("alice", "bob", "carol"))
    everyone = server.device_set(ROOM, {"alice", "bob", "carol"}, 1)
    before = server.send(alice, everyone, "all of us", mid(1), 0.0)
    deliver(before, bob, carol)
    server.logout(("carol", carol.device_id))
    without = server.device_set(ROOM, {"alice", "bob"}, 2)
    plan = alice.plan_send(without, 1.0)
    assert plan.rotate and plan.share_with == (("bob", bob.device_id),)
    after = server.send(alice, without, "just us", mid(2), 1.0)
    assert after.message.session_id != before.message.session_id
    deliver(after, bob)
    assert read(bob, after, mid(2)) == "just us"
    dropped = carol.decrypt(after.message, mid(2))
    assert isinstance(dropped, Dropped) and dropped.reason == "unknown_session"
    # What carol had stays readable (history), for her and for bob.
    assert read(carol, before, mid(1)) == read(bob, before, mid(1)) == "all of us"


def test_a_session_rotates_after_its_messages_or_its_days(server: KeyServer) -> None:
    alice, bob = server.login("alice"), server.login("bob")
    devices = server.device_set(ROOM, {"alice", "bob"}, 1)
    sessions = set()
    for n in range(ROTATE_AFTER_MESSAGES + 1):
        out = server.send(alice, devices, f"m{n}", mid(n), 0.0)
        deliver(out, bob)
        assert read(bob, out, mid(n)) == f"m{n}"
        sessions.add(out.message.session_id)
    assert len(sessions) == 2  # the 101st message is on a new session
    assert not alice.plan_send(devices, ROTATE_AFTER_SECONDS - 1).rotate
    assert alice.plan_send(devices, ROTATE_AFTER_SECONDS).rotate


def test_a_new_device_reads_from_when_it_joined(server: KeyServer) -> None:
    alice, bob = server.login("alice"), server.login("bob")
    early = server.send(alice, server.device_set(ROOM, {"alice", "bob"}, 1), "early", mid(1), 0.0)
    deliver(early, bob)
    bob2 = server.login("bob")
    later = server.send(alice, server.device_set(ROOM, {"alice", "bob"}, 2), "later", mid(2), 1.0)
    assert [s.recipient_device for s in later.key_shares] == [bob2.device_id]
    deliver(later, bob, bob2)
    assert read(bob2, later, mid(2)) == "later"
    dropped = bob2.decrypt(early.message, mid(1))
    assert isinstance(dropped, Dropped) and dropped.reason == "unknown_session"


def test_a_device_whose_keys_change_is_refused(server: KeyServer) -> None:
    alice, bob = server.login("alice"), server.login("bob")
    alice.plan_send(server.device_set(ROOM, {"alice", "bob"}, 1), 0.0)
    impostor = CryptoState.create("bob", bob.device_id)  # same id, other keys
    lying = DeviceSet(
        conversation=ROOM, version=2, devices=(alice.device_keys, impostor.device_keys)
    )
    with pytest.raises(DeviceTrustError, match="keys changed"):
        alice.plan_send(lying, 1.0)
    forged = attrs.evolve(server.login("carol").device_keys, user="dave")
    with pytest.raises(DeviceTrustError, match="signature"):
        alice.plan_send(DeviceSet(conversation=ROOM, version=3, devices=(forged,)), 1.0)


# --- tampering and replays ------------------------------------------------------


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


@pytest.mark.parametrize("where", [1, 40, -1])
def test_a_tampered_key_share_is_dropped(server: KeyServer, where: int) -> None:
    alice, bob = server.login("alice"), server.login("bob")
    out = server.send(alice, server.device_set(ROOM, {"alice", "bob"}, 1), "hi", mid(1), 0.0)
    (share,) = out.key_shares
    tampered = attrs.evolve(share, ciphertext=flip(share.ciphertext, where % len(share.ciphertext)))
    dropped = bob.receive_key_share(tampered)
    assert isinstance(dropped, Dropped) and dropped.reason in ("olm_failed", "malformed")
    assert isinstance(bob.decrypt(out.message, mid(1)), Dropped)
    # The genuine one still works afterwards: nothing was consumed.
    assert isinstance(bob.receive_key_share(share), KeyShareReceived)
    assert read(bob, out, mid(1)) == "hi"


def test_a_key_share_from_a_device_posing_as_another_is_dropped(server: KeyServer) -> None:
    alice, bob, mallory = server.login("alice"), server.login("bob"), server.login("mallory")
    devices = server.device_set(ROOM, {"alice", "bob", "mallory"}, 1)
    out = server.send(mallory, devices, "from alice, honest", mid(1), 0.0)
    share = next(s for s in out.key_shares if s.recipient == "bob")
    posing = attrs.evolve(share, sender_keys=alice.device_keys)
    dropped = bob.receive_key_share(posing)
    assert isinstance(dropped, Dropped) and dropped.reason == "olm_failed"
    for_another = attrs.evolve(share, recipient_device=new_device_id())
    assert bob.receive_key_share(for_another) == Dropped(
        reason="not_for_this_device", sender="mallory", sender_device=mallory.device_id
    )


def test_a_tampered_message_is_dropped(server: KeyServer) -> None:
    alice, bob = server.login("alice"), server.login("bob")
    out = server.send(alice, server.device_set(ROOM, {"alice", "bob"}, 1), "hi", mid(1), 0.0)
    deliver(out, bob)
    for where in (3, 20, len(out.message.ciphertext) - 1):
        tampered = attrs.evolve(out.message, ciphertext=flip(out.message.ciphertext, where))
        result = bob.decrypt(tampered, mid(1))
        assert isinstance(result, Dropped) and result.reason in ("bad_ciphertext", "malformed")
    garbage = attrs.evolve(out.message, ciphertext=b"\x03garbage")
    assert bob.decrypt(garbage, mid(1)).reason == "malformed"  # type: ignore[union-attr]
    assert read(bob, out, mid(1)) == "hi"


def test_a_message_moved_to_another_sender_or_conversation_is_dropped(server: KeyServer) -> None:
    alice, bob = server.login("alice"), server.login("bob")
    out = server.send(alice, server.device_set(ROOM, {"alice", "bob"}, 1), "hi", mid(1), 0.0)
    deliver(out, bob)
    moved = bob.decrypt(attrs.evolve(out.message, conversation="#other"), mid(1))
    assert isinstance(moved, Dropped) and moved.reason == "unknown_session"
    # (the sender's user is part of the session's key: another sender's is unknown)
    renamed = bob.decrypt(attrs.evolve(out.message, sender="carol"), mid(1))
    assert isinstance(renamed, Dropped) and renamed.reason == "unknown_session"


def test_replays_are_harmless(server: KeyServer) -> None:
    alice, bob = server.login("alice"), server.login("bob")
    devices = server.device_set(ROOM, {"alice", "bob"}, 1)
    out = server.send(alice, devices, "once", mid(1), 0.0)
    (share,) = out.key_shares
    first = bob.receive_key_share(share)
    assert isinstance(first, KeyShareReceived)
    again = bob.receive_key_share(share)
    assert isinstance(again, KeyShareReceived) and again == attrs.evolve(first, duplicate=True)
    # The same message twice decrypts twice (the caller de-duplicates by id) ...
    assert read(bob, out, mid(1)) == read(bob, out, mid(1)) == "once"
    # ... but not as another message: the id is inside the ciphertext.
    replayed = bob.decrypt(out.message, mid(9))
    assert isinstance(replayed, Dropped) and replayed.reason == "replayed"
    # A later share of the same session (a refused send shared again) changes nothing.
    second = server.send(alice, devices, "twice", mid(2), 1.0)
    assert read(bob, second, mid(2)) == "twice"


def test_a_message_that_decrypts_to_an_invalid_text_is_dropped(server: KeyServer) -> None:
    from udpchat_proto.e2ee.payloads import MessagePayload

    alice, bob = server.login("alice"), server.login("bob")
    devices = server.device_set(ROOM, {"alice", "bob"}, 1)
    out = server.send(alice, devices, "fine", mid(1), 0.0)
    deliver(out, bob)
    group = alice._outbound[ROOM]  # (a sender that skips the rules: white box)
    for n, plaintext in enumerate(
        [
            MessagePayload(message_id=mid(2), conversation=ROOM, text="a\x00b").to_bytes(),
            MessagePayload(message_id=mid(3), conversation=ROOM, text="").to_bytes(),
            MessagePayload(message_id=mid(4), conversation=ROOM, text="x").to_bytes()[:-1]
            + b"\xff",
        ],
        start=2,
    ):
        message = attrs.evolve(out.message, ciphertext=group.session.encrypt(plaintext).to_bytes())
        dropped = bob.decrypt(message, mid(n))
        assert isinstance(dropped, Dropped) and dropped.reason == "invalid_text", dropped
    assert set(CRYPTO_DROP_REASONS) >= {"invalid_text", "unknown_session", "replayed"}


# --- saving ---------------------------------------------------------------------


def test_the_state_survives_a_round_trip(server: KeyServer) -> None:
    alice, bob = server.login("alice"), server.login("bob")
    devices = server.device_set(ROOM, {"alice", "bob"}, 1)
    out = server.send(alice, devices, "before", mid(1), 0.0)
    deliver(out, bob)
    alice.verify("bob", bob.device_id, bob.fingerprint)
    alice = CryptoState.from_bytes(alice.to_bytes(KEY), KEY)
    bob = CryptoState.from_bytes(bob.to_bytes(KEY), KEY)
    assert (alice.user, alice.device_keys) == ("alice", server.devices["alice", alice.device_id])
    known = alice.known_device("bob", bob.device_id)
    assert known is not None and known.verified
    # Its sessions go on where they were: the same Megolm session, no share needed;
    # history decrypts; the same key share is still a duplicate.
    after = server.send(alice, devices, "after", mid(2), 1.0)
    assert after.key_shares == () and after.message.session_id == out.message.session_id
    assert read(bob, after, mid(2)) == "after"
    assert read(bob, out, mid(1)) == "before"
    assert bob.receive_key_share(out.key_shares[0]).duplicate  # type: ignore[union-attr]
    answer = server.send(bob, devices, "answer", mid(3), 2.0)
    deliver(answer, alice)
    assert read(alice, answer, mid(3)) == "answer"
    assert server.send(bob, devices, "answer", mid(4), 2.0).key_shares == ()
    # The replay check survives too.
    assert bob.decrypt(out.message, mid(7)).reason == "replayed"  # type: ignore[union-attr]


def test_a_state_needs_its_own_pickle_key(server: KeyServer) -> None:
    data = server.login("alice").to_bytes(KEY)
    with pytest.raises(StateError):
        CryptoState.from_bytes(data, bytes(32))
    with pytest.raises(StateError):
        CryptoState.from_bytes(b"{}", KEY)
    with pytest.raises(StateError):
        CryptoState.from_bytes(b"not json", KEY)
    with pytest.raises(LocalProtocolError):
        CryptoState.from_bytes(data, b"short")
    # Sealed whole: it names no one in clear, and an edited byte does not load.
    assert b"alice" not in data and KEY not in data
    with pytest.raises(StateError):
        CryptoState.from_bytes(data[:-1] + bytes([data[-1] ^ 1]), KEY)


# --- records --------------------------------------------------------------------


def test_records_check_their_fields_and_go_through_cattrs(server: KeyServer) -> None:
    alice, _ = server.login("alice"), server.login("bob")
    out = server.send(alice, server.device_set(ROOM, {"alice", "bob"}, 1), "hi", mid(1), 0.0)
    converter = cattrs.Converter()
    for record, cls in ((out.message, EncryptedMessage), (out.key_shares[0], KeyShare)):
        assert converter.structure(converter.unstructure(record), cls) == record
    with pytest.raises(ValidationError):
        attrs.evolve(out.message, ciphertext=b"x" * (MAX_MESSAGE_CIPHERTEXT + 1))
    with pytest.raises(ValidationError):
        attrs.evolve(out.message, session_id=b"short")
    with pytest.raises(ValidationError):
        attrs.evolve(alice.device_keys, device_id=b"short")
    with pytest.raises(ValidationError):
        DeviceSet(conversation=ROOM, version=1, devices=(alice.device_keys, alice.device_keys))
    with pytest.raises(ValidationError):
        DeviceSet(conversation=ROOM, version=-1, devices=())
    assert isinstance(alice.device_keys, DeviceKeys)
