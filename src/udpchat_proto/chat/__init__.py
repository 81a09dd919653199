"""The chat layer, built on the transport: accounts, friends, rooms and messages.

Public API: the two roles (:class:`ClientConnection`, :class:`ChatServer`), the
message catalogue and its codec, the :class:`Store` protocol with the in-memory
store, and the server's configuration. The modules behind it:

==================  ============================================================
``messages``        the catalogue: every request, response and push (attrs)
``codec``           messages to bytes and back (one cattrs converter)
``validation``      the rules for names, passwords and text
``client``          :class:`ClientConnection`, the client role
``server``          :class:`ChatServer`: the server role, built of parts
``handlers``        the request handlers, one unit per concept
``dispatch``        a payload's way to its handler; the registry of routes
``connection``      one server connection's state and its state table
``connections``     the connection table (by id, user and session)
``batch``           what a batch holds until it is durable; :class:`BatchEnd`
``outbox``          answers and pushes, held with the batch or sent
``sessions``        connections' login sessions, their end, closes
``presence``        who is online, and telling their friends
``deliveries``      filling the delivery windows from the store; cursors
``delivery``        a connection's delivery window (backlog, live, refill)
``hashing``         the password hashes of requests, within their caps
``password_jobs``   password hashes as jobs run off the loop
``timers``          the server's own named deadlines
``limits``          the rate limits per user and per address
``caches``          the friend sets of online users
``cluster``         one node of several: news out and in (``remote``)
``admin``           the operator's actions on accounts
``login_budgets``   the budgets of wrong passwords (per address, per user)
``stats``           the server's counters
``config``          :class:`ServerConfig`, every limit and its reason
``events``          the roles' events for the application
``store``           the :class:`Store` protocol, its reads and writes declared once
``memory_store``    the in-memory store
``passwords``       scrypt records
==================  ============================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._lazy import lazy_exports

if TYPE_CHECKING:  # (the same names as _EXPORTS, for type checkers)
    from . import messages
    from .batch import BatchEnd
    from .client import ClientConnection, ClientState
    from .cluster import HEARTBEAT_INTERVAL, MAX_NODE_USERS, MAX_NODES, NODE_TIMEOUT
    from .codec import CODEC_VERSION, MAX_ENCODED_SIZE, decode, encode
    from .config import ServerConfig
    from .events import (
        ClientConnected,
        ClientDisconnected,
        ClientEvent,
        Connected,
        Disconnected,
        ServerEvent,
        UserLoggedIn,
        UserLoggedOut,
    )
    from .memory_store import MemoryStore
    from .password_jobs import HashJob
    from .passwords import PasswordHash, ScryptParams, hash_password
    from .remote import ClusterNews
    from .requests import session_id, token_hash
    from .server import ChatServer
    from .stats import ServerStats
    from .store import (
        MESSAGE_OVERHEAD,
        STORE_READS,
        STORE_WRITES,
        Account,
        Acknowledgement,
        LoginSession,
        Receipt,
        Store,
        StoredMessage,
        StoreUnavailableError,
        WriteTrackingStore,
        conversation_key,
        stored_size,
    )
    from .validation import (
        MAX_TEXT_BYTES,
        TOKEN_SIZE,
        ValidationError,
        check_history_limit,
        check_message_id,
        check_password,
        check_session_id,
        check_text,
        check_username,
        is_room,
        valid_room,
        valid_target,
        valid_username,
    )

#: Where each public name lives: imported at its first use (``udpchat_proto/_lazy.py``):
#: a client does not load the server's modules, nor a server the client's.
_EXPORTS: Final = {
    ".messages": ("messages",),
    ".batch": ("BatchEnd",),
    ".client": ("ClientConnection", "ClientState"),
    ".cluster": ("HEARTBEAT_INTERVAL", "MAX_NODE_USERS", "MAX_NODES", "NODE_TIMEOUT"),
    ".codec": ("CODEC_VERSION", "MAX_ENCODED_SIZE", "decode", "encode"),
    ".config": ("ServerConfig",),
    ".events": (
        "ClientConnected",
        "ClientDisconnected",
        "ClientEvent",
        "Connected",
        "Disconnected",
        "ServerEvent",
        "UserLoggedIn",
        "UserLoggedOut",
    ),
    ".memory_store": ("MemoryStore",),
    ".password_jobs": ("HashJob",),
    ".passwords": ("PasswordHash", "ScryptParams", "hash_password"),
    ".remote": ("ClusterNews",),
    ".requests": ("session_id", "token_hash"),
    ".server": ("ChatServer",),
    ".stats": ("ServerStats",),
    ".store": (
        "MESSAGE_OVERHEAD",
        "STORE_READS",
        "STORE_WRITES",
        "Account",
        "Acknowledgement",
        "LoginSession",
        "Receipt",
        "Store",
        "StoredMessage",
        "StoreUnavailableError",
        "WriteTrackingStore",
        "conversation_key",
        "stored_size",
    ),
    ".validation": (
        "MAX_TEXT_BYTES",
        "TOKEN_SIZE",
        "ValidationError",
        "check_history_limit",
        "check_message_id",
        "check_password",
        "check_session_id",
        "check_text",
        "check_username",
        "is_room",
        "valid_room",
        "valid_target",
        "valid_username",
    ),
}

__all__ = [
    "CODEC_VERSION",
    "HEARTBEAT_INTERVAL",
    "MAX_ENCODED_SIZE",
    "MAX_NODES",
    "MAX_NODE_USERS",
    "MAX_TEXT_BYTES",
    "MESSAGE_OVERHEAD",
    "NODE_TIMEOUT",
    "STORE_READS",
    "STORE_WRITES",
    "TOKEN_SIZE",
    "Account",
    "Acknowledgement",
    "BatchEnd",
    "ChatServer",
    "ClientConnected",
    "ClientConnection",
    "ClientDisconnected",
    "ClientEvent",
    "ClientState",
    "ClusterNews",
    "Connected",
    "Disconnected",
    "HashJob",
    "LoginSession",
    "MemoryStore",
    "PasswordHash",
    "Receipt",
    "ScryptParams",
    "ServerConfig",
    "ServerEvent",
    "ServerStats",
    "Store",
    "StoreUnavailableError",
    "StoredMessage",
    "UserLoggedIn",
    "UserLoggedOut",
    "ValidationError",
    "WriteTrackingStore",
    "check_history_limit",
    "check_message_id",
    "check_password",
    "check_session_id",
    "check_text",
    "check_username",
    "conversation_key",
    "decode",
    "encode",
    "hash_password",
    "is_room",
    "messages",
    "session_id",
    "stored_size",
    "token_hash",
    "valid_room",
    "valid_target",
    "valid_username",
]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
