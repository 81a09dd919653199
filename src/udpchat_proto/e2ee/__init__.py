"""End-to-end encryption: the server relays what it cannot read (sans-IO).

Every conversation is encrypted by its sending device with a Megolm session whose
key reaches every device of every member as an Olm-encrypted key share, carried
in each device's ordered, exactly-once stream ahead of the first message that
needs it. The cryptography is vodozemac's (Matrix's audited Rust Olm and Megolm);
this package holds the bookkeeping around it: the device (its Olm account and the
keys it uploads), the Olm sessions to other devices, the group sessions and their
rotation, the planner that decides what a send needs, decryption with its checks,
and the state saved to the profile. It opens no socket and reads no clock (``at``,
the wall-clock time, is passed in); vodozemac draws its own randomness from the
operating system, the one exception to the core's injected randomness.

``docs/E2EE.md`` has the design and its reasons; ``docs/PROTOCOL.md`` the wire
("End-to-end encryption", draft); a device's way round::

    state = CryptoState.create(user, device_id)            # at login
    upload = state.keys_to_upload(published_one_time_keys=0)
    ...                                                    # server stores it
    state.mark_keys_published()
    plan = state.plan_send(device_set, at)                 # the server's device set
    out = state.encrypt(device_set, text, message_id, at, claimed)
    state.accepted(out)                                    # the server took it
    state.receive_key_share(share)                         # KeyShareReceived | Dropped
    state.decrypt(message, message_id)                     # Decrypted | Dropped
    data = state.to_bytes(pickle_key)                      # under the profile's lock

The modules behind it:

================  ================================================================
``records``       the wire records (device keys, one-time keys, device sets, key
                  shares, encrypted messages), the bytes that are signed, the
                  sizes of keys and ids
``device``        the Olm account's records: signed keys, uploads, top-up
``groups``        Megolm sessions: outbound with its rotation, inbound with replays
``payloads``      the plaintexts inside Olm and Megolm
``state``         :class:`CryptoState`: plan, encrypt, receive, decrypt, save, load
``fingerprints``  a device's Ed25519 key as groups of digits
``errors``        :class:`Dropped` and its stable reasons, :class:`DeviceTrustError`
``olm``           the one door to vodozemac, typed
================  ================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._lazy import lazy_exports

if TYPE_CHECKING:  # (the same names as _EXPORTS, for type checkers)
    from .device import ONE_TIME_KEYS_TARGET, verify_device_keys, verify_one_time_key
    from .errors import CRYPTO_DROP_REASONS, CryptoDropReason, DeviceTrustError, Dropped
    from .fingerprints import device_fingerprint, normalize_fingerprint
    from .groups import ROTATE_AFTER_MESSAGES, ROTATE_AFTER_SECONDS, DeviceRef
    from .records import (
        DEVICE_ID_SIZE,
        MAX_KEY_SHARE,
        MAX_MESSAGE_CIPHERTEXT,
        PICKLE_KEY_SIZE,
        PUBLIC_KEY_SIZE,
        SESSION_ID_SIZE,
        SIGNATURE_SIZE,
        ClaimedKey,
        DeviceKeys,
        DeviceSet,
        EncryptedMessage,
        KeyShare,
        KeysUpload,
        OneTimeKey,
        check_conversation,
        direct_conversation,
    )
    from .state import (
        CryptoState,
        Decrypted,
        KeyShareReceived,
        KnownDevice,
        Outgoing,
        SendPlan,
        StateError,
    )

#: Where each public name lives: imported at its first use (``udpchat_proto/_lazy.py``).
#: The message catalogue needs only ``records`` (the wire's records), so a program
#: that relays or lists but never encrypts (the server, most ``udpchat-cli``
#: commands) does not load vodozemac, the Olm and Megolm bookkeeping or the state.
_EXPORTS: Final = {
    ".records": (
        "DEVICE_ID_SIZE",
        "MAX_KEY_SHARE",
        "MAX_MESSAGE_CIPHERTEXT",
        "PICKLE_KEY_SIZE",
        "PUBLIC_KEY_SIZE",
        "SESSION_ID_SIZE",
        "SIGNATURE_SIZE",
        "ClaimedKey",
        "DeviceKeys",
        "DeviceSet",
        "EncryptedMessage",
        "KeyShare",
        "KeysUpload",
        "OneTimeKey",
        "check_conversation",
        "direct_conversation",
    ),
    ".device": ("ONE_TIME_KEYS_TARGET", "verify_device_keys", "verify_one_time_key"),
    ".errors": ("CRYPTO_DROP_REASONS", "CryptoDropReason", "DeviceTrustError", "Dropped"),
    ".fingerprints": ("device_fingerprint", "normalize_fingerprint"),
    ".groups": ("ROTATE_AFTER_MESSAGES", "ROTATE_AFTER_SECONDS", "DeviceRef"),
    ".state": (
        "CryptoState",
        "Decrypted",
        "KeyShareReceived",
        "KnownDevice",
        "Outgoing",
        "SendPlan",
        "StateError",
    ),
}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

__all__ = [
    "CRYPTO_DROP_REASONS",
    "DEVICE_ID_SIZE",
    "MAX_KEY_SHARE",
    "MAX_MESSAGE_CIPHERTEXT",
    "ONE_TIME_KEYS_TARGET",
    "PICKLE_KEY_SIZE",
    "PUBLIC_KEY_SIZE",
    "ROTATE_AFTER_MESSAGES",
    "ROTATE_AFTER_SECONDS",
    "SESSION_ID_SIZE",
    "SIGNATURE_SIZE",
    "ClaimedKey",
    "CryptoDropReason",
    "CryptoState",
    "Decrypted",
    "DeviceKeys",
    "DeviceRef",
    "DeviceSet",
    "DeviceTrustError",
    "Dropped",
    "EncryptedMessage",
    "KeyShare",
    "KeyShareReceived",
    "KeysUpload",
    "KnownDevice",
    "OneTimeKey",
    "Outgoing",
    "SendPlan",
    "StateError",
    "check_conversation",
    "device_fingerprint",
    "direct_conversation",
    "normalize_fingerprint",
    "verify_device_keys",
    "verify_one_time_key",
]
