"""Attacks on the operator features (config file, control socket, ctl, backup), as
an attacker helper wrote them: each failed against the first version (7380dcf)."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    CLI_DEADLINE,
    SERVER,
    START_DEADLINE,
    ServerProcess,
    clean_env,
    server_command,
)

pytestmark = pytest.mark.e2e


def ctl(server: ServerProcess, *args: str, stdin: str = "", timeout: float = CLI_DEADLINE) -> Any:
    return server_command(
        "ctl", "--db", str(server.db), "--json", *args, stdin=stdin, timeout=timeout
    )


def control_path(server: ServerProcess) -> Path:
    return Path(f"{server.db}.ctl")


def raw_request(path: Path, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on the control socket; what came back (bounded)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except TimeoutError:
            pass
        return data


@pytest.fixture
def running(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path).start()
    try:
        yield process
    finally:
        process.stop()
        process.kill()


def assert_one_error_line(done: subprocess.CompletedProcess[str]) -> None:
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr


# --- the control socket ---------------------------------------------------------------------


def test_a_malformed_backup_request_does_not_kill_the_server(running: ServerProcess) -> None:
    """A destination with a NUL byte raises ValueError in sqlite3.connect, which
    nobody catches: the loop dies and the server exits 1."""
    request = json.dumps({"command": "backup", "args": {"dest": str(running.directory / "a\0b")}})
    answer = raw_request(control_path(running), request.encode() + b"\n", timeout=10.0)
    time.sleep(0.5)
    assert running.alive(), f"the server died: {running.log_text()[-500:]}"
    assert answer, "no answer at all"
    assert json.loads(answer)["ok"] is False
    assert ctl(running, "status").returncode == 0


def test_a_client_that_drips_bytes_cannot_hold_the_control_socket(
    running: ServerProcess,
) -> None:
    """READ_TIMEOUT is per recv(), not per request: a client that sends a byte every
    second holds the (single) control thread for as long as it likes, and every
    other ctl waits (up to its own 65 s timeout)."""
    stop = threading.Event()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(control_path(running)))

    def drip() -> None:
        with sock:
            while not stop.wait(1.0):
                try:
                    sock.sendall(b" ")
                except OSError:
                    return

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        try:
            done = ctl(running, "status", timeout=15.0)
        except subprocess.TimeoutExpired:
            pytest.fail("ctl status got no answer in 15 s while another client dripped bytes")
        assert done.returncode == 0, done
        assert time.monotonic() - started < 10.0
    finally:
        stop.set()
        dripper.join(timeout=5)


def test_a_second_server_does_not_steal_the_socket_of_a_busy_one(
    running: ServerProcess, tmp_path: Path
) -> None:
    """The liveness check is a ping with a 2 s timeout; the first server's control
    thread is busy for up to 5 s with a client that has not sent its line yet (or
    a backup, a slow commit). The ping times out, the second server unlinks the
    live socket and binds its own; when it stops, it removes the socket, and the
    first server can no longer be reached by ctl at all."""
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(str(control_path(running)))  # connects, never sends
    second = subprocess.Popen(
        [*SERVER, "--host", "127.0.0.1", "--port", "0", "--db", str(running.db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
    )
    try:
        assert second.stdout is not None
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline and second.poll() is None:
            ready, _, _ = select.select([second.stdout], [], [], 0.1)
            if ready:
                second.stdout.readline()
                break
        time.sleep(0.5)
    finally:
        idle.close()
        if second.poll() is None:
            second.terminate()
        try:
            second.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            second.kill()
            second.communicate(timeout=10)
    assert running.alive()
    done = ctl(running, "status", timeout=15.0)
    assert done.returncode == 0, f"the first server's control socket is gone: {done}"


def test_a_second_server_on_the_same_database_refuses_to_start(
    running: ServerProcess,
) -> None:
    """OPERATIONS.md: 'a second server on the same socket refuses to start' (it did,
    with the default socket, only log a warning and serve the same database)."""
    second = ServerProcess(running.directory, db=running.db)
    try:
        with pytest.raises(AssertionError, match="another server listens on"):
            second.start()
        assert second.proc is not None and second.proc.wait(10) == 1
    finally:
        second.stop()
        second.kill()


def test_ctl_against_something_that_is_not_a_server_exits_3_with_one_json_object(
    tmp_path: Path,
) -> None:
    """A socket that answers something else than JSON (an HTTP daemon, say): ctl
    shows 'error: JSONDecodeError: ...', exits 1 and prints no JSON object."""
    path = tmp_path / "other.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(CLI_DEADLINE)

    def answer() -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        with client:
            client.settimeout(5)
            client.recv(4096)
            client.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        done = server_command("ctl", "--control", str(path), "--json", "status")
    finally:
        thread.join(timeout=5)
        listener.close()
    assert done.returncode == 3, done
    assert json.loads(done.stdout)["ok"] is False
    assert_one_error_line(done)


# --- ctl ------------------------------------------------------------------------------------


def test_reset_password_without_a_password_does_not_say_done(running: ServerProcess) -> None:
    """No --password-stdin and nothing on stdin: click's prompt aborts, main() turns
    click.Abort into exit 0 (the contract's 'done') with nothing printed, not even
    with --json."""
    done = ctl(running, "reset-password", "alice", stdin="")
    assert done.returncode != 0, done
    assert json.loads(done.stdout)["ok"] is False, done


# --- backups --------------------------------------------------------------------------------


def test_a_backup_is_as_private_as_the_database(tmp_path: Path) -> None:
    """The database and the key are 0600; the backup (every password hash, every
    message) is created by sqlite3.connect under the umask: 0644 with the usual
    022. (The key copy is 0644 too until its chmod.)"""
    old = os.umask(0o022)
    try:
        server = ServerProcess(tmp_path).start()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(server.db.stat().st_mode) == 0o600
        dest = tmp_path / "backup.sqlite3"
        done = ctl(server, "backup", str(dest))
        assert done.returncode == 0, done
        mode = stat.S_IMODE(dest.stat().st_mode)
        assert mode & 0o077 == 0, f"the backup is mode {mode:o}"
    finally:
        server.stop()
        server.kill()


def test_a_backup_leaves_an_unrelated_partial_file_alone(running: ServerProcess) -> None:
    """DEST must not exist, but DEST.partial is used (and deleted on failure) without a
    look: an operator's file of that name is overwritten, or deleted."""
    dest = running.directory / "notes"
    partial = running.directory / "notes.partial"
    partial.write_text("the operator's own notes\n")
    ctl(running, "backup", str(dest))
    assert partial.exists(), "the operator's file notes.partial was deleted"
    assert partial.read_text() == "the operator's own notes\n"


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("port = true\n", "port"),  # read as port 1
        ("port = 9999.7\n", "port"),  # read as 9999
        ("max_room_members = true\n", "max_room_members"),  # read as 1
        ("workers = 2.9\n", "workers"),  # read as 2
        ("public_presence = 1\n", "public_presence"),  # error: AttributeError: ... 'strip'
        ('control = ""\n', "control"),  # exit 2, click's three-line usage error
    ],
)
def test_a_config_value_of_the_wrong_type_is_one_error_line_naming_it(
    tmp_path: Path, text: str, named: str
) -> None:
    config = tmp_path / "server.toml"
    config.write_text(text)
    done = server_command("--config", str(config), "--print-config")
    assert done.returncode == 1, done
    assert_one_error_line(done)
    assert named in done.stderr and "server.toml" in done.stderr, done.stderr


def test_a_key_given_twice_as_dash_and_underscore_is_refused(tmp_path: Path) -> None:
    """TOML sees two keys; the file silently means the last one."""
    config = tmp_path / "server.toml"
    config.write_text("max-room-members = 5\nmax_room_members = 6\n")
    done = server_command("--config", str(config), "--print-config")
    assert done.returncode == 1, done
    assert_one_error_line(done)
    assert "max" in done.stderr


def test_print_config_reads_back_a_rate_exactly(tmp_path: Path) -> None:
    """The interval is printed with :g (six digits): 10/1234567 comes out as
    10/1.23457e+06, which reads back as another configuration."""
    config = tmp_path / "server.toml"
    config.write_text('message_rate = "10/1234567"\n')
    printed = server_command("--config", str(config), "--print-config")
    assert printed.returncode == 0, printed
    again = tmp_path / "again.toml"
    again.write_text(printed.stdout)

    assert tomllib.loads(printed.stdout)["message_rate"] in ("10/1234567", "10/1234567.0")
    assert server_command("--config", str(again), "--print-config").stdout == printed.stdout
