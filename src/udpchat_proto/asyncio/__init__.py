"""udpchat on asyncio: a client that heals itself, and a server for an asyncio program.

The one part of ``udpchat_proto`` that does I/O, imported only on demand
(``import udpchat_proto`` never loads it)::

    from udpchat_proto.asyncio import connect, serve

* :func:`connect` gives a :class:`ChatClient`: the chat's requests as coroutines
  (``register``, ``login``, ``send``, ``join``, ``invite``, ``history`` ...) and
  ``async for event in client`` for the pushes. It reconnects with backoff, resumes
  its login session, sends again what was not answered, shows each message once,
  moves to the next node of a cluster and pins the server's key; it encrypts end to
  end, its device's state in a :class:`CryptoStore` (:class:`MemoryCryptoStore` by
  default). :func:`start` gives
  it at once, connecting in the background (for a program that shows its state).
* :func:`serve` runs a :class:`~udpchat_proto.ChatServer` on the loop, with
  ``udpchat-server``'s group commit: a :class:`ChatService`.

Its errors are :class:`~udpchat_proto.ProtocolError`\\ s: :class:`RequestRefusedError`
(the server's refusal), :class:`ConnectionLostError`, :class:`ServerKeyChangedError`,
:class:`ServerKeyRefusedError`, :class:`SessionEndedError`, :class:`ClientClosedError`.
"""

from .client import (
    BACKOFF_MAX,
    BACKOFF_START,
    TRANSPORT,
    ChatClient,
    ClientPush,
    LinkState,
    connect,
    start,
)
from .crypto import CryptoStore, MemoryCryptoStore
from .errors import (
    ClientClosedError,
    ConnectionLostError,
    RequestRefusedError,
    ServerKeyChangedError,
    ServerKeyRefusedError,
    SessionEndedError,
)
from .server import BATCH, ChatService, serve

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_START",
    "BATCH",
    "TRANSPORT",
    "ChatClient",
    "ChatService",
    "ClientClosedError",
    "ClientPush",
    "ConnectionLostError",
    "CryptoStore",
    "LinkState",
    "MemoryCryptoStore",
    "RequestRefusedError",
    "ServerKeyChangedError",
    "ServerKeyRefusedError",
    "SessionEndedError",
    "connect",
    "serve",
    "start",
]
