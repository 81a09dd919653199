"""A device: the Olm account of one login session.

The account holds the device's identity keys (Curve25519 for Olm, Ed25519 to
sign), its one-time keys and its fallback key. This module makes the records the
server keeps of them (:class:`~.records.DeviceKeys`, :class:`~.records.KeysUpload`)
and checks other devices' records.

One-time keys: the server keeps up to :data:`ONE_TIME_KEYS_TARGET` of them per
device and hands one out per claim (another device opening an Olm session). The
target is half the 50 a vodozemac account advertises (``max_number_of_one_time_keys``),
as Matrix clients keep it; the account remembers far more private keys (5,000, the
oldest forgotten first), so a key the server still holds always opens a session.
When the server runs out,
it hands out the fallback key (reusable) until the device tops up; a device
replaces its fallback key once one was used (the server says so), the previous one
still opening sessions until the next replacement.
"""

from __future__ import annotations

from typing import Final

import vodozemac

from .olm import (
    VODOZEMAC_ERRORS,
    b64decode,
    ed25519_bytes,
    ed25519_from_bytes,
    generate_fallback_key,
    signature_from_bytes,
    unpublished_fallback_key,
)
from .records import (
    DeviceKeys,
    KeysUpload,
    OneTimeKey,
    device_keys_signed_bytes,
    one_time_key_signed_bytes,
)

__all__ = [
    "ONE_TIME_KEYS_TARGET",
    "device_keys_of",
    "keys_to_upload",
    "verify_device_keys",
    "verify_one_time_key",
]

ONE_TIME_KEYS_TARGET: Final = 25
"""How many unclaimed one-time keys a device keeps on the server."""


def device_keys_of(account: vodozemac.Account, user: str, device_id: bytes) -> DeviceKeys:
    """The account's signed identity record."""
    curve = account.curve25519_key.to_bytes()
    ed = ed25519_bytes(account.ed25519_key)
    signed = device_keys_signed_bytes(user, device_id, curve, ed)
    signature = signature_bytes(account.sign(signed))
    return DeviceKeys(
        user=user, device_id=device_id, curve25519=curve, ed25519=ed, signature=signature
    )


def signature_bytes(signature: vodozemac.Ed25519Signature) -> bytes:
    """The 64 bytes of a signature."""
    return b64decode(signature.to_base64())


def keys_to_upload(
    account: vodozemac.Account,
    user: str,
    device_id: bytes,
    *,
    published_one_time_keys: int,
    new_fallback: bool,
) -> KeysUpload | None:
    """The keys to upload, given how many one-time keys the server still holds
    and whether a new fallback key is due (none yet, or a claim took it); None
    when nothing is needed.

    The account generates them now (vodozemac draws the randomness); the caller
    uploads the record, then marks them published (``mark_keys_as_published``)
    once the server has them. A record lost on the way is made again by the next
    call: the account still holds its keys, unpublished, and they are all sent.
    """
    missing = ONE_TIME_KEYS_TARGET - published_one_time_keys
    unpublished = len(account.one_time_keys)
    if missing > unpublished:
        account.generate_one_time_keys(missing - unpublished)
    if new_fallback and unpublished_fallback_key(account) is None:
        generate_fallback_key(account)
    one_time = [
        _signed(account, user, device_id, key_id, key.to_bytes(), fallback=False)
        for key_id, key in sorted(account.one_time_keys.items())
    ]
    fallback = unpublished_fallback_key(account)
    fallback_key = (
        None
        if fallback is None
        else _signed(account, user, device_id, fallback[0], fallback[1], fallback=True)
    )
    if not one_time and fallback_key is None:
        return None
    return KeysUpload(
        device_keys=device_keys_of(account, user, device_id),
        one_time_keys=tuple(one_time),
        fallback_key=fallback_key,
    )


def _signed(
    account: vodozemac.Account,
    user: str,
    device_id: bytes,
    key_id: str,
    key: bytes,
    *,
    fallback: bool,
) -> OneTimeKey:
    signed = one_time_key_signed_bytes(user, device_id, key_id, key, fallback)
    return OneTimeKey(
        key_id=key_id, key=key, fallback=fallback, signature=signature_bytes(account.sign(signed))
    )


def verify_device_keys(keys: DeviceKeys) -> bool:
    """Whether a device record's signature is its own Ed25519 key's."""
    signed = device_keys_signed_bytes(keys.user, keys.device_id, keys.curve25519, keys.ed25519)
    return _verify(keys.ed25519, signed, keys.signature)


def verify_one_time_key(device: DeviceKeys, key: OneTimeKey) -> bool:
    """Whether a one-time (or fallback) key is signed by the device it is for."""
    signed = one_time_key_signed_bytes(
        device.user, device.device_id, key.key_id, key.key, key.fallback
    )
    return _verify(device.ed25519, signed, key.signature)


def _verify(ed25519: bytes, message: bytes, signature: bytes) -> bool:
    try:
        ed25519_from_bytes(ed25519).verify_signature(message, signature_from_bytes(signature))
    except VODOZEMAC_ERRORS:
        return False
    return True
