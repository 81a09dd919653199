"""Whatever arrives, the e2ee layer answers with its own types: the plaintext
parsers raise only their error, and a device fed arbitrary key shares,
ciphertexts and saved states returns ``Dropped`` or raises ``StateError``, never
one of vodozemac's exceptions (hypothesis). And its public names have one home."""

from __future__ import annotations

import contextlib

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.e2ee_helpers import KeyServer
from udpchat_proto.e2ee import (
    MAX_KEY_SHARE,
    MAX_MESSAGE_CIPHERTEXT,
    CryptoState,
    Decrypted,
    Dropped,
    KeyShareReceived,
    StateError,
)
from udpchat_proto.e2ee.payloads import KeyPayload, MessagePayload, PayloadError

ROOM = "#general"
KEY = bytes(32)
SERVER = KeyServer()
ALICE, BOB = SERVER.login("alice"), SERVER.login("bob")
FIRST = SERVER.send(ALICE, SERVER.device_set(ROOM, {"alice", "bob"}, 1), "hi", bytes(16), 0.0)
assert isinstance(BOB.receive_key_share(FIRST.key_shares[0]), KeyShareReceived)


@given(st.binary(max_size=600))
def test_the_key_payload_parser_raises_only_its_error(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        KeyPayload.parse(data)


@given(st.binary(max_size=600))
def test_the_message_payload_parser_raises_only_its_error(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        MessagePayload.parse(data)


@given(
    message_id=st.binary(min_size=16, max_size=16),
    conversation=st.sampled_from(["#general", "alice,bob", "#" + "x" * 32]),
    text=st.text(min_size=1),
)
def test_a_message_payload_reads_back(message_id: bytes, conversation: str, text: str) -> None:
    payload = MessagePayload(message_id=message_id, conversation=conversation, text=text)
    try:
        data = payload.to_bytes()
    except UnicodeEncodeError:
        return  # (a lone surrogate: the sender's text rules refuse it first)
    try:
        assert MessagePayload.parse(data) == payload
    except PayloadError:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@given(
    message_type=st.sampled_from([0, 1]), ciphertext=st.binary(min_size=1, max_size=MAX_KEY_SHARE)
)
def test_any_key_share_is_taken_or_dropped(message_type: int, ciphertext: bytes) -> None:
    share = attrs.evolve(FIRST.key_shares[0], message_type=message_type, ciphertext=ciphertext)
    result = BOB.receive_key_share(share)
    assert isinstance(result, Dropped | KeyShareReceived)


@given(ciphertext=st.binary(min_size=1, max_size=MAX_MESSAGE_CIPHERTEXT))
def test_any_ciphertext_is_decrypted_or_dropped(ciphertext: bytes) -> None:
    result = BOB.decrypt(attrs.evolve(FIRST.message, ciphertext=ciphertext), bytes(16))
    assert isinstance(result, Dropped)
    assert isinstance(BOB.decrypt(FIRST.message, bytes(16)), Decrypted)


@given(st.binary(max_size=300) | st.from_regex(rb"\{.{0,200}\}", fullmatch=True))
def test_any_saved_state_loads_or_raises_state_error(data: bytes) -> None:
    with pytest.raises(StateError):
        CryptoState.from_bytes(data, KEY)


def test_a_saved_state_with_a_field_missing_or_mistyped_raises_state_error() -> None:
    import orjson

    saved = orjson.loads(BOB._to_json(KEY))  # (the document inside the seal)
    for name in list(saved):
        for value in (None, 3, "x", [1], {"a": 1}):
            broken = {**saved, name: value}
            with contextlib.suppress(StateError):  # (or it loads: no other error)
                CryptoState._from_json(orjson.dumps(broken), KEY)
        without = {k: v for k, v in saved.items() if k != name}
        with pytest.raises(StateError):
            CryptoState._from_json(orjson.dumps(without), KEY)
