"""A security review of ``udpchat_proto.e2ee`` (issue 26 phase 1), one test per
finding: what a malicious server, member or device could make a device accept,
and what could make a device reuse a ratchet index or lose its state. A finding
still open is marked ``xfail(strict=True)``; a fixed one is a plain test.

The attackers are played white box where a real one would run its own client
(a member that keeps the session keys it is given, a device that shares what it
likes): the private methods they call are what such a client does on purpose."""

from __future__ import annotations

import math
from typing import Any

import attrs
import orjson
import pytest
import vodozemac
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import udpchat_proto.e2ee.state as state_module
from tests.e2ee_helpers import KeyServer, new_device_id
from udpchat_proto import LocalProtocolError
from udpchat_proto.e2ee import (
    CryptoState,
    Decrypted,
    DeviceSet,
    DeviceTrustError,
    Dropped,
    EncryptedMessage,
    KeyShare,
    KeyShareReceived,
    Outgoing,
    StateError,
    direct_conversation,
)
from udpchat_proto.e2ee.olm import b64decode, b64encode
from udpchat_proto.e2ee.payloads import KeyPayload, MessagePayload, PayloadError
from udpchat_proto.e2ee.records import device_keys_signed_bytes

KEY = bytes(range(32))
ROOM = "#general"
DM = direct_conversation("alice", "bob")


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def take(device: CryptoState, out: Outgoing) -> None:
    for share in out.key_shares:
        if share.recipient_device == device.device_id:
            assert isinstance(device.receive_key_share(share), KeyShareReceived)


@pytest.fixture
def server() -> KeyServer:
    return KeyServer()


# --- finding 1: a direct conversation's device set is whatever the server says ---


def test_a_direct_conversations_set_holding_a_third_users_device_is_refused(
    server: KeyServer,
) -> None:
    # A server (or a node) adds mallory's device, long known to alice (perhaps
    # verified: a room co-member), to alice and bob's direct conversation: no
    # device_added line would show, and mallory would read every message.
    alice, bob, mallory = (server.login(u) for u in ("alice", "bob", "mallory"))
    alice.plan_send(server.device_set(ROOM, {"alice", "mallory"}, 1), 0.0)  # known
    lying = server.device_set(DM, {"alice", "bob", "mallory"}, 1)
    with pytest.raises(DeviceTrustError, match="not in the conversation"):
        alice.plan_send(lying, 0.0)
    with pytest.raises(DeviceTrustError):
        alice.encrypt(lying, "for bob only", mid(1), 0.0, server.claim(()))
    assert bob.device_id != mallory.device_id


# --- finding 2: a share or message for a direct conversation from a third user --


def test_a_share_for_a_direct_conversation_from_a_third_user_is_dropped(
    server: KeyServer,
) -> None:
    # mallory's own client shares a session "of alice and bob's conversation" with
    # bob, and sends in it: a server relays both. Bob must not show mallory's text
    # in his conversation with alice.
    _alice, bob, mallory = (server.login(u) for u in ("alice", "bob", "mallory"))
    bob_ref = ("bob", bob.device_id)
    mallory.plan_send(DeviceSet(conversation=ROOM, version=1, devices=(bob.device_keys,)), 0.0)
    (claim,) = server.claim((bob_ref,))
    mallory._open_olm(bob_ref, claim)
    group = vodozemac.GroupSession()
    session_id = b64decode(group.session_id)
    share = mallory._share(bob_ref, DM, session_id, 0, group.session_key.to_base64())
    text = MessagePayload(message_id=mid(1), conversation=DM, text="it is alice, new phone")
    message = EncryptedMessage(
        conversation=DM,
        sender="mallory",
        sender_device=mallory.device_id,
        session_id=session_id,
        device_set_version=1,
        ciphertext=group.encrypt(text.to_bytes()).to_bytes(),
    )
    dropped = bob.receive_key_share(share)
    assert isinstance(dropped, Dropped) and dropped.reason == "wrong_conversation"
    assert isinstance(bob.decrypt(message, mid(1)), Dropped)


# --- finding 3: a replayed pre-key message wedges the Olm session ----------------


def test_a_replayed_pre_key_message_does_not_wedge_the_olm_session(
    server: KeyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The digests of shares taken are a window (4096); past it, a server replays
    # an old pre-key message built on alice's fallback key (which a claim may
    # always be given). It must not open a second copy of the session and make it
    # the one alice answers bob on: bob cannot open what she sends on it.
    monkeypatch.setattr(state_module, "SHARES_REMEMBERED", 1)  # (the window, passed)
    alice, bob = server.login("alice"), server.login("bob")
    server.one_time["alice", alice.device_id].clear()  # bob's claim gets the fallback key
    first = server.send(bob, server.device_set("#one", {"alice", "bob"}, 1), "1", mid(1), 0.0)
    take(alice, first)
    answer = server.send(alice, server.device_set("#two", {"alice", "bob"}, 1), "2", mid(2), 0.0)
    take(bob, answer)  # the session is confirmed both ways
    later = server.send(bob, server.device_set("#three", {"alice", "bob"}, 1), "3", mid(3), 0.0)
    take(alice, later)  # (pushes the first share's digest out of the window)

    replay = alice.receive_key_share(first.key_shares[0])
    assert isinstance(replay, Dropped | KeyShareReceived)
    after = server.send(alice, server.device_set("#four", {"alice", "bob"}, 1), "4", mid(4), 0.0)
    result = bob.receive_key_share(after.key_shares[0])
    assert isinstance(result, KeyShareReceived), result
    decrypted = bob.decrypt(after.message, mid(4))
    assert isinstance(decrypted, Decrypted) and decrypted.text == "4"


# --- finding 4: an inbound session's key leaves out the sender's user ------------


def test_a_device_id_stated_for_two_users_cannot_take_over_a_session(
    server: KeyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server states a device of mallory's with alice's device id; mallory (a
    # member, who kept the session key alice gave her) shares alice's session from
    # an earlier index to bob under that id. Bob must still read alice's messages
    # as alice's.
    alice, bob, mallory = (server.login(u) for u in ("alice", "bob", "mallory"))
    kept: list[KeyPayload] = []
    parse = KeyPayload.parse

    def keep(data: bytes) -> KeyPayload:
        kept.append(parse(data))
        return kept[-1]

    early = server.send(alice, server.device_set(ROOM, {"alice", "mallory"}, 1), "e", mid(1), 0.0)
    with monkeypatch.context() as patch:
        patch.setattr(KeyPayload, "parse", staticmethod(keep))
        take(mallory, early)
    (stolen,) = kept
    later = server.send(
        alice, server.device_set(ROOM, {"alice", "mallory", "bob"}, 2), "later", mid(2), 1.0
    )
    take(bob, later)

    twin = CryptoState.create("mallory", alice.device_id)
    server.top_up(twin)
    bob_ref = ("bob", bob.device_id)
    twin.plan_send(DeviceSet(conversation=ROOM, version=3, devices=(bob.device_keys,)), 1.0)
    (claim,) = server.claim((bob_ref,))
    twin._open_olm(bob_ref, claim)
    share = twin._share(bob_ref, ROOM, stolen.session_id, 0, stolen.session_key)
    assert isinstance(bob.receive_key_share(share), KeyShareReceived)

    result = bob.decrypt(later.message, mid(2))
    assert isinstance(result, Decrypted), result
    assert (result.sender, result.text) == ("alice", "later")


# --- finding 5: a time that is not a number bricks the saved state ---------------


@pytest.mark.parametrize("at", [math.nan, math.inf, -math.inf])
def test_a_time_that_is_not_finite_is_the_callers_mistake(server: KeyServer, at: float) -> None:
    alice, _bob = server.login("alice"), server.login("bob")
    devices = server.device_set(ROOM, {"alice", "bob"}, 1)
    with pytest.raises(LocalProtocolError):
        alice.plan_send(devices, at)
    with pytest.raises(LocalProtocolError):
        alice.encrypt(devices, "hi", mid(1), at, ())
    # (before: NaN was saved as null, and the state never loaded again)
    assert isinstance(CryptoState.from_bytes(alice.to_bytes(KEY), KEY), CryptoState)


# --- finding 6: a clock that was ahead keeps a session for ever -----------------


def test_a_session_made_under_a_clock_that_was_ahead_rotates_when_it_comes_back(
    server: KeyServer,
) -> None:
    alice, _bob = server.login("alice"), server.login("bob")
    devices = server.device_set(ROOM, {"alice", "bob"}, 1)
    year_2096 = 4.0e9
    server.send(alice, devices, "hi", mid(1), year_2096)
    now = 1.8e9
    assert alice.plan_send(devices, now).rotate


# --- finding 7: the saved state's JSON part was neither sealed nor authenticated -


def test_an_edited_state_does_not_load(server: KeyServer) -> None:
    # Pins, verified flags and the rotation's bookkeeping are plain JSON beside
    # the pickles: editing them needs no key.
    alice, _bob = server.login("alice"), server.login("bob")
    server.send(alice, server.device_set(ROOM, {"alice", "bob"}, 1), "hi", mid(1), 0.0)
    saved = alice.to_bytes(KEY)
    try:
        value = orjson.loads(saved)
    except orjson.JSONDecodeError:
        value = None
    if value is not None:
        for known in value["known"]:
            known["verified"] = True
        value["outbound"][0]["sent_to"] = []
        with pytest.raises(StateError):
            CryptoState.from_bytes(orjson.dumps(value), KEY)
    edited = bytearray(saved)
    edited[len(edited) // 2] ^= 1
    with pytest.raises(StateError):
        CryptoState.from_bytes(bytes(edited), KEY)
    assert b'"bob"' not in saved  # (nor does it name contacts in clear)
    assert b'"#general"' not in saved


# --- finding 8: a damaged state raises something else than StateError -----------


@pytest.mark.parametrize(
    ("part", "field", "value"),
    [("inbound", "sender_device", [1]), ("olm", "device", ["bob"]), ("inbound", "sender", 5)],
)
def test_a_damaged_state_raises_state_error(
    server: KeyServer, part: str, field: str, value: Any
) -> None:
    alice, bob = server.login("alice"), server.login("bob")
    out = server.send(alice, server.device_set(ROOM, {"alice", "bob"}, 1), "hi", mid(1), 0.0)
    take(bob, out)
    assert isinstance(bob.decrypt(out.message, mid(1)), Decrypted)
    owner = bob if part == "inbound" else alice
    state = orjson.loads(owner._to_json(KEY))  # (what a holder of the key could write)
    state[part][0][field] = value
    with pytest.raises(StateError):
        CryptoState._from_json(orjson.dumps(state), KEY)


# --- finding 9: a key payload's version may be ``true`` --------------------------


def test_a_key_payload_of_version_true_is_malformed() -> None:
    good = KeyPayload(
        sender="alice",
        sender_device=bytes(16),
        sender_ed25519=bytes(32),
        recipient="bob",
        recipient_device=bytes(16),
        recipient_ed25519=bytes(32),
        conversation=ROOM,
        session_id=bytes(32),
        first_index=0,
        session_key="x",
    )
    assert KeyPayload.parse(good.to_bytes()) == good
    value = orjson.loads(good.to_bytes())
    for version in (True, 1.0):
        with pytest.raises(PayloadError):
            KeyPayload.parse(orjson.dumps({**value, "v": version}))


# --- finding 11: a share nobody can open pinned its sender's record ------------


def test_a_share_that_does_not_open_pins_nothing(server: KeyServer) -> None:
    # A record is self-signed: mallory makes one naming bob's next device with her
    # keys, and sends it to alice with a ciphertext that opens nothing. Pinned
    # then, it made alice refuse bob's genuine record later (she could not send to
    # any conversation with him).
    alice, mallory = server.login("alice"), server.login("mallory")
    bob = CryptoState.create("bob", new_device_id())
    forged = attrs.evolve(
        mallory.device_keys, user="bob", device_id=bob.device_id, signature=bytes(64)
    )
    signed = mallory._account.sign(
        device_keys_signed_bytes("bob", bob.device_id, forged.curve25519, forged.ed25519)
    )
    forged = attrs.evolve(forged, signature=b64decode(signed.to_base64()))
    junk = KeyShare(
        sender_keys=forged,
        recipient="alice",
        recipient_device=alice.device_id,
        message_type=0,
        ciphertext=b"\x03" + bytes(200),
    )
    dropped = alice.receive_key_share(junk)
    assert isinstance(dropped, Dropped) and dropped.reason == "olm_failed"
    assert alice.known_device("bob", bob.device_id) is None
    server.top_up(bob)
    plan = alice.plan_send(server.device_set(ROOM, {"alice", "bob"}, 1), 0.0)
    assert plan.share_with == (("bob", bob.device_id),)


# --- finding 10: the saved state grows with every message read ----------------


def test_the_saved_state_does_not_grow_with_every_message_read(server: KeyServer) -> None:
    # Every save (one per send and per receive, under the profile's lock) rewrites
    # the whole state; 'seen' adds ~55 bytes per message read, for ever (224 KB
    # after 4,100 messages, 4 ms to save and 8 to load; linear beyond). The
    # plaintext already binds the message id, so 'seen' only catches a sender
    # that reused an index (a forked sender), and drops its message for it.
    alice, bob = server.login("alice"), server.login("bob")
    devices = server.device_set(ROOM, {"alice", "bob"}, 1)
    sizes = []
    for n in range(100):
        out = server.send(alice, devices, "a message", mid(n), 0.0)
        take(bob, out)
        assert isinstance(bob.decrypt(out.message, mid(n)), Decrypted)
        if n in (0, 99):
            sizes.append(len(bob.to_bytes(KEY)))
    assert sizes[1] - sizes[0] < 1024, sizes


# --- fuzzing what a member's genuine Olm and Megolm sessions can carry -----------

_SERVER = KeyServer()
_ALICE, _BOB = _SERVER.login("alice"), _SERVER.login("bob")
_FIRST = _SERVER.send(_ALICE, _SERVER.device_set(ROOM, {"alice", "bob"}, 1), "hi", mid(1), 0.0)
assert isinstance(_BOB.receive_key_share(_FIRST.key_shares[0]), KeyShareReceived)
_BASE: dict[str, object] = orjson.loads(
    KeyPayload(
        sender="alice",
        sender_device=_ALICE.device_id,
        sender_ed25519=_ALICE.device_keys.ed25519,
        recipient="bob",
        recipient_device=_BOB.device_id,
        recipient_ed25519=_BOB.device_keys.ed25519,
        conversation=ROOM,
        session_id=bytes(32),
        first_index=0,
        session_key=b64encode(bytes(229)),
    ).to_bytes()
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _olm_share(plaintext: bytes) -> KeyShare:
    message_type, ciphertext = _ALICE._olm["bob", _BOB.device_id][0].encrypt(plaintext).to_parts()
    return attrs.evolve(_FIRST.key_shares[0], message_type=message_type, ciphertext=ciphertext)


@settings(suppress_health_check=list(HealthCheck), deadline=None, max_examples=150)
@given(
    changes=st.dictionaries(st.sampled_from(sorted(_BASE)), _JSON, max_size=4),
    raw=st.none() | st.binary(max_size=200),
)
def test_any_payload_inside_a_genuine_olm_session_is_taken_or_dropped(
    changes: dict[str, object], raw: bytes | None
) -> None:
    plaintext = raw if raw is not None else orjson.dumps({**_BASE, **changes})
    result = _BOB.receive_key_share(_olm_share(plaintext))
    assert isinstance(result, Dropped | KeyShareReceived)
    if isinstance(result, KeyShareReceived):
        assert (result.sender, result.sender_device) == ("alice", _ALICE.device_id)


@settings(suppress_health_check=list(HealthCheck), deadline=None, max_examples=150)
@given(plaintext=st.binary(max_size=300), message_id=st.binary(max_size=20))
def test_any_plaintext_inside_a_genuine_megolm_session_is_decrypted_or_dropped(
    plaintext: bytes, message_id: bytes
) -> None:
    ciphertext = _ALICE._outbound[ROOM].session.encrypt(plaintext).to_bytes()
    result = _BOB.decrypt(attrs.evolve(_FIRST.message, ciphertext=ciphertext), message_id)
    assert isinstance(result, Dropped | Decrypted)
    if isinstance(result, Decrypted):
        assert result.message_id == message_id and result.conversation == ROOM
