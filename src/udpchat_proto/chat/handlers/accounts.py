"""Requests about accounts and login sessions: register, login, resume, logout.

Register and login need a password hash, which runs off the loop as a job
(:mod:`udpchat_proto.chat.password_jobs`): each is a request half, that starts the
job, and a finishing half, run when the digest comes back.
"""

from __future__ import annotations

from ...errors import ErrorCode
from .. import messages as m
from ..connection import ChatConnection, ChatConnectionInput
from ..core import (
    SALT_SIZE,
    SESSION_TOUCH_DELAY,
    RefusedError,
    ServerCore,
    handles,
    token_hash,
)
from ..events import UserLoggedIn
from ..password_jobs import HashJob, JobKind, PendingJob
from ..passwords import PasswordHash, ScryptParams, verify_digest
from ..store import Account
from ..validation import TOKEN_SIZE

__all__ = ["AccountRequests"]


class AccountRequests(ServerCore):
    """Handlers of register, login, resume and logout."""

    @handles(m.Register)
    def _on_register(self, connection: ChatConnection, request: m.Register, now: float) -> None:
        if self._store.get_account(request.username) is not None:
            raise RefusedError(ErrorCode.USER_EXISTS, f"{request.username} is taken")
        host = connection.address[0]
        if len(self._jobs) >= self._config.max_pending_hash_jobs:
            raise RefusedError(ErrorCode.RATE_LIMITED, "the server is busy; try again shortly")
        if not self._registrations.spend(host, now=now):
            raise RefusedError(ErrorCode.RATE_LIMITED, "too many registrations from your address")
        self._start_job(
            connection,
            JobKind.REGISTER,
            request,
            salt=self._random.token_bytes(SALT_SIZE),
            params=self._config.scrypt,
            account=None,
        )

    def _finish_job(
        self, connection: ChatConnection, job: PendingJob, digest: bytes, now: float
    ) -> None:
        if job.kind is JobKind.REGISTER:
            self._finish_register(connection, job, digest, now)
        else:
            self._finish_login(connection, job, digest, now)

    def _finish_register(
        self, connection: ChatConnection, job: PendingJob, digest: bytes, now: float
    ) -> None:
        request = job.request
        record = PasswordHash(salt=job.salt, params=job.params, digest=digest)
        if not self._store.create_account(request.username, record, self._clock()):
            # Another connection registered the name while this hash ran.
            raise RefusedError(ErrorCode.USER_EXISTS, f"{request.username} is taken")
        self._reply(connection, m.Ok(request_id=request.request_id))

    @handles(m.Login)
    def _on_login(self, connection: ChatConnection, request: m.Login, now: float) -> None:
        host = connection.address[0]
        if not self._user_failures.available(
            request.username, now=now
        ) or not self._address_failures.available(host, now=now):
            raise RefusedError(ErrorCode.RATE_LIMITED, "too many failed logins; wait and try again")
        if len(self._jobs) >= self._config.max_pending_hash_jobs:
            raise RefusedError(ErrorCode.RATE_LIMITED, "the server is busy; try again shortly")
        account = self._store.get_account(request.username)
        if account is None:
            salt, params = self._random.token_bytes(SALT_SIZE), self._config.scrypt
        else:
            salt, params = account.password.salt, account.password.params
        self._start_job(
            connection, JobKind.LOGIN, request, salt=salt, params=params, account=account
        )

    def _finish_login(
        self, connection: ChatConnection, job: PendingJob, digest: bytes, now: float
    ) -> None:
        request = job.request
        if job.account is None or not verify_digest(job.account.password, digest):
            self._user_failures.spend(request.username, now=now)
            self._address_failures.spend(job.host, now=now)
            raise RefusedError(ErrorCode.BAD_CREDENTIALS, "unknown user or wrong password")
        token = self._random.token_bytes(TOKEN_SIZE)
        hashed = token_hash(token)
        self._store.create_session(hashed, request.username, self._clock())
        self._log_in(connection, request.username, hashed, now)
        self._reply(
            connection,
            m.LoggedIn(request_id=request.request_id, username=request.username, token=token),
        )
        self._events.append(
            UserLoggedIn(connection_id=connection.connection_id, username=request.username)
        )
        self._refill(connection)

    def _start_job(
        self,
        connection: ChatConnection,
        kind: JobKind,
        request: m.Register | m.Login,
        *,
        salt: bytes,
        params: ScryptParams,
        account: Account | None,
    ) -> None:
        job_id = next(self._job_ids)
        self._jobs[job_id] = PendingJob(
            kind=kind,
            connection_id=connection.connection_id,
            request=request,
            salt=salt,
            params=params,
            account=account,
            host=connection.address[0],
        )
        self._new_jobs.append(
            HashJob(job_id=job_id, password=request.password, salt=salt, params=params)
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
        if session.last_used_at < wall - self._config.session_lifetime:
            self._end_session(hashed, now)
            self._store.delete_session(hashed)
            self.stats.sessions_expired += 1
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
