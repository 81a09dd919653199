"""The parts of a cluster the cluster tests start and stop themselves: a private
nats-server, a private PostgreSQL, a set of nodes; and reading a listener's events."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.services import require_nats, unavailable

from .conftest import ServerProcess

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Nats:
    """A private nats-server on a loopback port, to stop and start at will, with
    ``options`` for it (``--auth TOKEN``, ``--tls`` ...; ``scheme``: its URL's)."""

    def __init__(self, *options: str, scheme: str = "nats") -> None:
        require_nats()  # (skips where the machine has no NATS at all)
        self.port = free_port()
        self.options = options
        self.scheme = scheme
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> Nats:
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), *self.options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return self
            time.sleep(0.05)
        raise AssertionError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Postgres:
    """A private PostgreSQL in a temporary directory (as the ``postgres`` user when
    the tests run as root: PostgreSQL refuses root)."""

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            unavailable("PostgreSQL's initdb", FileNotFoundError(PG_BIN / "initdb"))
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="udpchat-pg-"))
        self.data = self.dir / "data"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, "postgres")
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self.as_postgres, str(PG_BIN / program), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> Postgres:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.dir / "postgres.log")  # (not our pipe: it outlives pg_ctl)
        self._pg(
            "pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "30", "start"
        )
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def nodes(tmp_path: Path, url: str, bus: str, count: int = 2) -> Iterator[list[ServerProcess]]:
    key = tmp_path / "cluster.key"
    started: list[ServerProcess] = []
    try:
        for index in range(count):
            directory = tmp_path / f"node{index}"
            directory.mkdir()
            started.append(
                ServerProcess(
                    directory, database_url=url, key_file=key, options=("--bus", bus)
                ).start()
            )
        yield started
    finally:
        for node in started:
            node.stop()
            node.kill()


_PARTIAL: dict[int, bytes] = {}
"""What a listener printed past its last whole line, by process id."""


def read_events(proc: subprocess.Popen[str], until: Any, deadline: float) -> list[Any]:
    """Events a ``listen --json`` prints, until ``until(events)`` (bounded). Reads
    the pipe itself: a buffered readline would hide lines from select."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    events: list[Any] = []
    end = time.monotonic() + deadline
    while not until(events):
        left = end - time.monotonic()
        assert left > 0, f"not in time; got {events}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"the listener ended with {events}"
            *lines, _PARTIAL[proc.pid] = (_PARTIAL.get(proc.pid, b"") + chunk).split(b"\n")
            events.extend(json.loads(line) for line in lines if line.strip())
    return events


def texts(events: list[Any]) -> list[str]:
    return [e["text"] for e in events if e["event"] == "message"]
