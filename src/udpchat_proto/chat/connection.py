"""The chat-level state of one server connection, and its state table.

The table is :data:`MACHINE`; ``docs/STATES.md`` draws it ("server connection"),
generated from it by ``tools/state_diagrams.py``. The states:

* **ANONYMOUS**: only ``register``, ``login`` and ``resume`` are allowed.
* **LOGGED_IN**: acts as the user of one login session.
* **\\*_HASHING**: a ``register`` or ``login`` waits for its password hash (run off
  the loop); the connection's later requests wait in its queue meanwhile, so that
  they are answered in order.
* **CLOSING**: the server is closing it (abuse, a full send buffer): whatever else
  it sends is ignored until the transport says it has gone.
"""

from __future__ import annotations

from typing import Final

import attrs

from ..errors import ErrorCode
from ..ratelimit import TokenBucket
from ..statemachine import IdentityEnum, StateMachine
from ..transport import ConnectionId
from ..transport.events import Address
from . import messages as m
from .delivery import DeliveryWindow

__all__ = [
    "MACHINE",
    "ChatConnection",
    "ChatConnectionInput",
    "ChatConnectionState",
    "Queued",
    "Refusal",
]


class ChatConnectionState(IdentityEnum):
    """Whom a server connection acts as, and whether it waits for a hash."""

    ANONYMOUS = "anonymous"
    """Only ``register``, ``login`` and ``resume`` are allowed."""
    ANONYMOUS_HASHING = "anonymous_hashing"
    """Anonymous, waiting for a register's or login's password hash."""
    LOGGED_IN = "logged_in"
    """Acts as the user of one login session."""
    LOGGED_IN_HASHING = "logged_in_hashing"
    """Logged in, waiting for a password hash (a login to another session)."""
    CLOSING = "closing"
    """The server is closing it: nothing more it sends is handled."""


class ChatConnectionInput(IdentityEnum):
    """What moves a server connection from one state to another."""

    LOGIN = "login"
    """A login or resume succeeded (on a logged-in connection: a switch)."""
    LOGOUT = "logout"
    """Logout, or the session was ended elsewhere."""
    HASH_STARTED = "hash_started"
    """A register or login handed out its password hash."""
    HASH_DONE = "hash_done"
    """That hash came back."""
    CLOSE = "close"
    """The server closes the connection."""


_S, _I = ChatConnectionState, ChatConnectionInput

MACHINE: Final = StateMachine(
    name="server connection",
    initial=(_S.ANONYMOUS,),
    transitions={
        (_S.ANONYMOUS, _I.LOGIN): _S.LOGGED_IN,
        (_S.LOGGED_IN, _I.LOGIN): _S.LOGGED_IN,
        (_S.LOGGED_IN, _I.LOGOUT): _S.ANONYMOUS,
        (_S.ANONYMOUS, _I.HASH_STARTED): _S.ANONYMOUS_HASHING,
        (_S.LOGGED_IN, _I.HASH_STARTED): _S.LOGGED_IN_HASHING,
        (_S.ANONYMOUS_HASHING, _I.HASH_DONE): _S.ANONYMOUS,
        (_S.LOGGED_IN_HASHING, _I.HASH_DONE): _S.LOGGED_IN,
        # The session may end elsewhere while this connection waits for a hash.
        (_S.LOGGED_IN_HASHING, _I.LOGOUT): _S.ANONYMOUS_HASHING,
        (_S.ANONYMOUS, _I.CLOSE): _S.CLOSING,
        (_S.ANONYMOUS_HASHING, _I.CLOSE): _S.CLOSING,
        (_S.LOGGED_IN, _I.CLOSE): _S.CLOSING,
        (_S.LOGGED_IN_HASHING, _I.CLOSE): _S.CLOSING,
    },
    end_states=frozenset({_S.CLOSING}),
)
"""The server connection's machine."""

_LOGGED_IN: Final = frozenset({_S.LOGGED_IN, _S.LOGGED_IN_HASHING})
_HASHING: Final = frozenset({_S.ANONYMOUS_HASHING, _S.LOGGED_IN_HASHING})


@attrs.frozen(kw_only=True)
class Refusal:
    """A request that arrived invalid: answered in its turn with this error."""

    request_id: int
    code: ErrorCode
    message: str


Queued = m.AnsweredRequest | Refusal
"""What waits in a connection's queue: a request that gets an answer, or a refusal."""


class ChatConnection:
    """One transport connection, as the chat server sees it.

    Args:
        connection_id: the transport's id for it.
        address: where its packets come from now.
        requests: its request-rate bucket.
        window: its delivery window.
    """

    __slots__ = (
        "address",
        "connection_id",
        "deliveries",
        "has_device",
        "job_id",
        "queue",
        "requests",
        "state",
        "token_hash",
        "username",
        "violations",
    )

    def __init__(
        self,
        connection_id: ConnectionId,
        address: Address,
        *,
        requests: TokenBucket,
        window: DeliveryWindow,
    ) -> None:
        self.connection_id = connection_id
        self.address = address
        self.state = ChatConnectionState.ANONYMOUS
        self.username: str | None = None
        self.token_hash: bytes | None = None
        self.has_device: bool | None = None
        """Whether its session has device keys, once asked (None: not yet): a plaintext
        send is refused from one that has, and asking the store at every send was a
        read a message on a SQL store a round trip away."""
        self.job_id: int | None = None
        """The password hash job it waits for (in a ``*_HASHING`` state)."""
        self.queue: list[Queued] = []
        """Requests that arrived while it waited for a hash, in order (at most
        ``max_queued_requests``: a list, whose empty form costs a tenth of a
        deque's on every idle connection)."""
        self.deliveries = window
        self.violations = 0
        self.requests = requests

    def transition(self, event: ChatConnectionInput) -> None:
        """Apply an input (raises ``LocalProtocolError`` for a pair not allowed)."""
        self.state = MACHINE.next(self.state, event)

    @property
    def logged_in(self) -> bool:
        """Whether it acts as a user (hashing or not)."""
        return self.state in _LOGGED_IN

    @property
    def hashing(self) -> bool:
        """Whether it waits for a password hash (its requests queue meanwhile)."""
        return self.state in _HASHING

    @property
    def closing(self) -> bool:
        """Whether the server is closing it."""
        return self.state is ChatConnectionState.CLOSING
