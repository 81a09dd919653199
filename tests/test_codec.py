"""The codec: round trips, the one decode error, and each validation rule at its boundary."""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from udpchat_proto.chat import check_message_id, check_session_id
from udpchat_proto.chat import messages as m
from udpchat_proto.chat.codec import CODEC_VERSION, MAX_ENCODED_SIZE, MESSAGE_TYPES, decode, encode
from udpchat_proto.chat.validation import ValidationError
from udpchat_proto.errors import DecodeError, ErrorCode, LocalProtocolError

from .strategies import all_messages, strategy_for

MID = bytes(range(16))
NOW = datetime.datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=datetime.UTC)


def wire(obj: Any, version: int = CODEC_VERSION) -> bytes:
    return bytes([version]) + json.dumps(obj).encode()


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_class(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(strategy_for(cls))
    encoded = encode(message)
    assert encoded[0] == CODEC_VERSION
    assert decode(encoded) == message


@settings(max_examples=1000)
@given(st.binary(max_size=512))
@example(b"")
@example(b"\x01")
@example(b"\x01{}")
@example(b"\x01null")
@example(b"\x01" + b"[" * 100_000)
@example(b"\x01" + b'{"a":' * 50_000)
@example(b'\x01{"type":"history","request_id":1,"messages":[[[[[[[[[[]]]]]]]]]]}')
@example(b'\x01{"type":"send_message","request_id":1e999}')
@example(b'\x01{"type":"ok","request_id":' + b"9" * 5000 + b"}")
@example(b'\x01{"type":"error","request_id":1,"code":"nope","message":"x"}')
@example(b'\x01{"type":"message_delivered","message":"x"}')
@example(b'\x01{"type":"message_delivered","message":{"sent_at":-1}}')
@example(b'\x01{"type":"register","request_id":1,"username":"\\ud800","password":"12345678"}')
@example(b'\x01{"type":"ack_delivery","message_ids":["zz"]}')
@example(b'\x01{"type":{"x":1}}')
@example(b'\x01{"type":["ok"]}')
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    """Any other exception escaping decode() fails the test."""
    with contextlib.suppress(DecodeError):
        decode(data)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(message=all_messages, data=st.data())
def test_mutated_encodings_decode_or_raise_decode_error(message: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode(message))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip":
            encoded[position] ^= data.draw(st.integers(min_value=1, max_value=255))
        elif action == "delete":
            del encoded[position]
        elif action == "insert":
            encoded.insert(position, data.draw(st.integers(min_value=0, max_value=255)))
        else:
            del encoded[position:]
        if not encoded:
            break
    try:
        decoded = decode(bytes(encoded))
    except DecodeError:
        return
    # Whatever decodes is a valid message that encodes again.
    assert decode(encode(decoded)) == decoded


@settings(max_examples=300)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=30,
    ),
    st.sampled_from(sorted(MESSAGE_TYPES)),
)
def test_json_of_wrong_shape_raises_decode_error(value: Any, tag: str) -> None:
    """A known tag with any JSON shape decodes or raises DecodeError, nothing else."""
    obj = value if isinstance(value, dict) else {"value": value}
    obj["type"] = tag
    with contextlib.suppress(DecodeError):
        decode(wire(obj))


# --- framing ------------------------------------------------------------------------


def test_wire_form_is_version_byte_then_json_object() -> None:
    message = m.SendMessage(request_id=7, message_id=MID, to="Bob", text="hi")
    assert encode(message) == (
        b'\x01{"request_id":7,"message_id":"000102030405060708090a0b0c0d0e0f",'
        b'"to":"bob","text":"hi","type":"send_message"}'
    )


def test_timestamps_are_microseconds_since_epoch() -> None:
    message = m.MessageAccepted(request_id=1, message_id=MID, sent_at=NOW)
    obj = json.loads(encode(message)[1:])
    assert obj["sent_at"] == 1795521600123456
    assert decode(encode(message)) == message


def test_newer_version_is_told_apart_from_garbage() -> None:
    with pytest.raises(DecodeError) as newer:
        decode(wire({"type": "ok", "request_id": 1}, version=2))
    assert newer.value.reason == "unsupported_version"
    with pytest.raises(DecodeError) as garbage:
        decode(b"\x00garbage")
    assert garbage.value.reason == "bad_version"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x01", "malformed"),
        (b"\x01{", "malformed"),
        (b"\x01\xff\xfe", "malformed"),
        (b"\x01[1]", "malformed"),
        (b"\x01" + b"[" * 100_000, "malformed"),
        # Strict JSON: no NaN, no lone surrogate; a number beyond 64 bits is no int.
        (b'\x01{"type":"ok","request_id":NaN}', "malformed"),
        (b'\x01{"type":"ok","request_id":' + b"9" * 30 + b"}", "invalid_field"),
        (b'\x01{"type":"ok","request_id":1,"x":"\\ud800"}', "malformed"),
        (wire({"type": "no_such_thing"}), "unknown_type"),
        (wire({"request_id": 1}), "unknown_type"),
        (wire({"type": "ok"}), "invalid_field"),
        (wire({"type": "ok", "request_id": "1"}), "invalid_field"),
        (wire({"type": "ok", "request_id": True}), "invalid_field"),
        (wire({"type": "ok", "request_id": 1.0}), "invalid_field"),
        (wire({"type": "ok", "request_id": -1}), "invalid_field"),
        (wire({"type": "ok", "request_id": 2**32}), "invalid_field"),
        (wire({"type": "resume", "request_id": 1, "token": "00" * 31}), "invalid_field"),
        (wire({"type": "resume", "request_id": 1, "token": "zz" * 32}), "invalid_field"),
        (wire({"type": "presence_changed", "username": "a", "online": 1}), "invalid_field"),
    ],
)
def test_each_bad_input_has_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.reason == reason


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(DecodeError) as info:
        decode(b"\x01" + b" " * MAX_ENCODED_SIZE)
    assert info.value.reason == "too_large"


def test_invalid_request_field_says_how_to_answer() -> None:
    data = wire({"type": "invite", "request_id": 42, "username": "no spaces"})
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert (info.value.request_id, info.value.code) == (42, ErrorCode.INVALID_USERNAME)


def test_encode_refuses_a_non_message() -> None:
    with pytest.raises(LocalProtocolError):
        encode("hello")  # type: ignore[arg-type]


# --- validation rules at their boundaries ------------------------------------------------


@pytest.mark.parametrize("name", ["a", "z" * 32, "a_b.c-d", "0123", "ALICE"])
def test_valid_usernames(name: str) -> None:
    invite = m.Invite(request_id=1, username=name)
    assert invite.username == name.lower()
    assert decode(encode(invite)) == invite


@pytest.mark.parametrize("name", ["", "z" * 33, "a b", "é", "a/b", "#room", "a\n"])
def test_invalid_usernames(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        m.Invite(request_id=1, username=name)
    assert info.value.code is ErrorCode.INVALID_USERNAME
    with pytest.raises(DecodeError) as decoded:
        decode(wire({"type": "invite", "request_id": 1, "username": name}))
    assert decoded.value.code is ErrorCode.INVALID_USERNAME


def test_usernames_compare_case_insensitively_on_the_wire() -> None:
    data = wire({"type": "invite", "request_id": 1, "username": "BoB"})
    assert decode(data) == m.Invite(request_id=1, username="bob")


@pytest.mark.parametrize("room", ["#a", "#" + "z" * 32, "#General"])
def test_valid_rooms(room: str) -> None:
    assert m.JoinRoom(request_id=1, room=room).room == room.lower()


@pytest.mark.parametrize("room", ["#", "general", "#" + "z" * 33, "##a", "# a"])
def test_invalid_rooms(room: str) -> None:
    with pytest.raises(ValidationError) as info:
        m.JoinRoom(request_id=1, room=room)
    assert info.value.code is ErrorCode.INVALID_ROOM


def test_send_target_is_a_user_or_a_room() -> None:
    assert m.SendMessage(request_id=1, message_id=MID, to="#Room", text="x").to == "#room"
    with pytest.raises(ValidationError) as info:
        m.SendMessage(request_id=1, message_id=MID, to="#bad room", text="x")
    assert info.value.code is ErrorCode.INVALID_ROOM


@pytest.mark.parametrize("text", ["x", "a" * 4096, "é" * 2048, "€" * 1365 + "a", "😀" * 1024])
def test_text_up_to_4096_bytes(text: str) -> None:
    message = m.SendMessage(request_id=1, message_id=MID, to="bob", text=text)
    assert decode(encode(message)).text == text  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["a" * 4097, "é" * 2049, "😀" * 1024 + "a"])
def test_text_over_4096_bytes_is_too_large(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        m.SendMessage(request_id=1, message_id=MID, to="bob", text=text)
    assert info.value.code is ErrorCode.TOO_LARGE
    data = wire(
        {
            "type": "send_message",
            "request_id": 3,
            "message_id": MID.hex(),
            "to": "bob",
            "text": text,
        }
    )
    with pytest.raises(DecodeError) as decoded:
        decode(data)
    assert (decoded.value.request_id, decoded.value.code) == (3, ErrorCode.TOO_LARGE)


@pytest.mark.parametrize("text", ["", "\ud800", "a\udfffb"])
def test_text_must_be_nonempty_valid_utf8(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        m.SendMessage(request_id=1, message_id=MID, to="bob", text=text)
    assert info.value.code is ErrorCode.INVALID_TEXT


@pytest.mark.parametrize("password", ["12345678", "x" * 1024])
def test_password_lengths_accepted(password: str) -> None:
    assert m.Register(request_id=1, username="a", password=password).password == password


@pytest.mark.parametrize("password", ["1234567", "x" * 1025, "1234567\ud800"])
def test_password_lengths_refused(password: str) -> None:
    with pytest.raises(ValidationError) as info:
        m.Register(request_id=1, username="a", password=password)
    assert info.value.code is ErrorCode.INVALID_PASSWORD


def test_passwords_and_tokens_stay_out_of_reprs() -> None:
    register = m.Register(request_id=1, username="a", password="secret-password")
    assert "secret-password" not in repr(register)
    logged_in = m.LoggedIn(request_id=1, username="a", token=b"\x07" * 32)
    assert "07" not in repr(logged_in) and "\\x07" not in repr(logged_in)


@pytest.mark.parametrize("size", [0, 15, 17])
def test_message_ids_are_16_bytes(size: int) -> None:
    with pytest.raises(ValidationError):
        m.SendMessage(request_id=1, message_id=b"x" * size, to="bob", text="x")


@pytest.mark.parametrize("value", [b"", b"x" * 15, b"x" * 17, "x" * 16, bytearray(16), None])
def test_the_public_id_checks_are_the_message_rules(value: Any) -> None:
    # An application checks an id with the public function before any request; it
    # must refuse exactly what the message classes refuse, with the same words.
    checks: list[tuple[Callable[[object], None], Callable[[], object]]] = [
        (check_message_id, lambda: m.GetMessageStatus(request_id=1, message_id=value)),
        (check_session_id, lambda: m.RevokeSession(request_id=1, session_id=value)),
    ]
    for check, build in checks:
        with pytest.raises(ValidationError) as by_function:
            check(value)
        with pytest.raises(ValidationError) as by_message:
            build()
        assert by_function.value.code is by_message.value.code is ErrorCode.BAD_REQUEST
        assert str(by_function.value) == str(by_message.value)
    check_message_id(MID)
    check_session_id(MID)


def test_timestamps_must_be_utc() -> None:
    naive = datetime.datetime(2026, 1, 1)
    with pytest.raises(ValidationError):
        m.MessageAccepted(request_id=1, message_id=MID, sent_at=naive)
    paris = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    with pytest.raises(ValidationError):
        m.MessageAccepted(request_id=1, message_id=MID, sent_at=paris)


def test_history_limit_bounds() -> None:
    assert m.GetHistory(request_id=1, peer="bob").limit == 20
    m.GetHistory(request_id=1, peer="bob", limit=100)
    for limit in (0, 101):
        with pytest.raises(ValidationError):
            m.GetHistory(request_id=1, peer="bob", limit=limit)


def test_an_error_message_with_a_lone_surrogate_is_a_decode_error() -> None:
    """Found by reading the fuzzing harness: decode accepted it, encode then failed."""
    data = wire({"type": "error", "request_id": 1, "code": "internal", "message": "\ud800"})
    with pytest.raises(DecodeError):
        decode(data)
    fine = decode(wire({"type": "error", "request_id": 1, "code": "internal", "message": "é"}))
    assert decode(encode(fine)) == fine
