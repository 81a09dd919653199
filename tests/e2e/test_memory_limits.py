"""One address cannot pin the real server's memory.

Against the real ``udpchat-server``: an address that opens 300 connections gets
256 (``max_connections_per_address``), a connection that sends a message larger
than the server's requests (64 KiB) is closed as a protocol violation, and
meanwhile another user on another address uses the server as usual.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from udpchat_proto import CloseCode
from udpchat_proto.transport import ClientTransport, ConnectionTerminated

from .conftest import PASSWORD, ServerProcess, User

pytestmark = pytest.mark.e2e

GREEDY_ADDRESS = "127.0.0.4"


def drive(
    transports: list[ClientTransport],
    sockets: list[socket.socket],
    until: float,
    done: Callable[[dict[int, list[object]]], bool] | None = None,
) -> dict[int, list[object]]:
    """Run every transport on its socket until ``until`` (or, sooner, until ``done``
    says so of the events so far); their events by index."""
    events: dict[int, list[object]] = {i: [] for i in range(len(transports))}
    by_socket = {sock.fileno(): i for i, sock in enumerate(sockets)}
    while time.monotonic() < until and not (done is not None and done(events)):
        now = time.monotonic()
        for i, transport in enumerate(transports):
            timer = transport.get_timer()
            if timer is not None and timer <= now:
                transport.handle_timer(now)
            while (event := transport.next_event()) is not None:
                events[i].append(event)
            for data, addr in transport.datagrams_to_send(now):
                sockets[i].sendto(data, addr)
        readable, _, _ = select.select(sockets, [], [], 0.02)
        now = time.monotonic()
        for sock in readable:
            data, addr = sock.recvfrom(65535)
            transports[by_socket[sock.fileno()]].receive_datagram(data, addr, now)
    return events


@pytest.mark.slow(seconds=25)
def test_one_address_cannot_pin_the_servers_memory(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    sockets: list[socket.socket] = []
    try:
        bob = User("bob", tmp_path / "home-bob", server)
        bob.signup()
        transports = []
        for _ in range(300):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((GREEDY_ADDRESS, 0))
            sock.setblocking(False)
            sockets.append(sock)
            transport = ClientTransport(server_address=("127.0.0.1", server.port))
            transport.connect(time.monotonic())
            transports.append(transport)
            # Spread over the per-address handshake rate (50 a second).
            drive(transports, sockets, time.monotonic() + 0.025)
        drive(transports, sockets, time.monotonic() + 3.0)
        established = [i for i, transport in enumerate(transports) if transport.is_established]
        assert len(established) == 256, len(established)
        # One of them sends a message bigger than any request: it is closed.
        greedy = established[0]
        transports[greedy].send(b"\x01" + b"x" * (80 * 1024))

        def ended(events: dict[int, list[object]]) -> bool:
            return any(isinstance(e, ConnectionTerminated) for e in events[greedy])

        # (Until it is closed, 5 s at most: the 300 connections' loop costs CPU.)
        more = drive(transports, sockets, time.monotonic() + 5.0, done=ended)
        ends = [e for e in more[greedy] if isinstance(e, ConnectionTerminated)]
        assert ends and ends[0].code == CloseCode.PROTOCOL_VIOLATION, more[greedy]
        # Another address is served as usual all along.
        assert bob.ok("friends") == {"friends": []}
        bob.ok("login", "bob", "--password-stdin", stdin=PASSWORD + "\n")
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
