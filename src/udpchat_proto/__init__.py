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

from . import messages
from .chat_events import (
    ClientConnected,
    ClientDisconnected,
    ClientEvent,
    Connected,
    Disconnected,
    ServerEvent,
    UserLoggedIn,
    UserLoggedOut,
)
from .client import ClientConnection, ClientState
from .clock import WallClock
from .codec import MAX_ENCODED_SIZE, PROTOCOL_VERSION, decode, encode
from .errors import DecodeError, ErrorCode, LocalProtocolError, ProtocolError
from .keys import ServerKey, fingerprint
from .memory_store import MemoryStore
from .passwords import PasswordHash, ScryptParams
from .randomness import RandomSource, SeededRandomSource, SystemRandomSource
from .ratelimit import RateLimit
from .server import ChatServer, HashJob, ServerStats
from .server_config import ServerConfig
from .store import Account, LoginSession, Store, StoredMessage, StoreUnavailableError
from .transport import ClientTransport, ServerTransport
from .transport_config import TransportConfig
from .transport_events import (
    Address,
    CloseCode,
    ConnectionAddressChanged,
    ConnectionId,
    ConnectionTerminated,
    HandshakeCompleted,
    PayloadReceived,
    TransportEvent,
)
from .validation import ValidationError

__version__ = "0.1.0"

__all__ = [
    "MAX_ENCODED_SIZE",
    "PROTOCOL_VERSION",
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
