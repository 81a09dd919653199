"""Megolm group sessions: the outbound one a device sends a conversation with,
the inbound ones it reads others' (and its own) messages with.

Rotation (a new outbound session, shared afresh) happens when:

* a device it was shared with is no longer in the conversation's device set (a
  device ended, or its user left): a removed device never reads what is sent after;
* it encrypted :data:`ROTATE_AFTER_MESSAGES` messages, or is
  :data:`ROTATE_AFTER_SECONDS` old: the damage of a leaked session key is bounded
  (Matrix's defaults, ``rotation_period_msgs`` 100 and a week).

Inbound sessions are kept, keyed by (conversation, sender, sender device, session id),
so that history decrypts later; each remembers which message id used each of its
indices, so that a replay under another id is caught.
"""

from __future__ import annotations

from typing import Final

import attrs
import vodozemac

from .olm import b64decode

__all__ = [
    "ROTATE_AFTER_MESSAGES",
    "ROTATE_AFTER_SECONDS",
    "DeviceRef",
    "InboundGroup",
    "InboundKey",
    "OutboundGroup",
]

ROTATE_AFTER_MESSAGES: Final = 100
ROTATE_AFTER_SECONDS: Final = 7 * 24 * 3600.0

DeviceRef = tuple[str, bytes]
"""A device: (user, device id)."""
InboundKey = tuple[str, str, bytes, bytes]
"""An inbound session's key: (conversation, sender, sender device id, session id).

The sender's user is part of it: a device id is the server's to state, and a
server that stated one id for two users must not let the one's shares replace
the other's sessions."""


@attrs.define(kw_only=True, eq=False)
class OutboundGroup:
    """This device's Megolm session for one conversation."""

    conversation: str
    session: vodozemac.GroupSession
    created_at: float
    """When it was made (the caller's ``at``: POSIX seconds)."""
    sent_to: set[DeviceRef] = attrs.Factory(set)
    """Every device a share of it was made for (sent or not: a refused send's
    shares count, so that rotation errs on the side of a new key)."""
    delivered: set[DeviceRef] = attrs.Factory(set)
    """The devices whose share the server accepted (never shared again)."""

    @property
    def session_id(self) -> bytes:
        """The session's id: its Ed25519 public key, 32 bytes."""
        return b64decode(self.session.session_id)

    def expired(self, at: float) -> bool:
        """Whether it has done its time (:data:`ROTATE_AFTER_MESSAGES` or
        :data:`ROTATE_AFTER_SECONDS`). A time before its making (a clock stepped
        back, or one that was ahead when it was made) expires it too: otherwise a
        session made under a clock years ahead would never age."""
        return (
            self.session.message_index >= ROTATE_AFTER_MESSAGES
            or not 0 <= at - self.created_at < ROTATE_AFTER_SECONDS
        )


@attrs.define(kw_only=True, eq=False)
class InboundGroup:
    """A Megolm session this device decrypts with (another device's, or its own)."""

    conversation: str
    sender: str
    sender_device: bytes
    session: vodozemac.InboundGroupSession
