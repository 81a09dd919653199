"""What ``udpchat-server ctl`` asks of a running server, done on the server loop.

Each command returns the answer the control socket sends back (``{"ok": true,
...}``, or a refusal ``{"ok": false, "error": CODE, "message": ...}``). Commands
that change accounts are steps of the loop's current batch: their answer waits
for its commit (:meth:`Operations.settle`), so "done" always means durable.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import udpchat_proto
from udpchat_proto import ChatServer, DecodeError, PasswordHash, Store, StoreUnavailableError

from .control import ControlRequest, ControlSocket

if TYPE_CHECKING:
    from .metrics import ServerMetrics

__all__ = ["WRITES", "Operations", "Operator"]

log = logging.getLogger(__name__)

WRITES: Final = frozenset({"disable", "enable", "reset-password"})
"""The commands whose answer waits for the batch's commit."""


def refusal(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "message": message}


class Operations:
    """The control commands, over the loop's server and store.

    Args:
        server: the running server.
        store: its store.
        counters: the loop's counters now.
        key_path: the server's key file (a backup takes a copy along).
    """

    def __init__(
        self,
        server: ChatServer,
        store: Store,
        counters: Callable[[], dict[str, Any]],
        key_path: Path | None = None,
    ) -> None:
        self._server = server
        self._store = store
        self._counters = counters
        self._key_path = key_path
        self._started = time.monotonic()

    def run(self, command: str, args: dict[str, Any], now: float) -> dict[str, Any]:
        """Do ``command`` (not ``backup``: see :meth:`backup`)."""
        handler = self._commands().get(command)
        if handler is None:
            return refusal("unknown_command", f"no control command {command!r}")
        try:
            return handler(args, now)
        except StoreUnavailableError as exc:
            return refusal("unavailable", f"the database cannot be used now: {exc}")
        except (KeyError, TypeError, ValueError, DecodeError) as exc:  # (DecodeError: a hash)
            return refusal("bad_request", f"bad arguments for {command}: {exc}")

    @staticmethod
    def settle(answer: dict[str, Any], failure: StoreUnavailableError | None) -> dict[str, Any]:
        """The answer of a write once its batch committed, or failed to."""
        if failure is not None and answer.get("ok"):
            return refusal("unavailable", f"not done: the database could not commit ({failure})")
        return answer

    def _commands(self) -> dict[str, Callable[[dict[str, Any], float], dict[str, Any]]]:
        return {
            "status": self._status,
            "users": self._users,
            "disable": self._disable,
            "enable": self._enable,
            "reset-password": self._reset_password,
            "kick": self._kick,
        }

    def _status(self, _args: dict[str, Any], _now: float) -> dict[str, Any]:
        counters = self._counters()
        return {
            "ok": True,
            "version": udpchat_proto.__version__,
            "uptime": round(time.monotonic() - self._started, 3),
            "connections": counters["connections"],
            "online_users": counters["online_users"],
            "counters": counters,
        }

    def _users(self, args: dict[str, Any], _now: float) -> dict[str, Any]:
        accounts = self._server.list_accounts()
        if args.get("online"):
            accounts = [account for account in accounts if account[1]]
        users = [
            {"user": name, "online": online, "disabled": disabled}
            for name, online, disabled in accounts
        ]
        return {"ok": True, "users": users}

    def _disable(self, args: dict[str, Any], now: float) -> dict[str, Any]:
        user = _user(args)
        if not self._server.disable_account(user, now):
            return _unknown(user)
        return {"ok": True, "user": user, "disabled": True}

    def _enable(self, args: dict[str, Any], now: float) -> dict[str, Any]:
        user = _user(args)
        if not self._server.enable_account(user, now):
            return _unknown(user)
        return {"ok": True, "user": user, "disabled": False}

    def _reset_password(self, args: dict[str, Any], now: float) -> dict[str, Any]:
        user = _user(args)
        password = PasswordHash.from_string(str(args["hash"]))
        if not self._server.reset_password(user, password, now):
            return _unknown(user)
        return {"ok": True, "user": user}

    def _kick(self, args: dict[str, Any], now: float) -> dict[str, Any]:
        user = _user(args)
        if self._store.get_account(user) is None:
            return _unknown(user)
        return {"ok": True, "user": user, "closed": self._server.kick(user, now)}

    def backup(self, args: dict[str, Any], backup: Callable[[Path], None] | None) -> dict[str, Any]:
        """``backup DEST``: a consistent copy of the committed database, with the key
        file beside it (``DEST.key``) so that a server started on it is the same
        server. Call it between batches (nothing uncommitted).

        The server writes where the ``ctl`` user asked, with its own rights, so it
        never follows a symbolic link there: DEST is created here, new
        (``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600), and the copy, made beside it
        under a random name, replaces it once whole. A DEST (or DEST.key) that
        exists, as a file or as a link, is refused (``exists``)."""
        if backup is None:
            return refusal(
                "not_supported",
                "this server's database is PostgreSQL: back it up with pg_dump "
                "(docs/OPERATIONS.md)",
            )
        text = args.get("dest")
        if not isinstance(text, str) or "\0" in text or not os.path.isabs(text):
            return refusal("bad_request", "backup needs an absolute destination path")
        dest = Path(text)
        key_copy = Path(f"{dest}.key")
        try:
            # (A failure unwinds the stack: the files made so far are removed.)
            with contextlib.ExitStack() as made:
                reserved = made.enter_context(_new_file(dest))
                if self._key_path is not None:  # first: no backup without its key
                    _write_copy(self._key_path, made.enter_context(_new_file(key_copy)))
                staging = dest.with_name(f".{dest.name}.{os.urandom(6).hex()}.backup")
                try:
                    backup(staging)
                    _replace(staging, dest, reserved)
                finally:
                    staging.unlink(missing_ok=True)
        except FileExistsError as exc:
            what = Path(exc.filename) if exc.filename else dest
            kind = "is a symbolic link (never followed)" if what.is_symlink() else "exists already"
            return refusal("exists", f"{what} {kind}: choose a new name")
        except (OSError, StoreUnavailableError) as exc:
            return refusal("backup_failed", f"cannot write the backup to {dest}: {exc}")
        return {"ok": True, "dest": str(dest), "key": str(key_copy), "size": dest.stat().st_size}


@contextlib.contextmanager
def _new_file(path: Path) -> Iterator[int]:
    """A new file at ``path``, 0600 from its first moment, never through a link
    (``O_EXCL | O_NOFOLLOW``), as an open descriptor; removed again if the block
    fails (if it is still ours).

    Raises:
        FileExistsError: something is at ``path`` already (a symbolic link too).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        yield fd
    except BaseException:
        _unlink_own(path, fd)
        raise
    finally:
        os.close(fd)


def _write_copy(source: Path, fd: int) -> None:
    """Copy ``source`` into the new file ``fd``, durably."""
    data = source.read_bytes()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _replace(staging: Path, dest: Path, reserved: int) -> None:
    """Move the whole copy at ``staging`` over the file ``reserved`` at ``dest``
    (refused if someone put another file there meanwhile), durably."""
    if not _same_file(dest, reserved):
        raise FileExistsError(errno.EEXIST, "replaced while the backup ran", str(dest))
    os.replace(staging, dest)
    with contextlib.suppress(OSError):  # (the rename's own durability: best effort)
        directory = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _same_file(path: Path, fd: int) -> bool:
    try:
        there, ours = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino)


def _unlink_own(path: Path, fd: int) -> None:
    """Remove ``path`` if it is still the file ``fd`` (this backup made it)."""
    with contextlib.suppress(OSError):
        if _same_file(path, fd):
            path.unlink()


def _user(args: dict[str, Any]) -> str:
    user = args["user"]
    if not isinstance(user, str):
        raise TypeError("user must be a string")
    return user.lower()


def _unknown(user: str) -> dict[str, Any]:
    return refusal("unknown_user", f"no user named {user}")


class Operator:
    """What the loop does for the operator each turn: run the control socket's
    requests (the writes answered once their batch committed, backups between
    batches) and keep the metrics' snapshot fresh.

    Args:
        operations: the commands.
        control: the control socket, if any.
        metrics: the metrics endpoint, if any.
        backup: copies the committed database to a path (SQLite), or None.
    """

    def __init__(
        self,
        operations: Operations,
        control: ControlSocket | None = None,
        metrics: ServerMetrics | None = None,
        backup: Callable[[Path], None] | None = None,
    ) -> None:
        self.operations = operations
        self.control = control
        self.metrics = metrics
        self._backup = backup
        self._writes: list[tuple[ControlRequest, dict[str, Any]]] = []
        self._backups: list[ControlRequest] = []

    def set_wake(self, wake: Callable[[], None]) -> None:
        if self.control is not None:
            self.control.wake = wake

    def run_requests(self, now: float) -> None:
        """Run what the control socket received (before the batch's commit)."""
        if self.control is None:
            return
        for request in self.control.take():
            if request.command == "backup":
                self._backups.append(request)
                continue
            try:
                answer = self.operations.run(request.command, request.args, now)
            except Exception:  # a bug: it costs this request, never the server
                log.exception("control request %r", request.command)
                answer = refusal("internal", "the server failed on this request (see its log)")
            if request.command in WRITES:
                self._writes.append((request, answer))
            else:
                request.answer.set_result(answer)

    def batch_done(
        self, failure: StoreUnavailableError | None, commit_seconds: float | None
    ) -> None:
        """The batch committed (or was lost): answer its writes, then take the
        backups asked for (nothing is uncommitted now)."""
        if self.metrics is not None and commit_seconds is not None:
            self.metrics.commit_seconds.observe(commit_seconds)
        writes, self._writes = self._writes, []
        for request, answer in writes:
            request.answer.set_result(Operations.settle(answer, failure))
        backups, self._backups = self._backups, []
        for request in backups:
            try:
                answer = self.operations.backup(request.args, self._backup)
            except Exception:  # as above
                log.exception("control request 'backup'")
                answer = refusal("internal", "the server failed on this request (see its log)")
            request.answer.set_result(answer)

    def update_metrics(self, counters: Callable[[], dict[str, Any]]) -> None:
        if self.metrics is not None:
            self.metrics.update(counters())

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            self.metrics.close()
