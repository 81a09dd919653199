"""Requests about messages: send one (to a friend or a room), read a conversation's
history, ask whether a direct message was delivered; and the acknowledgement of
a delivery.

Delivery itself (windows, refill, acknowledgement) is
:class:`~udpchat_proto.chat.deliveries.Deliveries`': every connection of every
recipient needs it, whatever request stored the message.
"""

from __future__ import annotations

import datetime
import functools

import attrs

from ...clock import WallClock
from ...e2ee.records import EncryptedMessage, KeyShare
from ...errors import ErrorCode
from .. import messages as m
from ..batch import Batch, Held
from ..caches import Caches
from ..config import ServerConfig
from ..connection import ChatConnection
from ..connections import ConnectionTable
from ..deliveries import Deliveries
from ..devicesets import DevicesChangedError
from ..limits import Limits
from ..lookups import require_member
from ..outbox import Outbox
from ..presence import Presence
from ..requests import RefusedError, Route, route, user_of, utc_from_posix
from ..staging import ShareStaging
from ..stats import ServerStats
from ..store import Store, WriteTrackingStore, sealed_size, stored_size
from ..tokens import session_id
from ..validation import is_room

__all__ = ["MessageHandlers"]


_HISTORY_PAGES = 4
"""How many store pages one history answer reads at most (see _for_this_device)."""

_device_of = functools.lru_cache(maxsize=4096)(session_id)
"""``session_id`` of a connection's token hash, remembered: an encrypted send asks
for its sender's device and each recipient's, a SHA-256 each (about 8,000
instructions, two to three a message); a session's id never changes."""


@attrs.frozen
class _Sealed:
    """An encrypted message's checked extras: the devices it is stored for, and
    the key shares for each."""

    devices: frozenset[bytes]
    shares: dict[bytes, list[KeyShare]]
    """By recipient device: the staged ones, then the request's."""


def _encrypted_message(
    message_id: bytes, me: str, to: str, sent_at: datetime.datetime, record: EncryptedMessage
) -> m.ChatMessage:
    """The :class:`~udpchat_proto.chat.messages.ChatMessage` of an encrypted send
    that passed :meth:`MessageHandlers._seal`, built without running its checks
    again: the id, ``to`` and the record were checked by the decoding, ``me`` at
    login, the record against both by ``_seal`` (its sender and conversation),
    ``sent_at`` is the server's clock. Checking them again cost about 30,000
    instructions a send, a tenth of what encryption added to the server's CPU.
    (``tests/test_e2ee_wire.py`` checks that it builds what the class's own
    constructor builds.)"""
    message: m.ChatMessage = object.__new__(m.ChatMessage)
    for name, value in (
        ("id", message_id),
        ("sender", me),
        ("to", to),
        ("text", ""),
        ("sent_at", sent_at),
        ("encrypted", True),
        ("ciphertext", record),
    ):
        object.__setattr__(message, name, value)  # (frozen: attrs' own way to set)
    return message


def _shares_by_device(sealed: _Sealed) -> list[tuple[bytes, KeyShare]]:
    """An encrypted message's key shares as the store takes them: (device, share)."""
    return [(device, share) for device, shares in sealed.shares.items() for share in shares]


class MessageHandlers:
    """Handlers of send_message, get_history, get_message_status and ack_delivery.

    Args:
        store: messages, rooms, friendships.
        tracker: the acknowledgements that wait to be written.
        connections: the recipients' connections here.
        outbox: where answers go.
        deliveries: pushes a new message, takes acknowledgements.
        presence: whether a recipient is online.
        caches: friendship, without a read per message.
        batch: the delivery hints of a cluster.
        limits: messages per sender.
        stats: counts messages.
        config: the quota and caps; whether this is a cluster's node.
        clock: the wall clock (a message's time).
        staging: the key shares connections staged for their next message.
    """

    def __init__(
        self,
        *,
        store: Store,
        tracker: WriteTrackingStore,
        connections: ConnectionTable,
        outbox: Outbox,
        deliveries: Deliveries,
        presence: Presence,
        caches: Caches,
        batch: Batch,
        limits: Limits,
        stats: ServerStats,
        config: ServerConfig,
        clock: WallClock,
        staging: ShareStaging,
    ) -> None:
        self._store = store
        self._tracker = tracker
        self._connections = connections
        self._outbox = outbox
        self._deliveries = deliveries
        self._presence = presence
        self._caches = caches
        self._batch = batch
        self._limits = limits
        self._stats = stats
        self._config = config
        self._clock = clock
        self._staging = staging

    def routes(self) -> list[Route]:
        """The requests these handlers answer (and the one they take unanswered)."""
        return [
            # The one write is the step's last fallible act: no savepoint needed.
            # (An encrypted message is one too: add_encrypted_message; staged, none
            # in the step.)
            route(m.SendMessage, self.send_message, writes_once=True),
            # No write at all: staged key shares are held in memory until their send.
            route(m.ShareKeys, self.share_keys, writes_once=True),
            route(m.GetHistory, self.get_history),
            route(m.GetMessageStatus, self.get_message_status),
            # No write at all in its step: the cursor's move is deferred.
            route(
                m.AcknowledgeDelivery,
                self._deliveries.acknowledge,
                answered=False,
                writes_once=True,
            ),
        ]

    def send_message(self, connection: ChatConnection, request: m.SendMessage, now: float) -> None:
        """``send_message``: store it, answer, push it to its recipients' connections."""
        me = user_of(connection)
        try:
            # What was staged for it goes with this answer, whichever it is: a
            # refused send leaves nothing that a later one could pick up.
            staged = self._take_staged_shares(connection, request, now)
            # The record and every share (staged ones included) are stored beside
            # the row, and count against the quota with it.
            sealed_bytes = (
                0
                if request.encrypted is None
                else sealed_size(request.encrypted, (*staged, *request.key_shares))
            )
            recipients = self._admit(me, request, now, sealed_bytes)
            if request.encrypted is None:
                self._check_plaintext_allowed(connection)
            sealed = (
                None if request.encrypted is None else self._seal(connection, me, request, staged)
            )
        except RefusedError:
            # A retry of a message already stored (its acceptance was lost with a
            # connection) gets the same answer as the first time, whatever the
            # checks say now. Looked up only here: the insert finds duplicates.
            if self._answered_as_retry(connection, me, request):
                return
            raise
        sent_at = utc_from_posix(self._clock())
        message = (
            m.ChatMessage(
                id=request.message_id, sender=me, to=request.to, text=request.text, sent_at=sent_at
            )
            if request.encrypted is None
            else _encrypted_message(request.message_id, me, request.to, sent_at, request.encrypted)
        )
        if self._tracker.stages_messages:
            self._stage(
                connection,
                request,
                message,
                recipients=recipients,
                sealed=sealed,
                sealed_bytes=sealed_bytes,
                now=now,
            )
            return
        try:
            # The one write (WRITES_ONCE): nothing after it can fail. An encrypted
            # message is one too: the row with its record, devices and shares, all
            # or none (Store.add_encrypted_message: no atomic block of its own).
            if sealed is None or request.encrypted is None:
                self._store.add_message(message, origin=connection.token_hash)
            else:
                self._store.add_encrypted_message(
                    message,
                    connection.token_hash,
                    request.encrypted,
                    sorted(sealed.devices),
                    _shares_by_device(sealed),
                    sealed_bytes=sealed_bytes,  # (counted for the quota above: not again)
                )
        except ValueError:  # the id is taken
            if self._answered_as_retry(connection, me, request):
                return
            raise RefusedError(ErrorCode.BAD_REQUEST, "this message id is already in use") from None
        self._limits.message_rate.spend(me, now=now)
        self._stats.messages_accepted += 1
        self._outbox.reply(
            connection,
            m.MessageAccepted(
                request_id=request.request_id, message_id=message.id, sent_at=message.sent_at
            ),
        )
        if self._config.cluster:
            # Every node, this one included, pushes from the database once the
            # batch is durable (see cluster.py): a live push from memory could pass
            # an earlier seq that another node committed and has not hinted yet.
            self._batch.hint(recipients, me, connection.connection_id)
            return
        # Its recipients' connections here, and the sender's other devices.
        self._push_new(connection, message, recipients, sealed)

    def _store_sealed(
        self, request: m.SendMessage, sealed: _Sealed | None, sealed_bytes: int
    ) -> None:
        """Store an encrypted message's record, devices and key shares (once the
        message itself is stored: they go into its row, or refer to it)."""
        if sealed is not None and request.encrypted is not None:
            self._store.add_encrypted(
                request.message_id,
                request.encrypted,
                sorted(sealed.devices),
                _shares_by_device(sealed),
                sealed_bytes=sealed_bytes,
            )

    def _stage(
        self,
        connection: ChatConnection,
        request: m.SendMessage,
        message: m.ChatMessage,
        *,
        recipients: list[str],
        sealed: _Sealed | None,
        sealed_bytes: int,
        now: float,
    ) -> None:
        """A store a round trip away: the message is stored with the batch's others
        (one statement for them all, see ``WriteTrackingStore.stage_message``), and
        answered as accepted meanwhile: the answer waits with the batch, and is
        replaced before the commit if the id turned out to be taken. An encrypted
        message's devices and shares are stored once it is (still before the
        commit, in the same transaction)."""
        me = message.sender
        # (Inside the request's step: the answer is held, and so is everything after
        # it, since staging makes the batch one that writes.)
        accepted = self._outbox.reply_held(
            connection,
            m.MessageAccepted(
                request_id=request.request_id, message_id=message.id, sent_at=message.sent_at
            ),
        )
        cluster = self._config.cluster

        def stored() -> None:
            self._store_sealed(request, sealed, sealed_bytes)
            if not cluster:
                # A single server pushes from memory once the message is stored (and
                # the pushes wait for the commit with the rest).
                self._push_new(connection, message, recipients, sealed)

        self._tracker.stage_message(
            message,
            connection.token_hash,
            lambda: self._staged_refused(connection, request, me, accepted),
            stored,
            writes=sealed is not None,
            sealed=sealed_bytes if sealed is not None else 0,
        )
        self._limits.message_rate.spend(me, now=now)
        self._stats.messages_accepted += 1
        if cluster:
            # Every node, this one included, pushes from the database once the
            # batch is durable (see the cluster branch of send_message).
            self._batch.hint(recipients, me, connection.connection_id)

    def _push_new(
        self,
        connection: ChatConnection,
        message: m.ChatMessage,
        recipients: list[str],
        sealed: _Sealed | None,
    ) -> None:
        """Push a message just stored to its recipients' connections here, and to
        the sender's other devices (not the one it came from)."""
        for recipient in recipients:
            for other in self._connections.connections_of(recipient):
                self._deliver(other, message, sealed)
        for other in self._connections.connections_of(message.sender):
            if other.token_hash != connection.token_hash:
                self._deliver(other, message, sealed)

    def _check_plaintext_allowed(self, connection: ChatConnection) -> None:
        """A session that uploaded keys encrypts (docs/E2EE.md, "Transition"): a
        text from it is a bug or a downgrade, refused. A version 1 client, which
        never uploads keys, still sends text."""
        hashed = connection.token_hash
        if hashed is None:
            return
        # Asked once a connection (then kept up by its own uploads): a read a message
        # was one store round trip a plaintext send on PostgreSQL. (Another
        # connection of the same session uploading meanwhile is not seen here.)
        if connection.has_device is None:
            connection.has_device = self._store.session_device(hashed) is not None
        if connection.has_device:
            raise RefusedError(ErrorCode.BAD_REQUEST, "this device encrypts: send encrypted")

    def share_keys(self, connection: ChatConnection, request: m.ShareKeys, now: float) -> None:
        """``share_keys``: hold key shares for this connection's next message (the
        send checks them, with the message, against the conversation's devices).

        A send's staging costs one request of the connection's budget
        (``request_rate``), however many devices: a full batch that continues it
        (only new devices) gives its request back. A large room's rotation (3,200
        shares are 200 batches) is not refused ``rate_limited`` half-way, and
        what one request token buys stays bounded: full batches of new devices,
        up to the devices a message may be shared with."""
        assert connection.token_hash is not None
        continues = self._staging.stage(
            connection.connection_id,
            connection.token_hash,
            request.message_id,
            request.key_shares,
            now,
        )
        if continues and len(request.key_shares) == m.MAX_SHARES_PER_REQUEST:
            connection.requests.refund(now=now)
        self._outbox.reply(connection, m.Ok(request_id=request.request_id))

    def _take_staged_shares(
        self, connection: ChatConnection, request: m.SendMessage, now: float
    ) -> list[KeyShare]:
        """The shares this connection staged for ``request``'s message id."""
        if connection.token_hash is None:
            return []
        return self._staging.take(
            connection.connection_id, connection.token_hash, request.message_id, now
        )

    def _deliver(
        self, connection: ChatConnection, message: m.ChatMessage, sealed: _Sealed | None
    ) -> None:
        """Push a new message live; an encrypted one only to the devices it was
        stored for, with their key shares."""
        if sealed is None:
            self._deliveries.deliver_new(connection, message)
            return
        hashed = connection.token_hash
        device = None if hashed is None else _device_of(hashed)
        if device in sealed.devices:
            self._deliveries.deliver_new(connection, message, sealed.shares.get(device, ()))

    def _seal(
        self,
        connection: ChatConnection,
        me: str,
        request: m.SendMessage,
        staged: list[KeyShare],
    ) -> _Sealed:
        """The checks an encrypted message passes (its recipients checked already):
        sent from this session's device, for the conversation's current device set,
        with key shares (``staged`` ahead, then the request's) for devices of that
        set only. Refuses with ``no_device`` (nobody could read it) or
        ``devices_changed`` (with the current set): the set changed, or the shares
        staged for it are not all here (expired, or staged on another connection),
        which the client answers the same way: share again, send again."""
        record = request.encrypted
        assert record is not None and connection.token_hash is not None
        to = request.to
        room = is_room(to)
        # (direct_conversation without its checks: both names are valid already,
        # the sender's by its login and ``to`` by the decoding, and they differ,
        # since nobody is their own friend.)
        conversation = to if room else f"{me},{to}" if me < to else f"{to},{me}"
        members = self._store.room_members(to) if room else [me, to]
        # Kept between sends (Caches.device_set): the set holds this session's own
        # device too, if it has one (it is a member's), so that is no read either.
        device_set = self._caches.device_set(conversation, members)
        devices = {keys.device_id: keys for keys in device_set.devices}
        mine = devices.get(_device_of(connection.token_hash))
        if mine is None:
            raise RefusedError(
                ErrorCode.BAD_REQUEST, "this session has no device keys: upload them first"
            )
        if record.sender != me or record.sender_device != mine.device_id:
            raise RefusedError(ErrorCode.BAD_REQUEST, "the message is not from this device")
        if record.conversation != conversation:
            raise RefusedError(ErrorCode.BAD_REQUEST, "the message names another conversation")
        if not room and not any(keys.user == request.to for keys in device_set.devices):
            raise RefusedError(
                ErrorCode.NO_DEVICE, f"{request.to} has no logged-in device to receive it"
            )
        if record.device_set_version != device_set.version or len(staged) != request.staged:
            raise DevicesChangedError(device_set)
        shares: dict[bytes, list[KeyShare]] = {}
        for share in (*staged, *request.key_shares):
            recipient = devices.get(share.recipient_device)
            if recipient is None or recipient.user != share.recipient:
                raise RefusedError(
                    ErrorCode.BAD_REQUEST, "a key share is for a device not in the set"
                )
            if share.sender_keys != mine:
                raise RefusedError(ErrorCode.BAD_REQUEST, "a key share is not from this device")
            shares.setdefault(share.recipient_device, []).append(share)
        return _Sealed(devices=frozenset(devices), shares=shares)

    def _staged_refused(
        self,
        connection: ChatConnection,
        request: m.SendMessage,
        me: str,
        accepted: Held | None,
    ) -> None:
        """A staged message was not stored: its id was taken. Its answer becomes the
        one a retry gets (the first acceptance, if the sender's) or a refusal."""
        self._stats.messages_accepted -= 1
        existing = self._store.get_message(request.message_id)
        answer: m.Response
        if existing is not None and existing.message.sender == me:
            answer = m.MessageAccepted(
                request_id=request.request_id,
                message_id=request.message_id,
                sent_at=existing.message.sent_at,
            )
        else:
            self._stats.refusals[ErrorCode.BAD_REQUEST.value] += 1
            answer = m.ErrorResponse(
                request_id=request.request_id,
                code=ErrorCode.BAD_REQUEST,
                message="this message id is already in use",
            )
        if accepted is not None:
            self._outbox.replace_held(accepted, answer)

    def _admit(self, me: str, request: m.SendMessage, now: float, sealed_bytes: int) -> list[str]:
        """The checks a new message passes; its recipients. Refuses what may not be
        sent. ``sealed_bytes``: what an encrypted one stores beside its row."""
        recipients = self._recipients(me, request.to)
        if is_room(request.to):
            # Joins and leaves of this batch go out first: a member learns that
            # someone joined before it reads what they wrote.
            self._outbox.flush_membership()
        # An online recipient's devices drain what waits: only an offline one can
        # fill up (and counting costs a scan of what waits).
        if not is_room(request.to) and not self._presence.is_online(request.to):
            cap = self._config.max_waiting_per_recipient
            if self._store.count_waiting(request.to, cap) >= cap:
                raise RefusedError(
                    ErrorCode.RECIPIENT_FULL,
                    f"{request.to} has {cap} messages waiting already; try again later",
                )
        self._check_quota(me, stored_size(request.text) + sealed_bytes)
        if not self._limits.message_rate.available(me, now=now):  # (spent once stored)
            raise RefusedError(ErrorCode.RATE_LIMITED, "you are sending too fast; slow down")
        return recipients

    def _check_quota(self, me: str, size: int) -> None:
        """Refuse a message of ``size`` stored bytes that would take ``me``'s stored
        messages past the quota (a bound the caches keep; a read of the counter the
        store keeps only when the bound does not admit it: no scan)."""
        quota = self._config.max_stored_per_user
        if quota is None:
            return
        stored = self._caches.quota_allows(me, size, quota)
        if stored is None:
            return
        days = self._config.retain_days
        raise RefusedError(
            ErrorCode.QUOTA_EXCEEDED,
            f"your stored messages take {_size(stored)} of the {_size(quota)} this server "
            "keeps for each user; "
            + (
                "it keeps every message: ask its operator"
                if days is None
                else f"a message everyone has received is deleted {days:g} days after it "
                "was sent: try again later"
            ),
        )

    def _answered_as_retry(
        self, connection: ChatConnection, me: str, request: m.SendMessage
    ) -> bool:
        """If this message id is stored, answer as its first send did (True); refuse
        if it is someone else's."""
        existing = self._store.get_message(request.message_id)
        if existing is None:
            return False
        if existing.message.sender != me:
            raise RefusedError(ErrorCode.BAD_REQUEST, "this message id is already in use")
        self._outbox.reply(
            connection,
            m.MessageAccepted(
                request_id=request.request_id,
                message_id=request.message_id,
                sent_at=existing.message.sent_at,
            ),
        )
        return True

    def _recipients(self, me: str, to: str) -> list[str]:
        """Who receives a message from ``me`` to ``to``; refuses what may not be sent."""
        if is_room(to):
            require_member(self._store, me, to)
            members = self._store.room_members(to)
            # A member who blocks the sender is never delivered its room messages (the
            # store leaves them out of its backlog and history too): no live push.
            blockers = frozenset(self._store.blockers_of(me)) if len(members) > 1 else frozenset()
            return [member for member in members if member != me and member not in blockers]
        if not self._caches.are_friends(me, to):
            # Whether the name has an account, had one or never had, is nobody's
            # business but its friends': the same answer, and no look-up.
            raise RefusedError(ErrorCode.NOT_FRIENDS, f"you are not friends with {to}")
        return [to]

    def get_history(self, connection: ChatConnection, request: m.GetHistory, now: float) -> None:
        """``get_history``: a page of a conversation, newest first."""
        me, peer = user_of(connection), request.peer
        if is_room(peer):
            require_member(self._store, me, peer)
        # With a user: what the two exchanged, empty for a stranger whether the
        # name has an account, had one (its messages stay readable) or never had.
        messages = self._for_this_device(connection, me, peer, request.limit, request.before)
        self._outbox.reply(
            connection, m.History(request_id=request.request_id, messages=tuple(messages))
        )

    def _for_this_device(
        self, connection: ChatConnection, me: str, peer: str, limit: int, before: bytes | None
    ) -> list[m.ChatMessage]:
        """A history page of what this device may read: every text message, and
        the encrypted ones stored for it (a device reads from when it joined; what
        it was not given it could not decrypt). Pages further back to fill the
        page, a few times at most: a new device's history of a long conversation
        ends where it joined, and finding that out must not scan it all."""
        assert connection.token_hash is not None
        device = session_id(connection.token_hash)
        kept: list[m.ChatMessage] = []
        for _attempt in range(_HISTORY_PAGES):
            page = self._store.history(me, peer, limit, before)
            sealed = [message.id for message in page if message.encrypted]
            mine = self._store.stored_for_device(device, sealed) if sealed else set()
            kept[:0] = [msg for msg in page if not msg.encrypted or msg.id in mine]
            if len(page) < limit or len(kept) >= limit:
                break
            before = page[0].id
        return kept[-limit:]

    def get_message_status(
        self, connection: ChatConnection, request: m.GetMessageStatus, now: float
    ) -> None:
        """``get_message_status``: whether a direct message was delivered."""
        stored = self._store.get_message(request.message_id)
        # Someone else's message, or a room's, is answered as an unknown one: an id
        # tells nobody but its sender anything.
        if stored is None or stored.message.sender != user_of(connection):
            raise RefusedError(ErrorCode.UNKNOWN_MESSAGE, "you sent no message with this id")
        if is_room(stored.message.to):
            raise RefusedError(
                ErrorCode.UNKNOWN_MESSAGE, "delivery status is kept for direct messages only"
            )
        delivered = stored.delivered_at
        if delivered is None and self._tracker.deferred_for(stored.message.to):
            # Its acknowledgement may be among those waiting (CURSOR_WRITE_DELAY):
            # written now, so that the answer is up to date (and its receipt follows).
            self._tracker.flush_acknowledgements()
            again = self._store.get_message(request.message_id)
            delivered = None if again is None else again.delivered_at
        self._outbox.reply(
            connection,
            m.MessageStatus(
                request_id=request.request_id,
                message_id=request.message_id,
                to=stored.message.to,
                delivered_at=None if delivered is None else utc_from_posix(delivered),
            ),
        )


def _size(size: int) -> str:
    """Bytes for people: ``660 bytes``, ``1.0 KiB``, ``64.0 MiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
