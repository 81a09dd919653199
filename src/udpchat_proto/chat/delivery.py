"""The delivery window of one server connection: what is pushed and not yet acknowledged.

The store holds, for each login session, the messages it has not acknowledged
(its cursors). A connection carries at most ``size`` of them at once: the
:class:`DeliveryWindow` decides which messages to push and when, and the server
does the I/O (reads the store, sends the pushes). It is pure: it is tested with
literal inputs.

The table is :data:`MACHINE`; ``docs/STATES.md`` draws it ("delivery window"),
generated from it by ``tools/state_diagrams.py``. The states that matter:

* **BACKLOG**: the session has messages in the store that are not in flight here.
  The server refills from the store (oldest first) whenever at most half the
  window is in flight; a new message waits its turn in the store, behind them.
* **LIVE**: everything stored was pushed (the ``caught_up`` push says so): a new
  message is pushed at once, unless the window is full (then it falls behind).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from ..errors import LocalProtocolError
from ..statemachine import IdentityEnum, StateMachine
from .messages import ChatMessage

__all__ = ["MACHINE", "DeliveryInput", "DeliveryState", "DeliveryWindow"]


class DeliveryState(IdentityEnum):
    """Where a connection's deliveries stand."""

    IDLE = "idle"
    """Not logged in: nothing to deliver."""
    BACKLOG = "backlog"
    """The store holds messages for the session that are not in flight here."""
    LIVE = "live"
    """Caught up: every stored message was pushed; new ones go out at once."""


class DeliveryInput(IdentityEnum):
    """What moves a delivery window from one state to another."""

    START = "start"
    """The connection logged in (or resumed) a session."""
    STOP = "stop"
    """It logged out, or its session ended."""
    CAUGHT_UP = "caught_up"
    """A refill found the end of what the store holds."""
    FELL_BEHIND = "fell_behind"
    """A new message found the window full, or a push was taken back."""


_S, _I = DeliveryState, DeliveryInput

# The states the per-message path tests, as module constants: compiled, a static
# load, where ``DeliveryState.LIVE`` is an attribute lookup on a Python class.
_IDLE: Final = DeliveryState.IDLE
_BACKLOG: Final = DeliveryState.BACKLOG
_LIVE: Final = DeliveryState.LIVE

MACHINE: Final = StateMachine(
    name="delivery window",
    initial=(_S.IDLE,),
    transitions={
        (_S.IDLE, _I.START): _S.BACKLOG,
        (_S.BACKLOG, _I.START): _S.BACKLOG,
        (_S.LIVE, _I.START): _S.BACKLOG,
        (_S.BACKLOG, _I.CAUGHT_UP): _S.LIVE,
        (_S.LIVE, _I.FELL_BEHIND): _S.BACKLOG,
        (_S.BACKLOG, _I.FELL_BEHIND): _S.BACKLOG,
        (_S.BACKLOG, _I.STOP): _S.IDLE,
        (_S.LIVE, _I.STOP): _S.IDLE,
        (_S.IDLE, _I.STOP): _S.IDLE,
    },
)
"""The delivery window's machine."""


class DeliveryWindow:
    """The pushed-but-unacknowledged messages of one connection.

    Args:
        size: most messages in flight at once (``ServerConfig.delivery_window``).
    """

    __slots__ = ("_in_flight", "size", "state")

    def __init__(self, size: int) -> None:
        self.size = size
        self.state = DeliveryState.IDLE
        self._in_flight: dict[bytes, None] = {}
        """Ids pushed and not yet acknowledged (an ordered set)."""

    def __len__(self) -> int:
        return len(self._in_flight)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._in_flight

    def _input(self, event: DeliveryInput) -> None:
        self.state = MACHINE.next(self.state, event)

    def start(self) -> None:
        """A session begins on the connection: start from its backlog, empty."""
        self._in_flight.clear()
        self._input(DeliveryInput.START)

    def stop(self) -> None:
        """The session ends on the connection: forget what was in flight."""
        self._in_flight.clear()
        self._input(DeliveryInput.STOP)

    @property
    def wants_refill(self) -> bool:
        """Whether to read the store now: behind, and at most half the window in flight."""
        return self.state is _BACKLOG and len(self._in_flight) <= self.size // 2

    def refill(self, pending: Sequence[ChatMessage]) -> tuple[list[ChatMessage], bool]:
        """Take the store's answer to ``pending_deliveries(limit=size)``.

        Args:
            pending: the session's oldest unacknowledged messages, at most ``size``
                (those already in flight among them).

        Returns:
            The messages to push now (marked in flight), and whether that reached
            the end of the backlog (the window is then LIVE: push ``caught_up``).

        Raises:
            LocalProtocolError: the window is not behind (see :attr:`wants_refill`).
        """
        if self.state is not _BACKLOG:
            raise LocalProtocolError(f"delivery window: cannot refill in state {self.state.value}")
        pushed: list[ChatMessage] = []
        for message in pending:
            if message.id in self._in_flight:
                continue
            if len(self._in_flight) >= self.size:
                return pushed, False
            self._in_flight[message.id] = None
            pushed.append(message)
        if len(pending) >= self.size:
            return pushed, False
        self._input(DeliveryInput.CAUGHT_UP)
        return pushed, True

    def offer(self, message: ChatMessage) -> bool:
        """A new message for this connection's user was just stored.

        Returns:
            True to push it now (LIVE with room: everything older is in flight, so
            the order holds); False if it must wait its turn in the store.
        """
        if self.state is _LIVE and len(self._in_flight) < self.size:
            self._in_flight[message.id] = None
            return True
        if self.state is _LIVE:
            self._input(DeliveryInput.FELL_BEHIND)
        return False

    def acknowledge(self, message_ids: Iterable[bytes]) -> None:
        """The client acknowledged these (unknown ids are ignored)."""
        for message_id in message_ids:
            self._in_flight.pop(message_id, None)

    def take_back(self, message_id: bytes) -> None:
        """A push never left (its batch was lost): the store pushes it again if it
        holds it."""
        self._in_flight.pop(message_id, None)
        self.fall_behind()

    def fall_behind(self) -> None:
        """The store may hold what is not in flight (a push taken back, a cursor
        that could not move): read it again at the next refill."""
        if self.state is not _IDLE:
            self._input(DeliveryInput.FELL_BEHIND)
