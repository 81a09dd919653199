"""The client role: one connection to a chat server.

:class:`ClientConnection` wraps a :class:`~udpchat_proto.transport.ClientTransport`.
Its command methods (``login``, ``send_message`` ...) only encode a request, queue
it on the transport and return its ``request_id``; the answer arrives later from
:meth:`ClientConnection.next_event` as the response message itself, carrying the
same ``request_id``. Requests may be queued before the handshake completes and
may be pipelined: the server answers the requests of one connection in order.

Delivered messages: the server pushes
:class:`~udpchat_proto.chat.messages.MessageDelivered` until this login session
acknowledges it. The connection acknowledges each one itself once the
application has taken it from :meth:`ClientConnection.next_event`, and never
emits the same message id twice: ids taken are kept in
:attr:`ClientConnection.delivered_ids`, which the application may persist and
hand to the next connection (``delivered_ids=``) so that a re-push after a crash
is acknowledged silently instead of shown twice.

With ``explicit_acks=True`` taking a delivery no longer acknowledges it: the
application calls :meth:`ClientConnection.acknowledge` once it has kept the
message (a runtime that queues events for the application before it handles them,
``udpchat_proto.asyncio``, acknowledges only what was handled, so that a process
dying in between loses nothing). Meanwhile a re-push of a taken message is dropped
without an acknowledgement.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from ..e2ee.records import EncryptedMessage, KeyShare, KeysUpload
from ..errors import DecodeError, LocalProtocolError
from ..randomness import RandomSource, SystemRandomSource
from ..statemachine import IdentityEnum, StateMachine
from ..transport import (
    ClientTransport,
    ConnectionTerminated,
    HandshakeCompleted,
    PayloadReceived,
    TransportState,
)
from ..transport.config import TransportConfig
from ..transport.events import Address
from . import messages as m
from .codec import decode, encode
from .events import ClientEvent, Connected, Disconnected
from .validation import MESSAGE_ID_SIZE, REQUEST_ID_MAX

__all__ = ["MACHINE", "ClientConnection", "ClientInput", "ClientState", "ClientStats"]

ACK_BATCH: Final = 1000
"""Most message ids in one ``ack_delivery`` (well under the list limit)."""


class ClientState(IdentityEnum):
    """The life of a :class:`ClientConnection`."""

    IDLE = "idle"
    """Created; :meth:`ClientConnection.connect` not called yet (requests queue)."""
    CONNECTING = "connecting"
    """Handshake under way (requests queue and leave with it)."""
    CONNECTED = "connected"
    """Handshake done: requests flow."""
    CLOSING = "closing"
    """:meth:`ClientConnection.close` was called; no more requests."""
    CLOSED = "closed"
    """The connection ended (:class:`Disconnected` was emitted)."""


class ClientInput(IdentityEnum):
    """What moves a :class:`ClientConnection` from one state to another."""

    CONNECT = "connect"
    """:meth:`ClientConnection.connect`."""
    HANDSHAKE_DONE = "handshake_done"
    """The transport's handshake completed (:class:`Connected`)."""
    CLOSE = "close"
    """:meth:`ClientConnection.close`."""
    TERMINATED = "terminated"
    """The transport connection ended (:class:`Disconnected`)."""


MACHINE: Final = StateMachine(
    name="client",
    initial=(ClientState.IDLE,),
    transitions={
        (ClientState.IDLE, ClientInput.CONNECT): ClientState.CONNECTING,
        (ClientState.CONNECTING, ClientInput.HANDSHAKE_DONE): ClientState.CONNECTED,
        (ClientState.IDLE, ClientInput.CLOSE): ClientState.CLOSED,
        (ClientState.CONNECTING, ClientInput.CLOSE): ClientState.CLOSING,
        (ClientState.CONNECTED, ClientInput.CLOSE): ClientState.CLOSING,
        (ClientState.CONNECTING, ClientInput.TERMINATED): ClientState.CLOSED,
        (ClientState.CONNECTED, ClientInput.TERMINATED): ClientState.CLOSED,
        (ClientState.CLOSING, ClientInput.TERMINATED): ClientState.CLOSED,
    },
    end_states=frozenset({ClientState.CLOSING, ClientState.CLOSED}),
)
"""The client's machine."""

#: States in which requests may still be queued.
_OPEN_STATES: Final = frozenset({ClientState.IDLE, ClientState.CONNECTING, ClientState.CONNECTED})


#: How many delivered message ids a connection remembers to drop redeliveries.
#: A redelivery only follows a lost acknowledgement, and the server keeps at most
#: its delivery window (64 by default) unacknowledged per connection, so the
#: newest few thousand ids always cover it; the cap keeps a long-running client's
#: memory flat.
DELIVERED_IDS_MAX: Final = 4096


@attrs.define
class ClientStats:
    """Counters for diagnostics."""

    decode_errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    """Payloads from the server that did not decode, by reason (dropped)."""
    unexpected: int = 0
    """Decodable payloads a server must not send (requests, unknown request ids)."""
    deliveries: int = 0
    """``message_delivered`` pushes received (duplicates included)."""
    duplicate_deliveries: int = 0
    """``message_delivered`` pushes for ids already delivered (acknowledged again)."""


class ClientConnection:
    """A connection to a chat server, with the login session it carries.

    Args:
        server_address: where the server listens.
        expected_server_key: the pinned 32-byte public key; None to accept any key
            on first use (read it from :attr:`server_key` and pin it).
        config: transport settings (the defaults suit the public internet).
        random: where keys, request-independent ids and message ids come from.
        delivered_ids: message ids already shown to the user (persisted from an
            earlier connection); a re-push of one is acknowledged, not emitted.
        explicit_acks: False (the default) acknowledges a delivery when the
            application takes it from :meth:`next_event`; True waits for
            :meth:`acknowledge`.
    """

    def __init__(
        self,
        *,
        server_address: Address,
        expected_server_key: bytes | None = None,
        config: TransportConfig | None = None,
        random: RandomSource | None = None,
        delivered_ids: Iterable[bytes] = (),
        explicit_acks: bool = False,
    ) -> None:
        self._random: RandomSource = random if random is not None else SystemRandomSource()
        self._transport = ClientTransport(
            server_address=server_address,
            config=config,
            expected_server_key=expected_server_key,
            random=self._random,
        )
        self._state = ClientState.IDLE
        self._request_ids = itertools.count(1)
        self._pending: dict[int, m.AnsweredRequest] = {}
        """Requests sent and not yet answered, by request id."""
        self._events: collections.deque[ClientEvent] = collections.deque()
        self._device_pushes: list[m.DevicePush] = []
        # Insertion-ordered, capped at DELIVERED_IDS_MAX: only a message whose
        # acknowledgement was lost is ever pushed again, and the server never has
        # more than a delivery window of those outstanding per session.
        self._delivered: dict[bytes, None] = dict.fromkeys(delivered_ids)
        self._trim_delivered()
        self._queued_deliveries: set[bytes] = set()
        """Ids in the event queue, not yet taken by the application."""
        self._explicit_acks = explicit_acks
        self._taken: dict[bytes, None] = {}
        """With explicit acknowledgements: ids taken and not acknowledged yet."""
        self._acks: list[bytes] = []
        self._username: str | None = None
        self._token: bytes | None = None
        self._caught_up = False
        self.stats = ClientStats()
        """Diagnostic counters (see :class:`ClientStats`)."""

    # --- properties ------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """Where the connection is in its life."""
        return self._state

    @property
    def transport_state(self) -> TransportState:
        """The state of the transport connection underneath (for diagnostics)."""
        return self._transport.state

    @property
    def is_connected(self) -> bool:
        """Whether the handshake completed and the connection has not ended."""
        return self._state is ClientState.CONNECTED

    @property
    def server_key(self) -> bytes | None:
        """The server's static public key once the handshake completed."""
        key: bytes | None = self._transport.server_key
        return key

    @property
    def username(self) -> str | None:
        """Whom this connection acts as (after :class:`~udpchat_proto.chat.messages.LoggedIn`)."""
        return self._username

    @property
    def caught_up(self) -> bool:
        """Whether the server has pushed everything it held for this login session
        (a :class:`~udpchat_proto.chat.messages.CaughtUp` push arrived since the login
        or resume). The messages themselves may still wait in :meth:`next_event`."""
        return self._caught_up

    @property
    def token(self) -> bytes | None:
        """The login session's token (after a login or resume), to persist and resume."""
        return self._token

    @property
    def delivered_ids(self) -> frozenset[bytes]:
        """Ids of the newest :data:`DELIVERED_IDS_MAX` messages emitted to the
        application (plus those passed in), to persist and pass back in."""
        return frozenset(self._delivered)

    @property
    def pending_requests(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    def pending_request(self, request_id: int) -> m.AnsweredRequest | None:
        """The request sent with ``request_id`` if it is not answered yet, else None.

        After :class:`Disconnected`, the unanswered ``SendMessage`` requests here are
        the messages to send again (same ``message_id``) on the next connection.
        """
        return self._pending.get(request_id)

    def unanswered(self) -> list[m.AnsweredRequest]:
        """Every request sent and not answered yet, in the order sent."""
        return list(self._pending.values())

    # --- the five methods --------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Start the handshake.

        Args:
            now: a monotonic clock, seconds (``time.monotonic()``).

        Raises:
            LocalProtocolError: already connecting, connected or closed.

        Then call :meth:`datagrams_to_send`.
        """
        self._transition(ClientInput.CONNECT)
        self._transport.connect(now)

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Feed one datagram read from the socket (never raises for remote input).

        Then drain :meth:`next_event` and call :meth:`datagrams_to_send`.
        """
        self._transport.receive_datagram(data, addr, now)
        self._drain_transport()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Return the datagrams to write now (acknowledgements of taken deliveries
        included).

        Args:
            now: a monotonic clock, seconds (``time.monotonic()``).
        """
        self._flush_acks()
        datagrams: list[tuple[bytes, Address]] = self._transport.datagrams_to_send(now)
        self._drain_transport()
        return datagrams

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should be called next, or None."""
        timer: float | None = self._transport.get_timer()
        return timer

    def handle_timer(self, now: float) -> None:
        """Fire the timers due at ``now`` (retransmission, keepalive, idle timeout).

        Then drain :meth:`next_event` and call :meth:`datagrams_to_send`.
        """
        self._transport.handle_timer(now)
        self._drain_transport()

    def take_device_pushes(self) -> list[m.DevicePush]:
        """The end-to-end encryption pushes received since the last call
        (``device_added``, ``one_time_keys_low``), oldest first."""
        pushes, self._device_pushes = self._device_pushes, []
        return pushes

    def next_event(self) -> ClientEvent | None:
        """The next event, or None.

        Taking a :class:`~udpchat_proto.chat.messages.MessageDelivered` hands the message
        to the application: its id joins :attr:`delivered_ids` and its
        acknowledgement leaves with the next :meth:`datagrams_to_send`.
        """
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, m.MessageDelivered):
            message_id = event.message.id
            self._queued_deliveries.discard(message_id)
            if self._explicit_acks:
                self._taken[message_id] = None
            else:
                self._mark_delivered(message_id)
        return event

    def acknowledge(self, message_ids: Iterable[bytes]) -> None:
        """Acknowledge delivered messages the application has kept (with
        ``explicit_acks=True``; harmless otherwise).

        Any id may be passed, one taken from an earlier connection of the same login
        session included: the acknowledgements leave with the next
        :meth:`datagrams_to_send`, and the ids join :attr:`delivered_ids` (a re-push
        of one is acknowledged again, never emitted).
        """
        for message_id in message_ids:
            self._taken.pop(message_id, None)
            if message_id not in self._delivered:
                self._mark_delivered(message_id)

    def _mark_delivered(self, message_id: bytes) -> None:
        self._delivered[message_id] = None
        self._trim_delivered()
        self._acks.append(message_id)

    def _trim_delivered(self) -> None:
        while len(self._delivered) > DELIVERED_IDS_MAX:
            del self._delivered[next(iter(self._delivered))]

    def close(self, now: float) -> None:
        """Close the connection (the login session stays: resume it later).

        Then call :meth:`datagrams_to_send` until :class:`Disconnected` is emitted.
        """
        if self._state in (ClientState.CLOSING, ClientState.CLOSED):
            return
        was_idle = self._state is ClientState.IDLE
        self._transition(ClientInput.CLOSE)
        if not was_idle:
            self._flush_acks()
            self._transport.close(now)
            self._drain_transport()

    # --- commands ------------------------------------------------------------------------------

    def register(self, username: str, password: str) -> int:
        """Create an account. Answered by ``Ok`` or ``ErrorResponse`` (``user_exists``,
        ``rate_limited``).

        Raises:
            ValidationError: an invalid username or password (``.code`` says which).
            LocalProtocolError: the connection is closing or closed.

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        return self._request(
            lambda rid: m.Register(request_id=rid, username=username, password=password)
        )

    def login(self, username: str, password: str) -> int:
        """Open a new login session. Answered by ``LoggedIn`` or ``ErrorResponse``
        (``bad_credentials``, ``rate_limited``).

        Raises:
            ValidationError: an invalid username or password.
            LocalProtocolError: the connection is closing or closed.

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        return self._request(
            lambda rid: m.Login(request_id=rid, username=username, password=password)
        )

    def resume(self, token: bytes) -> int:
        """Act as the user of an existing login session. Answered by ``LoggedIn``
        (same token) or ``ErrorResponse`` (``bad_credentials``: log in again).

        Raises:
            ValidationError: the token is not 32 bytes.
            LocalProtocolError: the connection is closing or closed.

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        return self._request(lambda rid: m.Resume(request_id=rid, token=token))

    def logout(self) -> int:
        """End this login session (every connection using it is logged out).
        Answered by ``Ok``.

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        return self._request(lambda rid: m.Logout(request_id=rid))

    def list_sessions(self) -> int:
        """List the user's login sessions, newest first. Answered by ``Sessions``.

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        return self._request(lambda rid: m.ListSessions(request_id=rid))

    def revoke_session(self, session_id: bytes) -> int:
        """End one login session of the user (from ``Sessions``); its connections
        are closed. Answered by ``Ok``, or ``unknown_session``.

        Raises:
            ValidationError: ``session_id`` is not 16 bytes.

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        return self._request(lambda rid: m.RevokeSession(request_id=rid, session_id=session_id))

    def logout_all(self) -> int:
        """End every login session of the user, this one included. Answered by
        ``LoggedOutAll`` (how many ended).

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        return self._request(lambda rid: m.LogoutAll(request_id=rid))

    def change_password(self, current: str, new: str) -> int:
        """Replace the password; every other login session of the user ends.
        Answered by ``Ok``, or ``bad_credentials`` (a wrong current password).

        Raises:
            ValidationError: a password is empty or too long.

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        return self._request(lambda rid: m.ChangePassword(request_id=rid, current=current, new=new))

    def delete_account(self, password: str) -> int:
        """Delete the account for good (its name is retired); every connection of
        the user ends, this one is logged out. Answered by ``Ok``, or
        ``bad_credentials``.

        Raises:
            ValidationError: the password is empty or too long.

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        return self._request(lambda rid: m.DeleteAccount(request_id=rid, password=password))

    def message_status(self, message_id: bytes) -> int:
        """Ask whether a direct message you sent was delivered. Answered by
        ``MessageStatus``, or ``unknown_message``.

        Raises:
            ValidationError: ``message_id`` is not 16 bytes.

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        return self._request(lambda rid: m.GetMessageStatus(request_id=rid, message_id=message_id))

    def send_message(self, to: str, text: str, *, message_id: bytes | None = None) -> int:
        """Send ``text`` to a friend or to a room (``#name``).

        The message id is 16 random bytes; ``MessageAccepted`` carries it once the
        message is committed on the server. Refusals: ``not_friends`` (to any
        name but a friend's, with an account or not; an older server says
        ``unknown_user`` for a name without one), ``unknown_room``,
        ``not_a_member``, ``rate_limited``, ``recipient_full``,
        ``quota_exceeded``.

        Args:
            to: a username, or a room name starting with ``#``.
            text: 1 to 4096 bytes of UTF-8.
            message_id: to send again a message whose acceptance never arrived (the
                connection ended first), pass its id (from :meth:`pending_request`):
                the server stores it at most once and answers with the original
                acceptance. None (the default) draws a new id.

        Raises:
            ValidationError: an invalid recipient, empty text, text over 4096 bytes,
                or a ``message_id`` that is not 16 bytes.
            LocalProtocolError: the connection is closing or closed.

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        if message_id is None:
            message_id = self._random.token_bytes(MESSAGE_ID_SIZE)
        return self._request(
            lambda rid: m.SendMessage(request_id=rid, message_id=message_id, to=to, text=text)
        )

    def invite(self, username: str) -> int:
        """Invite ``username`` to be friends (inviting someone who invited you makes
        you friends). Answered by ``Ok`` or ``ErrorResponse``.

        Returns:
            The request id. Then call :meth:`datagrams_to_send`.
        """
        return self._request(lambda rid: m.Invite(request_id=rid, username=username))

    def accept_invitation(self, username: str) -> int:
        """Accept ``username``'s invitation. Returns the request id."""
        return self._request(lambda rid: m.AcceptInvitation(request_id=rid, username=username))

    def decline_invitation(self, username: str) -> int:
        """Decline ``username``'s invitation. Returns the request id."""
        return self._request(lambda rid: m.DeclineInvitation(request_id=rid, username=username))

    def cancel_invitation(self, username: str) -> int:
        """Withdraw the invitation sent to ``username``. Returns the request id."""
        return self._request(lambda rid: m.CancelInvitation(request_id=rid, username=username))

    def unfriend(self, username: str) -> int:
        """Stop being friends with ``username``. Returns the request id."""
        return self._request(lambda rid: m.Unfriend(request_id=rid, username=username))

    def block(self, username: str) -> int:
        """Block ``username`` (ends a friendship and invitations either way; what they
        send is refused or never shown; you look offline to them). Answered by
        ``Ok``. Returns the request id."""
        return self._request(lambda rid: m.Block(request_id=rid, username=username))

    def unblock(self, username: str) -> int:
        """Stop blocking ``username``. Answered by ``Ok``. Returns the request id."""
        return self._request(lambda rid: m.Unblock(request_id=rid, username=username))

    def list_blocked(self) -> int:
        """Ask whom you block (``Blocked``). Returns the request id."""
        return self._request(lambda rid: m.ListBlocked(request_id=rid))

    def list_invitations(self) -> int:
        """Ask for incoming and outgoing invitations (``Invitations``)."""
        return self._request(lambda rid: m.ListInvitations(request_id=rid))

    def list_friends(self) -> int:
        """Ask for the friends list with presence (``Friends``)."""
        return self._request(lambda rid: m.ListFriends(request_id=rid))

    def list_online(self) -> int:
        """Ask who is online (``OnlineUsers``)."""
        return self._request(lambda rid: m.ListOnline(request_id=rid))

    def list_rooms(self) -> int:
        """Ask for this user's rooms with member counts (``Rooms``)."""
        return self._request(lambda rid: m.ListRooms(request_id=rid))

    def get_history(self, peer: str, limit: int = 20, *, before: bytes | None = None) -> int:
        """Ask for the last ``limit`` (1 to 100) messages with a user or in a room,
        oldest first (``History``); with ``before`` (a message id), the last ones
        older than it: the page before.

        Raises:
            ValidationError: an invalid peer, limit or id.
        """
        return self._request(
            lambda rid: m.GetHistory(request_id=rid, peer=peer, limit=limit, before=before)
        )

    # --- end-to-end encryption (version 2) -------------------------------------------
    # The requests only: the keys, shares and ciphertexts are udpchat_proto.e2ee's
    # CryptoState's, which the caller keeps (phase 2b puts it in the runtime).

    def upload_keys(self, keys: KeysUpload) -> int:
        """Upload this session's device keys (``CryptoState.keys_to_upload``).

        Returns:
            The request id; answered by ``KeysStored``.
        """
        return self._request(lambda rid: m.UploadKeys(request_id=rid, keys=keys))

    def claim_keys(self, devices: Iterable[bytes]) -> int:
        """Claim a one-time key of each device (by id) to open Olm sessions.

        Returns:
            The request id; answered by ``ClaimedKeys``.
        """
        ids = tuple(devices)
        return self._request(lambda rid: m.ClaimKeys(request_id=rid, devices=ids))

    def get_devices(self, *, conversation: str | None = None, user: str | None = None) -> int:
        """A conversation's device set (``ConversationDevices``) or a user's devices
        (``UserDevices``): exactly one of the two.

        Returns:
            The request id.
        """
        return self._request(
            lambda rid: m.GetDevices(request_id=rid, conversation=conversation, user=user)
        )

    def send_encrypted(
        self,
        to: str,
        message: EncryptedMessage,
        key_shares: Iterable[KeyShare],
        *,
        message_id: bytes,
    ) -> int:
        """Send an encrypted message (``CryptoState.encrypt``'s ``Outgoing``) with
        its key shares. Refusals besides :meth:`send_message`'s:
        ``devices_changed`` (the error's ``device_set``: plan and encrypt again)
        and ``no_device``.

        Shares beyond what one request carries (``MAX_SHARES_PER_REQUEST``, a
        room's rotation) go ahead in ``share_keys`` requests, pipelined; their
        ``ok`` answers need no waiting for (a refused one refuses the send too).

        Returns:
            The request id of the send; answered by ``MessageAccepted``.
        """
        shares = tuple(key_shares)
        cut = max(0, len(shares) - m.MAX_SHARES_PER_REQUEST)  # the last ones ride in the send
        staged, inline_shares = shares[:cut], shares[cut:]
        for start in range(0, len(staged), m.MAX_SHARES_PER_REQUEST):
            batch = staged[start : start + m.MAX_SHARES_PER_REQUEST]
            self._request(
                lambda rid, batch=batch: m.ShareKeys(  # type: ignore[misc]
                    request_id=rid, message_id=message_id, key_shares=batch
                )
            )
        return self._request(
            lambda rid: m.SendMessage(
                request_id=rid,
                message_id=message_id,
                to=to,
                encrypted=message,
                key_shares=inline_shares,
                staged=len(staged),
            )
        )

    def join_room(self, room: str) -> int:
        """Join (creating it if needed) ``room`` (``#name``). Returns the request id."""
        return self._request(lambda rid: m.JoinRoom(request_id=rid, room=room))

    def leave_room(self, room: str) -> int:
        """Leave ``room``. Returns the request id."""
        return self._request(lambda rid: m.LeaveRoom(request_id=rid, room=room))

    def list_members(self, room: str) -> int:
        """Ask for the members of ``room`` with presence (``RoomMembers``)."""
        return self._request(lambda rid: m.ListMembers(request_id=rid, room=room))

    # --- internals -----------------------------------------------------------------------------

    def _transition(self, event: ClientInput) -> None:
        self._state = MACHINE.next(self._state, event)

    def _request(self, build: Callable[[int], m.AnsweredRequest]) -> int:
        if self._state not in _OPEN_STATES:
            raise LocalProtocolError(f"the connection is {self._state.value}")
        request_id = next(self._request_ids) & REQUEST_ID_MAX
        request = build(request_id)  # raises ValidationError for an invalid argument
        self._transport.send(encode(request))
        self._pending[request_id] = request
        return request_id

    def _flush_acks(self) -> None:
        if not self._acks or self._state is not ClientState.CONNECTED:
            return
        acks, self._acks = self._acks, []
        for start in range(0, len(acks), ACK_BATCH):
            batch = tuple(acks[start : start + ACK_BATCH])
            ack = m.AcknowledgeDelivery(message_ids=batch)
            self._transport.send(encode(ack))

    def _drain_transport(self) -> None:
        while (event := self._transport.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self._transition(ClientInput.HANDSHAKE_DONE)
                self._events.append(Connected(server_key=event.server_key))
            elif isinstance(event, PayloadReceived):
                self._on_payload(event.payload)
            elif isinstance(event, ConnectionTerminated) and self._state is not ClientState.CLOSED:
                self._transition(ClientInput.TERMINATED)
                self._events.append(Disconnected(code=event.code, reason=event.reason))

    def _on_payload(self, payload: bytes) -> None:
        try:
            message = decode(payload)
        except DecodeError as exc:
            self.stats.decode_errors[exc.reason] += 1
            return
        if isinstance(message, m.MessageDelivered):
            self._on_delivery(message)
        elif isinstance(message, m.CaughtUp):
            self._caught_up = True
            self._events.append(message)
        elif isinstance(message, m.PUSH_TYPES):
            self._events.append(message)
        elif isinstance(message, m.DEVICE_PUSH_TYPES):
            # A server sends them only to a session that uploaded keys; they wait
            # apart from the events until the client's runtime takes them (phase 2b).
            self._device_pushes.append(message)
        elif isinstance(message, m.RESPONSE_TYPES):
            self._on_response(message)
        else:
            self.stats.unexpected += 1  # a request: only a client sends those

    def _on_delivery(self, push: m.MessageDelivered) -> None:
        self.stats.deliveries += 1
        message_id = push.message.id
        if message_id in self._delivered:
            # Shown before (on this or an earlier connection): the earlier
            # acknowledgement was lost, so only acknowledge again.
            self.stats.duplicate_deliveries += 1
            self._acks.append(message_id)
            return
        if message_id in self._queued_deliveries or message_id in self._taken:
            # Emitted or waiting to be: its acknowledgement is the application's.
            self.stats.duplicate_deliveries += 1
            return
        self._queued_deliveries.add(message_id)
        self._events.append(push)

    def _on_response(self, response: m.Response) -> None:
        request = self._pending.pop(response.request_id, None)
        if request is None:
            self.stats.unexpected += 1
            return
        if isinstance(response, m.LoggedIn):
            if response.token != self._token:
                self._caught_up = False  # another session: its own backlog
            self._username = response.username
            self._token = response.token
        elif isinstance(request, m.Logout) and isinstance(response, m.Ok):
            self._username = self._token = None
        self._events.append(response)
