"""The validators of every configuration class of the core, in one place.

``TransportConfig``, ``ServerConfig``, ``RateLimit`` and ``ScryptParams`` check
their fields with these, so that one rule holds everywhere: a ``bool`` is not a
number (``True`` would otherwise pass as 1), and a number must be finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["int_at_least", "positive_int", "positive_number"]

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _name(instance: object, attribute: attrs.Attribute[Any]) -> str:
    return f"{type(instance).__name__}.{attribute.name}"


def positive_number(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A finite int or float above 0 (not a bool)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value > 0
    ):
        raise ValueError(f"{_name(instance, attribute)} must be a positive number, got {value!r}")


def int_at_least(minimum: int) -> Validator:
    """An int (not a bool) of at least ``minimum``."""

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not int or value < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
            raise ValueError(f"{_name(instance, attribute)} must be {what}, got {value!r}")

    return check


positive_int: Validator = int_at_least(1)
"""An int (not a bool) of at least 1."""
