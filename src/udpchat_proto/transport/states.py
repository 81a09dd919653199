"""The connection state machine and the named timers (h11 ``_state.py`` style).

The table is :data:`TRANSITIONS`; ``docs/STATES.md`` draws it ("transport
connection"), generated from it by ``tools/state_diagrams.py``.

A client starts in INITIAL; a server connection is born in HANDSHAKE (half-open:
response sent, the client's first packet not yet seen). CLOSING sends a CLOSE
frame and answers further packets with it; DRAINING sends nothing (RFC 9000,
section 10.2). Both last three RTOs so late packets find the connection.
"""

from __future__ import annotations

from typing import Final

from ..statemachine import IdentityEnum, StateMachine

__all__ = [
    "END_STATES",
    "MACHINE",
    "TRANSITIONS",
    "Timer",
    "TransportInput",
    "TransportState",
    "transition",
]


class TransportState(IdentityEnum):
    """Where a connection is in its life."""

    INITIAL = "initial"
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSING = "closing"
    DRAINING = "draining"
    CLOSED = "closed"


class TransportInput(IdentityEnum):
    """What moves a connection from one state to another."""

    CONNECT = "connect"
    HANDSHAKE_DONE = "handshake_done"
    KEY_MISMATCH = "key_mismatch"
    CLOSE_LOCAL = "close_local"
    VIOLATION = "violation"
    CLOSE_RECEIVED = "close_received"
    TIMEOUT = "timeout"
    CLOSE_TIMER = "close_timer"


S = TransportState
I = TransportInput  # noqa: E741

#: ``(state, input) -> next state``; a pair not listed is not allowed.
TRANSITIONS: Final[dict[tuple[TransportState, TransportInput], TransportState]] = {
    (S.INITIAL, I.CONNECT): S.HANDSHAKE,
    (S.INITIAL, I.CLOSE_LOCAL): S.CLOSED,
    (S.HANDSHAKE, I.HANDSHAKE_DONE): S.ESTABLISHED,
    (S.HANDSHAKE, I.KEY_MISMATCH): S.CLOSED,
    (S.HANDSHAKE, I.TIMEOUT): S.CLOSED,
    (S.HANDSHAKE, I.CLOSE_LOCAL): S.CLOSED,
    (S.ESTABLISHED, I.CLOSE_LOCAL): S.CLOSING,
    (S.ESTABLISHED, I.VIOLATION): S.CLOSING,
    (S.ESTABLISHED, I.CLOSE_RECEIVED): S.DRAINING,
    (S.ESTABLISHED, I.TIMEOUT): S.CLOSED,
    (S.CLOSING, I.CLOSE_RECEIVED): S.DRAINING,
    (S.CLOSING, I.CLOSE_TIMER): S.CLOSED,
    (S.DRAINING, I.CLOSE_TIMER): S.CLOSED,
}

#: States in which the connection is over for the application.
END_STATES: Final = frozenset({S.CLOSING, S.DRAINING, S.CLOSED})

MACHINE: Final = StateMachine(
    name="transport connection",
    initial=(S.INITIAL, S.HANDSHAKE),
    transitions=TRANSITIONS,
    end_states=END_STATES,
)
"""The transport connection's machine (a client starts in INITIAL, a server
connection in HANDSHAKE)."""

transition: Final = MACHINE.next
"""The state after an input (raises ``LocalProtocolError`` for a pair not allowed)."""


class Timer(IdentityEnum):
    """The named deadlines of a connection; the earliest one is ``get_timer()``."""

    HANDSHAKE = "handshake"
    """Client: resend the initiation (RTO with backoff)."""
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    """Give up on the handshake (both roles)."""
    RETRANSMIT = "retransmit"
    """RTO: everything in flight is lost, back off."""
    LOSS = "loss"
    """Time-threshold loss detection (RFC 9002, 6.1.2)."""
    ACK_DELAY = "ack_delay"
    """Send a delayed acknowledgement."""
    KEEPALIVE = "keepalive"
    """Nothing sent for ``keepalive_interval``: send a PING."""
    IDLE = "idle"
    """Nothing received for ``idle_timeout``: the connection is dead."""
    CLOSE = "close"
    """End of the closing or draining period."""
