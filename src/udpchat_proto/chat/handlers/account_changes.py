"""Requests that change an account: a new password, or the account's deletion.

Both need the current password, checked as a login checks it (a hash job, with
the same budget of failures, so a stolen session cannot guess it any faster).
A change of password then hashes the new one; a deletion goes ahead at once.
"""

from __future__ import annotations

from ...errors import ErrorCode
from .. import messages as m
from ..connection import ChatConnection
from ..core import SALT_SIZE
from ..password_jobs import JobKind, PendingJob
from ..passwords import PasswordHash, verify_digest
from ..requests import RefusedError, handles
from .accounts import AccountRequests

__all__ = ["AccountChangeRequests"]


class AccountChangeRequests(AccountRequests):
    """Handlers of change_password and delete_account."""

    @handles(m.ChangePassword)
    def _on_change_password(
        self, connection: ChatConnection, request: m.ChangePassword, now: float
    ) -> None:
        self._check_password(connection, request, request.current, now)

    @handles(m.DeleteAccount)
    def _on_delete_account(
        self, connection: ChatConnection, request: m.DeleteAccount, now: float
    ) -> None:
        self._check_password(connection, request, request.password, now)

    def _check_password(
        self,
        connection: ChatConnection,
        request: m.ChangePassword | m.DeleteAccount,
        password: str,
        now: float,
    ) -> None:
        """Start the hash of the password given as the user's current one."""
        user, host = self._me(connection), self._host(connection)
        self._check_job_room(host, user)
        account = self._store.get_account(user)
        if account is None:  # deleted by another session meanwhile
            raise RefusedError(ErrorCode.NOT_LOGGED_IN, "this account no longer exists")
        charge = self._charge_failure(user, host, now)
        self._start_job(
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

    def _still_current(self, connection: ChatConnection, job: PendingJob) -> None:
        """Refuse if the connection's session ended while the hash ran (a change of
        the password meanwhile made the job stale instead: see JobBook)."""
        if connection.username != job.username:
            raise RefusedError(ErrorCode.NOT_LOGGED_IN, "your login session has ended")

    def _finish_password_check(
        self, connection: ChatConnection, job: PendingJob, digest: bytes, now: float
    ) -> None:
        self._still_current(connection, job)
        assert job.account is not None  # (a password check starts from the account)
        if not verify_digest(job.account.password, digest):
            raise RefusedError(ErrorCode.BAD_CREDENTIALS, "wrong password")
        self._refund_failure(job, now)
        request = job.request
        if isinstance(request, m.ChangePassword):
            self._start_job(
                connection,
                JobKind.NEW_PASSWORD,
                request,
                username=job.username,
                password=request.new,
                salt=self._random.token_bytes(SALT_SIZE),
                params=self._config.scrypt,
                account=job.account,
            )
        else:
            self._delete_account(connection, job.username, request.request_id, now)

    def _finish_new_password(
        self, connection: ChatConnection, job: PendingJob, digest: bytes, now: float
    ) -> None:
        self._still_current(connection, job)
        user = job.username
        self._store.set_password(
            user, PasswordHash(salt=job.salt, params=job.params, digest=digest)
        )
        self._jobs.credentials_changed(user)  # a login or check in flight now fails
        # Whoever held another session (a stolen token, a lost phone) is out.
        others = [
            s.token_hash
            for s in self._store.sessions_of(user)
            if s.token_hash != connection.token_hash
        ]
        self._end_sessions(
            connection, others, now, reason="the password was changed on another device"
        )
        self.stats.passwords_changed += 1
        self._reply(connection, m.Ok(request_id=job.request.request_id))

    def _delete_account(
        self, connection: ChatConnection, me: str, request_id: int, now: float
    ) -> None:
        store = self._store
        # What others are told, read before it goes.
        friends = store.friends_of(me)
        invitees = [
            name for name in store.outgoing_invitations(me) if not store.has_blocked(name, me)
        ]
        for room, _members in store.rooms_of(me):
            store.leave_room(room, me)
            self._membership_changed(room, me, joined=False, members=store.room_members(room))
        sessions = [s.token_hash for s in store.sessions_of(me)]
        store.delete_account(me, self._clock())
        self._jobs.credentials_changed(me)
        self._known_users.discard(me)
        if self._config.cluster:  # the other nodes knew the name too
            self._forget[me] = None
        for friend in friends:
            self._friendship_changed(me, friend)
        self._end_sessions(
            connection, sessions, now, reason="the account was deleted", at_once=True
        )
        self.stats.accounts_deleted += 1
        self._reply(connection, m.Ok(request_id=request_id))
        for friend in friends:
            self._push_to_user(friend, m.Unfriended(by_user=me))
        for invitee in invitees:
            self._push_to_user(invitee, m.InvitationCancelled(by_user=me))
