"""From a client's payload to its handler: decode, route, queue, run as a step.

A payload is read (:func:`~udpchat_proto.chat.requests.read_payload`) into a
request, a refusal of one (it does not decode, but its id can be read), or a
protocol violation. Each request class has one :class:`Route` in the registry
(:class:`Routes`), built from the handler units' ``routes()``. An answered
request costs one of its connection's request budget, waits in the connection's
queue behind a password hash, and runs as one *atomic step*: its writes and its
output all happen or none do (:meth:`Dispatcher.run_step`). When a hash comes
back, its request's second half (a :data:`~udpchat_proto.chat.requests.Finisher`,
by :class:`JobKind`) runs as a step of its own, then what the connection queued.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final, cast

from ..errors import ErrorCode
from ..transport import ConnectionId, ServerTransport
from ..transport.events import CloseCode
from . import messages as m
from .batch import Batch, Held
from .caches import Caches
from .config import ServerConfig
from .connection import ChatConnection, Queued, Refusal
from .connections import ConnectionTable
from .deliveries import Deliveries
from .hashing import Hashing
from .outbox import Outbox
from .password_jobs import JobKind
from .remote import RemoteUser
from .requests import (
    Finisher,
    Handler,
    RefusedError,
    Route,
    read_payload,
    token_hash,
    unavailable_message,
)
from .sessions import Sessions
from .stats import ServerStats
from .store import Store, StoreUnavailableError

__all__ = ["STEP_ATTEMPTS", "Dispatcher", "Routes"]

STEP_ATTEMPTS: Final = 3
"""Most runs of a step that keeps losing deadlocks to other nodes (then: unavailable)."""


class Routes(Mapping[type[m.Request], Route]):
    """The registry: each request class and its one route.

    Raises:
        TypeError: two routes for one class, or an answered route for a request
            that is never answered (or the other way round).
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes: dict[type[m.Request], Route] = {}
        for route in routes:
            if route.request_type in self._routes:
                raise TypeError(f"two routes for {route.request_type.__name__}")
            if route.answered != (route.request_type in m.ANSWERED_REQUEST_TYPES):
                raise TypeError(f"{route.request_type.__name__}: answered is wrong")
            self._routes[route.request_type] = route

    def __getitem__(self, request_type: type[m.Request]) -> Route:
        return self._routes[request_type]

    def __iter__(self) -> Iterator[type[m.Request]]:
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)


class Dispatcher:
    """Runs each connection's requests, in order, through their routes.

    Args:
        routes: the registry.
        finishers: the second half of each kind of hash job that has a request
            waiting for it (UPGRADE has none: :meth:`Hashing.finish_upgrade`).
        connections: the connection table.
        outbox: where answers go.
        batch: marks where each step began.
        store: the store (a step's savepoint).
        caches: forgotten when a step fails.
        sessions: closes abusive connections; logs out a login that was undone.
        deliveries: takes back pushes that never left.
        hashing: the hash jobs that come back.
        transport: the address of a connection it has not announced yet.
        stats: counters.
        config: queue and violation caps; whether this is a cluster's node.
    """

    def __init__(
        self,
        *,
        routes: Routes,
        finishers: Mapping[JobKind, Finisher],
        connections: ConnectionTable,
        outbox: Outbox,
        batch: Batch,
        store: Store,
        caches: Caches,
        sessions: Sessions,
        deliveries: Deliveries,
        hashing: Hashing,
        transport: ServerTransport,
        stats: ServerStats,
        config: ServerConfig,
    ) -> None:
        self.routes = routes
        # A plain dict of the same routes: one lookup a request, where the Mapping's
        # __getitem__ is a Python call (Routes stays a Python class compiled).
        self._route_of: dict[type[m.Request], Route] = dict(routes)
        self._finishers = finishers
        self._connections = connections
        self._outbox = outbox
        self._batch = batch
        self._store = store
        self._caches = caches
        self._sessions = sessions
        self._deliveries = deliveries
        self._hashing = hashing
        self._transport = transport
        self._stats = stats
        self._config = config

    def on_payload(self, connection_id: ConnectionId, payload: bytes, now: float) -> None:
        """A whole message arrived on a connection."""
        connection = self._connections.get(connection_id)
        if connection is None:
            # The transport delivers payloads only on established connections, whose
            # HandshakeCompleted came first; tolerate it anyway.
            address = self._transport.address_of(connection_id)
            if address is None:
                return
            connection = self._connections.open(connection_id, address, now)
        if connection.closing:
            return
        self._stats.payloads += 1
        item = read_payload(payload, self._stats.decode_errors)
        if isinstance(item, str):
            self._violation(connection, item)
            return
        if isinstance(item, Refusal):
            self._answer(connection, item, now)
            return
        route = self._route_of[type(item)]
        if route.answered:
            self._answer(connection, cast(m.AnsweredRequest, item), now)
            return
        # Not answered (ack_delivery, the only one): nothing to keep in order with
        # the requests. It costs a request all the same (a store write each), and
        # one beyond the budget is ignored: the messages are pushed again later.
        if not connection.requests.spend(now=now):
            self._stats.acknowledgements_ignored += 1
            return
        try:
            route.handler(connection, item, now)
        except Exception as exc:  # the store failed: nobody to answer
            self._stats.note_internal_error(exc)

    def _answer(self, connection: ChatConnection, item: Queued, now: float) -> None:
        """Queue or run a request that gets an answer (or its refusal)."""
        if not connection.requests.spend(now=now):
            item = Refusal(
                request_id=item.request_id,
                code=ErrorCode.RATE_LIMITED,
                message="too many requests on this connection; slow down",
            )
        if connection.hashing or connection.queue:
            if len(connection.queue) >= self._config.max_queued_requests:
                self._close_for_abuse(connection.connection_id, "too many pipelined requests")
                return
            connection.queue.append(item)
            return
        self._dispatch(connection, item, now)

    def _violation(self, connection: ChatConnection, reason: str) -> None:
        self._stats.violations += 1
        connection.violations += 1
        if connection.violations > self._config.max_violations:
            last = f"too many bad messages; the last: {reason}"
            self._close_for_abuse(connection.connection_id, last)

    def _close_for_abuse(self, connection_id: ConnectionId, reason: str) -> None:
        # PROTOCOL_VIOLATION, as PROTOCOL.md names it: not a close the client asked for.
        self._stats.closed_for_abuse += 1
        self._sessions.close(connection_id, reason, code=CloseCode.PROTOCOL_VIOLATION)

    # --- in order, one step each ---------------------------------------------------------

    def run_queue(self, connection: ChatConnection, now: float) -> None:
        """Answer queued requests until one starts a hash job or none is left."""
        while (
            not connection.hashing
            and connection.queue
            and not connection.closing
            and self._connections.get(connection.connection_id) is not None
        ):
            self._dispatch(connection, connection.queue.pop(0), now)

    def _dispatch(self, connection: ChatConnection, item: Queued, now: float) -> None:
        self._stats.requests += 1
        if isinstance(item, Refusal):
            self._outbox.refuse(connection, item.request_id, item.code, item.message)
            return
        route = self._route_of[type(item)]
        if not connection.logged_in and not route.before_login:
            self._outbox.refuse(
                connection,
                item.request_id,
                ErrorCode.NOT_LOGGED_IN,
                "log in (or resume a session) first",
            )
            return
        # Nodes of a cluster can deadlock: a savepoint for every step that writes,
        # done again if it lost. (A send writes nothing in its step on a node: its
        # message is staged, stored with the batch's others, see store.py.) The
        # handler and its arguments are passed as they are: a closure would be two
        # objects more a request (its cells, or mypyc's environment, and itself).
        self._run(
            connection,
            item.request_id,
            step=None,
            handler=route.handler,
            item=item,
            now=now,
            savepoint=not route.writes_once,
        )

    def run_step(
        self,
        connection: ChatConnection,
        request_id: int,
        step: Callable[[], None],
        *,
        savepoint: bool = True,
    ) -> None:
        """Run one request's step so that its writes and its output all happen or
        none do: a refusal or a store failure half-way leaves nothing of it for the
        batch, and nothing it would have sent (its answer, pushes, a login) leaves.
        (``savepoint=False``: a step that writes once, last; see
        ``Route.writes_once``.) One that lost a race with another node (a
        deadlock) is done again (:data:`STEP_ATTEMPTS`)."""
        self._run(
            connection, request_id, step=step, handler=None, item=None, now=0.0, savepoint=savepoint
        )

    def _run(
        self,
        connection: ChatConnection,
        request_id: int,
        *,
        step: Callable[[], None] | None,
        handler: Handler | None,
        item: object,
        now: float,
        savepoint: bool,
    ) -> None:
        """:meth:`run_step` of ``step``, or of ``handler(connection, item, now)``."""
        for attempt in range(1, STEP_ATTEMPTS + 1):
            mark = self._batch.begin_step()
            # Who it began as, for a retry (two locals: no tuple a step).
            username, token = connection.username, connection.token_hash
            try:
                if savepoint:
                    with self._store.atomic():
                        if step is not None:
                            step()
                        elif handler is not None:
                            handler(connection, item, now)
                elif step is not None:
                    step()
                elif handler is not None:
                    handler(connection, item, now)
            except Exception as exc:
                undone = self._batch.undo_step(mark)
                self._caches.forget_all()  # they may have read what the step undid
                self.retract(undone)
                if (
                    isinstance(exc, StoreUnavailableError)
                    and exc.conflict
                    and savepoint
                    and attempt < STEP_ATTEMPTS
                    # Only from where it began (a rollback undoes no log-out).
                    and connection.username == username
                    and connection.token_hash == token
                ):
                    self._stats.steps_retried += 1
                    continue
                self._step_failed(connection, request_id, exc)
            else:
                done, closes = self._batch.end_step(mark)  # (out now if nothing waits)
                self._outbox.release(done)
                self._sessions.close_all(closes)
            return

    def _step_failed(self, connection: ChatConnection, request_id: int, exc: Exception) -> None:
        if isinstance(exc, RefusedError):
            self._outbox.refuse(connection, request_id, exc.code, exc.message, exc.device_set)
        elif isinstance(exc, StoreUnavailableError):
            self._stats.note_store_failure(exc)
            self._outbox.refuse(
                connection, request_id, ErrorCode.UNAVAILABLE, unavailable_message(exc)
            )
        else:
            self._internal_error(connection, request_id, exc)

    def _internal_error(self, connection: ChatConnection, request_id: int, exc: Exception) -> None:
        self._stats.note_internal_error(exc)
        self._outbox.refuse(connection, request_id, ErrorCode.INTERNAL, "internal server error")

    def retract(self, held: list[Held]) -> list[tuple[ChatConnection, m.Response]]:
        """Undo what held output stood for, since it will never be sent.

        A login or resume it reported is undone (its session may not exist), a
        delivery is taken out of the window (the store pushes it again if it holds
        it); other pushes are dropped.

        Returns:
            The held answers, for the caller to replace with a refusal.
        """
        answers: list[tuple[ChatConnection, m.Response]] = []
        for item in held:
            if isinstance(item.target, RemoteUser):
                continue  # a push for another node: dropped
            connection = self._connections.get(item.target)
            message = item.message
            if connection is None or connection.closing:
                continue
            if isinstance(message, m.MessageDelivered | m.CaughtUp):
                self._deliveries.take_back(connection, message)
            elif isinstance(message, m.RESPONSE_TYPES):
                if isinstance(message, m.LoggedIn) and not self._session_survived(message):
                    self._sessions.log_out(connection, announce=True)
                answers.append((connection, message))
        return answers

    def _session_survived(self, logged_in: m.LoggedIn) -> bool:
        """Whether the session a retracted ``LoggedIn`` named exists anyway (a resume
        of a session that was already there): then the connection keeps it."""
        try:
            return self._store.get_session(token_hash(logged_in.token)) is not None
        except Exception:  # cannot tell: the safe side is anonymous
            return False

    # --- hash jobs coming back -------------------------------------------------------------

    def complete_hash_job(self, job_id: int, digest: bytes, now: float) -> None:
        """A hash came back: finish its request, then what its connection queued."""
        forgotten = self._hashing.forget(job_id)
        if forgotten is None:
            return
        job, stale = forgotten
        if job.kind is JobKind.UPGRADE:
            self._hashing.finish_upgrade(job, digest)
            return
        connection = self._hashing.waiting_connection(job)
        if connection is None:
            return
        if stale:
            # The password changed (or the account went) while this hash ran: it
            # proves nothing about the password now.
            self._outbox.refuse(
                connection,
                job.request.request_id,
                ErrorCode.BAD_CREDENTIALS,
                "the password was changed meanwhile; try again",
            )
        else:
            finish = self._finishers[job.kind]
            self.run_step(
                connection, job.request.request_id, lambda: finish(connection, job, digest, now)
            )
        self.run_queue(connection, now)

    def abandon_hash_job(self, job_id: int, now: float) -> None:
        """A hash could not run: answer its request ``internal``, then the queue."""
        forgotten = self._hashing.forget(job_id)
        if forgotten is None:
            return
        job, _stale = forgotten
        self._hashing.refund_failure(job, now)  # it proved nothing: no failure to count
        connection = self._hashing.waiting_connection(job)
        if connection is None:
            return
        self._internal_error(connection, job.request.request_id, RuntimeError("hash job failed"))
        self.run_queue(connection, now)
