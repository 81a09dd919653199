"""The chat server state machine: many connections, one store.

:class:`ChatServer` owns a :class:`~udpchat_proto.transport.ServerTransport` (the
handshake, packet protection and reliable delivery of every connection) and turns
the payloads it delivers into requests, answers and pushes, reading and writing
through an injected :class:`~udpchat_proto.store.Store`. It has the five methods of
every role (``receive_datagram``, ``datagrams_to_send``, ``get_timer``,
``handle_timer``, ``next_event``) and three duties towards its caller:

* **Group commit.** After any store write, every later reply and push is *held*:
  :attr:`ChatServer.writes_pending` turns True, and the caller calls
  :meth:`ChatServer.commit` once per batch, which commits the store and only then
  releases them. So no ``message_accepted`` (nor anything else) leaves before what
  it reports is durable. If the store cannot commit (a full disk:
  :class:`~udpchat_proto.store.StoreUnavailableError`), the batch is lost whole:
  every answer it held becomes an ``unavailable`` refusal and its pushes are
  dropped, so nothing that was rolled back is ever reported.
* **Password hashing off the loop.** Register and login need scrypt, which takes
  tens of milliseconds. The state machine never hashes: it queues a
  :class:`HashJob` (:meth:`ChatServer.take_hash_jobs`), the caller runs
  :meth:`HashJob.run` on a worker thread and hands the digest back
  (:meth:`ChatServer.complete_hash_job`). The connection's later requests wait in
  its queue meanwhile (requests on one connection are answered in order); other
  connections are not delayed.
* **Timers.** :meth:`ChatServer.get_timer` is the earliest of the transport's timers
  and the next session sweep.

A typical loop::

    server.receive_datagram(data, addr, now)        # for each datagram read
    for job in server.take_hash_jobs():             # run off the loop, then:
        server.complete_hash_job(job.job_id, job.run(), now)
    server.commit()                                 # group commit, then:
    for data, addr in server.datagrams_to_send(now):
        sock.sendto(data, addr)

Message delivery: every login session has a cursor per conversation in the store.
Each logged-in connection has a window of at most ``delivery_window`` pushed but
unacknowledged messages; the server fills it from
:meth:`~udpchat_proto.store.Store.pending_deliveries` (oldest first) and tops it up
as acknowledgements arrive. A connection that has sent its whole backlog is
*caught up*: new messages are pushed to it at once; otherwise they wait their turn
in the store, which keeps every connection's pushes in store order.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import enum
import hashlib
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs

from . import messages as m
from .chat_events import (
    ClientConnected,
    ClientDisconnected,
    ServerEvent,
    UserLoggedIn,
    UserLoggedOut,
)
from .clock import WallClock
from .codec import decode, encode
from .errors import DecodeError, ErrorCode, LocalProtocolError
from .keys import ServerKey
from .passwords import PasswordHash, ScryptParams, hash_password, verify_digest
from .randomness import RandomSource, SystemRandomSource
from .ratelimit import KeyedLimiter, TokenBucket
from .server_config import ServerConfig
from .store import Account, LoginSession, Store, StoredMessage, StoreUnavailableError
from .transport import (
    Address,
    ConnectionAddressChanged,
    ConnectionId,
    ConnectionTerminated,
    HandshakeCompleted,
    PayloadReceived,
    ServerTransport,
    TransportEvent,
)
from .validation import LIST_MAX, TOKEN_SIZE, is_room

__all__ = [
    "ChatServer",
    "ConnectionState",
    "HashJob",
    "ServerConfig",
    "ServerStats",
]

SALT_SIZE: Final = 16
"""Bytes of random salt in each new password hash."""
ACK_CHUNK: Final = 1000
"""Most message ids the store is asked to acknowledge in one call."""
SESSION_TOUCH_DELAY: Final = 60.0
"""Seconds a resumed session's "last used" time waits before it is written, with
every other resume of that minute, in one batch. A resume then needs no write (it
works while the disk is full) and costs no commit of its own; a crash forgets at
most this much of a 30-day idle expiry."""
STORE_RETRY_INTERVAL: Final = 1.0
"""Seconds after a lost batch before the connections whose pushes it dropped are
refilled from the store (which holds what was really kept)."""


def token_hash(token: bytes) -> bytes:
    """What the store keeps of a login token: its SHA-256."""
    return hashlib.sha256(token).digest()


def _unavailable(failure: StoreUnavailableError) -> str:
    """The refusal's words for people (the CLI shows them as they are)."""
    return f"the server cannot store anything now ({failure.reason}); try later"


def utc_from_posix(now: float) -> datetime.datetime:
    """A UTC datetime for POSIX seconds, at the microsecond precision of the wire."""
    return datetime.datetime.fromtimestamp(now, tz=datetime.UTC)


# --- hash jobs ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class HashJob:
    """One scrypt computation the caller must run off the event loop.

    Run it with :meth:`run` (on a worker thread: ``hashlib.scrypt`` releases the
    GIL) and pass the digest to :meth:`ChatServer.complete_hash_job`.
    """

    job_id: int
    """Names the job in :meth:`ChatServer.complete_hash_job`."""
    password: str = attrs.field(repr=False)
    """The password to hash (never shown by ``repr``)."""
    salt: bytes = attrs.field(repr=False)
    params: ScryptParams

    def run(self) -> bytes:
        """Compute the digest (CPU-heavy; thread-safe).

        Returns:
            ``passwords.hash_password(password, salt, params)``.
        """
        return hash_password(self.password, self.salt, self.params)


class _JobKind(enum.Enum):
    REGISTER = "register"
    LOGIN = "login"


@attrs.frozen(kw_only=True)
class _PendingJob:
    kind: _JobKind
    connection_id: ConnectionId
    request: m.Register | m.Login
    salt: bytes
    params: ScryptParams
    account: Account | None
    """For a login: the account, or None for an unknown name (the hash still runs,
    so that an unknown name and a wrong password take the same time)."""
    host: str


# --- connection state ----------------------------------------------------------------


class ConnectionState(enum.Enum):
    """Whom a connection acts as."""

    ANONYMOUS = "anonymous"
    """Only ``register``, ``login`` and ``resume`` are allowed."""
    LOGGED_IN = "logged_in"
    """Acts as the user of one login session."""


class _Input(enum.Enum):
    LOGIN = "login"
    """A login or resume succeeded (on a logged-in connection it switches session)."""
    LOGOUT = "logout"
    """Logout, or the session was ended by another connection's logout."""


_TRANSITIONS: Final[dict[tuple[ConnectionState, _Input], ConnectionState]] = {
    (ConnectionState.ANONYMOUS, _Input.LOGIN): ConnectionState.LOGGED_IN,
    (ConnectionState.LOGGED_IN, _Input.LOGIN): ConnectionState.LOGGED_IN,
    (ConnectionState.LOGGED_IN, _Input.LOGOUT): ConnectionState.ANONYMOUS,
}


@attrs.frozen(kw_only=True)
class _Refusal:
    """A request that arrived invalid: answered in its turn with this error."""

    request_id: int
    code: ErrorCode
    message: str


_Queued = (
    m.Register
    | m.Login
    | m.Resume
    | m.Logout
    | m.SendMessage
    | m.Invite
    | m.AcceptInvitation
    | m.DeclineInvitation
    | m.CancelInvitation
    | m.Unfriend
    | m.ListInvitations
    | m.ListFriends
    | m.ListOnline
    | m.GetHistory
    | m.JoinRoom
    | m.LeaveRoom
    | m.ListRooms
    | m.ListMembers
    | _Refusal
)
"""What waits in a connection's queue: a request that gets an answer, or a refusal."""


class _Connection:
    """The chat-level state of one transport connection."""

    def __init__(self, connection_id: ConnectionId, address: Address, requests: TokenBucket):
        self.connection_id = connection_id
        self.address = address
        self.state = ConnectionState.ANONYMOUS
        self.username: str | None = None
        self.token_hash: bytes | None = None
        self.busy_job: int | None = None
        """The hash job this connection waits for; its requests queue meanwhile."""
        self.queue: collections.deque[_Queued] = collections.deque()
        self.in_flight: dict[bytes, None] = {}
        """Ids pushed as message_delivered and not yet acknowledged (ordered set)."""
        self.caught_up = False
        """Everything pending for this session was pushed (or is in flight)."""
        self.violations = 0
        self.requests = requests

    def transition(self, event: _Input) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(f"no transition from {self.state} on {event}") from None


# --- statistics ------------------------------------------------------------------------


@attrs.define
class ServerStats:
    """Counters for monitoring; they only ever grow."""

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
    hash_jobs: int = 0
    """Password hash jobs handed out."""
    sessions_expired: int = 0
    """Login sessions removed by the sweep or found expired at resume."""
    internal_errors: int = 0
    """Requests that failed with an unexpected exception (answered ``internal``)."""
    store_failures: int = 0
    """Store calls and commits that failed with ``StoreUnavailableError`` (requests
    answered ``unavailable``, batches lost)."""
    batches_lost: int = 0
    """Batches whose commit failed: their answers became ``unavailable``."""
    last_store_failure: StoreUnavailableError | None = attrs.field(default=None, eq=False)
    """The latest store failure, for logging."""
    last_internal_error: BaseException | None = attrs.field(default=None, eq=False)
    """The latest such exception, for logging."""


# --- the store, with writes tracked ---------------------------------------------------------


class _TrackedStore:
    """Forwards to the injected store and notes whether anything was written."""

    def __init__(self, store: Store) -> None:
        self.inner = store
        self.dirty = False

    def _write(self) -> Store:
        self.dirty = True
        return self.inner

    def atomic(self) -> contextlib.AbstractContextManager[None]:
        return self.inner.atomic()

    # reads
    def get_account(self, username: str) -> Account | None:
        return self.inner.get_account(username)

    def get_session(self, token_hash: bytes) -> LoginSession | None:
        return self.inner.get_session(token_hash)

    def has_invitation(self, sender: str, recipient: str) -> bool:
        return self.inner.has_invitation(sender, recipient)

    def incoming_invitations(self, username: str) -> list[str]:
        return self.inner.incoming_invitations(username)

    def outgoing_invitations(self, username: str) -> list[str]:
        return self.inner.outgoing_invitations(username)

    def are_friends(self, a: str, b: str) -> bool:
        return self.inner.are_friends(a, b)

    def friends_of(self, username: str) -> list[str]:
        return self.inner.friends_of(username)

    def get_message(self, message_id: bytes) -> StoredMessage | None:
        return self.inner.get_message(message_id)

    def history(self, username: str, peer: str, limit: int) -> list[m.ChatMessage]:
        return self.inner.history(username, peer, limit)

    def pending_deliveries(
        self, username: str, token_hash: bytes, limit: int
    ) -> list[m.ChatMessage]:
        return self.inner.pending_deliveries(username, token_hash, limit)

    def room_exists(self, room: str) -> bool:
        return self.inner.room_exists(room)

    def room_members(self, room: str) -> list[str]:
        return self.inner.room_members(room)

    def rooms_of(self, username: str) -> list[tuple[str, int]]:
        return self.inner.rooms_of(username)

    # writes
    def create_account(self, username: str, password: PasswordHash, now: float) -> bool:
        return self._write().create_account(username, password, now)

    def create_session(self, token_hash: bytes, username: str, now: float) -> None:
        self._write().create_session(token_hash, username, now)

    def touch_session(self, token_hash: bytes, now: float) -> None:
        self._write().touch_session(token_hash, now)

    def delete_session(self, token_hash: bytes) -> None:
        self._write().delete_session(token_hash)

    def delete_sessions_unused_since(self, cutoff: float) -> int:
        return self._write().delete_sessions_unused_since(cutoff)

    def add_invitation(self, sender: str, recipient: str, now: float) -> None:
        self._write().add_invitation(sender, recipient, now)

    def delete_invitation(self, sender: str, recipient: str) -> bool:
        return self._write().delete_invitation(sender, recipient)

    def add_friendship(self, a: str, b: str, now: float) -> None:
        self._write().add_friendship(a, b, now)

    def delete_friendship(self, a: str, b: str) -> bool:
        return self._write().delete_friendship(a, b)

    def add_message(self, message: m.ChatMessage) -> StoredMessage:
        return self._write().add_message(message)

    def acknowledge(self, username: str, token_hash: bytes, message_ids: Sequence[bytes]) -> None:
        self._write().acknowledge(username, token_hash, message_ids)

    def join_room(self, room: str, username: str, now: float) -> bool:
        return self._write().join_room(room, username, now)

    def leave_room(self, room: str, username: str) -> bool:
        return self._write().leave_room(room, username)


class _RefusedError(Exception):
    """Raised inside a request handler to answer with an error response."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- the server ------------------------------------------------------------------------------

_ANONYMOUS_REQUESTS: Final = (m.Register, m.Login, m.Resume)


class ChatServer:
    """The server role: routes every connection's requests to the store and back.

    Args:
        store: where accounts, sessions, friendships, rooms and messages live. The
            caller owns it: it commits it when :attr:`writes_pending` says so.
        static_key: the server's Noise static key.
        clock: the wall clock, POSIX seconds (``time.time`` in a real server):
            message timestamps and session expiry, which outlive the process.
            Timers and rate limits run on the ``now`` each call passes instead, a
            monotonic clock, so that a wall-clock step (NTP) never moves them.
        config: limits and timeouts (defaults: :class:`ServerConfig`).
        random: where tokens, salts and transport keys come from (default: the OS).

    Nothing here raises for remote input. Store exceptions in a request handler are
    answered ``internal`` and counted in :attr:`stats` (the store's transaction is
    the caller's to roll back or commit).
    """

    def __init__(
        self,
        *,
        store: Store,
        static_key: ServerKey,
        clock: WallClock,
        config: ServerConfig | None = None,
        random: RandomSource | None = None,
    ) -> None:
        self._clock = clock
        self._config = config if config is not None else ServerConfig()
        self._random: RandomSource = random if random is not None else SystemRandomSource()
        self._store = _TrackedStore(store)
        self._server_key = static_key.public_bytes
        self._transport = ServerTransport(
            static_key=static_key, config=self._config.transport, random=self._random
        )
        self._connections: dict[ConnectionId, _Connection] = {}
        self._by_user: dict[str, dict[ConnectionId, None]] = {}
        """Live logged-in connections of each online user (insertion-ordered)."""
        self._by_session: dict[bytes, dict[ConnectionId, None]] = {}
        self._held: list[tuple[ConnectionId, m.Response | m.Push, bytes]] = []
        """Replies and pushes waiting for the batch's commit (message and payload)."""
        self._stale: dict[ConnectionId, None] = {}
        """Connections whose pushes a lost batch dropped: refilled at ``_retry_at``."""
        self._retry_at: float | None = None
        self._touches: dict[bytes, float] = {}
        """Sessions resumed since the last flush, with when (see SESSION_TOUCH_DELAY)."""
        self._touching: dict[bytes, float] = {}
        """The touches written in the current batch (put back if it is lost)."""
        self._touch_at: float | None = None
        self._stepping = False
        """Inside a request's step: its output waits for the step to complete."""
        self._events: collections.deque[ServerEvent] = collections.deque()
        self._job_ids = itertools.count(1)
        self._jobs: dict[int, _PendingJob] = {}
        self._new_jobs: list[HashJob] = []
        self._user_failures: KeyedLimiter[str] = KeyedLimiter(self._config.login_failures_per_user)
        self._address_failures: KeyedLimiter[str] = KeyedLimiter(
            self._config.login_failures_per_address
        )
        self._registrations: KeyedLimiter[str] = KeyedLimiter(
            self._config.registrations_per_address
        )
        self._message_rate: KeyedLimiter[bytes] = KeyedLimiter(self._config.message_rate)
        self._next_sweep: float | None = None
        self._now = 0.0
        """The latest ``now`` given (for a close decided where no ``now`` is passed)."""
        self._closing: set[ConnectionId] = set()
        """Connections this server is closing: their further payloads are ignored."""
        self.stats = ServerStats()
        """Counters for monitoring (see :class:`ServerStats`)."""
        # Each handler takes its own request class; the dispatch by type keeps that sound.
        self._handlers: dict[type, Callable[[_Connection, Any, float], None]] = {
            m.Register: self._on_register,
            m.Login: self._on_login,
            m.Resume: self._on_resume,
            m.Logout: self._on_logout,
            m.SendMessage: self._on_send_message,
            m.Invite: self._on_invite,
            m.AcceptInvitation: self._on_accept,
            m.DeclineInvitation: self._on_decline,
            m.CancelInvitation: self._on_cancel,
            m.Unfriend: self._on_unfriend,
            m.ListInvitations: self._on_list_invitations,
            m.ListFriends: self._on_list_friends,
            m.ListOnline: self._on_list_online,
            m.GetHistory: self._on_get_history,
            m.JoinRoom: self._on_join_room,
            m.LeaveRoom: self._on_leave_room,
            m.ListRooms: self._on_list_rooms,
            m.ListMembers: self._on_list_members,
        }

    # --- the five methods ----------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Feed one datagram read from the socket.

        Never raises for remote input: bad datagrams are dropped and counted.

        Args:
            data: the datagram's bytes.
            addr: where it came from.
            now: a monotonic clock, seconds (``time.monotonic()``).

        Then call :meth:`take_hash_jobs`, commit if :attr:`writes_pending`, and call
        :meth:`datagrams_to_send`.
        """
        self._now = now
        self._maybe_sweep(now)
        self._transport.receive_datagram(data, addr, now)
        self._drain_transport(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Return the datagrams to write now (held replies are not among them).

        Args:
            now: a monotonic clock, seconds (``time.monotonic()``).

        Returns:
            ``(data, address)`` pairs, each at most the configured datagram size.
        """
        self._now = now
        datagrams: list[tuple[bytes, Address]] = self._transport.datagrams_to_send(now)
        # Building datagrams can end a connection (a close that was just sent).
        self._drain_transport(now)
        return datagrams

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should be called next (POSIX seconds), or None."""
        timers = [
            t
            for t in (self._transport.get_timer(), self._next_sweep, self._retry_at, self._touch_at)
            if t is not None
        ]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now`` (an early call is harmless).

        Then commit if :attr:`writes_pending`, and call :meth:`datagrams_to_send`.
        """
        self._now = now
        self._maybe_sweep(now)
        if self._touch_at is not None and now >= self._touch_at:
            self._flush_touches()
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            stale, self._stale = self._stale, {}
            for connection_id in stale:
                connection = self._connections.get(connection_id)
                if connection is not None:
                    self._retry_refill(connection)
        self._transport.handle_timer(now)
        self._drain_transport(now)

    def next_event(self) -> ServerEvent | None:
        """The next event for logging, or None when there is none."""
        return self._events.popleft() if self._events else None

    # --- group commit --------------------------------------------------------------------

    @property
    def writes_pending(self) -> bool:
        """Whether the store was written since the last commit.

        While it is True, replies and pushes are held until :meth:`commit`.
        """
        return self._store.dirty

    def commit(self) -> StoreUnavailableError | None:
        """Commit the batch, if anything was written, and release what it held.

        Call it once per batch, after feeding every datagram, hash result and timer
        of the batch, and before :meth:`datagrams_to_send` (group commit).

        Returns:
            None once the batch is durable (or there was nothing to commit); the
            store's :class:`~udpchat_proto.store.StoreUnavailableError` if the batch
            was lost (see :meth:`rolled_back`), for the caller to log.
        """
        if not self._store.dirty:
            return None
        try:
            self._store.inner.commit()
        except StoreUnavailableError as exc:
            self.rolled_back(exc)
            return exc
        self.committed()
        return None

    def committed(self) -> None:
        """Tell the server that the caller committed the store itself.

        Releases every reply and push held since the first uncommitted write, in
        order. Then call :meth:`datagrams_to_send`. (:meth:`commit` does both.)
        """
        self._store.dirty = False
        self._touching.clear()
        held, self._held = self._held, []
        for connection_id, _message, payload in held:
            self._transport_send(connection_id, payload)

    def rolled_back(self, failure: StoreUnavailableError) -> None:
        """Tell the server that the batch could not be committed: it is lost.

        Nothing it held is sent as it was: every held answer becomes an
        ``unavailable`` refusal (the client may try again), a login it held is
        undone, and its pushes are dropped; connections whose deliveries were
        dropped are refilled from the store after :data:`STORE_RETRY_INTERVAL`.
        Then call :meth:`datagrams_to_send`.
        """
        self._store.dirty = False
        self._note_store_failure(failure)
        self.stats.batches_lost += 1
        self._touches = {**self._touching, **self._touches}
        self._touching.clear()
        if self._touches and self._touch_at is None:
            self._touch_at = self._now + SESSION_TOUCH_DELAY
        held, self._held = self._held, []
        for connection, response in self._retract(held):
            self._refuse(
                connection, response.request_id, ErrorCode.UNAVAILABLE, _unavailable(failure)
            )

    def _retract(
        self, held: list[tuple[ConnectionId, m.Response | m.Push, bytes]]
    ) -> list[tuple[_Connection, m.Response]]:
        """Undo what held output stood for, since it will never be sent.

        A login or resume it reported is undone (its session may not exist), a
        delivery is taken out of the window (the store pushes it again if it holds
        it); other pushes are dropped.

        Returns:
            The held answers, for the caller to replace with a refusal.
        """
        answers: list[tuple[_Connection, m.Response]] = []
        for connection_id, message, _payload in held:
            connection = self._connections.get(connection_id)
            if connection is None or connection_id in self._closing:
                continue
            if isinstance(message, m.MessageDelivered):
                connection.in_flight.pop(message.message.id, None)
                connection.caught_up = False
                self._stale[connection_id] = None
                if self._retry_at is None:
                    self._retry_at = self._now + STORE_RETRY_INTERVAL
            elif isinstance(message, m.RESPONSE_TYPES):
                if isinstance(message, m.LoggedIn):
                    self._log_out(connection, self._now, announce=True)
                answers.append((connection, message))
        return answers

    def _retry_refill(self, connection: _Connection) -> None:
        try:
            self._refill(connection)
        except StoreUnavailableError as failure:
            self._note_store_failure(failure)
            self._stale[connection.connection_id] = None
            self._retry_at = self._now + STORE_RETRY_INTERVAL
        except Exception as exc:
            self._count_internal_error(exc)

    def _note_store_failure(self, failure: StoreUnavailableError) -> None:
        self.stats.store_failures += 1
        self.stats.last_store_failure = failure

    # --- hash jobs -----------------------------------------------------------------------

    def take_hash_jobs(self) -> list[HashJob]:
        """Return the password hashes to compute; each job is returned once.

        Run each (:meth:`HashJob.run`, off the event loop) and pass the digest to
        :meth:`complete_hash_job`.
        """
        jobs, self._new_jobs = self._new_jobs, []
        return jobs

    def complete_hash_job(self, job_id: int, digest: bytes, now: float) -> None:
        """Hand back the digest of a :class:`HashJob`.

        Answers the register or login that asked for it, then the requests that
        connection queued meanwhile. A job whose connection has gone is ignored,
        as is an unknown ``job_id``.

        Args:
            job_id: :attr:`HashJob.job_id`.
            digest: what :meth:`HashJob.run` returned.
            now: a monotonic clock, seconds (``time.monotonic()``).

        Then commit if :attr:`writes_pending`, and call :meth:`datagrams_to_send`.
        """
        self._now = now
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        connection = self._connections.get(job.connection_id)
        if connection is None or connection.busy_job != job_id:
            return
        connection.busy_job = None
        finish = self._finish_register if job.kind is _JobKind.REGISTER else self._finish_login
        self._run_atomically(connection, job.request.request_id, finish, job, digest, now)
        self._run_queue(connection, now)

    # --- introspection -------------------------------------------------------------------

    @property
    def config(self) -> ServerConfig:
        """The configuration in force."""
        return self._config

    @property
    def connection_count(self) -> int:
        """Connections that completed the handshake and have not ended."""
        return len(self._connections)

    @property
    def online_users(self) -> list[str]:
        """Users with at least one live logged-in connection, sorted."""
        return sorted(self._by_user)

    @property
    def pending_hash_jobs(self) -> int:
        """Hash jobs handed out (or about to be) and not yet completed."""
        return len(self._jobs)

    @property
    def server_key(self) -> bytes:
        """The server's static public key (what clients pin)."""
        return self._server_key

    # --- transport events ----------------------------------------------------------------

    def _drain_transport(self, now: float) -> None:
        while (event := self._transport.next_event()) is not None:
            self._on_transport_event(event, now)

    def _on_transport_event(self, event: TransportEvent, now: float) -> None:
        if isinstance(event, HandshakeCompleted):
            connection = _Connection(
                event.connection_id,
                event.address,
                TokenBucket(self._config.request_rate, now=now),
            )
            self._connections[event.connection_id] = connection
            self._events.append(
                ClientConnected(connection_id=event.connection_id, address=event.address)
            )
        elif isinstance(event, PayloadReceived):
            self._on_payload(event.connection_id, event.payload, now)
        elif isinstance(event, ConnectionAddressChanged):
            migrated = self._connections.get(event.connection_id)
            if migrated is not None:
                migrated.address = event.address
        elif isinstance(event, ConnectionTerminated):
            self._closing.discard(event.connection_id)
            ended = self._connections.pop(event.connection_id, None)
            if ended is not None:
                self._log_out(ended, now, announce=False)
                self._events.append(
                    ClientDisconnected(
                        connection_id=event.connection_id, code=event.code, reason=event.reason
                    )
                )

    def _on_payload(self, connection_id: ConnectionId, payload: bytes, now: float) -> None:
        if connection_id in self._closing:
            return
        connection = self._connections.get(connection_id)
        if connection is None:
            # The transport delivers payloads only on established connections, whose
            # HandshakeCompleted came first; tolerate it anyway.
            address = self._transport.address_of(connection_id)
            if address is None:
                return
            connection = _Connection(
                connection_id, address, TokenBucket(self._config.request_rate, now=now)
            )
            self._connections[connection_id] = connection
        self.stats.payloads += 1
        item: _Queued
        try:
            message = decode(payload)
        except DecodeError as exc:
            self.stats.decode_errors[exc.reason] += 1
            if exc.request_id is None or exc.code is None:
                self._violation(connection, now, f"undecodable payload ({exc.reason})")
                return
            item = _Refusal(request_id=exc.request_id, code=exc.code, message=exc.detail[:200])
        else:
            if isinstance(message, m.AcknowledgeDelivery):
                # Not a request: no answer, and nothing to keep in order with them.
                try:
                    self._on_acknowledge(connection, message, now)
                except Exception as exc:  # the store failed: nobody to answer
                    self._count_internal_error(exc)
                return
            if not isinstance(message, m.REQUEST_TYPES):  # a response or push: server-only
                self._violation(connection, now, f"{type(message).__name__} sent to the server")
                return
            item = message
        if not connection.requests.spend(now=now):
            item = _Refusal(
                request_id=item.request_id,
                code=ErrorCode.RATE_LIMITED,
                message="too many requests on this connection; slow down",
            )
        if connection.busy_job is not None or connection.queue:
            if len(connection.queue) >= self._config.max_queued_requests:
                self.stats.closed_for_abuse += 1
                self._close_connection(connection_id, "too many pipelined requests")
                return
            connection.queue.append(item)
            return
        self._dispatch(connection, item, now)

    def _violation(self, connection: _Connection, now: float, reason: str) -> None:
        self.stats.violations += 1
        connection.violations += 1
        if connection.violations > self._config.max_violations:
            self.stats.closed_for_abuse += 1
            self._close_connection(connection.connection_id, f"protocol violation: {reason}")

    # --- request dispatch ----------------------------------------------------------------

    def _run_queue(self, connection: _Connection, now: float) -> None:
        """Answer queued requests until one starts a hash job or none is left."""
        while (
            connection.busy_job is None
            and connection.queue
            and connection.connection_id in self._connections
            and connection.connection_id not in self._closing
        ):
            self._dispatch(connection, connection.queue.popleft(), now)

    def _dispatch(self, connection: _Connection, item: _Queued, now: float) -> None:
        self.stats.requests += 1
        if isinstance(item, _Refusal):
            self._refuse(connection, item.request_id, item.code, item.message)
            return
        if connection.state is not ConnectionState.LOGGED_IN and not isinstance(
            item, _ANONYMOUS_REQUESTS
        ):
            self._refuse(
                connection,
                item.request_id,
                ErrorCode.NOT_LOGGED_IN,
                "log in (or resume a session) first",
            )
            return
        self._run_atomically(connection, item.request_id, self._handlers[type(item)], item, now)

    def _run_atomically(
        self, connection: _Connection, request_id: int, step: Callable[..., None], *args: Any
    ) -> None:
        """Run one request's step so that its writes and its output all happen or
        none do: a refusal or a store failure half-way leaves nothing of it for the
        batch, and nothing it would have sent (its answer, pushes, a login) leaves."""
        mark = len(self._held)
        self._stepping = True
        try:
            with self._store.atomic():
                step(connection, *args)
        except Exception as exc:
            self._stepping = False
            undone, self._held[mark:] = self._held[mark:], []
            self._retract(undone)
            if isinstance(exc, _RefusedError):
                self._refuse(connection, request_id, exc.code, exc.message)
            elif isinstance(exc, StoreUnavailableError):
                self._note_store_failure(exc)
                self._refuse(connection, request_id, ErrorCode.UNAVAILABLE, _unavailable(exc))
            else:
                self._internal_error(connection, request_id, exc)
        else:
            self._stepping = False
            if not self._store.dirty:  # nothing to wait for: out now
                done, self._held[mark:] = self._held[mark:], []
                for connection_id, _message, payload in done:
                    self._transport_send(connection_id, payload)
        finally:
            self._stepping = False

    def _internal_error(self, connection: _Connection, request_id: int, exc: Exception) -> None:
        self._count_internal_error(exc)
        self._refuse(connection, request_id, ErrorCode.INTERNAL, "internal server error")

    def _count_internal_error(self, exc: Exception) -> None:
        self.stats.internal_errors += 1
        self.stats.last_internal_error = exc

    # --- output --------------------------------------------------------------------------

    def _send(self, connection_id: ConnectionId, message: m.Response | m.Push) -> None:
        payload = encode(message)
        if self._store.dirty or self._stepping:
            self._held.append((connection_id, message, payload))
        else:
            self._transport_send(connection_id, payload)

    def _transport_send(self, connection_id: ConnectionId, payload: bytes) -> None:
        if connection_id not in self._connections or connection_id in self._closing:
            return  # ended (or is ending) while the payload was held
        try:
            self._transport.send(connection_id, payload)
        except LocalProtocolError:
            # Its send buffer is full (it does not read what it asked for) or it is
            # already closing. Dropping one payload would break the order of its
            # answers, so the connection ends; its session's unacknowledged
            # messages are pushed again on its next connection.
            self._close_connection(connection_id, "send buffer full")

    def _close_connection(self, connection_id: ConnectionId, reason: str) -> None:
        if connection_id in self._closing:
            return
        self._closing.add(connection_id)
        with contextlib.suppress(LocalProtocolError):  # already gone
            self._transport.close(connection_id, self._now, reason)

    def _reply(self, connection: _Connection, message: m.Response) -> None:
        try:
            self._send(connection.connection_id, message)
        except LocalProtocolError:
            # Only an answer over the size limit can fail to encode.
            self._refuse(
                connection, message.request_id, ErrorCode.TOO_LARGE, "the answer is too large"
            )

    def _refuse(
        self, connection: _Connection, request_id: int, code: ErrorCode, message: str
    ) -> None:
        self.stats.refusals[code.value] += 1
        self._send(
            connection.connection_id,
            m.ErrorResponse(request_id=request_id, code=code, message=message),
        )

    def _push_to_user(self, username: str, push: m.Push) -> None:
        for connection_id in self._by_user.get(username, ()):
            self._send(connection_id, push)

    # --- sessions ------------------------------------------------------------------------

    def _on_register(self, connection: _Connection, request: m.Register, now: float) -> None:
        if self._store.get_account(request.username) is not None:
            raise _RefusedError(ErrorCode.USER_EXISTS, f"{request.username} is taken")
        host = connection.address[0]
        if len(self._jobs) >= self._config.max_pending_hash_jobs:
            raise _RefusedError(ErrorCode.RATE_LIMITED, "the server is busy; try again shortly")
        if not self._registrations.spend(host, now=now):
            raise _RefusedError(ErrorCode.RATE_LIMITED, "too many registrations from your address")
        self._start_job(
            connection,
            _JobKind.REGISTER,
            request,
            salt=self._random.token_bytes(SALT_SIZE),
            params=self._config.scrypt,
            account=None,
        )

    def _finish_register(
        self, connection: _Connection, job: _PendingJob, digest: bytes, now: float
    ) -> None:
        request = job.request
        record = PasswordHash(salt=job.salt, params=job.params, digest=digest)
        if not self._store.create_account(request.username, record, self._clock()):
            # Another connection registered the name while this hash ran.
            raise _RefusedError(ErrorCode.USER_EXISTS, f"{request.username} is taken")
        self._reply(connection, m.Ok(request_id=request.request_id))

    def _on_login(self, connection: _Connection, request: m.Login, now: float) -> None:
        host = connection.address[0]
        if not self._user_failures.available(
            request.username, now=now
        ) or not self._address_failures.available(host, now=now):
            raise _RefusedError(
                ErrorCode.RATE_LIMITED, "too many failed logins; wait and try again"
            )
        if len(self._jobs) >= self._config.max_pending_hash_jobs:
            raise _RefusedError(ErrorCode.RATE_LIMITED, "the server is busy; try again shortly")
        account = self._store.get_account(request.username)
        if account is None:
            salt, params = self._random.token_bytes(SALT_SIZE), self._config.scrypt
        else:
            salt, params = account.password.salt, account.password.params
        self._start_job(
            connection, _JobKind.LOGIN, request, salt=salt, params=params, account=account
        )

    def _finish_login(
        self, connection: _Connection, job: _PendingJob, digest: bytes, now: float
    ) -> None:
        request = job.request
        if job.account is None or not verify_digest(job.account.password, digest):
            self._user_failures.spend(request.username, now=now)
            self._address_failures.spend(job.host, now=now)
            raise _RefusedError(ErrorCode.BAD_CREDENTIALS, "unknown user or wrong password")
        token = self._random.token_bytes(TOKEN_SIZE)
        hashed = token_hash(token)
        self._store.create_session(hashed, request.username, self._clock())
        self._log_in(connection, request.username, hashed, now)
        self._reply(
            connection,
            m.LoggedIn(request_id=request.request_id, username=request.username, token=token),
        )
        self._events.append(
            UserLoggedIn(connection_id=connection.connection_id, username=request.username)
        )
        self._refill(connection)

    def _start_job(
        self,
        connection: _Connection,
        kind: _JobKind,
        request: m.Register | m.Login,
        *,
        salt: bytes,
        params: ScryptParams,
        account: Account | None,
    ) -> None:
        job_id = next(self._job_ids)
        self._jobs[job_id] = _PendingJob(
            kind=kind,
            connection_id=connection.connection_id,
            request=request,
            salt=salt,
            params=params,
            account=account,
            host=connection.address[0],
        )
        self._new_jobs.append(
            HashJob(job_id=job_id, password=request.password, salt=salt, params=params)
        )
        connection.busy_job = job_id
        self.stats.hash_jobs += 1

    def _on_resume(self, connection: _Connection, request: m.Resume, now: float) -> None:
        hashed = token_hash(request.token)
        session = self._store.get_session(hashed)
        if session is None:
            raise _RefusedError(
                ErrorCode.BAD_CREDENTIALS, "unknown or expired session; log in again"
            )
        wall = self._clock()
        if session.last_used_at < wall - self._config.session_lifetime:
            self._end_session(hashed, now)
            self._store.delete_session(hashed)
            self.stats.sessions_expired += 1
            raise _RefusedError(
                ErrorCode.BAD_CREDENTIALS, "unknown or expired session; log in again"
            )
        # Noted, written within SESSION_TOUCH_DELAY: a resume needs no write.
        self._touches[hashed] = wall
        if self._touch_at is None:
            self._touch_at = now + SESSION_TOUCH_DELAY
        self._log_in(connection, session.username, hashed, now)
        self._reply(
            connection,
            m.LoggedIn(
                request_id=request.request_id, username=session.username, token=request.token
            ),
        )
        self._events.append(
            UserLoggedIn(
                connection_id=connection.connection_id, username=session.username, resumed=True
            )
        )
        self._refill(connection)

    def _on_logout(self, connection: _Connection, request: m.Logout, now: float) -> None:
        hashed = connection.token_hash
        assert hashed is not None  # logged in
        self._store.delete_session(hashed)
        self._end_session(hashed, now)
        self._reply(connection, m.Ok(request_id=request.request_id))

    def _end_session(self, hashed: bytes, now: float) -> None:
        """Log out every connection of a session that just ended."""
        for connection_id in list(self._by_session.get(hashed, ())):
            self._log_out(self._connections[connection_id], now, announce=True)
        self._message_rate.forget(hashed)

    def _log_in(self, connection: _Connection, username: str, hashed: bytes, now: float) -> None:
        if connection.state is ConnectionState.LOGGED_IN and connection.token_hash == hashed:
            return  # resuming the session this connection already has: nothing changes
        if connection.state is ConnectionState.LOGGED_IN:
            self._log_out(connection, now, announce=True)
        connection.transition(_Input.LOGIN)
        connection.username = username
        connection.token_hash = hashed
        connection.in_flight.clear()
        connection.caught_up = False
        self._by_session.setdefault(hashed, {})[connection.connection_id] = None
        user_connections = self._by_user.setdefault(username, {})
        user_connections[connection.connection_id] = None
        if len(user_connections) == 1:
            self._announce_presence(username, online=True)

    def _log_out(self, connection: _Connection, now: float, *, announce: bool) -> None:
        """Detach a connection from its session (logout, session end, or close)."""
        if connection.state is not ConnectionState.LOGGED_IN:
            return
        username, hashed = connection.username, connection.token_hash
        assert username is not None and hashed is not None
        connection.transition(_Input.LOGOUT)
        connection.username = connection.token_hash = None
        connection.in_flight.clear()
        connection.caught_up = False
        session_connections = self._by_session.get(hashed, {})
        session_connections.pop(connection.connection_id, None)
        if not session_connections:
            self._by_session.pop(hashed, None)
        user_connections = self._by_user.get(username, {})
        user_connections.pop(connection.connection_id, None)
        if not user_connections:
            self._by_user.pop(username, None)
            self._announce_presence(username, online=False)
        if announce:
            self._events.append(
                UserLoggedOut(connection_id=connection.connection_id, username=username)
            )

    def _announce_presence(self, username: str, *, online: bool) -> None:
        try:
            friends = [f for f in self._store.friends_of(username) if f in self._by_user]
        except Exception as exc:
            # Presence is a notification: a store failure here must not leave the
            # connection half logged in (or out), so count it and tell nobody.
            self._count_internal_error(exc)
            return
        if friends:
            push = m.PresenceChanged(username=username, online=online)
            for friend in friends:
                self._push_to_user(friend, push)

    def _maybe_sweep(self, now: float) -> None:
        if self._next_sweep is not None and now < self._next_sweep:
            return
        self._next_sweep = now + self._config.session_sweep_interval
        try:
            self._sweep(now)
        except StoreUnavailableError as failure:  # try again at the next sweep
            self._note_store_failure(failure)
        except Exception as exc:
            self._count_internal_error(exc)

    def _flush_touches(self) -> None:
        """Write the "last used" time of the sessions resumed lately, in this batch."""
        self._touch_at = None
        touches, self._touches = self._touches, {}
        try:
            for hashed, when in touches.items():
                self._store.touch_session(hashed, when)
                self._touching[hashed] = when
        except StoreUnavailableError as failure:
            self._note_store_failure(failure)
            self._touches = {**touches, **self._touches}
            self._touch_at = self._now + SESSION_TOUCH_DELAY
        except Exception as exc:
            self._count_internal_error(exc)

    def _sweep(self, now: float) -> None:
        wall = self._clock()
        # Sessions in use are touched first, so that a connection that stays up for
        # longer than the lifetime keeps its session.
        for hashed in self._by_session:
            self._store.touch_session(hashed, wall)
        self.stats.sessions_expired += self._store.delete_sessions_unused_since(
            wall - self._config.session_lifetime
        )
        for limiter in (
            self._user_failures,
            self._address_failures,
            self._registrations,
        ):
            limiter.prune(now=now)
        self._message_rate.prune(now=now)

    # --- friends -------------------------------------------------------------------------

    @staticmethod
    def _me(connection: _Connection) -> str:
        assert connection.username is not None  # only called when logged in
        return connection.username

    def _require_user(self, username: str) -> None:
        if self._store.get_account(username) is None:
            raise _RefusedError(ErrorCode.UNKNOWN_USER, f"no user named {username}")

    def _on_invite(self, connection: _Connection, request: m.Invite, now: float) -> None:
        me, other = self._me(connection), request.username
        if other == me:
            raise _RefusedError(ErrorCode.CANNOT_INVITE_SELF, "you cannot invite yourself")
        self._require_user(other)
        if self._store.are_friends(me, other):
            raise _RefusedError(ErrorCode.ALREADY_FRIENDS, f"you are already friends with {other}")
        if self._store.has_invitation(me, other):
            raise _RefusedError(ErrorCode.ALREADY_INVITED, f"you have already invited {other}")
        if self._store.has_invitation(other, me):
            # Both want it: inviting back accepts their invitation.
            self._store.delete_invitation(other, me)
            self._store.add_friendship(me, other, self._clock())
            self._reply(connection, m.Ok(request_id=request.request_id))
            self._push_to_user(other, m.InvitationAnswered(by_user=me, accepted=True))
            return
        self._store.add_invitation(me, other, self._clock())
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._push_to_user(other, m.InvitationReceived(from_user=me))

    def _on_accept(self, connection: _Connection, request: m.AcceptInvitation, now: float) -> None:
        me, inviter = self._me(connection), request.username
        if not self._store.has_invitation(inviter, me):
            raise _RefusedError(ErrorCode.NO_INVITATION, f"{inviter} has not invited you")
        self._store.delete_invitation(inviter, me)
        self._store.add_friendship(me, inviter, self._clock())
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._push_to_user(inviter, m.InvitationAnswered(by_user=me, accepted=True))

    def _on_decline(
        self, connection: _Connection, request: m.DeclineInvitation, now: float
    ) -> None:
        me, inviter = self._me(connection), request.username
        if not self._store.has_invitation(inviter, me):
            raise _RefusedError(ErrorCode.NO_INVITATION, f"{inviter} has not invited you")
        self._store.delete_invitation(inviter, me)
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._push_to_user(inviter, m.InvitationAnswered(by_user=me, accepted=False))

    def _on_cancel(self, connection: _Connection, request: m.CancelInvitation, now: float) -> None:
        me, invitee = self._me(connection), request.username
        if not self._store.has_invitation(me, invitee):
            raise _RefusedError(ErrorCode.NO_INVITATION, f"you have not invited {invitee}")
        self._store.delete_invitation(me, invitee)
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._push_to_user(invitee, m.InvitationCancelled(by_user=me))

    def _on_unfriend(self, connection: _Connection, request: m.Unfriend, now: float) -> None:
        me, other = self._me(connection), request.username
        if not self._store.are_friends(me, other):
            raise _RefusedError(ErrorCode.NOT_FRIENDS, f"you are not friends with {other}")
        self._store.delete_friendship(me, other)
        self._reply(connection, m.Ok(request_id=request.request_id))
        self._push_to_user(other, m.Unfriended(by_user=me))

    def _on_list_invitations(
        self, connection: _Connection, request: m.ListInvitations, now: float
    ) -> None:
        me = self._me(connection)
        self._reply(
            connection,
            m.Invitations(
                request_id=request.request_id,
                incoming=tuple(self._store.incoming_invitations(me)[:LIST_MAX]),
                outgoing=tuple(self._store.outgoing_invitations(me)[:LIST_MAX]),
            ),
        )

    def _presence(self, usernames: list[str]) -> tuple[m.UserPresence, ...]:
        return tuple(
            m.UserPresence(username=name, online=name in self._by_user)
            for name in usernames[:LIST_MAX]
        )

    def _on_list_friends(self, connection: _Connection, request: m.ListFriends, now: float) -> None:
        friends = self._presence(self._store.friends_of(self._me(connection)))
        self._reply(connection, m.Friends(request_id=request.request_id, friends=friends))

    def _on_list_online(self, connection: _Connection, request: m.ListOnline, now: float) -> None:
        self._reply(
            connection,
            m.OnlineUsers(
                request_id=request.request_id, usernames=tuple(self.online_users[:LIST_MAX])
            ),
        )

    # --- messages ------------------------------------------------------------------------

    def _on_send_message(self, connection: _Connection, request: m.SendMessage, now: float) -> None:
        me = self._me(connection)
        existing = self._store.get_message(request.message_id)
        if existing is not None:
            if existing.message.sender != me:
                raise _RefusedError(ErrorCode.BAD_REQUEST, "this message id is already in use")
            # A retry (the acceptance was lost with a connection): same answer again.
            self._reply(
                connection,
                m.MessageAccepted(
                    request_id=request.request_id,
                    message_id=request.message_id,
                    sent_at=existing.message.sent_at,
                ),
            )
            return
        recipients = self._recipients(me, request.to)
        hashed = connection.token_hash
        assert hashed is not None
        if not self._message_rate.spend(hashed, now=now):
            raise _RefusedError(ErrorCode.RATE_LIMITED, "you are sending too fast; slow down")
        message = m.ChatMessage(
            id=request.message_id,
            sender=me,
            to=request.to,
            text=request.text,
            sent_at=utc_from_posix(self._clock()),
        )
        self._store.add_message(message)
        self.stats.messages_accepted += 1
        self._reply(
            connection,
            m.MessageAccepted(
                request_id=request.request_id, message_id=message.id, sent_at=message.sent_at
            ),
        )
        for recipient in recipients:
            for connection_id in self._by_user.get(recipient, ()):
                self._deliver_new(self._connections[connection_id], message)

    def _recipients(self, me: str, to: str) -> list[str]:
        """Who receives a message from ``me`` to ``to``; refuses what may not be sent."""
        if is_room(to):
            self._require_member(me, to)
            return [member for member in self._store.room_members(to) if member != me]
        self._require_user(to)
        if not self._store.are_friends(me, to):
            raise _RefusedError(ErrorCode.NOT_FRIENDS, f"you are not friends with {to}")
        return [to]

    def _require_member(self, me: str, room: str) -> None:
        if not self._store.room_exists(room):
            raise _RefusedError(ErrorCode.UNKNOWN_ROOM, f"no room named {room}")
        if me not in self._store.room_members(room):
            raise _RefusedError(ErrorCode.NOT_A_MEMBER, f"you are not a member of {room}")

    def _deliver_new(self, connection: _Connection, message: m.ChatMessage) -> None:
        """A new message for this connection's user was just stored."""
        if connection.caught_up and len(connection.in_flight) < self._config.delivery_window:
            # Everything older is already in flight, so pushing now keeps the order.
            self._push_delivery(connection, message)
        else:
            # It is in the store, behind the backlog; the refill will reach it.
            connection.caught_up = False
            self._refill(connection)

    def _push_delivery(self, connection: _Connection, message: m.ChatMessage) -> None:
        connection.in_flight[message.id] = None
        self.stats.deliveries_pushed += 1
        self._send(connection.connection_id, m.MessageDelivered(message=message))

    def _refill(self, connection: _Connection) -> None:
        """Top up the connection's delivery window from the store."""
        window = self._config.delivery_window
        if (
            connection.caught_up
            or connection.state is not ConnectionState.LOGGED_IN
            or len(connection.in_flight) > window // 2
        ):
            return
        assert connection.username is not None and connection.token_hash is not None
        # Pending starts with what is already in flight (unacknowledged), so ask for a
        # whole window and skip those.
        pending = self._store.pending_deliveries(connection.username, connection.token_hash, window)
        for message in pending:
            if message.id not in connection.in_flight:
                if len(connection.in_flight) >= window:
                    break
                self._push_delivery(connection, message)
        else:
            if len(pending) < window:
                connection.caught_up = True
                self._send(connection.connection_id, m.CaughtUp())

    def _on_acknowledge(
        self, connection: _Connection, request: m.AcknowledgeDelivery, now: float
    ) -> None:
        if connection.state is not ConnectionState.LOGGED_IN:
            return  # nothing was delivered on this connection: nothing to advance
        assert connection.username is not None and connection.token_hash is not None
        ids = request.message_ids
        # Out of the window whatever the store does: if the cursor cannot move, the
        # store still holds them as pending and a later refill pushes them again
        # (the client acknowledges a repeat without showing it twice).
        for message_id in ids:
            connection.in_flight.pop(message_id, None)
        try:
            for start in range(0, len(ids), ACK_CHUNK):
                self._store.acknowledge(
                    connection.username, connection.token_hash, ids[start : start + ACK_CHUNK]
                )
        except StoreUnavailableError as failure:
            self._note_store_failure(failure)
            connection.caught_up = False
            self._stale[connection.connection_id] = None
            if self._retry_at is None:
                self._retry_at = self._now + STORE_RETRY_INTERVAL
            return
        self._retry_refill(connection)

    def _on_get_history(self, connection: _Connection, request: m.GetHistory, now: float) -> None:
        me, peer = self._me(connection), request.peer
        if is_room(peer):
            self._require_member(me, peer)
        else:
            self._require_user(peer)
        messages = self._store.history(me, peer, request.limit)
        self._reply(connection, m.History(request_id=request.request_id, messages=tuple(messages)))

    # --- rooms ---------------------------------------------------------------------------

    def _on_join_room(self, connection: _Connection, request: m.JoinRoom, now: float) -> None:
        me, room = self._me(connection), request.room
        members = self._store.room_members(room)
        if me in members:
            self._reply(connection, m.Ok(request_id=request.request_id))
            return
        if len(members) >= self._config.max_room_members:
            raise _RefusedError(
                ErrorCode.ROOM_FULL, f"{room} has {len(members)} members, the limit"
            )
        if len(self._store.rooms_of(me)) >= self._config.max_rooms_per_user:
            raise _RefusedError(
                ErrorCode.TOO_MANY_ROOMS,
                f"you are in {self._config.max_rooms_per_user} rooms, the limit",
            )
        self._store.join_room(room, me, self._clock())
        self._reply(connection, m.Ok(request_id=request.request_id))
        push = m.RoomMembershipChanged(room=room, username=me, joined=True)
        for member in members:
            self._push_to_user(member, push)

    def _on_leave_room(self, connection: _Connection, request: m.LeaveRoom, now: float) -> None:
        me, room = self._me(connection), request.room
        if not self._store.room_exists(room):
            raise _RefusedError(ErrorCode.UNKNOWN_ROOM, f"no room named {room}")
        if not self._store.leave_room(room, me):
            raise _RefusedError(ErrorCode.NOT_A_MEMBER, f"you are not a member of {room}")
        self._reply(connection, m.Ok(request_id=request.request_id))
        push = m.RoomMembershipChanged(room=room, username=me, joined=False)
        for member in self._store.room_members(room):
            self._push_to_user(member, push)

    def _on_list_rooms(self, connection: _Connection, request: m.ListRooms, now: float) -> None:
        rooms = tuple(
            m.RoomInfo(room=room, members=count)
            for room, count in self._store.rooms_of(self._me(connection))[:LIST_MAX]
        )
        self._reply(connection, m.Rooms(request_id=request.request_id, rooms=rooms))

    def _on_list_members(self, connection: _Connection, request: m.ListMembers, now: float) -> None:
        room = request.room
        if not self._store.room_exists(room):
            raise _RefusedError(ErrorCode.UNKNOWN_ROOM, f"no room named {room}")
        members = self._presence(self._store.room_members(room))
        self._reply(
            connection, m.RoomMembers(request_id=request.request_id, room=room, members=members)
        )
