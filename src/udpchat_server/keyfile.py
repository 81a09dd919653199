"""The server's key file: its static key as 32 raw bytes, mode 0600.

A key file that others may access is refused, as ssh refuses an unprotected
private key; so is one that another user owns (in a shared directory, another
user could have written it first, and would know the key), or that is a symbolic
link or no regular file: it is opened without following a link.

Created on first start and reused after, so that the key clients pinned stays the
same across restarts. Creation is atomic: the key is written to a temporary file
which is then hard-linked into place, so a crash never leaves a truncated key, and
two servers starting at once agree on one key (the second link fails and it reads
the first).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from udpchat_proto import LocalProtocolError, RandomSource, ServerKey, SystemRandomSource

__all__ = ["KeyFileError", "default_key_path", "load_or_create_key"]


class KeyFileError(Exception):
    """The key file cannot be read, created or parsed."""


def default_key_path(db_path: Path) -> Path:
    """The key file beside the database: ``udpchat.sqlite3`` -> ``udpchat.sqlite3.key``."""
    return db_path.with_name(db_path.name + ".key")


def load_or_create_key(path: Path, random: RandomSource | None = None) -> tuple[ServerKey, bool]:
    """Load the key in ``path``, or create it there.

    Args:
        path: the key file.
        random: where a new key comes from (the system CSPRNG by default).

    Returns:
        The key, and whether it was created now.

    Raises:
        KeyFileError: the file exists but is not a key, is accessible by others
            (group or world permission bits), belongs to another user than the
            process's effective one, is a symbolic link or no regular file, or
            cannot be read or written.
    """
    try:
        return _load(path), False
    except FileNotFoundError:
        pass
    key = ServerKey.generate(random or SystemRandomSource())
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:  # mkstemp creates it 0600
                file.write(key.private_bytes)
                file.flush()
                os.fsync(file.fileno())
            os.link(temp, path)  # fails if the file appeared meanwhile: keep that one
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)
    except FileExistsError:
        return _load(path), False
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror or exc}") from None
    return key, True


def _load(path: Path) -> ServerKey:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # (a FIFO: no wait)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileError(
                f"key file {path} is a symbolic link: it is never followed (another "
                "user could point it at a key of theirs); give the key file's own path"
            ) from None
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(fd)
            data = file.read(1024) if stat.S_ISREG(info.st_mode) else b""
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if info.st_uid != os.geteuid():
        # Another user wrote it (first, in a shared directory): they know the key,
        # and could impersonate the server to every client that pins it.
        raise KeyFileError(
            f"key file {path} belongs to uid {info.st_uid}, not to this server's user "
            f"(uid {os.geteuid()}): its owner may know the key; remove it, or if it "
            f"is yours, 'chown {os.geteuid()} {path}'"
        )
    mode = info.st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # As ssh refuses an unprotected private key: whoever could read it could
        # impersonate the server to every client that pinned it.
        raise KeyFileError(
            f"key file {path} is accessible by others (mode {mode & 0o777:o}); "
            f"run 'chmod 600 {path}' (and consider the key exposed if others could read it)"
        )
    try:
        return ServerKey.from_bytes(data)
    except LocalProtocolError as exc:
        raise KeyFileError(f"key file {path} is not a udpchat server key: {exc}") from None
