"""The chat server's request handlers, one module per concept.

Each handler is a method decorated ``@handles(RequestClass)`` on a class built on
:class:`~udpchat_proto.chat.core.ServerCore`; :class:`~udpchat_proto.chat.server.ChatServer`
inherits them all, and the registry (``core.HANDLERS``) maps each request class of
the catalogue to its one handler. Adding a request type touches its message class,
its handler here, the client's command method and the CLI command: nothing else.
"""

from __future__ import annotations

from .account_changes import AccountChangeRequests
from .accounts import AccountRequests
from .blocking import BlockRequests
from .friends import FriendRequests
from .messages import MessageRequests
from .rooms import RoomRequests

__all__ = [
    "AccountChangeRequests",
    "AccountRequests",
    "BlockRequests",
    "FriendRequests",
    "MessageRequests",
    "RoomRequests",
]
