"""What can go wrong in end-to-end encryption, typed.

Remote input never raises: a key share or a message that cannot be used comes
back as :class:`Dropped`, with one stable reason (part of the protocol: a client
counts and logs them, never shows the raw bytes). A server that states a device
set no honest server states (a forged signature, the keys of a known device
changed) raises :class:`DeviceTrustError` from the planner: the client stops
rather than encrypt for a device it cannot trust. A caller's mistake raises
:class:`~udpchat_proto.LocalProtocolError`, as everywhere in the core.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import attrs

from ..errors import ProtocolError

__all__ = ["CRYPTO_DROP_REASONS", "CryptoDropReason", "DeviceTrustError", "Dropped"]

CryptoDropReason = Literal[
    "malformed",
    "not_for_this_device",
    "untrusted_sender",
    "key_changed",
    "olm_failed",
    "unknown_session",
    "bad_ciphertext",
    "replayed",
    "wrong_conversation",
    "invalid_text",
]
"""Why a key share or a message is dropped:

* ``malformed``: its plaintext is not what the protocol says (or its record is not);
* ``not_for_this_device``: a key share addressed to another device or user;
* ``untrusted_sender``: the sender's device record does not verify, or a key
  share's payload names other keys than the Olm session's;
* ``key_changed``: the sender's device id is known with other keys (a device's
  keys never change: the server, or someone, is lying);
* ``olm_failed``: the Olm layer refused it (tampered, or no session opens it);
* ``unknown_session``: a message whose Megolm session this device was never given
  (the failure the design makes impossible: a test counts it);
* ``bad_ciphertext``: the Megolm layer refused it (tampered, or forged);
* ``replayed``: a message delivered under another message id than the one its
  plaintext names (a server replaying a ciphertext as a new message);
* ``wrong_conversation``: it decrypts, but names another conversation or sender;
* ``invalid_text``: it decrypts to a text the sending rules forbid.
"""

CRYPTO_DROP_REASONS: Final[tuple[CryptoDropReason, ...]] = get_args(CryptoDropReason)
"""Every :data:`CryptoDropReason`."""


@attrs.frozen(kw_only=True)
class Dropped:
    """A key share or message this device cannot use: never shown, counted."""

    reason: CryptoDropReason
    detail: str = ""
    """For a log line (never shown to a user, never the plaintext)."""
    sender: str = ""
    sender_device: bytes = b""


class DeviceTrustError(ProtocolError):
    """The server stated a device this device will not encrypt for: its record's
    signature does not verify, or its id is known with other keys.

    Attributes:
        user, device_id: the device.
    """

    def __init__(self, user: str, device_id: bytes, message: str) -> None:
        super().__init__(f"{user}'s device {device_id.hex()}: {message}")
        self.user = user
        self.device_id = device_id
