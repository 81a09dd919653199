"""End-to-end encryption's records as the SQL stores keep them: compact JSON, byte
strings in hex, as the wire writes them (the server never reads inside them: it
keeps and hands back what devices uploaded and sent)."""

from __future__ import annotations

import typing
from typing import Any, Final, TypeVar

import attrs
import orjson

from udpchat_proto.e2ee import DeviceKeys

__all__ = ["DEVICE_CACHE_SIZE", "pack", "unpack", "unpack_device"]

_R = TypeVar("_R")


def pack(record: attrs.AttrsInstance) -> bytes:
    """``record`` (a :mod:`udpchat_proto.e2ee` record) as stored: what
    ``attrs.asdict`` with byte strings in hex makes, as JSON."""
    return orjson.dumps(_plain(record))


_NAMES: dict[type[Any], tuple[str, ...]] = {}
"""Each record class's field names, in order (``attrs.fields`` once a class)."""
_ATOMIC: Final = frozenset({str, int, bool, float, type(None)})


def _plain(record: Any) -> dict[str, Any]:
    """``attrs.asdict(record)`` with every byte string in hex, for the records'
    plain fields (a byte string, a nested record, a tuple of them, or a value
    orjson writes as it is). Written out because ``attrs.asdict`` calls its
    serializer (a Python function) for every value and recurses generically:
    30,000 instructions an encrypted message's record, against 18,000 so."""
    cls = type(record)
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(field.name for field in attrs.fields(cls))
    plain: dict[str, Any] = {}
    for name in names:
        value = getattr(record, name)
        kind = type(value)
        if kind is bytes:
            value = value.hex()
        elif kind in _ATOMIC:
            pass
        elif kind is tuple or kind is list:
            value = [_item(item) for item in value]
        elif attrs.has(kind):
            value = _plain(value)
        plain[name] = value
    return plain


def _item(value: Any) -> Any:
    """An entry of a record's tuple, as :func:`_plain` writes its fields."""
    if type(value) is bytes:
        return value.hex()
    return _plain(value) if attrs.has(type(value)) else value


def unpack(cls: type[_R], data: bytes | memoryview) -> _R:
    """The record :func:`pack` stored (checked again by its validators)."""
    return _build(cls, orjson.loads(bytes(data)))


#: How many device records :func:`unpack_device` keeps built (a few hundred bytes
#: each): every device of the busiest conversations.
DEVICE_CACHE_SIZE: Final = 4096
_devices: dict[bytes, DeviceKeys] = {}


def unpack_device(data: bytes | memoryview) -> DeviceKeys:
    """:func:`unpack` of a :class:`DeviceKeys`, remembered by its stored bytes.

    Every encrypted send reads its sender's record and every record of its
    conversation's device set, the same few again and again: building them from
    JSON (hex, the validators) was a tenth of the server's CPU an encrypted
    message. A record is immutable and the same bytes always make the same one, so
    nothing can go stale; a device that ends is only never asked for again."""
    key = bytes(data)
    found = _devices.get(key)
    if found is None:
        found = unpack(DeviceKeys, key)
        if len(_devices) >= DEVICE_CACHE_SIZE:
            del _devices[next(iter(_devices))]  # the oldest
        _devices[key] = found
    return found


_FIELDS: dict[type[Any], tuple[tuple[str, Any], ...]] = {}


def _fields(cls: type[Any]) -> tuple[tuple[str, Any], ...]:
    """Each field's name and type (``X | None`` as ``X``), worked out once per class:
    ``typing.get_type_hints`` evaluates the annotations' strings at every call, and
    was nearly half of an encrypted send's server CPU (the records of its device
    set and of its sender, read at every send)."""
    found = _FIELDS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = _FIELDS[cls] = tuple(
            (
                field.name,
                next(
                    (arg for arg in typing.get_args(hints[field.name]) if arg is not type(None)),
                    hints[field.name],
                ),
            )
            for field in attrs.fields(cls)
        )
    return found


def _build(cls: type[_R], obj: dict[str, Any]) -> _R:
    values: dict[str, Any] = {}
    for name, kind in _fields(cls):
        value = obj[name]
        if value is None:
            values[name] = None
        elif kind is bytes:
            values[name] = bytes.fromhex(value)
        elif attrs.has(kind):
            values[name] = _build(kind, value)
        else:
            values[name] = value
    return cls(**values)
