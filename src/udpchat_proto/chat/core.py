"""The core of the chat server: connections, dispatch, group commit and delivery.

:class:`ServerCore` holds the server's state and everything the request handlers
share: the transport and the connection table, the dispatch of each request in its
turn (one atomic step each), the output held until its batch is committed, the
login sessions of connections and presence, the delivery windows, and the sweep.
The handlers themselves, by concept, are in :mod:`udpchat_proto.chat.handlers`;
:class:`~udpchat_proto.chat.server.ChatServer` puts them together.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable
from typing import Any, Final, cast

import attrs

from ..clock import WallClock
from ..errors import ErrorCode, LocalProtocolError
from ..randomness import RandomSource, SystemRandomSource
from ..ratelimit import KeyedLimiter, TokenBucket
from ..transport import (
    Address,
    CloseCode,
    ConnectionAddressChanged,
    ConnectionId,
    ConnectionTerminated,
    HandshakeCompleted,
    PayloadReceived,
    ServerTransport,
    TransportEvent,
)
from ..transport.keys import ServerKey
from . import messages as m
from .codec import encode
from .config import ServerConfig
from .connection import (
    ChatConnection,
    ChatConnectionInput,
    Queued,
    Refusal,
)
from .delivery import DeliveryWindow
from .events import (
    ClientConnected,
    ClientDisconnected,
    ServerEvent,
    UserLoggedOut,
)
from .login_budgets import LoginBudgets
from .lookups import Lookups
from .password_jobs import JobBook
from .remote import NodeView, RemoteSession, RemoteUser
from .requests import (
    HANDLERS,
    WRITES_ONCE,
    RefusedError,
    read_payload,
    receipt_pushes,
    token_hash,
    unavailable_message,
)
from .stats import ServerStats
from .store import Receipt, Store, StoreUnavailableError, WriteTrackingStore

__all__ = ["CURSOR_WRITE_DELAY", "SALT_SIZE", "SESSION_TOUCH_DELAY", "ServerCore"]

SALT_SIZE: Final = 16
"""Bytes of random salt in each new password hash."""
SESSION_TOUCH_DELAY: Final = 60.0
"""Seconds a resumed session's "last used" time waits before it is written, with
every other resume of that minute, in one batch. A resume then needs no write (it
works while the disk is full) and costs no commit of its own; a crash forgets at
most this much of a 30-day idle expiry."""
RETENTION_BATCH: Final = 100_000
"""Most messages one sweep deletes for retention (the rest wait for the next hour),
so that one commit stays bounded."""
CURSOR_WRITE_DELAY: Final = 1.0
"""Seconds an acknowledgement (a delivery cursor's move) may wait in memory when no
other write comes to carry it into a batch. At low load a delivered message then
costs one fsynced commit (its send), not two; a crash forgets at most this much
cursor movement, and those messages are pushed again (clients drop repeats by id)."""
STEP_ATTEMPTS: Final = 3
"""Most runs of a step that keeps losing deadlocks to other nodes (then: unavailable)."""
STORE_RETRY_INTERVAL: Final = 1.0
"""Seconds after a lost batch before the connections whose pushes it dropped are
refilled from the store (which holds what was really kept)."""


@attrs.frozen
class _Held:
    """A reply or push waiting for its batch's commit."""

    connection_id: ConnectionId | RemoteUser
    message: m.Response | m.Push
    payload: bytes


_ANONYMOUS_REQUESTS: Final = (m.Register, m.Login, m.Resume)


def _without(connections: tuple[ConnectionId, ...], cid: ConnectionId) -> tuple[ConnectionId, ...]:
    return tuple(c for c in connections if c != cid)


class ServerCore(Lookups):
    """The server role's state and shared machinery (see :class:`ChatServer`).

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
        self._tracker = WriteTrackingStore(store)
        self._store = cast(Store, self._tracker)
        self._server_key = static_key.public_bytes
        self._transport = ServerTransport(
            static_key=static_key, config=self._config.transport, random=self._random
        )
        self._connections: dict[ConnectionId, ChatConnection] = {}
        self._by_user: dict[str, tuple[ConnectionId, ...]] = {}
        """Live logged-in connections of each online user, oldest first (tuples: a
        user has one or a few, and a dict each cost 200 bytes per idle user)."""
        self._by_session: dict[bytes, tuple[ConnectionId, ...]] = {}
        self._held: list[_Held] = []
        """Replies and pushes waiting for the batch's commit (message and payload)."""
        self._hints: dict[str, None] = {}
        """Users whose messages this batch stored, for the other nodes (cluster.py)."""
        self._hints_out: list[str] = []
        self._closes_held: list[tuple[ConnectionId | RemoteSession, str | None]] = []
        """Connections a request closes (a revoked session's, on other nodes too), closed
        once its batch is durable: a lost batch must not have disconnected anyone."""
        self._remote_online: dict[str, int] = {}
        """In a cluster: users online on other nodes, with on how many (cluster.py)."""
        self._nodes: dict[str, NodeView] = {}
        self._remote_pushes: list[tuple[str, bytes]] = []
        self._remote_sessions: list[tuple[bytes, str | None]] = []
        self._forget: dict[str, None] = {}
        self._presence_changed: dict[str, None] = {}
        self._stale: dict[ConnectionId, None] = {}
        """Connections whose pushes a lost batch dropped: refilled at ``_retry_at``."""
        self._retry_at: float | None = None
        self._touches: dict[bytes, float] = {}
        """Sessions resumed since the last flush, with when (see SESSION_TOUCH_DELAY)."""
        self._touching: dict[bytes, float] = {}
        """The touches written in the current batch (put back if it is lost)."""
        self._touch_at: float | None = None
        self._cursor_write_at: float | None = None
        """When the deferred acknowledgements are written, if nothing else does first."""
        self._stepping = False
        """Inside a request's step: its output waits for the step to complete."""
        self._friend_sets: dict[str, frozenset[str]] = {}
        """The friends of online users, read once (a lookup per message before).
        A friendship write forgets both users' sets; a lost batch or a failed step
        forgets them all, since they may hold what was rolled back."""
        self._known_users: set[str] = set()
        """Names found to be accounts (committed ones: a lookup in a rolled-back batch
        may have seen an uncommitted account, so only reads confirm)."""
        self._membership_pending: dict[tuple[str, str], tuple[bool, list[str]]] = {}
        """Room joins and leaves of this batch, pushed at its end (coalesced)."""
        self._events: collections.deque[ServerEvent] = collections.deque()
        self._jobs = JobBook()
        self._login_failures = LoginBudgets(self._config)
        self._logins: KeyedLimiter[str] = KeyedLimiter(self._config.logins_per_user)
        self._registrations: KeyedLimiter[str] = KeyedLimiter(
            self._config.registrations_per_address
        )
        self._message_rate: KeyedLimiter[str] = KeyedLimiter(self._config.message_rate)
        self._membership_changes: KeyedLimiter[str] = KeyedLimiter(
            self._config.membership_changes_per_user
        )
        self._next_sweep: float | None = None
        self._now = 0.0
        """The latest ``now`` given (for a close decided where no ``now`` is passed)."""
        self.stats = ServerStats()
        """Counters for monitoring (see :class:`ServerStats`)."""
        # Each handler takes its own request class; the dispatch by type keeps that sound.
        self._handlers: dict[type, Callable[[ChatConnection, Any, float], None]] = {
            request_type: getattr(self, name) for request_type, name in HANDLERS.items()
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
        own = (self._next_sweep, self._retry_at, self._touch_at, self._cursor_write_at)
        timers = [t for t in (self._transport.get_timer(), *own) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now`` (an early call is harmless).

        Then commit if :attr:`writes_pending`, and call :meth:`datagrams_to_send`.
        """
        self._now = now
        self._maybe_sweep(now)
        if self._touch_at is not None and now >= self._touch_at:
            self._flush_touches()
        if self._cursor_write_at is not None and now >= self._cursor_write_at:
            self._write_cursors()
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
        return self._tracker.dirty

    def commit(self) -> StoreUnavailableError | None:
        """Commit the batch, if anything was written, and release what it held.

        Call it once per batch, after feeding every datagram, hash result and timer
        of the batch, and before :meth:`datagrams_to_send` (group commit).

        Returns:
            None once the batch is durable (or there was nothing to commit); the
            store's :class:`~udpchat_proto.chat.store.StoreUnavailableError` if the batch
            was lost (see :meth:`rolled_back`), for the caller to log.
        """
        self._flush_membership()
        if not self._tracker.dirty:
            return None
        try:
            self._tracker.commit()
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
        self._flush_membership()
        self._tracker.batch_committed()
        if not self._tracker.acknowledgements_deferred:
            self._cursor_write_at = None
        self._touching.clear()
        self._hints_out.extend(self._hints)  # durable now: the other nodes may look
        self._hints.clear()
        held, self._held = self._held, []
        for item in held:
            self._transport_send(item.connection_id, item.payload)
        closes, self._closes_held = self._closes_held, []
        self._close_all(closes)
        by_sender: dict[str, list[Receipt]] = {}
        for receipt in self._tracker.take_receipts():  # durable now: tell the senders
            if self._is_online(receipt.sender):  # (one offline asks the status later)
                by_sender.setdefault(receipt.sender, []).append(receipt)
        for sender, receipts in by_sender.items():
            for push in receipt_pushes(receipts):
                self._push_to_user(sender, push)

    def rolled_back(self, failure: StoreUnavailableError) -> None:
        """Tell the server that the batch could not be committed: it is lost.

        Nothing it held is sent as it was: every held answer becomes an
        ``unavailable`` refusal (the client may try again), a login it held is
        undone, and its pushes are dropped; connections whose deliveries were
        dropped are refilled from the store after :data:`STORE_RETRY_INTERVAL`.
        Then call :meth:`datagrams_to_send`.
        """
        self._tracker.batch_lost()
        self._closes_held.clear()
        self._hints.clear()
        self._friend_sets.clear()
        self._note_store_failure(failure)
        if self._tracker.acknowledgements_deferred and self._cursor_write_at is None:
            self._cursor_write_at = self._now + CURSOR_WRITE_DELAY
        self.stats.batches_lost += 1
        self._touches = {**self._touching, **self._touches}
        self._touching.clear()
        if self._touches and self._touch_at is None:
            self._touch_at = self._now + SESSION_TOUCH_DELAY
        held, self._held = self._held, []
        for connection, response in self._retract(held):
            self._refuse(
                connection, response.request_id, ErrorCode.UNAVAILABLE, unavailable_message(failure)
            )

    def _retract(self, held: list[_Held]) -> list[tuple[ChatConnection, m.Response]]:
        """Undo what held output stood for, since it will never be sent.

        A login or resume it reported is undone (its session may not exist), a
        delivery is taken out of the window (the store pushes it again if it holds
        it); other pushes are dropped.

        Returns:
            The held answers, for the caller to replace with a refusal.
        """
        answers: list[tuple[ChatConnection, m.Response]] = []
        for item in held:
            if isinstance(item.connection_id, RemoteUser):
                continue  # a push for another node: dropped
            connection = self._connections.get(item.connection_id)
            message = item.message
            if connection is None or connection.closing:
                continue
            if isinstance(message, m.MessageDelivered | m.CaughtUp):
                # The window goes back to reading the store: a refill pushes again
                # what it holds, and the caught_up that ends it.
                if isinstance(message, m.MessageDelivered):
                    connection.deliveries.take_back(message.message.id)
                else:
                    connection.deliveries.fall_behind()
                self._stale[connection.connection_id] = None
                if self._retry_at is None:
                    self._retry_at = self._now + STORE_RETRY_INTERVAL
            elif isinstance(message, m.RESPONSE_TYPES):
                if isinstance(message, m.LoggedIn) and not self._session_survived(message):
                    self._log_out(connection, self._now, announce=True)
                answers.append((connection, message))
        return answers

    def _session_survived(self, logged_in: m.LoggedIn) -> bool:
        """Whether the session a retracted ``LoggedIn`` named exists anyway (a resume
        of a session that was already there): then the connection keeps it."""
        try:
            return self._store.get_session(token_hash(logged_in.token)) is not None
        except Exception:  # cannot tell: the safe side is anonymous
            return False

    def _retry_refill(self, connection: ChatConnection) -> None:
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

    # --- transport events ----------------------------------------------------------------

    def _drain_transport(self, now: float) -> None:
        while (event := self._transport.next_event()) is not None:
            self._on_transport_event(event, now)

    def _on_transport_event(self, event: TransportEvent, now: float) -> None:
        if isinstance(event, HandshakeCompleted):
            self.stats.connections_opened += 1
            self._new_connection(event.connection_id, event.address, now)
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
            ended = self._connections.pop(event.connection_id, None)
            if ended is not None:
                self._log_out(ended, now, announce=False)
                if ended.job_id is not None:
                    # Nobody waits for it any more: no worker's time is spent on it.
                    self._jobs.discard_queued(ended.job_id)
                self._events.append(
                    ClientDisconnected(
                        connection_id=event.connection_id, code=event.code, reason=event.reason
                    )
                )

    def _new_connection(
        self, connection_id: ConnectionId, address: Address, now: float
    ) -> ChatConnection:
        connection = ChatConnection(
            connection_id,
            address,
            requests=TokenBucket(self._config.request_rate, now=now),
            window=DeliveryWindow(self._config.delivery_window),
        )
        self._connections[connection_id] = connection
        return connection

    def _on_payload(self, connection_id: ConnectionId, payload: bytes, now: float) -> None:
        connection = self._connections.get(connection_id)
        if connection is None:
            # The transport delivers payloads only on established connections, whose
            # HandshakeCompleted came first; tolerate it anyway.
            address = self._transport.address_of(connection_id)
            if address is None:
                return
            connection = self._new_connection(connection_id, address, now)
        if connection.closing:
            return
        self.stats.payloads += 1
        item = read_payload(payload, self.stats.decode_errors)
        if isinstance(item, str):
            self._violation(connection, now, item)
            return
        if isinstance(item, m.AcknowledgeDelivery):
            # Not a request: no answer, and nothing to keep in order with them.
            # It costs a request all the same (a store write each), and one
            # beyond the budget is ignored: the messages are pushed again later.
            if not connection.requests.spend(now=now):
                self.stats.acknowledgements_ignored += 1
                return
            try:
                self._on_acknowledge(connection, item, now)
            except Exception as exc:  # the store failed: nobody to answer
                self._count_internal_error(exc)
            return
        if not connection.requests.spend(now=now):
            item = Refusal(
                request_id=item.request_id,
                code=ErrorCode.RATE_LIMITED,
                message="too many requests on this connection; slow down",
            )
        if connection.hashing or connection.queue:
            if len(connection.queue) >= self._config.max_queued_requests:
                self._close_for_abuse(connection_id, "too many pipelined requests")
                return
            connection.queue.append(item)
            return
        self._dispatch(connection, item, now)

    def _violation(self, connection: ChatConnection, now: float, reason: str) -> None:
        self.stats.violations += 1
        connection.violations += 1
        if connection.violations > self._config.max_violations:
            last = f"too many bad messages; the last: {reason}"
            self._close_for_abuse(connection.connection_id, last)

    def _close_for_abuse(self, connection_id: ConnectionId, reason: str) -> None:
        # PROTOCOL_VIOLATION, as PROTOCOL.md names it: not a close the client asked for.
        self.stats.closed_for_abuse += 1
        self._close_connection(connection_id, reason, code=CloseCode.PROTOCOL_VIOLATION)

    # --- request dispatch ----------------------------------------------------------------

    def _run_queue(self, connection: ChatConnection, now: float) -> None:
        """Answer queued requests until one starts a hash job or none is left."""
        while (
            not connection.hashing
            and connection.queue
            and not connection.closing
            and connection.connection_id in self._connections
        ):
            self._dispatch(connection, connection.queue.pop(0), now)

    def _dispatch(self, connection: ChatConnection, item: Queued, now: float) -> None:
        self.stats.requests += 1
        if isinstance(item, Refusal):
            self._refuse(connection, item.request_id, item.code, item.message)
            return
        if not connection.logged_in and not isinstance(item, _ANONYMOUS_REQUESTS):
            self._refuse(
                connection,
                item.request_id,
                ErrorCode.NOT_LOGGED_IN,
                "log in (or resume a session) first",
            )
            return
        # Nodes of a cluster can deadlock: a savepoint for every step, done again if it lost.
        step = self._handlers[type(item)]
        savepoint = self._config.cluster or type(item) not in WRITES_ONCE
        self._run_atomically(connection, item.request_id, step, item, now, savepoint=savepoint)

    def _run_atomically(
        self,
        connection: ChatConnection,
        request_id: int,
        step: Callable[..., None],
        *args: Any,
        savepoint: bool = True,
    ) -> None:
        """Run one request's step so that its writes and its output all happen or
        none do: a refusal or a store failure half-way leaves nothing of it for the
        batch, and nothing it would have sent (its answer, pushes, a login) leaves.
        (``savepoint=False``: a step that writes once, last; see WRITES_ONCE.) One that
        lost a race with another node (a deadlock) is done again (STEP_ATTEMPTS)."""
        for attempt in range(1, STEP_ATTEMPTS + 1):
            mark, close_mark = len(self._held), len(self._closes_held)
            membership = dict(self._membership_pending)
            login = (connection.username, connection.token_hash)
            self._stepping = True
            try:
                if savepoint:
                    with self._store.atomic():
                        step(connection, *args)
                else:
                    step(connection, *args)
            except Exception as exc:
                self._stepping = False
                self._friend_sets.clear()  # they may have read what the step undid
                del self._closes_held[close_mark:]
                self._membership_pending = membership
                undone, self._held[mark:] = self._held[mark:], []
                self._retract(undone)
                if (
                    isinstance(exc, StoreUnavailableError)
                    and exc.conflict
                    and savepoint
                    and attempt < STEP_ATTEMPTS
                    # Only from where it began (a rollback undoes no log-out).
                    and (connection.username, connection.token_hash) == login
                ):
                    self.stats.steps_retried += 1
                    continue
                self._step_failed(connection, request_id, exc)
            else:
                self._stepping = False
                if not self._tracker.dirty:  # nothing to wait for: out now
                    done, self._held[mark:] = self._held[mark:], []
                    for item in done:
                        self._transport_send(item.connection_id, item.payload)
                    closes, self._closes_held[close_mark:] = self._closes_held[close_mark:], []
                    self._close_all(closes)
            finally:
                self._stepping = False
            return

    def _step_failed(self, connection: ChatConnection, request_id: int, exc: Exception) -> None:
        if isinstance(exc, RefusedError):
            self._refuse(connection, request_id, exc.code, exc.message)
        elif isinstance(exc, StoreUnavailableError):
            self._note_store_failure(exc)
            self._refuse(connection, request_id, ErrorCode.UNAVAILABLE, unavailable_message(exc))
        else:
            self._internal_error(connection, request_id, exc)

    def _internal_error(self, connection: ChatConnection, request_id: int, exc: Exception) -> None:
        self._count_internal_error(exc)
        self._refuse(connection, request_id, ErrorCode.INTERNAL, "internal server error")

    def _count_internal_error(self, exc: Exception) -> None:
        self.stats.internal_errors += 1
        self.stats.last_internal_error = exc

    # --- output --------------------------------------------------------------------------

    def _send(self, connection_id: ConnectionId | RemoteUser, message: m.Response | m.Push) -> None:
        payload = encode(message)
        if self._tracker.dirty or self._stepping:
            self._held.append(_Held(connection_id, message, payload))
        else:
            self._transport_send(connection_id, payload)

    def _transport_send(self, connection_id: ConnectionId | RemoteUser, payload: bytes) -> None:
        if isinstance(connection_id, RemoteUser):  # for the other nodes (a cluster's)
            self._remote_pushes.append((connection_id.username, payload))
            return
        connection = self._connections.get(connection_id)
        if connection is None or connection.closing:
            return  # ended (or is ending) while the payload was held
        try:
            self._transport.send(connection_id, payload)
        except LocalProtocolError:
            # Its send buffer is full (it does not read what it asked for) or it is
            # already closing. Dropping one payload would break the order of its
            # answers, so the connection ends; its session's unacknowledged
            # messages are pushed again on its next connection.
            self._close_connection(connection_id, "send buffer full")

    def _close_all(self, closes: list[tuple[ConnectionId | RemoteSession, str | None]]) -> None:
        for target, reason in closes:
            if isinstance(target, RemoteSession):
                self._remote_sessions.append((target.token_hash, reason))
            else:
                self._close_connection(target, reason or "closed")

    def _close_connection(
        self, connection_id: ConnectionId, reason: str, *, code: CloseCode = CloseCode.NORMAL_CLOSE
    ) -> None:
        connection = self._connections.get(connection_id)
        if connection is None or connection.closing:
            return
        # Off its session at once (presence, deliveries): it is going.
        self._log_out(connection, self._now, announce=False)
        connection.transition(ChatConnectionInput.CLOSE)
        with contextlib.suppress(LocalProtocolError):  # already gone
            self._transport.close(connection_id, self._now, reason, code=code)

    def _reply(self, connection: ChatConnection, message: m.Response) -> None:
        try:
            self._send(connection.connection_id, message)
        except LocalProtocolError:
            # Only an answer over the size limit can fail to encode.
            self._refuse(
                connection, message.request_id, ErrorCode.TOO_LARGE, "the answer is too large"
            )

    def _refuse(
        self, connection: ChatConnection, request_id: int, code: ErrorCode, message: str
    ) -> None:
        self.stats.refusals[code.value] += 1
        self._send(
            connection.connection_id,
            m.ErrorResponse(request_id=request_id, code=code, message=message),
        )

    def _membership_changed(
        self, room: str, username: str, *, joined: bool, members: list[str]
    ) -> None:
        """Tell ``members`` that ``username`` joined or left ``room``, at the batch's
        end: a join and a leave of the same room by the same user within one batch
        cancel out, so churn pipelined into one batch costs no pushes at all."""
        key = (room, username)
        pending = self._membership_pending.pop(key, None)
        if pending is not None and pending[0] is not joined:
            return  # joined and left (or left and joined) within the batch: nothing
        self._membership_pending[key] = (joined, members)

    def _flush_membership(self) -> None:
        pending, self._membership_pending = self._membership_pending, {}
        for (room, username), (joined, members) in pending.items():
            push = m.RoomMembershipChanged(room=room, username=username, joined=joined)
            for member in members:
                self._push_to_user(member, push)

    def _push_to_user(self, username: str, push: m.Push) -> None:
        for connection_id in self._by_user.get(username, ()):
            self._send(connection_id, push)
        if username in self._remote_online:  # and on the other nodes (cluster.py)
            self._send(RemoteUser(username), push)

    def _end_session(self, hashed: bytes, now: float) -> None:
        """Log out every connection of a session that just ended (here and, once
        durable, on the cluster's other nodes)."""
        if self._config.cluster:
            self._closes_held.append((RemoteSession(hashed), None))
        for connection_id in list(self._by_session.get(hashed, ())):
            self._log_out(self._connections[connection_id], now, announce=True)

    def _log_in(self, connection: ChatConnection, username: str, hashed: bytes, now: float) -> None:
        if connection.logged_in and connection.token_hash == hashed:
            return  # resuming the session this connection already has: nothing changes
        if connection.logged_in:
            self._log_out(connection, now, announce=True)
        connection.transition(ChatConnectionInput.LOGIN)
        connection.username = username
        connection.token_hash = hashed
        connection.deliveries.start()
        cid = connection.connection_id
        self._by_session[hashed] = (*self._by_session.get(hashed, ()), cid)
        user_connections = self._by_user[username] = (*self._by_user.get(username, ()), cid)
        # Never ended to make room for a stranger: a user's first few connections.
        if len(user_connections) <= self._config.protected_connections_per_user:
            self._transport.set_protected(cid)
        if len(user_connections) == 1:
            self._announce_presence(username, online=True)

    def _log_out(self, connection: ChatConnection, now: float, *, announce: bool) -> None:
        """Detach a connection from its session (logout, session end, or close)."""
        if not connection.logged_in:
            return
        username, hashed = connection.username, connection.token_hash
        assert username is not None and hashed is not None
        connection.transition(ChatConnectionInput.LOGOUT)
        connection.username = connection.token_hash = None
        connection.deliveries.stop()
        cid = connection.connection_id
        self._transport.set_protected(cid, False)
        session_connections = _without(self._by_session.pop(hashed, ()), cid)
        if session_connections:
            self._by_session[hashed] = session_connections
        user_connections = _without(self._by_user.pop(username, ()), cid)
        if user_connections:
            self._by_user[username] = user_connections
        else:
            self._friend_sets.pop(username, None)
            self._announce_presence(username, online=False)
        if announce:
            self._events.append(
                UserLoggedOut(connection_id=connection.connection_id, username=username)
            )

    def _announce_presence(self, username: str, *, online: bool) -> None:
        """Tell the friends connected here that ``username`` came online or went
        offline here (each node tells its own; cluster.py)."""
        if self._config.cluster:
            self._presence_changed[username] = None
            if username in self._remote_online:
                return  # online on another node all along: nothing changed for them
        self._tell_friends_here(username, online=online)

    def _tell_friends_here(self, username: str, *, online: bool, at_once: bool = False) -> None:
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
                for connection_id in self._by_user[friend]:
                    if at_once:  # another node's news: never held with (or lost with) a batch
                        self._transport_send(connection_id, encode(push))
                    else:
                        self._send(connection_id, push)

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
        # Resumes not written yet count as use: a session resumed a moment ago must
        # not expire for want of its touch.
        self._flush_touches()
        # Sessions in use are touched first, so that a connection that stays up for
        # longer than the lifetime keeps its session.
        for hashed in self._by_session:
            self._store.touch_session(hashed, wall)
        self.stats.sessions_expired += self._store.delete_sessions_unused_since(
            wall - self._config.session_lifetime
        )
        too_old = self._store.delete_sessions_created_before(wall - self._config.session_max_age)
        self.stats.sessions_expired += len(too_old)
        for hashed in too_old:  # in use, maybe: its connections are logged out
            self._end_session(hashed, now)
        if self._config.retain_days is not None:
            self.stats.messages_deleted += self._store.delete_delivered_before(
                wall - self._config.retain_days * 86400.0, RETENTION_BATCH
            )
        for limiter in (
            self._registrations,
            self._logins,
            self._message_rate,
            self._membership_changes,
        ):
            limiter.prune(now=now)
        self._login_failures.prune(now=now)

    # --- delivery ----------------------------------------------------------------------

    def _deliver_new(self, connection: ChatConnection, message: m.ChatMessage) -> None:
        """A new message for this connection's user was just stored.

        Never raises for a store failure (the send that stored it must not fail
        after its write, see WRITES_ONCE): a refill that fails is retried."""
        if connection.deliveries.offer(message):
            # Everything older is already in flight, so pushing now keeps the order.
            self._push_delivery(connection, message)
        else:
            # It is in the store, behind the backlog; the refill will reach it.
            self._retry_refill(connection)

    def _push_delivery(self, connection: ChatConnection, message: m.ChatMessage) -> None:
        self.stats.deliveries_pushed += 1
        self._send(connection.connection_id, m.MessageDelivered(message=message))

    def _refill(self, connection: ChatConnection) -> None:
        """Top up the connection's delivery window from the store."""
        window = connection.deliveries
        if not window.wants_refill:
            return
        assert connection.username is not None and connection.token_hash is not None
        # Pending starts with what is already in flight (unacknowledged), so ask for a
        # whole window; the window skips those.
        pending = self._store.pending_deliveries(
            connection.username, connection.token_hash, window.size
        )
        pushed, caught_up = window.refill(pending)
        for message in pushed:
            self._push_delivery(connection, message)
        if caught_up:
            self._send(connection.connection_id, m.CaughtUp())

    def _on_acknowledge(
        self, connection: ChatConnection, request: m.AcknowledgeDelivery, now: float
    ) -> None:
        if not connection.logged_in:
            return  # nothing was delivered on this connection: nothing to advance
        assert connection.username is not None and connection.token_hash is not None
        ids = request.message_ids
        # Out of the window whatever the store does: if the cursor cannot move, the
        # store still holds them as pending and a later refill pushes them again
        # (the client acknowledges a repeat without showing it twice).
        connection.deliveries.acknowledge(ids)
        # Deferred (see CURSOR_WRITE_DELAY): written with the batch's other writes,
        # before anything reads the cursors (the refill below), or by the timer.
        self._store.acknowledge(connection.username, connection.token_hash, ids, self._clock())
        if self._cursor_write_at is None:
            self._cursor_write_at = now + CURSOR_WRITE_DELAY
        self._retry_refill(connection)

    def _write_cursors(self) -> None:
        """Write the deferred acknowledgements (the loop then commits them)."""
        self._cursor_write_at = None
        try:
            self._tracker.flush_acknowledgements(own_block=True)
        except StoreUnavailableError as failure:  # they wait for the next try
            self._note_store_failure(failure)
            self._cursor_write_at = self._now + CURSOR_WRITE_DELAY
        except Exception as exc:
            self._count_internal_error(exc)
