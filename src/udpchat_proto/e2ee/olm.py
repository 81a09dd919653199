"""The one door to vodozemac: what this package uses of it, typed, and its errors.

vodozemac (Matrix's audited Rust implementation of Olm and Megolm) does every
cryptographic operation of end-to-end encryption here; nothing in this package
implements a primitive. Its wheel ships type hints (``__init__.pyi``), but they
lack the fallback key of :class:`vodozemac.Account`; the two functions below call
it through a typed wrapper so that ``mypy --strict`` checks every use.

Randomness: vodozemac draws its keys from the operating system itself. It is the
one exception to the core's injected randomness (:mod:`udpchat_proto.randomness`):
a key a test could predict would be no key, and vodozemac offers no way to inject
a source. Tests therefore check behaviour, never key bytes.

Encoding: vodozemac speaks unpadded standard base64 for keys, signatures and
session keys; the wire records of this package carry raw bytes, converted here.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final, cast

import vodozemac

__all__ = [
    "VODOZEMAC_ERRORS",
    "b64decode",
    "b64encode",
    "curve25519_from_bytes",
    "ed25519_bytes",
    "ed25519_from_bytes",
    "generate_fallback_key",
    "signature_from_bytes",
    "unpublished_fallback_key",
]

#: Every exception vodozemac raises for bad input or a failed check (each is a
#: ``ValueError``); this package turns them into its own typed results or errors.
VODOZEMAC_ERRORS: Final[tuple[type[Exception], ...]] = (
    vodozemac.KeyException,
    vodozemac.SignatureException,
    vodozemac.DecodeException,
    vodozemac.PickleException,
    vodozemac.SessionKeyDecodeException,
    vodozemac.SessionCreationException,
    vodozemac.OlmEncryptionException,
    vodozemac.OlmDecryptionException,
    vodozemac.MegolmDecryptionException,
    ValueError,  # (what a binding raises for an argument of the wrong shape)
)


def b64encode(data: bytes) -> str:
    """Unpadded standard base64, as vodozemac writes it."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: str) -> bytes:
    """The bytes of unpadded (or padded) standard base64; ``ValueError`` if not."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as error:
        raise ValueError(str(error)) from error


def ed25519_bytes(key: vodozemac.Ed25519PublicKey) -> bytes:
    """The 32 bytes of an Ed25519 public key (vodozemac gives only its base64)."""
    return b64decode(key.to_base64())


def ed25519_from_bytes(data: bytes) -> vodozemac.Ed25519PublicKey:
    """An Ed25519 public key from its 32 bytes (``KeyException`` if not one)."""
    return vodozemac.Ed25519PublicKey.from_base64(b64encode(data))


def curve25519_from_bytes(data: bytes) -> vodozemac.Curve25519PublicKey:
    """A Curve25519 public key from its 32 bytes (``KeyException`` if not one)."""
    return vodozemac.Curve25519PublicKey.from_bytes(data)


def signature_from_bytes(data: bytes) -> vodozemac.Ed25519Signature:
    """An Ed25519 signature from its 64 bytes (``SignatureException`` if not one)."""
    return vodozemac.Ed25519Signature.from_base64(b64encode(data))


def generate_fallback_key(account: vodozemac.Account) -> None:
    """Make a new fallback key (the previous one is kept until the next call, so
    that a pre-key message built on it still opens a session)."""
    account.generate_fallback_key()  # type: ignore[attr-defined]


def unpublished_fallback_key(account: vodozemac.Account) -> tuple[str, bytes] | None:
    """The fallback key not yet marked published, as (key id, 32 bytes), if any."""
    keys = cast(
        "dict[str, vodozemac.Curve25519PublicKey]",
        account.fallback_key,  # type: ignore[attr-defined]
    )
    for key_id, key in keys.items():
        return key_id, key.to_bytes()
    return None
