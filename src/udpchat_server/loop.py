"""The blocking UDP loop around the sans-IO :class:`~udpchat_proto.chat.server.ChatServer`.

Each turn:

1. wait on the socket (and a wake-up socket) until the core's next timer;
2. in a cluster, act on what the other nodes said (between batches: their news
   never rides on, nor is lost with, a batch of this node's), and read and send
   at once the deliveries their news names (they do not wait for the batch);
3. drain what has arrived (non-blocking reads, at most :data:`BATCH` datagrams) and
   feed it all, with the control socket's requests; a small batch that wrote, while
   commits are frequent, first waits a little for more work and drains again
   (``ChatServer.commit_wait``: commits paced by load, at most a millisecond);
4. end the batch (``ChatServer.end_batch``): the password hashes finished by the
   worker threads go back in, the due timers fire, the store is committed once if
   anything was written, and only then does the core give the datagrams to send,
   so no acknowledgement ever leaves before what it acknowledges is durable;
5. start the new password hash jobs on the worker threads, log the core's events;
6. send the datagrams, then publish the batch's news to the other nodes (the news
   only hints: nothing on the way to this batch's answers waits for the bus).

When the store cannot commit (a full disk), the core answers that batch's requests
``unavailable`` and the loop goes on: it logs one line naming the cause (at most
once a minute, with how many batches were lost meanwhile), keeps serving what needs
no write, and says so when a commit succeeds again.

scrypt is CPU-heavy on purpose (tens of milliseconds), so it runs on a small thread
pool (``hashlib.scrypt`` releases the GIL) at the lowest CPU priority, so that it
never takes the loop's core; a finished job writes a byte to the wake-up socket so
that the loop feeds the result back at once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import logging
import os
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from udpchat_proto import (
    ChatServer,
    ClientConnected,
    ClientDisconnected,
    HashJob,
    ServerEvent,
    Store,
    StoreUnavailableError,
    UserLoggedIn,
    UserLoggedOut,
)
from udpchat_proto.chat import HEARTBEAT_INTERVAL, ClusterNews

from .logformat import escape_controls

__all__ = ["BATCH", "ServerLoop", "describe", "format_counters", "yield_to_the_loop"]

if TYPE_CHECKING:
    from .bus import NatsBus
    from .operations import Operator

log = logging.getLogger(__name__)

#: Seconds between looks in the database for every connection while the cluster's
#: bus is away (its news is lost meanwhile).
BUS_DOWN_LOOK_INTERVAL = 3.0
#: Seconds between those looks while the bus is up: news that NATS dropped on the
#: way (a slow consumer) delays a delivery by at most this much.
POSITION_CHECK_INTERVAL = 30.0
#: Longest sleep of a cluster's node (it expires silent nodes and sends
#: heartbeats), and of a server with metrics (their snapshot stays this fresh).
CLUSTER_WAIT = 1.0
#: Seconds between two snapshots of the counters for the metrics endpoint.
METRICS_INTERVAL = 1.0

#: Most datagrams read in one turn before the batch is committed and answered;
#: bounds the latency a flood can add to everyone else's replies.
BATCH = 256
#: Largest datagram read (the protocol's are at most 1200 bytes; anything bigger
#: is truncated and then dropped by the core as malformed).
MAX_DATAGRAM = 65_535
#: Longest sleep when the core has no timer, so that a missed wake-up costs little.
IDLE_WAIT = 5.0
#: Shortest time between two log lines about a store that cannot commit.
STORE_FAILURE_LOG_INTERVAL = 60.0
#: Shortest time between two log lines about internal errors (with a traceback).
INTERNAL_ERROR_LOG_INTERVAL = 10.0
#: How often the counters are logged (at info), and once more at exit.
COUNTERS_INTERVAL = 60.0


#: The niceness of the password-hash threads (the lowest priority).
HASH_THREAD_NICENESS = 19


def yield_to_the_loop() -> None:
    """Lower the calling thread's CPU priority: niceness :data:`HASH_THREAD_NICENESS`
    and, where allowed, the ``SCHED_IDLE`` policy.

    A hash takes tens of milliseconds of CPU on purpose; on a small machine two of
    them running beside the loop took the cores it needed, and a burst of logins
    added tens of milliseconds to every message. At the lowest priority the hashes
    use what the loop leaves: logins wait a little longer under load, messages do
    not. Linux only (elsewhere the call would renice the whole process); a refusal
    (a sandbox) leaves the priority as it was.
    """
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, HASH_THREAD_NICENESS)
    with contextlib.suppress(OSError):
        # Below every normal thread: it runs only on a core nothing else wants.
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


def format_counters(counters: dict[str, Any]) -> str:
    """``name=value`` pairs on one line (dicts inline, empty ones left out)."""
    parts = []
    for name, value in counters.items():
        if isinstance(value, dict):
            if value:
                inner = ",".join(f"{key}:{count}" for key, count in value.items())
                parts.append(f"{name}={inner}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts)


def describe(event: ServerEvent) -> str:
    """One log line for a server event: ``connection 4cb81ee9 alice logged in``.

    What the peer chose (a CLOSE frame's reason above all) is escaped
    (:func:`~udpchat_server.logformat.escape_controls`): it stays on this line,
    whatever logging the embedder set up."""
    who = f"connection {event.connection_id.hex()[:8]}"
    match event:
        case ClientConnected(address=(host, port)):
            return f"{who} connected from {escape_controls(f'{host}:{port}')}"
        case UserLoggedIn(username=user, resumed=resumed):
            return (
                f"{who} {escape_controls(user)} "
                f"{'resumed their session' if resumed else 'logged in'}"
            )
        case UserLoggedOut(username=user):
            return f"{who} {escape_controls(user)} logged out"
        case ClientDisconnected(code=code, reason=reason):
            shown = f": {escape_controls(reason)}" if reason else ""
            return f"{who} disconnected ({code.name.lower()}{shown})"
    return f"{who} {escape_controls(str(event))}"


class ServerLoop:
    """Run a :class:`ChatServer` on a bound UDP socket until :meth:`stop` is called.

    Args:
        server: the state machine.
        store: the store the state machine writes to (committed here).
        sock: a bound UDP socket.
        workers: threads for password hashing.
        clock: a monotonic clock, seconds: the core's ``now`` (timers only; the
            server takes its wall clock at construction).
    """

    def __init__(
        self,
        *,
        server: ChatServer,
        store: Store,
        sock: socket.socket,
        workers: int = 2,
        clock: Callable[[], float] = time.monotonic,
        bus: NatsBus | None = None,
        operator: Operator | None = None,
    ) -> None:
        self._server = server
        self._bus = bus
        self._operator = operator
        """The control socket and metrics, if the operator asked for them."""
        """The cluster's bus (a node of several), or None."""
        self._store = store
        self._sock = sock
        self._clock = clock
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="udpchat-hash", initializer=yield_to_the_loop
        )
        self._workers = workers
        self._hashing = 0
        """Jobs handed to the threads and not back yet: the core keeps the others,
        and hands them out fairly across addresses as threads free up."""
        self._done: queue.SimpleQueue[tuple[int, bytes | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        if bus is not None:
            bus.wake = self._wake  # hints from the other nodes wake the loop
        if operator is not None:
            operator.set_wake(self._wake)  # so does a control request
        self._metrics_at = 0.0
        self._next_look = 0.0
        self._next_heartbeat = 0.0
        self._stopping = False
        self.datagrams_received = 0
        self.datagrams_sent = 0
        self.commits = 0
        self.turns = 0
        """Turns of the loop (each: a wait, a batch read, its commit if it wrote):
        against the messages, the fixed cost a message pays at low load."""
        self.commit_waits = 0
        """Batches that waited for more work before their commit (CommitPacing)."""
        self.commit_waits_overslept = 0
        """Of them, those that took much longer than asked (the machine was busy)."""
        self.failed_commits = 0
        self._failing_since: float | None = None
        self._failure_logged_at = -STORE_FAILURE_LOG_INTERVAL
        self._failures_unlogged = 0
        self._failure_reported = False
        self._internal_errors_seen = 0
        self._internal_logged_at = -INTERNAL_ERROR_LOG_INTERVAL
        self._counters_at = time.monotonic() + COUNTERS_INTERVAL

    def stop(self) -> None:
        """Ask the loop to finish its turn and return (safe from a signal handler)."""
        self._stopping = True
        self._wake()

    def run(self) -> None:
        """Serve until :meth:`stop`; then commit, send what is left and clean up.

        A store that cannot commit (``StoreUnavailableError``) does not stop it.

        Raises:
            Exception: whatever else a store raises on commit, a bug (the caller
                exits: no reply is sent for writes that could not be made durable).
        """
        self._sock.setblocking(False)
        try:
            while not self._stopping:
                self._wait()
                self._turn()
            self._turn()  # what the last wait brought in, committed before leaving
            log.info("counters at exit: %s", format_counters(self.counters()))
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._wake_r.close()
            self._wake_w.close()

    # --- one turn --------------------------------------------------------------------

    def _wait(self) -> None:
        timer = self._server.get_timer()
        # (A server with metrics wakes every second: their snapshot stays that fresh.)
        metrics = self._operator is not None and self._operator.metrics is not None
        longest = CLUSTER_WAIT if self._bus is not None or metrics else IDLE_WAIT
        timeout = longest if timer is None else min(longest, timer - self._clock())
        readable, _, _ = select.select([self._sock, self._wake_r], [], [], max(0.0, timeout))
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass

    def _turn(self) -> None:
        server = self._server
        self.turns += 1
        now = self._clock()
        if self._bus is not None:
            try:
                self._hear(self._bus, now)
            except Exception:  # a bug there must cost the news, never the server
                log.exception("acting on the cluster's news")
        read = self._read(BATCH, now)
        # A small batch with writes, while commits are frequent, waits a little for
        # more work to share its commit and this turn (the core's CommitPacing:
        # at most a millisecond, and never for a quiet or a saturated server).
        # Nothing of the batch leaves before its commit, whatever the wait.
        if (wait := server.commit_wait(now, read)) > 0.0:
            self.commit_waits += 1
            time.sleep(wait)
            started, now = now, self._clock()
            # A machine with no core for the loop made the wait much longer: the
            # core then stops the waits for a while.
            if server.commit_waited(wait, now - started, now):
                self.commit_waits_overslept += 1
            read += self._read(BATCH - read, now)
        operator = self._operator
        if operator is not None:
            operator.run_requests(now)  # steps of this batch: answered once it commits
        done: list[tuple[int, bytes | None]] = []
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                break
            self._hashing -= 1
        # A job that raised (logged) comes back as None: its client is answered
        # internal, its slot freed.
        end = server.end_batch(
            now,
            hash_results=done,
            hash_slots=self._workers - self._hashing,
            stopwatch=time.perf_counter,
        )
        for job in end.hash_jobs:
            self._hashing += 1
            self._start(job)
        while (event := server.next_event()) is not None:
            log.debug("%s", describe(event))  # a line per connection event: debug only
        self._report(server)
        if end.committed:
            self.commits += 1
            self._store_recovered()
        elif end.failure is not None:
            self._store_failed(end.failure)
        if operator is not None:
            operator.batch_done(end.failure, end.commit_seconds)
            if now >= self._metrics_at:
                self._metrics_at = now + METRICS_INTERVAL
                operator.update_metrics(self.counters)
        self._send(end.datagrams)
        if self._bus is not None:
            # After the datagrams, never before: the news only hints (the other
            # nodes read what it names from the database, committed already), and
            # handing it to the bus's thread wakes that thread, which then takes
            # the interpreter from this one (bus.SWITCH_INTERVAL) while the
            # batch's answers wait to be written.
            self._tell(self._bus, end.news, now)

    def _send(self, datagrams: Iterable[tuple[bytes, tuple[str, int]]]) -> None:
        """Write ``datagrams``; a full buffer or an unreachable peer costs that one."""
        for data, addr in datagrams:
            try:
                self._sock.sendto(data, addr)
                self.datagrams_sent += 1
            except BlockingIOError:
                log.debug("send buffer full; %d bytes to %s dropped", len(data), addr)
            except OSError as exc:
                # Unreachable or refused peers must not stop the others' replies.
                if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    log.warning("sendto %s: %s", addr, exc)

    def _read(self, most: int, now: float) -> int:
        """Read and feed at most ``most`` datagrams, as long as some wait; how many."""
        server = self._server
        read = 0
        for _ in range(most):
            try:
                data, addr = self._sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:  # e.g. an ICMP error reported on some platforms
                log.debug("recvfrom: %s", exc)
                continue
            read += 1
            self.datagrams_received += 1
            # The core never raises for remote input; the guard is for a bug in it,
            # which must cost one datagram, never the server.
            try:
                server.receive_datagram(data, (addr[0], addr[1]), now)
            except Exception:
                log.exception("the core raised on a datagram from %s:%s", addr[0], addr[1])
        return read

    # --- the cluster's bus ------------------------------------------------------------

    def _hear(self, bus: NatsBus, now: float) -> None:
        """Act on what the other nodes said (between batches: what it sends goes
        out with this turn, whatever becomes of the batch); expire the silent
        ones; look in the database for everyone after a gap of the bus, every few
        seconds while it is away, and now and then regardless."""
        from .bus import News, Snapshot  # noqa: PLC0415 (nats-py: optional)

        server = self._server
        heard, resync = bus.take()
        for item in heard:
            if isinstance(item, News):
                server.receive_news(item.node, item.news, now)
            elif isinstance(item, Snapshot):
                server.receive_snapshot(item.node, item.users, now)
            else:
                log.info("node %s left the cluster", escape_controls(item.node[:8]))
                server.forget_node(item.node, now)
        if heard:
            # The deliveries the news asks for, read and sent now: not at this
            # turn's end, after its batch's commit (a cross-node message waited).
            server.deliver_news(now)
            self._send(server.datagrams_to_send(now))
        for node in server.expire_nodes(now):
            log.warning("node %s is silent: its users count as offline", escape_controls(node[:8]))
        interval = POSITION_CHECK_INTERVAL if bus.connected else BUS_DOWN_LOOK_INTERVAL
        if resync or now >= self._next_look:
            self._next_look = now + interval
            server.refill_all(now)
            if gone := server.check_sessions(now):
                log.info("closed the connections of %d sessions ended elsewhere", gone)
        else:
            self._next_look = min(self._next_look, now + interval)

    def _tell(self, bus: NatsBus, news: ClusterNews, now: float) -> None:
        """Tell the other nodes what the committed batch changed (this node pushed
        its own messages already: ``ChatServer.committed``), and who is online here
        every few seconds."""
        if news:
            bus.publish(news)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL
            bus.heartbeat(self._server.online_here())

    # --- what operators see -----------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        """The loop's and the core's counters, for the periodic log line (and later,
        metrics): datagrams, drops by reason, connections, sessions, messages,
        commits and refusals by code."""
        stats = self._server.stats
        cluster: dict[str, Any] = {}
        if self._bus is not None:  # what the other nodes said that this one did not take
            cluster["bus_dropped"] = dict(sorted(self._bus.dropped.items()))
            # Ignored by the core (one node's cap) or by the bus (the cap over all).
            cluster["remote_names_ignored"] = stats.remote_names_ignored + self._bus.names_ignored
        round_trips = getattr(self._store, "round_trips", None)
        if isinstance(round_trips, int):  # a database server's store (PostgreSQL)
            cluster["store_round_trips"] = round_trips
            cluster["stores_retried"] = stats.stores_retried
        return {
            "datagrams_in": self.datagrams_received,
            "datagrams_out": self.datagrams_sent,
            "dropped": dict(sorted(self._server.transport_dropped.items())),
            "connections": self._server.connection_count,
            "sessions_logged_in": self._server.logged_in_sessions,
            "connections_opened": stats.connections_opened,
            "requests": stats.requests,
            "hash_jobs_pending": self._server.pending_hash_jobs,
            "online_users": self._server.online_count,
            "hash_jobs": stats.hash_jobs,
            "sessions_expired": stats.sessions_expired,
            "sessions_evicted": stats.sessions_evicted,
            "messages_stored": stats.messages_accepted,
            "messages_delivered": stats.deliveries_pushed,
            "messages_deleted": stats.messages_deleted,
            "commits": self.commits,
            "turns": self.turns,
            "commit_waits": self.commit_waits,
            "commit_waits_overslept": self.commit_waits_overslept,
            "failed_commits": self.failed_commits,
            "refusals": dict(sorted(stats.refusals.items())),
            "violations": stats.violations,
            "decode_errors": dict(sorted(stats.decode_errors.items())),
            "internal_errors": stats.internal_errors,
            **cluster,
        }

    def _report(self, server: ChatServer) -> None:
        now = time.monotonic()
        errors = server.stats.internal_errors
        if errors > self._internal_errors_seen and (
            now - self._internal_logged_at >= INTERNAL_ERROR_LOG_INTERVAL
        ):
            failure = server.stats.last_internal_error
            log.error(
                "internal error (%d since the last report): %r",
                errors - self._internal_errors_seen,
                failure,
                exc_info=failure,
            )
            self._internal_errors_seen = errors
            self._internal_logged_at = now
        if now >= self._counters_at:
            self._counters_at = now + COUNTERS_INTERVAL
            log.info("counters: %s", format_counters(self.counters()))

    # --- a store that cannot commit ----------------------------------------------------

    def _store_failed(self, failure: StoreUnavailableError) -> None:
        self.failed_commits += 1
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        self._failures_unlogged += 1
        # At most one line a minute, even when the store flaps between failing
        # and working (small writes may still fit on a nearly full disk).
        if now - self._failure_logged_at >= STORE_FAILURE_LOG_INTERVAL:
            log.error(
                "cannot store anything: %s; write requests are answered 'unavailable' "
                "until it recovers (%d batch(es) lost since the last report)",
                failure,
                self._failures_unlogged,
            )
            self._failure_logged_at = now
            self._failures_unlogged = 0
            self._failure_reported = True

    def _store_recovered(self) -> None:
        if self._failing_since is None:
            return
        if self._failure_reported:
            log.warning(
                "the store works again after %.0f s (%d batch(es) lost in all)",
                time.monotonic() - self._failing_since,
                self.failed_commits,
            )
            self._failure_reported = False
        self._failing_since = None

    # --- password hashing -----------------------------------------------------------------

    def _start(self, job: HashJob) -> None:
        future = self._executor.submit(job.run)

        def done(finished: concurrent.futures.Future[bytes], job_id: int = job.job_id) -> None:
            digest: bytes | None = None
            if finished.cancelled():  # at shutdown: nobody waits for it any more
                return
            try:
                digest = finished.result()
            except Exception:  # a bug in the job: its client gets no answer, we go on
                log.exception("password hash job %d failed", job_id)
            self._done.put((job_id, digest))
            self._wake()

        future.add_done_callback(done)

    def _wake(self) -> None:
        # Full (a wake-up is pending anyway) or closed (shutting down): both fine.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
