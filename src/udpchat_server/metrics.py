"""``--metrics HOST:PORT``: the server's counters in Prometheus' text format, at
``/metrics``.

The loop hands a snapshot of its counters (:meth:`ServerMetrics.update`, about
once a second and after every commit's timing) to this object; the HTTP server
(on threads of its own) reads the latest snapshot when scraped, so a scrape never
touches the loop's state. The names are listed in ``docs/OPERATIONS.md``.

The HTTP server is bounded (:class:`MetricsHTTPServer`), unlike
prometheus_client's ``start_http_server``, whose thread per connection waits for
ever for a request: a client has :data:`REQUEST_TIMEOUT` seconds in all to send
its request and take the answer, at most :data:`MAX_CONNECTIONS` connections are
served at once (:data:`MAX_CONNECTIONS_PER_ADDRESS` from one address). When all
are taken, a new connection ends the oldest one that has not sent its whole
request yet (an idle holder: a scrape sends its request at once), and is closed
at once only if there is none (or its address holds its share already). So a
few idle connections (slowloris) cost a few threads and descriptors for a few
seconds, never the process's limit, and, reopened as fast as they are closed
from a few addresses, never the scraper's turn.
"""

from __future__ import annotations

import collections
import contextlib
import http.server
import io
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

import attrs
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.registry import Collector

import udpchat_proto
from udpchat_proto.build import is_compiled

from .accepting import AcceptBackoff

__all__ = [
    "COMMIT_BUCKETS",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "REQUEST_TIMEOUT",
    "MetricsHTTPServer",
    "ServerMetrics",
]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT: Final = 5.0
"""Seconds a connection has, in all, to send its request and take the answer (a
scrape on a private network takes milliseconds; Prometheus' own timeout is 10 s
by default, for the whole scrape)."""
MAX_CONNECTIONS: Final = 16
"""Connections served at once (a thread and a descriptor each); one more ends the
oldest that has not sent its request yet, or is closed at once. A scraper or two
need one each."""
MAX_CONNECTIONS_PER_ADDRESS: Final = 4
"""Of those, from one address: a stranger with access to the port cannot take
every slot from the scraper."""

COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""Seconds: a commit on a local SSD takes about a millisecond, on PostgreSQL a few."""

#: Counters taken as they are from the loop's counters: (name, key, help).
_COUNTERS: Final = (
    ("udpchat_datagrams_received", "datagrams_in", "UDP datagrams read."),
    ("udpchat_datagrams_sent", "datagrams_out", "UDP datagrams written."),
    ("udpchat_handshakes", "connections_opened", "Handshakes completed (connections opened)."),
    ("udpchat_requests", "requests", "Requests answered, refusals included."),
    ("udpchat_messages_stored", "messages_stored", "New messages stored."),
    ("udpchat_messages_delivered", "messages_delivered", "Messages pushed to a device."),
    ("udpchat_commits", "commits", "Batches committed."),
    ("udpchat_commits_failed", "failed_commits", "Batches lost (their answers: unavailable)."),
    ("udpchat_loop_turns", "turns", "Turns of the server loop (a wake-up, a batch)."),
    (
        "udpchat_commit_waits",
        "commit_waits",
        "Small batches that waited up to 1 ms for more work before their commit.",
    ),
    (
        "udpchat_commit_waits_overslept",
        "commit_waits_overslept",
        "Commit waits that took much longer than asked (pacing then stops a second).",
    ),
    (
        "udpchat_store_round_trips",
        "store_round_trips",
        "Round trips to the database server (PostgreSQL; a pipeline is one).",
    ),
    (
        "udpchat_stores_retried",
        "stores_retried",
        "Batches of messages stored again after a deadlock with another node.",
    ),
    ("udpchat_hash_jobs", "hash_jobs", "Password hashes run (register, login ...)."),
    ("udpchat_sessions_expired", "sessions_expired", "Login sessions expired."),
    ("udpchat_internal_errors", "internal_errors", "Requests that failed unexpectedly."),
    ("udpchat_violations", "violations", "Payloads dropped as protocol violations."),
)
#: Counters by label: (name, key, label, help).
_LABELLED: Final = (
    ("udpchat_datagrams_dropped", "dropped", "reason", "Datagrams dropped, by reason."),
    ("udpchat_refusals", "refusals", "code", "Requests refused, by error code."),
    ("udpchat_bus_dropped", "bus_dropped", "reason", "Cluster bus messages dropped, by reason."),
)
#: Gauges: (name, key, help).
_GAUGES: Final = (
    ("udpchat_connections", "connections", "Connections open now."),
    ("udpchat_sessions_logged_in", "sessions_logged_in", "Login sessions in use now."),
    ("udpchat_online_users", "online_users", "Users online now."),
    ("udpchat_hash_jobs_pending", "hash_jobs_pending", "Password hashes waiting or running."),
)


class ServerMetrics:
    """What ``/metrics`` shows: the latest snapshot of the loop's counters, and the
    commit latency histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.commit_seconds = Histogram(
            "udpchat_commit_seconds",
            "Time to commit one batch (the fsync included).",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self._counters: dict[str, Any] = {}
        self._started = time.monotonic()
        self._compiled = is_compiled()  # (found once: it cannot change while running)
        self._http: MetricsHTTPServer | None = None
        self.registry.register(_Snapshot(self))

    def update(self, counters: dict[str, Any]) -> None:
        """The loop's counters now (a new dict each time: the scrape thread reads
        the one it finds, whole)."""
        self._counters = counters

    def serve(self, host: str, port: int) -> MetricsHTTPServer:
        """Start the HTTP server on ``host:port`` (port 0: a free one), on a thread
        of its own; returns it (its ``server_address`` says where, :meth:`close`
        stops it).

        Raises:
            OSError: the address cannot be bound.
        """
        server = MetricsHTTPServer((host, port), self.registry)
        thread = threading.Thread(target=server.serve_forever, name="udpchat-metrics", daemon=True)
        thread.start()
        self._http = server
        return server

    def close(self) -> None:
        """Stop the HTTP server, if it runs (bounded: its threads are daemons)."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def collect(self) -> Iterator[Metric]:
        counters = self._counters
        for name, key, text in _COUNTERS:
            yield CounterMetricFamily(name, text, value=counters.get(key, 0))
        for name, key, label, text in _LABELLED:
            family = CounterMetricFamily(name, text, labels=[label])
            for value, count in sorted(counters.get(key, {}).items()):
                family.add_metric([value], count)
            yield family
        for name, key, text in _GAUGES:
            yield GaugeMetricFamily(name, text, value=counters.get(key, 0))
        yield GaugeMetricFamily(
            "udpchat_uptime_seconds", "Seconds since the server started.",
            value=time.monotonic() - self._started,
        )  # fmt: skip
        info = GaugeMetricFamily("udpchat_info", "The server's version.", labels=["version"])
        info.add_metric([udpchat_proto.__version__], 1)
        yield info
        build = GaugeMetricFamily(
            "udpchat_build_info",
            '1, labelled compiled="true" when the hot path is the mypyc-compiled build.',
            labels=["compiled"],
        )
        build.add_metric(["true" if self._compiled else "false"], 1)
        yield build


class _Snapshot(Collector):
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()


class MetricsHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """``GET /metrics`` (or ``/``) of ``registry`` over HTTP/1.0, bounded (see the
    module's docstring): a thread per connection, at most ``max_connections`` of
    them (``max_per_address`` per address), each with ``timeout`` seconds in all.

    Raises:
        OSError: the address cannot be bound.
    """

    daemon_threads = True
    block_on_close = False  # (a stuck client must not hold up a stop)
    request_queue_size = 128  # (socketserver's 5 would make a burst wait for SYN retries)

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        host, port = address
        family, _type, _proto, _name, sockaddr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family
        self.registry = registry
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.request_timeout = timeout
        self.refused = 0
        """Connections closed at once, over a cap."""
        self.evicted = 0
        """Connections ended to make room: they had not sent their request."""
        self._lock = threading.Lock()
        self._open: collections.Counter[str] = collections.Counter()
        self._slots: dict[socket.socket, _Slot] = {}
        """The connections being served, the oldest first."""
        self._stopping = threading.Event()
        self._backoff = AcceptBackoff("metrics endpoint", wait=self._stopping.wait)
        super().__init__((str(sockaddr[0]), int(sockaddr[1])), _MetricsHandler)

    @property
    def open_connections(self) -> int:
        """Connections being served now (each on its thread)."""
        with self._lock:
            return self._open.total()

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            accepted = super().get_request()
        except OSError as exc:  # (EMFILE: wait, say so once; the caller drops it)
            if not self._stopping.is_set():
                self._backoff.failed(exc)
            raise
        self._backoff.succeeded()
        return accepted

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        with self._lock:
            full = self._open[host] >= self.max_per_address
            if not full and self._open.total() >= self.max_connections:
                idle = next((slot for slot in self._slots.values() if not slot.asked), None)
                full = idle is None
                if idle is not None:
                    self._end(idle)
            if not full:
                self._open[host] += 1
                self._slots[request] = _Slot(request, host)
        if full:  # closed at once: no thread, no descriptor kept
            self.refused += 1
            super().shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # (no thread could start: the slot is free again)
            self.shutdown_request(request)
            raise

    def request_read(self, request: socket.socket) -> None:
        """The connection ``request`` sent its whole request: it is answered now,
        and no newcomer may end it."""
        with self._lock:
            slot = self._slots.get(request)
            if slot is not None:
                slot.asked = True

    def shutdown_request(self, request: Any) -> None:
        # (The slot is freed before the socket is closed, under the lock that
        # _end holds: it never shuts down a descriptor already reused.)
        with self._lock:
            slot = self._slots.pop(request, None)
            if slot is not None:
                self._release(slot.host)
        super().shutdown_request(request)

    def _end(self, slot: _Slot) -> None:
        """Free ``slot`` for a newcomer: its reads see the end at once, and its
        thread finishes (with the lock held)."""
        del self._slots[slot.sock]
        self._release(slot.host)
        self.evicted += 1
        with contextlib.suppress(OSError):
            slot.sock.shutdown(socket.SHUT_RDWR)

    def _release(self, host: str) -> None:
        # (with the lock held)
        self._open[host] -= 1
        if self._open[host] <= 0:
            del self._open[host]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away or sent garbage: its loss, and no traceback
        # on stderr (socketserver's default) for anyone to provoke.
        log.debug("metrics request from %s failed", client_address, exc_info=True)

    def shutdown(self) -> None:
        self._stopping.set()
        super().shutdown()


@attrs.define(eq=False)
class _Slot:
    """A connection being served."""

    sock: socket.socket
    host: str
    asked: bool = False
    """Whether its whole request (line and headers) arrived."""


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    """One connection: one request (HTTP/1.0), within the server's deadline."""

    server: MetricsHTTPServer

    def setup(self) -> None:
        super().setup()
        deadline = time.monotonic() + self.server.request_timeout
        self._deadline = deadline
        # Every read gets what is left of the deadline, not a fresh timeout: a
        # client sending a byte a second is cut off like a silent one.
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # (the headers are read now, or never will be)
        self.server.request_read(self.connection)
        return parsed

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is here")
            return
        try:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        except Exception:  # (a malformed Accept header: the plain text format)
            encoder, content_type = generate_latest, CONTENT_TYPE_PLAIN_0_0_4
        output = encoder(self.server.registry)
        self.connection.settimeout(max(0.1, self._deadline - time.monotonic()))
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(output)))
        self.end_headers()
        if body:
            self.wfile.write(output)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s " + format, self.address_string(), *args)


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each given what is left until ``deadline`` (monotonic)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)
