"""The plaintexts inside the ciphertexts: a key share's, and a message's.

A key share's (inside Olm) is a JSON object, for a stranger's implementation to
read and write with any JSON library::

    {"v": 1, "type": "megolm_key",
     "sender": "alice", "sender_device": "<32 hex>", "sender_ed25519": "<base64>",
     "recipient": "bob", "recipient_device": "<32 hex>", "recipient_ed25519": "<base64>",
     "conversation": "#general", "session_id": "<base64>", "first_index": 0,
     "session_key": "<base64 of vodozemac's SessionKey>"}

It names both ends' Ed25519 keys so that an Olm session (which authenticates the
Curve25519 keys only) cannot be used to pass a key off as another device's or to
another device: the receiver checks both against the device records it pinned.

A message's (inside Megolm) is bytes, because a text of 4096 bytes of control
characters would grow six-fold as a JSON string::

    0x01 | message id (16 bytes) | len(conversation) (1 byte) | conversation | text (UTF-8)

The message id and conversation bind the ciphertext to the message it is sent as:
a server that replays it under another id or in another conversation is caught.
"""

from __future__ import annotations

from typing import Final

import attrs
import orjson

from ..chat.validation import MESSAGE_ID_SIZE
from .olm import b64decode, b64encode
from .records import DEVICE_ID_SIZE, PUBLIC_KEY_SIZE, SESSION_ID_SIZE, check_conversation

__all__ = ["KeyPayload", "MessagePayload", "PayloadError", "PayloadTextError"]

_KEY_TYPE: Final = "megolm_key"
_MESSAGE_VERSION: Final = 1
_MAX_INDEX: Final = 2**32 - 1


class PayloadError(ValueError):
    """The plaintext is not what the protocol says."""


class PayloadTextError(PayloadError):
    """A message's plaintext is well-formed but its text is not UTF-8."""


@attrs.frozen(kw_only=True)
class KeyPayload:
    """What a key share says (inside Olm)."""

    sender: str
    sender_device: bytes
    sender_ed25519: bytes
    recipient: str
    recipient_device: bytes
    recipient_ed25519: bytes
    conversation: str
    session_id: bytes
    first_index: int
    session_key: str
    """vodozemac's ``SessionKey.to_base64()``: the ratchet at ``first_index``, signed
    by the session's Ed25519 key (whose public half is ``session_id``)."""

    def to_bytes(self) -> bytes:
        """The JSON the Olm session encrypts."""
        return orjson.dumps(
            {
                "v": 1,
                "type": _KEY_TYPE,
                "sender": self.sender,
                "sender_device": self.sender_device.hex(),
                "sender_ed25519": b64encode(self.sender_ed25519),
                "recipient": self.recipient,
                "recipient_device": self.recipient_device.hex(),
                "recipient_ed25519": b64encode(self.recipient_ed25519),
                "conversation": self.conversation,
                "session_id": b64encode(self.session_id),
                "first_index": self.first_index,
                "session_key": self.session_key,
            }
        )

    @classmethod
    def parse(cls, data: bytes) -> KeyPayload:
        """The payload of a decrypted key share; :class:`PayloadError` if malformed."""
        try:
            value = orjson.loads(data)
            if not isinstance(value, dict) or type(value.get("v")) is not int or value["v"] != 1:
                raise PayloadError("not a version 1 payload")
            if value.get("type") != _KEY_TYPE:
                raise PayloadError("not a Megolm key")
            payload = cls(
                sender=_str(value, "sender"),
                sender_device=_hex(value, "sender_device", DEVICE_ID_SIZE),
                sender_ed25519=_b64(value, "sender_ed25519", PUBLIC_KEY_SIZE),
                recipient=_str(value, "recipient"),
                recipient_device=_hex(value, "recipient_device", DEVICE_ID_SIZE),
                recipient_ed25519=_b64(value, "recipient_ed25519", PUBLIC_KEY_SIZE),
                conversation=_str(value, "conversation"),
                session_id=_b64(value, "session_id", SESSION_ID_SIZE),
                first_index=_index(value),
                session_key=_str(value, "session_key"),
            )
            check_conversation(payload.conversation)
        except (orjson.JSONDecodeError, ValueError, TypeError) as error:
            raise PayloadError(str(error)) from error
        return payload


def _index(value: dict[str, object]) -> int:
    index = value.get("first_index")
    if type(index) is not int or not 0 <= index <= _MAX_INDEX:
        raise PayloadError("first_index is not an index")
    return index


def _str(value: dict[str, object], name: str) -> str:
    field = value.get(name)
    if not isinstance(field, str):
        raise PayloadError(f"{name} is not a string")
    return field


def _hex(value: dict[str, object], name: str, size: int) -> bytes:
    data = bytes.fromhex(_str(value, name))
    if len(data) != size:
        raise PayloadError(f"{name} is not {size} bytes")
    return data


def _b64(value: dict[str, object], name: str, size: int) -> bytes:
    data = b64decode(_str(value, name))
    if len(data) != size:
        raise PayloadError(f"{name} is not {size} bytes")
    return data


@attrs.frozen(kw_only=True)
class MessagePayload:
    """What a message says (inside Megolm)."""

    message_id: bytes
    conversation: str
    text: str

    def to_bytes(self) -> bytes:
        """The bytes Megolm encrypts."""
        conversation = self.conversation.encode()
        return b"".join(
            (
                bytes([_MESSAGE_VERSION]),
                self.message_id,
                bytes([len(conversation)]),
                conversation,
                self.text.encode("utf-8", "surrogatepass"),
            )
        )

    @classmethod
    def parse(cls, data: bytes) -> MessagePayload:
        """The payload of a decrypted message; :class:`PayloadError` if malformed
        (the text's rules are the caller's: it drops an invalid one as such)."""
        header = 1 + MESSAGE_ID_SIZE + 1
        if len(data) < header or data[0] != _MESSAGE_VERSION:
            raise PayloadError("not a version 1 message")
        end = header + data[header - 1]
        if len(data) < end:
            raise PayloadError("the conversation runs past the end")
        try:
            conversation = data[header:end].decode("ascii")
        except UnicodeDecodeError as error:
            raise PayloadError(str(error)) from error
        try:
            text = data[end:].decode("utf-8")
        except UnicodeDecodeError as error:
            raise PayloadTextError(str(error)) from error
        return cls(message_id=data[1 : 1 + MESSAGE_ID_SIZE], conversation=conversation, text=text)
