"""Drive a ChatServer and ClientConnections over the simulated network.

:class:`ChatWorld` puts a :class:`ServerHost` (the ChatServer plus what the real
server loop does around it) and any number of :class:`ChatUser`\\ s on a
:class:`tests.simnet.Network` with a fake clock. The host does what the runtime
does: feed the datagrams, then ``ChatServer.end_batch`` (hash results in, timers,
one commit, datagrams out). Hash jobs run synchronously with tiny scrypt
parameters, or after a simulated delay (``hash_delay``) to model a busy worker
pool.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs

from tests.simnet import Link, Network
from udpchat_proto import messages as m
from udpchat_proto.chat.client import ClientConnection
from udpchat_proto.chat.events import Connected, Disconnected
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.passwords import ScryptParams
from udpchat_proto.chat.server import ChatServer, HashJob, ServerConfig
from udpchat_proto.chat.store import Store, StoreUnavailableError
from udpchat_proto.errors import ErrorCode
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.ratelimit import RateLimit
from udpchat_proto.transport.keys import ServerKey
from udpchat_server.stores.sqlite import SQLiteStore

SERVER_ADDRESS = ("127.0.0.1", 4433)
FAST_SCRYPT = ScryptParams(n=16, r=1, p=1)
GENEROUS = RateLimit(burst=10_000, interval=0.001)
PASSWORD = "correct horse"

T = TypeVar("T")


def test_config(**changes: Any) -> ServerConfig:
    """Tiny scrypt and rate limits out of the way, unless a test sets them."""
    fields: dict[str, Any] = {
        "scrypt": FAST_SCRYPT,
        "registrations_per_address": GENEROUS,
        "message_rate": GENEROUS,
        "request_rate": GENEROUS,
    }
    fields.update(changes)
    return ServerConfig(**fields)


# Not a test, despite its name.
test_config.__test__ = False  # type: ignore[attr-defined]


# --- stores --------------------------------------------------------------------------------


@attrs.define
class StoreFactory:
    """Opens the store a world runs on; ``reopen`` models a server process restart."""

    kind: str
    path: Path
    _memory: MemoryStore | None = None

    def open(self) -> Store:
        if self.kind == "memory":
            # The state machine is rebuilt, the memory store lives on (as if durable).
            if self._memory is None:
                self._memory = MemoryStore()
            return self._memory
        return SQLiteStore.open(self.path)


class RecordingStore:
    """Forwards to a store and records commits and which messages each made durable."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.commits = 0
        self.uncommitted: list[bytes] = []
        self.committed_ids: set[bytes] = set()
        self.fail_commits: StoreUnavailableError | None = None
        """When set, every commit discards the batch and raises it."""

    def commit(self) -> None:
        if self.fail_commits is not None:
            # As when COMMIT itself finds the disk full: the batch is discarded.
            self.inner.rollback()  # type: ignore[attr-defined]
            self.uncommitted.clear()
            raise self.fail_commits
        self.inner.commit()
        self.commits += 1
        self.committed_ids.update(self.uncommitted)
        self.uncommitted.clear()

    def add_message(self, message: m.ChatMessage, origin: bytes | None = None) -> Any:
        stored = self.inner.add_message(message, origin)
        self.uncommitted.append(message.id)
        return stored

    def add_messages(self, messages: Sequence[tuple[m.ChatMessage, bytes | None]]) -> Any:
        stored = self.inner.add_messages(messages)
        self.uncommitted.extend(found.message.id for found in stored if found is not None)
        return stored

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# --- the server and its loop -----------------------------------------------------------------


class ServerHost:
    """A ChatServer run as the real loop runs it (``end_batch`` once per turn, hash
    jobs on simulated workers), as a simnet node."""

    def __init__(self, server: ChatServer, store: RecordingStore) -> None:
        self.server = server
        self.store = store
        self.hash_delay = 0.0
        """Simulated seconds a hash job takes (0: done in the same turn)."""
        self.hold_commits = False
        """When True the loop never ends its batch: nothing after a write may leave."""
        self.workers: int | None = None
        """Hash jobs run at once, as the real loop's worker threads (None: no limit)."""
        self._jobs: list[tuple[float, int, HashJob]] = []
        self._order = itertools.count()
        self._done: list[tuple[int, bytes | None]] = []
        """Jobs the workers finished, handed back at the end of the batch."""
        self.paced = False
        """When True the host waits as the real loop does before committing a small
        batch while commits are frequent (``ChatServer.commit_wait``), reading what
        arrives meanwhile into the batch; off by default, so that other tests' fake
        timings stay as they were."""
        self.commit_waits = 0
        self.batches = 0
        """Batches ended that had read a datagram (a real loop's turns, but those
        woken by a timer alone)."""
        self._datagrams = 0
        """Datagrams fed to the open batch."""
        self._commit_at: float | None = None
        """The end of the open batch's wait, while it waits."""
        self._wait_over = False

    def _idle_workers(self) -> int | None:
        return None if self.workers is None else self.workers - len(self._jobs)

    def _collect(self, now: float) -> None:
        """The workers finish the jobs due by ``now``."""
        while self._jobs and self._jobs[0][0] <= now:
            _, _, job = heapq.heappop(self._jobs)
            self._done.append((job.job_id, job.run()))

    def _start(self, jobs: Sequence[HashJob], now: float) -> None:
        for job in jobs:
            heapq.heappush(self._jobs, (now + self.hash_delay, next(self._order), job))

    def _end_batch(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        if self.paced and not self.hold_commits:
            if self._commit_at is not None:
                return []  # still waiting: what arrives joins the batch
            if not self._wait_over and (wait := self.server.commit_wait(now, self._datagrams)):
                self._commit_at = now + wait
                self.commit_waits += 1
                return []
            self._wait_over = False
        if self._datagrams:
            self.batches += 1
        self._datagrams = 0
        self._collect(now)
        done, self._done = self._done, []
        if self.hold_commits:  # a loop stuck before its commit: the batch stays open
            for job_id, digest in done:
                assert digest is not None
                self.server.complete_hash_job(job_id, digest, now)
            self._start(self.server.take_hash_jobs(self._idle_workers()), now)
            return self.server.datagrams_to_send(now)
        end = self.server.end_batch(
            now,
            hash_results=done,
            hash_slots=self._idle_workers(),
            # No delay: a hash is done within the turn, as a pipelined login's next one.
            run_hashes=self.hash_delay == 0.0 and self.workers is None,
        )
        self._start(end.hash_jobs, now)
        return list(end.datagrams)

    def running_jobs(self) -> list[HashJob]:
        """The hash jobs the simulated workers are running."""
        return [job for _, _, job in self._jobs]

    def forget_jobs(self) -> None:
        """The workers drop what they run (as after a job that raised)."""
        self._jobs.clear()

    def receive_datagram(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        self._datagrams += 1
        self.server.receive_datagram(data, addr, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        return self._end_batch(now)

    def get_timer(self) -> float | None:
        timers = [t for t in (self.server.get_timer(),) if t is not None]
        if self._jobs:
            timers.append(self._jobs[0][0])
        if self._commit_at is not None:
            timers.append(self._commit_at)
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        if self._commit_at is not None and self._commit_at <= now:
            self._commit_at = None  # the wait is over: the batch ends at this flush
            self._wait_over = True
        self.server.handle_timer(now)
        self._collect(now)  # done now: handed back at this turn's end, as in the real loop

    def next_event(self) -> Any:
        return self.server.next_event()


# --- users ---------------------------------------------------------------------------------------

_ports = itertools.count(20000)


class ChatUser:
    """One person: a name, a password, and their successive connections."""

    def __init__(self, world: ChatWorld, name: str, password: str = PASSWORD, device: str = ""):
        self.world = world
        self.name = name
        self.label = f"{name}@{device}" if device else name
        """Names this device's nodes (one user may run several devices)."""
        self.password = password
        self.host = f"127.1.{len(world.users) // 200}.{len(world.users) % 200 + 2}"
        self.connection: ClientConnection | None = None
        self.node: str | None = None
        self.nodes: list[str] = []
        self.token: bytes | None = None
        self.delivered_ids: frozenset[bytes] = frozenset()

    # --- connections ---

    @property
    def conn(self) -> ClientConnection:
        assert self.connection is not None, f"{self.name} is not connected"
        return self.connection

    def connect(self, *, wait: bool = True) -> ClientConnection:
        """A new connection (a new process: new port, same delivered ids)."""
        generation = len(self.nodes)
        connection = ClientConnection(
            server_address=SERVER_ADDRESS,
            expected_server_key=self.world.key.public_bytes,
            random=SeededRandomSource(f"{self.world.seed}-{self.label}-{generation}"),
            delivered_ids=self.delivered_ids,
        )
        node = f"{self.label}#{generation}"
        self.world.net.add(node, connection, (self.host, next(_ports)))
        self.connection, self.node = connection, node
        self.nodes.append(node)
        connection.connect(self.world.net.now)
        if wait:
            self.world.net.run_until(lambda: connection.is_connected, what=f"{node} connects")
        return connection

    def login(self) -> m.LoggedIn:
        logged_in = self.ok(self.conn.login(self.name, self.password), m.LoggedIn)
        self.token = logged_in.token
        return logged_in

    def resume(self) -> m.LoggedIn:
        assert self.token is not None
        return self.ok(self.conn.resume(self.token), m.LoggedIn)

    def close(self) -> None:
        """Close the connection politely and let the server learn it."""
        connection, node = self.conn, self.node
        assert node is not None
        self._save()
        connection.close(self.world.net.now)
        self.world.net.run_for(1.0)
        self.world.net.vanish(node)
        self.connection = self.node = None

    def crash(self) -> None:
        """The process dies: no close, the server finds out by idle timeout."""
        assert self.node is not None
        self._save()
        self.world.net.vanish(self.node)
        self.connection = self.node = None

    def _save(self) -> None:
        # What a CLI persists between runs.
        self.delivered_ids = self.conn.delivered_ids
        if self.conn.token is not None:
            self.token = self.conn.token

    # --- events ---

    def events(self) -> list[Any]:
        """Every event of the current connection."""
        assert self.node is not None
        return self.world.net.events[self.node]

    def all_events(self) -> Iterator[Any]:
        for node in self.nodes:
            yield from self.world.net.events[node]

    def received(self) -> list[m.ChatMessage]:
        """Every message delivered to this user, over all connections, in order."""
        return [e.message for e in self.all_events() if isinstance(e, m.MessageDelivered)]

    def texts(self) -> list[str]:
        return [message.text for message in self.received()]

    def pushes(self, kind: type[T] | None = None) -> list[Any]:
        """Pushes other than deliveries on the current connection."""
        wanted: tuple[type, ...] = (kind,) if kind is not None else _OTHER_PUSHES
        return [e for e in self.events() if isinstance(e, wanted)]

    def response(self, request_id: int) -> m.Response | None:
        for event in self.events():
            if getattr(event, "request_id", None) == request_id and not isinstance(
                event, (Connected, Disconnected)
            ):
                return cast(m.Response, event)
        return None

    def wait(self, request_id: int, *, max_time: float = 30.0) -> m.Response:
        self.world.net.run_until(
            lambda: self.response(request_id) is not None,
            max_time=max_time,
            what=f"{self.name}: answer to request {request_id}",
        )
        response = self.response(request_id)
        assert response is not None
        return response

    def ok(self, request_id: int, kind: type[T] = m.Ok) -> T:  # type: ignore[assignment]
        """Wait for the answer and check its type."""
        response = self.wait(request_id)
        assert isinstance(response, kind), f"{self.name}: expected {kind.__name__}, got {response}"
        return response

    def refused(self, request_id: int, code: ErrorCode) -> m.ErrorResponse:
        response = self.wait(request_id)
        assert isinstance(response, m.ErrorResponse), (
            f"{self.name}: expected {code}, got {response}"
        )
        assert response.code is code, f"{self.name}: expected {code}, got {response}"
        return response

    def send(self, to: str, text: str) -> m.MessageAccepted:
        return self.ok(self.conn.send_message(to, text), m.MessageAccepted)


_OTHER_PUSHES: tuple[type, ...] = (
    m.PresenceChanged,
    m.InvitationReceived,
    m.InvitationAnswered,
    m.InvitationCancelled,
    m.Unfriended,
    m.RoomMembershipChanged,
)


# --- the world -----------------------------------------------------------------------------------


class ChatWorld:
    """A server and its users on one simulated network."""

    def __init__(
        self,
        stores: StoreFactory,
        *,
        seed: int = 0,
        config: ServerConfig | None = None,
        link: Link | None = None,
        stage_messages: bool | None = None,
    ) -> None:
        self.seed = seed
        self.stores = stores
        self.stage_messages = stage_messages
        self.config = config if config is not None else test_config()
        self.net = Network(seed, default_link=link)
        self.key = ServerKey.generate(SeededRandomSource(f"server-key-{seed}"))
        self.users: dict[str, ChatUser] = {}
        self.generation = 0
        self.wall_offset = 0.0
        """How far the server's wall clock is from the network's monotonic clock
        (``step_wall_clock`` moves it, as NTP would)."""
        self.host = self._start_server()

    def _start_server(self) -> ServerHost:
        store = RecordingStore(self.stores.open())
        server = ChatServer(
            store=cast(Store, store),
            static_key=self.key,
            clock=self.wall_clock,
            config=self.config,
            # A new seed per generation: a restarted server must not reissue tokens.
            random=SeededRandomSource(f"server-{self.seed}-{self.generation}"),
            stage_messages=self.stage_messages,
        )
        host = ServerHost(server, store)
        self.net.add(f"server#{self.generation}", host, SERVER_ADDRESS)
        return host

    def wall_clock(self) -> float:
        """The server's wall clock: the simulated time, plus any step."""
        return self.net.now + self.wall_offset

    def step_wall_clock(self, seconds: float) -> None:
        """Step the wall clock (an NTP correction); the monotonic clock goes on."""
        self.wall_offset += seconds

    @property
    def server(self) -> ChatServer:
        return self.host.server

    @property
    def store(self) -> RecordingStore:
        return self.host.store

    def server_events(self) -> list[Any]:
        return self.net.events[f"server#{self.generation}"]

    def restart_server(self) -> None:
        """Discard the state machine (uncommitted writes die with it) and start anew
        on the same store file."""
        self.net.vanish(f"server#{self.generation}")
        if self.stores.kind == "sqlite":
            self.store.inner.close()
        self.generation += 1
        self.host = self._start_server()

    def user(self, name: str, password: str = PASSWORD, *, device: str = "") -> ChatUser:
        """A person (or another device of one: same name, another ``device``)."""
        user = ChatUser(self, name, password, device)
        assert user.label not in self.users
        self.users[user.label] = user
        return user

    def signed_up(self, *names: str) -> list[ChatUser]:
        """Users registered, connected and logged in."""
        users = []
        for name in names:
            user = self.user(name)
            user.connect()
            user.ok(user.conn.register(name, user.password))
            user.login()
            users.append(user)
        return users

    def befriend(self, a: ChatUser, b: ChatUser) -> None:
        a.ok(a.conn.invite(b.name))
        b.ok(b.conn.accept_invitation(a.name))
        # Let the answer push reach the inviter.
        self.net.run_for(0.5)

    def settle(self, seconds: float = 2.0) -> None:
        self.net.run_for(seconds)

    def run_until(
        self, predicate: Callable[[], bool], *, max_time: float = 60.0, what: str = ""
    ) -> None:
        self.net.run_until(predicate, max_time=max_time, what=what)

    def check_server_health(self) -> None:
        stats = self.server.stats
        if stats.internal_errors:
            raise AssertionError("internal errors in the server") from stats.last_internal_error


def texts_of(messages: Sequence[m.ChatMessage]) -> list[str]:
    return [message.text for message in messages]
