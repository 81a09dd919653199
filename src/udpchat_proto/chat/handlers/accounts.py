"""Requests about accounts and login sessions: register, login, resume, logout.

Register and login need a password hash, which runs off the loop as a job
(:mod:`udpchat_proto.chat.password_jobs`): each is a request half, that starts the
job, and a finishing half, run when the digest comes back.
"""

from __future__ import annotations

from typing import Final

import attrs

from ...errors import ErrorCode
from .. import messages as m
from ..connection import ChatConnection, ChatConnectionInput
from ..core import SALT_SIZE, SESSION_TOUCH_DELAY, ServerCore
from ..events import UserLoggedIn
from ..login_budgets import FailureCharge
from ..password_jobs import HashJob, JobKind, PendingJob
from ..passwords import PasswordHash, ScryptParams, verify_digest
from ..remote import RemoteSession
from ..requests import RefusedError, handles, session_id, token_hash, utc_from_posix
from ..store import Account, StoreUnavailableError
from ..validation import LIST_MAX, TOKEN_SIZE

__all__ = ["AccountRequests"]

_FINISH: Final = {
    JobKind.REGISTER: "_finish_register",
    JobKind.LOGIN: "_finish_login",
    JobKind.PASSWORD_CHECK: "_finish_password_check",
    JobKind.NEW_PASSWORD: "_finish_new_password",
}
"""The method that finishes each kind of request's hash job (UPGRADE has nobody
waiting: :meth:`AccountRequests._finish_upgrade`); the last two are
:class:`~udpchat_proto.chat.handlers.account_changes.AccountChangeRequests`'."""


class AccountRequests(ServerCore):
    """Handlers of register, login, resume and logout."""

    @handles(m.Register)
    def _on_register(self, connection: ChatConnection, request: m.Register, now: float) -> None:
        # No look-up first: a name that is taken (a live account's) or retired (a
        # deleted one's) is found by create_account once the hash is done, as a
        # free one is created then. All three cost a registration and a hash, and
        # a taken and a retired name get the same answer at the same time.
        host = self._host(connection)
        self._check_job_room(host, request.username)
        if not self._registrations.spend(host, now=now):
            raise RefusedError(ErrorCode.RATE_LIMITED, "too many registrations from your address")
        self._start_job(
            connection,
            JobKind.REGISTER,
            request,
            username=request.username,
            password=request.password,
            salt=self._random.token_bytes(SALT_SIZE),
            params=self._config.scrypt,
            account=None,
        )

    def _check_job_room(self, host: str, username: str) -> None:
        """Refuse a password hash beyond the caps: all, per address, per account."""
        if len(self._jobs) >= self._config.max_pending_hash_jobs:
            raise RefusedError(ErrorCode.RATE_LIMITED, "the server is busy; try again shortly")
        if self._jobs.by_host[host] >= self._config.max_hash_jobs_per_address:
            raise RefusedError(
                ErrorCode.RATE_LIMITED, "too many logins in progress from your address; wait"
            )
        if self._jobs.by_user[username] >= self._config.max_hash_jobs_per_user:
            raise RefusedError(
                ErrorCode.RATE_LIMITED, f"a login for {username} is already being checked; wait"
            )

    # --- hash jobs: the second half of register and login ---------------------------

    def take_hash_jobs(self, limit: int | None = None) -> list[HashJob]:
        """Return password hashes to compute; each job is returned once.

        Jobs come round-robin across client addresses, so a runtime that takes only
        as many as it has idle workers (``limit``) keeps one address's burst from
        delaying everyone else's login.

        Args:
            limit: most jobs to return (None: every queued job).

        Run each (:meth:`HashJob.run`, off the event loop) and pass the digest to
        :meth:`complete_hash_job`.
        """
        return self._jobs.queue.take(limit)

    def complete_hash_job(self, job_id: int, digest: bytes, now: float) -> None:
        """Hand back the digest of a :class:`HashJob`.

        Answers the register or login that asked for it, then the requests that
        connection queued meanwhile. A job whose connection has gone is ignored,
        as is an unknown ``job_id``.

        Args:
            job_id: :attr:`HashJob.job_id`.
            digest: what :meth:`HashJob.run` returned.
            now: a monotonic clock, seconds (``time.monotonic()``).

        Then commit if :attr:`writes_pending`, and call :meth:`datagrams_to_send`.
        """
        self._now = now
        forgotten = self._jobs.forget(job_id)
        if forgotten is None:
            return
        job, stale = forgotten
        if job.kind is JobKind.UPGRADE:
            self._finish_upgrade(job, digest)
            return
        connection = self._waiting_connection(job)
        if connection is None:
            return
        if stale:
            # The password changed (or the account went) while this hash ran: it
            # proves nothing about the password now.
            self._refuse(
                connection,
                job.request.request_id,
                ErrorCode.BAD_CREDENTIALS,
                "the password was changed meanwhile; try again",
            )
        else:
            finish = getattr(self, _FINISH[job.kind])
            self._run_atomically(connection, job.request.request_id, finish, job, digest, now)
        self._run_queue(connection, now)

    def abandon_hash_job(self, job_id: int, now: float) -> None:
        """A :class:`HashJob` could not run (it raised): answer its request
        ``internal`` and free its place, so that its address and account are not
        held up. Then call :meth:`commit` and :meth:`datagrams_to_send`.
        """
        self._now = now
        forgotten = self._jobs.forget(job_id)
        if forgotten is None:
            return
        job, _stale = forgotten
        self._refund_failure(job, now)  # it proved nothing: no failure to count
        connection = self._waiting_connection(job)
        if connection is None:
            return
        self._internal_error(connection, job.request.request_id, RuntimeError("hash job failed"))
        self._run_queue(connection, now)

    def _waiting_connection(self, job: PendingJob) -> ChatConnection | None:
        """The connection still waiting for ``job``, done waiting now; None if it
        went away (or waits for another job)."""
        connection = self._connections.get(job.connection_id)
        if connection is None or not connection.hashing or connection.job_id != job.job_id:
            return None
        connection.job_id = None
        connection.transition(ChatConnectionInput.HASH_DONE)
        return connection

    def run_hash_jobs(self, now: float) -> int:
        """Compute every pending password hash on the calling thread and hand each back.

        For tests, benchmarks and embedders without worker threads (a real server
        runs :meth:`take_hash_jobs` on threads instead, so that scrypt never stalls
        its loop). A finished login may start another job (a pipelined one): those
        run too. Then call :meth:`commit` and :meth:`datagrams_to_send`.

        Returns:
            How many jobs ran.
        """
        ran = 0
        while jobs := self.take_hash_jobs():
            for job in jobs:
                self.complete_hash_job(job.job_id, job.run(), now)
                ran += 1
        return ran

    def _finish_register(
        self, connection: ChatConnection, job: PendingJob, digest: bytes, now: float
    ) -> None:
        record = PasswordHash(salt=job.salt, params=job.params, digest=digest)
        if not self._store.create_account(job.username, record, self._clock()):
            # Taken or retired (a deleted account's name): the same answer, so
            # that nobody learns which (and a race with another register, too).
            raise RefusedError(ErrorCode.USER_EXISTS, f"{job.username} is taken")
        self._reply(connection, m.Ok(request_id=job.request.request_id))

    @handles(m.Login)
    def _on_login(self, connection: ChatConnection, request: m.Login, now: float) -> None:
        host, user = self._host(connection), request.username
        self._check_job_room(host, user)
        if not self._logins.available(user, now=now):
            raise RefusedError(ErrorCode.RATE_LIMITED, f"too many logins as {user}; wait a minute")
        charge = self._charge_failure(user, host, now)
        account = self._store.get_account(user)
        if account is None:
            salt, params = self._random.token_bytes(SALT_SIZE), self._config.scrypt
        else:
            salt, params = account.password.salt, account.password.params
        self._start_job(
            connection,
            JobKind.LOGIN,
            request,
            username=user,
            password=request.password,
            salt=salt,
            params=params,
            account=account,
            failure_charge=charge,
        )

    def _charge_failure(self, user: str, host: str, now: float) -> FailureCharge:
        """Charge a password check as a failure now, refunded if the password is
        right (:mod:`~udpchat_proto.chat.login_budgets`); refuse once a budget is
        spent. Strangers who keep the user's ceiling spent leave an address that
        has not failed its own allowance: they do not lock the owner out."""
        charge = self._login_failures.charge(user, host, now=now)
        if charge is None:
            raise RefusedError(
                ErrorCode.RATE_LIMITED, "too many wrong passwords; wait and try again"
            )
        return charge

    def _refund_failure(self, job: PendingJob, now: float) -> None:
        """Give back what :meth:`_charge_failure` charged for ``job``: it was no
        failure (the right password, or a check that could not run)."""
        if job.failure_charge is not None:
            self._login_failures.refund(job.username, job.host, job.failure_charge, now=now)

    def _finish_login(
        self, connection: ChatConnection, job: PendingJob, digest: bytes, now: float
    ) -> None:
        request = job.request
        assert isinstance(request, m.Login)
        user = request.username
        if job.account is None or not verify_digest(job.account.password, digest):
            raise RefusedError(ErrorCode.BAD_CREDENTIALS, "unknown user or wrong password")
        if job.account.disabled:  # (told only to whoever knows the password)
            self._refund_failure(job, now)
            raise RefusedError(
                ErrorCode.ACCOUNT_DISABLED,
                "this account is disabled by the server's operator; ask them to enable it",
            )
        token = self._random.token_bytes(TOKEN_SIZE)
        hashed = token_hash(token)
        self._store.create_session(hashed, user, self._clock())
        self._evict_sessions(user, keep=hashed, now=now)
        # The right password: the failure charged at dispatch is given back, and
        # the login counts against the account's successful logins instead (so a
        # guesser's failures never use up the owner's logins). After the writes: a
        # step done again (a deadlock) must not count twice.
        self._refund_failure(job, now)
        self._logins.spend(user, now=now)
        self._log_in(connection, user, hashed, now)
        self._reply(
            connection, m.LoggedIn(request_id=request.request_id, username=user, token=token)
        )
        self._events.append(UserLoggedIn(connection_id=connection.connection_id, username=user))
        self._refill(connection)
        if job.params != self._config.scrypt:
            self._upgrade_password(connection, job)

    def _upgrade_password(self, connection: ChatConnection, login: PendingJob) -> None:
        """Hash the password again at the current cost (nobody waits for it)."""
        salt, params = self._random.token_bytes(SALT_SIZE), self._config.scrypt
        self._jobs.add(
            attrs.evolve(
                login,
                kind=JobKind.UPGRADE,
                salt=salt,
                params=params,
                job_id=self._jobs.next_id(),
                failure_charge=None,  # the login's was given back: nothing to refund
            )
        )
        self.stats.hash_jobs += 1

    def _finish_upgrade(self, job: PendingJob, digest: bytes) -> None:
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
            self._note_store_failure(failure)
        except Exception as exc:
            self._count_internal_error(exc)
        else:
            self.stats.passwords_upgraded += 1

    def _evict_sessions(self, user: str, *, keep: bytes, now: float) -> None:
        """Beyond ``max_sessions_per_user``, end the least recently used sessions."""
        sessions = self._store.sessions_of(user)
        excess = len(sessions) - self._config.max_sessions_per_user
        if excess <= 0:
            return
        by_use = sorted(
            sessions, key=lambda s: (self._touches.get(s.token_hash, s.last_used_at), s.created_at)
        )
        evicted = [s.token_hash for s in by_use if s.token_hash != keep][:excess]
        for hashed in evicted:  # every write first (see _end_sessions)
            self._store.delete_session(hashed)
        for hashed in evicted:
            self._end_session(hashed, now)
            self.stats.sessions_evicted += 1

    def _start_job(
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
                host=self._host(connection),
                job_id=job_id,
                failure_charge=failure_charge,
            )
        )
        connection.job_id = job_id
        connection.transition(ChatConnectionInput.HASH_STARTED)
        self.stats.hash_jobs += 1

    @handles(m.Resume)
    def _on_resume(self, connection: ChatConnection, request: m.Resume, now: float) -> None:
        hashed = token_hash(request.token)
        session = self._store.get_session(hashed)
        if session is None:
            raise RefusedError(
                ErrorCode.BAD_CREDENTIALS, "unknown or expired session; log in again"
            )
        wall = self._clock()
        last_used = max(session.last_used_at, self._touches.get(hashed, 0.0))
        if (
            last_used < wall - self._config.session_lifetime
            or session.created_at < wall - self._config.session_max_age
        ):
            # Expired: its connections are done with it; the sweep deletes the row
            # (a delete here would be undone with this refused step anyway).
            self._end_session(hashed, now)
            raise RefusedError(
                ErrorCode.BAD_CREDENTIALS, "unknown or expired session; log in again"
            )
        # Noted, written within SESSION_TOUCH_DELAY: a resume needs no write.
        self._touches[hashed] = wall
        if self._touch_at is None:
            self._touch_at = now + SESSION_TOUCH_DELAY
        self._log_in(connection, session.username, hashed, now)
        self._reply(
            connection,
            m.LoggedIn(
                request_id=request.request_id, username=session.username, token=request.token
            ),
        )
        self._events.append(
            UserLoggedIn(
                connection_id=connection.connection_id, username=session.username, resumed=True
            )
        )
        self._refill(connection)

    @handles(m.Logout)
    def _on_logout(self, connection: ChatConnection, request: m.Logout, now: float) -> None:
        hashed = connection.token_hash
        assert hashed is not None  # logged in
        self._store.delete_session(hashed)
        self._end_session(hashed, now)
        self._reply(connection, m.Ok(request_id=request.request_id))

    @handles(m.ListSessions)
    def _on_list_sessions(
        self, connection: ChatConnection, request: m.ListSessions, now: float
    ) -> None:
        sessions = tuple(
            m.SessionInfo(
                session_id=session_id(s.token_hash),
                current=s.token_hash == connection.token_hash,
                created_at=utc_from_posix(s.created_at),
                # A resume not written yet counts (see SESSION_TOUCH_DELAY).
                last_used_at=utc_from_posix(
                    max(s.last_used_at, self._touches.get(s.token_hash, 0.0))
                ),
            )
            for s in self._store.sessions_of(self._me(connection))[:LIST_MAX]
        )
        self._reply(connection, m.Sessions(request_id=request.request_id, sessions=sessions))

    @handles(m.RevokeSession)
    def _on_revoke_session(
        self, connection: ChatConnection, request: m.RevokeSession, now: float
    ) -> None:
        for session in self._store.sessions_of(self._me(connection)):
            if session_id(session.token_hash) == request.session_id:
                self._end_sessions(connection, [session.token_hash], now)
                self._reply(connection, m.Ok(request_id=request.request_id))
                return
        raise RefusedError(ErrorCode.UNKNOWN_SESSION, "you have no session with this id")

    @handles(m.LogoutAll)
    def _on_logout_all(self, connection: ChatConnection, request: m.LogoutAll, now: float) -> None:
        ended = [s.token_hash for s in self._store.sessions_of(self._me(connection))]
        self._end_sessions(connection, ended, now)
        self._reply(connection, m.LoggedOutAll(request_id=request.request_id, ended=len(ended)))

    def _end_sessions(
        self,
        connection: ChatConnection,
        hashes: list[bytes],
        now: float,
        reason: str = "this login session was ended from another device",
        *,
        at_once: bool = False,
    ) -> None:
        """Delete these sessions of the caller's. The connections of the others are
        closed, with a reason their clients show, once the deletes are durable (see
        ServerCore._closes_held: a lost batch disconnects nobody); with
        ``at_once`` they are logged out now as well, so that nothing later in the
        batch acts for them (an account being deleted). The caller's own
        connection is logged out (its answer still reaches it)."""
        own = connection.token_hash
        for hashed in hashes:  # every write first: a step done again finds memory as it was
            self._store.delete_session(hashed)
        for hashed in hashes:
            others = () if hashed == own else self._by_session.get(hashed, ())
            self._closes_held.extend((connection_id, reason) for connection_id in others)
            if self._config.cluster and hashed != own:  # its connections elsewhere too
                self._closes_held.append((RemoteSession(hashed), reason))
            if hashed == own or at_once:
                self._end_session(hashed, now)
