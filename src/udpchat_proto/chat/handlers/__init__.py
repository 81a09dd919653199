"""The chat server's request handlers, one unit per concept.

Each unit is a class built with the parts of the server it uses (its
constructor's arguments say what it depends on) and lists the requests it answers
in ``routes()``, one :class:`~udpchat_proto.chat.requests.Route` per request
class, each to a method of its own; the units whose requests hash a password also
list, in ``finishers()``, what runs when the hash is done.
:class:`~udpchat_proto.chat.server.ChatServer` builds them and hands their routes
to the dispatch (:mod:`udpchat_proto.chat.dispatch`).
"""

from __future__ import annotations

from .account_changes import AccountChangeHandlers
from .accounts import AccountHandlers
from .blocking import BlockHandlers
from .friends import FriendHandlers
from .keys import KeyHandlers
from .messages import MessageHandlers
from .rooms import RoomHandlers

__all__ = [
    "AccountChangeHandlers",
    "AccountHandlers",
    "BlockHandlers",
    "FriendHandlers",
    "KeyHandlers",
    "MessageHandlers",
    "RoomHandlers",
]
