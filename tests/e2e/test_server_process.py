"""The ``udpchat-server`` process: start, stop, crash, restart, floods."""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from udpchat_server.stores.sqlite import SQLiteStore

from .conftest import PASSWORD, SERVER, ServerProcess, User, clean_env, wait_until_loading

pytestmark = pytest.mark.e2e


def refused_start(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``udpchat-server ARGS`` that must refuse to start: exit 1, nothing on
    stdout (the caller checks its one ``error:`` line)."""
    done = subprocess.run(
        [*SERVER, *args], capture_output=True, text=True, timeout=30, env=clean_env(), check=False
    )
    assert done.returncode == 1
    assert done.stdout == ""
    return done


def test_port_zero_key_file_and_sigterm(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    assert server.port != 0
    key_file = tmp_path / "db.sqlite3.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert server.signal(signal.SIGTERM) == 0
    # The same key is reused at the next start.
    again = ServerProcess(tmp_path).start()
    assert again.fingerprint == server.fingerprint
    assert again.signal(signal.SIGINT) == 0
    assert "Traceback" not in again.log_text()


def test_a_second_server_on_a_port_in_use_exits_1_with_one_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    done = refused_start("--port", str(server.port), "--db", str(tmp_path / "other.sqlite3"))
    assert done.stderr.startswith("error: cannot listen on 127.0.0.1:")
    assert done.stderr.count("\n") == 1, done.stderr
    assert server.alive()


def test_a_database_with_a_column_it_does_not_declare_exits_1_naming_it(
    tmp_path: Path,
) -> None:
    # As a newer release's would be (it derived the column): the database is left
    # as it was, for the release that wrote it or a backup's restore.
    path = tmp_path / "newer.sqlite3"
    SQLiteStore.open(path).close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("ALTER TABLE accounts ADD COLUMN motto TEXT")
        version = db.execute("PRAGMA user_version").fetchone()
    done = refused_start("--port", "0", "--db", str(path))
    assert done.stderr.startswith(f"error: cannot open database {path}: database schema: ")
    assert "accounts.motto is in the database but not declared" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == version


def test_it_starts_beside_another_applications_table_but_not_one_referencing_its_own(
    tmp_path: Path,
) -> None:
    # A file shared with another application: its table is left as it was.
    shared = tmp_path / "shared.sqlite3"
    with contextlib.closing(sqlite3.connect(shared, isolation_level=None)) as db:
        db.execute("CREATE TABLE crm_contacts (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO crm_contacts VALUES (1, 'Ann')")
    server = ServerProcess(tmp_path, db=shared).start()
    try:
        User("alice", tmp_path / "alice", server).signup()
        assert server.signal(signal.SIGTERM) == 0
    finally:
        server.kill()
    with contextlib.closing(sqlite3.connect(shared)) as db:
        assert db.execute("SELECT * FROM crm_contacts").fetchall() == [(1, "Ann")]
    # A table whose foreign key could stop udpchat's deletes is refused, named.
    with contextlib.closing(sqlite3.connect(shared, isolation_level=None)) as db:
        db.execute("CREATE TABLE reactions (account TEXT REFERENCES accounts (username))")
    done = refused_start("--port", "0", "--db", str(shared))
    assert "reactions.account references accounts" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_malformed_datagrams_never_stop_it(server: ServerProcess, tmp_path: Path) -> None:
    alice = User("alice", tmp_path / "alice", server)
    alice.signup()
    rng = random.Random(5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for n in range(2000):
            size = rng.choice([0, 1, 2, 17, 40, 64, 100, 1200, rng.randrange(1500)])
            data = rng.randbytes(size)
            if n % 4 == 0 and data:  # look like each packet type to get past a first check
                data = bytes([n % 8]) + data[1:]
            sock.sendto(data, ("127.0.0.1", server.port))
    assert alice.ok("whoami")["user"] == "alice"
    assert server.alive()
    assert server.signal(signal.SIGTERM) == 0
    assert "Traceback" not in server.log_text()


def test_sigkill_and_restart_lose_no_acknowledged_message(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    alice = User("alice", tmp_path / "alice", server)
    bob = User("bob", tmp_path / "bob", server)
    try:
        alice.signup()
        bob.signup()
        alice.ok("invite", "bob")
        bob.ok("accept", "alice")
        alice.ok("send", "bob", "before 1")
        assert [m["text"] for m in bob.ok("inbox")["messages"]] == ["before 1"]
        acknowledged = [alice.ok("send", "bob", f"kept {n}")["id"] for n in range(5)]
    finally:
        server.kill()  # SIGKILL: no last commit, no close
    restarted = ServerProcess(tmp_path, port=server.port).start()
    try:
        assert restarted.fingerprint == server.fingerprint
        alice.server = bob.server = restarted
        inbox = bob.ok("inbox")["messages"]
        assert [m["id"] for m in inbox] == acknowledged
        assert [m["text"] for m in inbox] == [f"kept {n}" for n in range(5)]
        assert bob.ok("inbox") == {"messages": []}
        # The login sessions survived too, and the conversation goes on.
        alice.ok("send", "bob", "after")
        assert [m["text"] for m in bob.ok("inbox")["messages"]] == ["after"]
    finally:
        restarted.stop()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_starting_is_a_clean_stop(tmp_path: Path, signum: int) -> None:
    # The interpreter is up, the modules are still loading (or the database is
    # opening): either way a stop with 0, never a traceback nor a death by signal.
    proc = subprocess.Popen(
        [*SERVER, "--port", "0", "--db", str(tmp_path / "db.sqlite3")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
    )
    try:
        wait_until_loading(proc)
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# The server, started with a finder that sends the process a signal from inside
# orjson's initialisation (a Rust extension: its exec imports json): the moment where
# a Python handler that raised made orjson dereference NULL (SIGSEGV). The modules
# that import orjson may have loaded json already (the codec does, before it): the
# finder takes json out of sys.modules as orjson is found, so that the init's import
# of json comes to it, whatever the order of the imports before.
_SIGNAL_INSIDE_ORJSON_INIT = """
import os, sys

class SignalInsideOrjsonInit:
    armed = False

    def find_spec(self, name, path=None, target=None):
        if name == "orjson.orjson":
            SignalInsideOrjsonInit.armed = True
            sys.modules.pop("json", None)
        elif SignalInsideOrjsonInit.armed:
            SignalInsideOrjsonInit.armed = False
            inside = not hasattr(sys.modules.get("orjson.orjson"), "loads")
            print(f"signalled inside orjson's init: {inside}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), int(os.environ["SIGNAL_TO_SEND"]))
        return None

sys.meta_path.insert(0, SignalInsideOrjsonInit())
from udpchat_server.cli import main
main()
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_an_extensions_init_is_a_clean_stop(tmp_path: Path, signum: int) -> None:
    # Deterministic, where the test above hits that moment about once in twelve runs.
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-c",
            _SIGNAL_INSIDE_ORJSON_INIT,
            *("--port", "0", "--db", str(tmp_path / "db.sqlite3")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(SIGNAL_TO_SEND=str(int(signum))),
        check=False,
    )
    assert "signalled inside orjson's init: True" in done.stderr  # the test's own premise
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""  # stopped before it was ready


def test_limits_are_options_and_a_lowered_hash_cost_is_warned(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path, options=("--logins-per-user", "2/600")).start()
    try:
        alice = User("alice", tmp_path / "home", process)
        alice.signup()  # one login
        assert alice.ok("login", "alice", "--password-stdin", stdin=PASSWORD + "\n")["ok"]
        alice.refused("rate_limited", "login", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    finally:
        process.stop()
    # The tests lower the scrypt cost (UDPCHAT_SCRYPT_N): the server says so, loudly.
    assert "WARNING: the scrypt cost is lowered to N=16" in process.log_text()
