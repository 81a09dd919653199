"""The interactive chat's connection: one :class:`ClientConnection` kept alive.

:class:`ChatLink` drives the sans-IO core the way aioquic's ``QuicConnectionProtocol``
drives its own: a datagram received goes into the core, then the core's events are
drained, its datagrams transmitted and its one timer re-armed. It adds what a person
at a chat needs from a connection that may drop: when the server goes away it says
so, reconnects by itself with backoff, resumes the login session (catching up on
what arrived meanwhile, with no repeat: the delivered ids carry over), and sends
again, with the same ids, the messages the server had not yet acknowledged.

It does no I/O of its own: datagrams leave through ``send``, and time and timers
come from a :class:`Scheduler` (the asyncio loop in the chat, a fake clock in
tests).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Final, Protocol

import attrs

from udpchat_proto import (
    Address,
    ClientConnection,
    CloseCode,
    Connected,
    Disconnected,
    ErrorCode,
    RandomSource,
    SystemRandomSource,
    TransportConfig,
    fingerprint,
)
from udpchat_proto import messages as m
from udpchat_proto.chat import check_text, valid_target

__all__ = ["BACKOFF_MAX", "BACKOFF_START", "ChatLink", "LinkState", "Scheduler", "TimerHandle"]

BACKOFF_START: Final = 0.5
"""Seconds before the first attempt to reconnect."""
BACKOFF_MAX: Final = 30.0
"""The longest wait between attempts (each doubles the last, with jitter)."""
TRANSPORT: Final = TransportConfig(
    handshake_timeout=5.0, idle_timeout=10.0, keepalive_interval=3.0, max_rto=5.0
)
"""A person watches the status line: a server gone is noticed within 10 s (not the
default 30), and each attempt to reach it again takes at most 5 s."""


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Time and timers (``asyncio.AbstractEventLoop`` is one)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle: ...


class LinkState(enum.Enum):
    """Where the link stands, as the status line shows it."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    """Handshake done and the login session resumed."""
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    """For good: the login session ended, the server's key changed, or close()."""


Answer = Callable[[m.Response | None], None]
"""Called with a request's answer, or None if the connection was lost first."""


@attrs.define
class _Outgoing:
    to: str
    text: str
    message_id: bytes
    answer: Answer


class ChatLink:
    """A login session's connection that heals itself.

    Args:
        servers: the server's address, or its nodes' (each attempt takes the next).
        server_key: its pinned key (a different key ends the link).
        token: the login session to resume.
        send: transmits one datagram.
        scheduler: time and timers.
        on_pushes: called with each turn's pushes, before their acknowledgements
            leave (so that what it saves is saved first).
        on_state: called when the state changes, with a detail for people.
        delivered_ids: ids already received (a re-push is acknowledged, not shown).
        random: where connection keys and backoff jitter come from.
    """

    def __init__(
        self,
        *,
        servers: list[Address],
        server_key: bytes,
        token: bytes,
        send: Callable[[bytes, Address], None],
        scheduler: Scheduler,
        on_pushes: Callable[[list[m.Push]], None],
        on_state: Callable[[LinkState, str], None],
        delivered_ids: Iterable[bytes] = (),
        random: RandomSource | None = None,
    ) -> None:
        self._servers = servers
        self._server_key = server_key
        self._token = token
        self._send = send
        self._scheduler = scheduler
        self._on_pushes = on_pushes
        self._on_state = on_state
        self._random: RandomSource = random if random is not None else SystemRandomSource()
        self._delivered: frozenset[bytes] = frozenset(delivered_ids)
        self._conn: ClientConnection | None = None
        self._answers: dict[int, Answer] = {}
        self._outbox: dict[bytes, _Outgoing] = {}
        """Messages sent and not yet answered: sent again after a reconnect."""
        self._resume_id: int | None = None
        self._timer: TimerHandle | None = None
        self._retry: TimerHandle | None = None
        self._backoff = BACKOFF_START
        self.state = LinkState.CONNECTING
        self.attempts = 0
        """Connections opened (the first included)."""

    # --- the life of the link ------------------------------------------------------------

    def start(self) -> None:
        """Open the first connection."""
        self._connect()

    def close(self) -> None:
        """End the link: a polite close datagram, no more reconnects."""
        self._cancel_timers()
        if self._conn is not None and self._conn.is_connected:
            self._conn.close(self._now())
            self._transmit()
        self._fail_pending()
        self._set_state(LinkState.ENDED, "closed")

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """Feed one datagram from the socket."""
        if self._conn is not None:
            self._conn.receive_datagram(data, addr, self._now())
            self._process()

    @property
    def unsent(self) -> int:
        """Messages sent and not yet accepted (they go again after a reconnect)."""
        return len(self._outbox)

    @property
    def connection(self) -> ClientConnection | None:
        """The current core connection (None between attempts)."""
        return self._conn

    # --- requests --------------------------------------------------------------------------

    def request(self, issue: Callable[[ClientConnection], int], answer: Answer) -> bool:
        """Send one request; ``answer`` gets its response (None if the connection is
        lost before it). False (and nothing sent) while not connected."""
        if self.state is not LinkState.CONNECTED or self._conn is None:
            return False
        self._answers[issue(self._conn)] = answer
        self._process()
        return True

    def send_message(self, to: str, text: str, answer: Answer) -> bytes:
        """Send a chat message, now or once connected again (with the same id, so
        that the server stores it once); ``answer`` gets ``MessageAccepted`` or a
        refusal.

        Raises:
            ValidationError: an invalid recipient or text (nothing is sent).
        """
        # Checked now, with the rules the server applies: a message that can never be
        # sent must not wait in the outbox for a connection.
        to = valid_target(to)
        check_text(text)
        message_id = self._random.token_bytes(16)
        outgoing = _Outgoing(to, text, message_id, answer)
        self._outbox[message_id] = outgoing
        if self.state is LinkState.CONNECTED:
            self._issue(outgoing)
            self._process()
        return message_id

    def _issue(self, outgoing: _Outgoing) -> None:
        assert self._conn is not None

        def answered(response: m.Response | None) -> None:
            if response is None:
                return  # lost with the connection: sent again after the reconnect
            self._outbox.pop(outgoing.message_id, None)
            outgoing.answer(response)

        request_id = self._conn.send_message(
            outgoing.to, outgoing.text, message_id=outgoing.message_id
        )
        self._answers[request_id] = answered

    # --- one turn ----------------------------------------------------------------------------

    def _now(self) -> float:
        return self._scheduler.time()

    def _connect(self) -> None:
        self._retry = None
        self.attempts += 1
        if self.state is LinkState.RECONNECTING:
            self._set_state(LinkState.RECONNECTING, f"trying again (attempt {self.attempts})")
        self._conn = ClientConnection(
            server_address=self._servers[(self.attempts - 1) % len(self._servers)],
            expected_server_key=self._server_key,
            config=TRANSPORT,
            random=self._random,
            delivered_ids=self._delivered,
        )
        self._conn.connect(self._now())
        self._resume_id = self._conn.resume(self._token)
        self._process()

    def _process(self) -> None:
        conn = self._conn
        if conn is None:
            return
        now = self._now()
        timer = conn.get_timer()
        if timer is not None and timer <= now:
            conn.handle_timer(now)
        pushes: list[m.Push] = []
        lost: Disconnected | None = None
        while (event := conn.next_event()) is not None:
            if isinstance(event, Connected):
                continue  # (the core checked the pinned key)
            if isinstance(event, Disconnected):
                lost = event
            elif isinstance(event, m.Response):
                self._on_response(event)
            else:
                pushes.append(event)
        if pushes:
            self._on_pushes(pushes)  # saved before the acknowledgements leave
        self._transmit()
        if lost is not None:
            self._on_lost(lost)
            return
        self._arm_timer()

    def _on_response(self, response: m.Response) -> None:
        if response.request_id == self._resume_id:
            self._resume_id = None
            if isinstance(response, m.LoggedIn):
                self._backoff = BACKOFF_START
                self._set_state(LinkState.CONNECTED, "connected")
                for outgoing in list(self._outbox.values()):
                    self._issue(outgoing)
            elif isinstance(response, m.ErrorResponse) and response.code in (
                ErrorCode.BAD_CREDENTIALS,
                ErrorCode.NOT_LOGGED_IN,
            ):
                self._end("your login session has ended: log in again")
            # else (unavailable, rate_limited ...): the connection idles; retried
            # when it drops.
            return
        answer = self._answers.pop(response.request_id, None)
        if answer is not None:
            answer(response)

    def _on_lost(self, lost: Disconnected) -> None:
        if self._conn is not None:  # carried to the next connection (not copied each turn)
            self._delivered = self._conn.delivered_ids
        self._conn = None
        self._cancel_timers()
        self._fail_pending()
        if self.state is LinkState.ENDED:
            return
        if lost.code is CloseCode.SERVER_KEY_MISMATCH:
            self._end(f"the server presented another key than {fingerprint(self._server_key)}")
            return
        delay = self._backoff * (0.8 + 0.4 * self._random.token_bytes(1)[0] / 255)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        self._set_state(
            LinkState.RECONNECTING, f"{lost.reason or 'connection lost'}; retrying in {delay:.0f} s"
        )
        self._retry = self._scheduler.call_at(self._now() + delay, self._connect)

    def _end(self, why: str) -> None:
        self._cancel_timers()
        if self._conn is not None and self._conn.is_connected:
            self._conn.close(self._now())
            self._transmit()
        self._conn = None
        self._fail_pending()
        self._set_state(LinkState.ENDED, why)

    def _fail_pending(self) -> None:
        answers, self._answers = self._answers, {}
        for answer in answers.values():
            answer(None)

    def _transmit(self) -> None:
        if self._conn is None:
            return
        for data, addr in self._conn.datagrams_to_send(self._now()):
            self._send(data, addr)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._conn is None:
            return
        when = self._conn.get_timer()
        if when is not None:
            self._timer = self._scheduler.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._process()

    def _cancel_timers(self) -> None:
        for handle in (self._timer, self._retry):
            if handle is not None:
                handle.cancel()
        self._timer = self._retry = None

    def _set_state(self, state: LinkState, detail: str) -> None:
        self.state = state
        self._on_state(state, detail)
