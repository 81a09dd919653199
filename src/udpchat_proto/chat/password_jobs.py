"""Password hashes as jobs: the server never hashes on its own loop.

scrypt takes tens of milliseconds on purpose. A ``register`` or ``login`` becomes a
:class:`HashJob` that the runtime runs on a worker thread (``hashlib.scrypt``
releases the GIL) and hands back (``ChatServer.complete_hash_job``); meanwhile the
connection's later requests wait, and every other connection goes on.
"""

from __future__ import annotations

import collections
import enum

import attrs

from ..transport import ConnectionId
from . import messages as m
from .passwords import ScryptParams, hash_password
from .store import Account

__all__ = ["HashJob", "JobKind", "JobQueue", "PendingJob"]


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
    UPGRADE = "upgrade"
    """After a login with an outdated hash cost: the password hashed again at the
    server's current cost, stored when done (nobody waits for it)."""
    PASSWORD_CHECK = "password_check"
    """A logged-in user's current password, checked before a change of password or
    the deletion of the account."""
    NEW_PASSWORD = "new_password"
    """The new password of a change, once the current one checked out."""


@attrs.frozen(kw_only=True)
class PendingJob:
    """What the server remembers of a job it handed out."""

    kind: JobKind
    connection_id: ConnectionId
    request: m.Register | m.Login | m.ChangePassword | m.DeleteAccount
    username: str
    """Whose password it is (the per-account cap on jobs keys on it)."""
    password: str = attrs.field(repr=False)
    """What the job hashes."""
    salt: bytes
    params: ScryptParams
    account: Account | None
    """For a login: the account, or None for an unknown name (the hash still runs,
    so that an unknown name and a wrong password take the same time)."""
    host: str
    """The client's IP address (login failures are counted per address)."""
    job_id: int
    """The :class:`HashJob` it waits for."""


class JobQueue:
    """Hash jobs waiting for a worker, handed out round-robin across client addresses.

    A burst of logins from one address queues behind itself only: each call to
    :meth:`take` serves the addresses in turn, one job each, so another address's
    job waits for at most one job per busy address.
    """

    def __init__(self) -> None:
        self._by_host: collections.OrderedDict[str, collections.deque[HashJob]] = (
            collections.OrderedDict()
        )
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, host: str, job: HashJob) -> None:
        """Queue ``job`` for ``host`` (behind that host's earlier jobs)."""
        self._by_host.setdefault(host, collections.deque()).append(job)
        self._size += 1

    def take(self, limit: int | None = None) -> list[HashJob]:
        """Up to ``limit`` jobs (all if None), one per address in turn."""
        taken: list[HashJob] = []
        while self._by_host and (limit is None or len(taken) < limit):
            host, jobs = next(iter(self._by_host.items()))
            taken.append(jobs.popleft())
            self._size -= 1
            del self._by_host[host]
            if jobs:
                self._by_host[host] = jobs  # to the back of the line
        return taken

    def discard(self, host: str, job_id: int) -> bool:
        """Drop a job not taken yet (its connection went away); False if not queued."""
        jobs = self._by_host.get(host)
        if jobs is None:
            return False
        for job in jobs:
            if job.job_id == job_id:
                jobs.remove(job)
                self._size -= 1
                if not jobs:
                    del self._by_host[host]
                return True
        return False
