"""The server's key file: its static key as 32 raw bytes, mode 0600.

A key file that others may access is refused, as ssh refuses an unprotected
private key.

Created on first start and reused after, so that the key clients pinned stays the
same across restarts. Creation is atomic: the key is written to a temporary file
which is then hard-linked into place, so a crash never leaves a truncated key, and
two servers starting at once agree on one key (the second link fails and it reads
the first).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from udpchat_proto import LocalProtocolError, RandomSource, SystemRandomSource
from udpchat_proto.transport import ServerKey

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
            (group or world permission bits), or cannot be read or written.
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
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            data = file.read(1024)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
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
