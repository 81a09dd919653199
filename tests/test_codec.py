"""The codec: round trips, the one decode error, and each validation rule at its boundary."""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import re
from collections.abc import Callable
from typing import Any

import attrs
import cattrs.gen
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from udpchat_proto import messages as m
from udpchat_proto.chat import check_message_id, check_session_id, codec
from udpchat_proto.chat.codec import (
    CODEC_VERSION,
    MAX_ENCODED_SIZE,
    MESSAGE_TYPES,
    decode,
    encode,
    message_version,
)
from udpchat_proto.chat.config import SERVER_RECEIVE_LIMIT
from udpchat_proto.chat.validation import REQUEST_ID_MAX, USERNAME_MAX, ValidationError
from udpchat_proto.e2ee import DeviceKeys, EncryptedMessage, KeyShare
from udpchat_proto.e2ee.records import MAX_KEY_SHARE, MAX_MESSAGE_CIPHERTEXT
from udpchat_proto.errors import DecodeError, ErrorCode, LocalProtocolError

from .strategies import all_messages, chat_messages, strategy_for

MID = bytes(range(16))
NOW = datetime.datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=datetime.UTC)


def wire(obj: Any, version: int = CODEC_VERSION) -> bytes:
    return bytes([version]) + json.dumps(obj).encode()


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
@settings(suppress_health_check=[HealthCheck.too_slow])  # (examples: the profile's)
@given(data=st.data())
def test_round_trip_every_class(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(strategy_for(cls))
    encoded = encode(message)
    assert encoded[0] == message_version(message) <= CODEC_VERSION
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
        decode(wire({"type": "ok", "request_id": 1}, version=3))
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


# --- refusals: whom to answer, with what code and what text (issue 23, items 15, 16, 18, 20) ---

MESSAGE_ID = "00" * 16


def answer_of(data: bytes) -> tuple[int | None, ErrorCode | None, str]:
    """The (request_id, code, text) a server answers ``data`` with; id None: no answer."""
    with pytest.raises(DecodeError) as info:
        decode(data)
    return info.value.request_id, info.value.code, info.value.detail


@pytest.mark.parametrize(
    ("body", "code"),
    [
        # orjson refuses each whole; the request id is readable all the same.
        (b'"send_message","to":"bob","text":"a\\ud800b"', ErrorCode.INVALID_TEXT),
        (b'"send_message","to":"bob","text":"\\udfff"', ErrorCode.INVALID_TEXT),
        (b'"send_message","to":"bob","text":"a\xffb"', ErrorCode.INVALID_TEXT),
        (b'"send_message","to":"bob","text":"\xed\xa0\x80"', ErrorCode.INVALID_TEXT),
        (b'"send_message","to":"b\xffb","text":"hi"', ErrorCode.INVALID_USERNAME),
        (
            b'"register","username":"bob","password":"long enough \\ud800"',
            ErrorCode.INVALID_PASSWORD,
        ),
        (b'"register","username":"bob","password":"long enough \xc3"', ErrorCode.INVALID_PASSWORD),
        # Not strict JSON where no rule of a field is broken: bad_request.
        (b'"list_online","note":"\\ud800"', ErrorCode.BAD_REQUEST),
        (b'"list_online","note":NaN', ErrorCode.BAD_REQUEST),
        (b'"get_history","peer":"bob","limit":Infinity', ErrorCode.BAD_REQUEST),
        (b'"list_online"} trailing', ErrorCode.BAD_REQUEST),
        (b'"list_\xff"', ErrorCode.UNKNOWN_REQUEST),
    ],
)
def test_a_request_that_is_not_strict_json_is_answered_when_its_id_is_readable(
    body: bytes, code: ErrorCode
) -> None:
    """PROTOCOL.md, Encoding: answered with the code of the broken rule (the spec
    promises invalid_text for a text that is not UTF-8); once orjson refused the
    whole message (a raw 0xff, a lone surrogate) it got no answer at all."""
    data = b'\x01{"request_id":77,"message_id":"' + MESSAGE_ID.encode() + b'","type":' + body
    if not body.endswith(b"trailing"):
        data += b"}"
    request_id, got, text = answer_of(data)
    assert (request_id, got) == (77, code)
    # It can go back on the wire: no lone surrogate in the text.
    encode(m.ErrorResponse(request_id=77, code=code, message=text))


def test_a_newer_version_that_is_not_strict_json_is_answered_unsupported_version() -> None:
    request_id, code, _ = answer_of(b'\x03{"type":"list_online","request_id":5,"x":"\xff"}')
    assert (request_id, code) == (5, ErrorCode.UNSUPPORTED_VERSION)


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\xff{}",
        b'\x01{"request_id":5,\xff}',
        b'\x01{"request_id":"\\ud800"}',
        b'\x01{"request_id":5,"type":"list_online","x":"\\q"}',  # no JSON at all
        b'\x01[{"request_id":5,"type":"list_online","x":"\xff"}]',
        b'\x01{"request_id":' + b"9" * 5000 + b',"type":"list_online","x":"\xff"}',
        # Too deep for any reader, and no request's type at the top (answered with
        # one: test_a_request_no_parser_reads_is_answered_if_its_id_is_at_the_top).
        b'\x01{"request_id":5,"type":"later_request","x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        # What only a server sends, and ack_delivery, are never answered.
        b'\x01{"request_id":5,"type":"ok","x":"\xff"}',
        b'\x01{"request_id":5,"type":"ack_delivery","message_ids":["\xff"]}',
    ],
)
def test_undecodable_bytes_without_a_request_to_answer_are_not_answered(data: bytes) -> None:
    request_id, code, _ = answer_of(data)
    assert (request_id, code) == (None, None)


_STRING_FIELD_REQUESTS = [
    cls
    for cls in m.ANSWERED_REQUEST_TYPES
    if any(f.type in ("str", "bytes") for f in attrs.fields(cls))
]
_MARK = "@@insertion@@"
# Bytes that keep a JSON string a string (no quote, no backslash), and lone surrogate escapes.
_insertions = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=4).map(lambda b: b.replace(b'"', b"").replace(b"\\", b"")),
        st.sampled_from([b"\\ud800", b"\\udbff", b"\\udc00", b"\\udfff", b"\xff", b"\xc3("]),
    ),
    min_size=1,
    max_size=4,
).map(b"".join)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=st.sampled_from(_STRING_FIELD_REQUESTS).flatmap(strategy_for),
    insertion=_insertions,
    data=st.data(),
)
def test_any_request_whose_id_is_readable_is_answered_with_a_stable_code(
    message: Any, insertion: bytes, data: st.DataObject
) -> None:
    """Bytes of any kind inside a string member of a request: it decodes, or its
    refusal names its request id, a code of the catalogue, and a text that can go
    back on the wire."""
    obj = json.loads(encode(message)[1:])
    key = data.draw(
        st.sampled_from(sorted(k for k, v in obj.items() if type(v) is str and k != "type"))
    )
    at = data.draw(st.integers(min_value=0, max_value=len(obj[key])))
    obj[key] = obj[key][:at] + _MARK + obj[key][at:]
    encoded = json.dumps(obj, ensure_ascii=False).encode()
    try:
        decoded = decode(b"\x01" + encoded.replace(_MARK.encode(), insertion))
    except DecodeError as exc:
        assert exc.request_id == message.request_id and exc.code is not None
        encode(m.ErrorResponse(request_id=message.request_id, code=exc.code, message=exc.detail))
    else:
        assert decoded.request_id == message.request_id  # type: ignore[union-attr]


# Python's own words: exception names, reprs' quotes, None, class reprs.
_PYTHON = re.compile(r"Error\b|Exception|Traceback|'|\bNone\b|<class|__|cattrs|\bstr\b|\bint\b")


def _wrong_type(value: Any) -> Any:
    return {"a": 1} if isinstance(value, list) else [value]


@pytest.mark.parametrize("cls", m.ANSWERED_REQUEST_TYPES, ids=lambda c: c.TAG)
@settings(max_examples=3, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_malformed_request_is_refused_in_the_protocols_words(
    cls: type[Any], data: st.DataObject
) -> None:
    """Issue 23, item 16: the text was Python's (KeyError: 'id')."""
    obj = json.loads(encode(data.draw(strategy_for(cls)))[1:])
    for field in attrs.fields(cls):
        if field.name == "request_id":
            continue
        missing = {k: v for k, v in obj.items() if k != field.name}
        if field.default is attrs.NOTHING:
            request_id, code, text = answer_of(wire(missing))
            assert (request_id, code) == (obj["request_id"], ErrorCode.BAD_REQUEST)
            assert text == f"missing field {field.name}"
        wrong = {**obj, field.name: _wrong_type(obj.get(field.name, 1))}
        request_id, code, text = answer_of(wire(wrong))
        assert request_id == obj["request_id"] and code is not None, text
        assert (
            # (a list's first entry is the one named: "field key_shares[0]: expected")
            re.match(rf"field {field.name}(\[0\])?: expected ", text)
            or code is not ErrorCode.BAD_REQUEST
        )
        assert not _PYTHON.search(text), text


@pytest.mark.parametrize(
    ("obj", "text"),
    [
        (
            {"type": "send_message", "message_id": 5, "to": "bob", "text": "x"},
            "field message_id: expected a hex string, got an integer",
        ),
        (
            {"type": "send_message", "message_id": "zz", "to": "bob", "text": "x"},
            "field message_id: expected a hex string",
        ),
        (
            {"type": "send_message", "message_id": MESSAGE_ID, "to": "bob", "text": None},
            "field text: expected a string, got null",
        ),
        (
            {"type": "get_history", "peer": "bob", "limit": 1.5},
            "field limit: expected an integer, got a number that is not a 64-bit integer",
        ),
        (
            {"type": "get_history", "peer": "bob", "limit": True},
            "field limit: expected an integer, got true or false",
        ),
        (
            {"type": "get_history", "peer": "bob", "before": "zz"},
            "field before: expected a hex string",
        ),
        ({"type": "invite"}, "missing field username"),
        ({"request_id": 3}, "the message has no type"),
        ({"type": 7}, "the message type must be a string, not an integer"),
        ({"type": "set_status"}, 'unknown message type "set_status"'),
    ],
)
def test_refusal_texts(obj: dict[str, Any], text: str) -> None:
    assert answer_of(wire({"request_id": 3, **obj}))[2] == text


@pytest.mark.parametrize("cls", [*m.RESPONSE_TYPES, *m.PUSH_TYPES], ids=lambda c: c.TAG)
@settings(max_examples=3, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_malformed_server_only_message_is_never_answered(
    cls: type[Any], data: st.DataObject
) -> None:
    """A message only a server sends is a violation, malformed or not: it got
    bad_request with the text "KeyError: 'id'" when it carried a request id."""
    obj = {"request_id": 1, **json.loads(encode(data.draw(strategy_for(cls)))[1:])}
    for name, value in obj.items():
        if name in ("type", "request_id"):
            continue
        # sender_keys is the wire's, not a field: the shares' sender, named once.
        field = attrs.fields_dict(cls).get(name)
        optional = field is not None and field.default is not attrs.NOTHING
        for bad in (
            *(() if optional else ({k: v for k, v in obj.items() if k != name},)),
            {**obj, name: _wrong_type(value)},
        ):
            with pytest.raises(DecodeError) as info:
                decode(wire(bad))
            assert (info.value.request_id, info.value.code) == (None, None)
    bad_record = {"type": "message_delivered", "request_id": 5, "message": {}}
    assert answer_of(wire(bad_record))[:2] == (None, None)


def test_an_ack_delivery_is_never_answered_even_malformed() -> None:
    for ids in (["zz"], "00", [MESSAGE_ID, 5], [MESSAGE_ID] * 10_001):
        assert answer_of(wire({"type": "ack_delivery", "request_id": 5, "message_ids": ids}))[
            :2
        ] == (None, None)


@pytest.mark.parametrize("request_id", [-1, 2**32, 2**63, 1.0, "5", True, None])
def test_a_request_id_out_of_range_or_not_an_integer_is_not_answered(request_id: Any) -> None:
    """Issue 23, item 18: an answer could not carry it (a response's request_id is in
    0..2^32-1 too), so the message is dropped as a violation, never answered."""
    assert answer_of(wire({"type": "invite", "request_id": request_id, "username": "Bad Name"}))[
        :2
    ] == (None, None)
    for edge in (0, 2**32 - 1):
        assert answer_of(wire({"type": "invite", "request_id": edge, "username": "Bad Name"}))[
            :2
        ] == (edge, ErrorCode.INVALID_USERNAME)


def test_a_member_given_twice_counts_once_the_last() -> None:
    """Issue 23, item 20: PROTOCOL.md says so (RFC 8259 leaves it to the parser)."""
    data = (
        b'\x01{"type":"invite","request_id":1,"username":"alice","username":"bob","request_id":2}'
    )
    assert decode(data) == m.Invite(request_id=2, username="bob")
    refused = b'\x01{"type":"invite","request_id":1,"username":"bob","username":"Bad Name"}'
    assert answer_of(refused)[:2] == (1, ErrorCode.INVALID_USERNAME)


@pytest.mark.parametrize(
    "body",
    [
        # An integer beyond the standard library's 4,300 digits, in another member.
        b'{"type":"list_friends","request_id":7,"x":' + b"9" * 5000 + b"}",
        # Nesting deeper than any JSON parser here goes, in another member.
        b'{"request_id":7,"x":' + b"[" * 3000 + b"]" * 3000 + b',"type":"list_friends"}',
    ],
    ids=["huge-integer", "deep-nesting"],
)
def test_a_request_no_parser_reads_is_answered_if_its_id_is_at_the_top(body: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(b"\x01" + body)
    assert caught.value.request_id == 7 and caught.value.code is ErrorCode.BAD_REQUEST
    assert "too deeply nested, or a number too long" in caught.value.detail


@pytest.mark.parametrize(
    "body",
    [
        # The id only inside a nested value, or inside a text: not the request's.
        b'{"x":{"request_id":7},"type":"list_friends","y":' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"t":"\\"request_id\\":7","type":"list_friends","y":' + b"[" * 3000 + b"]" * 3000 + b"}",
        # A server-only message is never answered.
        b'{"type":"ok","request_id":7,"y":' + b"[" * 3000 + b"]" * 3000 + b"}",
    ],
    ids=["nested-id", "id-in-a-text", "server-only"],
)
def test_an_id_not_of_the_request_is_never_answered(body: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(b"\x01" + body)
    assert caught.value.request_id is None and caught.value.code is None


# --- version 2: end-to-end encryption --------------------------------------------------

_ADDED_MEMBERS = {"encrypted", "ciphertext", "key_shares", "device_set"}


def _member_names(value: Any) -> set[str]:
    """Every member name of a JSON value, at any depth."""
    if isinstance(value, dict):
        return set(value).union(*(_member_names(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_member_names(item) for item in value))
    return set()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(message=all_messages)
def test_a_message_that_uses_nothing_of_version_2_is_version_1s_bytes(message: Any) -> None:
    """Version 2 is written only when used: a version 1 peer reads the rest."""
    encoded = encode(message)
    obj = json.loads(encoded[1:])
    uses_2 = type(message).TAG in {
        "upload_keys",
        "claim_keys",
        "get_devices",
        "keys_stored",
        "claimed_keys",
        "conversation_devices",
        "user_devices",
        "device_added",
        "one_time_keys_low",
    } or bool(_ADDED_MEMBERS & _member_names(obj))
    assert (encoded[0] == 2) == uses_2, obj
    # Either byte reads the same message.
    assert decode(bytes([3 - encoded[0]]) + encoded[1:]) == message


def test_a_text_send_is_byte_for_byte_version_1() -> None:
    message = m.SendMessage(request_id=7, message_id=bytes(range(16)), to="bob", text="hi")
    assert encode(message) == (
        b'\x01{"request_id":7,"message_id":"000102030405060708090a0b0c0d0e0f",'
        b'"to":"bob","text":"hi","type":"send_message"}'
    )


def test_an_encrypted_send_is_version_2_without_text() -> None:
    record = EncryptedMessage(
        conversation="alice,bob",
        sender="alice",
        sender_device=b"\x01" * 16,
        session_id=b"\x02" * 32,
        device_set_version=5,
        ciphertext=b"\x03",
    )
    message = m.SendMessage(request_id=7, message_id=bytes(16), to="bob", encrypted=record)
    encoded = encode(message)
    assert encoded[0] == 2
    obj = json.loads(encoded[1:])
    assert "text" not in obj and "key_shares" not in obj
    assert obj["encrypted"]["ciphertext"] == "Aw=="  # ciphertexts are base64
    assert decode(encoded) == message


def _share(sender: DeviceKeys, recipient: str, ciphertext: bytes) -> KeyShare:
    return KeyShare(
        sender_keys=sender,
        recipient=recipient,
        recipient_device=b"\x09" * 16,
        message_type=0,
        ciphertext=ciphertext,
    )


_ALICE_KEYS = DeviceKeys(
    user="alice",
    device_id=b"\x01" * 16,
    curve25519=b"\x02" * 32,
    ed25519=b"\x03" * 32,
    signature=b"\x04" * 64,
)
_RECORD = EncryptedMessage(
    conversation="#r",
    sender="alice",
    sender_device=b"\x01" * 16,
    session_id=b"\x02" * 32,
    device_set_version=5,
    ciphertext=b"\x03",
)


@pytest.mark.parametrize("cls", [m.SendMessage, m.ShareKeys])
def test_a_requests_shares_name_their_sender_once_and_carry_base64(cls: type[Any]) -> None:
    shares = (_share(_ALICE_KEYS, "bob", b"\xff" * 5), _share(_ALICE_KEYS, "cat", b"\x00"))
    extra = {"to": "#r", "encrypted": _RECORD} if cls is m.SendMessage else {}
    message = cls(request_id=1, message_id=bytes(16), key_shares=shares, **extra)
    obj = json.loads(encode(message)[1:])
    assert obj["sender_keys"]["user"] == "alice"
    assert [share["ciphertext"] for share in obj["key_shares"]] == ["//////8=", "AA=="]
    assert all("sender_keys" not in share for share in obj["key_shares"])
    assert decode(encode(message)) == message
    del obj["sender_keys"]  # shares without their sender: refused, not guessed
    with pytest.raises(DecodeError) as info:
        decode(wire(obj))
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_one_messages_shares_are_from_one_device() -> None:
    other = attrs.evolve(_ALICE_KEYS, device_id=b"\x05" * 16)
    with pytest.raises(ValidationError):
        m.ShareKeys(
            request_id=1,
            message_id=bytes(16),
            key_shares=(_share(_ALICE_KEYS, "bob", b"\x01"), _share(other, "bob", b"\x01")),
        )


def test_a_request_carries_a_bounded_batch_of_shares_that_fits_the_receive_limit() -> None:
    """The largest send (every share and the ciphertext at their bounds, the longest
    names) stays within what the server reassembles: a rotation in a large room
    goes in share_keys batches, never in one request the server cannot take."""
    longest = "u" * USERNAME_MAX
    keys = attrs.evolve(_ALICE_KEYS, user=longest)
    shares = tuple(
        _share(keys, longest, b"\xff" * MAX_KEY_SHARE) for _ in range(m.MAX_SHARES_PER_REQUEST)
    )
    record = attrs.evolve(
        _RECORD,
        conversation="#" + "r" * USERNAME_MAX,
        sender=longest,
        ciphertext=b"\xff" * MAX_MESSAGE_CIPHERTEXT,
    )
    send = m.SendMessage(
        request_id=REQUEST_ID_MAX,
        message_id=bytes(16),
        to=record.conversation,
        encrypted=record,
        key_shares=shares,
        staged=m.MAX_STAGED_SHARES,
    )
    assert len(encode(send)) <= SERVER_RECEIVE_LIMIT
    with pytest.raises(ValidationError) as info:
        m.ShareKeys(request_id=1, message_id=bytes(16), key_shares=(*shares, shares[0]))
    assert info.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({}, "message text must not be empty"),  # neither text nor encrypted
        ({"text": "hi", "key_shares": []}, None),  # an empty list is no share: fine
    ],
)
def test_a_send_needs_text_or_an_encrypted_message(
    fields: dict[str, Any], problem: str | None
) -> None:
    data = wire({"type": "send_message", "request_id": 1, "message_id": "00" * 16, "to": "bob"})
    obj = {**json.loads(data[1:]), **fields}
    if problem is None:
        assert isinstance(decode(wire(obj)), m.SendMessage)
        return
    with pytest.raises(DecodeError) as info:
        decode(wire(obj))
    assert info.value.detail == problem


# --- the encrypted record's own structure hook ----------------------------------------------
#
# Every encrypted send carries an EncryptedMessage, so the codec structures it in one
# function (codec._encrypted_hook) and leaves everything unusual to cattrs' general
# hook. Both must take and refuse the same inputs, to the same record.

_BASE64_TEXT = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n", max_size=24
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@settings(max_examples=1000)
@given(text=st.one_of(_BASE64_TEXT, st.binary(max_size=18).map(_b64)))
def test_the_quick_base64_reading_is_the_validated_one(text: str) -> None:
    try:
        expected: bytes | None = codec._structure_base64(text, bytes)
    except codec._WrongTypeError:
        expected = None
    try:
        got: bytes | None = codec._base64(text)
    except codec._WrongTypeError:
        got = None
    assert got == expected


_JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(message=strategy_for(m.SendMessage), data=st.data())
def test_the_encrypted_records_hook_takes_and_refuses_what_the_general_one_does(
    message: m.SendMessage, data: st.DataObject
) -> None:
    if message.encrypted is None:
        return
    obj = json.loads(encode(message)[1:])["encrypted"]
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        name = data.draw(st.sampled_from([*sorted(obj), "extra"]))
        action = data.draw(st.sampled_from(["drop", "replace", "case", "pad"]))
        if action == "drop":
            obj.pop(name, None)
        elif action == "replace":
            obj[name] = data.draw(_JSON_VALUES)
        elif type(obj.get(name)) is str:
            obj[name] = obj[name].upper() if action == "case" else obj[name] + "="
    quick = codec.converter.get_structure_hook(EncryptedMessage)
    general = codec._explaining_converter().get_structure_hook(EncryptedMessage)
    try:
        expected = general(obj, EncryptedMessage)
    except Exception:
        with pytest.raises(Exception):  # noqa: B017 (any refusal: decode words it)
            quick(obj, EncryptedMessage)
        return
    assert quick(obj, EncryptedMessage) == expected
    # And as a send's member (the optional record's hook), None included.
    optional = codec.converter.get_structure_hook(EncryptedMessage | None)
    assert optional(obj, EncryptedMessage | None) == expected
    assert optional(None, EncryptedMessage | None) is None


@settings(max_examples=300)
@given(message=strategy_for(m.MessageDelivered).map(lambda delivered: delivered.message))
def test_a_chat_messages_written_out_hook_writes_what_cattrs_generates(
    message: m.ChatMessage,
) -> None:
    added = cattrs.gen.override(omit_if_default=True)
    generated = cattrs.gen.make_dict_unstructure_fn(
        m.ChatMessage, codec.converter, encrypted=added, ciphertext=added
    )
    hook = codec.converter.get_unstructure_hook(m.ChatMessage)
    assert hook.__qualname__.startswith("_chat_message_hook")  # (in use: every field known)
    assert json.dumps(hook(message)) == json.dumps(generated(message))  # (member order too)
    # The messages that hold one use it.
    delivered = m.MessageDelivered(message=message)
    assert codec.converter.unstructure(delivered)["message"] == generated(message)
    history = m.History(request_id=1, messages=(message,))
    assert codec.converter.unstructure(history)["messages"] == [generated(message)]


@given(chat_messages.filter(lambda x: not x.encrypted))
def test_a_text_message_read_back_from_a_store_is_the_message_checked(
    message: m.ChatMessage,
) -> None:
    # ChatMessage.stored skips the checks (a refill builds tens of thousands): it
    # must build the same message, every field set, and encode the same.
    fields = {"id", "sender", "to", "text", "sent_at"}
    stored = m.ChatMessage.stored(**{name: getattr(message, name) for name in fields})
    assert stored == message and hash(stored) == hash(message)
    assert attrs.asdict(stored) == attrs.asdict(message)
    assert {field.name for field in attrs.fields(m.ChatMessage)} == fields | {
        "encrypted",
        "ciphertext",
    }
