"""The operator's side of the real ``udpchat-server`` under attack (issue 23): the
log, the metrics endpoint, the control socket, backups and the config file."""

from __future__ import annotations

import json
import os
import re
import resource
import select
import socket
import sqlite3
import stat
import subprocess
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.planted import IS_ROOT, NOBODY, planted_listener, shared_directory
from udpchat_proto.transport import ClientTransport, ConnectionTerminated, HandshakeCompleted

from .conftest import SERVER, ServerProcess, clean_env, server_command

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


# --- backups (item 9) -----------------------------------------------------------------------


def ctl(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return server_command("ctl", "--db", str(server.db), "--json", *args)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path).start()
    try:
        yield process
    finally:
        process.stop()
        process.kill()


def test_a_backup_never_follows_a_link_at_its_destination(
    running: ServerProcess, tmp_path: Path
) -> None:
    """The ctl client resolved DEST, so a dangling link planted there made the
    server write the copy (every password hash) wherever the link pointed."""
    target = tmp_path / "elsewhere" / "stolen.sqlite3"
    target.parent.mkdir()
    link = tmp_path / "backup.sqlite3"
    link.symlink_to(target)
    done = ctl(running, "backup", str(link))
    assert done.returncode == 1, done
    answer = json.loads(done.stdout)
    assert answer["error"] == "exists" and "symbolic link" in answer["message"], answer
    assert_one_error_line(done)
    assert not target.exists() and not Path(f"{target}.key").exists()
    assert not Path(f"{link}.key").exists()  # (nothing half-made left behind)
    # Relative, from another directory: the same (the client no longer resolves it).
    relative = subprocess.run(
        [*SERVER, "ctl", "--db", str(running.db), "backup", "backup.sqlite3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert relative.returncode == 1 and "symbolic link" in relative.stderr, relative
    assert not target.exists()


def test_a_backup_never_follows_a_link_at_its_key_copy(
    running: ServerProcess, tmp_path: Path
) -> None:
    dest = tmp_path / "copy.sqlite3"
    victim = tmp_path / "victim"
    victim.write_text("the operator's file\n")
    Path(f"{dest}.key").symlink_to(victim)
    done = ctl(running, "backup", str(dest))
    assert done.returncode == 1 and json.loads(done.stdout)["error"] == "exists", done
    assert victim.read_text() == "the operator's file\n"
    assert not dest.exists()  # the reserved destination was removed again
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".copy")] == []


def test_a_backup_to_an_existing_file_is_refused_and_a_new_one_is_whole(
    running: ServerProcess, tmp_path: Path
) -> None:
    existing = tmp_path / "existing.sqlite3"
    existing.write_text("keep me\n")
    done = ctl(running, "backup", str(existing))
    assert done.returncode == 1 and json.loads(done.stdout)["error"] == "exists", done
    assert json.loads(done.stdout)["message"] == f"{existing} exists already: choose a new name"
    assert existing.read_text() == "keep me\n"
    dest = tmp_path / "new.sqlite3"
    answer = json.loads(ctl(running, "backup", str(dest)).stdout)
    assert answer["ok"] and answer["size"] == dest.stat().st_size > 0
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{dest}.key").stat().st_mode) == 0o600
    with sqlite3.connect(dest) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# --- the control socket's owner (item 8) ----------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="planting a socket as another user needs root")
def test_a_planted_control_socket_gets_no_password_and_does_not_stop_the_server(
    tmp_path: Path,
) -> None:
    """Another local user listens at <db>.ctl in a shared directory first: ctl
    sent them reset-password's new password (and took their 'ok' for done), and
    the server, seeing a socket that answers, refused to start."""
    with shared_directory() as shared:
        db = shared / "db.sqlite3"
        with planted_listener(Path(f"{db}.ctl")) as received:
            done = server_command(
                "ctl", "--db", str(db), "--json", "reset-password", "alice", "--password-stdin",
                stdin="the operator's new password\n",
            )  # fmt: skip
            assert done.returncode == 4, done
            answer = json.loads(done.stdout)
            assert answer["ok"] is False and answer["error"] == "untrusted", answer
            assert_one_error_line(done)
            assert f"belongs to uid {NOBODY}" in done.stderr
            assert received() == b"", "the planted socket received the request"
            server = ServerProcess(tmp_path, db=db).start()  # it starts
            try:
                assert "no control socket" in server.log_text()
                assert Path(f"{db}.ctl").lstat().st_uid == NOBODY  # left alone
                assert server.alive()
            finally:
                server.stop()
                server.kill()
            assert received() == b""


# --- files planted in a shared directory (issue 23 re-test, N7) -------------------------------


def start_refused(db: Path) -> subprocess.CompletedProcess[str]:
    """Start the server on ``db``: it must stop at once, with one line."""
    done = server_command("--host", "127.0.0.1", "--port", "0", "--db", str(db), timeout=15)
    assert done.returncode == 1, done
    assert_one_error_line(done)
    assert "listening" not in done.stdout
    return done


@pytest.mark.skipif(not IS_ROOT, reason="planting a file as another user needs root")
def test_a_key_file_planted_by_another_user_stops_the_start() -> None:
    """`nobody` wrote 32 bytes, mode 0600, at DIR/db.sqlite3.key in a 1777
    directory: the server used it as its static key, silently."""
    with shared_directory() as shared:
        db = shared / "db.sqlite3"
        key = Path(f"{db}.key")
        key.write_bytes(os.urandom(32))
        os.chmod(key, 0o600)
        os.chown(key, NOBODY, NOBODY)
        done = start_refused(db)
        assert f"key file {key} belongs to uid {NOBODY}" in done.stderr, done.stderr


def test_a_link_at_the_database_path_stops_the_start(tmp_path: Path) -> None:
    """A dangling link planted at the database path made the server create the
    database at its target, mode 0644."""
    target = tmp_path / "elsewhere" / "stolen.sqlite3"
    target.parent.mkdir()
    db = tmp_path / "db.sqlite3"
    db.symlink_to(target)
    done = start_refused(db)
    assert f"database {db} is a symbolic link to {target}" in done.stderr, done.stderr
    assert not target.exists() and not Path(f"{db}.key").exists()


# --- descriptors (item 4) ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """The process's user and system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_at_the_descriptor_limit_the_server_neither_spins_nor_floods_its_log(
    tmp_path: Path,
) -> None:
    """Idle connections to --metrics and the control socket use up the process's
    descriptors: prometheus_client's server spun a core on accept(), and the
    control socket logged a traceback per pass (13.5 MB in 5 s). Now both wait
    and say so once, the idle connections are cut off, and everything answers
    again once they are gone."""
    server = ServerProcess(tmp_path, options=("--metrics", "127.0.0.1:0")).start()
    clients: list[socket.socket] = []
    try:
        assert server.proc is not None
        pid = server.proc.pid
        match = re.search(r"metrics on http://([\d.]+):(\d+)/metrics", server.log_text())
        assert match, server.log_text()
        metrics = (match.group(1), int(match.group(2)))
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        _soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 6, hard))
        for _ in range(40):
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setblocking(False)
            tcp.connect_ex(metrics)
            clients.append(tcp)
        for _ in range(12):
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            unix.setblocking(False)
            unix.connect_ex(str(Path(f"{server.db}.ctl")))
            clients.append(unix)
        time.sleep(0.5)
        log_before, cpu_before = len(server.log_text()), cpu_seconds(pid)
        time.sleep(3.0)
        cpu = cpu_seconds(pid) - cpu_before
        grown = server.log_text()[log_before:]
        assert server.alive()
        assert cpu < 0.5, f"{cpu:.2f} s of CPU in 3 s: it spins"  # (it was 1 to 3 s)
        # (It was 1.7 MB of tracebacks in these 3 s.)
        assert len(grown) < 20_000 and "Traceback" not in grown, grown[:2000]
        assert "cannot accept connections: Too many open files" in server.log_text()
    finally:
        for client in clients:
            client.close()
    try:
        deadline = time.monotonic() + 20
        while True:  # the idle connections are gone: both answer again
            try:
                with urllib.request.urlopen(f"http://{metrics[0]}:{metrics[1]}/metrics", timeout=5):
                    pass
                if ctl(server, "status").returncode == 0:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            time.sleep(0.2)
        log = server.log_text()
        assert log.count("cannot accept connections") <= 4, log[-3000:]
    finally:
        server.stop()
        server.kill()
