"""Login sessions on connections: logging in and out, ending sessions, closing
connections, and the "last used" times of resumed sessions.

A connection logs in to one session (a login or a resume) and out of it (a
logout, the session's end elsewhere, its close). Presence follows: a user's first
connection here announces them online, their last one offline. A session ends
for every connection on it, here now and, in a cluster, on the other nodes once
the batch is durable (:class:`~udpchat_proto.chat.remote.RemoteSession`).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable
from typing import Final

from ..errors import LocalProtocolError
from ..transport import ConnectionId, ServerTransport
from ..transport.events import CloseCode
from .batch import Batch, Close
from .caches import Caches
from .config import ServerConfig
from .connection import ChatConnection, ChatConnectionInput
from .connections import ConnectionTable
from .events import ServerEvent, UserLoggedOut
from .presence import Presence
from .remote import RemoteSession
from .stats import ServerStats
from .store import LoginSession, Store, StoreUnavailableError
from .timers import ServerTimer, ServerTimers

__all__ = ["SESSION_TOUCH_DELAY", "Sessions"]

SESSION_TOUCH_DELAY: Final = 60.0
"""Seconds a resumed session's "last used" time waits before it is written, with
every other resume of that minute, in one batch. A resume then needs no write (it
works while the disk is full) and costs no commit of its own; a crash forgets at
most this much of a 30-day idle expiry."""


class Sessions:
    """The login sessions of the connections here.

    Args:
        store: where sessions live.
        connections: the connection table.
        presence: told when a user's first connection comes and last one goes.
        caches: a user's cached friends go when they go offline.
        batch: holds the closes a request decides until they are durable.
        transport: closes connections.
        timers: the session-touch timer.
        events: where ``UserLoggedOut`` goes.
        stats: counts expired and evicted sessions, and store failures.
        config: session lifetimes and caps; whether this is a cluster's node.
    """

    def __init__(
        self,
        *,
        store: Store,
        connections: ConnectionTable,
        presence: Presence,
        caches: Caches,
        batch: Batch,
        transport: ServerTransport,
        timers: ServerTimers,
        events: collections.deque[ServerEvent],
        stats: ServerStats,
        config: ServerConfig,
    ) -> None:
        self._store = store
        self._connections = connections
        self._presence = presence
        self._caches = caches
        self._batch = batch
        self._transport = transport
        self._timers = timers
        self._events = events
        self._stats = stats
        self._config = config
        self._touches: dict[bytes, float] = {}
        """Sessions resumed since the last flush, with when (see SESSION_TOUCH_DELAY)."""
        self._touching: dict[bytes, float] = {}
        """The touches written in the current batch (put back if it is lost)."""

    # --- a connection's session -------------------------------------------------------

    def log_in(self, connection: ChatConnection, username: str, token_hash: bytes) -> None:
        """Put ``connection`` on the session (a login or a resume succeeded)."""
        if connection.logged_in and connection.token_hash == token_hash:
            return  # resuming the session this connection already has: nothing changes
        if connection.logged_in:
            self.log_out(connection, announce=True)
        if self._connections.attach(connection, username, token_hash):
            self._presence.came_online(username)

    def log_out(self, connection: ChatConnection, *, announce: bool) -> None:
        """Take ``connection`` off its session (logout, session end, or close);
        ``announce``: log it (``UserLoggedOut``)."""
        if not connection.logged_in:
            return
        username = connection.username
        assert username is not None  # (logged in)
        if self._connections.detach(connection):
            self._caches.forget_user(username)
            self._presence.went_offline(username)
        if announce:
            self._events.append(
                UserLoggedOut(connection_id=connection.connection_id, username=username)
            )

    def close(
        self, connection_id: ConnectionId, reason: str, *, code: CloseCode = CloseCode.NORMAL_CLOSE
    ) -> None:
        """Close a connection (its client sees ``reason``)."""
        connection = self._connections.get(connection_id)
        if connection is None or connection.closing:
            return
        # Off its session at once (presence, deliveries): it is going.
        self.log_out(connection, announce=False)
        connection.transition(ChatConnectionInput.CLOSE)
        with contextlib.suppress(LocalProtocolError):  # already gone
            self._transport.close(connection_id, self._timers.now, reason, code=code)

    def close_all(self, closes: Iterable[Close]) -> None:
        """Do the closes a durable batch (or step) held."""
        for target, reason in closes:
            if isinstance(target, RemoteSession):
                self._batch.end_remote_session(target.token_hash, reason)
            else:
                self.close(target, reason or "closed")

    # --- ending sessions --------------------------------------------------------------

    def end_session(self, token_hash: bytes) -> None:
        """Log out every connection of a session that just ended (here and, once
        durable, on the cluster's other nodes)."""
        if self._config.cluster:
            self._batch.hold_close(RemoteSession(token_hash), None)
        for connection_id in self._connections.of_session(token_hash):
            connection = self._connections.get(connection_id)
            assert connection is not None  # (the table's indexes hold live ones)
            self.log_out(connection, announce=True)

    def end_sessions(
        self,
        connection: ChatConnection,
        hashes: list[bytes],
        reason: str = "this login session was ended from another device",
        *,
        at_once: bool = False,
    ) -> None:
        """Delete these sessions of the caller's. The connections of the others are
        closed, with a reason their clients show, once the deletes are durable (a
        lost batch disconnects nobody); with ``at_once`` they are logged out now as
        well, so that nothing later in the batch acts for them (an account being
        deleted). The caller's own connection is logged out (its answer still
        reaches it)."""
        own = connection.token_hash
        for hashed in hashes:  # every write first: a step done again finds memory as it was
            self._store.delete_session(hashed)
        for hashed in hashes:
            if hashed != own:
                for connection_id in self._connections.of_session(hashed):
                    self._batch.hold_close(connection_id, reason)
                if self._config.cluster:  # its connections elsewhere too
                    self._batch.hold_close(RemoteSession(hashed), reason)
            if hashed == own or at_once:
                self.end_session(hashed)

    def end_every_session(self, username: str, reason: str) -> None:
        """Delete every session of ``username``; their connections (on every node)
        are logged out now and closed once the batch is durable."""
        hashes = [session.token_hash for session in self._store.sessions_of(username)]
        for hashed in hashes:
            self._store.delete_session(hashed)
        for hashed in hashes:
            for connection_id in self._connections.of_session(hashed):
                self._batch.hold_close(connection_id, reason)
            if self._config.cluster:
                self._batch.hold_close(RemoteSession(hashed), reason)
            self.end_session(hashed)

    def evict(self, username: str, *, keep: bytes) -> None:
        """Beyond ``max_sessions_per_user``, end the least recently used sessions."""
        sessions = self._store.sessions_of(username)
        excess = len(sessions) - self._config.max_sessions_per_user
        if excess <= 0:
            return
        by_use = sorted(
            sessions, key=lambda s: (self._touches.get(s.token_hash, s.last_used_at), s.created_at)
        )
        evicted = [s.token_hash for s in by_use if s.token_hash != keep][:excess]
        for hashed in evicted:  # every write first (see end_sessions)
            self._store.delete_session(hashed)
        for hashed in evicted:
            self.end_session(hashed)
            self._stats.sessions_evicted += 1

    def expire(self, wall: float) -> None:
        """End the sessions unused for ``session_lifetime`` or older than
        ``session_max_age`` at ``wall`` (the sweep).

        Raises:
            StoreUnavailableError: from the store (the next sweep tries again).
        """
        # Resumes not written yet count as use: a session resumed a moment ago must
        # not expire for want of its touch.
        self.flush_touches()
        # Sessions in use are touched first, so that a connection that stays up for
        # longer than the lifetime keeps its session.
        for hashed in self._connections.sessions():
            self._store.touch_session(hashed, wall)
        self._stats.sessions_expired += self._store.delete_sessions_unused_since(
            wall - self._config.session_lifetime
        )
        too_old = self._store.delete_sessions_created_before(wall - self._config.session_max_age)
        self._stats.sessions_expired += len(too_old)
        for hashed in too_old:  # in use, maybe: its connections are logged out
            self.end_session(hashed)

    # --- "last used" --------------------------------------------------------------------

    def touched(self, token_hash: bytes, wall: float, now: float) -> None:
        """The session was resumed at ``wall``: written within SESSION_TOUCH_DELAY
        (a resume needs no write)."""
        self._touches[token_hash] = wall
        self._timers.arm(ServerTimer.SESSION_TOUCH, now + SESSION_TOUCH_DELAY)

    def last_used(self, session: LoginSession) -> float:
        """When ``session`` was last used, a resume not written yet included."""
        return max(session.last_used_at, self._touches.get(session.token_hash, 0.0))

    def flush_touches(self) -> None:
        """Write the "last used" time of the sessions resumed lately, in this batch
        (the SESSION_TOUCH timer)."""
        self._timers.cancel(ServerTimer.SESSION_TOUCH)
        touches, self._touches = self._touches, {}
        try:
            for hashed, when in touches.items():
                self._store.touch_session(hashed, when)
                self._touching[hashed] = when
        except StoreUnavailableError as failure:
            self._stats.note_store_failure(failure)
            self._touches = {**touches, **self._touches}
            self._timers.set_after(ServerTimer.SESSION_TOUCH, SESSION_TOUCH_DELAY)
        except Exception as exc:
            self._stats.note_internal_error(exc)

    def touches_committed(self) -> None:
        """The batch is durable: its touches are written."""
        self._touching.clear()

    def touches_lost(self) -> None:
        """The batch was lost: its touches wait to be written again."""
        self._touches = {**self._touching, **self._touches}
        self._touching.clear()
        if self._touches:
            self._timers.arm_after(ServerTimer.SESSION_TOUCH, SESSION_TOUCH_DELAY)
