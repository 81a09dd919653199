"""Errors of the udpchat core.

Two families, split at the boundary (as h11 and wsproto do):

* :class:`LocalProtocolError` is raised at once when the *caller* misuses the API
  (a request before the connection is up, a name that cannot be valid, ...).
* :class:`DecodeError` is raised by the decoders when *remote* input is malformed.
  The roles catch it at their boundary, drop the datagram and count it: it never
  escapes ``receive_datagram``.

Chat-level refusals (``unknown_user``, ``not_friends`` ...) are not exceptions: they
are :class:`~udpchat_proto.chat.messages.ErrorResponse` replies carrying an
:class:`ErrorCode`.
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = [
    "DecodeError",
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
]


_CODE_SHAPE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


class ErrorCode(enum.StrEnum):
    """Stable codes of every refusal a server can answer with.

    The values are part of the wire protocol and of the CLI's JSON output: never
    rename one, only add.

    Codes are added, so a client must show one it does not know rather than fail
    on it: ``ErrorCode("some_later_code")`` (what the codec does with an ``error``
    from a later server) is a member of its own, equal to its value, though not
    among those listed. Only a code's shape is checked (lowercase letters, digits
    and ``_``, at most 64, starting with a letter).
    """

    USER_EXISTS = "user_exists"
    INVALID_USERNAME = "invalid_username"
    INVALID_PASSWORD = "invalid_password"
    INVALID_ROOM = "invalid_room"
    INVALID_TEXT = "invalid_text"
    BAD_CREDENTIALS = "bad_credentials"
    NOT_LOGGED_IN = "not_logged_in"
    UNKNOWN_USER = "unknown_user"
    NOT_FRIENDS = "not_friends"
    ALREADY_FRIENDS = "already_friends"
    ALREADY_INVITED = "already_invited"
    NO_INVITATION = "no_invitation"
    CANNOT_INVITE_SELF = "cannot_invite_self"
    UNKNOWN_ROOM = "unknown_room"
    NOT_A_MEMBER = "not_a_member"
    ROOM_FULL = "room_full"
    TOO_MANY_ROOMS = "too_many_rooms"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    BAD_REQUEST = "bad_request"
    RECIPIENT_FULL = "recipient_full"
    """The recipient has too many messages waiting that none of their devices has
    received yet (``max_waiting_per_recipient``): try again once they catch up."""
    UNAVAILABLE = "unavailable"
    """The server cannot store anything now (its disk is full, its database is
    unreachable): nothing of the request was kept; try again later."""
    INTERNAL = "internal"
    UNKNOWN_SESSION = "unknown_session"
    """``revoke_session`` named no session of the caller's."""
    UNKNOWN_MESSAGE = "unknown_message"
    """``get_message_status`` named no direct message the caller sent."""
    UNSUPPORTED_VERSION = "unsupported_version"
    """The message's version byte is one this server does not speak."""
    UNKNOWN_REQUEST = "unknown_request"
    """A request type this server does not know (added by a later version)."""
    ACCOUNT_DISABLED = "account_disabled"
    """The server's operator disabled this account: its logins are refused."""
    TOO_MANY_INVITATIONS = "too_many_invitations"
    """``invite`` with ``max_outgoing_invitations`` invitations waiting for an
    answer: cancel some first."""
    TOO_MANY_BLOCKED = "too_many_blocked"
    """``block`` of one more user than ``max_blocked_per_user``: unblock some first."""
    DEVICES_CHANGED = "devices_changed"
    """An encrypted message was shared for a device set that is not the
    conversation's current one (a device came or went): the ``error`` carries the
    current set; share with it and send again (the client does, by itself)."""
    NO_DEVICE = "no_device"
    """An encrypted direct message to a user with no logged-in device to receive
    it: nothing is stored that no one can read."""
    QUOTA_EXCEEDED = "quota_exceeded"
    """The sender's stored messages take what the server keeps per user
    (``max_stored_per_user``): nothing was stored; older messages make room once
    retention deletes them."""

    @classmethod
    def _missing_(cls, value: object) -> ErrorCode | None:
        # A later server's code: a member of its own, made as enum makes Flag's
        # pseudo-members (the str, with this class).
        if not isinstance(value, str) or _CODE_SHAPE.fullmatch(value) is None:
            return None
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        return member


class ProtocolError(Exception):
    """Base class of every error the udpchat core raises."""


class LocalProtocolError(ProtocolError):
    """The caller used the API in a way the protocol does not allow.

    Raised synchronously by command methods; the connection's state is unchanged.
    """


class DecodeError(ProtocolError):
    """Bytes from the network could not be decoded.

    This is the only exception any decoder of the core raises, whatever the input.

    Attributes:
        reason: a short stable token naming what was wrong (``"truncated"``,
            ``"unsupported_version"``, ``"unknown_type"``, ``"invalid_field"`` ...),
            used to count dropped datagrams by cause.
        detail: a human-readable explanation.
        request_id: when the input carried a valid ``request_id`` but could not be
            decoded (an invalid field, a newer version, an unknown type), that id,
            so a server can answer.
        code: with ``request_id``, the :class:`ErrorCode` to answer with.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.request_id: int | None = None
        self.code: ErrorCode | None = None
        super().__init__(f"{reason}: {detail}" if detail else reason)
