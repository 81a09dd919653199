"""The chat's client on asyncio: :func:`connect` and the :class:`ChatClient` it gives.

:class:`ChatClient` drives the sans-IO :class:`~udpchat_proto.ClientConnection` the way
aioquic's ``QuicConnectionProtocol`` drives its own (a datagram in, the events
drained, the datagrams out, the one timer re-armed), and adds what an application
needs from a connection that may drop:

* it reconnects by itself, with backoff, moving to the next node of a cluster;
* it resumes the login session (the server then pushes what arrived meanwhile);
* it sends again what was not answered: a ``send`` with the same message id (the
  server stores it once and answers with the first acceptance), a read as it was;
  a request that is not safe to repeat (``login``, ``invite`` ...) fails with
  :class:`~udpchat_proto.asyncio.ConnectionLostError` instead;
* it shows each delivered message once: a message is acknowledged only once the
  application asks for the next event (or closes the client), and a re-push of one
  it holds or has handled is dropped;
* it pins the server's key: given (``server_key=``), or decided at first contact
  by ``on_first_contact``; a changed key ends it with
  :class:`~udpchat_proto.asyncio.ServerKeyChangedError`;
* it encrypts end to end (:class:`~udpchat_proto.chat.ClientCrypto`): a login makes
  the device and uploads its keys, every send is encrypted (a ``devices_changed``
  refusal is re-planned and sent again, never raised), every delivered message is
  decrypted (one that cannot be is a :class:`~udpchat_proto.chat.MessageDropped`
  event, never shown), a ``device_added`` push is an event; the state is kept in
  the ``crypto_store`` given (:class:`~udpchat_proto.asyncio.MemoryCryptoStore` by
  default).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import enum
import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Final, TypeVar, cast

import attrs

from ..chat import messages as m
from ..chat.client import DELIVERED_IDS_MAX, ClientConnection
from ..chat.events import Connected, Disconnected
from ..chat.secure import ClientCrypto, MessageDropped, SendFlow, SendStep
from ..chat.validation import MESSAGE_ID_SIZE
from ..errors import ErrorCode, ProtocolError
from ..randomness import RandomSource, SystemRandomSource
from ..transport.config import TransportConfig
from ..transport.events import Address, CloseCode
from ..transport.keys import fingerprint
from .crypto import CryptoStore, CryptoWorker, MemoryCryptoStore, Slot
from .errors import (
    ClientClosedError,
    ConnectionLostError,
    RequestRefusedError,
    ServerKeyChangedError,
    ServerKeyRefusedError,
    SessionEndedError,
)

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_START",
    "TRANSPORT",
    "ChatClient",
    "ClientPush",
    "LinkState",
    "connect",
    "start",
]

BACKOFF_START: Final = 0.5
"""Seconds before the first attempt to reconnect to a node."""
BACKOFF_MAX: Final = 30.0
"""The longest wait between attempts (each doubles the last, with jitter)."""
TRANSPORT: Final = TransportConfig(
    handshake_timeout=5.0, idle_timeout=10.0, keepalive_interval=3.0, max_rto=5.0
)
"""The default transport settings: a server gone is noticed within 10 s (not the
core's 30: a client that reconnects by itself gains by knowing early), and each
attempt to reach a node takes at most 5 s before the next is tried."""

#: Requests sent again on the next connection when the answer was lost: reads, a
#: message (the server stores one id once, and the same ciphertext goes again),
#: joining a room (joining twice is joining), a claim of one-time keys (a second
#: claim only takes other keys). Anything else may have been done: its caller decides.
REPEATABLE: Final = (
    m.SendMessage,
    m.JoinRoom,
    m.GetDevices,
    m.ClaimKeys,
    m.GetMessageStatus,
    m.GetHistory,
    m.ListSessions,
    m.ListBlocked,
    m.ListInvitations,
    m.ListFriends,
    m.ListOnline,
    m.ListRooms,
    m.ListMembers,
)

R = TypeVar("R")

ClientPush = m.Push | m.DeviceAdded | MessageDropped
"""What ``async for event in client`` gives: the server's pushes (a delivered
message decrypted), a contact's new device, and a message that could not be read
(to count and log, never to show)."""


def _keys_pending(crypto: ClientCrypto) -> bool:
    """(A job of the device's thread.) Whether the device's keys wait to be uploaded."""
    return crypto.state.keys_pending


def _advance(flow: SendFlow, slot: Slot, answered: m.Response | None) -> SendStep | None:
    """(A job of the device's thread.) Give a send its answer, if any, and take its
    next step: the state saved first when the step asks (no ratchet index used
    twice), and once the send is accepted."""
    if answered is not None:
        flow.answer(answered)
    step = flow.step()
    done = step is None and isinstance(flow.result, m.MessageAccepted)
    if done or (step is not None and step.save_first):
        slot.save()
    return step


@attrs.define
class _SendHold:
    """A send: what it sends, whether it holds the device's lock (set on the
    device's thread), whether a job of it is in flight (set on the loop)."""

    to: str
    text: str
    message_id: bytes
    at: float
    held: bool = False
    pending: bool = False
    slot: Slot | None = None


@attrs.frozen
class _Delivery:
    """A delivered message to read, and the connection it came on (its
    acknowledgement goes there, if it is still the client's)."""

    conn: ClientConnection
    push: m.MessageDelivered


_Intake = _Delivery | m.Push | m.DeviceAdded
"""What waits in a client's intake."""

_READ_BATCH: Final = 256
"""Most waiting pushes one job of the device's thread reads."""


def _wall_clock() -> float:
    """Seconds since the epoch (a Megolm session's age outlives the process)."""
    return datetime.datetime.now(datetime.UTC).timestamp()


class LinkState(enum.Enum):
    """Where a :class:`ChatClient`'s connection stands."""

    CONNECTING = "connecting"
    """The first connection is being made."""
    CONNECTED = "connected"
    """Handshake done and, with a login session, the session resumed: requests flow."""
    RECONNECTING = "reconnecting"
    """The connection was lost; another is being made (requests wait)."""
    ENDED = "ended"
    """For good: closed, the server's key changed or was refused, or the login
    session ended."""


@attrs.define(eq=False)
class _Call:
    """One request of the application, from its call to its answer."""

    issue: Callable[[ClientConnection], int]
    future: asyncio.Future[m.Response]
    request: m.AnsweredRequest | None = None
    """As built on the last connection it was sent on."""


class _Endpoint(asyncio.DatagramProtocol):
    """One UDP socket, connected to one node, for one connection: what it reads goes
    to its connection only (a late datagram of an older one never reaches the next)."""

    def __init__(self, client: ChatClient) -> None:
        self._client = client
        self.conn: ClientConnection | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.conn is not None:
            self._client._datagram(self.conn, data, (str(addr[0]), int(str(addr[1]))))

    def error_received(self, exc: Exception) -> None:
        pass  # (ICMP unreachable: the core's timers retry, then give up)


class ChatClient:
    """A connection to a chat server (or to any node of a cluster) that heals itself.

    Made by :func:`connect`. Its requests are coroutines returning the server's
    answer, typed (``await client.send("bob", "hi")`` is a
    :class:`~udpchat_proto.messages.MessageAccepted`); a refusal raises
    :class:`~udpchat_proto.asyncio.RequestRefusedError`. A request made while the
    connection is being remade waits for it. Pushes (messages, presence,
    invitations ...) come from ``async for event in client``; an event is
    acknowledged, when the server wants it (a delivered message), once the loop asks
    for the next one, or at :meth:`close`: handle it before that.
    """

    def __init__(
        self,
        servers: Sequence[Address],
        *,
        server_key: bytes | None,
        on_first_contact: Callable[[bytes], bool] | None,
        token: bytes | None,
        delivered_ids: Iterable[bytes],
        config: TransportConfig,
        random: RandomSource,
        on_state: Callable[[LinkState, str], None] | None,
        crypto_store: CryptoStore | None = None,
        wall_clock: Callable[[], float] = _wall_clock,
    ) -> None:
        if not servers:
            raise ValueError("connect() needs at least one server address")
        self._loop = asyncio.get_running_loop()
        self._servers = list(servers)
        self._server_key = server_key
        self._on_first_contact = on_first_contact
        self._token = token
        self._config = config
        self._random = random
        self._on_state = on_state
        self._delivered: dict[bytes, None] = dict.fromkeys(delivered_ids)
        """Delivered ids the application has handled (acknowledged)."""
        self._held: set[bytes] = set()
        """Delivered ids queued for the application or being handled: not acknowledged."""
        self._pushes: collections.deque[ClientPush] = collections.deque()
        self._handling: list[ClientPush] = []
        """The events last handed to the application (acknowledged when it asks again)."""
        self._wakeup = asyncio.Event()
        self._waiting: collections.deque[_Call] = collections.deque()
        """Requests to send once connected."""
        self._sent: dict[int, _Call] = {}
        """Requests sent on this connection, by request id."""
        self._conn: ClientConnection | None = None
        self._endpoint: asyncio.DatagramTransport | None = None
        self._resume_id: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._attempt_task: asyncio.Task[None] | None = None
        self._backoff = BACKOFF_START
        self._failures = 0
        self._ready = False
        self._first_ready = asyncio.Event()
        self._failure: ProtocolError | None = None
        self.state = LinkState.CONNECTING
        """Where the connection stands."""
        self.attempts = 0
        """Connections opened (the first included)."""
        self.node: Address = self._servers[0]
        """The node of the current (or last) connection."""
        self._device = CryptoWorker(
            crypto_store if crypto_store is not None else MemoryCryptoStore()
        )
        self._intake: collections.deque[_Intake] = collections.deque()
        """Pushes waiting for the device (a delivery to read, a device to pin), and
        those that came after them: taken in order by ``_reader``."""
        self._reader: asyncio.Task[None] | None = None
        self._device_work = asyncio.Lock()
        """Held by what advances the state across awaits (a send, an upload)."""
        self._low: m.OneTimeKeysLow | None = None
        self._wall_clock = wall_clock
        self.crypto_drops = 0
        """Deliveries (or device records) that could not be read."""

    # --- what the application reads ---------------------------------------------------------

    @property
    def server_key(self) -> bytes | None:
        """The server's pinned public key (given, or accepted at first contact)."""
        return self._server_key

    @property
    def token(self) -> bytes | None:
        """The login session's token, to persist and pass back to :func:`connect`."""
        return self._token

    @property
    def username(self) -> str | None:
        """Whom the client acts as (after a login or resume), else None."""
        return self._conn.username if self._conn is not None else None

    @property
    def delivered_ids(self) -> frozenset[bytes]:
        """Ids of the delivered messages the application handled: persist them and pass
        them back (``delivered_ids=``) so a re-push after a crash is not shown again."""
        return frozenset(self._delivered)

    @property
    def pending(self) -> int:
        """Requests not answered yet (waiting for a connection, or sent)."""
        return len(self._waiting) + len(self._sent)

    @property
    def connection(self) -> ClientConnection | None:
        """The current core connection (None between attempts), for diagnostics."""
        return self._conn

    # --- the life of the client ------------------------------------------------------------

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the first connection is made (and its login session resumed).

        Raises:
            TimeoutError: no node answered in time (the client goes on trying).
            ProtocolError: the client ended first (its reason).
        """
        async with asyncio.timeout(timeout):
            await self._first_ready.wait()
        if self._failure is not None and not self._ready:
            raise self._failure

    def close(self) -> None:
        """Acknowledge the events being handled, close the connection politely (one
        datagram, not waited for) and end the client: unanswered requests raise
        :class:`~udpchat_proto.asyncio.ClientClosedError`, ``async for`` stops. The
        login session stays (resume it with :attr:`token`). Closing twice is harmless."""
        if self.state is LinkState.ENDED:
            return
        self._acknowledge_handled()
        self._end(ClientClosedError("the client was closed"), "closed")

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()

    def __aiter__(self) -> ChatClient:
        return self

    async def __anext__(self) -> ClientPush:
        """The next push, in the order the server sent them.

        Raises:
            StopAsyncIteration: the client was closed.
            ProtocolError: the client ended for another reason
                (:class:`~udpchat_proto.asyncio.ServerKeyChangedError` ...).
        """
        try:
            (push,) = await self._take(1)
        except ClientClosedError:
            raise StopAsyncIteration from None
        return push

    async def next_events(self) -> list[ClientPush]:
        """Every push waiting (at least one: it waits for one), oldest first; they are
        acknowledged when this (or ``async for``) is called again, or at :meth:`close`.
        For an application that keeps a batch at once (one write for many messages).

        Raises:
            ProtocolError: the client ended
                (:class:`~udpchat_proto.asyncio.ClientClosedError` once closed).
        """
        return await self._take(None)

    async def _take(self, most: int | None) -> list[ClientPush]:
        self._acknowledge_handled()
        while not self._pushes:
            if self._failure is not None:
                raise self._failure
            self._wakeup.clear()
            await self._wakeup.wait()
        count = len(self._pushes) if most is None else min(most, len(self._pushes))
        taken = [self._pushes.popleft() for _ in range(count)]
        self._handling = taken
        return taken

    # --- requests ---------------------------------------------------------------------------

    async def request(self, issue: Callable[[ClientConnection], int]) -> m.Response:
        """Send one request, built by ``issue`` on the current connection (one of its
        command methods), and return its answer, refusals included (untyped: the
        other methods are typed and raise on a refusal).

        ``issue`` is called again for each connection the request is sent on: a
        message's id must be drawn outside it (as :meth:`send` does).
        """
        if self._failure is not None:
            raise self._failure
        call = _Call(issue, self._loop.create_future())
        if self._ready and self._conn is not None:
            self._issue(call)
            self._process()
        else:
            self._waiting.append(call)
        return await call.future

    async def _expect(self, issue: Callable[[ClientConnection], int], kind: type[R]) -> R:
        answer = await self.request(issue)
        if isinstance(answer, m.ErrorResponse):
            raise RequestRefusedError(answer)
        if not isinstance(answer, kind):
            raise ProtocolError(f"expected {kind.__name__}, the server answered {answer!r}")
        return answer

    async def register(self, username: str, password: str) -> m.Ok:
        """Create an account (not logged in: :meth:`login` then)."""
        return await self._expect(lambda c: c.register(username, password), m.Ok)

    async def login(self, username: str, password: str) -> m.LoggedIn:
        """Open a login session; the client resumes it on every later connection.
        The session is a new device: its keys are made, saved and uploaded."""
        logged_in = await self._expect(lambda c: c.login(username, password), m.LoggedIn)
        user, token = logged_in.username, logged_in.token
        async with self._device_work, self._device.holding(user, token) as slot:
            await self._upload(await self._device.run(slot.create, user, token))
            await self._device.run(slot.save)
        return logged_in

    async def logout(self) -> m.Ok:
        """End this login session (and its device: a later login is a new one)."""
        answer = await self._expect(lambda c: c.logout(), m.Ok)
        await self._device.run(self._forget_device)
        return answer

    def _forget_device(self) -> None:
        """(A job of the device's thread.) Remove the state, under the lock (taken,
        or re-entered: a send of this client may hold it, and a second flock of
        one process would wait on itself)."""
        holder = self._device.holder
        with holder.hold(None, None):
            holder.store.forget()

    async def send(self, to: str, text: str) -> m.MessageAccepted:
        """Send ``text``, encrypted end to end, to a friend or a room (``#name``); the
        acceptance once stored. Sent again, with the same id and ciphertext, on the
        next connection if the answer was lost; planned again, unseen, when the
        conversation's devices changed. ``no_device`` (a friend logged out
        everywhere) is a :class:`~udpchat_proto.asyncio.RequestRefusedError`.

        Raises:
            ValidationError: an empty text, or one over 4096 bytes.
            DeviceTrustError: a device of the conversation was stated with other keys.
        """
        message_id = self._random.token_bytes(MESSAGE_ID_SIZE)
        run = self._device.run
        hold = _SendHold(to=to, text=text, message_id=message_id, at=self._wall_clock())
        async with self._device_work:
            try:
                # The lock is held from the first job to the last (the requests
                # between them included); one job of the device's thread per
                # round trip: take the answer, make the next request, save what
                # must be saved before it leaves.
                user, token = self.username, self._token
                hold.pending = True
                begun = await run(self._begin_send, hold, user, token)
                hold.pending = False
                if begun is None and token is not None:
                    # A session resumed with no state yet: its device once connected.
                    await self._first_ready.wait()
                    await self._keep_device_held()
                    hold.pending = True
                    begun = await run(self._begin_send, hold, self.username, self._token)
                    hold.pending = False
                if begun is None:
                    raise SessionEndedError("this client has no device: log in")
                crypto, started = begun
                if started is None:
                    # Its keys' upload was lost with a connection (this send may
                    # have waited for the next one): the server takes no send from
                    # a device whose keys it does not hold.
                    await self._upload(crypto)
                    hold.pending = True
                    started = await run(functools.partial(self._first_step, uploaded=True), hold)
                    hold.pending = False
                flow, step = started
                while step is not None:
                    answered = await self.request(step.issue)
                    hold.pending = True
                    step = await run(self._step_send, hold, flow, answered)
                    hold.pending = False
            finally:
                if hold.pending or hold.held:  # (cancelled, or a request failed)
                    self._device.submit(self._end_send, hold)
        answer = flow.result
        if isinstance(answer, m.ErrorResponse):
            raise RequestRefusedError(answer)
        if not isinstance(answer, m.MessageAccepted):
            raise ProtocolError(f"expected MessageAccepted, the server answered {answer!r}")
        return answer

    def _begin_send(
        self, hold: _SendHold, username: str | None, token: bytes | None
    ) -> tuple[ClientCrypto, tuple[SendFlow, SendStep | None] | None] | None:
        """(A job of the device's thread.) Take the lock, and the send's first step
        unless the device's keys wait to be uploaded first (then None: upload, then
        :meth:`_first_step`); None, the lock left, when there is no device."""
        holder = self._device.holder
        hold.slot = holder.enter(username, token)
        hold.held = True
        try:
            crypto = hold.slot.crypto
            if crypto is None:
                self._end_send(hold)
                return None
            if crypto.state.keys_pending:
                return crypto, None
        except BaseException:
            self._end_send(hold)
            raise
        return crypto, self._first_step(hold)

    def _first_step(
        self, hold: _SendHold, *, uploaded: bool = False
    ) -> tuple[SendFlow, SendStep | None]:
        """(A job of the device's thread, the lock held.) The send's flow and its
        first step; ``uploaded``: the state is saved first (the upload's)."""
        assert hold.slot is not None and hold.slot.crypto is not None
        try:
            if uploaded:
                hold.slot.save()
            flow = hold.slot.crypto.send(hold.to, hold.text, hold.message_id, hold.at)
            step = _advance(flow, hold.slot, None)
        except BaseException:
            self._end_send(hold)
            raise
        if step is None:
            self._end_send(hold)
        return flow, step

    def _step_send(self, hold: _SendHold, flow: SendFlow, answered: m.Response) -> SendStep | None:
        """(A job of the device's thread.) The send's next step; the lock left
        after the last (or a failure)."""
        assert hold.slot is not None
        try:
            step = _advance(flow, hold.slot, answered)
        except BaseException:
            self._end_send(hold)
            raise
        if step is None:
            self._end_send(hold)
        return step

    def _end_send(self, hold: _SendHold) -> None:
        """(A job of the device's thread.) Leave the lock a send took, if held."""
        if hold.held:
            hold.held = False
            hold.slot = None
            self._device.holder.exit()

    async def _upload(self, crypto: ClientCrypto) -> None:
        run = self._device.run
        while (issue := await run(crypto.upload)) is not None:
            await run(crypto.keys_stored, await self._expect(issue, m.KeysStored))

    async def _keep_device(self) -> None:
        """After a resume: make the device of a session logged in elsewhere (no
        state yet), and upload the one-time keys the server asked for."""
        async with self._device_work:
            await self._keep_device_held()

    async def _keep_device_held(self) -> None:
        run = self._device.run
        async with self._device.holding(self.username, self._token) as slot:
            if slot.crypto is None and self._token is not None and self.username:
                await self._upload(await run(slot.create, self.username, self._token))
                await run(slot.save)
            elif slot.crypto is not None and await run(_keys_pending, slot.crypto):
                # The upload made with the device was lost with its connection.
                await self._upload(slot.crypto)
                await run(slot.save)
            low, self._low = self._low, None
            crypto = slot.crypto
            if low is not None and crypto is not None:
                await run(crypto.device_push, low)
                await self._upload(crypto)
                await run(slot.save)

    def _start_device_work(self) -> None:
        task = self._loop.create_task(self._keep_device())
        # (a failure here is a lost connection or a refusal: the next resume retries)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def message_status(self, message_id: bytes) -> m.MessageStatus:
        """Whether a direct message you sent was delivered."""
        return await self._expect(lambda c: c.message_status(message_id), m.MessageStatus)

    async def history(
        self, peer: str, limit: int = 20, *, before: bytes | None = None
    ) -> m.History:
        """The last ``limit`` messages with a user or in a room (before ``before``),
        decrypted (one that cannot be read is left out and counted)."""
        answer = await self._expect(lambda c: c.get_history(peer, limit, before=before), m.History)
        if not any(message.encrypted for message in answer.messages):
            return answer
        shown, dropped = await self._device.run(
            self._read_history, self.username, self._token, answer.messages
        )
        self.crypto_drops += dropped
        return attrs.evolve(answer, messages=tuple(shown))

    def _read_history(
        self, username: str | None, token: bytes | None, messages: tuple[m.ChatMessage, ...]
    ) -> tuple[list[m.ChatMessage], int]:
        """(A job of the device's thread.) A history page decrypted; how many of it
        could not be read."""
        with self._device.holder.hold(username, token) as slot:
            if slot.crypto is None:
                shown = [message for message in messages if not message.encrypted]
                return shown, len(messages) - len(shown)
            readable, drops = slot.crypto.read_history(messages)
            return list(readable), len(drops)

    async def invite(self, username: str) -> m.Ok:
        """Invite ``username`` to be friends."""
        return await self._expect(lambda c: c.invite(username), m.Ok)

    async def accept(self, username: str) -> m.Ok:
        """Accept ``username``'s invitation."""
        return await self._expect(lambda c: c.accept_invitation(username), m.Ok)

    async def decline(self, username: str) -> m.Ok:
        """Decline ``username``'s invitation."""
        return await self._expect(lambda c: c.decline_invitation(username), m.Ok)

    async def cancel_invitation(self, username: str) -> m.Ok:
        """Withdraw the invitation sent to ``username``."""
        return await self._expect(lambda c: c.cancel_invitation(username), m.Ok)

    async def unfriend(self, username: str) -> m.Ok:
        """Stop being friends with ``username``."""
        return await self._expect(lambda c: c.unfriend(username), m.Ok)

    async def block(self, username: str) -> m.Ok:
        """Block ``username``."""
        return await self._expect(lambda c: c.block(username), m.Ok)

    async def unblock(self, username: str) -> m.Ok:
        """Stop blocking ``username``."""
        return await self._expect(lambda c: c.unblock(username), m.Ok)

    async def join(self, room: str) -> m.Ok:
        """Join (creating it if needed) ``room`` (``#name``)."""
        return await self._expect(lambda c: c.join_room(room), m.Ok)

    async def leave(self, room: str) -> m.Ok:
        """Leave ``room``."""
        return await self._expect(lambda c: c.leave_room(room), m.Ok)

    async def friends(self) -> m.Friends:
        """The friends, with their presence."""
        return await self._expect(lambda c: c.list_friends(), m.Friends)

    async def invitations(self) -> m.Invitations:
        """Incoming and outgoing invitations."""
        return await self._expect(lambda c: c.list_invitations(), m.Invitations)

    async def online(self) -> m.OnlineUsers:
        """Who is online (whom you may see)."""
        return await self._expect(lambda c: c.list_online(), m.OnlineUsers)

    async def rooms(self) -> m.Rooms:
        """This user's rooms."""
        return await self._expect(lambda c: c.list_rooms(), m.Rooms)

    async def members(self, room: str) -> m.RoomMembers:
        """The members of ``room``, with their presence."""
        return await self._expect(lambda c: c.list_members(room), m.RoomMembers)

    async def blocked(self) -> m.Blocked:
        """Whom you block."""
        return await self._expect(lambda c: c.list_blocked(), m.Blocked)

    async def sessions(self) -> m.Sessions:
        """The user's login sessions."""
        return await self._expect(lambda c: c.list_sessions(), m.Sessions)

    # --- one connection ---------------------------------------------------------------------

    def _start(self) -> None:
        self._attempt_task = self._loop.create_task(self._attempt())

    async def _attempt(self) -> None:
        self._retry = None
        self.attempts += 1
        self.node = self._servers[(self.attempts - 1) % len(self._servers)]
        host, port = self.node
        try:
            # Connected: asyncio resolves the name, and the socket hears that node only.
            endpoint, protocol = await self._loop.create_datagram_endpoint(
                lambda: _Endpoint(self), remote_addr=(host, port)
            )
        except OSError as exc:  # (a name that does not resolve, no route ...)
            if self.state is not LinkState.ENDED:
                self._lost(f"{host}:{port}: {exc}")
            return
        if self.state is LinkState.ENDED:  # closed meanwhile
            endpoint.close()
            return
        peer = endpoint.get_extra_info("peername")
        conn = protocol.conn = ClientConnection(
            server_address=(str(peer[0]), int(peer[1])),
            expected_server_key=self._server_key,
            config=self._config,
            random=self._random,
            delivered_ids=self._delivered,
            explicit_acks=True,
        )
        self._conn = conn
        self._endpoint = endpoint
        conn.connect(self._loop.time())
        self._process()

    def _datagram(self, conn: ClientConnection, data: bytes, addr: Address) -> None:
        if conn is self._conn:
            conn.receive_datagram(data, addr, self._loop.time())
            self._process()

    def _process(self) -> None:
        """One turn: fire a due timer, act on the core's events, send, re-arm."""
        conn = self._conn
        if conn is None:
            return
        now = self._loop.time()
        timer = conn.get_timer()
        if timer is not None and timer <= now:
            conn.handle_timer(now)
        lost: Disconnected | None = None
        while (event := conn.next_event()) is not None:
            if isinstance(event, Connected):
                self._on_connected(conn, event.server_key)
            elif isinstance(event, Disconnected):
                lost = event
            elif isinstance(event, m.Response):
                self._on_response(event)
            else:
                self._on_push(conn, event)
            if self._conn is not conn:
                return  # (ended by an event: nothing more to do with it)
        for device_push in conn.take_device_pushes():
            self._on_device_push(device_push)
        self._transmit()
        if lost is not None:
            self._on_disconnected(lost)
            return
        self._arm_timer()

    def _on_connected(self, conn: ClientConnection, key: bytes) -> None:
        if self._server_key is None:
            try:
                accepted = self._on_first_contact is None or bool(self._on_first_contact(key))
            except Exception as exc:  # the application's callback: its failure says no
                self._end(ServerKeyRefusedError(f"on_first_contact raised {exc!r}"), "refused")
                return
            if not accepted:
                why = f"the server's key {fingerprint(key)} was refused at first contact"
                self._end(ServerKeyRefusedError(why), why)
                return
            self._server_key = key  # pinned: every later connection expects it
        if self._token is not None:
            self._resume_id = conn.resume(self._token)
        else:
            self._became_ready()

    def _became_ready(self) -> None:
        if self._token is not None:
            self._start_device_work()
        self._ready = True
        self._backoff = BACKOFF_START
        self._failures = 0
        host, port = self.node
        self._set_state(LinkState.CONNECTED, f"connected to {host}:{port}")
        self._first_ready.set()
        waiting, self._waiting = self._waiting, collections.deque()
        for call in waiting:
            self._issue(call)

    def _issue(self, call: _Call) -> None:
        conn = self._conn
        assert conn is not None
        if call.future.done():
            return  # (cancelled by its caller while it waited)
        try:
            request_id = call.issue(conn)
        except Exception as exc:  # an invalid argument (ValidationError), or a bad issue()
            call.future.set_exception(exc)
            return
        call.request = conn.pending_request(request_id)
        self._sent[request_id] = call

    def _on_response(self, response: m.Response) -> None:
        if response.request_id == self._resume_id and self._resume_id is not None:
            self._resume_id = None
            if isinstance(response, m.LoggedIn):
                self._became_ready()
            elif isinstance(response, m.ErrorResponse) and response.code in (
                ErrorCode.BAD_CREDENTIALS,
                ErrorCode.NOT_LOGGED_IN,
            ):
                why = "the login session has ended: log in again"
                self._token = None
                self._end(SessionEndedError(why), why)
            elif self._conn is not None:
                # (unavailable, rate_limited ...): this connection is no use; the next
                # one comes after the backoff, on the next node if there is one.
                self._conn.close(self._loop.time())
            return
        call = self._sent.pop(response.request_id, None)
        if call is None:
            return
        if isinstance(response, m.LoggedIn):
            self._token = response.token
        elif isinstance(call.request, m.Logout | m.LogoutAll | m.DeleteAccount) and not (
            isinstance(response, m.ErrorResponse)
        ):
            self._token = None
        if not call.future.done():
            call.future.set_result(response)

    def _on_push(self, conn: ClientConnection, push: m.Push) -> None:
        if isinstance(push, m.MessageDelivered):
            message_id = push.message.id
            if message_id in self._delivered:
                conn.acknowledge([message_id])  # (handled; its acknowledgement was lost)
                return
            if message_id in self._held:
                return  # a re-push of one the application holds: acknowledged once handled
            # Read on the device's thread, in turn (see _read_intake); held from now
            # on, so that a re-push meanwhile is not read twice.
            self._held.add(message_id)
            self._take_in(_Delivery(conn, push))
            return
        self._take_in(push)

    def _on_device_push(self, push: m.DevicePush) -> None:
        if isinstance(push, m.OneTimeKeysLow):
            self._low = push
            self._start_device_work()
            return
        self._take_in(push)  # (pinned on the device's thread, in turn)

    def _take_in(self, item: _Intake) -> None:
        """A push, in the order the server sent it: straight to the application if
        nothing waits for the device, else behind what does."""
        if not self._intake and isinstance(item, m.Push):
            self._pushes.append(item)
            self._wakeup.set()
            return
        self._intake.append(item)
        if self._reader is None or self._reader.done():
            self._reader = self._loop.create_task(self._read_intake())

    async def _read_intake(self) -> None:
        """Take the waiting pushes in order: the deliveries read (their key shares
        saved before any can be acknowledged) and the devices pinned, on the
        device's thread, while the loop goes on. What waits at once is read in
        one job (one hop to the thread, one lock, one save)."""
        while self._intake and self.state is not LinkState.ENDED:
            items = list(itertools.islice(self._intake, _READ_BATCH))
            try:
                results = await self._device.run(
                    self._read_batch, self.username, self._token, items
                )
            except Exception:  # (the state cannot be read: a damaged file ...)
                # Not acknowledged: pushed again on the next connection.
                results = [([], None) if isinstance(item, _Delivery) else ([item], None)
                           for item in items]  # fmt: skip
                for item in items:
                    if isinstance(item, _Delivery):
                        self._held.discard(item.push.message.id)
            for _ in items:
                self._intake.popleft()
            unreadable: list[bytes] = []
            for item, (out, dropped_id) in zip(items, results, strict=True):
                for push in out:
                    if isinstance(push, MessageDropped):
                        self.crypto_drops += 1
                    self._pushes.append(push)
                if dropped_id is not None and isinstance(item, _Delivery):
                    # Unreadable: counted and given as a MessageDropped event, never
                    # shown; acknowledged now (nothing more will make it readable).
                    self._held.discard(dropped_id)
                    self._delivered[dropped_id] = None
                    if item.conn is self._conn:
                        unreadable.append(dropped_id)
            if unreadable and self._conn is not None:
                self._conn.acknowledge(unreadable)
                self._process()
            self._wakeup.set()

    def _read_batch(
        self, username: str | None, token: bytes | None, items: list[_Intake]
    ) -> list[tuple[list[ClientPush], bytes | None]]:
        """(A job of the device's thread.) Each item's pushes for the application,
        in order, and the id of a delivery that could not be read (to acknowledge);
        the state saved once, if anything changed, before any is acknowledged."""
        results: list[tuple[list[ClientPush], bytes | None]] = []
        with self._device.holder.hold(username, token) as slot:
            changed = False
            for item in items:
                if isinstance(item, _Delivery):
                    out, readable, advanced = self._read(slot.crypto, item.push)
                    changed = changed or advanced
                    results.append((out, None if readable else item.push.message.id))
                elif isinstance(item, m.DeviceAdded):
                    event = slot.crypto.device_push(item) if slot.crypto is not None else None
                    changed = changed or isinstance(event, m.DeviceAdded)  # (pinned)
                    results.append(([] if event is None else [event], None))
                else:
                    results.append(([item], None))
            if changed:
                slot.save()
        return results

    @staticmethod
    def _read(
        crypto: ClientCrypto | None, push: m.MessageDelivered
    ) -> tuple[list[ClientPush], bool, bool]:
        """A delivery taken (its key shares) and decrypted: the pushes for the
        application (its drops, then it), whether it could be read, whether the
        state changed."""
        if crypto is None:
            if not push.message.encrypted:
                return [push], True, False
            dropped = MessageDropped(
                message_id=push.message.id,
                sender=push.message.sender,
                to=push.message.to,
                reason="unknown_session",
                detail="this client has no device",
            )
            return [dropped], False, False
        read = crypto.read(push)
        out: list[ClientPush] = list(read.dropped)
        if read.message is not None:
            out.append(m.MessageDelivered(message=read.message))
        return out, read.message is not None, read.changed

    def _acknowledge_handled(self) -> None:
        handled, self._handling = self._handling, []
        ids = [push.message.id for push in handled if isinstance(push, m.MessageDelivered)]
        if not ids:
            return
        for message_id in ids:
            self._held.discard(message_id)
            self._delivered[message_id] = None
        while len(self._delivered) > DELIVERED_IDS_MAX:
            del self._delivered[next(iter(self._delivered))]
        if self._conn is not None:
            # (Between connections: the next one knows them among delivered_ids, and
            # acknowledges the server's re-push of them.)
            self._conn.acknowledge(ids)
            self._process()

    # --- losing a connection ----------------------------------------------------------------

    def _on_disconnected(self, lost: Disconnected) -> None:
        self._drop_connection()
        if self.state is LinkState.ENDED:
            return
        if lost.code is CloseCode.SERVER_KEY_MISMATCH:
            assert self._server_key is not None
            why = f"the server presented another key than {fingerprint(self._server_key)}"
            self._end(ServerKeyChangedError(why), why)
            return
        self._lost(lost.reason or "connection lost")

    def _drop_connection(self) -> None:
        """Forget the connection: its requests wait for the next (or fail)."""
        self._conn = None
        self._ready = False
        self._resume_id = None
        self._cancel_timer()
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        sent, self._sent = self._sent, {}
        again = []
        for call in sent.values():
            if isinstance(call.request, REPEATABLE):
                again.append(call)
            elif not call.future.done():
                why = f"the connection was lost before the answer to {call.request!r}"
                call.future.set_exception(ConnectionLostError(why))
        self._waiting.extendleft(reversed(again))  # first, in the order they were made

    def _lost(self, why: str) -> None:
        """Try again: at once on the next node of a cluster, after a backoff once every
        node was tried."""
        self._failures += 1
        delay = 0.0
        if self._failures % len(self._servers) == 0:
            delay = self._backoff * (0.8 + 0.4 * self._random.token_bytes(1)[0] / 255)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        state = LinkState.RECONNECTING if self._first_ready.is_set() else LinkState.CONNECTING
        self._set_state(state, f"{why}; trying again in {delay:.1f} s")
        self._retry = self._loop.call_later(delay, self._start)

    def _end(self, failure: ProtocolError, detail: str) -> None:
        conn = self._conn
        if conn is not None and conn.is_connected:
            conn.close(self._loop.time())
            self._transmit()
        self._failure = failure
        self.state = LinkState.ENDED  # (first: nothing reconnects from here)
        self._drop_connection()
        for handle in (self._retry, self._attempt_task):
            if handle is not None:
                handle.cancel()
        calls = [*self._waiting, *self._sent.values()]
        self._waiting.clear()
        for call in calls:
            if not call.future.done():
                call.future.set_exception(failure)
        self._first_ready.set()
        self._wakeup.set()
        if self._on_state is not None:
            self._on_state(LinkState.ENDED, detail)

    # --- timers and datagrams ---------------------------------------------------------------

    def _transmit(self) -> None:
        if self._conn is None or self._endpoint is None:
            return
        for data, addr in self._conn.datagrams_to_send(self._loop.time()):
            self._endpoint.sendto(data, addr)

    def _arm_timer(self) -> None:
        self._cancel_timer()
        if self._conn is not None and (when := self._conn.get_timer()) is not None:
            self._timer = self._loop.call_at(when, self._process)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set_state(self, state: LinkState, detail: str) -> None:
        self.state = state
        if self._on_state is not None:
            self._on_state(state, detail)


def start(
    servers: Address | Sequence[Address],
    *,
    server_key: bytes | None = None,
    on_first_contact: Callable[[bytes], bool] | None = None,
    token: bytes | None = None,
    delivered_ids: Iterable[bytes] = (),
    config: TransportConfig | None = None,
    random: RandomSource | None = None,
    on_state: Callable[[LinkState, str], None] | None = None,
    crypto_store: CryptoStore | None = None,
) -> ChatClient:
    """Start connecting and return the client at once (:func:`connect` without the
    wait, for a program that shows :attr:`ChatClient.state` instead: requests made
    meanwhile wait for the connection). Call it from a running event loop; the
    arguments are :func:`connect`'s."""
    if isinstance(servers, tuple) and len(servers) == 2 and isinstance(servers[0], str):
        addresses: list[Address] = [servers]
    else:
        addresses = list(cast(Sequence[Address], servers))
    client = ChatClient(
        addresses,
        server_key=server_key,
        on_first_contact=on_first_contact,
        token=token,
        delivered_ids=delivered_ids,
        config=config if config is not None else TRANSPORT,
        random=random if random is not None else SystemRandomSource(),
        on_state=on_state,
        crypto_store=crypto_store,
    )
    client._start()
    return client


async def connect(
    servers: Address | Sequence[Address],
    *,
    server_key: bytes | None = None,
    on_first_contact: Callable[[bytes], bool] | None = None,
    token: bytes | None = None,
    delivered_ids: Iterable[bytes] = (),
    config: TransportConfig | None = None,
    random: RandomSource | None = None,
    on_state: Callable[[LinkState, str], None] | None = None,
    crypto_store: CryptoStore | None = None,
    timeout: float | None = 10.0,
) -> ChatClient:
    """Connect to a chat server, or to the first node of a cluster that answers.

    Args:
        servers: ``(host, port)``, or a list of them (a cluster's nodes, tried in
            turn: a lost connection moves to the next).
        server_key: the server's 32-byte public key, pinned: another key ends the
            client (:class:`~udpchat_proto.asyncio.ServerKeyChangedError`).
        on_first_contact: without ``server_key``, called with the key the server
            presents the first time (``fingerprint(key)`` is what people compare);
            True pins it for the client's life (read :attr:`ChatClient.server_key`
            to persist it), False ends it
            (:class:`~udpchat_proto.asyncio.ServerKeyRefusedError`). None accepts
            the first key (trust on first use).
        token: a login session to resume (:attr:`ChatClient.token` of an earlier one).
        delivered_ids: ids of delivered messages already handled
            (:attr:`ChatClient.delivered_ids` of an earlier one): not shown again.
        config: transport settings (default :data:`TRANSPORT`).
        random: where keys, message ids and the backoff's jitter come from.
        on_state: called with each change of :attr:`ChatClient.state` and a detail
            for people.
        crypto_store: where the device's end-to-end encryption state is kept (a
            profile on disk, under a lock its other processes share); the default
            keeps it in memory, for the client's life.
        timeout: seconds to wait for the first connection (None: forever).

    Raises:
        TimeoutError: no node answered within ``timeout``.
        ProtocolError: the key was refused or changed, or the session ended.
    """
    client = start(
        servers,
        server_key=server_key,
        on_first_contact=on_first_contact,
        token=token,
        delivered_ids=delivered_ids,
        config=config,
        random=random,
        on_state=on_state,
        crypto_store=crypto_store,
    )
    try:
        await client.wait_connected(timeout)
    except BaseException:
        client.close()
        raise
    return client
