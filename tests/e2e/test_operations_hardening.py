"""The operator's side of the real ``udpchat-server`` under attack (issue 23): the
log, the metrics endpoint, the control socket, backups and the config file."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path

import pytest

from udpchat_proto import ClientTransport, ConnectionTerminated, HandshakeCompleted

from .conftest import ServerProcess

pytestmark = pytest.mark.e2e


def drive(transport: ClientTransport, sock: socket.socket, until: float, stop: type) -> bool:
    """Run ``transport`` on ``sock`` until an event of type ``stop`` (True) or
    ``until`` (False)."""
    while time.monotonic() < until:
        now = time.monotonic()
        timer = transport.get_timer()
        if timer is not None and timer <= now:
            transport.handle_timer(now)
        for data, addr in transport.datagrams_to_send(now):
            sock.sendto(data, addr)
        while (event := transport.next_event()) is not None:
            if isinstance(event, stop):
                return True
        readable, _, _ = select.select([sock], [], [], 0.02)
        if readable:
            data, addr = sock.recvfrom(65535)
            transport.receive_datagram(data, addr, time.monotonic())
    return False


# --- the log (item 13) ----------------------------------------------------------------------


def test_a_close_reason_cannot_forge_a_log_line(tmp_path: Path) -> None:
    """A peer's CLOSE reason with a newline, a forged line and ANSI escapes shows
    up escaped, on the one line that says the connection ended."""
    server = ServerProcess(tmp_path).start()  # (--log-level debug: a line per event)
    reason = "bye\n[fake] udpchat_server: admin logged in\x1b[2J\x1b[31m"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            transport = ClientTransport(server_address=("127.0.0.1", server.port))
            transport.connect(time.monotonic())
            assert drive(transport, sock, time.monotonic() + 10, HandshakeCompleted)
            transport.close(time.monotonic(), reason=reason)
            drive(transport, sock, time.monotonic() + 2, ConnectionTerminated)
        deadline = time.monotonic() + 10
        while "disconnected" not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.stop()
        server.kill()
    log = server.log_text()
    assert "\x1b" not in log and "[fake]" not in log.replace("\\n[fake]", "")
    (line,) = [line for line in log.splitlines() if "disconnected" in line]
    assert line.endswith(
        "disconnected (normal_close: bye\\n[fake] udpchat_server: admin logged in\\x1b[2J\\x1b[31m)"
    ), line
