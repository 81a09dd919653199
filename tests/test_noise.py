"""Tests of the Noise NX handshake: published vectors, tampering, misuse, fuzzing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from udpchat_proto.errors import DecodeError, LocalProtocolError
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport import handshake
from udpchat_proto.transport.handshake import (
    DH_LEN,
    MAX_NONCE,
    PROTOCOL_NAME,
    TAG_LEN,
    CipherState,
    HandshakeState,
    public_key,
)

Vector = dict[str, Any]

DEFAULT_VECTORS = Path(__file__).parent / "vectors" / "noise_cacophony_nx.json"


def _load_vectors() -> list[Any]:
    """Every vector of our protocol in the file (``$UDPCHAT_NOISE_VECTORS`` if set)."""
    path = Path(os.environ.get("UDPCHAT_NOISE_VECTORS") or DEFAULT_VECTORS)
    document = json.loads(path.read_text())
    return [
        pytest.param(vector, id=f"{path.stem}-{index}")
        for index, vector in enumerate(document["vectors"])
        if vector["protocol_name"] == PROTOCOL_NAME.decode()
    ]


VECTORS = _load_vectors()
# The bundled file holds one vector (a deliberate fixture below, not a vector loop).
BUNDLED: Vector = json.loads(DEFAULT_VECTORS.read_text())["vectors"][0]


def _hex(vector: Vector, field: str) -> bytes:
    return bytes.fromhex(vector.get(field, ""))


def _pair(vector: Vector) -> tuple[HandshakeState, HandshakeState]:
    """An initiator and a responder set up from a vector, with its fixed ephemerals."""
    random = SeededRandomSource("unused: the vector fixes every ephemeral")
    initiator = HandshakeState.initiator(
        random=random,
        prologue=_hex(vector, "init_prologue"),
        ephemeral_private=_hex(vector, "init_ephemeral"),
    )
    responder = HandshakeState.responder(
        static_private=_hex(vector, "resp_static"),
        random=random,
        prologue=_hex(vector, "resp_prologue"),
        ephemeral_private=_hex(vector, "resp_ephemeral"),
    )
    return initiator, responder


def _messages(vector: Vector) -> list[tuple[bytes, bytes]]:
    return [
        (bytes.fromhex(m["payload"]), bytes.fromhex(m["ciphertext"])) for m in vector["messages"]
    ]


def _handshake(vector: Vector) -> tuple[HandshakeState, HandshakeState]:
    initiator, responder = _pair(vector)
    (payload1, _), (payload2, _) = _messages(vector)[:2]
    responder.read_message(initiator.write_message(payload1))
    initiator.read_message(responder.write_message(payload2))
    return initiator, responder


def _transport_directions(
    initiator: HandshakeState, responder: HandshakeState
) -> Iterator[tuple[CipherState, CipherState]]:
    """(sender, receiver) cipher states, alternating from initiator -> responder, forever."""
    init_send, init_receive = initiator.split()  # Split(): c1 is initiator -> responder
    resp_receive, resp_send = responder.split()
    while True:
        yield init_send, resp_receive
        yield resp_send, init_receive


def _flips(data: bytes) -> list[bytes]:
    """``data`` with each single byte changed in turn."""
    return [data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :] for i in range(len(data))]


def _random_pair(
    seed: int = 0, static_private: bytes | None = None
) -> tuple[HandshakeState, HandshakeState]:
    random = SeededRandomSource(seed)
    static = static_private if static_private is not None else random.token_bytes(DH_LEN)
    return (
        HandshakeState.initiator(random=random),
        HandshakeState.responder(static_private=static, random=random),
    )


# --- published vectors ------------------------------------------------------------------


def replay_vector(vector: Vector) -> int:
    """Replay one cacophony-format vector against our handshake; return how many
    transport messages were checked. ``handshake_hash`` is optional in that format:
    it is checked where present, and everything else is replayed always."""
    initiator, responder = _pair(vector)
    messages = _messages(vector)
    (payload1, wire1), (payload2, wire2) = messages[:2]

    # Handshake: each side writes exactly the published bytes; the other reads the payload.
    assert initiator.write_message(payload1) == wire1
    assert responder.read_message(wire1) == payload1
    assert not initiator.is_complete and not responder.is_complete
    assert responder.write_message(payload2) == wire2
    assert initiator.read_message(wire2) == payload2
    assert initiator.is_complete and responder.is_complete

    if "handshake_hash" in vector:
        expected_hash = bytes.fromhex(vector["handshake_hash"])
        assert initiator.handshake_hash == expected_hash
        assert responder.handshake_hash == expected_hash
    assert initiator.remote_static_public == public_key(_hex(vector, "resp_static"))
    assert responder.remote_static_public is None

    # Transport: Split() states, empty ad, directions alternating from the initiator.
    checked = 0
    for (payload, wire), (sender, receiver) in zip(
        messages[2:], _transport_directions(initiator, responder), strict=False
    ):
        assert sender.encrypt_with_ad(b"", payload) == wire
        assert receiver.decrypt_with_ad(b"", wire) == payload
        checked += 1
    return checked


@pytest.mark.parametrize("vector", VECTORS)
def test_vector_replays_byte_for_byte(vector: Vector) -> None:
    assert replay_vector(vector) == len(vector["messages"]) - 2


def test_a_vector_without_handshake_hash_still_replays_its_transport_messages() -> None:
    without = {k: v for k, v in BUNDLED.items() if k != "handshake_hash"}
    assert replay_vector(without) == len(BUNDLED["messages"]) - 2 > 0
    # ... really replays them: a wrong transport ciphertext still fails.
    last = dict(without["messages"][-1])
    last["ciphertext"] = last["ciphertext"][:-2] + (
        "00" if last["ciphertext"][-2:] != "00" else "01"
    )
    damaged = dict(without, messages=[*without["messages"][:-1], last])
    with pytest.raises(AssertionError):
        replay_vector(damaged)
    # ... and a wrong hash, where present, fails too.
    with pytest.raises(AssertionError):
        replay_vector(dict(BUNDLED, handshake_hash="00" * 32))


def test_bundled_vectors_are_replayed() -> None:
    document = json.loads(DEFAULT_VECTORS.read_text())
    assert "cacophony" in document["source"]
    assert [v["protocol_name"] for v in document["vectors"]] == [PROTOCOL_NAME.decode()]
    assert len(BUNDLED["messages"]) > 2  # handshake and transport messages


def test_vectors_from_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = dict(BUNDLED, protocol_name="Noise_NX_25519_ChaChaPoly_BLAKE2s")
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps({"source": "test", "vectors": [other, BUNDLED, BUNDLED]}))
    monkeypatch.setenv("UDPCHAT_NOISE_VECTORS", str(path))
    params = _load_vectors()
    assert [p.id for p in params] == ["mixed-1", "mixed-2"]  # the BLAKE2s one is skipped


# --- tampering -------------------------------------------------------------------------


def test_flipped_message_1_makes_message_2_fail() -> None:
    # Message 1 (-> e) is not authenticated by itself: a change to it changes the
    # responder's handshake hash, so the initiator rejects the reply.
    (payload1, wire1), (payload2, _) = _messages(BUNDLED)[:2]
    for tampered in _flips(wire1):
        initiator, responder = _pair(BUNDLED)
        assert initiator.write_message(payload1) == wire1
        try:
            responder.read_message(tampered)
        except DecodeError:
            continue  # a flipped ephemeral that happens to be unusable
        reply = responder.write_message(payload2)
        with pytest.raises(DecodeError) as info:
            initiator.read_message(reply)
        assert info.value.reason == "handshake_failed"
        assert not initiator.is_complete


def test_flipped_message_2_is_rejected_and_the_genuine_one_still_works() -> None:
    (payload1, wire1), (payload2, wire2) = _messages(BUNDLED)[:2]
    initiator, _ = _pair(BUNDLED)
    assert initiator.write_message(payload1) == wire1
    for tampered in [*_flips(wire2), wire2[:-1], wire2 + b"\x00", wire2[:DH_LEN], b""]:
        with pytest.raises(DecodeError) as info:
            initiator.read_message(tampered)
        assert info.value.reason == "handshake_failed"
        assert not initiator.is_complete
        assert initiator.remote_static_public is None
    # read_message is all or nothing: the failures left no trace.
    assert initiator.read_message(wire2) == payload2
    assert initiator.handshake_hash == bytes.fromhex(BUNDLED["handshake_hash"])


def test_flipped_transport_messages_are_rejected() -> None:
    initiator, responder = _handshake(BUNDLED)
    for (payload, wire), (sender, receiver) in zip(
        _messages(BUNDLED)[2:], _transport_directions(initiator, responder), strict=False
    ):
        assert sender.encrypt_with_ad(b"", payload) == wire
        nonce = receiver.n
        for tampered in [*_flips(wire), wire[:-1], wire[: TAG_LEN - 1]]:
            with pytest.raises(DecodeError) as info:
                receiver.decrypt_with_ad(b"", tampered)
            assert info.value.reason == "decrypt_failed"
            assert receiver.n == nonce  # n moves only on success
        with pytest.raises(DecodeError):
            receiver.decrypt_with_ad(b"wrong ad", wire)
        assert receiver.decrypt_with_ad(b"", wire) == payload
        assert receiver.n == nonce + 1


# Low-order X25519 points (libsodium's list), including non-canonical encodings.
LOW_ORDER_POINTS = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ec" + "ff" * 30 + "7f"),
    bytes.fromhex("ed" + "ff" * 30 + "7f"),
    bytes.fromhex("ee" + "ff" * 30 + "7f"),
    bytes(31) + b"\x80",
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_low_order_ephemeral_is_rejected_by_both_sides(point: bytes) -> None:
    initiator, responder = _random_pair()
    with pytest.raises(DecodeError) as info:
        responder.read_message(point + b"payload")
    assert info.value.reason == "handshake_failed"

    initiator.write_message()
    with pytest.raises(DecodeError) as info:
        initiator.read_message(point + bytes(DH_LEN + 2 * TAG_LEN))
    assert info.value.reason == "handshake_failed"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), responder_side=st.booleans())
def test_read_message_on_arbitrary_bytes_raises_only_decode_error(
    data: bytes, responder_side: bool
) -> None:
    initiator, responder = _random_pair()
    if not responder_side:
        initiator.write_message(b"hello")
    reader = responder if responder_side else initiator
    try:
        payload = reader.read_message(data)
    except DecodeError as exc:
        assert exc.reason == "handshake_failed"
        assert not reader.is_complete
    else:
        # Only the unauthenticated first message can be accepted from random bytes.
        assert responder_side
        assert payload == data[DH_LEN:]


@settings(max_examples=100, deadline=None)
@given(payload1=st.binary(max_size=300), payload2=st.binary(max_size=300), seed=st.integers())
def test_any_payloads_round_trip(payload1: bytes, payload2: bytes, seed: int) -> None:
    initiator, responder = _random_pair(seed)
    assert responder.read_message(initiator.write_message(payload1)) == payload1
    message2 = responder.write_message(payload2)
    assert len(message2) == DH_LEN + (DH_LEN + TAG_LEN) + len(payload2) + TAG_LEN
    assert initiator.read_message(message2) == payload2
    assert initiator.handshake_hash == responder.handshake_hash


# --- a live handshake ------------------------------------------------------------------


def test_handshake_with_random_keys() -> None:
    static = SeededRandomSource("server").token_bytes(DH_LEN)
    initiator, responder = _random_pair(7, static_private=static)
    message1 = initiator.write_message(b"hi")
    assert len(message1) == DH_LEN + 2
    assert responder.read_message(message1) == b"hi"
    message2 = responder.write_message(b"secret payload")
    assert b"secret payload" not in message2  # encrypted in message 2
    assert public_key(static) not in message2  # the server's key is encrypted too
    assert initiator.read_message(message2) == b"secret payload"
    assert initiator.remote_static_public == public_key(static)

    init_send, init_receive = initiator.split()
    resp_receive, resp_send = responder.split()
    for _ in range(3):
        assert resp_receive.decrypt_with_ad(b"ad", init_send.encrypt_with_ad(b"ad", b"up")) == b"up"
        assert init_receive.decrypt_with_ad(b"", resp_send.encrypt_with_ad(b"", b"down")) == b"down"
    assert init_send.n == resp_receive.n == 3
    assert init_send.key == resp_receive.key != init_receive.key == resp_send.key


def test_same_seed_same_handshake_different_seed_different_ephemeral() -> None:
    def transcript(seed: int) -> tuple[bytes, bytes]:
        initiator, responder = _random_pair(seed, static_private=bytes(range(32)))
        message1 = initiator.write_message()
        responder.read_message(message1)
        return message1, responder.write_message()

    assert transcript(1) == transcript(1)
    assert transcript(1)[0] != transcript(2)[0]


def test_different_responder_key_gives_different_remote_static() -> None:
    seen = set()
    for static in (bytes(range(32)), bytes(range(1, 33))):
        initiator, responder = _random_pair(3, static_private=static)
        responder.read_message(initiator.write_message())
        initiator.read_message(responder.write_message())
        assert initiator.remote_static_public == public_key(static)
        seen.add(initiator.remote_static_public)
    assert len(seen) == 2


def test_prologue_mismatch_fails() -> None:
    random = SeededRandomSource(0)
    initiator = HandshakeState.initiator(random=random, prologue=b"udpchat v1")
    responder = HandshakeState.responder(
        static_private=bytes(range(32)), random=random, prologue=b"udpchat v2"
    )
    responder.read_message(initiator.write_message())
    with pytest.raises(DecodeError):
        initiator.read_message(responder.write_message())


# --- misuse ----------------------------------------------------------------------------


def test_write_message_out_of_turn() -> None:
    initiator, responder = _random_pair()
    with pytest.raises(LocalProtocolError):
        responder.write_message()  # the responder speaks second
    message1 = initiator.write_message()
    with pytest.raises(LocalProtocolError):
        initiator.write_message()  # twice in a row
    responder.read_message(message1)
    message2 = responder.write_message()
    with pytest.raises(LocalProtocolError):
        responder.write_message()  # complete
    initiator.read_message(message2)
    with pytest.raises(LocalProtocolError):
        initiator.write_message()  # complete


def test_read_message_when_none_expected_is_a_decode_error() -> None:
    initiator, responder = _random_pair()
    with pytest.raises(DecodeError):
        initiator.read_message(bytes(100))  # the initiator speaks first
    message1 = initiator.write_message()
    responder.read_message(message1)
    with pytest.raises(DecodeError):
        responder.read_message(message1)  # a duplicate of message 1
    initiator.read_message(responder.write_message())
    with pytest.raises(DecodeError):
        initiator.read_message(bytes(100))  # complete


def test_results_before_completion_are_refused() -> None:
    initiator, _ = _random_pair()
    assert not initiator.is_complete
    assert initiator.remote_static_public is None
    with pytest.raises(LocalProtocolError):
        initiator.split()
    with pytest.raises(LocalProtocolError):
        _ = initiator.handshake_hash


def test_bad_key_lengths() -> None:
    random = SeededRandomSource(0)
    with pytest.raises(LocalProtocolError):
        HandshakeState.responder(static_private=bytes(31), random=random)
    with pytest.raises(LocalProtocolError):
        HandshakeState.initiator(random=random, ephemeral_private=bytes(33))
    with pytest.raises(LocalProtocolError):
        public_key(b"")
    with pytest.raises(LocalProtocolError):
        CipherState(bytes(16))


def test_oversized_handshake_message() -> None:
    initiator, responder = _random_pair()
    with pytest.raises(LocalProtocolError):
        initiator.write_message(bytes(65536))
    assert initiator.write_message(bytes(65535 - DH_LEN))  # exactly the limit
    with pytest.raises(DecodeError):
        responder.read_message(bytes(65536))


# --- CipherState -----------------------------------------------------------------------


KEY = bytes(range(100, 132))


def test_seal_open_round_trip_with_explicit_nonce() -> None:
    cipher = CipherState(KEY)
    sealed = cipher.seal(5, b"header", b"payload")
    assert len(sealed) == len(b"payload") + TAG_LEN
    assert cipher.open(5, b"header", sealed) == b"payload"
    assert CipherState(KEY).open(5, b"header", sealed) == b"payload"  # another instance
    assert cipher.n == 0  # explicit nonces leave n alone
    assert cipher.seal(6, b"header", b"payload") != sealed
    # seal(n) is what encrypt_with_ad does with nonce n.
    counter = CipherState(KEY)
    counter.n = 5
    assert counter.encrypt_with_ad(b"header", b"payload") == sealed


@pytest.mark.parametrize(
    ("nonce", "ad", "change"),
    [(4, b"header", False), (6, b"header", False), (5, b"other", False), (5, b"header", True)],
    ids=["nonce-1", "nonce+1", "wrong-ad", "flipped"],
)
def test_open_with_wrong_nonce_or_ad_fails(nonce: int, ad: bytes, change: bool) -> None:
    cipher = CipherState(KEY)
    sealed = cipher.seal(5, b"header", b"payload")
    if change:
        sealed = _flips(sealed)[0]
    with pytest.raises(DecodeError) as info:
        cipher.open(nonce, ad, sealed)
    assert info.value.reason == "decrypt_failed"


@pytest.mark.parametrize("data", [b"", bytes(TAG_LEN - 1), bytes(TAG_LEN), bytes(64)])
def test_open_short_or_garbage_input_fails(data: bytes) -> None:
    with pytest.raises(DecodeError):
        CipherState(KEY).open(0, b"", data)


def test_nonce_range() -> None:
    cipher = CipherState(KEY)
    sealed = cipher.seal(MAX_NONCE - 1, b"", b"last")
    assert cipher.open(MAX_NONCE - 1, b"", sealed) == b"last"
    for bad in (MAX_NONCE, -1, 2**64):
        with pytest.raises(LocalProtocolError):
            cipher.seal(bad, b"", b"x")
        with pytest.raises(DecodeError):
            cipher.open(bad, b"", sealed)
    cipher.n = MAX_NONCE  # 2**64 - 1 is reserved (spec section 5.1)
    with pytest.raises(LocalProtocolError):
        cipher.encrypt_with_ad(b"", b"x")
    with pytest.raises(DecodeError):
        cipher.decrypt_with_ad(b"", sealed)


def test_cipher_without_key_passes_through() -> None:
    cipher = CipherState()
    assert not cipher.has_key()
    assert cipher.key is None
    assert cipher.encrypt_with_ad(b"ad", b"clear") == b"clear"
    assert cipher.decrypt_with_ad(b"ad", b"clear") == b"clear"
    assert cipher.n == 0
    with pytest.raises(LocalProtocolError):
        cipher.seal(0, b"", b"x")
    with pytest.raises(LocalProtocolError):
        cipher.open(0, b"", bytes(TAG_LEN))


def test_repr_hides_keys() -> None:
    assert KEY.hex() not in repr(CipherState(KEY))
    assert repr(CipherState(KEY)) == "CipherState(has_key=True, n=0)"


# --- the AEAD objects CipherState keeps ------------------------------------------------
# Only for the states that used one last (``handshake._RING``): busy connections skip
# making OpenSSL contexts for every packet, idle ones hold none.

RING_NONCE = 7
RING_AD = b"header"


def _ring_expected(key: bytes, plaintext: bytes) -> bytes:
    # Noise: 32 zero bits, then the nonce as 64 bits little-endian.
    return ChaCha20Poly1305(key).encrypt(
        bytes(4) + RING_NONCE.to_bytes(8, "little"), plaintext, RING_AD
    )


def test_at_most_the_ring_keeps_an_aead_and_a_pushed_out_state_still_works() -> None:
    width = len(handshake._RING.states)
    states = [CipherState(i.to_bytes(4, "big") * 8) for i in range(width + 10)]
    for state in states:
        state.seal(RING_NONCE, RING_AD, b"x")
    kept = handshake._RING.ciphers
    assert len(kept) <= width
    # The first ten were pushed out by the last ten; the last ones keep theirs.
    assert all(state not in kept for state in states[:10])
    assert all(state in kept for state in states[-10:])
    first = states[0]
    assert first.key is not None
    sealed = first.seal(RING_NONCE, RING_AD, b"again")
    assert sealed == _ring_expected(first.key, b"again")
    assert first.open(RING_NONCE, RING_AD, sealed) == b"again"
    assert first in kept  # made again, and kept again


def test_a_kept_aead_seals_as_a_fresh_one() -> None:
    key = bytes(range(32))
    state = CipherState(key)
    for text in (b"one", b"two", b""):
        assert state.seal(RING_NONCE, RING_AD, text) == _ring_expected(key, text)
        assert state.open(RING_NONCE, RING_AD, state.seal(RING_NONCE, RING_AD, text)) == text
