"""Encoding of application messages to bytes and back.

Wire form (see ``docs/PROTOCOL.md``)::

    +---------+---------------------------------------------+
    | version | UTF-8 JSON object {"type": "<tag>", ...}    |
    | 1 byte  |                                             |
    +---------+---------------------------------------------+

The version byte lets a peer tell a newer protocol (a higher version) from garbage.
Byte strings are lowercase hex, timestamps are integer microseconds since the Unix
epoch (UTC), enumerations their string value, lists JSON arrays.

One configured cattrs converter does all the structuring; the attrs validators of
:mod:`udpchat_proto.chat.messages` enforce the rules. :func:`decode` raises
:class:`~udpchat_proto.errors.DecodeError` for every bad input and nothing else.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

import attrs
import cattrs
import orjson

from ..errors import DecodeError, ErrorCode
from . import messages as m
from .validation import LIST_MAX, ValidationError

__all__ = [
    "CODEC_VERSION",
    "MAX_ENCODED_SIZE",
    "MESSAGE_TYPES",
    "converter",
    "decode",
    "encode",
]

#: The version byte this implementation speaks.
CODEC_VERSION: Final = 1
#: No encoded message may be larger (the largest legitimate one, a full history
#: page of escaped text, is well under it).
MAX_ENCODED_SIZE: Final = 4 * 1024 * 1024

#: Wire tag of every message class (its ``TAG``); the tag is the "type" member of
#: the object. Derived from the catalogue: a class added to a union of
#: :mod:`udpchat_proto.chat.messages` is known here too.
MESSAGE_TYPES: Final[dict[str, type[Any]]] = {cls.TAG: cls for cls in m.MESSAGE_CLASSES}
_TAGS: Final = {cls: tag for tag, cls in MESSAGE_TYPES.items()}
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MAX_MICROS: Final = int(
    (datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC) - _EPOCH)
    / datetime.timedelta(microseconds=1)
)


class _WrongTypeError(Exception):
    """Raised by the structure hooks for a value of the wrong JSON type."""


def _strict(kind: type[Any]) -> Any:
    # cattrs' default str/int hooks coerce (str(5) == "5", int("5") == 5); a peer
    # that sends the wrong JSON type is sending garbage, so refuse instead.
    def structure(value: Any, _cls: Any) -> Any:
        if type(value) is not kind:
            raise _WrongTypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return structure


def _structure_bytes(value: Any, _cls: Any) -> bytes:
    if type(value) is not str:
        raise _WrongTypeError("expected a hex string")
    return bytes.fromhex(value)  # ValueError on bad hex; lengths are checked by validators


def _unstructure_datetime(value: datetime.datetime) -> int:
    return (value - _EPOCH) // datetime.timedelta(microseconds=1)


def _structure_datetime(value: Any, _cls: Any) -> datetime.datetime:
    if type(value) is not int or not 0 <= value <= _MAX_MICROS:
        raise _WrongTypeError("expected microseconds since the epoch")
    return _EPOCH + datetime.timedelta(microseconds=value)


def _structure_tuple(value: Any, cls: Any) -> Any:
    if type(value) is not list:
        raise _WrongTypeError("expected a list")
    (item_type, _ellipsis) = cls.__args__
    return tuple(converter.structure(item, item_type) for item in value)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=False, forbid_extra_keys=False)
    for kind in (str, int, bool):
        conv.register_structure_hook(kind, _strict(kind))
    conv.register_unstructure_hook(bytes, bytes.hex)
    conv.register_structure_hook(bytes, _structure_bytes)
    conv.register_unstructure_hook(datetime.datetime, _unstructure_datetime)
    conv.register_structure_hook(datetime.datetime, _structure_datetime)
    conv.register_structure_hook(ErrorCode, lambda value, _cls: ErrorCode(_strict(str)(value, str)))
    conv.register_structure_hook_func(
        lambda cls: getattr(cls, "__origin__", None) is tuple, _structure_tuple
    )
    return conv


converter: Final = _make_converter()
"""The one cattrs converter of the wire format (usable to unstructure for logging)."""

_VERSION_BYTE: Final = bytes([CODEC_VERSION])


def encode(message: m.Message) -> bytes:
    """Encode an application message.

    Args:
        message: any instance of the catalogue in :mod:`udpchat_proto.chat.messages`.

    Returns:
        The version byte followed by the UTF-8 JSON object.

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
    obj = converter.unstructure(message)
    obj["type"] = tag
    # orjson: compact UTF-8 JSON (what json.dumps with ensure_ascii=False and
    # compact separators writes) at a tenth of the cost.
    data = _VERSION_BYTE + orjson.dumps(obj)
    if len(data) > MAX_ENCODED_SIZE:
        raise ValidationError(ErrorCode.TOO_LARGE, f"encoded message is {len(data)} bytes")
    return data


def decode(data: bytes) -> m.Message:
    """Decode bytes received from a peer into an application message.

    Args:
        data: exactly one encoded message (as :func:`encode` makes).

    Returns:
        The message, validated.

    Raises:
        DecodeError: for every kind of bad input, with ``reason`` one of
            ``empty``, ``too_large``, ``unsupported_version``, ``bad_version``,
            ``malformed``, ``unknown_type``, ``invalid_field``. If the input
            carried a readable ``request_id`` (an invalid field, a newer version,
            a type this version does not know), ``request_id`` and ``code`` say
            how to answer it.
    """
    if not data:
        raise DecodeError("empty")
    if len(data) > MAX_ENCODED_SIZE:
        raise DecodeError("too_large", f"{len(data)} bytes")
    version = data[0]
    if version != CODEC_VERSION:
        if version > CODEC_VERSION and data[1:2] == b"{":
            # A newer peer: answered (unsupported_version) if its request id is readable.
            obj = _json_object(data, "unsupported_version", f"version {version}")
            raise _invalid(
                obj,
                ErrorCode.UNSUPPORTED_VERSION,
                f"message version {version}; this server speaks version {CODEC_VERSION}",
                reason="unsupported_version",
            )
        raise DecodeError("bad_version", f"first byte {version}")
    obj = _json_object(data, "malformed", "")
    tag = obj.get("type")
    cls = MESSAGE_TYPES.get(tag) if type(tag) is str else None
    if cls is None:
        # A request added after this version is answered (unknown_request), not dropped.
        raise _invalid(
            obj,
            ErrorCode.UNKNOWN_REQUEST,
            f"unknown message type {repr(tag)[:64]}",
            reason="unknown_type",
        )
    # Sizes before structure: converting a 4 MiB list only to refuse it costs
    # hundreds of milliseconds of the server's loop.
    for value in obj.values():
        if type(value) is list and len(value) > LIST_MAX:
            raise _invalid(obj, ErrorCode.TOO_LARGE, f"lists hold at most {LIST_MAX} entries")
    try:
        return converter.structure(obj, cls)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise _invalid(obj, exc.code, str(exc)) from None
    except (
        _WrongTypeError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        RecursionError,
        cattrs.BaseValidationError,
        OverflowError,
    ) as exc:
        raise _invalid(obj, ErrorCode.BAD_REQUEST, f"{type(exc).__name__}: {exc}"[:200]) from None


def _json_object(data: bytes, reason: str, detail: str) -> dict[str, Any]:
    """The JSON object after the version byte; DecodeError(``reason``) if there is none."""
    try:
        # Strict RFC 8259 JSON in UTF-8 (no NaN, no lone surrogates, integers
        # within 64 bits, nesting within 1024): anything else is malformed.
        obj = orjson.loads(data[1:])
    except orjson.JSONDecodeError as exc:
        raise DecodeError(reason, detail or str(exc)[:200]) from None
    if type(obj) is not dict:
        raise DecodeError(reason, detail or "not a JSON object")
    return obj


def _invalid(
    obj: dict[str, Any], code: ErrorCode, detail: str, *, reason: str = "invalid_field"
) -> DecodeError:
    error = DecodeError(reason, detail)
    request_id = obj.get("request_id")
    if type(request_id) is int and 0 <= request_id <= 2**32 - 1:
        error.request_id = request_id
        error.code = code
    return error


def message_fields(cls: type[Any]) -> tuple[str, ...]:
    """The wire member names of a message class (for documentation and tests)."""
    return tuple(a.name for a in attrs.fields(cls))
