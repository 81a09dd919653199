"""udpchat-proto: a sans-IO chat protocol over UDP.

The public API is what this module re-exports; everything else is internal and may
change. The two roles, :class:`ClientConnection` and :class:`ChatServer`, share the
shape of aioquic's ``QuicConnection``::

    receive_datagram(data, addr, now)          # feed what the socket read
    datagrams_to_send(now) -> [(data, addr)]   # what to write
    get_timer() -> float | None                # when to call handle_timer
    handle_timer(now)
    next_event() -> event | None               # typed events for the application

Error handling: command methods raise :class:`LocalProtocolError` (or its subclass
:class:`ValidationError`, carrying the :class:`ErrorCode` a server would answer)
for caller mistakes; :func:`decode` raises :class:`DecodeError` for any bad bytes;
``receive_datagram`` never raises for remote input.
"""

from typing import TYPE_CHECKING, Final

from ._lazy import lazy_exports

if TYPE_CHECKING:  # (the same names as _EXPORTS, for type checkers)
    from .chat import messages
    from .chat.client import ClientConnection, ClientState
    from .chat.codec import CODEC_VERSION, MAX_ENCODED_SIZE, decode, encode
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
    from .chat.passwords import PasswordHash, ScryptParams
    from .chat.server import ChatServer, HashJob, ServerStats
    from .chat.store import Account, LoginSession, Store, StoredMessage, StoreUnavailableError
    from .chat.validation import ValidationError
    from .clock import WallClock
    from .errors import DecodeError, ErrorCode, LocalProtocolError, ProtocolError
    from .randomness import RandomSource, SeededRandomSource, SystemRandomSource
    from .ratelimit import RateLimit
    from .transport.client import ClientTransport
    from .transport.config import TransportConfig
    from .transport.events import (
        Address,
        CloseCode,
        ConnectionAddressChanged,
        ConnectionId,
        ConnectionTerminated,
        HandshakeCompleted,
        PayloadReceived,
        TransportEvent,
    )
    from .transport.keys import ServerKey, fingerprint
    from .transport.server import ServerTransport

#: Where each public name lives: imported at its first use (``_lazy.py``), so that a
#: program using one role does not load the other's modules.
_EXPORTS: Final = {
    ".chat.messages": ("messages",),
    ".chat.client": ("ClientConnection", "ClientState"),
    ".chat.codec": ("CODEC_VERSION", "MAX_ENCODED_SIZE", "decode", "encode"),
    ".chat.config": ("ServerConfig",),
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
    ".chat.memory_store": ("MemoryStore",),
    ".chat.passwords": ("PasswordHash", "ScryptParams"),
    ".chat.server": ("ChatServer", "HashJob", "ServerStats"),
    ".chat.store": ("Account", "LoginSession", "Store", "StoredMessage", "StoreUnavailableError"),
    ".chat.validation": ("ValidationError",),
    ".clock": ("WallClock",),
    ".errors": ("DecodeError", "ErrorCode", "LocalProtocolError", "ProtocolError"),
    ".randomness": ("RandomSource", "SeededRandomSource", "SystemRandomSource"),
    ".ratelimit": ("RateLimit",),
    ".transport.client": ("ClientTransport",),
    ".transport.config": ("TransportConfig",),
    ".transport.events": (
        "Address",
        "CloseCode",
        "ConnectionAddressChanged",
        "ConnectionId",
        "ConnectionTerminated",
        "HandshakeCompleted",
        "PayloadReceived",
        "TransportEvent",
    ),
    ".transport.keys": ("ServerKey", "fingerprint"),
    ".transport.server": ("ServerTransport",),
}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

__version__ = "0.1.0"

__all__ = [
    "CODEC_VERSION",
    "MAX_ENCODED_SIZE",
    "Account",
    "Address",
    "ChatServer",
    "ClientConnected",
    "ClientConnection",
    "ClientDisconnected",
    "ClientEvent",
    "ClientState",
    "ClientTransport",
    "CloseCode",
    "Connected",
    "ConnectionAddressChanged",
    "ConnectionId",
    "ConnectionTerminated",
    "DecodeError",
    "Disconnected",
    "ErrorCode",
    "HandshakeCompleted",
    "HashJob",
    "LocalProtocolError",
    "LoginSession",
    "MemoryStore",
    "PasswordHash",
    "PayloadReceived",
    "ProtocolError",
    "RandomSource",
    "RateLimit",
    "ScryptParams",
    "SeededRandomSource",
    "ServerConfig",
    "ServerEvent",
    "ServerKey",
    "ServerStats",
    "ServerTransport",
    "Store",
    "StoreUnavailableError",
    "StoredMessage",
    "SystemRandomSource",
    "TransportConfig",
    "TransportEvent",
    "UserLoggedIn",
    "UserLoggedOut",
    "ValidationError",
    "WallClock",
    "__version__",
    "decode",
    "encode",
    "fingerprint",
    "messages",
]
