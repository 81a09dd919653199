"""What the request handlers are built with: routes, refusals, small helpers.

A handler unit (:mod:`udpchat_proto.chat.handlers`) answers the requests of one
concept; it lists them with :func:`route`, one :class:`Route` per request class
(``routes()``), and the dispatch (:mod:`udpchat_proto.chat.dispatch`) runs each
request through its route. A handler refuses a request by raising
:class:`RefusedError`: the dispatch answers it with an ``error`` response.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import attrs

from ..e2ee.records import DeviceSet
from ..errors import DecodeError, ErrorCode
from . import messages as m
from .codec import decode
from .connection import ChatConnection, Refusal
from .store import StoreUnavailableError
from .tokens import session_id, token_hash

if TYPE_CHECKING:  # (a client that names a session must not load the hashing)
    from .password_jobs import PendingJob

__all__ = [
    "Finisher",
    "Handler",
    "RefusedError",
    "Route",
    "read_payload",
    "route",
    "session_id",
    "token_hash",
    "unavailable_message",
    "user_of",
    "utc_from_posix",
]

Handler = Callable[[ChatConnection, Any, float], None]
"""A request's handler: ``(connection, request, now)``. Each takes its own request
class; :func:`route` ties the two together for the type checker."""

Finisher = Callable[[ChatConnection, "PendingJob", bytes, float], None]
"""The second half of a request that hashed a password: ``(connection, job,
digest, now)``, run as a step of its own when the digest comes back."""

_R = TypeVar("_R", bound=m.Request)

# The codec makes exactly these classes, so a set lookup of the type will do, where
# isinstance against the tuple of 32 tries them in turn (a microsecond for the last).
_REQUEST_TYPES: Final[frozenset[type[m.Message]]] = frozenset(m.REQUEST_TYPES)


@attrs.frozen
class Route:
    """How the server runs one request class.

    An *answered* request is queued behind its connection's earlier ones (and a
    password hash), refused ``not_logged_in`` before a login unless
    ``before_login``, and run as one atomic step: its writes and its output all
    happen or none do. An unanswered one (``ack_delivery``) is run at once, with
    no answer whatever happens.
    """

    request_type: type[m.Request]
    handler: Handler
    answered: bool = True
    before_login: bool = False
    """Allowed on an anonymous connection (register, login, resume)."""
    writes_once: bool = False
    """The handler makes at most one store write, as the last step that can fail:
    a failure leaves nothing half-written, so it runs without a savepoint, two
    statements less a request. (On a cluster's node a send writes nothing in its
    step: its message is staged with the batch, see ``WriteTrackingStore``.)"""


def route(
    request_type: type[_R],
    handler: Callable[[ChatConnection, _R, float], None],
    *,
    answered: bool = True,
    before_login: bool = False,
    writes_once: bool = False,
) -> Route:
    """The :class:`Route` of ``request_type`` to ``handler`` (which must take that
    request class: the type checker sees to it)."""
    return Route(
        request_type=cast("type[m.Request]", request_type),  # (a union: mypy cannot see it)
        handler=handler,
        answered=answered,
        before_login=before_login,
        writes_once=writes_once,
    )


def user_of(connection: ChatConnection) -> str:
    """The user a logged-in connection acts as (handlers of logged-in requests)."""
    assert connection.username is not None  # (the dispatch refused it otherwise)
    return connection.username


def unavailable_message(failure: StoreUnavailableError) -> str:
    """The refusal's words for people (the CLI shows them as they are)."""
    return f"the server cannot store anything now ({failure.reason}); try later"


def utc_from_posix(now: float) -> datetime.datetime:
    """A UTC datetime for POSIX seconds, at the microsecond precision of the wire."""
    return datetime.datetime.fromtimestamp(now, tz=datetime.UTC)


def read_payload(payload: bytes, decode_errors: Counter[str]) -> m.Request | Refusal | str:
    """What a client's payload asks for: a request (an acknowledgement too); or,
    when it does not decode but is a request whose id can be read, its refusal
    (answered in its turn, as the request would have been). A str instead says why
    the payload is a protocol violation: it is not answered.

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
    if type(message) in _REQUEST_TYPES:
        return cast("m.Request", message)
    return f"{message.TAG} sent to the server"  # a response or a push


class RefusedError(Exception):
    """Raised inside a request handler to answer with an error response."""

    def __init__(self, code: ErrorCode, message: str, device_set: DeviceSet | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.device_set = device_set
        """With ``devices_changed``: the conversation's current set, for the answer."""
