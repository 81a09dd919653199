"""Password hashes as jobs: the server never hashes on its own loop.

scrypt takes tens of milliseconds on purpose. A ``register`` or ``login`` becomes a
:class:`HashJob` that the runtime runs on a worker thread (``hashlib.scrypt``
releases the GIL) and hands back (``ChatServer.complete_hash_job``); meanwhile the
connection's later requests wait, and every other connection goes on.
"""

from __future__ import annotations

import collections
import enum
import itertools
from typing import Any

import attrs

from ..transport import ConnectionId
from . import messages as m
from .login_budgets import FailureCharge
from .passwords import ScryptParams, hash_password
from .store import Account

__all__ = ["HashJob", "JobBook", "JobKind", "JobQueue", "PendingJob"]


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
    failure_charge: FailureCharge | None = None
    """Where its password check was charged as a failure (login, password check),
    so that a right password gives it back there; None if it was not."""


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


class JobBook:
    """The hash jobs handed out and not back yet: what each waits for, the queue of
    those no worker has taken, and the counts the caps read.

    It also notes which jobs a change of credentials made *stale*: a login or a
    password check whose hash began before the user's password changed (or the
    account went) proves nothing about the password now, so it must not succeed.
    """

    def __init__(self) -> None:
        self.pending: dict[int, PendingJob] = {}
        self.queue = JobQueue()
        """Jobs not yet handed to a worker, fair across addresses."""
        self.by_host: collections.Counter[str] = collections.Counter()
        self.by_user: collections.Counter[str] = collections.Counter()
        self.by_user_host: collections.Counter[tuple[str, str]] = collections.Counter()
        """Jobs per (username, address): the per-user cap counts each address apart,
        so that strangers' checks never fill the owner's place."""
        self._ids = itertools.count(1)
        self._stale: set[int] = set()

    def __len__(self) -> int:
        return len(self.pending)

    def next_id(self) -> int:
        """A fresh job id."""
        return next(self._ids)

    def add(self, job: PendingJob) -> None:
        """Count ``job`` and queue its hash for a worker."""
        self.pending[job.job_id] = job
        self.by_host[job.host] += 1
        self.by_user[job.username] += 1
        self.by_user_host[job.username, job.host] += 1
        self.queue.push(
            job.host,
            HashJob(job_id=job.job_id, password=job.password, salt=job.salt, params=job.params),
        )

    def forget(self, job_id: int) -> tuple[PendingJob, bool] | None:
        """Drop a job (done, abandoned or unwanted); it and whether it went stale,
        or None for an unknown id."""
        job = self.pending.pop(job_id, None)
        if job is None:
            return None
        counted: tuple[tuple[collections.Counter[Any], Any], ...] = (
            (self.by_host, job.host),
            (self.by_user, job.username),
            (self.by_user_host, (job.username, job.host)),
        )
        for counter, key in counted:
            counter[key] -= 1
            if not counter[key]:
                del counter[key]
        stale = job_id in self._stale
        self._stale.discard(job_id)
        return job, stale

    def discard_queued(self, job_id: int) -> None:
        """Forget a job no worker has taken yet (its connection went away)."""
        job = self.pending.get(job_id)
        if job is not None and self.queue.discard(job.host, job_id):
            self.forget(job_id)

    def credentials_changed(self, username: str) -> None:
        """The password of ``username`` changed, or the account is gone: every job
        of theirs in progress is stale (at most ``max_pending_hash_jobs`` to look at)."""
        if self.by_user[username]:  # (a Counter's lookup adds no entry)
            self._stale.update(i for i, job in self.pending.items() if job.username == username)
