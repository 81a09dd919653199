"""End-to-end encryption's records as the SQL stores keep them: compact JSON, byte
strings in hex, as the wire writes them (the server never reads inside them: it
keeps and hands back what devices uploaded and sent); and an encrypted message's
device set, as its row keeps it (:func:`pack_devices`)."""

from __future__ import annotations

import typing
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeVar

import attrs
import orjson

from udpchat_proto.chat import sealed_size
from udpchat_proto.e2ee import DEVICE_ID_SIZE, DeviceKeys, EncryptedMessage, KeyShare

__all__ = [
    "DEVICE_CACHE_SIZE",
    "has_device",
    "pack",
    "pack_devices",
    "sealed_size_of",
    "unpack",
    "unpack_device",
    "unpack_devices",
]

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


def pack_devices(devices: Iterable[bytes]) -> bytes:
    """The devices an encrypted message is stored for, as its row keeps them
    (``messages.devices``): their ids (:data:`~udpchat_proto.e2ee.DEVICE_ID_SIZE`
    bytes each, sessions' ids) sorted, once each, end to end.

    In the row, not a table of (message, device) rows beside it: that table took
    an ``executemany`` a send (40,000 instructions on SQLite, a round trip on
    PostgreSQL) and a lookup a read, for what is a few dozen bytes read only with
    the row. A reference to a device set stored once would save those bytes again,
    but cost a lookup (or a cache kept right across nodes) a send to find it.
    Whether a device is among them is a search for its id in these bytes
    (``statements.for_device``): a match that straddled two ids would need 16
    bytes of two SHA-256 digests to equal a third, which is never.

    Raises:
        ValueError: an id of another size (its search could straddle).
    """
    ids = sorted(set(devices))
    for device in ids:
        if len(device) != DEVICE_ID_SIZE:
            raise ValueError(f"a device id is {DEVICE_ID_SIZE} bytes, not {len(device)}")
    return b"".join(ids)


def unpack_devices(data: bytes | memoryview | None) -> frozenset[bytes]:
    """The device set :func:`pack_devices` stored (empty for none)."""
    if data is None:
        return frozenset()
    packed = bytes(data)
    return frozenset(
        packed[start : start + DEVICE_ID_SIZE] for start in range(0, len(packed), DEVICE_ID_SIZE)
    )


def has_device(data: bytes | memoryview | None, device_id: bytes) -> bool:
    """Whether ``device_id`` is in the device set :func:`pack_devices` stored."""
    return device_id in unpack_devices(data)


def sealed_size_of(
    ciphertext: EncryptedMessage,
    key_shares: Sequence[tuple[bytes, KeyShare]],
    sealed_bytes: int | None,
) -> int:
    """``sealed_bytes`` as the caller counted it for its quota check (the server
    does, before the store is asked), or else counted here: the same
    :func:`~udpchat_proto.chat.sealed_size`, not worked out twice a send."""
    if sealed_bytes is not None:
        return sealed_bytes
    return sealed_size(ciphertext, (share for _device, share in key_shares))
