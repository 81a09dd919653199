"""What the request handlers are built with: their registry, refusals, helpers.

A handler is a method decorated ``@handles(RequestClass)`` (see
:mod:`udpchat_proto.chat.handlers`); :data:`HANDLERS` maps each request class of
the catalogue to its one handler, and a handler refuses a request by raising
:class:`RefusedError` (the core answers it with an ``error`` response).
"""

from __future__ import annotations

import datetime
import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Final, TypeVar

import attrs

from ..errors import DecodeError, ErrorCode
from ..transport import Address, ConnectionId
from . import messages as m
from .codec import decode
from .connection import ChatConnectionState, Queued, Refusal
from .store import Receipt, StoreUnavailableError
from .validation import SESSION_ID_SIZE

__all__ = [
    "HANDLERS",
    "WRITES_ONCE",
    "ConnectionInfo",
    "RefusedError",
    "handles",
    "read_payload",
    "receipt_pushes",
    "session_id",
    "token_hash",
    "unavailable_message",
    "utc_from_posix",
]


def token_hash(token: bytes) -> bytes:
    """What the store keeps of a login token: its SHA-256."""
    return hashlib.sha256(token).digest()


def session_id(hashed: bytes) -> bytes:
    """The 16-byte name of the login session whose token hashes to ``hashed``: shown
    to its user (``list_sessions``), accepted by ``revoke_session``, useless as a
    token (a hash of the token's hash, under its own label)."""
    return hashlib.sha256(b"udpchat session id\0" + hashed).digest()[:SESSION_ID_SIZE]


def unavailable_message(failure: StoreUnavailableError) -> str:
    """The refusal's words for people (the CLI shows them as they are)."""
    return f"the server cannot store anything now ({failure.reason}); try later"


def utc_from_posix(now: float) -> datetime.datetime:
    """A UTC datetime for POSIX seconds, at the microsecond precision of the wire."""
    return datetime.datetime.fromtimestamp(now, tz=datetime.UTC)


def receipt_pushes(receipts: list[Receipt]) -> list[m.DeliveryReceipts]:
    """What tells a sender that these messages of theirs were delivered: one push
    for many (a receipt is a small part of a packet, a push each would cost a
    packet each), within the list limit."""
    records = [
        m.DeliveryReceipt(
            message_id=receipt.message_id,
            to=receipt.recipient,
            delivered_at=utc_from_posix(receipt.delivered_at),
        )
        for receipt in receipts
    ]
    return [
        m.DeliveryReceipts(receipts=tuple(records[start : start + RECEIPTS_PER_PUSH]))
        for start in range(0, len(records), RECEIPTS_PER_PUSH)
    ]


RECEIPTS_PER_PUSH: Final = 500
"""Most receipts in one push (about 60 bytes each, well within a message)."""


HANDLERS: Final[dict[type[m.AnsweredRequest], str]] = {}
"""Each request class and the name of the :class:`ChatServer` method that answers
it, filled by ``@handles`` where each handler is defined (a test checks that every
request of the catalogue has exactly one)."""

WRITES_ONCE: Final[set[type[m.AnsweredRequest]]] = set()
"""The request classes whose handler makes at most one store write, as the last step
that can fail: they run without a savepoint (two statements less a request)."""

_Handler = TypeVar("_Handler", bound=Callable[..., None])


def handles(
    request_type: type[m.AnsweredRequest], *, writes_once: bool = False
) -> Callable[[_Handler], _Handler]:
    """Register the decorated method as the handler of ``request_type``.

    Args:
        request_type: the request class it answers.
        writes_once: it makes at most one store write, and nothing after that write
            can fail, so a failure leaves nothing half-written without a savepoint
            (see :data:`WRITES_ONCE`).
    """

    def register(handler: _Handler) -> _Handler:
        if request_type in HANDLERS:
            raise TypeError(f"two handlers for {request_type.__name__}")
        HANDLERS[request_type] = handler.__name__
        if writes_once:
            WRITES_ONCE.add(request_type)
        return handler

    return register


@attrs.frozen(kw_only=True)
class ConnectionInfo:
    """One connection, as :meth:`ServerCore.connection_info` reports it."""

    connection_id: ConnectionId
    address: Address
    """Where its packets come from now."""
    state: ChatConnectionState
    username: str | None
    """Whom it acts as (logged in), or None."""


def read_payload(
    payload: bytes, decode_errors: Counter[str]
) -> Queued | m.AcknowledgeDelivery | str:
    """What a client's payload asks for: a request; or, when it does not decode but
    is a request whose id can be read, its refusal (answered in its turn, as the
    request would have been); or an acknowledgement. A str instead says why the
    payload is a protocol violation: it is not answered.

    Args:
        payload: one application message from a client.
        decode_errors: counts each payload that does not decode, by reason.
    """
    try:
        message = decode(payload)
    except DecodeError as exc:
        decode_errors[exc.reason] += 1
        if exc.request_id is None or exc.code is None:
            return f"undecodable payload ({exc.reason})"
        # The codec words the text for the wire: the protocol's terms, never Python's.
        return Refusal(request_id=exc.request_id, code=exc.code, message=exc.detail)
    if isinstance(message, m.REQUEST_TYPES):
        return message
    return f"{message.TAG} sent to the server"  # a response or a push


class RefusedError(Exception):
    """Raised inside a request handler to answer with an error response."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- the server ------------------------------------------------------------------------------
