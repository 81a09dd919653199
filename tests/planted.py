"""A control socket planted by another local user: a process running as another
uid that listens on a Unix socket, answers every line as a server would
(``{"ok": true}``), and records what it received. Needs root (to become that
user); the tests that use it are skipped otherwise."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

NOBODY = 65534
"""The uid the planted listener runs as (nobody on Debian and most others)."""

IS_ROOT = os.geteuid() == 0


@contextlib.contextmanager
def shared_directory() -> Iterator[Path]:
    """A directory everyone may write to, as /tmp (mode 1777), that other users
    can reach (pytest's own temporary directories are private to root)."""
    with tempfile.TemporaryDirectory(prefix="udpchat-shared-", dir="/tmp") as name:
        os.chmod(name, 0o1777)
        yield Path(name)


@contextlib.contextmanager
def planted_listener(path: Path, uid: int = NOBODY) -> Iterator[Callable[[], bytes]]:
    """Listen on ``path`` as ``uid`` (a forked child); yields a function that
    returns everything received so far (the child is killed at the end)."""
    ready_r, ready_w = os.pipe()
    got_r, got_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os and socket calls, then _exit
        status = 1
        try:
            os.close(ready_r)
            os.close(got_r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(8)
            os.write(ready_w, b"!")
            while True:
                client, _ = listener.accept()
                with client:
                    client.settimeout(5)
                    with contextlib.suppress(OSError):
                        data = b""
                        while b"\n" not in data and (chunk := client.recv(65536)):
                            data += chunk
                        os.write(got_w, data)
                        if data:
                            client.sendall(b'{"ok": true, "user": "x", "closed": 0}\n')
        finally:
            os._exit(status)
    os.close(ready_w)
    os.close(got_w)
    try:
        if os.read(ready_r, 1) != b"!":
            raise RuntimeError(f"the planted listener on {path} did not start")
        received = bytearray()

        def taken() -> bytes:
            os.set_blocking(got_r, False)
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(got_r, 65536):
                    received.extend(chunk)
            return bytes(received)

        yield taken
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(got_r)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
