"""The chat server's own timers: a table of named deadlines, in the manner of
:mod:`udpchat_proto.transport.states`.

The transport keeps each connection's timers; the chat layer has four of its own,
one each, server-wide. :meth:`ServerTimers.earliest` is what they add to
``ChatServer.get_timer``; ``ChatServer.handle_timer`` fires the due ones in the
order of :class:`ServerTimer`. Every deadline is on the monotonic clock (the
``now`` each call passes), never the wall clock: an NTP step moves none of them.
"""

from __future__ import annotations

from ..statemachine import IdentityEnum

__all__ = ["ServerTimer", "ServerTimers"]


class ServerTimer(IdentityEnum):
    """The server's named deadlines, in the order they fire when due together."""

    SWEEP = "sweep"
    """Expire login sessions, delete old messages (retention), prune the rate
    limiters (``ServerConfig.session_sweep_interval``)."""
    SESSION_TOUCH = "session_touch"
    """Write the "last used" time of the sessions resumed lately
    (``SESSION_TOUCH_DELAY`` after the first of them)."""
    CURSOR_WRITE = "cursor_write"
    """Write the deferred acknowledgements (``CURSOR_WRITE_DELAY`` after the first)."""
    STORE_RETRY = "store_retry"
    """Refill from the store the delivery windows whose pushes a lost batch (or a
    failed read) dropped (``STORE_RETRY_INTERVAL`` after it)."""


class ServerTimers:
    """The armed deadlines of :class:`ServerTimer`, and the latest ``now``."""

    __slots__ = ("_deadlines", "now")

    def __init__(self) -> None:
        self._deadlines: dict[ServerTimer, float] = {}
        self.now = 0.0
        """The latest ``now`` (monotonic seconds) the server was given: what a
        deadline set where no ``now`` is passed (a close, a commit) counts from."""

    def get(self, timer: ServerTimer) -> float | None:
        """The deadline of ``timer``, or None when it is not armed."""
        return self._deadlines.get(timer)

    def set(self, timer: ServerTimer, deadline: float) -> None:
        """Arm ``timer`` for ``deadline`` (replacing the one it had)."""
        self._deadlines[timer] = deadline

    def set_after(self, timer: ServerTimer, delay: float) -> None:
        """Arm ``timer`` for ``delay`` seconds after :attr:`now` (replacing it)."""
        self._deadlines[timer] = self.now + delay

    def arm(self, timer: ServerTimer, deadline: float) -> None:
        """Arm ``timer`` for ``deadline`` unless it is armed already: the first of
        several reasons sets when it fires."""
        self._deadlines.setdefault(timer, deadline)

    def arm_after(self, timer: ServerTimer, delay: float) -> None:
        """:meth:`arm` for ``delay`` seconds after :attr:`now`."""
        self._deadlines.setdefault(timer, self.now + delay)

    def cancel(self, timer: ServerTimer) -> None:
        """Disarm ``timer`` (nothing happens if it is not armed)."""
        self._deadlines.pop(timer, None)

    def earliest(self) -> float | None:
        """The earliest armed deadline, or None."""
        return min(self._deadlines.values()) if self._deadlines else None

    def due(self, timer: ServerTimer, now: float) -> bool:
        """Whether ``timer`` is armed for ``now`` or earlier."""
        deadline = self._deadlines.get(timer)
        return deadline is not None and deadline <= now

    def pop_due(self, now: float) -> ServerTimer | None:
        """Disarm and return the first timer (in :class:`ServerTimer`'s order) due
        at ``now``, or None. Asked again after each one fires, since firing one
        may disarm or re-arm another."""
        for timer in ServerTimer:
            if self.due(timer, now):
                del self._deadlines[timer]
                return timer
        return None
