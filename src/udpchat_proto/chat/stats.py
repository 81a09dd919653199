"""The chat server's counters, for monitoring and logs."""

from __future__ import annotations

import collections

import attrs

from .store import StoreUnavailableError

__all__ = ["ServerStats"]


@attrs.define
class ServerStats:
    """Counters for monitoring; they only ever grow."""

    connections_opened: int = 0
    """Handshakes completed (connections the chat layer saw)."""
    payloads: int = 0
    """Application payloads received from established connections."""
    decode_errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    """Payloads that did not decode, by :attr:`DecodeError.reason`."""
    violations: int = 0
    """Payloads dropped as protocol violations (undecodable, or a server-only type)."""
    closed_for_abuse: int = 0
    """Connections closed after ``max_violations`` or a request queue overflow."""
    requests: int = 0
    """Requests answered (including refusals)."""
    refusals: collections.Counter[str] = attrs.Factory(collections.Counter)
    """Error responses sent, by code."""
    messages_accepted: int = 0
    """New messages stored (idempotent repeats not counted)."""
    deliveries_pushed: int = 0
    """``message_delivered`` pushes queued (re-pushes on new connections included)."""
    passwords_upgraded: int = 0
    """Accounts hashed again at the current scrypt cost after a login."""
    passwords_changed: int = 0
    """Passwords changed by their users (``change_password``)."""
    accounts_deleted: int = 0
    """Accounts deleted by their users (``delete_account``)."""
    hash_jobs: int = 0
    """Password hash jobs handed out."""
    acknowledgements_ignored: int = 0
    """``ack_delivery`` messages beyond the connection's request rate (ignored)."""
    messages_deleted: int = 0
    """Messages deleted by retention (``retain_days``)."""
    sessions_evicted: int = 0
    """Login sessions ended because their user went past ``max_sessions_per_user``."""
    sessions_expired: int = 0
    """Login sessions removed by the sweep or found expired at resume."""
    internal_errors: int = 0
    """Requests that failed with an unexpected exception (answered ``internal``)."""
    store_failures: int = 0
    """Store calls and commits that failed with ``StoreUnavailableError`` (requests
    answered ``unavailable``, batches lost)."""
    batches_lost: int = 0
    """Batches whose commit failed: their answers became ``unavailable``."""
    steps_retried: int = 0
    """Requests done again because they lost a race with another node's writes."""
    stores_retried: int = 0
    """Times a cluster node's batch of messages was stored again because storing it
    lost a race with another node's writes (a deadlock)."""
    remote_names_ignored: int = 0
    """Names other nodes said were online that this node did not keep: beyond
    ``MAX_NODE_USERS`` for one node, or from a node beyond ``MAX_NODES``."""
    last_store_failure: StoreUnavailableError | None = attrs.field(default=None, eq=False)
    """The latest store failure, for logging."""
    last_internal_error: BaseException | None = attrs.field(default=None, eq=False)
    """The latest such exception, for logging."""

    def note_store_failure(self, failure: StoreUnavailableError) -> None:
        """Count a store call or commit that failed (the store cannot work now)."""
        self.store_failures += 1
        self.last_store_failure = failure

    def note_internal_error(self, exc: BaseException) -> None:
        """Count an unexpected exception (a bug, or a store that broke)."""
        self.internal_errors += 1
        self.last_internal_error = exc
