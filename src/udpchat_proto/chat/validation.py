"""The validation rules of names, passwords and text.

Every rule here is enforced twice: when a message class is constructed (so a client
cannot even build an invalid request) and, through the same attrs validators, when
:func:`udpchat_proto.chat.codec.decode` structures bytes from the network. The rules
of what an application takes from a person (names, passwords, text, ids, the history
limit) are written once, as public functions (``check_...``, or ``valid_...`` where a
name is normalised first) that the attrs validators at the bottom call: a value
checked with one before any request is refused exactly as a server would refuse it.

Rules (also in ``docs/PROTOCOL.md``):

* username: 1 to 32 characters of ``a-z 0-9 _ . -``; compared case-insensitively,
  so it is normalised to lowercase before the check.
* room name: ``#`` followed by a username (so 2 to 33 characters).
* message text: at least one character, valid UTF-8 (no lone surrogates), at most
  4096 bytes once encoded.
* password: 8 to 1024 characters.
* message ids and login session ids: 16 bytes; login tokens: 32 bytes.
* request ids: integers from 0 to 2**32 - 1.
* timestamps: timezone-aware datetimes in UTC.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any, cast

from ..errors import ErrorCode, LocalProtocolError

__all__ = [
    "HISTORY_LIMIT_MAX",
    "MAX_TEXT_BYTES",
    "MESSAGE_ID_SIZE",
    "PASSWORD_MAX",
    "PASSWORD_MIN",
    "SESSION_ID_SIZE",
    "TOKEN_SIZE",
    "USERNAME_MAX",
    "ValidationError",
    "check_history_limit",
    "check_message_id",
    "check_password",
    "check_room",
    "check_session_id",
    "check_target",
    "check_text",
    "check_username",
    "is_room",
    "normalize_name",
    "valid_room",
    "valid_target",
    "valid_username",
]

USERNAME_MAX = 32
MAX_TEXT_BYTES = 4096
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
MESSAGE_ID_SIZE = 16
TOKEN_SIZE = 32
SESSION_ID_SIZE = 16
REQUEST_ID_MAX = 2**32 - 1
HISTORY_LIMIT_MAX = 100
#: Most entries a list in any message may hold (friends, members, online users ...).
LIST_MAX = 10_000

_USERNAME_RE = re.compile(r"[a-z0-9_.\-]{1,32}")
_ROOM_RE = re.compile(r"#[a-z0-9_.\-]{1,32}")


class ValidationError(LocalProtocolError, ValueError):
    """A value breaks one of the rules above.

    Attributes:
        code: the :class:`ErrorCode` a server answers the same mistake with.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        super().__init__(message)


def normalize_name(value: Any) -> Any:
    """Lowercase a user or room name (names compare case-insensitively).

    Non-strings pass through untouched so that the validator reports them.
    """
    return value.lower() if isinstance(value, str) else value


def is_room(name: str) -> bool:
    """Whether a conversation name is a room (``#...``) rather than a user."""
    return name.startswith("#")


def check_username(value: object) -> None:
    """Raise :class:`ValidationError` unless ``value`` is a valid (lowercase) username."""
    if not isinstance(value, str) or _USERNAME_RE.fullmatch(value) is None:
        raise ValidationError(
            ErrorCode.INVALID_USERNAME,
            f"invalid username {value!r}: use 1 to {USERNAME_MAX} characters of a-z 0-9 _ . -",
        )


def check_room(value: object) -> None:
    """Raise :class:`ValidationError` unless ``value`` is a valid (lowercase) room name."""
    if not isinstance(value, str) or _ROOM_RE.fullmatch(value) is None:
        raise ValidationError(
            ErrorCode.INVALID_ROOM,
            f"invalid room name {value!r}: use # then 1 to {USERNAME_MAX} characters "
            "of a-z 0-9 _ . -",
        )


def check_target(value: object) -> None:
    """A conversation: a room when it starts with ``#``, a username otherwise."""
    if isinstance(value, str) and is_room(value):
        check_room(value)
    else:
        check_username(value)


def valid_username(value: str) -> str:
    """``value`` as a username: lowercased, checked (as a server would check it).

    Raises:
        ValidationError: with ``INVALID_USERNAME``.
    """
    name = normalize_name(value)
    check_username(name)
    return str(name)


def valid_room(value: str) -> str:
    """``value`` as a room name (``#general``): lowercased, checked.

    Raises:
        ValidationError: with ``INVALID_ROOM``.
    """
    name = normalize_name(value)
    check_room(name)
    return str(name)


def valid_target(value: str) -> str:
    """``value`` as a conversation: a room when it starts with ``#``, else a user.

    Raises:
        ValidationError: with ``INVALID_ROOM`` or ``INVALID_USERNAME``.
    """
    name = normalize_name(value)
    check_target(name)
    return str(name)


def check_history_limit(value: object) -> None:
    """Raise :class:`ValidationError` unless ``value`` is a history limit (1..100)."""
    if type(value) is not int or not 1 <= value <= HISTORY_LIMIT_MAX:
        raise ValidationError(
            ErrorCode.BAD_REQUEST, f"history limit must be an integer in 1..{HISTORY_LIMIT_MAX}"
        )


def check_password(value: object) -> None:
    """Raise :class:`ValidationError` unless ``value`` is an acceptable password."""
    if not isinstance(value, str) or not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        raise ValidationError(
            ErrorCode.INVALID_PASSWORD,
            f"invalid password: use {PASSWORD_MIN} to {PASSWORD_MAX} characters",
        )
    _check_utf8(value, ErrorCode.INVALID_PASSWORD, "password")


def check_text(value: object) -> None:
    """Raise :class:`ValidationError` unless ``value`` is a sendable message text."""
    if not isinstance(value, str) or not value:
        raise ValidationError(ErrorCode.INVALID_TEXT, "message text must not be empty")
    if "\x00" in value:
        # No database keeps it as text (PostgreSQL refuses it), and no person types it.
        raise ValidationError(ErrorCode.INVALID_TEXT, "message text must not contain NUL")
    # At most 4 bytes a character: the common case skips the encode entirely.
    if len(value) * 4 <= MAX_TEXT_BYTES:
        _check_utf8(value, ErrorCode.INVALID_TEXT, "message text")
        return
    size = len(_check_utf8(value, ErrorCode.INVALID_TEXT, "message text"))
    if size > MAX_TEXT_BYTES:
        raise ValidationError(
            ErrorCode.TOO_LARGE,
            f"message text is {size} bytes; the limit is {MAX_TEXT_BYTES} bytes of UTF-8",
        )


def check_message_id(value: object) -> None:
    """Raise :class:`ValidationError` unless ``value`` is a message id (16 bytes)."""
    _check_fixed_bytes(value, MESSAGE_ID_SIZE, "a message id")


def check_session_id(value: object) -> None:
    """Raise :class:`ValidationError` unless ``value`` is a login session's id (16 bytes)."""
    _check_fixed_bytes(value, SESSION_ID_SIZE, "a session id")


def _check_fixed_bytes(value: object, size: int, what: str) -> None:
    if type(value) is not bytes or len(value) != size:
        raise ValidationError(ErrorCode.BAD_REQUEST, f"{what} must be {size} bytes")


def _check_utf8(value: str, code: ErrorCode, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(code, f"{what} is not valid UTF-8 (lone surrogate)") from None


# attrs-style validators: (instance, attribute, value) -> None.
AttrsValidator = Callable[[Any, Any, Any], None]


def username(_inst: Any, _attr: Any, value: Any) -> None:
    check_username(value)


def room(_inst: Any, _attr: Any, value: Any) -> None:
    check_room(value)


def target(_inst: Any, _attr: Any, value: Any) -> None:
    check_target(value)


def password(_inst: Any, _attr: Any, value: Any) -> None:
    check_password(value)


def text(_inst: Any, _attr: Any, value: Any) -> None:
    check_text(value)


def utf8_text(_inst: Any, _attr: Any, value: Any) -> None:
    """Any string that encodes as UTF-8 (an error message, a reason)."""
    if not isinstance(value, str):
        raise ValidationError(ErrorCode.BAD_REQUEST, "expected a string")
    _check_utf8(value, ErrorCode.BAD_REQUEST, "the text")


def message_id(_inst: Any, _attr: Any, value: Any) -> None:
    check_message_id(value)


def session_id(_inst: Any, _attr: Any, value: Any) -> None:
    check_session_id(value)


def token(_inst: Any, _attr: Any, value: Any) -> None:
    _check_fixed_bytes(value, TOKEN_SIZE, "a login token")


def request_id(_inst: Any, _attr: Any, value: Any) -> None:
    if type(value) is not int or not 0 <= value <= REQUEST_ID_MAX:
        raise ValidationError(
            ErrorCode.BAD_REQUEST, f"request id must be an integer in 0..{REQUEST_ID_MAX}"
        )


def history_limit(_inst: Any, _attr: Any, value: Any) -> None:
    check_history_limit(value)


def count(_inst: Any, _attr: Any, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise ValidationError(ErrorCode.BAD_REQUEST, "a count must be a non-negative integer")


def utc_datetime(_inst: Any, _attr: Any, value: Any) -> None:
    if type(value) is datetime.datetime and value.tzinfo is datetime.UTC:
        return  # what the codec and the server make: no offset to compute
    if not isinstance(value, datetime.datetime) or value.utcoffset() != datetime.timedelta(0):
        raise ValidationError(ErrorCode.BAD_REQUEST, "timestamps must be timezone-aware UTC")


def bounded_list(_inst: Any, _attr: Any, value: Any) -> None:
    if not isinstance(value, tuple) or len(value) > LIST_MAX:
        raise ValidationError(ErrorCode.TOO_LARGE, f"lists hold at most {LIST_MAX} entries")


def message_ids(_inst: Any, _attr: Any, value: Any) -> None:
    bounded_list(_inst, _attr, value)
    for item in cast(tuple[object, ...], value):
        message_id(_inst, _attr, item)
