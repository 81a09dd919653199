"""The application message catalogue.

Every request, response and server push of the chat is a frozen attrs class here.
Requests carry a ``request_id`` chosen by the client; every response carries the
``request_id`` of the request it answers. Pushes are unsolicited and carry none.

Field values are validated on construction (see :mod:`udpchat_proto.chat.validation`);
names are normalised to lowercase first. The wire form of each class is described
in ``docs/PROTOCOL.md`` and produced by :mod:`udpchat_proto.chat.codec`.
"""

from __future__ import annotations

import datetime
import typing
from typing import ClassVar, Final

import attrs

from ..e2ee.records import (
    ClaimedKey,
    DeviceKeys,
    DeviceSet,
    EncryptedMessage,
    KeyShare,
    KeysUpload,
    check_conversation,
)
from ..errors import ErrorCode
from . import validation as v

__all__ = [
    "ANSWERED_REQUEST_TYPES",
    "DEVICE_PUSH_TYPES",
    "MAX_SHARES_PER_REQUEST",
    "MAX_STAGED_SHARES",
    "MESSAGE_CLASSES",
    "PUSH_TYPES",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "AcceptInvitation",
    "AcknowledgeDelivery",
    "AnsweredRequest",
    "Block",
    "Blocked",
    "CancelInvitation",
    "CaughtUp",
    "ChangePassword",
    "ChatMessage",
    "ClaimKeys",
    "ClaimedKeys",
    "ConversationDevices",
    "DeclineInvitation",
    "DeleteAccount",
    "DeliveryReceipt",
    "DeliveryReceipts",
    "DeviceAdded",
    "DevicePush",
    "ErrorResponse",
    "Friends",
    "GetDevices",
    "GetHistory",
    "GetMessageStatus",
    "History",
    "InvitationAnswered",
    "InvitationCancelled",
    "InvitationReceived",
    "Invitations",
    "Invite",
    "JoinRoom",
    "KeysStored",
    "LeaveRoom",
    "ListBlocked",
    "ListFriends",
    "ListInvitations",
    "ListMembers",
    "ListOnline",
    "ListRooms",
    "ListSessions",
    "LoggedIn",
    "LoggedOutAll",
    "Login",
    "Logout",
    "LogoutAll",
    "Message",
    "MessageAccepted",
    "MessageDelivered",
    "MessageStatus",
    "Ok",
    "OneTimeKeysLow",
    "OnlineUsers",
    "PresenceChanged",
    "Push",
    "Register",
    "Request",
    "Response",
    "Resume",
    "RevokeSession",
    "RoomInfo",
    "RoomMembers",
    "RoomMembershipChanged",
    "Rooms",
    "SendMessage",
    "SessionInfo",
    "Sessions",
    "ShareKeys",
    "Unblock",
    "Unfriend",
    "Unfriended",
    "UploadKeys",
    "UserDevice",
    "UserDevices",
    "UserPresence",
]


def _username_field() -> str:
    field: str = attrs.field(converter=v.normalize_name, validator=v.username)
    return field


def _room_field() -> str:
    field: str = attrs.field(converter=v.normalize_name, validator=v.room)
    return field


def _target_field() -> str:
    field: str = attrs.field(converter=v.normalize_name, validator=v.target)
    return field


def _request_id_field() -> int:
    field: int = attrs.field(validator=v.request_id)
    return field


def _names_field() -> tuple[str, ...]:
    return attrs.field(converter=_lower_all, validator=[v.bounded_list, _each(v.username)])


def _lower_all(value: object) -> object:
    if isinstance(value, tuple | list):
        return tuple(v.normalize_name(item) for item in value)
    return value


def _each(check: v.AttrsValidator) -> v.AttrsValidator:
    def validate(inst: object, attr: object, value: object) -> None:
        if isinstance(value, tuple):
            for item in value:
                check(inst, attr, item)

    return validate


def _list_of(kind: type) -> v.AttrsValidator:
    def validate(inst: object, attr: object, value: object) -> None:
        v.bounded_list(inst, attr, value)
        if isinstance(value, tuple):
            for item in value:
                if not isinstance(item, kind):
                    raise v.ValidationError(
                        ErrorCode.BAD_REQUEST, f"expected a list of {kind.__name__}"
                    )

    return validate


def _instance(kind: type) -> v.AttrsValidator:
    """Like attrs' ``instance_of``, refusing with the protocol's error (a record
    of the wrong kind from the network is a bad request, not a TypeError)."""

    def validate(_inst: object, _attr: object, value: object) -> None:
        if not isinstance(value, kind):
            raise v.ValidationError(ErrorCode.BAD_REQUEST, f"expected a {kind.__name__}")

    return validate


#: The most key shares one request (a ``send_message`` or ``share_keys``) carries:
#: even at their largest (2,048 bytes of Olm message, base64 on the wire) they fit
#: the server's 64 KiB receive limit with the largest message beside them.
MAX_SHARES_PER_REQUEST: Final = 16
#: The most shares staged for one message: every device of a full room but the
#: sender's (256 members of 32 login sessions each).
MAX_STAGED_SHARES: Final = 256 * 32


#: The list check of a record's key shares (made once: see :func:`_one_sender`).
_KEY_SHARES: Final = _list_of(KeyShare)


def _one_sender(inst: object, attr: object, value: object) -> None:
    """Key shares all from one device: the wire names its keys once."""
    # Made once, not per call: this runs for every message (most with no shares),
    # and building the closure each time cost about as much as the check itself.
    _KEY_SHARES(inst, attr, value)
    if isinstance(value, tuple) and any(
        share.sender_keys != value[0].sender_keys for share in value
    ):
        raise v.ValidationError(
            ErrorCode.BAD_REQUEST, "the key shares of one message are from one device"
        )


def _shares_field(inst: object, attr: object, value: object) -> None:
    _one_sender(inst, attr, value)
    if isinstance(value, tuple) and len(value) > MAX_SHARES_PER_REQUEST:
        raise v.ValidationError(
            ErrorCode.TOO_LARGE,
            f"a request carries at most {MAX_SHARES_PER_REQUEST} key shares "
            "(stage more with share_keys)",
        )


def _staged_count(_inst: object, _attr: object, value: object) -> None:
    if type(value) is not int or not 0 <= value <= MAX_STAGED_SHARES:
        raise v.ValidationError(
            ErrorCode.BAD_REQUEST, f"staged: expected 0 to {MAX_STAGED_SHARES} key shares"
        )


def _check_body(text: str, ciphertext: EncryptedMessage | None, *, encrypted: bool) -> None:
    """A message is text or ciphertext, never both nor neither."""
    if ciphertext is None:
        if encrypted:
            raise v.ValidationError(ErrorCode.BAD_REQUEST, "an encrypted message needs its record")
        v.check_text(text)
        return
    if not encrypted or text != "":
        raise v.ValidationError(
            ErrorCode.BAD_REQUEST, "an encrypted message has no text and is marked encrypted"
        )


def _check_ciphertext(record: EncryptedMessage, sender: str | None, to: str) -> None:
    """The record names the conversation of ``to`` (and ``sender``, when known):
    a record copied into another conversation is refused before it is stored."""
    if v.is_room(to):
        expected = to
    elif sender is None:
        expected = record.conversation if to in record.conversation.split(",") else ""
    elif sender == to:
        expected = ""
    else:  # (direct_conversation's, for names checked already)
        expected = f"{sender},{to}" if sender < to else f"{to},{sender}"
    if record.conversation != expected:
        raise v.ValidationError(
            ErrorCode.BAD_REQUEST, "the encrypted record names another conversation"
        )
    if sender is not None and record.sender != sender:
        raise v.ValidationError(ErrorCode.BAD_REQUEST, "the encrypted record names another sender")


# --- shared records ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ChatMessage:
    """A message as stored and delivered: the server has accepted it."""

    id: bytes = attrs.field(validator=v.message_id)
    """16 random bytes chosen by the sender; unique, and the key of de-duplication."""
    sender: str = _username_field()
    """Who sent it."""
    to: str = _target_field()
    """The recipient: a username, or a room name starting with ``#``."""
    text: str = attrs.field()
    """The text: valid UTF-8, at most 4096 bytes; empty for an encrypted message
    (the server cannot read it: the text is in ``ciphertext``)."""
    sent_at: datetime.datetime = attrs.field(validator=v.utc_datetime)
    """When the server accepted it (UTC)."""
    encrypted: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Whether it is end-to-end encrypted (``ciphertext``); False for a message
    stored as text (sent before the upgrade, or by a client that does not encrypt
    yet). Left out on the wire when False."""
    ciphertext: EncryptedMessage | None = attrs.field(
        default=None, validator=attrs.validators.optional(_instance(EncryptedMessage))
    )
    """The Megolm-encrypted record (with ``encrypted``); None for a text message."""

    def __attrs_post_init__(self) -> None:
        _check_body(self.text, self.ciphertext, encrypted=self.encrypted)
        if self.ciphertext is not None:
            _check_ciphertext(self.ciphertext, self.sender, self.to)

    @classmethod
    def stored(
        cls, *, id: bytes, sender: str, to: str, text: str, sent_at: datetime.datetime
    ) -> ChatMessage:
        """A text message as a store reads it back, not checked again: it was when
        the server accepted it, and a store holds only what its server accepted.
        (A node's ``refill_all`` builds one for every message waiting, tens of
        thousands after a bus outage: 7 µs each checked, 3 µs not.)"""
        message = object.__new__(cls)
        put = object.__setattr__  # (the class is frozen: attrs' own way round it)
        put(message, "id", id)
        put(message, "sender", sender)
        put(message, "to", to)
        put(message, "text", text)
        put(message, "sent_at", sent_at)
        put(message, "encrypted", False)
        put(message, "ciphertext", None)
        return message


@attrs.frozen(kw_only=True)
class UserPresence:
    """A user and whether they have a live connection now."""

    username: str = _username_field()
    online: bool = attrs.field(validator=attrs.validators.instance_of(bool))


@attrs.frozen(kw_only=True)
class SessionInfo:
    """One login session of the user, as ``list_sessions`` shows it."""

    session_id: bytes = attrs.field(validator=v.session_id)
    """16 bytes naming the session (derived from the token's hash: not a token)."""
    current: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    """Whether it is the session of the connection that asked."""
    created_at: datetime.datetime = attrs.field(validator=v.utc_datetime)
    """When it was logged in (UTC)."""
    last_used_at: datetime.datetime = attrs.field(validator=v.utc_datetime)
    """When it was last resumed or connected (UTC, within the hour for a live one)."""


@attrs.frozen(kw_only=True)
class DeliveryReceipt:
    """One direct message of yours that reached its recipient (in
    :class:`DeliveryReceipts`)."""

    message_id: bytes = attrs.field(validator=v.message_id)
    to: str = _username_field()
    """The recipient."""
    delivered_at: datetime.datetime = attrs.field(validator=v.utc_datetime)
    """When a session of the recipient first acknowledged it (UTC)."""


@attrs.frozen(kw_only=True)
class RoomInfo:
    """A room and how many members it has."""

    room: str = _room_field()
    members: int = attrs.field(validator=v.count)


@attrs.frozen(kw_only=True)
class UserDevice:
    """One device of a user (a login session with keys), as ``get_devices`` of a
    user shows it."""

    keys: DeviceKeys = attrs.field(validator=_instance(DeviceKeys))
    """Its identity keys, signed by itself (the fingerprint is its ``ed25519``)."""
    created_at: datetime.datetime = attrs.field(validator=v.utc_datetime)
    """When its keys were uploaded (UTC)."""


# --- requests (client -> server) ----------------------------------------------------


@attrs.frozen(kw_only=True)
class Register:
    """Create an account. Answered by :class:`Ok` or :class:`ErrorResponse`."""

    TAG: ClassVar[str] = "register"

    request_id: int = _request_id_field()
    username: str = _username_field()
    password: str = attrs.field(validator=v.password, repr=False)


@attrs.frozen(kw_only=True)
class Login:
    """Open a login session. Answered by :class:`LoggedIn` or :class:`ErrorResponse`."""

    TAG: ClassVar[str] = "login"

    request_id: int = _request_id_field()
    username: str = _username_field()
    password: str = attrs.field(validator=v.password, repr=False)


@attrs.frozen(kw_only=True)
class Resume:
    """Act as the user of an existing login session on this connection.

    Answered by :class:`LoggedIn` (with the same token) or :class:`ErrorResponse`.
    """

    TAG: ClassVar[str] = "resume"

    request_id: int = _request_id_field()
    token: bytes = attrs.field(validator=v.token, repr=False)


@attrs.frozen(kw_only=True)
class Logout:
    """End the login session of this connection. Answered by :class:`Ok`."""

    TAG: ClassVar[str] = "logout"

    request_id: int = _request_id_field()


@attrs.frozen(kw_only=True)
class ListSessions:
    """List the user's login sessions. Answered by :class:`Sessions`."""

    TAG: ClassVar[str] = "list_sessions"

    request_id: int = _request_id_field()


@attrs.frozen(kw_only=True)
class RevokeSession:
    """End one of the user's login sessions (its connections are closed).

    Answered by :class:`Ok`, or ``unknown_session``.
    """

    TAG: ClassVar[str] = "revoke_session"

    request_id: int = _request_id_field()
    session_id: bytes = attrs.field(validator=v.session_id)


@attrs.frozen(kw_only=True)
class LogoutAll:
    """End every login session of the user, this one included.

    Answered by :class:`LoggedOutAll`; the other sessions' connections are closed,
    this connection is logged out.
    """

    TAG: ClassVar[str] = "logout_all"

    request_id: int = _request_id_field()


@attrs.frozen(kw_only=True)
class ChangePassword:
    """Replace the password, given the current one; every *other* login session of
    the user ends (its connections are closed), this one goes on.

    Answered by :class:`Ok`, or ``bad_credentials`` for a wrong current password.
    """

    TAG: ClassVar[str] = "change_password"

    request_id: int = _request_id_field()
    current: str = attrs.field(validator=v.password, repr=False)
    new: str = attrs.field(validator=v.password, repr=False)


@attrs.frozen(kw_only=True)
class DeleteAccount:
    """Delete the account, given its password: its sessions, friendships,
    invitations, blocks, room memberships and the messages waiting for it go; the
    messages it sent stay in their recipients' history; the name is retired (never
    registered again). Every connection of the user ends; this one is logged out.

    Answered by :class:`Ok`, or ``bad_credentials`` for a wrong password.
    """

    TAG: ClassVar[str] = "delete_account"

    request_id: int = _request_id_field()
    password: str = attrs.field(validator=v.password, repr=False)


@attrs.frozen(kw_only=True)
class SendMessage:
    """Send a message to a friend or a room.

    Answered by :class:`MessageAccepted` once the message is committed. Sending the
    same ``message_id`` again is idempotent: the answer is the original acceptance.
    """

    TAG: ClassVar[str] = "send_message"

    request_id: int = _request_id_field()
    message_id: bytes = attrs.field(validator=v.message_id)
    to: str = _target_field()
    text: str = attrs.field(default="")
    """The text (a message the server can read); left out with ``encrypted``."""
    encrypted: EncryptedMessage | None = attrs.field(
        default=None, validator=attrs.validators.optional(_instance(EncryptedMessage))
    )
    """The end-to-end encrypted message (version 2), instead of ``text``. The server
    accepts it only at the conversation's current device set
    (``encrypted.device_set_version``), else ``devices_changed``."""
    key_shares: tuple[KeyShare, ...] = attrs.field(default=(), validator=_shares_field)
    """With ``encrypted``: the session key for each device that needs it, each
    delivered to its device ahead of this message (accepted with it, or neither).
    At most :data:`MAX_SHARES_PER_REQUEST`; more go ahead in :class:`ShareKeys`."""
    staged: int = attrs.field(default=0, validator=_staged_count)
    """How many key shares this connection staged for this message id in
    :class:`ShareKeys` requests before it (version 2): the server takes them with
    the message, or refuses it (``devices_changed``) if it does not hold them all."""

    def __attrs_post_init__(self) -> None:
        _check_body(self.text, self.encrypted, encrypted=self.encrypted is not None)
        if self.encrypted is not None:
            _check_ciphertext(self.encrypted, None, self.to)
        elif self.key_shares or self.staged:
            raise v.ValidationError(
                ErrorCode.BAD_REQUEST, "key shares go with an encrypted message"
            )


@attrs.frozen(kw_only=True)
class ShareKeys:
    """Stage key shares for an encrypted message this connection sends next
    (version 2): a room's rotation needs more shares than one request may carry.

    Answered by :class:`Ok`. The server holds them for this connection
    only, for a short while, bounded; the :class:`SendMessage` with the same
    ``message_id`` (its ``staged`` the number staged) takes them, accepted with it
    or dropped with its refusal. Nothing staged is ever delivered on its own.
    """

    TAG: ClassVar[str] = "share_keys"

    request_id: int = _request_id_field()
    message_id: bytes = attrs.field(validator=v.message_id)
    key_shares: tuple[KeyShare, ...] = attrs.field(validator=_shares_field)
    """At most :data:`MAX_SHARES_PER_REQUEST`."""


@attrs.frozen(kw_only=True)
class AcknowledgeDelivery:
    """Tell the server these delivered messages are safely received.

    Not answered: the server advances this login session's delivery cursor.
    """

    TAG: ClassVar[str] = "ack_delivery"

    message_ids: tuple[bytes, ...] = attrs.field(validator=v.message_ids)


@attrs.frozen(kw_only=True)
class GetMessageStatus:
    """Ask whether a direct message you sent has reached the recipient.

    Answered by :class:`MessageStatus`, or ``unknown_message`` (no such message,
    not yours, or a room message: status is kept for direct messages only).
    """

    TAG: ClassVar[str] = "get_message_status"

    request_id: int = _request_id_field()
    message_id: bytes = attrs.field(validator=v.message_id)


@attrs.frozen(kw_only=True)
class Invite:
    """Invite a user to be friends. Answered by :class:`Ok` or :class:`ErrorResponse`."""

    TAG: ClassVar[str] = "invite"

    request_id: int = _request_id_field()
    username: str = _username_field()


@attrs.frozen(kw_only=True)
class AcceptInvitation:
    """Accept the invitation ``username`` sent."""

    TAG: ClassVar[str] = "accept_invitation"

    request_id: int = _request_id_field()
    username: str = _username_field()


@attrs.frozen(kw_only=True)
class DeclineInvitation:
    """Decline the invitation ``username`` sent."""

    TAG: ClassVar[str] = "decline_invitation"

    request_id: int = _request_id_field()
    username: str = _username_field()


@attrs.frozen(kw_only=True)
class CancelInvitation:
    """Withdraw an invitation sent to ``username``."""

    TAG: ClassVar[str] = "cancel_invitation"

    request_id: int = _request_id_field()
    username: str = _username_field()


@attrs.frozen(kw_only=True)
class Unfriend:
    """Stop being friends with ``username``."""

    TAG: ClassVar[str] = "unfriend"

    request_id: int = _request_id_field()
    username: str = _username_field()


@attrs.frozen(kw_only=True)
class Block:
    """Block a user: ends a friendship and the invitations either way; what they
    send the blocker is refused or never shown. Answered by :class:`Ok`."""

    TAG: ClassVar[str] = "block"

    request_id: int = _request_id_field()
    username: str = _username_field()


@attrs.frozen(kw_only=True)
class Unblock:
    """Stop blocking a user (nothing ended comes back). Answered by :class:`Ok`."""

    TAG: ClassVar[str] = "unblock"

    request_id: int = _request_id_field()
    username: str = _username_field()


@attrs.frozen(kw_only=True)
class ListBlocked:
    """List the users the caller blocks. Answered by :class:`Blocked`."""

    TAG: ClassVar[str] = "list_blocked"

    request_id: int = _request_id_field()


@attrs.frozen(kw_only=True)
class ListInvitations:
    """Answered by :class:`Invitations`."""

    TAG: ClassVar[str] = "list_invitations"

    request_id: int = _request_id_field()


@attrs.frozen(kw_only=True)
class ListFriends:
    """Answered by :class:`Friends`."""

    TAG: ClassVar[str] = "list_friends"

    request_id: int = _request_id_field()


@attrs.frozen(kw_only=True)
class ListOnline:
    """Answered by :class:`OnlineUsers`."""

    TAG: ClassVar[str] = "list_online"

    request_id: int = _request_id_field()


@attrs.frozen(kw_only=True)
class GetHistory:
    """The last ``limit`` messages with a friend or in a room, oldest first; with
    ``before``, the last ones older than that message (a page further back).

    Answered by :class:`History`.
    """

    TAG: ClassVar[str] = "get_history"

    request_id: int = _request_id_field()
    peer: str = _target_field()
    limit: int = attrs.field(default=20, validator=v.history_limit)
    before: bytes | None = attrs.field(
        default=None, validator=attrs.validators.optional(v.message_id)
    )
    """A message id of this conversation: only messages older than it (None: the
    newest)."""


@attrs.frozen(kw_only=True)
class JoinRoom:
    """Join a room, creating it if needed. Answered by :class:`Ok`."""

    TAG: ClassVar[str] = "join_room"

    request_id: int = _request_id_field()
    room: str = _room_field()


@attrs.frozen(kw_only=True)
class LeaveRoom:
    """Leave a room. Answered by :class:`Ok`."""

    TAG: ClassVar[str] = "leave_room"

    request_id: int = _request_id_field()
    room: str = _room_field()


@attrs.frozen(kw_only=True)
class ListRooms:
    """The rooms this user is in. Answered by :class:`Rooms`."""

    TAG: ClassVar[str] = "list_rooms"

    request_id: int = _request_id_field()


@attrs.frozen(kw_only=True)
class ListMembers:
    """The members of a room with presence. Answered by :class:`RoomMembers`."""

    TAG: ClassVar[str] = "list_members"

    request_id: int = _request_id_field()
    room: str = _room_field()


@attrs.frozen(kw_only=True)
class UploadKeys:
    """Upload this device's keys (version 2): at login its record, one-time keys
    and a fallback key; later, more one-time keys or a new fallback key.

    Answered by :class:`KeysStored`, or ``bad_request`` for keys that are not this
    session's or whose signatures do not verify.
    """

    TAG: ClassVar[str] = "upload_keys"

    request_id: int = _request_id_field()
    keys: KeysUpload = attrs.field(validator=_instance(KeysUpload))


@attrs.frozen(kw_only=True)
class ClaimKeys:
    """Claim a key of each of these devices, to open an Olm session to it
    (version 2). Answered by :class:`ClaimedKeys`."""

    TAG: ClassVar[str] = "claim_keys"

    request_id: int = _request_id_field()
    devices: tuple[bytes, ...] = attrs.field(
        validator=[v.bounded_list, _each(v.session_id)],
    )
    """Device ids (a device id is its login session's id)."""


@attrs.frozen(kw_only=True)
class GetDevices:
    """The devices of a conversation (``conversation``: its :class:`DeviceSet`,
    answered by :class:`ConversationDevices`) or of a user (``user``: answered by
    :class:`UserDevices`), exactly one of them (version 2).

    A conversation is one of the caller's (a room it is in, or a direct one with a
    friend); a user is the caller, a friend or a room co-member: else
    ``not_a_member`` or ``not_friends``.
    """

    TAG: ClassVar[str] = "get_devices"

    request_id: int = _request_id_field()
    conversation: str | None = attrs.field(default=None)
    user: str | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(v.normalize_name),
        validator=attrs.validators.optional(v.username),
    )

    @conversation.validator
    def _check_conversation(self, _attribute: object, value: object) -> None:
        if value is not None:
            try:
                check_conversation(value)
            except v.ValidationError as exc:
                raise v.ValidationError(ErrorCode.BAD_REQUEST, str(exc)) from None

    def __attrs_post_init__(self) -> None:
        if (self.conversation is None) == (self.user is None):
            raise v.ValidationError(
                ErrorCode.BAD_REQUEST, "get_devices names a conversation or a user"
            )


# --- responses (server -> client) ---------------------------------------------------


@attrs.frozen(kw_only=True)
class Ok:
    """The request succeeded and has nothing more to say."""

    TAG: ClassVar[str] = "ok"

    request_id: int = _request_id_field()


@attrs.frozen(kw_only=True)
class ErrorResponse:
    """The request was refused.

    ``code`` is stable and machine-readable; ``message`` is for humans.
    """

    TAG: ClassVar[str] = "error"

    request_id: int = _request_id_field()
    code: ErrorCode = attrs.field(validator=attrs.validators.instance_of(ErrorCode))
    message: str = attrs.field(validator=v.utf8_text)
    """Any text, valid UTF-8 (a lone surrogate from the network would not re-encode)."""
    device_set: DeviceSet | None = attrs.field(
        default=None, validator=attrs.validators.optional(_instance(DeviceSet))
    )
    """With ``devices_changed``: the conversation's current device set, to share
    with and send again (version 2). Left out on the wire when None."""


@attrs.frozen(kw_only=True)
class LoggedIn:
    """Answer to :class:`Login` and :class:`Resume`: who you are now."""

    TAG: ClassVar[str] = "logged_in"

    request_id: int = _request_id_field()
    username: str = _username_field()
    token: bytes = attrs.field(validator=v.token, repr=False)
    """The login session's token: present it in :class:`Resume` on a later connection."""


@attrs.frozen(kw_only=True)
class MessageAccepted:
    """Answer to :class:`SendMessage`: the message is committed."""

    TAG: ClassVar[str] = "message_accepted"

    request_id: int = _request_id_field()
    message_id: bytes = attrs.field(validator=v.message_id)
    sent_at: datetime.datetime = attrs.field(validator=v.utc_datetime)


@attrs.frozen(kw_only=True)
class MessageStatus:
    """Answer to :class:`GetMessageStatus`."""

    TAG: ClassVar[str] = "message_status"

    request_id: int = _request_id_field()
    message_id: bytes = attrs.field(validator=v.message_id)
    to: str = _username_field()
    delivered_at: datetime.datetime | None = attrs.field(
        validator=attrs.validators.optional(v.utc_datetime)
    )
    """When a session of the recipient first acknowledged it (UTC); None while it
    is only stored."""


@attrs.frozen(kw_only=True)
class Invitations:
    """Answer to :class:`ListInvitations`."""

    TAG: ClassVar[str] = "invitations"

    request_id: int = _request_id_field()
    incoming: tuple[str, ...] = _names_field()
    outgoing: tuple[str, ...] = _names_field()


@attrs.frozen(kw_only=True)
class Sessions:
    """Answer to :class:`ListSessions`: newest first."""

    TAG: ClassVar[str] = "sessions"

    request_id: int = _request_id_field()
    sessions: tuple[SessionInfo, ...] = attrs.field(validator=_list_of(SessionInfo))


@attrs.frozen(kw_only=True)
class LoggedOutAll:
    """Answer to :class:`LogoutAll`: how many sessions ended."""

    TAG: ClassVar[str] = "logged_out_all"

    request_id: int = _request_id_field()
    ended: int = attrs.field(validator=v.count)


@attrs.frozen(kw_only=True)
class Blocked:
    """Answer to :class:`ListBlocked` (sorted)."""

    TAG: ClassVar[str] = "blocked"

    request_id: int = _request_id_field()
    usernames: tuple[str, ...] = _names_field()


@attrs.frozen(kw_only=True)
class Friends:
    """Answer to :class:`ListFriends`."""

    TAG: ClassVar[str] = "friends"

    request_id: int = _request_id_field()
    friends: tuple[UserPresence, ...] = attrs.field(validator=_list_of(UserPresence))


@attrs.frozen(kw_only=True)
class OnlineUsers:
    """Answer to :class:`ListOnline`."""

    TAG: ClassVar[str] = "online_users"

    request_id: int = _request_id_field()
    usernames: tuple[str, ...] = _names_field()


@attrs.frozen(kw_only=True)
class History:
    """Answer to :class:`GetHistory`: oldest first."""

    TAG: ClassVar[str] = "history"

    request_id: int = _request_id_field()
    messages: tuple[ChatMessage, ...] = attrs.field(validator=_list_of(ChatMessage))


@attrs.frozen(kw_only=True)
class Rooms:
    """Answer to :class:`ListRooms`."""

    TAG: ClassVar[str] = "rooms"

    request_id: int = _request_id_field()
    rooms: tuple[RoomInfo, ...] = attrs.field(validator=_list_of(RoomInfo))


@attrs.frozen(kw_only=True)
class RoomMembers:
    """Answer to :class:`ListMembers`."""

    TAG: ClassVar[str] = "room_members"

    request_id: int = _request_id_field()
    room: str = _room_field()
    members: tuple[UserPresence, ...] = attrs.field(validator=_list_of(UserPresence))


@attrs.frozen(kw_only=True)
class KeysStored:
    """Answer to :class:`UploadKeys`: what the server holds of this device now."""

    TAG: ClassVar[str] = "keys_stored"

    request_id: int = _request_id_field()
    one_time_keys: int = attrs.field(validator=v.count)
    """How many one-time keys it holds (the device uploads more below 25)."""
    fallback_used: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    """Whether a claim took the fallback key (the device uploads a new one)."""


@attrs.frozen(kw_only=True)
class ClaimedKeys:
    """Answer to :class:`ClaimKeys`: a key of each device that has one (a device
    ended, or never uploaded, is left out)."""

    TAG: ClassVar[str] = "claimed_keys"

    request_id: int = _request_id_field()
    keys: tuple[ClaimedKey, ...] = attrs.field(validator=_list_of(ClaimedKey))


@attrs.frozen(kw_only=True)
class ConversationDevices:
    """Answer to :class:`GetDevices` of a conversation."""

    TAG: ClassVar[str] = "conversation_devices"

    request_id: int = _request_id_field()
    device_set: DeviceSet = attrs.field(validator=_instance(DeviceSet))


@attrs.frozen(kw_only=True)
class UserDevices:
    """Answer to :class:`GetDevices` of a user: their devices, oldest first."""

    TAG: ClassVar[str] = "user_devices"

    request_id: int = _request_id_field()
    user: str = _username_field()
    devices: tuple[UserDevice, ...] = attrs.field(validator=_list_of(UserDevice))


# --- pushes (server -> client, unsolicited) -----------------------------------------


@attrs.frozen(kw_only=True)
class MessageDelivered:
    """A message for this user (or one of their rooms).

    Repeated until the client sends :class:`AcknowledgeDelivery` for its id.
    """

    TAG: ClassVar[str] = "message_delivered"

    message: ChatMessage
    key_shares: tuple[KeyShare, ...] = attrs.field(default=(), validator=_one_sender)
    """The key shares for this device that were sent with the message: the device
    takes them before it decrypts it. They ride in the device's ordered stream at
    the message's place, acknowledged with it (version 2; left out when empty)."""


@attrs.frozen(kw_only=True)
class DeliveryReceipts:
    """Direct messages you sent reached their recipients: a session of theirs
    acknowledged each (pushed to every connection of the sender, once per message,
    several together when they were recorded together)."""

    TAG: ClassVar[str] = "delivery_receipts"

    receipts: tuple[DeliveryReceipt, ...] = attrs.field(validator=_list_of(DeliveryReceipt))


@attrs.frozen(kw_only=True)
class PresenceChanged:
    """A friend (or a room-mate) came online or went offline."""

    TAG: ClassVar[str] = "presence_changed"

    username: str = _username_field()
    online: bool = attrs.field(validator=attrs.validators.instance_of(bool))


@attrs.frozen(kw_only=True)
class InvitationReceived:
    """``from_user`` invited this user to be friends."""

    TAG: ClassVar[str] = "invitation_received"

    from_user: str = _username_field()


@attrs.frozen(kw_only=True)
class InvitationAnswered:
    """``by_user`` accepted (you are now friends) or declined your invitation."""

    TAG: ClassVar[str] = "invitation_answered"

    by_user: str = _username_field()
    accepted: bool = attrs.field(validator=attrs.validators.instance_of(bool))


@attrs.frozen(kw_only=True)
class InvitationCancelled:
    """``by_user`` withdrew the invitation they had sent you."""

    TAG: ClassVar[str] = "invitation_cancelled"

    by_user: str = _username_field()


@attrs.frozen(kw_only=True)
class Unfriended:
    """``by_user`` ended the friendship."""

    TAG: ClassVar[str] = "unfriended"

    by_user: str = _username_field()


@attrs.frozen(kw_only=True)
class RoomMembershipChanged:
    """``username`` joined or left ``room``, of which this user is a member."""

    TAG: ClassVar[str] = "room_membership_changed"

    room: str = _room_field()
    username: str = _username_field()
    joined: bool = attrs.field(validator=attrs.validators.instance_of(bool))


@attrs.frozen(kw_only=True)
class DeviceAdded:
    """A device of ``user`` (you, a friend or a room co-member) uploaded its keys:
    it is in your conversations' device sets from now on (version 2). A client
    says so (its fingerprint), so that a device the server made up is seen."""

    TAG: ClassVar[str] = "device_added"

    user: str = _username_field()
    device: DeviceKeys = attrs.field(validator=_instance(DeviceKeys))


@attrs.frozen(kw_only=True)
class OneTimeKeysLow:
    """This device's one-time keys on the server fell below 25 (claims took
    them), or a claim took its fallback key: upload more (version 2)."""

    TAG: ClassVar[str] = "one_time_keys_low"

    one_time_keys: int = attrs.field(validator=v.count)
    fallback_used: bool = attrs.field(validator=attrs.validators.instance_of(bool))


@attrs.frozen(kw_only=True)
class CaughtUp:
    """Everything stored for this login session has now been pushed on this
    connection: every ``message_delivered`` before this push was waiting, what
    comes after it is new.

    Sent once the backlog is pushed after a ``login`` or ``resume`` (at once if
    there is none), and again whenever a connection that fell behind catches up.
    A client that only wants what is waiting (a scripted ``inbox``) can stop here.
    """

    TAG: ClassVar[str] = "caught_up"


AnsweredRequest = (
    Register
    | Login
    | Resume
    | Logout
    | ListSessions
    | RevokeSession
    | LogoutAll
    | ChangePassword
    | DeleteAccount
    | SendMessage
    | GetMessageStatus
    | Invite
    | AcceptInvitation
    | DeclineInvitation
    | CancelInvitation
    | Unfriend
    | Block
    | Unblock
    | ListBlocked
    | ListInvitations
    | ListFriends
    | ListOnline
    | GetHistory
    | JoinRoom
    | LeaveRoom
    | ListRooms
    | ListMembers
    | UploadKeys
    | ShareKeys
    | ClaimKeys
    | GetDevices
)
"""Every request the server answers (each carries a ``request_id``)."""

Request = AnsweredRequest | AcknowledgeDelivery
"""Every message a client sends: the answered requests, and the acknowledgement of
deliveries, which is never answered and carries no ``request_id``."""

Response = (
    Ok
    | ErrorResponse
    | LoggedIn
    | Sessions
    | LoggedOutAll
    | MessageAccepted
    | MessageStatus
    | Invitations
    | Blocked
    | Friends
    | OnlineUsers
    | History
    | Rooms
    | RoomMembers
    | KeysStored
    | ClaimedKeys
    | ConversationDevices
    | UserDevices
)
"""Every answer to a request; each names the ``request_id`` it answers."""

Push = (
    MessageDelivered
    | DeliveryReceipts
    | PresenceChanged
    | InvitationReceived
    | InvitationAnswered
    | InvitationCancelled
    | Unfriended
    | RoomMembershipChanged
    | CaughtUp
)
"""Every unsolicited message from the server to a client of version 1."""

DevicePush = DeviceAdded | OneTimeKeysLow
"""The pushes of version 2 (end-to-end encryption): a server sends them only to a
device, a login session that uploaded its keys (a client that speaks version 2)."""

Message = Request | Response | Push | DevicePush
"""Any application message."""

# The same unions as tuples of classes, for isinstance() checks.
ANSWERED_REQUEST_TYPES: tuple[type[AnsweredRequest], ...] = typing.get_args(AnsweredRequest)
REQUEST_TYPES: tuple[type[Request], ...] = (*ANSWERED_REQUEST_TYPES, AcknowledgeDelivery)
RESPONSE_TYPES: tuple[type[Response], ...] = typing.get_args(Response)
PUSH_TYPES: tuple[type[Push], ...] = typing.get_args(Push)
DEVICE_PUSH_TYPES: tuple[type[DevicePush], ...] = typing.get_args(DevicePush)

MESSAGE_CLASSES: tuple[type[Message], ...] = (
    *REQUEST_TYPES,
    *RESPONSE_TYPES,
    *PUSH_TYPES,
    *DEVICE_PUSH_TYPES,
)
"""Every message class, each with its wire tag as ``TAG`` (the codec's registry)."""
