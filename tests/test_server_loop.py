"""The server's blocking loop, in-process on a real loopback socket.

The loop's promise is the design's group commit: no datagram leaves while the
store holds uncommitted writes. A store proxy tracks "dirty" and the socket checks
it at every send; the client side is the CLI's own :class:`Session`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from udpchat_cli.session import Session
from udpchat_proto import messages as m
from udpchat_proto.chat import ClusterNews
from udpchat_proto.chat.client import ClientConnection
from udpchat_proto.chat.config import ServerConfig
from udpchat_proto.chat.memory_store import MemoryStore
from udpchat_proto.chat.passwords import ScryptParams
from udpchat_proto.chat.server import ChatServer
from udpchat_proto.chat.store import Store, WriteTrackingStore
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport.keys import ServerKey
from udpchat_server.loop import HASH_THREAD_NICENESS, ServerLoop, describe

PASSWORD = "correct horse battery"


class TrackingStore(WriteTrackingStore):
    """A MemoryStore that knows whether it holds uncommitted writes (the store's
    declared reads and writes tell which calls write) and counts its commits."""

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.commits = 0

    def commit(self) -> None:
        super().commit()
        self.commits += 1


class CheckingSocket(socket.socket):
    """A UDP socket that fails the test if it sends while the store is dirty."""

    store: TrackingStore
    violations = 0
    sends = 0

    def sendto(self, data: Any, *args: Any) -> int:
        self.sends += 1
        if self.store.dirty:
            self.violations += 1
        return super().sendto(data, *args)


@contextlib.contextmanager
def serving(store: Store, sock: socket.socket) -> Iterator[tuple[ServerLoop, str]]:
    """Run a ServerLoop on ``sock`` (bound to loopback) in a thread; stop it after."""
    server = ChatServer(
        store=store,
        static_key=ServerKey.generate(SeededRandomSource(1)),
        clock=time.time,
        config=ServerConfig(scrypt=ScryptParams(n=16)),
    )
    loop = ServerLoop(server=server, store=store, sock=sock)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield loop, f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        loop.stop()
        thread.join(10)
        sock.close()
    assert not thread.is_alive()


def loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def running() -> Iterator[tuple[ServerLoop, TrackingStore, CheckingSocket, str]]:
    store = TrackingStore()
    sock = CheckingSocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.store = store
    sock.bind(("127.0.0.1", 0))
    # Its Store methods are derived, not declared.
    with serving(cast(Store, store), sock) as (loop, address):
        yield loop, store, sock, address


def test_group_commit_and_hash_jobs_over_loopback(
    running: tuple[ServerLoop, TrackingStore, CheckingSocket, str],
) -> None:
    _loop, store, sock, address = running
    received: list[m.Push] = []
    with Session(server=address, pinned=None, timeout=5) as alice:
        alice.open()
        assert isinstance(alice.request(lambda c: c.register("alice", PASSWORD)), m.Ok)
        assert isinstance(alice.request(lambda c: c.login("alice", PASSWORD)), m.LoggedIn)
        with Session(
            server=address, pinned=alice.server_key, timeout=5, on_pushes=received.extend
        ) as bob:
            bob.open()
            assert isinstance(bob.request(lambda c: c.register("bob", PASSWORD)), m.Ok)
            assert isinstance(bob.request(lambda c: c.login("bob", PASSWORD)), m.LoggedIn)
            assert isinstance(alice.request(lambda c: c.invite("bob")), m.Ok)
            assert isinstance(bob.request(lambda c: c.accept_invitation("alice")), m.Ok)
            for n in range(20):
                accepted = alice.request(
                    functools.partial(ClientConnection.send_message, to="bob", text=f"m{n}")
                )
                assert isinstance(accepted, m.MessageAccepted)
            bob.run_until(
                lambda: sum(isinstance(p, m.MessageDelivered) for p in received) == 20,
                deadline=time.monotonic() + 5,
            )
    texts = [p.message.text for p in received if isinstance(p, m.MessageDelivered)]
    assert texts == [f"m{n}" for n in range(20)]
    assert sock.sends > 0 and store.commits > 0
    assert sock.violations == 0


def test_garbage_costs_nothing_but_the_datagram(
    running: tuple[ServerLoop, TrackingStore, CheckingSocket, str],
) -> None:
    loop, _store, _sock, address = running
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
        for n in range(500):
            junk.sendto(bytes([n % 256]) * (n % 1300), (host, int(port)))
    with Session(server=address, pinned=None, timeout=5) as session:
        session.open()
        answer = session.request(lambda c: c.list_online())
        assert isinstance(answer, m.ErrorResponse) and answer.code == "not_logged_in"
    # The kernel may drop some of the flood (a full receive buffer); what was read
    # was fed to the core and dropped there.
    assert loop.datagrams_received > 0


def test_describe_server_events() -> None:
    from udpchat_proto.chat.events import ClientConnected, UserLoggedIn

    connected = ClientConnected(connection_id=bytes.fromhex("4cb81ee9bb1b18c3"), address=("h", 1))
    assert describe(connected) == "connection 4cb81ee9 connected from h:1"
    logged = UserLoggedIn(connection_id=b"\x00" * 8, username="alice", resumed=True)
    assert describe(logged) == "connection 00000000 alice resumed their session"


def test_counters_are_logged_at_exit_and_connections_only_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="udpchat_server.loop")
    with (
        serving(MemoryStore(), loopback_socket()) as (_, address),
        Session(server=address, pinned=None, timeout=5) as s,
    ):
        s.open()
        assert isinstance(s.request(lambda c: c.register("alice", PASSWORD)), m.Ok)
    connection_lines = [r for r in caplog.records if "connected from" in r.getMessage()]
    assert connection_lines and all(r.levelno == logging.DEBUG for r in connection_lines)
    (at_exit,) = [r for r in caplog.records if r.getMessage().startswith("counters at exit:")]
    assert at_exit.levelno == logging.INFO
    text = at_exit.getMessage()
    assert "datagrams_in=" in text and "connections_opened=1" in text and "hash_jobs=1" in text


class BrokenHistory(MemoryStore):
    def history(
        self, username: str, peer: str, limit: int, before: bytes | None = None
    ) -> list[m.ChatMessage]:
        raise OSError("disk on fire")


def test_internal_errors_are_logged_with_their_traceback_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="udpchat_server.loop")
    with (
        serving(BrokenHistory(), loopback_socket()) as (_, address),
        Session(server=address, pinned=None, timeout=5) as s,
    ):
        s.open()
        s.request(lambda c: c.register("alice", PASSWORD))
        s.request(lambda c: c.login("alice", PASSWORD))
        for _ in range(3):
            answer = s.request(lambda c: c.get_history("alice"))
            assert isinstance(answer, m.ErrorResponse) and answer.code == "internal"
    errors = [r for r in caplog.records if r.getMessage().startswith("internal error")]
    # Three failures, one line (within the rate limit), with the exception attached.
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert errors[0].exc_info is not None and "disk on fire" in str(errors[0].exc_info[1])


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are Linux's")
def test_password_hashes_run_at_the_lowest_priority_and_the_loop_does_not(
    running: tuple[ServerLoop, TrackingStore, CheckingSocket, str],
) -> None:
    # A burst of logins must not take the loop's core: the hash threads yield.
    _loop, _store, _sock, address = running
    with Session(server=address, pinned=None, timeout=5) as alice:
        alice.open()
        assert isinstance(alice.request(lambda c: c.register("alice", PASSWORD)), m.Ok)
    hashers = [t for t in threading.enumerate() if t.name.startswith("udpchat-hash")]
    assert hashers
    for thread in hashers:
        assert thread.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == HASH_THREAD_NICENESS
        assert os.sched_getscheduler(thread.native_id) == os.SCHED_IDLE
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == 0
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER


class RecordingBus:
    """What a ServerLoop uses of a ``NatsBus``, in memory: it records each
    publish in ``log``, with the turn of the loop that made it."""

    def __init__(self, log: list[tuple[int, str]]) -> None:
        self.log = log
        self.loop: ServerLoop | None = None
        self.wake: Any = None
        self.connected = True
        self.dropped: dict[str, int] = {}
        self.names_ignored = 0

    def take(self) -> tuple[list[Any], bool]:
        return [], False

    def publish(self, news: ClusterNews) -> None:
        assert self.loop is not None
        self.log.append((self.loop.turns, f"publish {','.join(news.users)}"))

    def heartbeat(self, online: list[str]) -> None:
        pass


class OrderSocket(socket.socket):
    """A UDP socket that records each send in ``log``, with the loop's turn."""

    log: list[tuple[int, str]]
    loop: ServerLoop | None = None

    def sendto(self, data: Any, *args: Any) -> int:
        assert self.loop is not None
        self.log.append((self.loop.turns, "send"))
        return super().sendto(data, *args)


def test_a_node_sends_its_batch_before_it_publishes_the_news() -> None:
    # The news only hints (the other nodes read what it names, committed already):
    # the batch's answers must not wait for it, nor for the bus's thread it wakes.
    log: list[tuple[int, str]] = []
    bus = RecordingBus(log)
    sock = OrderSocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.log = log
    sock.bind(("127.0.0.1", 0))
    store = MemoryStore()
    server = ChatServer(
        store=store,
        static_key=ServerKey.generate(SeededRandomSource(1)),
        clock=time.time,
        config=ServerConfig(scrypt=ScryptParams(n=16), cluster=True),
    )
    loop = ServerLoop(server=server, store=store, sock=sock, bus=cast(Any, bus))
    bus.loop = sock.loop = loop
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    try:
        with (
            Session(server=address, pinned=None, timeout=5) as alice,
            Session(server=address, pinned=None, timeout=5) as bob,
        ):
            for session, name in ((alice, "alice"), (bob, "bob")):
                session.open()
                registered = session.request(
                    functools.partial(ClientConnection.register, username=name, password=PASSWORD)
                )
                assert isinstance(registered, m.Ok)
                logged_in = session.request(
                    functools.partial(ClientConnection.login, username=name, password=PASSWORD)
                )
                assert isinstance(logged_in, m.LoggedIn)
            assert isinstance(alice.request(lambda c: c.invite("bob")), m.Ok)
            assert isinstance(bob.request(lambda c: c.accept_invitation("alice")), m.Ok)
            accepted = alice.request(
                functools.partial(ClientConnection.send_message, to="bob", text="hi")
            )
            assert isinstance(accepted, m.MessageAccepted)
    finally:
        loop.stop()
        thread.join(10)
        sock.close()
    assert not thread.is_alive()
    published = [(turn, what) for turn, what in log if what == "publish bob,alice"]
    assert published, log  # the message's news
    for turn, what in published:
        at = log.index((turn, what))
        # Its batch's answers (the message_accepted among them) went out before it.
        assert (turn, "send") in log[:at]
        assert (turn, "send") not in log[at:]
