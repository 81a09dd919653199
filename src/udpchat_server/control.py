"""The control socket: how ``udpchat-server ctl`` talks to a running server.

A Unix stream socket (mode 0600: only the server's own user may use it; the
directory's permissions guard it too). One request per connection, one JSON
object per line each way::

    → {"command": "disable", "args": {"user": "mallory"}}
    ← {"ok": true, "user": "mallory"}
    ← {"ok": false, "error": "unknown_user", "message": "no user named mallory"}

A thread accepts the connections and reads the requests; the server loop runs
them between its turns (the store and the core are the loop's alone) and the
thread writes the answer. Hashing a new password (``reset-password``) happens on
that thread, never on the loop.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import queue
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import orjson

__all__ = [
    "ANSWER_TIMEOUT",
    "ControlError",
    "ControlInUseError",
    "ControlRequest",
    "ControlSocket",
    "ControlUnreachableError",
    "call",
]

log = logging.getLogger(__name__)

ANSWER_TIMEOUT: Final = 60.0
"""Seconds a request may take (a backup of a large database included)."""
#: The longest path a Unix socket address holds (sun_path, with its NUL).
SOCKET_PATH_MAX: Final = 107
READ_TIMEOUT: Final = 5.0
"""Seconds a client has to send its whole request line."""
MAX_REQUEST: Final = 65_536
MAX_CLIENTS: Final = 8
"""Clients answered at once (each on its own thread); beyond, refused at once."""


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[Path]:
    """``path`` in a form a Unix socket address can hold: a long path is reached
    from its directory (for the moment of a bind or a connect: no other thread of
    ours opens files then)."""
    if len(os.fsencode(path)) <= SOCKET_PATH_MAX:
        yield path
        return
    before = os.getcwd()
    os.chdir(path.parent)
    try:
        yield Path(path.name)
    finally:
        os.chdir(before)


class ControlError(Exception):
    """A control request the server refuses (``code``: a stable word)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlUnreachableError(Exception):
    """No server answers on that socket."""


class ControlInUseError(OSError):
    """Another process listens on the control socket already (another server on
    the same database, most likely)."""


@attrs.frozen
class ControlRequest:
    """One request for the server loop, and where its answer goes."""

    command: str
    args: dict[str, Any]
    answer: concurrent.futures.Future[dict[str, Any]]


class ControlSocket:
    """The server's end of the control socket.

    Args:
        path: where the socket is made.
        wake: called (from the socket's thread) when a request waits for the loop.
        prepare: called on the socket's thread with each request before the loop
            sees it (e.g. to hash a password); may raise :class:`ControlError`.
    """

    def __init__(
        self,
        path: Path,
        wake: Callable[[], None] = lambda: None,
        prepare: Callable[[str, dict[str, Any]], dict[str, Any]] = lambda _c, args: args,
    ) -> None:
        self.path = path
        self.wake = wake
        self.prepare = prepare
        self._requests: queue.SimpleQueue[ControlRequest] = queue.SimpleQueue()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="udpchat-control", daemon=True)
        self._closing = threading.Event()
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self._inode = 0

    def open(self) -> None:
        """Make the socket (mode 0600) and start answering.

        Raises:
            OSError: it cannot be made (the message says why), or another server
                answers on it already.
        """
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise OSError(f"{self.path} exists and is not a socket")
            if _listening(self.path):  # (busy or not: alive)
                raise ControlInUseError(f"another server listens on {self.path}")
            self.path.unlink()  # left by a server that did not stop cleanly
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # born 0600: no moment when others could connect
        try:
            with reachable(self.path) as address:
                sock.bind(str(address))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._inode = self.path.stat().st_ino
        self._thread.start()

    def take(self) -> list[ControlRequest]:
        """The requests waiting for the loop."""
        taken: list[ControlRequest] = []
        while True:
            try:
                taken.append(self._requests.get_nowait())
            except queue.Empty:
                return taken

    def close(self) -> None:
        """Stop answering and remove the socket (bounded)."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                if self.path.stat().st_ino == self._inode:  # ours still, not a successor's
                    self.path.unlink()
        for request in self.take():  # (nobody will run them now)
            request.answer.cancel()

    # --- the socket's thread ---------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closing.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closing.is_set():
                    return
                log.exception("control socket")
                continue
            if not self._clients.acquire(blocking=False):
                with client, contextlib.suppress(OSError):
                    client.sendall(orjson.dumps(_refusal("busy", "too many ctl clients")) + b"\n")
                continue
            # A thread each: a slow client (or a long backup) holds up no other.
            threading.Thread(target=self._client, args=(client,), daemon=True).start()

    def _client(self, client: socket.socket) -> None:
        try:
            with client:
                self._answer(client)
        except OSError as exc:  # the client went away, or was too slow: its loss
            log.debug("control client: %s", exc)
        finally:
            self._clients.release()

    def _answer(self, client: socket.socket) -> None:
        line = _read_line(client, time.monotonic() + READ_TIMEOUT)
        try:
            request = orjson.loads(line)
            command, args = request["command"], request.get("args", {})
            if not isinstance(command, str) or not isinstance(args, dict):
                raise TypeError("command must be a string and args an object")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            answer: dict[str, Any] = _refusal("bad_request", f"not a control request: {exc}")
        else:
            answer = self._run(command, args)
        client.settimeout(READ_TIMEOUT)
        client.sendall(orjson.dumps(answer) + b"\n")

    def _run(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        if command == "ping":
            return {"ok": True}
        try:
            args = self.prepare(command, args)
        except ControlError as exc:
            return _refusal(exc.code, exc.message)
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._requests.put(ControlRequest(command, args, future))
        self.wake()
        try:
            return future.result(ANSWER_TIMEOUT)
        except concurrent.futures.TimeoutError:
            return _refusal("timeout", f"the server did not answer within {ANSWER_TIMEOUT:g} s")
        except concurrent.futures.CancelledError:
            return _refusal("stopping", "the server is stopping")


def _refusal(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message}


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """One line, which must arrive whole by ``deadline`` (monotonic).

    Raises:
        OSError: too slow (TimeoutError), or too long.
    """
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the line did not arrive in time")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise OSError("control message too long")
    return data.split(b"\n", 1)[0]


def call(
    path: Path, command: str, args: dict[str, Any], *, timeout: float = ANSWER_TIMEOUT + 5
) -> dict[str, Any]:
    """Send one request to the server on ``path`` and return its answer.

    Raises:
        ControlUnreachableError: no server answers there.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with reachable(path) as address:
                sock.connect(str(address))
        except OSError as exc:
            raise ControlUnreachableError(
                f"no server answers on {path}: {exc.strerror or exc}"
            ) from None
        try:
            sock.sendall(orjson.dumps({"command": command, "args": args}) + b"\n")
            line = _read_line(sock, time.monotonic() + timeout)
        except OSError as exc:
            raise ControlUnreachableError(f"the server on {path} did not answer: {exc}") from None
    if not line:
        raise ControlUnreachableError(f"the server on {path} closed without an answer")
    try:
        answer = orjson.loads(line)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise ControlUnreachableError(f"what answers on {path} is not a udpchat server")
    return answer


def _listening(path: Path) -> bool:
    """Whether a process accepts connections on the socket at ``path`` (a refused
    connection: a socket left by a process that is gone)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            with reachable(path) as address:
                probe.connect(str(address))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:  # (a timeout: a backlog full of a busy server's clients)
            return True
        return True
