"""Password hashes as jobs: the server never hashes on its own loop.

scrypt takes tens of milliseconds on purpose. A ``register`` or ``login`` becomes a
:class:`HashJob` that the runtime runs on a worker thread (``hashlib.scrypt``
releases the GIL) and hands back (``ChatServer.complete_hash_job``); meanwhile the
connection's later requests wait, and every other connection goes on.
"""

from __future__ import annotations

import enum

import attrs

from ..transport import ConnectionId
from . import messages as m
from .passwords import ScryptParams, hash_password
from .store import Account

__all__ = ["HashJob", "JobKind", "PendingJob"]


@attrs.frozen(kw_only=True)
class HashJob:
    """One scrypt computation the caller must run off the event loop.

    Run it with :meth:`run` (on a worker thread: ``hashlib.scrypt`` releases the
    GIL) and pass the digest to ``ChatServer.complete_hash_job``.
    """

    job_id: int
    """Names the job in ``ChatServer.complete_hash_job``."""
    password: str = attrs.field(repr=False)
    """The password to hash (never shown by ``repr``)."""
    salt: bytes = attrs.field(repr=False)
    params: ScryptParams

    def run(self) -> bytes:
        """Compute the digest (CPU-heavy; thread-safe).

        Returns:
            ``passwords.hash_password(password, salt, params)``.
        """
        return hash_password(self.password, self.salt, self.params)


class JobKind(enum.Enum):
    """What a hash is for."""

    REGISTER = "register"
    LOGIN = "login"


@attrs.frozen(kw_only=True)
class PendingJob:
    """What the server remembers of a job it handed out."""

    kind: JobKind
    connection_id: ConnectionId
    request: m.Register | m.Login
    salt: bytes
    params: ScryptParams
    account: Account | None
    """For a login: the account, or None for an unknown name (the hash still runs,
    so that an unknown name and a wrong password take the same time)."""
    host: str
    """The client's IP address (login failures are counted per address)."""
