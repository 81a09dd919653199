"""End-to-end fixtures: the real ``udpchat-server`` process and the real ``udpchat-cli``.

Every server listens on 127.0.0.1 port 0 with a temporary database; every wait is
bounded (the ``listening on`` line, each CLI process, each shutdown). Password
hashing uses a tiny scrypt cost (the server's test-only ``UDPCHAT_SCRYPT_N``) so
that the suite stays fast; everything else is the production configuration.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

BIN = Path(sys.executable).parent
#: The longest any single CLI process may take before the test fails.
CLI_DEADLINE = 30.0
#: The longest a server may take to print its ``listening on`` line.
START_DEADLINE = 15.0
PASSWORD = "correct horse battery staple"

_LISTENING = re.compile(r"listening on (\S+):(\d+) key (SHA256:\S+)")


def _program(name: str, module: str) -> list[str]:
    """The console script from the venv, or ``python -m`` when it is not installed."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


SERVER = _program("udpchat-server", "udpchat_server.cli")
CLI = _program("udpchat-cli", "udpchat_cli.cli")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any UDPCHAT_ variable of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDPCHAT_")}
    env["UDPCHAT_SCRYPT_N"] = "16"
    env.update(extra)
    return env


class ServerProcess:
    """One ``udpchat-server`` process on 127.0.0.1."""

    def __init__(
        self,
        directory: Path,
        *,
        db: Path | None = None,
        key_file: Path | None = None,
        port: int = 0,
        options: tuple[str, ...] = (),
        database_url: str | None = None,
    ) -> None:
        self.directory = directory
        self.db = db or directory / "db.sqlite3"
        self.database_url = database_url
        """A PostgreSQL database to use instead of the SQLite file ``db``."""
        self.key_file = key_file
        self.port = port
        self.options = options
        self.log = directory / f"server-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.fingerprint = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        database = self.database_url or str(self.db)
        args = [*SERVER, "--host", "127.0.0.1", "--port", str(self.port), "--db", database]
        if self.key_file is not None:
            args += ["--key-file", str(self.key_file)]
        return [*args, "--log-level", "debug", *self.options]

    def start(self) -> ServerProcess:
        """Start it and wait (bounded) for its ``listening on`` line."""
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
                env=clean_env(),
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                match = _LISTENING.fullmatch(line.strip())
                assert match, f"unexpected first line {line!r}; log:\n{self.log_text()}"
                self.port = int(match.group(2))
                self.fingerprint = match.group(3)
                return self
            if self.proc.poll() is not None:
                break
        self.kill()
        raise AssertionError(f"the server did not start; log:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, signum: int, timeout: float = 10.0) -> int:
        """Send ``signum`` and wait (bounded) for the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.wait(timeout)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL: no chance to commit or close anything. Waits (bounded) for the
        exit: a process in the middle of an fsync dies only once it returns."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            try:
                self.signal(signal.SIGTERM)
            except subprocess.TimeoutExpired:
                self.kill()


def server_command(
    *args: str, stdin: str = "", timeout: float = CLI_DEADLINE
) -> subprocess.CompletedProcess[str]:
    """Run ``udpchat-server ARGS`` to completion (``ctl``, ``--print-config`` ...)."""
    return subprocess.run(
        [*SERVER, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        check=False,
    )


@attrs.frozen
class Result:
    """What one ``udpchat-cli`` process did."""

    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        """The single JSON object printed on stdout."""
        lines = self.out.splitlines()
        assert len(lines) == 1, f"expected one JSON line, got {self.out!r} (stderr {self.err!r})"
        return json.loads(lines[0])

    @property
    def lines(self) -> list[Any]:
        """One JSON object per line (``listen``)."""
        return [json.loads(line) for line in self.out.splitlines()]


def run_cli(
    *args: str,
    home: Path,
    server: str | None = None,
    stdin: str | None = None,
    timeout: float = 5.0,
    deadline: float = CLI_DEADLINE,
) -> Result:
    """Run ``udpchat-cli --home HOME [--server S] --timeout T ARGS...`` to completion."""
    command = [*CLI, "--home", str(home), "--timeout", str(timeout)]
    if server is not None:
        command += ["--server", server]
    done = subprocess.run(
        [*command, *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=deadline,
        env=clean_env(),
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@attrs.define
class User:
    """A person with their own CLI home, talking to one server."""

    name: str
    home: Path
    server: ServerProcess

    def run(self, *args: str, stdin: str | None = None, timeout: float = 5.0) -> Result:
        """Run a command with ``--json``; the exit status is the caller's to check."""
        return run_cli(
            *args,
            "--json",
            home=self.home,
            server=self.server.address,
            stdin=stdin,
            timeout=timeout,
        )

    def ok(self, *args: str, stdin: str | None = None) -> Any:
        """Run a command that must succeed; return its JSON object."""
        result = self.run(*args, stdin=stdin)
        assert result.code == 0, f"{self.name} {args}: {result}"
        assert result.err == "", result
        return result.json

    def refused(self, code: str, *args: str, stdin: str | None = None) -> None:
        """Run a command that must be refused with ``code`` (exit 1, one error line)."""
        result = self.run(*args, stdin=stdin)
        assert result.code == 1, f"{self.name} {args}: {result}"
        assert result.json["ok"] is False
        assert result.json["error"] == code, f"{self.name} {args}: {result}"
        assert result.err.startswith("error: ") and result.err.count("\n") == 1, result

    def signup(self) -> None:
        """Register and log in (password from stdin)."""
        assert self.ok("register", self.name, "--password-stdin", stdin=PASSWORD + "\n") == {
            "ok": True,
            "user": self.name,
        }
        assert self.ok("login", self.name, "--password-stdin", stdin=PASSWORD + "\n") == {
            "ok": True,
            "user": self.name,
        }

    def listen(self, *args: str) -> subprocess.Popen[str]:
        """Start ``listen --json ARGS`` in the background."""
        command = [*CLI, "--home", str(self.home), "--server", self.server.address, "--json"]
        return subprocess.Popen(
            [*command, "listen", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=clean_env(),
        )


def befriend(a: User, b: User) -> None:
    """``a`` invites ``b``, who accepts."""
    a.ok("invite", b.name)
    b.ok("accept", a.name)


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process ``pid`` has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: CPU seconds a starting ``udpchat-server`` or ``udpchat-cli`` has used once the
#: interpreter and the console script's own lines are behind it (about 0.03 s) and
#: while its modules still load (the server's take about 0.3 s; the CLI, which loads
#: what only some commands use at its first use, waits for its server after 0.13 to
#: 0.24 s, on a loaded machine): its code handles signals by then.
LOADING_CPU = 0.08


def wait_until_loading(proc: subprocess.Popen[str], deadline: float = 5.0) -> None:
    """Wait (bounded) until ``proc`` is loading its modules: :data:`LOADING_CPU` of its
    own CPU time, a measure of how far it got that a loaded machine does not skew (a
    fixed sleep does). A process that finished loading sooner and waits uses no more
    CPU: after ``deadline`` it is past loading, and the wait ends anyway."""
    end = time.monotonic() + deadline
    while time.monotonic() < end and proc.poll() is None:
        if cpu_seconds(proc.pid) >= LOADING_CPU:
            return
        time.sleep(0.005)


def wait_until_online(observer: User, name: str, deadline: float = 10.0) -> None:
    """Poll ``online`` (as ``observer``) until ``name`` is connected, bounded."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if name in observer.ok("online")["online"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} never came online")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running server on a free loopback port with a fresh database."""
    process = ServerProcess(tmp_path).start()
    try:
        yield process
    finally:
        process.stop()
        process.kill()


@pytest.fixture
def make_user(tmp_path: Path, server: ServerProcess) -> Any:
    """``make_user("alice")``: a user with a fresh home on the ``server``, signed up."""

    def make(name: str, *, signup: bool = True) -> User:
        user = User(name, tmp_path / f"home-{name}", server)
        if signup:
            user.signup()
        return user

    return make
