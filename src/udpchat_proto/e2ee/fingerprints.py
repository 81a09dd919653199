"""A device's fingerprint: its Ed25519 key as groups of digits a person reads aloud.

Six groups of five digits (about 100 bits): SHA-256 of a context string and the
key, cut in six 5-byte pieces, each taken modulo 100,000 (Signal's safety numbers
are built the same way). Digits, not hex, because people compare them over the
phone; a hash, so that every group is as uniform as the next.
"""

from __future__ import annotations

import hashlib
from typing import Final

from ..chat.validation import ValidationError
from ..errors import ErrorCode
from .records import PUBLIC_KEY_SIZE

__all__ = ["FINGERPRINT_GROUPS", "device_fingerprint", "normalize_fingerprint"]

FINGERPRINT_GROUPS: Final = 6
_CONTEXT: Final = b"udpchat-e2ee-fingerprint-v1\x00"


def device_fingerprint(ed25519: bytes) -> str:
    """``"12345 67890 ..."``: the fingerprint of a device's Ed25519 key (32 bytes)."""
    if len(ed25519) != PUBLIC_KEY_SIZE:
        raise ValidationError(ErrorCode.BAD_REQUEST, "an Ed25519 key is 32 bytes")
    digest = hashlib.sha256(_CONTEXT + ed25519).digest()
    return " ".join(
        f"{int.from_bytes(digest[5 * i : 5 * i + 5], 'big') % 100_000:05d}"
        for i in range(FINGERPRINT_GROUPS)
    )


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as a person typed it (any spacing), in :func:`device_fingerprint`'s
    form, so that the two compare; unchanged if it holds anything but digits."""
    digits = "".join(text.split())
    if not digits.isdigit() or len(digits) != 5 * FINGERPRINT_GROUPS:
        return text
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))
