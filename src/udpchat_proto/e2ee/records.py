"""The wire-level records of end-to-end encryption (phase 2 puts them in messages).

Each is a frozen attrs class of plain fields (``str``, ``int``, ``bool``,
``bytes``, tuples of records), so that the codec's cattrs converter structures and
unstructures them as it does the message catalogue; every field is checked on
construction, so a record built from the network is well-formed or not built.
``docs/PROTOCOL.md`` ("End-to-end encryption") specifies them and the bytes that
are signed.

Who sends what:

==================  ==============================================================
:class:`DeviceKeys`  a device's identity keys, self-signed (device -> server -> all)
:class:`OneTimeKey`  a one-time or fallback Curve25519 key, signed (device -> server)
:class:`KeysUpload`  what a device uploads at login and when topping up
:class:`ClaimedKey`  the server's answer to a claim: a device and one key of it
:class:`DeviceSet`   a conversation's devices as the server states them, versioned
:class:`KeyShare`    an Olm-encrypted Megolm session key for one device (to-device)
:class:`EncryptedMessage`  a Megolm-encrypted message of a conversation
==================  ==============================================================
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from ..chat.validation import ValidationError, check_room, check_username
from ..errors import ErrorCode

__all__ = [
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
    "device_keys_signed_bytes",
    "direct_conversation",
    "direct_members",
    "one_time_key_signed_bytes",
]

DEVICE_ID_SIZE: Final = 16
"""A device id: the id of the login session it is (``SessionInfo.session_id``)."""
PUBLIC_KEY_SIZE: Final = 32
"""A Curve25519 or Ed25519 public key."""
SIGNATURE_SIZE: Final = 64
"""An Ed25519 signature."""
SESSION_ID_SIZE: Final = 32
"""A Megolm session id: the session's Ed25519 public key."""
PICKLE_KEY_SIZE: Final = 32
"""The key vodozemac encrypts the account's and sessions' pickles with (the state's,
not the wire's: here with the other sizes so that a program that only checks a
key's size, the CLI's profile, does not load the state and vodozemac)."""
MAX_MESSAGE_CIPHERTEXT: Final = 4608
"""The largest Megolm ciphertext a server accepts: the 4096 bytes of text, the
plaintext's header (message id, conversation), AES padding, the Megolm header,
MAC and signature, with room to spare (the server bounds what it cannot read)."""
MAX_KEY_SHARE: Final = 2048
"""The largest Olm ciphertext of a key share (a pre-key message of a ~700-byte
payload is about 1,100 bytes)."""
MAX_KEY_ID: Final = 64
_DEVICE_KEYS_CONTEXT: Final = b"udpchat-e2ee-device-keys-v1\x00"
_ONE_TIME_KEY_CONTEXT: Final = b"udpchat-e2ee-one-time-key-v1\x00"


def _fixed(size: int, what: str) -> Any:
    def validate(_instance: object, _attribute: object, value: object) -> None:
        if type(value) is not bytes or len(value) != size:
            raise ValidationError(ErrorCode.BAD_REQUEST, f"{what} must be {size} bytes")

    return validate


def _bounded(limit: int, what: str) -> Any:
    def validate(_instance: object, _attribute: object, value: object) -> None:
        if type(value) is not bytes or not 0 < len(value) <= limit:
            raise ValidationError(ErrorCode.BAD_REQUEST, f"{what} must be 1 to {limit} bytes")

    return validate


def _count(_instance: object, _attribute: object, value: Any) -> None:
    if type(value) is not int or not 0 <= value < 2**63:
        raise ValidationError(ErrorCode.BAD_REQUEST, "a count must be an integer >= 0")


def _username(_instance: object, _attribute: object, value: Any) -> None:
    check_username(value)


def check_conversation(value: object) -> None:
    """Raise :class:`ValidationError` unless ``value`` names a conversation: a room
    (``#general``) or a direct conversation as :func:`direct_conversation` writes it."""
    if isinstance(value, str) and value.startswith("#"):
        check_room(value)
        return
    if not isinstance(value, str) or value.count(",") != 1:
        raise ValidationError(ErrorCode.BAD_REQUEST, f"invalid conversation {value!r}")
    first, second = value.split(",")
    check_username(first)
    check_username(second)
    if not first < second:
        raise ValidationError(ErrorCode.BAD_REQUEST, f"invalid conversation {value!r}")


def direct_conversation(one: str, other: str) -> str:
    """The conversation of two users' direct messages: both names, sorted, joined by
    a comma (no name holds one), so that both ends name it alike."""
    check_username(one)
    check_username(other)
    if one == other:
        raise ValidationError(ErrorCode.CANNOT_INVITE_SELF, "a conversation needs two users")
    first, second = sorted((one, other))
    return f"{first},{second}"


def direct_members(conversation: str) -> tuple[str, str] | None:
    """The two users of a direct conversation (``"alice,bob"``), or None for a room.

    A direct conversation's members are in its name, so a device checks them
    itself: no device of a third user is ever given its key, and no third user's
    key share or message is taken in it, whatever a server states."""
    if conversation.startswith("#"):
        return None
    first, _, second = conversation.partition(",")
    return first, second


def _conversation(_instance: object, _attribute: object, value: Any) -> None:
    check_conversation(value)


def _lp(data: bytes) -> bytes:
    """``data`` prefixed by its length (one byte: every field signed is short)."""
    return bytes([len(data)]) + data


def device_keys_signed_bytes(
    user: str, device_id: bytes, curve25519: bytes, ed25519: bytes
) -> bytes:
    """What a device signs with its Ed25519 key to vouch for its record."""
    return b"".join(
        (_DEVICE_KEYS_CONTEXT, _lp(user.encode()), _lp(device_id), _lp(curve25519), _lp(ed25519))
    )


def one_time_key_signed_bytes(
    user: str, device_id: bytes, key_id: str, key: bytes, fallback: bool
) -> bytes:
    """What a device signs with its Ed25519 key to vouch for a one-time key."""
    return b"".join(
        (
            _ONE_TIME_KEY_CONTEXT,
            _lp(user.encode()),
            _lp(device_id),
            _lp(key_id.encode()),
            _lp(key),
            b"\x01" if fallback else b"\x00",
        )
    )


@attrs.frozen(kw_only=True)
class DeviceKeys:
    """A device's identity keys and its signature over them.

    Uploaded once, at login; the server hands it to whoever must encrypt for the
    device. ``signature`` is the device's Ed25519 signature over
    :func:`device_keys_signed_bytes`; a receiver checks it (``verify_device_keys``)
    and pins the keys to the device id: they never change while the device lives.
    """

    user: str = attrs.field(validator=_username)
    device_id: bytes = attrs.field(validator=_fixed(DEVICE_ID_SIZE, "a device id"))
    curve25519: bytes = attrs.field(validator=_fixed(PUBLIC_KEY_SIZE, "a Curve25519 key"))
    """The Olm identity key: key shares to this device are encrypted to it."""
    ed25519: bytes = attrs.field(validator=_fixed(PUBLIC_KEY_SIZE, "an Ed25519 key"))
    """The signing key: what the fingerprint shows and verification compares."""
    signature: bytes = attrs.field(validator=_fixed(SIGNATURE_SIZE, "a signature"), repr=False)


@attrs.frozen(kw_only=True)
class OneTimeKey:
    """A Curve25519 key that opens one Olm session to the device (a fallback key:
    any number of them, until the device replaces it), signed by the device."""

    key_id: str = attrs.field()
    key: bytes = attrs.field(validator=_fixed(PUBLIC_KEY_SIZE, "a Curve25519 key"))
    fallback: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    signature: bytes = attrs.field(validator=_fixed(SIGNATURE_SIZE, "a signature"), repr=False)

    @key_id.validator
    def _check_key_id(self, _attribute: object, value: Any) -> None:
        if not isinstance(value, str) or not 0 < len(value) <= MAX_KEY_ID or not value.isascii():
            raise ValidationError(ErrorCode.BAD_REQUEST, "a key id must be 1 to 64 ASCII chars")


@attrs.frozen(kw_only=True)
class KeysUpload:
    """What a device uploads: its identity (every time, so that the server can
    check the keys below against it), new one-time keys, a new fallback key."""

    device_keys: DeviceKeys = attrs.field(validator=attrs.validators.instance_of(DeviceKeys))
    one_time_keys: tuple[OneTimeKey, ...] = attrs.field(
        validator=attrs.validators.deep_iterable(
            attrs.validators.instance_of(OneTimeKey), attrs.validators.instance_of(tuple)
        ),
    )
    fallback_key: OneTimeKey | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(OneTimeKey))
    )


@attrs.frozen(kw_only=True)
class ClaimedKey:
    """One key the server gave out for a device: a one-time key (then deleted) or,
    when it has none left, its fallback key."""

    device: DeviceKeys = attrs.field(validator=attrs.validators.instance_of(DeviceKeys))
    one_time_key: OneTimeKey = attrs.field(validator=attrs.validators.instance_of(OneTimeKey))


@attrs.frozen(kw_only=True)
class DeviceSet:
    """A conversation's devices as the server states them: every device of every
    member with keys uploaded, the asking device included, and the set's version,
    which changes at every change of the set (a device added or ended, a member in
    or out). A message names the version it was encrypted for; the server refuses
    it with ``devices_changed`` when that is not the current one."""

    conversation: str = attrs.field(validator=_conversation)
    version: int = attrs.field(validator=_count)
    devices: tuple[DeviceKeys, ...] = attrs.field(
        validator=attrs.validators.deep_iterable(
            attrs.validators.instance_of(DeviceKeys), attrs.validators.instance_of(tuple)
        ),
    )

    def __attrs_post_init__(self) -> None:
        ids = [device.device_id for device in self.devices]
        if len(set(ids)) != len(ids):
            raise ValidationError(ErrorCode.BAD_REQUEST, "a device is listed twice")


@attrs.frozen(kw_only=True)
class KeyShare:
    """A Megolm session key, Olm-encrypted for one device (to-device).

    The server delivers it in the recipient device's ordered stream before the
    first message that needs it. ``sender_keys`` lets the recipient check who
    sent it without asking the server; ``message_type`` and ``ciphertext`` are
    vodozemac's ``AnyOlmMessage.to_parts()`` (0: a pre-key message, 1: normal).
    """

    sender_keys: DeviceKeys = attrs.field(validator=attrs.validators.instance_of(DeviceKeys))
    recipient: str = attrs.field(validator=_username)
    recipient_device: bytes = attrs.field(validator=_fixed(DEVICE_ID_SIZE, "a device id"))
    message_type: int = attrs.field(validator=attrs.validators.in_((0, 1)))
    ciphertext: bytes = attrs.field(validator=_bounded(MAX_KEY_SHARE, "a key share"))


@attrs.frozen(kw_only=True)
class EncryptedMessage:
    """A message of a conversation, Megolm-encrypted by its sending device.

    ``session_id`` names the Megolm session (with ``sender_device`` and the
    conversation, the key of the receiver's inbound session); ``device_set_version``
    is the :class:`DeviceSet` version the session was shared for.
    """

    conversation: str = attrs.field(validator=_conversation)
    sender: str = attrs.field(validator=_username)
    sender_device: bytes = attrs.field(validator=_fixed(DEVICE_ID_SIZE, "a device id"))
    session_id: bytes = attrs.field(validator=_fixed(SESSION_ID_SIZE, "a session id"))
    device_set_version: int = attrs.field(validator=_count)
    ciphertext: bytes = attrs.field(validator=_bounded(MAX_MESSAGE_CIPHERTEXT, "a ciphertext"))
