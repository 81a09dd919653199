"""End-to-end encryption's records as the SQL stores keep them: compact JSON, byte
strings in hex, as the wire writes them (the server never reads inside them: it
keeps and hands back what devices uploaded and sent)."""

from __future__ import annotations

import typing
from typing import Any, TypeVar

import attrs
import orjson

__all__ = ["pack", "unpack"]

_R = TypeVar("_R")


def _hex(_instance: object, _field: object, value: Any) -> Any:
    return value.hex() if isinstance(value, bytes) else value


def pack(record: attrs.AttrsInstance) -> bytes:
    """``record`` (a :mod:`udpchat_proto.e2ee` record) as stored."""
    return orjson.dumps(attrs.asdict(record, value_serializer=_hex))


def unpack(cls: type[_R], data: bytes | memoryview) -> _R:
    """The record :func:`pack` stored (checked again by its validators)."""
    return _build(cls, orjson.loads(bytes(data)))


def _build(cls: type[_R], obj: dict[str, Any]) -> _R:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in attrs.fields(cls):  # type: ignore[arg-type]
        kind, value = hints[field.name], obj[field.name]
        if value is None:
            values[field.name] = None
            continue
        kind = next((arg for arg in typing.get_args(kind) if arg is not type(None)), kind)
        if kind is bytes:
            values[field.name] = bytes.fromhex(value)
        elif attrs.has(kind):
            values[field.name] = _build(kind, value)
        else:
            values[field.name] = value
    return cls(**values)
