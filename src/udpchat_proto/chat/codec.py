"""Encoding of application messages to bytes and back.

Wire form (see ``docs/PROTOCOL.md``)::

    +---------+---------------------------------------------+
    | version | UTF-8 JSON object {"type": "<tag>", ...}    |
    | 1 byte  |                                             |
    +---------+---------------------------------------------+

The version byte lets a peer tell a newer protocol (a higher version) from garbage.
Byte strings are lowercase hex (ciphertexts base64: they are most of an encrypted
send's bytes), timestamps integer microseconds since the Unix epoch (UTC),
enumerations their string value, lists JSON arrays. The key shares of one message
name their sender's record once, in the message's ``sender_keys`` member.

One configured cattrs converter does all the structuring; the attrs validators of
:mod:`udpchat_proto.chat.messages` enforce the rules. :func:`decode` raises
:class:`~udpchat_proto.errors.DecodeError` for every bad input and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import json
import re
from collections.abc import Callable
from typing import Any, Final

import attrs
import cattrs
import cattrs.gen
import orjson
from cattrs.errors import AttributeValidationNote, IterableValidationError, IterableValidationNote

from ..e2ee.records import EncryptedMessage, KeyShare
from ..errors import DecodeError, ErrorCode
from . import messages as m
from .validation import LIST_MAX, REQUEST_ID_MAX, ValidationError

__all__ = [
    "CODEC_VERSION",
    "MAX_ENCODED_SIZE",
    "MESSAGE_TYPES",
    "SPOKEN_VERSIONS",
    "converter",
    "decode",
    "encode",
    "message_version",
]

#: The highest version byte this implementation speaks: 2, end-to-end encryption.
CODEC_VERSION: Final = 2
#: Every version byte it reads. Version 2 adds to version 1 (the e2ee requests,
#: pushes and members); a message that uses none of it is written as version 1,
#: byte for byte what a version 1 peer writes, so that a version 1 peer reads all
#: it is sent until it asks for what only version 2 has.
SPOKEN_VERSIONS: Final = (1, 2)
#: No encoded message may be larger (the largest legitimate one, a full history
#: page of escaped text, is well under it).
MAX_ENCODED_SIZE: Final = 4 * 1024 * 1024

#: Wire tag of every message class (its ``TAG``); the tag is the "type" member of
#: the object. Derived from the catalogue: a class added to a union of
#: :mod:`udpchat_proto.chat.messages` is known here too.
MESSAGE_TYPES: Final[dict[str, type[Any]]] = {cls.TAG: cls for cls in m.MESSAGE_CLASSES}
_TAGS: Final = {cls: tag for tag, cls in MESSAGE_TYPES.items()}
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
#: Made once: ``datetime.timedelta(microseconds=1)`` parses its keywords and
#: normalises a float each time (about 500 ns, three times a delivered message).
_MICROSECOND: Final = datetime.timedelta(microseconds=1)
_MAX_MICROS: Final = int(
    (datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC) - _EPOCH)
    / datetime.timedelta(microseconds=1)
)


class _WrongTypeError(Exception):
    """Raised by the structure hooks for a value of the wrong JSON type (its text is
    in the protocol's words: it may be sent back in an ``error``)."""


#: JSON's names of the values orjson makes, for refusals ("expected a string").
_JSON_NAMES: Final[dict[type[Any], str]] = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    float: "a number that is not a 64-bit integer",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), "another value")


def _strict(kind: type[Any]) -> Any:
    # cattrs' default str/int hooks coerce (str(5) == "5", int("5") == 5); a peer
    # that sends the wrong JSON type is sending garbage, so refuse instead.
    def structure(value: Any, _cls: Any) -> Any:
        if type(value) is not kind:
            raise _WrongTypeError(f"expected {_JSON_NAMES[kind]}, got {_json_name(value)}")
        return value

    return structure


def _structure_bytes(value: Any, _cls: Any) -> bytes:
    if type(value) is not str:
        raise _WrongTypeError(f"expected a hex string, got {_json_name(value)}")
    try:
        return bytes.fromhex(value)  # lengths are checked by the validators
    except ValueError:
        raise _WrongTypeError("expected a hex string") from None


def _structure_base64(value: Any, _cls: Any) -> bytes:
    if type(value) is not str:
        raise _WrongTypeError(f"expected a base64 string, got {_json_name(value)}")
    try:
        return base64.b64decode(value, validate=True)  # lengths: the validators
    except (binascii.Error, ValueError):
        raise _WrongTypeError("expected a base64 string") from None


def _base64(value: str) -> bytes:
    """``value``'s bytes if it is canonical base64, in one C call; else what
    :func:`_structure_base64` says of it. (Strict mode takes a subset of what the
    pattern and lenient decoding take, to the same bytes: padding only at the end
    and complete, the alphabet only.)"""
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except binascii.Error:
        return _structure_base64(value, bytes)


def _encrypted_hook(general: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """The structure hook of an :class:`EncryptedMessage`: every encrypted send has
    one, so the usual case (an object whose members all have their JSON types) is
    one function, with the record's own validators; anything else goes the
    ``general`` way, which refuses it as before (and says why)."""

    def structure(value: Any, cls: Any) -> Any:
        if type(value) is dict:
            conversation = value.get("conversation")
            sender = value.get("sender")
            device = value.get("sender_device")
            session = value.get("session_id")
            version = value.get("device_set_version")
            ciphertext = value.get("ciphertext")
            if (
                type(conversation) is str
                and type(sender) is str
                and type(device) is str
                and type(session) is str
                and type(version) is int
                and type(ciphertext) is str
            ):
                try:
                    return EncryptedMessage(
                        conversation=conversation,
                        sender=sender,
                        sender_device=bytes.fromhex(device),
                        session_id=bytes.fromhex(session),
                        device_set_version=version,
                        ciphertext=_base64(ciphertext),
                    )
                except (ValueError, _WrongTypeError):
                    pass  # (refused below, in the protocol's words)
        return general(value, cls)

    return structure


def _unstructure_base64(value: bytes) -> str:
    # (base64.b64encode's own call, without the Python wrapper around it)
    return binascii.b2a_base64(value, newline=False).decode("ascii")


def _unstructure_datetime(value: datetime.datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _structure_datetime(value: Any, _cls: Any) -> datetime.datetime:
    if type(value) is not int or not 0 <= value <= _MAX_MICROS:
        raise _WrongTypeError("expected microseconds since the epoch")
    return _EPOCH + _MICROSECOND * value  # (exact: integer microseconds)


def _tuple_hook(conv: cattrs.Converter, *, detailed: bool) -> Any:
    def structure(value: Any, cls: Any) -> Any:
        if type(value) is not list:
            raise _WrongTypeError(f"expected an array, got {_json_name(value)}")
        (item_type, _ellipsis) = cls.__args__
        if not detailed:
            return tuple(conv.structure(item, item_type) for item in value)
        items = []
        for index, item in enumerate(value):
            try:
                items.append(conv.structure(item, item_type))
            except Exception as exc:
                # The first bad entry is enough to say what is wrong, and where.
                note = IterableValidationNote(f"Structuring @ index {index}", index, item_type)
                exc.__notes__ = [*getattr(exc, "__notes__", ()), note]
                raise IterableValidationError("While structuring a list", [exc], cls) from None
        return tuple(items)

    return structure


def _make_converter(*, detailed: bool = False) -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=detailed, forbid_extra_keys=False)
    for kind in (str, int, bool):
        conv.register_structure_hook(kind, _strict(kind))
    conv.register_unstructure_hook(bytes, bytes.hex)
    conv.register_structure_hook(bytes, _structure_bytes)
    conv.register_unstructure_hook(datetime.datetime, _unstructure_datetime)
    conv.register_structure_hook(datetime.datetime, _structure_datetime)
    conv.register_structure_hook(ErrorCode, lambda value, _cls: ErrorCode(_strict(str)(value, str)))
    conv.register_structure_hook_func(
        lambda cls: getattr(cls, "__origin__", None) is tuple, _tuple_hook(conv, detailed=detailed)
    )

    # A record (a nested object) given anything but an object is the wrong JSON
    # type, said so, not a failure deep inside it.
    def record_hook(cls: Any) -> Any:
        inner = cattrs.gen.make_dict_structure_fn(
            cls, conv, _cattrs_forbid_extra_keys=False, _cattrs_detailed_validation=detailed
        )

        def structure(value: Any, _cls: Any) -> Any:
            if type(value) is not dict:
                raise _WrongTypeError(f"expected an object, got {_json_name(value)}")
            return inner(value, cls)

        return structure

    conv.register_structure_hook_factory(attrs.has, record_hook)
    # Ciphertexts are base64 (4 characters per 3 bytes, hex takes 6): a share is
    # most of a rotation's bytes, and a room's rotation carries hundreds.
    for cls in _BASE64_CIPHERTEXT:
        inner = cattrs.gen.make_dict_structure_fn(
            cls,
            conv,
            _cattrs_forbid_extra_keys=False,
            _cattrs_detailed_validation=detailed,
            ciphertext=cattrs.gen.override(struct_hook=_structure_base64),
        )

        def structure_record(value: Any, cls: Any, inner: Any = inner) -> Any:
            if type(value) is not dict:
                raise _WrongTypeError(f"expected an object, got {_json_name(value)}")
            return inner(value, cls)

        hook: Callable[[Any, Any], Any] = structure_record
        if cls is EncryptedMessage and not detailed:
            hook = _encrypted_hook(structure_record)
            # A send's ``encrypted`` member: None or the record, without cattrs'
            # dispatch of the optional type at every send.
            conv.register_structure_hook(
                EncryptedMessage | None,
                lambda value, _cls, hook=hook: (
                    None if value is None else hook(value, EncryptedMessage)
                ),
            )
        conv.register_structure_hook(cls, hook)
        conv.register_unstructure_hook(
            cls,
            cattrs.gen.make_dict_unstructure_fn(
                cls, conv, ciphertext=cattrs.gen.override(unstruct_hook=_unstructure_base64)
            ),
        )
    # Members version 2 added to version 1 messages are left out at their default,
    # so that a message that uses none of them is version 1's, byte for byte.
    for cls, names in _ADDED_IN_2.items():
        overrides: dict[str, Any] = {
            name: cattrs.gen.override(omit_if_default=True) for name in names
        }
        generated = cattrs.gen.make_dict_unstructure_fn(cls, conv, **overrides)
        if cls is m.ChatMessage:  # (first: the messages that hold one use its hook)
            generated = _chat_message_hook(generated, conv.get_unstructure_hook(EncryptedMessage))
        conv.register_unstructure_hook(cls, generated)
    return conv


def _chat_message_hook(
    general: Callable[[Any], Any], record: Callable[[Any], Any]
) -> Callable[[Any], Any]:
    """The unstructure hook of a :class:`~udpchat_proto.chat.messages.ChatMessage`,
    written out: every delivery has one, and the generated hook compares the record
    with its default through attrs' ``__ne__`` (two Python calls) before writing
    it. The same members in the same order (a version 2 member only when set);
    ``general``, the generated hook, if the class has other fields than these (a
    test keeps the two equal). ``record``: the hook of its encrypted record."""
    fields = tuple(field.name for field in attrs.fields(m.ChatMessage))
    if fields != ("id", "sender", "to", "text", "sent_at", "encrypted", "ciphertext"):
        return general  # (a field added: the generated hook knows it)

    def unstructure(message: m.ChatMessage) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": message.id.hex(),
            "sender": message.sender,
            "to": message.to,
            "text": message.text,
            "sent_at": _unstructure_datetime(message.sent_at),
        }
        if message.encrypted:
            obj["encrypted"] = True
        if message.ciphertext is not None:
            obj["ciphertext"] = record(message.ciphertext)
        return obj

    return unstructure


#: The records whose ``ciphertext`` is base64 on the wire.
_BASE64_CIPHERTEXT: Final = (KeyShare, EncryptedMessage)
#: The messages whose key shares name their sender's keys once, in the message's
#: ``sender_keys`` member, not in each share (every share of one is from one device).
_SHARES_OF_ONE_SENDER: Final[frozenset[type[Any]]] = frozenset(
    {m.SendMessage, m.ShareKeys, m.MessageDelivered}
)
#: Version 2's members of version 1 messages (left out when they hold their default).
_ADDED_IN_2: Final[dict[type[Any], tuple[str, ...]]] = {
    m.ChatMessage: ("encrypted", "ciphertext"),
    m.SendMessage: ("text", "encrypted", "key_shares", "staged"),
    m.ErrorResponse: ("device_set",),
    m.MessageDelivered: ("key_shares",),
}
#: The messages version 2 added.
_NEW_IN_2: Final[frozenset[type[Any]]] = frozenset(
    {
        m.UploadKeys,
        m.ShareKeys,
        m.ClaimKeys,
        m.GetDevices,
        m.KeysStored,
        m.ClaimedKeys,
        m.ConversationDevices,
        m.UserDevices,
        m.DeviceAdded,
        m.OneTimeKeysLow,
    }
)


def message_version(message: m.Message) -> int:
    """The version byte ``message`` is written with: 2 if it uses anything version
    2 added (an encrypted message, key shares, a device set), else 1."""
    if type(message) in _NEW_IN_2:
        return 2
    if isinstance(message, m.SendMessage):
        return 1 if message.encrypted is None else 2
    if isinstance(message, m.MessageDelivered):
        return 2 if message.key_shares or message.message.encrypted else 1
    if isinstance(message, m.History):
        return 2 if any(item.encrypted for item in message.messages) else 1
    if isinstance(message, m.ErrorResponse):
        return 1 if message.device_set is None else 2
    return 1


converter: Final = _make_converter()
"""The one cattrs converter of the wire format (usable to unstructure for logging)."""

# Each message class's hooks, looked up once: ``converter.structure(obj, cls)`` finds
# the hook by its dispatch on every call, a third of structuring a small request
# (about 1.8 us of 6.3) and of unstructuring an answer (0.7 of 2.0). The hooks are
# the converter's own, fetched the first time a class is used (cattrs builds them
# lazily: fetching them all here would slow every start-up), so the bytes are the
# same; no hook is registered on ``converter`` after this module has made it.
_UNSTRUCTURE_HOOKS: Final[dict[type[Any], Callable[[Any], Any]]] = {}
_STRUCTURE_HOOKS: Final[dict[type[Any], Callable[[Any, Any], Any]]] = {}


def _unstructure(message: m.Message) -> dict[str, Any]:
    cls = type(message)
    hook = _UNSTRUCTURE_HOOKS.get(cls)
    if hook is None:
        try:
            hook = converter.get_unstructure_hook(cls)
        except AttributeError:  # cattrs before 24.1: dispatched on every call
            hook = converter.unstructure
        _UNSTRUCTURE_HOOKS[cls] = hook
    return hook(message)  # type: ignore[no-any-return]


def _structure_as(obj: dict[str, Any], cls: type[Any]) -> m.Message:
    hook = _STRUCTURE_HOOKS.get(cls)
    if hook is None:
        try:
            hook = converter.get_structure_hook(cls)
        except AttributeError:  # cattrs before 24.1: dispatched on every call
            hook = converter.structure
        _STRUCTURE_HOOKS[cls] = hook
    return hook(obj, cls)  # type: ignore[no-any-return]


@functools.cache
def _explaining_converter() -> cattrs.Converter:
    """The same rules with cattrs' detailed validation, which says which field failed
    and how. It is slower, so it runs only after ``converter`` has refused a message,
    to word the refusal (never Python's exception text: it goes back on the wire);
    and it is made then, once: its hooks cost a fortieth of every CLI command's
    start-up, where nothing is refused."""
    return _make_converter(detailed=True)


#: Requests a malformed copy of which is answered (when its request id is readable).
#: Not ``ack_delivery`` (never answered) nor what only a server sends (a violation).
_ANSWERED: Final = frozenset(m.ANSWERED_REQUEST_TYPES)

_VERSION_BYTES: Final = {version: bytes([version]) for version in SPOKEN_VERSIONS}


def encode(message: m.Message) -> bytes:
    """Encode an application message.

    Args:
        message: any instance of the catalogue in :mod:`udpchat_proto.chat.messages`.

    Returns:
        The version byte (:func:`message_version`) followed by the UTF-8 JSON
        object.

    Raises:
        LocalProtocolError: ``message`` is not a catalogue message, or its encoding
            would exceed :data:`MAX_ENCODED_SIZE`.
    """
    try:
        tag = _TAGS[type(message)]
    except KeyError:
        raise ValidationError(
            ErrorCode.BAD_REQUEST, f"not a udpchat message: {type(message).__name__}"
        ) from None
    obj = _unstructure(message)
    obj["type"] = tag
    if type(message) in _SHARES_OF_ONE_SENDER:
        _hoist_sender_keys(obj)
    # orjson: compact UTF-8 JSON (what json.dumps with ensure_ascii=False and
    # compact separators writes) at a tenth of the cost.
    data = _VERSION_BYTES[message_version(message)] + orjson.dumps(obj)
    if len(data) > MAX_ENCODED_SIZE:
        raise ValidationError(ErrorCode.TOO_LARGE, f"encoded message is {len(data)} bytes")
    return data


def _hoist_sender_keys(obj: dict[str, Any]) -> None:
    """Move the key shares' ``sender_keys`` (one device's) to the message, once."""
    shares = obj.get("key_shares")
    if not shares:
        return
    keys = shares[0]["sender_keys"]
    for share in shares:
        if share.pop("sender_keys") != keys:
            raise ValidationError(
                ErrorCode.BAD_REQUEST, "the key shares of one message are from one device"
            )
    obj["sender_keys"] = keys


def _lower_sender_keys(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with its ``sender_keys`` put back in each of its key shares (what
    :func:`_hoist_sender_keys` took out); as it is if it has no shares."""
    shares = obj.get("key_shares")
    if type(shares) is not list or not shares or "sender_keys" not in obj:
        return obj  # no shares, or the refusal says what is missing or wrong
    keys = obj["sender_keys"]
    lowered = [{**share, "sender_keys": keys} if type(share) is dict else share for share in shares]
    return {**obj, "key_shares": lowered}


def decode(data: bytes) -> m.Message:
    """Decode bytes received from a peer into an application message.

    Args:
        data: exactly one encoded message (as :func:`encode` makes).

    Returns:
        The message, validated.

    Raises:
        DecodeError: for every kind of bad input, with ``reason`` one of
            ``empty``, ``too_large``, ``unsupported_version``, ``bad_version``,
            ``malformed``, ``unknown_type``, ``invalid_field``. If the input is a
            request (or of a type this version does not know, or of a newer
            version) whose ``request_id`` is readable, ``request_id`` and ``code``
            say how to answer it, and ``detail`` is the answer's text: the
            protocol's words, never Python's.
    """
    if not data:
        raise DecodeError("empty")
    if len(data) > MAX_ENCODED_SIZE:
        raise DecodeError("too_large", f"{len(data)} bytes")
    version = data[0]
    if version not in SPOKEN_VERSIONS:
        if version > CODEC_VERSION and data[1:2] == b"{":
            # A newer peer: answered (unsupported_version) if its request id is readable.
            obj, _problem = _json_object(data, "unsupported_version")
            raise _refusal(
                obj,
                None,
                ErrorCode.UNSUPPORTED_VERSION,
                f"message version {version}; this server speaks versions 1 to {CODEC_VERSION}",
                reason="unsupported_version",
            )
        raise DecodeError("bad_version", f"first byte {version}")
    obj, problem = _json_object(data, "malformed")
    if problem is None:
        return _structure(obj, "invalid_field")
    # Not strict JSON, yet its request id could be read: refused all the same, with
    # the code of the first rule it breaks (a lone surrogate in a text breaks the
    # text's: invalid_text), else bad_request.
    message = _structure(obj, "malformed")
    raise _refusal(obj, type(message), ErrorCode.BAD_REQUEST, problem, reason="malformed")


def _structure(obj: dict[str, Any], reason: str) -> m.Message:
    """``obj`` as the message its ``type`` names; DecodeError(``reason``) if it breaks a rule."""
    tag = obj.get("type")
    cls = MESSAGE_TYPES.get(tag) if type(tag) is str else None
    if cls is None:
        # A request added after this version is answered (unknown_request), not dropped.
        raise _refusal(
            obj,
            None,
            ErrorCode.UNKNOWN_REQUEST,
            _unknown_type(tag),
            reason="unknown_type" if reason == "invalid_field" else reason,
        )
    # Sizes before structure: converting a 4 MiB list only to refuse it costs
    # hundreds of milliseconds of the server's loop.
    for value in obj.values():
        if type(value) is list and len(value) > LIST_MAX:
            raise _refusal(
                obj, cls, ErrorCode.TOO_LARGE, f"lists hold at most {LIST_MAX} entries", reason
            )
    if cls in _SHARES_OF_ONE_SENDER:
        obj = _lower_sender_keys(obj)
    try:
        return _structure_as(obj, cls)
    except ValidationError as exc:
        raise _refusal(obj, cls, exc.code, str(exc), reason) from None
    except (
        _WrongTypeError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        RecursionError,
        cattrs.BaseValidationError,
        OverflowError,
    ):
        raise _refusal(obj, cls, ErrorCode.BAD_REQUEST, _explain(obj, cls), reason) from None


def _json_object(data: bytes, reason: str) -> tuple[dict[str, Any], str | None]:
    """The JSON object after the version byte, and None; or, if it is not strict JSON
    but can be read leniently, that reading and what is wrong with it.

    Raises:
        DecodeError(``reason``): there is no JSON object, even read leniently.
    """
    body = data[1:]
    try:
        # Strict RFC 8259 JSON in UTF-8 (no NaN, no lone surrogates, integers
        # within 64 bits, nesting within 1024): anything else is malformed.
        obj = orjson.loads(body)
        problem = None
    except orjson.JSONDecodeError as exc:
        try:
            obj = _lenient_object(body)
        except _TooDeepOrLongError:
            # JSON that no reader here takes whole (nested deeper, or an integer
            # longer, than they go): still answered if a request's type and id are
            # members of the outermost object.
            found = _top_level_members(body)
            tag = found.get("type")
            cls = MESSAGE_TYPES.get(tag) if type(tag) is str else None
            if "request_id" in found and cls in _ANSWERED:
                raise _refusal(found, cls, ErrorCode.BAD_REQUEST, _UNREADABLE, reason) from None
            obj = None
        if obj is None:
            raise DecodeError(reason, str(exc)[:200]) from None
        problem = _not_strict(body)
    if type(obj) is not dict:
        raise DecodeError(reason, "not a JSON object")
    return obj, problem


# The standard library's parser reads what orjson refuses: lone surrogate escapes,
# NaN and Infinity, data after the object; invalid UTF-8 arrives as lone surrogates
# (surrogateescape). Used only to find whom to answer, and with what code.
_LENIENT: Final = json.JSONDecoder(strict=False)  # control characters in strings too


class _TooDeepOrLongError(Exception):
    """The lenient reader hit one of its limits (nesting, an integer's digits): the
    bytes may be well-formed JSON all the same."""


def _lenient_object(body: bytes) -> dict[str, Any] | None:
    text = body.decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        obj, _end = _LENIENT.raw_decode(text, start)
    except RecursionError:
        raise _TooDeepOrLongError from None
    except ValueError as exc:
        if "digits" in str(exc):  # Python's limit on an integer's digits
            raise _TooDeepOrLongError from None
        return None
    return obj if type(obj) is dict else None


_UNREADABLE: Final = (
    "the message is not JSON this server can read (too deeply nested, or a number too long)"
)
_MEMBER: Final = re.compile(
    rb'"(type|request_id)"\s*:\s*(?:"([a-z_]{1,64})"|(\d{1,10})(?![\d.eE]))'
)


def _top_level_members(body: bytes) -> dict[str, Any]:
    """``type`` (a string) and ``request_id`` (an integer) where they are members of
    the outermost object, found by a scan that follows only nesting and strings (so
    that one inside a nested value or a text never counts)."""
    found: dict[str, Any] = {}
    depth, in_string, escaped = 0, False, False
    for index, byte in enumerate(body):
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # the string ends
                in_string = False
            continue
        if byte == 0x22:
            if depth == 1:
                match = _MEMBER.match(body, index)
                if match is not None and match.group(1).decode() not in found:
                    name = match.group(1).decode()
                    found[name] = match.group(2).decode() if match.group(2) else int(match.group(3))
            in_string = True
        elif byte in (0x7B, 0x5B):  # { [
            depth += 1
        elif byte in (0x7D, 0x5D):  # } ]
            depth -= 1
    return found


def _not_strict(body: bytes) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "the message is not valid UTF-8"
    return (
        "the message is not strict JSON "
        "(a lone surrogate escape, NaN, Infinity or data after the object)"
    )


def _unknown_type(tag: Any) -> str:
    if tag is None:
        return "the message has no type"
    if type(tag) is not str:
        return f"the message type must be a string, not {_json_name(tag)}"
    # json.dumps, not orjson: a lenient reading may hold lone surrogates; it escapes them.
    return f"unknown message type {json.dumps(tag)[:66]}"


def _explain(obj: dict[str, Any], cls: type[Any]) -> str:
    """What is wrong with ``obj`` as a ``cls``: the first field that fails, and how."""
    try:
        _explaining_converter().structure(obj, cls)
    except cattrs.BaseValidationError as exc:
        path, problem = _first_failure(exc)
        if isinstance(problem, KeyError):
            return f"missing field {path}"
        if isinstance(problem, _WrongTypeError | ValidationError):
            return f"field {path}: {problem}" if path else str(problem)
        return f"field {path}: invalid value" if path else "invalid message"
    except Exception:  # whatever else (a RecursionError ...): the fixed text below
        pass
    return "invalid message"


def _first_failure(exc: BaseException) -> tuple[str, BaseException]:
    """The path (``message.id``, ``friends[0].online``) and exception of the first
    failure in a detailed cattrs error."""
    path = ""
    while isinstance(exc, cattrs.BaseValidationError) and exc.exceptions:
        inner = exc.exceptions[0]
        for note in getattr(inner, "__notes__", ()):
            if isinstance(note, AttributeValidationNote):
                path += f".{note.name}"
            elif isinstance(note, IterableValidationNote):
                path += f"[{note.index}]"
        exc = inner
    return path.lstrip("."), exc


def _refusal(
    obj: dict[str, Any], cls: type[Any] | None, code: ErrorCode, detail: str, reason: str
) -> DecodeError:
    """The DecodeError for ``obj``; with ``request_id`` and ``code`` if it is to be answered.

    Answered: a request (``cls`` None: a type unknown here, maybe a later version's
    request) whose request id is readable, an integer in 0..2^32-1. An id outside
    that range cannot be echoed (an answer carrying it would be malformed itself),
    so such a message is not answered at all.
    """
    # A lenient reading may hold lone surrogates, and the text may be sent: escape them.
    error = DecodeError(reason, detail.encode("utf-8", "backslashreplace").decode()[:200])
    request_id = obj.get("request_id")
    if (
        (cls is None or cls in _ANSWERED)
        and type(request_id) is int
        and 0 <= request_id <= REQUEST_ID_MAX
    ):
        error.request_id = request_id
        error.code = code
    return error


def message_fields(cls: type[Any]) -> tuple[str, ...]:
    """The wire member names of a message class (for documentation and tests)."""
    return tuple(a.name for a in attrs.fields(cls))
