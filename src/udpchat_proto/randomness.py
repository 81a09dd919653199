"""Injectable randomness.

The core never calls a global random source: every key, connection id, token and
message id comes from a :class:`RandomSource` handed in by the caller. The default,
:class:`SystemRandomSource`, reads the operating system's CSPRNG; tests pass a
:class:`SeededRandomSource` so that a whole conversation replays identically.
"""

from __future__ import annotations

import os
import random
from typing import Protocol

__all__ = ["RandomSource", "SeededRandomSource", "SystemRandomSource"]


class RandomSource(Protocol):
    """Where the core gets random bytes."""

    def token_bytes(self, n: int) -> bytes:
        """Return ``n`` random bytes."""
        ...


class SystemRandomSource:
    """Cryptographically secure randomness from ``os.urandom`` (the default)."""

    def token_bytes(self, n: int) -> bytes:
        return os.urandom(n)


class SeededRandomSource:
    """Deterministic randomness for tests and simulations. Never use it for real keys."""

    def __init__(self, seed: int | str | bytes = 0) -> None:
        self._random = random.Random(seed)

    def token_bytes(self, n: int) -> bytes:
        return self._random.randbytes(n)
