"""The chat layer, built on the transport: accounts, friends, rooms and messages.

The roles, their events, the message catalogue and the store are exported by
:mod:`udpchat_proto` (the public face); this package exports, for wire-level use
and for writing a store or a cluster's runtime, what the face does not: the
codec (:func:`encode`, :func:`decode`), the rules for names, passwords and text
(``check_*``, ``valid_*``), the login tokens' hashes, the store's accounting
helpers and the reads and writes it declares, a cluster node's news and limits,
the client's states and the server's counters. No name is exported by both.

The modules behind it (internal but for ``messages``, the catalogue, which the
face exports as ``udpchat_proto.messages``: import the names above, not these):

==================  ============================================================
``messages``        the catalogue: every request, response and push (attrs)
``codec``           messages to bytes and back (one cattrs converter)
``validation``      the rules for names, passwords and text
``client``          ``ClientConnection``, the client role
``server``          ``ChatServer``: the server role, built of parts
``handlers``        the request handlers, one unit per concept
``dispatch``        a payload's way to its handler; the registry of routes
``connection``      one server connection's state and its state table
``connections``     the connection table (by id, user and session)
``batch``           what a batch holds until it is durable; ``BatchEnd``
``outbox``          answers and pushes, held with the batch or sent
``sessions``        connections' login sessions, their end, closes
``presence``        who is online, and telling their friends
``deliveries``      filling the delivery windows from the store; cursors
``devicesets``      e2ee device sets: members, versions, who sees whose devices
``delivery``        a connection's delivery window (backlog, live, refill)
``hashing``         the password hashes of requests, within their caps
``password_jobs``   password hashes as jobs run off the loop
``timers``          the server's own named deadlines
``pacing``          when a small batch waits for more work before its commit
``limits``          the rate limits per user and per address
``caches``          the friend sets of online users
``cluster``         one node of several: news out and in (``remote``)
``admin``           the operator's actions on accounts
``login_budgets``   the budgets of wrong passwords (per address, per user)
``stats``           the server's counters
``config``          ``ServerConfig``, every limit and its reason
``events``          the roles' events for the application
``store``           the ``Store`` protocol, its reads and writes declared once
``memory_store``    the in-memory store
``passwords``       scrypt records
``tokens``          login tokens: their hashes, their sessions' ids
``secure``          the client side of e2ee: ``ClientCrypto``, a send's steps
==================  ============================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._lazy import lazy_exports

if TYPE_CHECKING:  # (the same names as _EXPORTS, for type checkers)
    from .client import ClientState
    from .cluster import HEARTBEAT_INTERVAL, MAX_NODE_USERS, MAX_NODES, NODE_TIMEOUT
    from .codec import CODEC_VERSION, MAX_ENCODED_SIZE, decode, encode
    from .passwords import hash_password
    from .remote import ClusterNews
    from .secure import (
        MAX_REPLANS,
        ClientCrypto,
        DecryptedMessage,
        MessageDropped,
        Read,
        SendFlow,
        SendStep,
        fingerprint_of,
    )
    from .stats import ServerStats
    from .store import (
        KEY_SHARE_OVERHEAD,
        MESSAGE_OVERHEAD,
        SEALED_OVERHEAD,
        STORE_READS,
        STORE_WRITES,
        WriteTrackingStore,
        add_each,
        conversation_key,
        sealed_size,
        stored_size,
    )
    from .tokens import session_id, token_hash
    from .validation import (
        MAX_TEXT_BYTES,
        TOKEN_SIZE,
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
    # The codec.
    ".codec": ("CODEC_VERSION", "MAX_ENCODED_SIZE", "decode", "encode"),
    # The rules for names, passwords, text and ids (the messages' validators).
    ".validation": (
        "MAX_TEXT_BYTES",
        "TOKEN_SIZE",
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
    # Login tokens and passwords: what the store keeps of them.
    ".tokens": ("session_id", "token_hash"),
    ".passwords": ("hash_password",),
    # For a store's implementer: the accounting rules, the declared reads and writes.
    ".store": (
        "KEY_SHARE_OVERHEAD",
        "MESSAGE_OVERHEAD",
        "SEALED_OVERHEAD",
        "STORE_READS",
        "STORE_WRITES",
        "WriteTrackingStore",
        "add_each",
        "conversation_key",
        "sealed_size",
        "stored_size",
    ),
    # A cluster node's news and limits.
    ".remote": ("ClusterNews",),
    ".cluster": ("HEARTBEAT_INTERVAL", "MAX_NODE_USERS", "MAX_NODES", "NODE_TIMEOUT"),
    # The client's states; the server's counters.
    ".client": ("ClientState",),
    # The client side of end-to-end encryption (every client runtime drives it).
    ".secure": (
        "MAX_REPLANS",
        "ClientCrypto",
        "DecryptedMessage",
        "MessageDropped",
        "Read",
        "SendFlow",
        "SendStep",
        "fingerprint_of",
    ),
    ".stats": ("ServerStats",),
}

__all__ = [
    "CODEC_VERSION",
    "HEARTBEAT_INTERVAL",
    "KEY_SHARE_OVERHEAD",
    "MAX_ENCODED_SIZE",
    "MAX_NODES",
    "MAX_NODE_USERS",
    "MAX_REPLANS",
    "MAX_TEXT_BYTES",
    "MESSAGE_OVERHEAD",
    "NODE_TIMEOUT",
    "SEALED_OVERHEAD",
    "STORE_READS",
    "STORE_WRITES",
    "TOKEN_SIZE",
    "ClientCrypto",
    "ClientState",
    "ClusterNews",
    "DecryptedMessage",
    "MessageDropped",
    "Read",
    "SendFlow",
    "SendStep",
    "ServerStats",
    "WriteTrackingStore",
    "add_each",
    "check_history_limit",
    "check_message_id",
    "check_password",
    "check_session_id",
    "check_text",
    "check_username",
    "conversation_key",
    "decode",
    "encode",
    "fingerprint_of",
    "hash_password",
    "is_room",
    "sealed_size",
    "session_id",
    "stored_size",
    "token_hash",
    "valid_room",
    "valid_target",
    "valid_username",
]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
