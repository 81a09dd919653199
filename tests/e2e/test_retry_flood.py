"""The real server under an initiation flood on loopback: stateless RETRY lets the
real CLI in every time.

A thread sends crafted INITIATION datagrams (a real Noise message 1 under fresh
random connection ids) from a few hundred sockets on 127.0.0.1 to the server, at
about 2,000 a second, bounded in count and time, and never reads what comes back.
The flood fills the half-open table to the RETRY threshold; from then on every
initiation without a token gets a 33-byte RETRY. Meanwhile ten users register and
log in with the real ``udpchat-cli``; every one of those 20 commands must succeed.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport import ClientTransport

from .conftest import PASSWORD, ServerProcess, run_cli

pytestmark = pytest.mark.e2e

#: Datagrams per second, as in the abuse issue.
RATE = 2000
#: Source sockets (ports) the flood cycles through.
SOCKETS = 300
#: The flood stops after this long whatever happens (and after the CLI is done).
MAX_FLOOD_SECONDS = 90.0
#: The flood runs alone this long first, so that the half-open table is full (the
#: per-IP handshake bucket lets 5 + 50/s through, and the threshold is 128).
WARM_UP = 4.0


def initiation_template() -> bytes:
    client = ClientTransport(server_address=("127.0.0.1", 1), random=SeededRandomSource("flood"))
    client.connect(0.0)
    ((data, _),) = client.datagrams_to_send(0.0)
    return data


class Flood:
    """Crafted initiations from many loopback ports, in a thread, bounded."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.stop = threading.Event()
        self._template = initiation_template()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=10.0)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        rng = random.Random(1)
        sockets = []
        try:
            for _ in range(SOCKETS):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.1", 0))
                sock.setblocking(False)
                sockets.append(sock)
            start = time.monotonic()
            batch = RATE // 100  # every 10 ms
            while not self.stop.is_set() and time.monotonic() - start < MAX_FLOOD_SECONDS:
                for _ in range(batch):
                    data = self._template[:2] + rng.randbytes(8) + self._template[10:]
                    # A full socket buffer or an ICMP error only thins the flood.
                    with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                        sockets[self.sent % SOCKETS].sendto(data, ("127.0.0.1", self.port))
                    self.sent += 1
                due = start + self.sent / RATE
                self.stop.wait(max(0.0, due - time.monotonic()))
        finally:
            for sock in sockets:
                sock.close()


@pytest.mark.slow(seconds=20)
def test_a_genuine_client_gets_in_10_times_in_10_under_a_flood(
    server: ServerProcess, tmp_path: Path
) -> None:
    with Flood(server.port) as flood:
        time.sleep(WARM_UP)
        started = time.monotonic()
        for i in range(10):
            home = tmp_path / f"home-{i}"
            for command in ("register", "login"):
                result = run_cli(
                    command,
                    f"user{i}",
                    "--password-stdin",
                    "--json",
                    home=home,
                    server=server.address,
                    stdin=PASSWORD + "\n",
                    timeout=10.0,
                )
                assert result.code == 0, f"{command} user{i}: {result}"
                assert result.json == {"ok": True, "user": f"user{i}"}
        elapsed = time.monotonic() - started
        sent = flood.sent
    # The flood really ran at about its rate for the whole time.
    assert sent >= RATE * (WARM_UP + elapsed) * 0.5, (sent, elapsed)
    assert server.alive()
