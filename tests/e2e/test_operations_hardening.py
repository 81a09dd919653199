"""The operator's side of the real ``udpchat-server`` under attack (issue 23): the
log, the metrics endpoint, the control socket, backups and the config file."""

from __future__ import annotations

import select
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from udpchat_proto import ClientTransport, ConnectionTerminated, HandshakeCompleted

from .conftest import ServerProcess, server_command

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


# --- the config file (item 14) --------------------------------------------------------------


def assert_one_error_line(done: subprocess.CompletedProcess[str]) -> None:
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr


def test_print_config_of_a_path_with_del_reads_back(tmp_path: Path) -> None:
    db = str(tmp_path / "chat\x7f\x1b[31m.sqlite3")
    printed = server_command("--db", db, "--print-config")
    assert printed.returncode == 0, printed
    assert tomllib.loads(printed.stdout)["db"] == db
    again = tmp_path / "again.toml"
    again.write_text(printed.stdout)
    assert server_command("--config", str(again), "--print-config").stdout == printed.stdout


def test_a_directory_as_config_is_a_bad_config_exit_1(tmp_path: Path) -> None:
    """It was click's usage error (exit 2, three lines); a bad config exits 1."""
    done = server_command("--config", str(tmp_path), "--print-config")
    assert done.returncode == 1, done
    assert_one_error_line(done)
    assert str(tmp_path) in done.stderr and "directory" in done.stderr


def test_deep_nesting_is_one_error_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "deep.toml"
    config.write_text("port = " + "[" * 100_000 + "\n")
    done = server_command("--config", str(config), "--print-config")
    assert done.returncode == 1, done
    assert_one_error_line(done)
    assert str(config) in done.stderr and "nested too deeply" in done.stderr
