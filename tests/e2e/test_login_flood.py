"""A login flood from one address against the real server cannot lock others out.

The attack, as found: 80 connections from one address log in again and again as
one valid account. Before the defences another user's login was refused 30 times
out of 30 in 15 s (the global cap on pending password hashes was full), and the
flood created hundreds of 30-day sessions. Here the flood comes from 127.0.0.3
(in-process clients on their own sockets) while a second user logs in with the
real CLI from 127.0.0.1: every one of those logins succeeds, promptly, and the
flooded account keeps at most ``max_sessions_per_user`` sessions.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from udpchat_proto import ClientConnection
from udpchat_proto import messages as m

from .conftest import PASSWORD, ServerProcess, User

pytestmark = pytest.mark.e2e

FLOOD_ADDRESS = "127.0.0.3"
FLOOD_CONNECTIONS = 80
#: A real hash cost, so that hashing is the bottleneck (tests otherwise use N=16).
SCRYPT_N = "4096"
#: The longest bob's CLI waits for each answer of the server (its --timeout).
ANSWER_WITHIN = 5.0


class Flood(threading.Thread):
    """80 connections from one address, each logging in as ``user`` again and again."""

    def __init__(self, port: int, user: str, deadline: float) -> None:
        super().__init__(daemon=True)
        self.deadline = deadline
        self.user = user
        self.answers: dict[str, int] = {}
        self.sockets: list[socket.socket] = []
        self.connections: list[ClientConnection] = []
        for _ in range(FLOOD_CONNECTIONS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((FLOOD_ADDRESS, 0))
            sock.setblocking(False)
            self.sockets.append(sock)
            self.connections.append(ClientConnection(server_address=("127.0.0.1", port)))
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            now = time.monotonic()
            for conn in self.connections:
                conn.connect(now)
                conn.login(self.user, PASSWORD)
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                now = time.monotonic()
                for conn, sock in zip(self.connections, self.sockets, strict=True):
                    timer = conn.get_timer()
                    if timer is not None and timer <= now:
                        conn.handle_timer(now)
                    while (event := conn.next_event()) is not None:
                        if isinstance(event, m.LoggedIn | m.ErrorResponse):
                            kind = type(event).__name__
                            if isinstance(event, m.ErrorResponse):
                                kind = event.code
                            self.answers[kind] = self.answers.get(kind, 0) + 1
                            if conn.is_connected:
                                conn.login(self.user, PASSWORD)  # and again
                    for data, addr in conn.datagrams_to_send(now):
                        with contextlib.suppress(OSError):  # a full buffer: retransmitted
                            sock.sendto(data, addr)
                readable, _, _ = select.select(self.sockets, [], [], 0.01)
                now = time.monotonic()
                for sock in readable:
                    conn = self.connections[self.sockets.index(sock)]
                    try:
                        data, addr = sock.recvfrom(65535)
                    except OSError:
                        continue
                    conn.receive_datagram(data, (addr[0], addr[1]), now)
        finally:
            for sock in self.sockets:
                sock.close()


@pytest.mark.exclusive  # (its own flood is the load: the rest of the suite is not)
def test_a_login_flood_from_one_address_locks_nobody_else_out(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, options=("--scrypt-n", SCRYPT_N)).start()
    flood: Flood | None = None
    try:
        alice = User("alice", tmp_path / "home-alice", server)
        bob = User("bob", tmp_path / "home-bob", server)
        alice.signup()
        bob.signup()
        flood = Flood(server.port, "alice", deadline=time.monotonic() + 40)
        flood.start()
        under_way = time.monotonic() + 10  # (the server has answered the flood)
        while not flood.answers and flood.is_alive() and time.monotonic() < under_way:
            time.sleep(0.01)
        assert flood.answers, "the flood got no answer"
        durations = []
        for _ in range(8):  # with the sign-up's, within logins_per_user's burst of 10
            started = time.monotonic()
            # --timeout bounds each wait for the server (the handshake, the login).
            login = bob.run(
                "login", "bob", "--password-stdin", stdin=PASSWORD + "\n", timeout=ANSWER_WITHIN
            )
            assert login.code == 0 and login.json["ok"], login
            durations.append(time.monotonic() - started)
        flood.stop.set()
        flood.join(10)
        assert not flood.is_alive()
        # The flood did go on, and was throttled rather than served.
        assert sum(flood.answers.values()) > 10, flood.answers
        assert flood.answers.get("rate_limited", 0) > 0, flood.answers
        # Each of bob's logins is a CLI process (~0.3 s of start-up); none waited
        # behind the flood's queue (before the defences: refused for 15 s). The bound
        # is loose for a loaded machine, the median tight.
        assert max(durations) < ANSWER_WITHIN, durations
        assert sorted(durations)[len(durations) // 2] < 2.0, durations
        print(f"flood answers {flood.answers}; bob's logins took {durations}")
    finally:
        if flood is not None:
            flood.stop.set()
            flood.join(10)
        server.stop()
    with sqlite3.connect(server.db) as db:
        (sessions,) = db.execute(
            "SELECT COUNT(*) FROM sessions WHERE username = 'alice'"
        ).fetchone()
    assert sessions <= 32
