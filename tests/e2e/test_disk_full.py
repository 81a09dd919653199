"""A full disk, for real: the database on a small tmpfs that the test fills.

The server must stay up, answer what writes with ``unavailable`` (the CLI shows it
in plain words), keep answering what needs no write, log the cause once, lose
nothing it acknowledged, and recover by itself when space returns. A start on a
full or read-only disk exits 1 with one line naming the cause.

Mounting needs root: elsewhere these tests are skipped with that reason. CI runs
as root (and sets ``CI``), so there a failed mount fails the test instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import SERVER, ServerProcess, User, clean_env

pytestmark = pytest.mark.e2e

BIG = "x" * 3800  # one message: about a page of the database and of its WAL


def _mount(directory: Path, *options: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(directory)],
        check=True,
        capture_output=True,
        timeout=10,
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted at a fresh directory (unmounted afterwards)."""
    directory = tmp_path / "disk"
    directory.mkdir()
    try:
        if os.geteuid() != 0:
            raise PermissionError("mounting a tmpfs needs root")
        _mount(directory, "size=2m", "mode=0700")
    except (OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI"):
            raise AssertionError(f"CI runs as root and must mount a tmpfs: {exc}") from exc
        pytest.skip(f"cannot mount a small filesystem here: {exc}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False, timeout=10)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the filesystem with one file, leaving about ``leave`` bytes free."""
    filler = directory / "filler"
    with filler.open("ab") as file, contextlib.suppress(OSError):
        stats = os.statvfs(directory)
        free = stats.f_bavail * stats.f_frsize - leave
        chunk = b"\0" * 65536
        while free > 0:
            file.write(chunk[: min(free, len(chunk))])
            file.flush()
            free -= len(chunk)
    return filler


def start_exits_1(directory: Path, db: Path, key: Path) -> str:
    done = subprocess.run(
        [*SERVER, "--port", "0", "--db", str(db), "--key-file", str(key)],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_a_start_on_a_full_or_read_only_disk_exits_1_naming_the_cause(
    small_disk: Path, tmp_path: Path
) -> None:
    key = tmp_path / "server.key"
    # A database made while there was room, then the disk fills up.
    server = ServerProcess(tmp_path, db=small_disk / "chat.sqlite3", key_file=key).start()
    server.stop()
    filler = fill(small_disk)
    line = start_exits_1(small_disk, small_disk / "chat.sqlite3", key)
    assert "disk full" in line, line
    # A new database on a full disk: the same cause.
    line = start_exits_1(small_disk, small_disk / "new.sqlite3", key)
    assert "disk full" in line or "No space left on device" in line, line
    filler.unlink()
    # Read-only: named as such.
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True, timeout=10)
    line = start_exits_1(small_disk, small_disk / "chat.sqlite3", key)
    assert "read-only" in line.lower() or "Read-only file system" in line, line
    line = start_exits_1(small_disk, small_disk / "other.sqlite3", key)
    assert "Read-only file system" in line, line


def test_a_disk_that_fills_up_refuses_writes_keeps_serving_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    server = ServerProcess(
        tmp_path, db=small_disk / "chat.sqlite3", key_file=tmp_path / "server.key"
    ).start()
    try:
        alice = User("alice", tmp_path / "home-alice", server)
        bob = User("bob", tmp_path / "home-bob", server)
        alice.signup()
        bob.signup()
        alice.ok("invite", "bob")
        bob.ok("accept", "alice")
        filler = fill(small_disk, leave=96 * 1024)

        acknowledged: list[str] = []
        refusal = None
        for _ in range(200):
            result = alice.run("send", "bob", BIG)
            if result.code != 0:
                refusal = result
                break
            acknowledged.append(result.json["id"])
        assert refusal is not None, "the disk never filled up"
        assert refusal.code == 1, refusal
        assert refusal.json["error"] == "unavailable", refusal
        assert refusal.err.startswith("error: the server cannot store anything now ("), refusal
        assert refusal.err.count("\n") == 1 and "try later" in refusal.err
        assert server.alive()

        # Not a byte left. A write that needs room is refused; a small one may still
        # fit where the failed batch had written (SQLite reuses that space): either
        # way the answer is the truth, never a timeout or an internal error.
        fill(small_disk)
        alice.refused("unavailable", "send", "bob", BIG)
        for text in ("short one", "short two"):
            result = alice.run("send", "bob", text)
            if result.code == 0:
                acknowledged.append(result.json["id"])
            else:
                assert (result.code, result.json["error"]) == (1, "unavailable"), result
        # What needs no write is served (each command resumes its session).
        carol = User("carol", tmp_path / "home-carol", server)
        assert alice.ok("friends")["friends"] == [{"user": "bob", "online": False}]
        history = alice.ok("history", "bob", "--limit", "3")["messages"]
        assert [message["id"] for message in history] == acknowledged[-3:]
        assert server.alive()

        # Space returns: service resumes by itself.
        filler.unlink()
        after = alice.ok("send", "bob", "space is back")["id"]
        carol.signup()
        inbox = bob.ok("inbox")["messages"]
        ids = [message["id"] for message in inbox]
        # Every acknowledged message exactly once and in order; nothing refused.
        assert ids == [*acknowledged, after]
        assert bob.ok("inbox")["messages"] == []
        log = server.log_text()
        assert log.count("cannot store anything") == 1, log
        assert "disk full" in log and "works again" in log
    finally:
        server.stop()
        server.kill()
