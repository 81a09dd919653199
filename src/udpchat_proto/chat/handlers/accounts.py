"""Requests about accounts and login sessions: register, login, resume, logout, and
the user's sessions (list, revoke one, log out everywhere).

Register and login need a password hash, which runs off the loop as a job
(:mod:`udpchat_proto.chat.hashing`): each is a request half, that starts the job,
and a finishing half, run when the digest comes back (:meth:`finishers`).
"""

from __future__ import annotations

import collections

from ...clock import WallClock
from ...errors import ErrorCode
from ...randomness import RandomSource
from .. import messages as m
from ..config import ServerConfig
from ..connection import ChatConnection
from ..deliveries import Deliveries
from ..events import ServerEvent, UserLoggedIn
from ..hashing import Hashing
from ..limits import Limits
from ..outbox import Outbox
from ..password_jobs import JobKind, PendingJob
from ..passwords import PasswordHash, verify_digest
from ..requests import (
    Finisher,
    RefusedError,
    Route,
    route,
    session_id,
    token_hash,
    user_of,
    utc_from_posix,
)
from ..sessions import Sessions
from ..store import Store
from ..validation import LIST_MAX, TOKEN_SIZE

__all__ = ["AccountHandlers"]


class AccountHandlers:
    """Handlers of register, login, resume and logout, and of the session lists.

    Args:
        store: accounts and sessions.
        outbox: where answers go.
        sessions: logs connections in and out, ends sessions.
        deliveries: a new login's backlog.
        hashing: the password hashes.
        limits: registrations and logins per address and user.
        events: where ``UserLoggedIn`` goes.
        config: the scrypt cost, session lifetimes.
        clock: the wall clock (session times).
        random: where tokens come from.
    """

    def __init__(
        self,
        *,
        store: Store,
        outbox: Outbox,
        sessions: Sessions,
        deliveries: Deliveries,
        hashing: Hashing,
        limits: Limits,
        events: collections.deque[ServerEvent],
        config: ServerConfig,
        clock: WallClock,
        random: RandomSource,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._sessions = sessions
        self._deliveries = deliveries
        self._hashing = hashing
        self._limits = limits
        self._events = events
        self._config = config
        self._clock = clock
        self._random = random

    def routes(self) -> list[Route]:
        """The requests these handlers answer."""
        return [
            route(m.Register, self.register, before_login=True),
            route(m.Login, self.login, before_login=True),
            route(m.Resume, self.resume, before_login=True),
            route(m.Logout, self.logout),
            route(m.ListSessions, self.list_sessions),
            route(m.RevokeSession, self.revoke_session),
            route(m.LogoutAll, self.logout_all),
        ]

    def finishers(self) -> dict[JobKind, Finisher]:
        """The second halves of register and login, run when their hash is done."""
        return {JobKind.REGISTER: self.finish_register, JobKind.LOGIN: self.finish_login}

    # --- register ---------------------------------------------------------------------

    def register(self, connection: ChatConnection, request: m.Register, now: float) -> None:
        """``register``: start the hash of a new account's password."""
        # No look-up first: a name that is taken (a live account's) or retired (a
        # deleted one's) is found by create_account once the hash is done, as a
        # free one is created then. All three cost a registration and a hash, and
        # a taken and a retired name get the same answer at the same time.
        host = self._limits.address_key(connection.address)
        self._hashing.check_room(host, request.username)
        if not self._limits.registrations.spend(host, now=now):
            raise RefusedError(ErrorCode.RATE_LIMITED, "too many registrations from your address")
        self._hashing.start(
            connection,
            JobKind.REGISTER,
            request,
            username=request.username,
            password=request.password,
            salt=self._hashing.new_salt(),
            params=self._config.scrypt,
            account=None,
        )

    def finish_register(
        self, connection: ChatConnection, job: PendingJob, digest: bytes, now: float
    ) -> None:
        """The new password's hash is back: create the account."""
        record = PasswordHash(salt=job.salt, params=job.params, digest=digest)
        if not self._store.create_account(job.username, record, self._clock()):
            # Taken or retired (a deleted account's name): the same answer, so
            # that nobody learns which (and a race with another register, too).
            raise RefusedError(ErrorCode.USER_EXISTS, f"{job.username} is taken")
        self._outbox.reply(connection, m.Ok(request_id=job.request.request_id))

    # --- login ------------------------------------------------------------------------

    def login(self, connection: ChatConnection, request: m.Login, now: float) -> None:
        """``login``: start the hash of the given password."""
        host, user = self._limits.address_key(connection.address), request.username
        self._hashing.check_room(host, user)
        if not self._limits.logins.available(user, now=now):
            raise RefusedError(ErrorCode.RATE_LIMITED, f"too many logins as {user}; wait a minute")
        charge = self._hashing.charge_failure(user, host, now)
        account = self._store.get_account(user)
        if account is None:
            salt, params = self._hashing.new_salt(), self._config.scrypt
        else:
            salt, params = account.password.salt, account.password.params
        self._hashing.start(
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

    def finish_login(
        self, connection: ChatConnection, job: PendingJob, digest: bytes, now: float
    ) -> None:
        """The password's hash is back: a new session, or a refusal."""
        request = job.request
        assert isinstance(request, m.Login)
        user = request.username
        if job.account is None or not verify_digest(job.account.password, digest):
            raise RefusedError(ErrorCode.BAD_CREDENTIALS, "unknown user or wrong password")
        if job.account.disabled:  # (told only to whoever knows the password)
            self._hashing.refund_failure(job, now)
            raise RefusedError(
                ErrorCode.ACCOUNT_DISABLED,
                "this account is disabled by the server's operator; ask them to enable it",
            )
        token = self._random.token_bytes(TOKEN_SIZE)
        hashed = token_hash(token)
        self._store.create_session(hashed, user, self._clock())
        self._sessions.evict(user, keep=hashed)
        # The right password: the failure charged at dispatch is given back, and
        # the login counts against the account's successful logins instead (so a
        # guesser's failures never use up the owner's logins). After the writes: a
        # step done again (a deadlock) must not count twice.
        self._hashing.refund_failure(job, now)
        self._limits.logins.spend(user, now=now)
        self._sessions.log_in(connection, user, hashed)
        self._outbox.reply(
            connection, m.LoggedIn(request_id=request.request_id, username=user, token=token)
        )
        self._events.append(UserLoggedIn(connection_id=connection.connection_id, username=user))
        self._deliveries.refill(connection)
        self._hashing.upgrade(job)

    # --- resume and logout --------------------------------------------------------------

    def resume(self, connection: ChatConnection, request: m.Resume, now: float) -> None:
        """``resume``: the connection takes up an existing session."""
        hashed = token_hash(request.token)
        session = self._store.get_session(hashed)
        if session is None:
            raise RefusedError(
                ErrorCode.BAD_CREDENTIALS, "unknown or expired session; log in again"
            )
        wall = self._clock()
        if (
            self._sessions.last_used(session) < wall - self._config.session_lifetime
            or session.created_at < wall - self._config.session_max_age
        ):
            # Expired: its connections are done with it; the sweep deletes the row
            # (a delete here would be undone with this refused step anyway).
            self._sessions.end_session(hashed)
            raise RefusedError(
                ErrorCode.BAD_CREDENTIALS, "unknown or expired session; log in again"
            )
        # Noted, written within SESSION_TOUCH_DELAY: a resume needs no write.
        self._sessions.touched(hashed, wall, now)
        self._sessions.log_in(connection, session.username, hashed)
        self._outbox.reply(
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
        self._deliveries.refill(connection)

    def logout(self, connection: ChatConnection, request: m.Logout, now: float) -> None:
        """``logout``: end the connection's session."""
        hashed = connection.token_hash
        assert hashed is not None  # logged in
        self._store.delete_session(hashed)
        self._sessions.end_session(hashed)
        self._outbox.reply(connection, m.Ok(request_id=request.request_id))

    # --- the user's sessions ------------------------------------------------------------

    def list_sessions(
        self, connection: ChatConnection, request: m.ListSessions, now: float
    ) -> None:
        """``list_sessions``: the user's sessions."""
        sessions = tuple(
            m.SessionInfo(
                session_id=session_id(s.token_hash),
                current=s.token_hash == connection.token_hash,
                created_at=utc_from_posix(s.created_at),
                # A resume not written yet counts (see SESSION_TOUCH_DELAY).
                last_used_at=utc_from_posix(self._sessions.last_used(s)),
            )
            for s in self._store.sessions_of(user_of(connection))[:LIST_MAX]
        )
        self._outbox.reply(connection, m.Sessions(request_id=request.request_id, sessions=sessions))

    def revoke_session(
        self, connection: ChatConnection, request: m.RevokeSession, now: float
    ) -> None:
        """``revoke_session``: end one of the user's sessions."""
        for session in self._store.sessions_of(user_of(connection)):
            if session_id(session.token_hash) == request.session_id:
                self._sessions.end_sessions(connection, [session.token_hash])
                self._outbox.reply(connection, m.Ok(request_id=request.request_id))
                return
        raise RefusedError(ErrorCode.UNKNOWN_SESSION, "you have no session with this id")

    def logout_all(self, connection: ChatConnection, request: m.LogoutAll, now: float) -> None:
        """``logout_all``: end every session of the user."""
        ended = [s.token_hash for s in self._store.sessions_of(user_of(connection))]
        self._sessions.end_sessions(connection, ended)
        self._outbox.reply(
            connection, m.LoggedOutAll(request_id=request.request_id, ended=len(ended))
        )
