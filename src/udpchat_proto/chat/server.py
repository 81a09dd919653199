"""The chat server state machine: many connections, one store.

:class:`ChatServer` owns a :class:`~udpchat_proto.transport.ServerTransport` (the
handshake, packet protection and reliable delivery of every connection) and turns
the payloads it delivers into requests, answers and pushes, reading and writing
through an injected :class:`~udpchat_proto.chat.store.Store`. It has the five methods of
every role (``receive_datagram``, ``datagrams_to_send``, ``get_timer``,
``handle_timer``, ``next_event``) and three duties towards its caller:

* **Group commit.** After any store write, every later reply and push is *held*:
  :attr:`ChatServer.writes_pending` turns True, and the batch ends with one
  commit, which only then releases them. So no ``message_accepted`` (nor anything
  else) leaves before what it reports is durable. If the store cannot commit (a
  full disk: :class:`~udpchat_proto.chat.store.StoreUnavailableError`), the batch
  is lost whole: every answer it held becomes an ``unavailable`` refusal and its
  pushes are dropped, so nothing that was rolled back is ever reported.
* **Password hashing off the loop.** Register and login need scrypt, which takes
  tens of milliseconds. The state machine never hashes: it hands out a
  :class:`HashJob`, the caller runs :meth:`HashJob.run` on a worker thread and
  hands the digest back. The connection's later requests wait in its queue
  meanwhile (requests on one connection are answered in order); other
  connections are not delayed.
* **Timers.** :meth:`ChatServer.get_timer` is the earliest of the transport's timers
  and the server's own (:mod:`~udpchat_proto.chat.timers`).

A loop's turn, per batch of datagrams read (:meth:`ChatServer.end_batch` does
everything after the first line)::

    server.receive_datagram(data, addr, now)        # for each datagram read
    end = server.end_batch(now, hash_results=done, hash_slots=idle_workers)
    for job in end.hash_jobs:                       # run off the loop; the digests
        start(job)                                  # come back in a later turn
    for data, addr in end.datagrams:
        sock.sendto(data, addr)

The server is built of parts, each in its own module, wired here in
:meth:`ChatServer.__init__`: the connection table (``connections``), the batch and
what it holds (``batch``), what leaves for the clients (``outbox``), presence,
login sessions (``sessions``), deliveries, password hashing (``hashing``), the
limits, caches and timers, the dispatch of requests to the handler units
(``dispatch``, ``handlers/``), the cluster's side (``cluster``) and the
operator's (``admin``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Final, cast

from ..clock import WallClock
from ..errors import ErrorCode
from ..randomness import RandomSource, SystemRandomSource
from ..transport import (
    ConnectionAddressChanged,
    ConnectionId,
    ConnectionTerminated,
    HandshakeCompleted,
    PayloadReceived,
    ServerTransport,
    TransportEvent,
)
from ..transport.events import Address
from ..transport.keys import ServerKey
from .admin import Administration
from .batch import Batch, BatchEnd
from .caches import Caches
from .cluster import ClusterNode
from .config import ServerConfig
from .connections import ConnectionInfo, ConnectionTable
from .deliveries import Deliveries
from .dispatch import Dispatcher, Routes
from .events import ClientConnected, ClientDisconnected, ServerEvent
from .handlers import (
    AccountChangeHandlers,
    AccountHandlers,
    BlockHandlers,
    FriendHandlers,
    KeyHandlers,
    MessageHandlers,
    RoomHandlers,
)
from .hashing import Hashing
from .limits import Limits
from .messages import MAX_STAGED_SHARES
from .outbox import Outbox
from .pacing import CommitPacer
from .password_jobs import HashJob, JobBook
from .passwords import PasswordHash
from .presence import Presence
from .remote import ClusterNews, RemoteUsers
from .requests import token_hash, unavailable_message
from .sessions import Sessions
from .staging import ShareStaging
from .stats import ServerStats
from .store import Store, StoreUnavailableError, WriteTrackingStore
from .timers import ServerTimer, ServerTimers

__all__ = ["ChatServer", "HashJob", "ServerConfig", "ServerStats", "token_hash"]

RETENTION_BATCH: Final = 100_000
"""Most messages one sweep deletes for retention (the rest wait for the next hour),
so that one commit stays bounded."""


class ChatServer:
    """The server role: routes every connection's requests to the store and back.

    Args:
        store: where accounts, sessions, friendships, rooms and messages live. The
            caller owns it; the server commits it at the end of each batch.
        static_key: the server's Noise static key.
        clock: the wall clock, POSIX seconds (``time.time`` in a real server):
            message timestamps and session expiry, which outlive the process.
            Timers and rate limits run on the ``now`` each call passes instead, a
            monotonic clock, so that a wall-clock step (NTP) never moves them.
        config: limits and timeouts (defaults: :class:`ServerConfig`).
        random: where tokens, salts and transport keys come from (default: the OS).
        stage_messages: store each batch's new messages together, in one call
            (``Store.add_messages``), not one call each: for a store a round trip
            away (PostgreSQL). A cluster's node always does (None: only then).

    Nothing here raises for remote input. A store that cannot work answers
    ``unavailable``; any other store exception in a request is answered
    ``internal`` and counted in :attr:`stats`.
    """

    def __init__(
        self,
        *,
        store: Store,
        static_key: ServerKey,
        clock: WallClock,
        config: ServerConfig | None = None,
        random: RandomSource | None = None,
        stage_messages: bool | None = None,
    ) -> None:
        config = config if config is not None else ServerConfig()
        random = random if random is not None else SystemRandomSource()
        self._config = config
        self._clock = clock
        # Every part reads and writes through the tracker: it notes the batch's
        # writes (what is held) and defers the cursors' moves; with a database a
        # round trip away (always on a cluster's node) it stages new messages, to
        # be stored together (store.py).
        stage = config.cluster if stage_messages is None else stage_messages or config.cluster
        self._tracker = tracker = WriteTrackingStore(store, stage_messages=stage)
        self._pacer = CommitPacer(config.commit_pacing)
        store = cast(Store, tracker)
        self._store = store
        self._server_key = static_key.public_bytes
        self._transport = transport = ServerTransport(
            static_key=static_key, config=config.transport, random=random
        )
        self.stats = stats = ServerStats()
        """Counters for monitoring (see :class:`ServerStats`)."""
        self._events: collections.deque[ServerEvent] = collections.deque()
        self._timers = timers = ServerTimers()
        self._jobs = JobBook()
        self._limits = limits = Limits(config)
        self._staging = ShareStaging(
            max_shares=min(
                MAX_STAGED_SHARES, config.max_room_members * config.max_sessions_per_user
            )
        )
        self._connections = connections = ConnectionTable(config, transport.set_protected)
        remote = RemoteUsers(stats)
        self._caches = caches = Caches(
            store=store, tracker=tracker, connections=connections, config=config
        )
        self._batch = batch = Batch(tracker)
        self._outbox = outbox = Outbox(
            transport=transport,
            connections=connections,
            remote=remote,
            batch=batch,
            stats=stats,
            on_overflow=self._close_overflowing,
        )
        self._presence = presence = Presence(
            store=store,
            connections=connections,
            remote=remote,
            caches=caches,
            outbox=outbox,
            stats=stats,
            config=config,
        )
        self._sessions = sessions = Sessions(
            store=store,
            connections=connections,
            presence=presence,
            caches=caches,
            batch=batch,
            transport=transport,
            timers=timers,
            events=self._events,
            stats=stats,
            config=config,
        )
        self._deliveries = deliveries = Deliveries(
            store=store,
            tracker=tracker,
            connections=connections,
            outbox=outbox,
            presence=presence,
            timers=timers,
            stats=stats,
            clock=clock,
            batch_refills=config.cluster,
        )
        self._hashing = hashing = Hashing(
            store=store,
            jobs=self._jobs,
            connections=connections,
            limits=limits,
            stats=stats,
            config=config,
            random=random,
        )
        accounts = AccountHandlers(
            store=store,
            outbox=outbox,
            sessions=sessions,
            deliveries=deliveries,
            hashing=hashing,
            limits=limits,
            events=self._events,
            config=config,
            clock=clock,
            random=random,
        )
        account_changes = AccountChangeHandlers(
            store=store,
            outbox=outbox,
            sessions=sessions,
            hashing=hashing,
            limits=limits,
            batch=batch,
            caches=caches,
            stats=stats,
            config=config,
            clock=clock,
        )
        units = (
            accounts,
            account_changes,
            FriendHandlers(
                store=store,
                outbox=outbox,
                caches=caches,
                presence=presence,
                config=config,
                clock=clock,
            ),
            BlockHandlers(store=store, outbox=outbox, caches=caches, config=config, clock=clock),
            MessageHandlers(
                store=store,
                tracker=tracker,
                connections=connections,
                outbox=outbox,
                deliveries=deliveries,
                presence=presence,
                caches=caches,
                batch=batch,
                limits=limits,
                stats=stats,
                config=config,
                clock=clock,
                staging=self._staging,
            ),
            KeyHandlers(
                store=store,
                connections=connections,
                outbox=outbox,
                caches=caches,
                clock=clock,
                limits=limits,
            ),
            RoomHandlers(
                store=store,
                outbox=outbox,
                batch=batch,
                presence=presence,
                limits=limits,
                config=config,
                clock=clock,
            ),
        )
        self._dispatcher = Dispatcher(
            routes=Routes(route for unit in units for route in unit.routes()),
            finishers={**accounts.finishers(), **account_changes.finishers()},
            connections=connections,
            outbox=outbox,
            batch=batch,
            store=store,
            caches=caches,
            sessions=sessions,
            deliveries=deliveries,
            hashing=hashing,
            transport=transport,
            stats=stats,
            config=config,
        )
        self._cluster = ClusterNode(
            store=store,
            tracker=tracker,
            connections=connections,
            remote=remote,
            presence=presence,
            caches=caches,
            batch=batch,
            sessions=sessions,
            deliveries=deliveries,
            outbox=outbox,
            stats=stats,
            config=config,
        )
        self._admin = Administration(
            store=store,
            connections=connections,
            presence=presence,
            sessions=sessions,
            hashing=hashing,
            caches=caches,
        )

    # --- the five methods ----------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Feed one datagram read from the socket.

        Never raises for remote input: bad datagrams are dropped and counted.

        Args:
            data: the datagram's bytes.
            addr: where it came from.
            now: a monotonic clock, seconds (``time.monotonic()``).

        Then, once the batch's datagrams are all fed, :meth:`end_batch`.
        """
        self._timers.now = now
        self._sweep_if_due(now)
        self._transport.receive_datagram(data, addr, now)
        self._drain_transport(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Return the datagrams to write now (held replies are not among them).

        Args:
            now: a monotonic clock, seconds (``time.monotonic()``).

        Returns:
            ``(data, address)`` pairs, each at most the configured datagram size.
        """
        self._timers.now = now
        datagrams: list[tuple[bytes, Address]] = self._transport.datagrams_to_send(now)
        # Building datagrams can end a connection (a close that was just sent).
        self._drain_transport(now)
        return datagrams

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should be called next (on the monotonic clock
        of ``now``), or None."""
        own = self._timers.earliest()
        timers = [t for t in (self._transport.get_timer(), own) if t is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now`` (an early call is harmless).

        Then :meth:`end_batch` (or commit, and :meth:`datagrams_to_send`).
        """
        self._timers.now = now
        self._sweep_if_due(now)
        while (timer := self._timers.pop_due(now)) is not None:
            self._fire(timer, now)
        self._transport.handle_timer(now)
        self._drain_transport(now)

    def next_event(self) -> ServerEvent | None:
        """The next event for logging, or None when there is none."""
        return self._events.popleft() if self._events else None

    # --- the end of a batch ------------------------------------------------------------

    def end_batch(
        self,
        now: float,
        *,
        hash_results: Iterable[tuple[int, bytes | None]] = (),
        hash_slots: int | None = None,
        run_hashes: bool = False,
        stopwatch: Callable[[], float] | None = None,
    ) -> BatchEnd:
        """End the batch: everything a loop does once it has fed the datagrams.

        In order: hand back the finished hash jobs (:meth:`complete_hash_job`, or
        :meth:`abandon_hash_job` for a job that raised), fire the due timers, take
        the new hash jobs (or run them here), commit the store once if anything
        was written (group commit: then release what the batch held, or, if the
        commit fails, answer it ``unavailable``), collect the cluster's news, and
        the datagrams to write.

        Args:
            now: a monotonic clock, seconds (``time.monotonic()``).
            hash_results: ``(job_id, digest)`` of each job run since the last
                batch; a digest of None: the job raised.
            hash_slots: most new jobs to hand out (idle workers); None: all.
            run_hashes: run the jobs here instead, before the commit (tests, and
                embedders without threads: scrypt stalls the caller meanwhile).
            stopwatch: a clock to time the commit with (``time.perf_counter``).

        Returns:
            What the caller does next: write the datagrams, start the hash jobs,
            publish the news (:class:`BatchEnd`).
        """
        for job_id, digest in hash_results:
            if digest is None:
                self.abandon_hash_job(job_id, now)
            else:
                self.complete_hash_job(job_id, digest, now)
        timer = self.get_timer()
        if timer is not None and timer <= now:
            self.handle_timer(now)
        jobs: tuple[HashJob, ...] = ()
        if run_hashes:
            self.run_hash_jobs(now)
        else:
            jobs = tuple(self.take_hash_jobs(hash_slots))
        writes = self.writes_pending
        started = stopwatch() if stopwatch is not None and writes else None
        failure = self.commit()
        seconds = None if started is None or stopwatch is None else stopwatch() - started
        if writes and failure is None:
            self._pacer.committed(now)
        return BatchEnd(
            news=self.take_news(),
            datagrams=tuple(self.datagrams_to_send(now)),
            hash_jobs=jobs,
            committed=writes and failure is None,
            failure=failure,
            commit_seconds=seconds,
        )

    def commit_wait(self, now: float, datagrams: int) -> float:
        """Seconds the caller should wait for more work before it ends this batch
        (:meth:`end_batch`), reading what arrives meanwhile into it: more than 0
        only when the batch holds writes, is small (``datagrams`` read so far) and
        commits have been frequent (:class:`~udpchat_proto.chat.pacing.CommitPacing`,
        ``ServerConfig.commit_pacing``). Replies still leave only after the commit;
        the wait lets more requests share it.

        Args:
            now: a monotonic clock, seconds (the one given to :meth:`end_batch`).
            datagrams: datagrams fed to this batch so far.
        """
        if not self._tracker.dirty:
            return 0.0
        return self._pacer.wait(now, datagrams)

    def commit_waited(self, asked: float, took: float, now: float) -> bool:
        """Tell the server how long the wait :meth:`commit_wait` asked for took
        (``now``: its end, the loop's clock). A wait much longer than asked (the
        machine kept the loop from its core) stops the waits for a while
        (``CommitPacing.backoff``). Returns whether it overslept."""
        return self._pacer.waited(asked, took, now)

    @property
    def writes_pending(self) -> bool:
        """Whether the store was written since the last commit.

        While it is True, replies and pushes are held until the commit.
        """
        return self._tracker.dirty

    def commit(self) -> StoreUnavailableError | None:
        """Commit the batch, if anything was written, and release what it held
        (:meth:`end_batch` does it).

        Call it once per batch, after feeding every datagram, hash result and timer
        of the batch, and before :meth:`datagrams_to_send` (group commit).

        Returns:
            None once the batch is durable (or there was nothing to commit); the
            store's :class:`~udpchat_proto.chat.store.StoreUnavailableError` if the batch
            was lost (see :meth:`rolled_back`), for the caller to log.
        """
        self._outbox.flush_membership()
        self._caches.batch_ended()
        if not self._tracker.dirty:
            self._deliveries.refill_queued()
            return None
        try:
            self._tracker.commit()
        except StoreUnavailableError as exc:
            self.stats.stores_retried = self._tracker.conflicts_retried
            self.rolled_back(exc)
            self._deliveries.refill_queued()
            return exc
        self.stats.stores_retried = self._tracker.conflicts_retried
        self.committed()
        return None

    def committed(self) -> None:
        """Tell the server that the caller committed the store itself.

        Releases every reply and push held since the first uncommitted write, in
        order, and pushes the messages the batch stored to the connections here
        that wait for them (a cluster's hints). Then call :meth:`datagrams_to_send`.
        (:meth:`commit` does both.) A server that stages messages
        (``stage_messages``) stores them in :meth:`commit`: one built so must be
        committed through it, never by its caller.
        """
        self._outbox.flush_membership()
        self._caches.batch_ended()  # (the caller committed: commit() did not run)
        self._tracker.batch_committed()
        self._sessions.touches_committed()
        held, closes, hints, quiet = self._batch.release()
        self._outbox.release(held)
        self._sessions.close_all(closes)
        self._deliveries.committed()
        # A cluster's node pushes from the database, as the others do (cluster.py).
        self._deliveries.look_again_for(hints, skip=quiet)

    def rolled_back(self, failure: StoreUnavailableError) -> None:
        """Tell the server that the batch could not be committed: it is lost.

        Nothing it held is sent as it was: every held answer becomes an
        ``unavailable`` refusal (the client may try again), a login it held is
        undone, and its pushes are dropped; connections whose deliveries were
        dropped are refilled from the store after ``STORE_RETRY_INTERVAL``.
        Then call :meth:`datagrams_to_send`.
        """
        self._tracker.batch_lost()
        held = self._batch.lose()
        self._caches.forget_all()
        self.stats.note_store_failure(failure)
        self._deliveries.lost()
        self.stats.batches_lost += 1
        self._sessions.touches_lost()
        refusal = unavailable_message(failure)
        for connection, response in self._dispatcher.retract(held):
            self._outbox.refuse(connection, response.request_id, ErrorCode.UNAVAILABLE, refusal)

    # --- password hashes -------------------------------------------------------------------

    def take_hash_jobs(self, limit: int | None = None) -> list[HashJob]:
        """Return password hashes to compute; each job is returned once.

        Jobs come round-robin across client addresses, so a runtime that takes only
        as many as it has idle workers (``limit``) keeps one address's burst from
        delaying everyone else's login.

        Args:
            limit: most jobs to return (None: every queued job).

        Run each (:meth:`HashJob.run`, off the event loop) and pass the digest to
        :meth:`complete_hash_job` (or to :meth:`end_batch`).
        """
        return self._hashing.take(limit)

    def complete_hash_job(self, job_id: int, digest: bytes, now: float) -> None:
        """Hand back the digest of a :class:`HashJob`.

        Answers the register or login that asked for it, then the requests that
        connection queued meanwhile. A job whose connection has gone is ignored,
        as is an unknown ``job_id``.

        Args:
            job_id: :attr:`HashJob.job_id`.
            digest: what :meth:`HashJob.run` returned.
            now: a monotonic clock, seconds (``time.monotonic()``).
        """
        self._timers.now = now
        self._dispatcher.complete_hash_job(job_id, digest, now)

    def abandon_hash_job(self, job_id: int, now: float) -> None:
        """A :class:`HashJob` could not run (it raised): answer its request
        ``internal`` and free its place, so that its address and account are not
        held up."""
        self._timers.now = now
        self._dispatcher.abandon_hash_job(job_id, now)

    def run_hash_jobs(self, now: float) -> int:
        """Compute every pending password hash on the calling thread and hand each back.

        For tests, benchmarks and embedders without worker threads (a real server
        runs :meth:`take_hash_jobs` on threads instead, so that scrypt never stalls
        its loop). A finished login may start another job (a pipelined one): those
        run too.

        Returns:
            How many jobs ran.
        """
        ran = 0
        while jobs := self.take_hash_jobs():
            for job in jobs:
                self.complete_hash_job(job.job_id, job.run(), now)
                ran += 1
        return ran

    # --- one node of a cluster (cluster.py) ------------------------------------------------

    def take_news(self) -> ClusterNews:
        """What this node's committed batches changed for the other nodes since the
        last call (empty for a single server). :meth:`end_batch` takes it; hand it
        to every other node's :meth:`receive_news`. (The messages it names are
        pushed to the connections here already: see :meth:`committed`.)"""
        return self._cluster.take_news()

    def online_here(self) -> list[str]:
        """The users with a logged-in connection on this node (its heartbeat)."""
        return sorted(self._connections.users())

    def receive_news(self, node: str, news: ClusterNews, now: float) -> None:
        """Act on what another node (named ``node``) told, for the connections here.

        Call it between batches (before feeding a batch's first datagram), as every
        method of this section: what it sends must not wait for, or be lost with,
        a batch of this node's. (The deliveries its hints ask for are read in one
        query for every node's news of the turn: by :meth:`deliver_news`, or at
        the next batch's end, with that batch's own refills.)"""
        self._timers.now = now
        self._cluster.receive_news(node, news, now)

    def deliver_news(self, now: float) -> None:
        """Read now, in one query, the deliveries that the news received since the
        last batch asks for, and push them: then send :meth:`datagrams_to_send`
        at once. Call it between batches, after the turn's :meth:`receive_news`
        (a loop that does not leaves them to the next batch's end, where they
        wait for that batch's commit: a cross-node delivery then costs this
        node's whole batch, not one read)."""
        self._timers.now = now
        if not self._tracker.dirty:  # (a read inside a batch would see its writes)
            self._deliveries.refill_queued()

    def receive_snapshot(self, node: str, usernames: list[str], now: float) -> None:
        """Another node's heartbeat: everyone online on it now. Replaces what this
        node knew of it (so lost news heals)."""
        self._timers.now = now
        self._cluster.receive_snapshot(node, usernames, now)

    def forget_node(self, node: str, now: float) -> None:
        """A node left (it said so, or :meth:`expire_nodes` found it silent): its
        users are offline unless another node has them."""
        self._timers.now = now
        self._cluster.forget_nodes([node])

    def expire_nodes(self, now: float) -> list[str]:
        """Forget the nodes not heard from for ``NODE_TIMEOUT`` (call it every
        second or so); returns their names, for the log."""
        self._timers.now = now
        return self._cluster.expire_nodes(now)

    def deliver_hints(self, usernames: list[str], now: float) -> None:
        """These users have new messages in the database (another node's news
        said so): push them to their connections here (users not connected here
        are ignored)."""
        self._timers.now = now
        self._deliveries.look_again_for(usernames)

    def refill_all(self, now: float) -> None:
        """Look in the database for every connection here (news may have been lost
        while the bus was away)."""
        self._timers.now = now
        self._deliveries.look_again_for_everyone()

    def check_sessions(self, now: float) -> int:
        """Close the connections here whose login session no longer exists (the news
        of its end was lost on the way: a revoked session must not live on here).
        One query; call it now and then, between batches. Returns how many
        sessions were gone."""
        self._timers.now = now
        return self._cluster.check_sessions()

    # --- the operator's (admin.py) ------------------------------------------------------

    def list_accounts(self) -> list[tuple[str, bool, bool]]:
        """Every account as ``(username, online, disabled)``, sorted by name."""
        return self._admin.list_accounts()

    def disable_account(self, username: str, now: float) -> bool:
        """Refuse the account's logins (``account_disabled``) from now on and end its
        sessions, closing their connections. False if there is no such account.

        A step of the current batch: done once the batch is committed."""
        self._timers.now = now
        return self._admin.disable_account(username)

    def enable_account(self, username: str, now: float) -> bool:
        """Let the account log in again. False if there is no such account."""
        self._timers.now = now
        return self._admin.enable_account(username)

    def reset_password(self, username: str, password: PasswordHash, now: float) -> bool:
        """Replace the account's password (hashed by the caller, off the loop) and
        end its sessions. False if there is no such account."""
        self._timers.now = now
        return self._admin.reset_password(username, password)

    def kick(self, username: str, now: float) -> int:
        """Close the user's connections on this server (their sessions stay: their
        clients may resume them). Returns how many were closed."""
        self._timers.now = now
        return self._admin.kick(username)

    # --- what the runtime may read -------------------------------------------------------

    @property
    def config(self) -> ServerConfig:
        """The configuration in force."""
        return self._config

    @property
    def server_key(self) -> bytes:
        """The server's static public key (what clients pin)."""
        return self._server_key

    @property
    def connection_count(self) -> int:
        """Connections that completed the handshake and have not ended."""
        return len(self._connections)

    @property
    def logged_in_sessions(self) -> int:
        """Login sessions with at least one live connection here."""
        return self._connections.session_count

    def connection_info(self) -> list[ConnectionInfo]:
        """Every connection that completed its handshake, as it stands now."""
        return self._connections.info()

    @property
    def online_users(self) -> list[str]:
        """Users with at least one live logged-in connection (on any node of a
        cluster, as far as this one knows), sorted."""
        return self._presence.online_users()

    @property
    def online_count(self) -> int:
        """How many users are online (as :attr:`online_users`, without a sorted list
        each time the counters are read)."""
        return self._presence.online_count()

    @property
    def pending_hash_jobs(self) -> int:
        """Hash jobs handed out (or about to be) and not yet completed."""
        return len(self._hashing)

    @property
    def transport_dropped(self) -> dict[str, int]:
        """Datagrams the transport dropped (and handshakes it refused), by reason."""
        return dict(self._transport.dropped)

    # --- inside ---------------------------------------------------------------------------

    def _drain_transport(self, now: float) -> None:
        while (event := self._transport.next_event()) is not None:
            self._on_transport_event(event, now)

    def _on_transport_event(self, event: TransportEvent, now: float) -> None:
        if isinstance(event, HandshakeCompleted):
            self.stats.connections_opened += 1
            self._connections.open(event.connection_id, event.address, now)
            self._events.append(
                ClientConnected(connection_id=event.connection_id, address=event.address)
            )
        elif isinstance(event, PayloadReceived):
            self._dispatcher.on_payload(event.connection_id, event.payload, now)
        elif isinstance(event, ConnectionAddressChanged):
            migrated = self._connections.get(event.connection_id)
            if migrated is not None:
                migrated.address = event.address
        elif isinstance(event, ConnectionTerminated):
            ended = self._connections.remove(event.connection_id)
            self._staging.drop(event.connection_id)
            if ended is not None:
                self._sessions.log_out(ended, announce=False)
                # Nobody waits for its hash any more: no worker's time is spent on it.
                self._hashing.discard(ended)
                self._events.append(
                    ClientDisconnected(
                        connection_id=event.connection_id, code=event.code, reason=event.reason
                    )
                )

    def _close_overflowing(self, connection_id: ConnectionId) -> None:
        """A connection's send buffer is full (see :class:`Outbox`): it ends."""
        self._sessions.close(connection_id, "send buffer full")

    def _sweep_if_due(self, now: float) -> None:
        # Unarmed only before the first call: a server sweeps as soon as it runs.
        self._timers.arm(ServerTimer.SWEEP, now)
        if self._timers.due(ServerTimer.SWEEP, now):
            self._fire(ServerTimer.SWEEP, now)

    def _fire(self, timer: ServerTimer, now: float) -> None:
        if timer is ServerTimer.SWEEP:
            self._timers.set(ServerTimer.SWEEP, now + self._config.session_sweep_interval)
            try:
                self._sweep(now)
            except StoreUnavailableError as failure:  # try again at the next sweep
                self.stats.note_store_failure(failure)
            except Exception as exc:
                self.stats.note_internal_error(exc)
        elif timer is ServerTimer.SESSION_TOUCH:
            self._sessions.flush_touches()
        elif timer is ServerTimer.CURSOR_WRITE:
            self._deliveries.write_cursors()
        elif timer is ServerTimer.STORE_RETRY:
            self._deliveries.refill_stale()

    def _sweep(self, now: float) -> None:
        """Expire sessions, delete old messages, prune the limiters."""
        wall = self._clock()
        self._sessions.expire(wall)
        self._staging.expire(now)
        if self._config.retain_days is not None:
            self.stats.messages_deleted += self._store.delete_delivered_before(
                wall - self._config.retain_days * 86400.0, RETENTION_BATCH
            )
        self._limits.prune(now)
