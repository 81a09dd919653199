"""The password hashes of requests: starting them within their caps, charging and
refunding wrong passwords, and the background re-hash at a new cost.

A request that needs scrypt (register, login, a change of password, a deletion)
starts a job here; its connection then waits (``*_HASHING``) and queues its later
requests. The job's digest comes back through ``ChatServer.complete_hash_job``,
whose dispatch hands it to the request's finishing half (each handler unit says
which, by :class:`~udpchat_proto.chat.password_jobs.JobKind`).
"""

from __future__ import annotations

from typing import Final

import attrs

from ..errors import ErrorCode
from ..randomness import RandomSource
from . import messages as m
from .config import ServerConfig
from .connection import ChatConnection, ChatConnectionInput
from .connections import ConnectionTable
from .limits import Limits
from .login_budgets import FailureCharge
from .password_jobs import HashJob, JobBook, JobKind, PendingJob
from .passwords import PasswordHash, ScryptParams
from .requests import RefusedError
from .stats import ServerStats
from .store import Account, Store, StoreUnavailableError

__all__ = ["SALT_SIZE", "Hashing"]

SALT_SIZE: Final = 16
"""Bytes of random salt in each new password hash."""


class Hashing:
    """The hash jobs of the connections here.

    Args:
        store: where an upgraded hash is written.
        jobs: the jobs handed out and not back yet.
        connections: the connection table (who waits for a job).
        limits: the budgets of wrong passwords; the address key of a connection.
        stats: counts jobs and upgrades.
        config: the caps on jobs and the current scrypt cost.
        random: where salts come from.
    """

    def __init__(
        self,
        *,
        store: Store,
        jobs: JobBook,
        connections: ConnectionTable,
        limits: Limits,
        stats: ServerStats,
        config: ServerConfig,
        random: RandomSource,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._connections = connections
        self._limits = limits
        self._stats = stats
        self._config = config
        self._random = random

    def __len__(self) -> int:
        """Jobs handed out (or about to be) and not yet completed."""
        return len(self._jobs)

    def new_salt(self) -> bytes:
        """A fresh random salt for a new hash."""
        return self._random.token_bytes(SALT_SIZE)

    def check_room(self, host: str, username: str) -> None:
        """Refuse a password hash beyond the caps: all, per address, per account and
        address (an account's cap counts each address apart: strangers' guesses in
        flight must not keep its owner's login waiting)."""
        if len(self._jobs) >= self._config.max_pending_hash_jobs:
            raise RefusedError(ErrorCode.RATE_LIMITED, "the server is busy; try again shortly")
        if self._jobs.by_host[host] >= self._config.max_hash_jobs_per_address:
            raise RefusedError(
                ErrorCode.RATE_LIMITED, "too many logins in progress from your address; wait"
            )
        if self._jobs.by_user_host[username, host] >= self._config.max_hash_jobs_per_user:
            raise RefusedError(
                ErrorCode.RATE_LIMITED, f"a login for {username} is already being checked; wait"
            )

    def start(
        self,
        connection: ChatConnection,
        kind: JobKind,
        request: m.Register | m.Login | m.ChangePassword | m.DeleteAccount,
        *,
        username: str,
        password: str,
        salt: bytes,
        params: ScryptParams,
        account: Account | None,
        failure_charge: FailureCharge | None = None,
    ) -> None:
        """Queue the hash ``request`` needs; ``connection`` waits for it."""
        job_id = self._jobs.next_id()
        self._jobs.add(
            PendingJob(
                kind=kind,
                connection_id=connection.connection_id,
                request=request,
                username=username,
                password=password,
                salt=salt,
                params=params,
                account=account,
                host=self._limits.address_key(connection.address),
                job_id=job_id,
                failure_charge=failure_charge,
            )
        )
        connection.job_id = job_id
        connection.transition(ChatConnectionInput.HASH_STARTED)
        self._stats.hash_jobs += 1

    def charge_failure(self, user: str, host: str, now: float) -> FailureCharge:
        """Charge a password check as a failure now, refunded if the password is
        right (:mod:`~udpchat_proto.chat.login_budgets`); refuse once a budget is
        spent. Strangers who keep the user's ceiling spent leave an address that
        has not failed its own allowance: they do not lock the owner out."""
        charge = self._limits.login_failures.charge(user, host, now=now)
        if charge is None:
            raise RefusedError(
                ErrorCode.RATE_LIMITED, "too many wrong passwords; wait and try again"
            )
        return charge

    def refund_failure(self, job: PendingJob, now: float) -> None:
        """Give back what :meth:`charge_failure` charged for ``job``: it was no
        failure (the right password, or a check that could not run)."""
        if job.failure_charge is not None:
            self._limits.login_failures.refund(job.username, job.host, job.failure_charge, now=now)

    def credentials_changed(self, username: str) -> None:
        """``username``'s password changed, or the account went: their jobs in
        flight prove nothing any more (they fail)."""
        self._jobs.credentials_changed(username)

    # --- the way back -----------------------------------------------------------------

    def take(self, limit: int | None) -> list[HashJob]:
        """Up to ``limit`` queued jobs (all if None), round-robin across addresses."""
        return self._jobs.queue.take(limit)

    def forget(self, job_id: int) -> tuple[PendingJob, bool] | None:
        """The job, done (or abandoned), and whether it went stale; None if unknown."""
        return self._jobs.forget(job_id)

    def waiting_connection(self, job: PendingJob) -> ChatConnection | None:
        """The connection still waiting for ``job``, done waiting now; None if it
        went away (or waits for another job)."""
        connection = self._connections.get(job.connection_id)
        if connection is None or not connection.hashing or connection.job_id != job.job_id:
            return None
        connection.job_id = None
        connection.transition(ChatConnectionInput.HASH_DONE)
        return connection

    def discard(self, connection: ChatConnection) -> None:
        """The connection ended: nobody waits for its job, if no worker has it yet."""
        if connection.job_id is not None:
            self._jobs.discard_queued(connection.job_id)

    # --- a better hash, after a login ---------------------------------------------------

    def upgrade(self, login: PendingJob) -> None:
        """Hash the password of a login again at the current cost, if it was
        hashed at another (nobody waits for it)."""
        if login.params == self._config.scrypt:
            return
        self._jobs.add(
            attrs.evolve(
                login,
                kind=JobKind.UPGRADE,
                salt=self.new_salt(),
                params=self._config.scrypt,
                job_id=self._jobs.next_id(),
                failure_charge=None,  # the login's was given back: nothing to refund
            )
        )
        self._stats.hash_jobs += 1

    def finish_upgrade(self, job: PendingJob, digest: bytes) -> None:
        """Store the upgraded hash (its own atomic block: nobody is answered)."""
        record = PasswordHash(salt=job.salt, params=job.params, digest=digest)
        try:
            # Only over the record the login checked: a password changed (or an
            # account deleted) while this hash ran must not come back.
            current = self._store.get_account(job.username)
            if job.account is None or current is None or current.password != job.account.password:
                return
            with self._store.atomic():
                self._store.set_password(job.username, record)
        except StoreUnavailableError as failure:  # the next login tries again
            self._stats.note_store_failure(failure)
        except Exception as exc:
            self._stats.note_internal_error(exc)
        else:
            self._stats.passwords_upgraded += 1
