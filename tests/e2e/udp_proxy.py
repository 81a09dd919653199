"""A lossy UDP proxy on loopback, to run the real server and CLI over a bad network.

:class:`LossyProxy` listens on ``127.0.0.1`` (a port of its own) in front of a
server on a loopback address. Each datagram, in each direction independently, is
dropped, passed on, or passed on twice, and each copy may be held back for a while
so that later datagrams overtake it. The decisions come from seeded
:class:`random.Random` generators, one per client and direction, seeded with the
proxy's seed and the client's rank of arrival (:class:`Faults` says how likely each
fault is): a failing test names the seed, and the same commands run one after
another meet the same weather again (as far as their own timing repeats).

Each client source address gets its own upstream socket, connected to the server:
the server sees one distinct client per client, and what it answers on that socket
goes back to that client, from the proxy's listening address (the one the client
talks to).

Everything is bounded: the proxy forwards only to a loopback address, holds at most
``max_pending`` datagrams and at most ``max_clients`` upstream sockets (idle ones are
closed after ``idle_timeout``), delays by at most ``Faults.max_delay``, and its
thread stops within one poll interval of :meth:`LossyProxy.stop` (the context
manager calls it).
"""

from __future__ import annotations

import collections
import heapq
import ipaddress
import itertools
import random
import selectors
import socket
import threading
import time
from types import TracebackType

import attrs

__all__ = ["DirectionStats", "Faults", "LossyProxy", "TraceEntry"]

Address = tuple[str, int]

#: The longest the proxy thread waits before it looks at its stop flag again.
_POLL_INTERVAL = 0.02
#: Largest datagram read (the UDP maximum).
_MAX_DATAGRAM = 65_535
#: Datagrams read from one socket in one go, so that no socket starves the others.
_READ_BATCH = 64


def _probability(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attr.name} must be between 0 and 1, got {value!r}")


@attrs.frozen(kw_only=True)
class Faults:
    """How badly one direction of the network behaves.

    Raises:
        ValueError: a probability outside 0..1, or a negative or inverted delay range.
    """

    drop: float = attrs.field(default=0.0, validator=_probability)
    """Probability that a datagram is lost."""
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    """Probability that a datagram not lost is delivered twice."""
    delay: float = attrs.field(default=0.0, validator=_probability)
    """Probability that each copy is held back (so that later datagrams overtake it)."""
    min_delay: float = 0.005
    """Shortest hold, seconds."""
    max_delay: float = 0.15
    """Longest hold, seconds: below the transport's smallest retransmission timeout
    (200 ms), so that a held datagram is reordered rather than merely late."""

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.min_delay <= self.max_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")

    def decide(self, rng: random.Random) -> list[float]:
        """What to do with one datagram: the delay of each copy to send, in seconds.

        Returns:
            ``[]`` to drop it, one delay to pass it on, two to duplicate it; a delay
            of 0 means at once.
        """
        if rng.random() < self.drop:
            return []
        copies = 2 if rng.random() < self.duplicate else 1
        return [
            rng.uniform(self.min_delay, self.max_delay) if rng.random() < self.delay else 0.0
            for _ in range(copies)
        ]


@attrs.define
class DirectionStats:
    """What the proxy did in one direction (client to server, or back)."""

    received: int = 0
    """Datagrams that arrived."""
    dropped: int = 0
    """Datagrams lost on purpose."""
    duplicated: int = 0
    """Datagrams sent twice."""
    delayed: int = 0
    """Copies held back."""
    reordered: int = 0
    """Copies sent after a datagram that arrived later on the same flow: the
    reorderings that really happened."""
    sent: int = 0
    """Copies sent (``received - dropped + duplicated``, less any overflow)."""
    overflow: int = 0
    """Datagrams lost because too many were pending or too many clients were known
    (a bound of the proxy, not a chosen fault; 0 in a sane test)."""


@attrs.frozen
class TraceEntry:
    """One datagram's fate, for a failure message."""

    at: float
    """Seconds since the proxy started."""
    client: Address
    """The client's source address."""
    direction: str
    """``"up"`` (client to server) or ``"down"``."""
    size: int
    """Bytes."""
    delays: tuple[float, ...]
    """The delay of each copy sent: ``()`` for a drop, two for a duplicate."""

    def __str__(self) -> str:
        fate = "dropped" if not self.delays else "+".join(f"{d * 1000:.0f}ms" for d in self.delays)
        return f"{self.at:8.3f} {self.direction:>4} :{self.client[1]} {self.size:5d} B {fate}"


@attrs.define
class _Client:
    """One client source address and its upstream socket."""

    address: Address
    upstream: socket.socket
    last_seen: float
    #: The decisions' generators, per direction.
    rngs: dict[str, random.Random]
    #: Highest arrival number sent so far, per direction (to count reorderings).
    high_water: dict[str, int] = attrs.field(factory=lambda: {"up": -1, "down": -1})


@attrs.frozen(order=True)
class _Pending:
    due: float
    order: int
    client: _Client = attrs.field(eq=False, order=False)
    direction: str = attrs.field(eq=False, order=False)
    arrival: int = attrs.field(eq=False, order=False)
    data: bytes = attrs.field(eq=False, order=False)


class LossyProxy:
    """A UDP proxy on ``127.0.0.1`` that damages traffic to and from ``server``.

    Args:
        server: the server's address; must be a loopback IP address.
        seed: the seed of the decisions.
        upstream: faults on datagrams from the clients to the server.
        downstream: faults on datagrams from the server to the clients.
        max_pending: most datagrams held back at once.
        max_clients: most client addresses served at once.
        idle_timeout: seconds after which a silent client's upstream socket closes.
        trace_length: how many of the last datagrams' fates :attr:`trace` keeps.

    Raises:
        ValueError: ``server`` is not a loopback address.
    """

    def __init__(
        self,
        server: Address,
        *,
        seed: int,
        upstream: Faults,
        downstream: Faults,
        max_pending: int = 10_000,
        max_clients: int = 512,
        idle_timeout: float = 120.0,
        trace_length: int = 2000,
    ) -> None:
        host, port = server
        if not ipaddress.ip_address(host).is_loopback or not 0 < port < 65536:
            raise ValueError(f"the proxy forwards only to a loopback address, not {server!r}")
        self.server: Address = (host, port)
        self.seed = seed
        self.faults = {"up": upstream, "down": downstream}
        self.stats = {"up": DirectionStats(), "down": DirectionStats()}
        self.max_pending = max_pending
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.address: Address = self._listener.getsockname()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._clients: dict[Address, _Client] = {}
        self._pending: list[_Pending] = []
        self._order = itertools.count()
        self._arrivals = itertools.count()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lossy-proxy", daemon=True)
        self._error: BaseException | None = None
        self.clients_seen = 0
        #: The source address of the last client that appeared.
        self.newest_client: Address | None = None
        self._started = time.monotonic()
        self._trace: collections.deque[TraceEntry] = collections.deque(maxlen=trace_length)

    @property
    def address_text(self) -> str:
        """The proxy's address as ``HOST:PORT`` (for ``udpchat-cli --server``)."""
        return f"{self.address[0]}:{self.address[1]}"

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> LossyProxy:
        """Start the background thread."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (bounded wait) and close every socket; idempotent.

        Raises:
            RuntimeError: the thread did not stop in time, or died of an error.
        """
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError("the proxy thread did not stop")
        for client in self._clients.values():
            client.upstream.close()
        self._clients.clear()
        self._listener.close()
        self._selector.close()
        if self._error is not None:
            raise RuntimeError("the proxy thread failed") from self._error

    def __enter__(self) -> LossyProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def snapshot(self) -> dict[str, DirectionStats]:
        """A copy of the counters of both directions (``"up"``, ``"down"``)."""
        with self._lock:
            return {d: attrs.evolve(s) for d, s in self.stats.items()}

    def trace(self, client: Address | None = None) -> list[TraceEntry]:
        """The last datagrams' fates, of one client (by default the newest one)."""
        with self._lock:
            entries = list(self._trace)
            wanted = client or self.newest_client
        return [entry for entry in entries if entry.client == wanted]

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                wait = _POLL_INTERVAL
                if self._pending:
                    wait = min(wait, max(0.0, self._pending[0].due - now))
                for key, _events in self._selector.select(wait):
                    client: _Client | None = key.data
                    self._read(client)
                self._flush(time.monotonic())
                self._expire(time.monotonic())
        except BaseException as error:  # reported by stop()
            self._error = error

    def _read(self, client: _Client | None) -> None:
        """Drain one socket: the listener (``client`` None) or a client's upstream."""
        sock = self._listener if client is None else client.upstream
        for _ in range(_READ_BATCH):
            try:
                data, source = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP port unreachable from a gone peer
                return
            now = time.monotonic()
            if client is None:
                target = self._client_for((str(source[0]), int(source[1])), now)
                if target is None:
                    with self._lock:
                        self.stats["up"].received += 1
                        self.stats["up"].overflow += 1
                    continue
                self._handle(target, "up", data, now)
            else:
                self._handle(client, "down", data, now)

    def _client_for(self, source: Address, now: float) -> _Client | None:
        client = self._clients.get(source)
        if client is None:
            if len(self._clients) >= self.max_clients:
                return None
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            upstream.bind(("127.0.0.1", 0))
            # Connected: only the server's datagrams come back on it.
            upstream.connect(self.server)
            upstream.setblocking(False)
            rank = self.clients_seen
            rngs = {d: random.Random(f"{self.seed}:{rank}:{d}") for d in ("up", "down")}
            client = _Client(source, upstream, now, rngs)
            self._clients[source] = client
            self._selector.register(upstream, selectors.EVENT_READ, client)
            self.clients_seen += 1
            self.newest_client = source
        client.last_seen = now
        return client

    def _handle(self, client: _Client, direction: str, data: bytes, now: float) -> None:
        """Decide the fate of one datagram and send or schedule its copies."""
        arrival = next(self._arrivals)
        delays = self.faults[direction].decide(client.rngs[direction])
        with self._lock:
            stats = self.stats[direction]
            stats.received += 1
            if not delays:
                stats.dropped += 1
            if len(delays) > 1:
                stats.duplicated += 1
            self._trace.append(
                TraceEntry(now - self._started, client.address, direction, len(data), tuple(delays))
            )
        for delay in delays:
            if delay <= 0.0:
                self._send(client, direction, arrival, data)
                continue
            if len(self._pending) >= self.max_pending:
                with self._lock:
                    stats.overflow += 1
                continue
            with self._lock:
                stats.delayed += 1
            item = _Pending(now + delay, next(self._order), client, direction, arrival, data)
            heapq.heappush(self._pending, item)

    def _flush(self, now: float) -> None:
        """Send every held datagram that is due."""
        while self._pending and self._pending[0].due <= now:
            item = heapq.heappop(self._pending)
            self._send(item.client, item.direction, item.arrival, item.data)

    def _send(self, client: _Client, direction: str, arrival: int, data: bytes) -> None:
        if client.upstream.fileno() < 0:  # the client expired meanwhile
            return
        try:
            if direction == "up":
                client.upstream.send(data)
            else:
                self._listener.sendto(data, client.address)
        except OSError:  # a full buffer or a gone peer: as good as lost
            return
        with self._lock:
            stats = self.stats[direction]
            stats.sent += 1
            if arrival < client.high_water[direction]:
                stats.reordered += 1
            else:
                client.high_water[direction] = arrival

    def _expire(self, now: float) -> None:
        """Close the upstream sockets of clients silent for ``idle_timeout``."""
        for address, client in list(self._clients.items()):
            if now - client.last_seen > self.idle_timeout:
                self._selector.unregister(client.upstream)
                client.upstream.close()
                del self._clients[address]
