"""Requests that change an account: a new password, or the account's deletion.

Both need the current password, checked as a login checks it (a hash job, with
the same budget of failures, so a stolen session cannot guess it any faster).
A change of password then hashes the new one; a deletion goes ahead at once.
"""

from __future__ import annotations

from ...clock import WallClock
from ...errors import ErrorCode
from .. import messages as m
from ..batch import Batch
from ..caches import Caches
from ..config import ServerConfig
from ..connection import ChatConnection
from ..hashing import Hashing
from ..limits import Limits
from ..lookups import not_blocking
from ..outbox import Outbox
from ..password_jobs import JobKind, PendingJob
from ..passwords import PasswordHash, verify_digest
from ..requests import Finisher, RefusedError, Route, route, user_of
from ..sessions import Sessions
from ..stats import ServerStats
from ..store import Store

__all__ = ["AccountChangeHandlers"]


class AccountChangeHandlers:
    """Handlers of change_password and delete_account.

    Args:
        store: accounts, and everything an account owns.
        outbox: where answers and pushes go.
        sessions: ends the account's other sessions.
        hashing: the password hashes.
        limits: the address key of a connection.
        batch: the rooms a deleted account leaves.
        caches: the friend sets a deleted account was in.
        stats: counts changes and deletions.
        config: the scrypt cost.
        clock: the wall clock.
    """

    def __init__(
        self,
        *,
        store: Store,
        outbox: Outbox,
        sessions: Sessions,
        hashing: Hashing,
        limits: Limits,
        batch: Batch,
        caches: Caches,
        stats: ServerStats,
        config: ServerConfig,
        clock: WallClock,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._sessions = sessions
        self._hashing = hashing
        self._limits = limits
        self._batch = batch
        self._caches = caches
        self._stats = stats
        self._config = config
        self._clock = clock

    def routes(self) -> list[Route]:
        """The requests these handlers answer."""
        return [
            route(m.ChangePassword, self.change_password),
            route(m.DeleteAccount, self.delete_account),
        ]

    def finishers(self) -> dict[JobKind, Finisher]:
        """What runs when the current password's hash, then the new one's, is done."""
        return {
            JobKind.PASSWORD_CHECK: self.finish_password_check,
            JobKind.NEW_PASSWORD: self.finish_new_password,
        }

    def change_password(
        self, connection: ChatConnection, request: m.ChangePassword, now: float
    ) -> None:
        """``change_password``: check the current password first."""
        self._check_password(connection, request, request.current, now)

    def delete_account(
        self, connection: ChatConnection, request: m.DeleteAccount, now: float
    ) -> None:
        """``delete_account``: check the password first."""
        self._check_password(connection, request, request.password, now)

    def _check_password(
        self,
        connection: ChatConnection,
        request: m.ChangePassword | m.DeleteAccount,
        password: str,
        now: float,
    ) -> None:
        """Start the hash of the password given as the user's current one."""
        user, host = user_of(connection), self._limits.address_key(connection.address)
        self._hashing.check_room(host, user)
        account = self._store.get_account(user)
        if account is None:  # deleted by another session meanwhile
            raise RefusedError(ErrorCode.NOT_LOGGED_IN, "this account no longer exists")
        charge = self._hashing.charge_failure(user, host, now)
        self._hashing.start(
            connection,
            JobKind.PASSWORD_CHECK,
            request,
            username=user,
            password=password,
            salt=account.password.salt,
            params=account.password.params,
            account=account,
            failure_charge=charge,
        )

    def finish_password_check(
        self, connection: ChatConnection, job: PendingJob, digest: bytes, now: float
    ) -> None:
        """The current password's hash is back: go on, or refuse."""
        _still_current(connection, job)
        assert job.account is not None  # (a password check starts from the account)
        if not verify_digest(job.account.password, digest):
            raise RefusedError(ErrorCode.BAD_CREDENTIALS, "wrong password")
        self._hashing.refund_failure(job, now)
        request = job.request
        if isinstance(request, m.ChangePassword):
            self._hashing.start(
                connection,
                JobKind.NEW_PASSWORD,
                request,
                username=job.username,
                password=request.new,
                salt=self._hashing.new_salt(),
                params=self._config.scrypt,
                account=job.account,
            )
        else:
            self._delete_account(connection, job.username, request.request_id)

    def finish_new_password(
        self, connection: ChatConnection, job: PendingJob, digest: bytes, now: float
    ) -> None:
        """The new password's hash is back: store it, end the other sessions."""
        _still_current(connection, job)
        user = job.username
        self._store.set_password(
            user, PasswordHash(salt=job.salt, params=job.params, digest=digest)
        )
        self._hashing.credentials_changed(user)  # a login or check in flight now fails
        # Whoever held another session (a stolen token, a lost phone) is out.
        others = [
            s.token_hash
            for s in self._store.sessions_of(user)
            if s.token_hash != connection.token_hash
        ]
        self._sessions.end_sessions(
            connection, others, reason="the password was changed on another device"
        )
        self._stats.passwords_changed += 1
        self._outbox.reply(connection, m.Ok(request_id=job.request.request_id))

    def _delete_account(self, connection: ChatConnection, me: str, request_id: int) -> None:
        store = self._store
        # What others are told, read before it goes.
        friends = store.friends_of(me)
        invitees = [
            name for name in store.outgoing_invitations(me) if not store.has_blocked(name, me)
        ]
        for room, _members in store.rooms_of(me):
            store.leave_room(room, me)
            told = not_blocking(store, me, store.room_members(room))
            self._batch.membership_changed(room, me, joined=False, members=told)
        sessions = [s.token_hash for s in store.sessions_of(me)]
        store.delete_account(me, self._clock())
        self._hashing.credentials_changed(me)
        self._caches.account_deleted(me)  # the other nodes knew the name too
        for friend in friends:
            self._caches.friendship_changed(me, friend)
        self._sessions.end_sessions(
            connection, sessions, reason="the account was deleted", at_once=True
        )
        self._stats.accounts_deleted += 1
        self._outbox.reply(connection, m.Ok(request_id=request_id))
        for friend in friends:
            self._outbox.push_to_user(friend, m.Unfriended(by_user=me))
        for invitee in invitees:
            self._outbox.push_to_user(invitee, m.InvitationCancelled(by_user=me))


def _still_current(connection: ChatConnection, job: PendingJob) -> None:
    """Refuse if the connection's session ended while the hash ran (a change of the
    password meanwhile made the job stale instead: see JobBook)."""
    if connection.username != job.username:
        raise RefusedError(ErrorCode.NOT_LOGGED_IN, "your login session has ended")
