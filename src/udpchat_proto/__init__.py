"""udpchat-proto: a sans-IO chat protocol over UDP.

This module is the public API an application embeds: the two roles, their
configurations and events, the message catalogue, the errors, server keys,
randomness and the store. Everything else is internal and may change, except the
subpackages' own names, for wire-level use: :mod:`udpchat_proto.chat` (the codec,
the validation rules, the store's accounting helpers, a cluster node's news),
:mod:`udpchat_proto.transport` (the transport's roles, events, packets and
handshake) and :mod:`udpchat_proto.bus` (the cluster bus's sealed messages); and
:mod:`udpchat_proto.build`, which says whether the mypyc-compiled build runs. No
name is exported by two of them.

The two roles, :class:`ClientConnection` and :class:`ChatServer`, share the shape
of aioquic's ``QuicConnection``::

    receive_datagram(data, addr, now)          # feed what the socket read
    datagrams_to_send(now) -> [(data, addr)]   # what to write
    get_timer() -> float | None                # when to call handle_timer
    handle_timer(now)
    next_event() -> event | None               # typed events for the application

Error handling: command methods raise :class:`LocalProtocolError` (or its subclass
:class:`ValidationError`, carrying the :class:`ErrorCode` a server would answer)
for caller mistakes; the codec raises :class:`DecodeError` for any bad bytes;
``receive_datagram`` never raises for remote input.
"""

from typing import TYPE_CHECKING, Final

from ._lazy import lazy_exports

if TYPE_CHECKING:  # (the same names as _EXPORTS, for type checkers)
    from .chat import messages
    from .chat.batch import BatchEnd
    from .chat.client import ClientConnection
    from .chat.config import ServerConfig
    from .chat.events import (
        ClientConnected,
        ClientDisconnected,
        ClientEvent,
        Connected,
        Disconnected,
        ServerEvent,
        UserLoggedIn,
        UserLoggedOut,
    )
    from .chat.memory_store import MemoryStore
    from .chat.password_jobs import HashJob
    from .chat.passwords import PasswordHash, ScryptParams
    from .chat.server import ChatServer
    from .chat.store import (
        Account,
        Acknowledgement,
        LoginSession,
        Receipt,
        Store,
        StoredMessage,
        StoreUnavailableError,
    )
    from .chat.validation import ValidationError
    from .clock import WallClock
    from .errors import DecodeError, ErrorCode, LocalProtocolError, ProtocolError
    from .randomness import RandomSource, SeededRandomSource, SystemRandomSource
    from .ratelimit import RateLimit
    from .transport.config import TransportConfig
    from .transport.events import Address, CloseCode
    from .transport.keys import ServerKey, fingerprint

#: Where each public name lives: imported at its first use (``_lazy.py``), so that a
#: program using one role does not load the other's modules.
_EXPORTS: Final = {
    # The two roles, and what the server's turn hands back.
    ".chat.client": ("ClientConnection",),
    ".chat.server": ("ChatServer",),
    ".chat.batch": ("BatchEnd",),
    ".chat.password_jobs": ("HashJob",),
    # Their configurations.
    ".chat.config": ("ServerConfig",),
    ".transport.config": ("TransportConfig",),
    ".ratelimit": ("RateLimit",),
    # The events (a client's are also the catalogue's responses and pushes), and
    # the close codes that a Disconnected carries.
    ".chat.events": (
        "ClientConnected",
        "ClientDisconnected",
        "ClientEvent",
        "Connected",
        "Disconnected",
        "ServerEvent",
        "UserLoggedIn",
        "UserLoggedOut",
    ),
    ".transport.events": ("Address", "CloseCode"),
    # The message catalogue: a module, its classes the wire's messages.
    ".chat.messages": ("messages",),
    # Errors.
    ".errors": ("DecodeError", "ErrorCode", "LocalProtocolError", "ProtocolError"),
    ".chat.validation": ("ValidationError",),
    # Server keys, randomness, the wall clock.
    ".transport.keys": ("ServerKey", "fingerprint"),
    ".randomness": ("RandomSource", "SeededRandomSource", "SystemRandomSource"),
    ".clock": ("WallClock",),
    # The store: the Protocol, what its methods take and return, the in-memory one.
    ".chat.store": (
        "Account",
        "Acknowledgement",
        "LoginSession",
        "Receipt",
        "Store",
        "StoreUnavailableError",
        "StoredMessage",
    ),
    ".chat.passwords": ("PasswordHash", "ScryptParams"),
    ".chat.memory_store": ("MemoryStore",),
}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

#: This distribution's version (the package's, ``udpchat-proto``).
__version__ = "0.1.0"

__all__ = [
    "Account",
    "Acknowledgement",
    "Address",
    "BatchEnd",
    "ChatServer",
    "ClientConnected",
    "ClientConnection",
    "ClientDisconnected",
    "ClientEvent",
    "CloseCode",
    "Connected",
    "DecodeError",
    "Disconnected",
    "ErrorCode",
    "HashJob",
    "LocalProtocolError",
    "LoginSession",
    "MemoryStore",
    "PasswordHash",
    "ProtocolError",
    "RandomSource",
    "RateLimit",
    "Receipt",
    "ScryptParams",
    "SeededRandomSource",
    "ServerConfig",
    "ServerEvent",
    "ServerKey",
    "Store",
    "StoreUnavailableError",
    "StoredMessage",
    "SystemRandomSource",
    "TransportConfig",
    "UserLoggedIn",
    "UserLoggedOut",
    "ValidationError",
    "WallClock",
    "__version__",
    "fingerprint",
    "messages",
]
