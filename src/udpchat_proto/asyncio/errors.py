"""What the asyncio runtime raises: typed, and all :class:`~udpchat_proto.ProtocolError`\\ s."""

from __future__ import annotations

from ..chat import messages as m
from ..errors import ErrorCode, ProtocolError

__all__ = [
    "ClientClosedError",
    "ConnectionLostError",
    "RequestRefusedError",
    "ServerKeyChangedError",
    "ServerKeyRefusedError",
    "SessionEndedError",
]


class RequestRefusedError(ProtocolError):
    """The server answered a request with an ``error``.

    Attributes:
        response: the :class:`~udpchat_proto.messages.ErrorResponse` itself.
        code: its :class:`~udpchat_proto.ErrorCode` (``not_friends``, ``rate_limited`` ...).
    """

    def __init__(self, response: m.ErrorResponse) -> None:
        self.response = response
        self.code: ErrorCode = response.code
        super().__init__(f"{response.code}: {response.message}")


class ConnectionLostError(ProtocolError):
    """A request that is not safe to repeat (``login``, ``invite`` ...) was sent, and
    the connection was lost before its answer: the server may or may not have done
    it. (Requests safe to repeat, reads and ``send`` above all, are sent again on the
    next connection instead.)"""


class ServerKeyChangedError(ProtocolError):
    """The server presented another key than the one pinned: the client ended (a
    server's key never changes unless it was replaced, or someone is in between)."""


class ServerKeyRefusedError(ProtocolError):
    """``on_first_contact`` refused the key the server presented at first contact."""


class SessionEndedError(ProtocolError):
    """The login session could not be resumed on a new connection (it was logged
    out, revoked or expired): the client ended; log in again on a new one."""


class ClientClosedError(ProtocolError):
    """The client was closed (by :meth:`~udpchat_proto.asyncio.ChatClient.close`) before
    the request was answered."""
