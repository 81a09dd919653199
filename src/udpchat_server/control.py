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

Whose socket it is matters both ways, since ``ctl`` sends new passwords and
takes answers for the truth. The server uses no socket path another user owns
(one planted in a shared directory is left alone, not taken for a second
server). The client talks only to a socket file and a listening process
(``SO_PEERCRED``) of a user it trusts (:func:`trusted_owners`), and checks both
before it sends a byte.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import queue
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import orjson

from .accepting import AcceptBackoff

__all__ = [
    "ANSWER_TIMEOUT",
    "ControlError",
    "ControlInUseError",
    "ControlNotOursError",
    "ControlRequest",
    "ControlSocket",
    "ControlUnreachableError",
    "ControlUntrustedError",
    "call",
    "check_peer",
    "check_socket_file",
    "parse_request",
    "trusted_owners",
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


class ControlNotOursError(OSError):
    """Something another user owns is at the control socket's path: the server
    neither uses nor replaces it."""


class ControlUntrustedError(Exception):
    """The socket on that path, or the process listening on it, belongs to a user
    the ``ctl`` client does not trust: nothing was sent."""


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
        try:
            found: os.stat_result | None = self.path.lstat()
        except FileNotFoundError:
            found = None
        if found is not None:
            if stat.S_ISLNK(found.st_mode):
                raise ControlNotOursError(f"{self.path} is a symbolic link: not followed")
            if found.st_uid != os.geteuid():  # (planted, or another user's server)
                raise ControlNotOursError(
                    f"{self.path} belongs to uid {found.st_uid}, not to this server's user"
                )
            if not stat.S_ISSOCK(found.st_mode):
                raise OSError(f"{self.path} exists and is not a socket")
            if _listening(self.path):  # (busy or not: alive)
                raise ControlInUseError(f"another server listens on {self.path}")
            self.path.unlink()  # left by a server that did not stop cleanly
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # born 0600: no moment when others could connect
        try:
            # bind() makes the file, and fails if anything (a link too) is there:
            # another user racing us to the path gets no socket of ours.
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
        self._inode = self.path.lstat().st_ino
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
        # (EMFILE and the like: wait, and say so once, not a traceback per pass.)
        backoff = AcceptBackoff("control socket", wait=self._closing.wait)
        while not self._closing.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._closing.is_set():
                    return
                backoff.failed(exc)
                continue
            backoff.succeeded()
            if not self._clients.acquire(blocking=False):
                with client, contextlib.suppress(OSError):
                    client.settimeout(0)  # (one small line: never wait for its reader)
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
            command, args = parse_request(line)
        except ControlError as exc:
            answer = _refusal(exc.code, exc.message)
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


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """One request line as its command and arguments. Whatever ``line`` holds,
    this returns or raises :class:`ControlError` (``fuzz/fuzz_control.py``).

    Raises:
        ControlError: ``bad_request``: not a JSON object with a string
            ``command`` and an object ``args`` (optional).
    """
    try:
        request = orjson.loads(line)
        if not isinstance(request, dict):
            raise TypeError("a request is a JSON object")
        command, args = request["command"], request.get("args", {})
        if not isinstance(command, str) or not isinstance(args, dict):
            raise TypeError("command must be a string and args an object")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ControlError("bad_request", f"not a control request: {exc}") from None
    return command, args


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
    path: Path,
    command: str,
    args: dict[str, Any],
    *,
    timeout: float = ANSWER_TIMEOUT + 5,
    trusted: frozenset[int] | None = None,
) -> dict[str, Any]:
    """Send one request to the server on ``path`` and return its answer, once the
    socket file and the process listening on it are known to belong to a
    ``trusted`` user (default: :func:`trusted_owners`).

    Raises:
        ControlUnreachableError: no server answers there.
        ControlUntrustedError: the socket or its listener is another user's
            (nothing was sent).
    """
    if trusted is None:
        trusted = trusted_owners(path)
    try:
        check_socket_file(path.lstat(), path, trusted)
    except OSError as exc:
        raise ControlUnreachableError(
            f"no server answers on {path}: {exc.strerror or exc}"
        ) from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with reachable(path) as address:
                sock.connect(str(address))
        except OSError as exc:
            raise ControlUnreachableError(
                f"no server answers on {path}: {exc.strerror or exc}"
            ) from None
        check_peer(_peer_uid(sock), path, trusted)
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


def trusted_owners(path: Path, euid: int | None = None) -> frozenset[int]:
    """The users whose control socket at ``path`` a client running as ``euid``
    (default: this process's) talks to: itself, root, and the owner of the
    socket's directory if nobody else may write there (so root reaches a service
    user's server in its private state directory). In a directory others may
    write to (``/tmp``, a shared group directory) only the first two: anyone could
    have put a socket there."""
    me = os.geteuid() if euid is None else euid
    trusted = {me, 0}
    try:
        directory = os.stat(path.parent)
    except OSError:
        return frozenset(trusted)
    if stat.S_ISDIR(directory.st_mode) and not directory.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        trusted.add(directory.st_uid)
    return frozenset(trusted)


def check_socket_file(found: os.stat_result, path: Path, trusted: frozenset[int]) -> None:
    """Whether ``found`` (``path``'s lstat) may be a server's control socket.

    Raises:
        ControlUntrustedError: a link, not a socket, or another user's.
    """
    if stat.S_ISLNK(found.st_mode):
        raise ControlUntrustedError(f"{path} is a symbolic link, not a server's control socket")
    if not stat.S_ISSOCK(found.st_mode):
        raise ControlUntrustedError(f"{path} is not a socket")
    if found.st_uid not in trusted:
        raise ControlUntrustedError(
            f"{path} belongs to uid {found.st_uid}, not to you, root or the owner of its "
            f"directory: refusing to send anything (planted in a shared directory?)"
        )


def check_peer(uid: int | None, path: Path, trusted: frozenset[int]) -> None:
    """Whether the process listening on ``path`` (running as ``uid``; None where
    the platform does not say) may be the server.

    Raises:
        ControlUntrustedError: it runs as another user.
    """
    if uid is not None and uid not in trusted:
        raise ControlUntrustedError(
            f"the process listening on {path} runs as uid {uid}, not as you, root or the "
            f"owner of its directory: refusing to send anything"
        )


def _peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a connected Unix socket (Linux's
    SO_PEERCRED: that of the process that called listen())."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))
    return int(uid)


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
