"""The storage interface of the chat server state machine.

The server state machine reads and writes accounts, login sessions, friendships,
invitations, rooms and messages only through a :class:`Store`, injected by its
caller. The core ships :class:`~udpchat_proto.chat.memory_store.MemoryStore`;
``udpchat_server`` ships a SQLite one.

Transactions: every write joins the store's current transaction and becomes
durable at the next :meth:`Store.commit`. The server runtime commits once per
batch of datagrams, and only then sends what that batch produced (group commit),
so no acknowledgement ever leaves before what it acknowledges is durable. Reads
see the store's own uncommitted writes.

Conversations and delivery cursors:

* A direct conversation is the pair of its two users; a room's conversation is the
  room. Each conversation is a log: every message gets the next ``seq`` (from 1)
  of its conversation, and the store keeps a global insertion order too.
* A login session has a delivery cursor per conversation: the highest ``seq`` it
  acknowledged. A new session starts with a copy of the *user's* cursors (the
  furthest any of that user's sessions had acknowledged when it was created), so
  a new device receives what no device has yet acknowledged, and two devices each
  receive everything from then on. (Copying at creation, rather than reading the
  user's cursor later, keeps one device's acknowledgement from hiding a message
  from another.)
* A room member receives the room's messages sent after it joined (its cursor is
  floored at the room's ``seq`` when it joined); a member who left receives
  nothing more. A message is stored once per room, never once per member.
* A user's own messages are delivered to its *other* sessions (the message names
  the login session it came from, its ``origin``), so that every device shows
  what the user sent from another; the sending session does not receive it back.
* A direct message is *delivered* when a session of its recipient first
  acknowledges it: the store records when (``StoredMessage.delivered_at``) and
  :meth:`Store.acknowledge_many` reports it, for the sender's receipt.
* Each account's *stored bytes* are what the messages it sent and the store still
  holds count against its quota: each one :func:`stored_size` (its text and the
  space its row takes), and an encrypted one also its :func:`sealed_size` (its
  record and key shares, charged by :meth:`Store.add_encrypted`). The store keeps
  the sum as a counter of its own, written with the messages and decreased by
  whatever deletes them (retention, a room's last leave, a recipient's account
  deletion), so that :meth:`Store.stored_bytes` is one lookup, right across
  restarts.
* A room member is never delivered, nor shown in history, the room messages of a
  user it blocks (:meth:`Store.add_block`), whenever they were sent: the block in
  force when a message is read decides. The cursors still count those messages:
  acknowledging a later one passes them, and so does acknowledging the message a
  run of them directly follows (if they are stored by then), so that a blocked
  sender's messages do not stay in a member's backlog nor, once passed, keep
  retention from deleting them. When a block ends (:meth:`Store.delete_block`, or
  the account of either deleted), each cursor of the blocker's (every session's
  and the user's) first passes the run of room messages from users it blocks that
  directly follows it (or where it joined): those were sent under the block and
  are never delivered, or they would come after messages pushed live since. A
  message from the formerly blocked user that follows a message not yet
  acknowledged is delivered in its turn. (Direct messages need no filter: a
  block ends the friendship, so none is sent after it; those sent before it are
  delivered.)

Failures: a store that cannot do its work for a reason outside the server's
control (a full disk, an I/O error, a read-only or locked database, a database
server that went away) raises :class:`StoreUnavailableError`, never its driver's
own exceptions. Such a failure may have cost the whole batch: the store then
refuses every further write of that batch, and :meth:`Store.commit` raises, having
discarded it, so that nothing the batch reported leaves the server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Protocol, runtime_checkable

import attrs

from ..e2ee.records import ClaimedKey, DeviceKeys, EncryptedMessage, KeyShare, OneTimeKey
from .messages import ChatMessage
from .passwords import PasswordHash
from .validation import is_room

__all__ = [
    "CARRIED_ACKNOWLEDGEMENTS",
    "CURSOR_READERS",
    "FLUSH_ATTEMPTS",
    "KEEPS_DEVICE_SETS",
    "KEY_SHARE_OVERHEAD",
    "MESSAGE_OVERHEAD",
    "SEALED_OVERHEAD",
    "STORE_READS",
    "STORE_WRITES",
    "Account",
    "Acknowledgement",
    "CommitsInOneTrip",
    "LoginSession",
    "Receipt",
    "Store",
    "StoreUnavailableError",
    "StoredMessage",
    "WriteTrackingStore",
    "add_each",
    "conversation_key",
    "sealed_size",
    "stored_size",
]

CARRIED_ACKNOWLEDGEMENTS: Final = 8
"""Acknowledged ids of one login session, waiting to be written, from which a batch
that writes anyway carries that session's (``WriteTrackingStore.commit``); fewer
wait for the server's timer (``CURSOR_WRITE_DELAY``). Carried by every batch that
writes, as they were, they cost each commit three more statements (a savepoint,
the delivery marks and the cursors), and their receipts a push and a packet each
to their senders, answered by an ACK: at 10 messages a second 16% of the server's
instructions and 17% of its datagrams a message. Per session and small, so that
no batch carries many: with one bound for all (every session's once one had 32),
at 1,000/s the sessions filled up together and one batch a second wrote about a
thousand acknowledgements and receipts, which doubled p99 (6 to 14 ms). It also
keeps the refill reads cheap, which read past a session's deferred ids."""

MESSAGE_OVERHEAD: Final = 160
"""Bytes each stored message counts against its sender's quota on top of its text:
about what its row and index entries take (SQLite measured 144 bytes a message
with a 1-byte text; PostgreSQL's row headers are larger), so that a flood of tiny
messages is charged for the disk it really fills."""


def stored_size(text: str) -> int:
    """What a message with this text counts against its sender's storage quota: its
    UTF-8 bytes plus :data:`MESSAGE_OVERHEAD`."""
    return len(text.encode()) + MESSAGE_OVERHEAD


SEALED_OVERHEAD: Final = 256
"""Bytes an encrypted message's record counts on top of its ciphertext: its other
fields (conversation, sender, device, Megolm session id, as the SQL stores keep
them: 224 bytes of JSON) and its row."""

KEY_SHARE_OVERHEAD: Final = 576
"""Bytes each key share stored with a message counts on top of its Olm ciphertext:
the sender's device keys it carries, its recipient and its row (about 560 bytes in
the SQL stores: a share is kept whole, once per recipient device)."""


def sealed_size(ciphertext: EncryptedMessage, key_shares: Iterable[KeyShare]) -> int:
    """What an encrypted message's record and key shares, stored beside its row,
    count against its sender's storage quota on top of :func:`stored_size` (whose
    text is empty): the ciphertext's bytes plus :data:`SEALED_OVERHEAD`, and each
    share's ciphertext bytes plus :data:`KEY_SHARE_OVERHEAD`. A rotation in a large
    room is charged for every share it leaves on the server."""
    return (
        len(ciphertext.ciphertext)
        + SEALED_OVERHEAD
        + sum(len(share.ciphertext) + KEY_SHARE_OVERHEAD for share in key_shares)
    )


def add_each(
    add_message: Callable[[ChatMessage, bytes | None], StoredMessage],
    messages: Sequence[tuple[ChatMessage, bytes | None]],
) -> list[StoredMessage | None]:
    """:meth:`Store.add_messages` done as a store's ``add_message`` for each, in
    order (None for a taken id): for a store with no cheaper way."""
    stored: list[StoredMessage | None] = []
    for message, origin in messages:
        try:
            stored.append(add_message(message, origin))
        except ValueError:
            stored.append(None)
    return stored


def conversation_key(sender: str, to: str) -> str:
    """The name of the conversation a message from ``sender`` to ``to`` belongs to.

    A room (``to`` starts with ``#``) is its own conversation; a direct
    conversation is the unordered pair of its users, written as the two names in
    alphabetical order separated by a space (a character no name may contain), so
    both directions map to the same key.
    """
    if is_room(to):
        return to
    first, second = sorted((sender, to))
    return f"{first} {second}"


Acknowledgement = tuple[str, bytes, Sequence[bytes]]
"""``(username, token hash, message ids)``: what one session acknowledged."""


class StoreUnavailableError(Exception):
    """The store cannot do its work now: nothing of the failed call was kept.

    Raised by any :class:`Store` method for a cause outside the server's control
    (disk full, I/O error, read-only or locked database, database server down),
    and by :meth:`Store.commit` when the batch could not be made durable, after
    discarding it. The server answers the request with ``unavailable``; the cause
    is usually transient, and the store works again once it is gone.

    Attributes:
        reason: a few words for people ("disk full", "I/O error" ...).
        conflict: the call lost a race with another writer of the same database (a
            deadlock, a serialization failure): nothing is wrong, and the same
            request done again at once will most likely succeed.
    """

    def __init__(self, reason: str, detail: str = "", *, conflict: bool = False) -> None:
        self.reason = reason
        self.detail = detail
        self.conflict = conflict
        super().__init__(f"{reason} ({detail})" if detail else reason)


@attrs.frozen(kw_only=True)
class Account:
    """A registered user."""

    username: str
    """Lowercase, validated."""
    password: PasswordHash
    created_at: float
    """POSIX seconds."""
    disabled: bool = False
    """Disabled by the server's operator: its logins are refused."""


@attrs.frozen(kw_only=True)
class LoginSession:
    """A durable login: the store keeps the SHA-256 of the token, never the token."""

    token_hash: bytes
    username: str
    created_at: float
    last_used_at: float


@attrs.frozen(kw_only=True)
class StoredMessage:
    """A committed message and its place in its conversation."""

    message: ChatMessage
    seq: int
    """Position in its conversation, from 1."""
    delivered_at: float | None = None
    """A direct message: when a session of its recipient first acknowledged it
    (POSIX seconds); None while it waits (and for a room message)."""


@attrs.frozen(kw_only=True)
class Receipt:
    """A direct message that has just reached its recipient (see
    :meth:`Store.acknowledge_many`)."""

    message_id: bytes
    sender: str
    recipient: str
    delivered_at: float
    """POSIX seconds."""


class Store(Protocol):
    """What the chat server state machine needs from persistence.

    Names passed in are already validated and lowercase. Lists come back sorted
    (names alphabetically, messages in conversation / insertion order).
    """

    # --- transactions ------------------------------------------------------------

    def commit(self) -> None:
        """Make every write since the last commit durable.

        Raises:
            StoreUnavailableError: the batch could not be made durable. Every write
                since the last commit is discarded, and the store is ready for a
                new batch.
        """
        ...

    def close(self) -> None:
        """Release the store's resources (uncommitted writes are discarded)."""
        ...

    def atomic(self) -> contextlib.AbstractContextManager[None]:
        """A block whose writes all happen or none do, inside the current batch.

        The server runs each request in one, so that a store failure half-way
        through a request (a full disk, say) leaves none of that request's writes
        to be committed with the rest of the batch. Blocks do not nest.
        """
        ...

    # --- accounts ----------------------------------------------------------------

    def create_account(self, username: str, password: PasswordHash, now: float) -> bool:
        """Create an account; False (and no change) if the name is taken."""
        ...

    def get_account(self, username: str) -> Account | None:
        """The account of ``username``, or None."""
        ...

    def set_password(self, username: str, password: PasswordHash) -> bool:
        """Replace the password record of an account; False if there is none."""
        ...

    def set_disabled(self, username: str, disabled: bool) -> bool:
        """Disable (or enable) an account; False if there is none."""
        ...

    def accounts(self) -> list[tuple[str, bool]]:
        """Every account's name and whether it is disabled, sorted by name."""
        ...

    def delete_account(self, username: str, now: float) -> None:
        """Delete an account and what is only its: its sessions (and their
        cursors), its user cursors, friendships, invitations and blocks either way
        (a block on it ends as :meth:`delete_block` ends one), its room
        memberships (as :meth:`leave_room`), and the direct messages
        waiting for it (not yet delivered). Messages it sent stay. The name is
        retired: :meth:`create_account` refuses it from then on."""
        ...

    # --- login sessions ------------------------------------------------------------

    def create_session(self, token_hash: bytes, username: str, now: float) -> None:
        """Record a new login session."""
        ...

    def get_session(self, token_hash: bytes) -> LoginSession | None:
        """The login session with this token hash, or None."""
        ...

    def touch_session(self, token_hash: bytes, now: float) -> None:
        """Note that the session was used at ``now`` (it expires when unused)."""
        ...

    def existing_sessions(self, token_hashes: list[bytes]) -> set[bytes]:
        """Those of ``token_hashes`` that are sessions still (one query: a cluster's
        node checks its connections' sessions with it)."""
        ...

    def sessions_of(self, username: str) -> list[LoginSession]:
        """The login sessions of ``username``, newest (by creation) first."""
        ...

    def delete_session(self, token_hash: bytes) -> None:
        """End a login session and forget its delivery cursors."""
        ...

    def delete_sessions_unused_since(self, cutoff: float) -> int:
        """Expire every session last used before ``cutoff``; return how many."""
        ...

    def delete_sessions_created_before(self, cutoff: float) -> list[bytes]:
        """End every session created before ``cutoff`` (its absolute lifetime is
        over, used or not); return their token hashes."""
        ...

    # --- invitations and friends ------------------------------------------------------

    def add_invitation(self, sender: str, recipient: str, now: float) -> None:
        """Record that ``sender`` invited ``recipient``."""
        ...

    def delete_invitation(self, sender: str, recipient: str) -> bool:
        """Remove that invitation; False if there was none."""
        ...

    def has_invitation(self, sender: str, recipient: str) -> bool:
        """Whether ``sender`` has a pending invitation to ``recipient``."""
        ...

    def incoming_invitations(self, username: str) -> list[str]:
        """Who has invited ``username`` (sorted)."""
        ...

    def outgoing_invitations(self, username: str) -> list[str]:
        """Whom ``username`` has invited (sorted)."""
        ...

    def add_friendship(self, a: str, b: str, now: float) -> None:
        """Make ``a`` and ``b`` friends (symmetric)."""
        ...

    def delete_friendship(self, a: str, b: str) -> bool:
        """End the friendship; False if they were not friends."""
        ...

    def are_friends(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are friends."""
        ...

    def friends_of(self, username: str) -> list[str]:
        """The friends of ``username`` (sorted)."""
        ...

    def friends_of_many(self, usernames: list[str]) -> dict[str, list[str]]:
        """The friends of each of ``usernames`` (sorted), in one read: every name
        asked is a key, with ``[]`` for none. A cluster's node reads those of all
        its users at once when another node's presence changes (never a read per
        name)."""
        ...

    def add_block(self, username: str, blocked: str, now: float) -> bool:
        """Record that ``username`` blocks ``blocked``; False if it already did."""
        ...

    def delete_block(self, username: str, blocked: str) -> bool:
        """``username`` stops blocking ``blocked``; False if it did not.

        Before the block goes, each of ``username``'s room cursors (every session's
        and the user's) passes the messages from users it blocks that directly
        follow it, or follow where it joined (see the module docstring): sent under
        the block, they are never delivered, so nothing arrives behind a message
        pushed after the unblock."""
        ...

    def has_blocked(self, username: str, blocked: str) -> bool:
        """Whether ``username`` blocks ``blocked``."""
        ...

    def blocked_by(self, username: str) -> list[str]:
        """Whom ``username`` blocks (sorted)."""
        ...

    def blockers_of(self, username: str) -> list[str]:
        """Who blocks ``username`` (sorted)."""
        ...

    # --- messages -------------------------------------------------------------------

    def add_message(self, message: ChatMessage, origin: bytes | None = None) -> StoredMessage:
        """Append a message to the conversation of ``(message.sender, message.to)``.

        ``origin`` is the token hash of the login session that sent it: the
        sender's other sessions receive it, that one does not (None: none does).

        Raises:
            ValueError: a message with this id is already stored (nothing is
                written; the store's unique index finds it, with no lookup first).
        """
        ...

    def add_messages(
        self, messages: Sequence[tuple[ChatMessage, bytes | None]]
    ) -> list[StoredMessage | None]:
        """:meth:`add_message` for several ``(message, origin)`` at once, in order: a
        store may then take them in a few statements, not a few each (a cluster's
        node stores a batch's messages so). For each, what was stored, or None where
        its id is already stored, or is an earlier one's of the same call: nothing of
        that one is kept.

        Raises:
            StoreUnavailableError: as for any write; the batch may then be lost
                (see the module docstring): :meth:`commit` says so.
        """
        ...

    def get_message(self, message_id: bytes) -> StoredMessage | None:
        """The message with this id, or None."""
        ...

    def history(
        self, username: str, peer: str, limit: int, before: bytes | None = None
    ) -> list[ChatMessage]:
        """The last ``limit`` messages between ``username`` and ``peer`` (a user or a
        room), oldest first; of a room, only those sent since ``username`` joined it
        (nothing if not a member), and none from a user ``username`` blocks: a
        member reads what it would have received. With ``before`` (a message id
        of that conversation), only those older than it (nothing if it is not one
        of the conversation's)."""
        ...

    def pending_deliveries(self, username: str, token_hash: bytes, limit: int) -> list[ChatMessage]:
        """Up to ``limit`` messages for ``username`` not yet acknowledged by the
        login session ``token_hash``, in the order they were stored (see the module
        docstring for the cursor rules): what others sent to the user or its
        rooms (not the room messages of users it blocks), and what the user sent
        from its other sessions; of the encrypted messages, only those stored for
        the session's device (:meth:`add_encrypted`: its id is the session's id)."""
        ...

    def pending_deliveries_many(
        self, sessions: Sequence[tuple[str, bytes, int]]
    ) -> list[list[ChatMessage]]:
        """:meth:`pending_deliveries` for each ``(username, token_hash, limit)``, in
        order, in one read where the store can (a cluster's node refills every
        connection a batch's news names at once: one query, not one a connection)."""
        ...

    def acknowledge(
        self, username: str, token_hash: bytes, message_ids: Sequence[bytes], now: float
    ) -> list[Receipt]:
        """Advance the session's (and the user's) cursors past these messages.

        Ids that are unknown or in no conversation of ``username`` are ignored. In a
        room, a cursor goes on past the messages that directly follow the highest
        one acknowledged and come from users ``username`` blocks (they are never
        delivered to it; see the module docstring).

        Returns:
            The direct messages to ``username`` this delivered for the first time
            (they, and every earlier one of their conversation, are marked
            delivered at ``now``).
        """
        ...

    def acknowledge_many(
        self, acknowledgements: Sequence[Acknowledgement], now: float
    ) -> list[Receipt]:
        """:meth:`acknowledge` for several sessions at once (a store may then write
        each table once for all of them)."""
        ...

    # --- device keys (end-to-end encryption) -------------------------------------------

    def set_device_keys(self, token_hash: bytes, keys: DeviceKeys, now: float) -> bool:
        """Record the keys of the device that is the login session ``token_hash``
        (``keys.device_id`` is that session's id, checked by the caller); False, and
        no change, if it has keys already (a device's keys never change)."""
        ...

    def session_device(self, token_hash: bytes) -> DeviceKeys | None:
        """The keys of the device that is this login session, or None (no keys
        uploaded, or the session ended)."""
        ...

    def devices_of(self, usernames: Sequence[str]) -> list[tuple[DeviceKeys, float]]:
        """Every device with keys, of a live session, of each of ``usernames``, with
        when its keys were stored (POSIX seconds); sorted by user, then time, then
        device id. An ended session's device is never among them."""
        ...

    def add_one_time_keys(self, device_id: bytes, keys: Sequence[OneTimeKey]) -> None:
        """Keep these keys of the device: one-time keys (a key id it holds already
        is ignored), and a fallback key (``fallback``), which replaces the one it
        had and is not used yet. Keys of a device without keys are ignored."""
        ...

    def key_counts(self, device_id: bytes) -> tuple[int, bool]:
        """How many one-time keys the device has here, and whether a claim took its
        fallback key since it was stored."""
        ...

    def claim_key(self, device_id: bytes, *, one_time: bool = True) -> ClaimedKey | None:
        """A key of a live device: one of its one-time keys, deleted as it is given
        (never given twice, whoever else claims), or when none is left (or
        ``one_time`` is False: the server's budget for the device is spent) its
        fallback key (noted as used); None for no such device or no key."""
        ...

    def add_encrypted(
        self,
        message_id: bytes,
        ciphertext: EncryptedMessage,
        devices: Sequence[bytes],
        key_shares: Sequence[tuple[bytes, KeyShare]],
        *,
        sealed_bytes: int | None = None,
    ) -> None:
        """Keep, for the encrypted message just added (:meth:`add_message`), its
        record (``ciphertext``, the message's own), the devices it was stored for and the key
        shares that go with it, each ``(device id, share)``. A device is delivered,
        and shown in history, only the encrypted messages stored for it. The
        sender's :meth:`stored_bytes` go up by :func:`sealed_size` of the record and
        shares (in the same transaction), and down by as much when the message is
        deleted. ``sealed_bytes``: that size, when the caller counted it already
        (for its quota check), so that the store need not count it again."""
        ...

    def add_encrypted_message(
        self,
        message: ChatMessage,
        origin: bytes | None,
        ciphertext: EncryptedMessage,
        devices: Sequence[bytes],
        key_shares: Sequence[tuple[bytes, KeyShare]],
        *,
        sealed_bytes: int | None = None,
    ) -> StoredMessage:
        """:meth:`add_message` then :meth:`add_encrypted`, as one write: all of it is
        kept or none (a store may take it in fewer statements than the two would;
        the SQL stores keep the record and the device set in the message's row).

        Raises:
            ValueError: a message with this id is already stored (nothing is kept).
            StoreUnavailableError: as for any write; if the row was written and
                what goes beside it was not, the batch is lost (:meth:`commit` says
                so): a message is never kept without its record and devices.
        """
        ...

    def key_shares_for(self, message_id: bytes, device_id: bytes) -> list[KeyShare]:
        """The key shares sent with this message for this device, in the order sent."""
        ...

    def stored_for_device(self, device_id: bytes, message_ids: Sequence[bytes]) -> set[bytes]:
        """Those of ``message_ids`` that are encrypted messages stored for the device."""
        ...

    # --- rooms -------------------------------------------------------------------------

    def join_room(self, room: str, username: str, now: float) -> bool:
        """Add ``username`` to ``room``, creating the room; False if already a member."""
        ...

    def leave_room(self, room: str, username: str) -> bool:
        """Remove ``username`` from ``room``; False if not a member.

        The last member's leave deletes the room, its history and every cursor
        into it (a later join creates a new, empty room).
        """
        ...

    def delete_delivered_before(self, cutoff: float, limit: int) -> int:
        """Retention: delete up to ``limit`` of each conversation's oldest messages
        sent before ``cutoff`` (POSIX seconds) that every recipient has received on
        every one of its sessions (and in its user cursor, where a new session
        starts); return how many. Only a prefix of each conversation goes (the
        first message that must stay keeps every later one), so history has no
        gaps; a member's messages before they joined do not count. Their senders'
        :meth:`stored_bytes` go down by what they counted."""
        ...

    def count_waiting(self, username: str, limit: int) -> int:
        """How many direct messages wait for ``username``, not acknowledged by any of
        its sessions (room messages are not counted), at most ``limit``."""
        ...

    def stored_bytes(self, username: str) -> int:
        """What the stored messages ``username`` sent count against its quota: the sum
        of their :func:`stored_size` and, for the encrypted ones, their
        :func:`sealed_size` (0 for no account). A counter the store keeps up
        to date as messages are added and deleted (uncommitted writes included), never
        a scan."""
        ...

    def room_exists(self, room: str) -> bool:
        """Whether the room was ever created."""
        ...

    def room_members(self, room: str) -> list[str]:
        """The members of ``room`` (sorted)."""
        ...

    def rooms_of(self, username: str) -> list[tuple[str, int]]:
        """The rooms ``username`` is in, with their member counts (sorted by name)."""
        ...


STORE_READS: Final = frozenset(
    {
        "get_account",
        "accounts",
        "get_session",
        "existing_sessions",
        "sessions_of",
        "has_invitation",
        "incoming_invitations",
        "outgoing_invitations",
        "are_friends",
        "friends_of",
        "friends_of_many",
        "has_blocked",
        "blocked_by",
        "blockers_of",
        "get_message",
        "history",
        "pending_deliveries",
        "pending_deliveries_many",
        "count_waiting",
        "stored_bytes",
        "room_exists",
        "room_members",
        "rooms_of",
        "session_device",
        "devices_of",
        "key_counts",
        "key_shares_for",
        "stored_for_device",
    }
)
"""The :class:`Store` methods that only read."""

STORE_WRITES: Final = frozenset(
    {
        "create_account",
        "set_password",
        "set_disabled",
        "delete_account",
        "create_session",
        "touch_session",
        "delete_session",
        "delete_sessions_unused_since",
        "delete_sessions_created_before",
        "add_invitation",
        "delete_invitation",
        "add_friendship",
        "delete_friendship",
        "add_block",
        "delete_block",
        "add_message",
        "add_messages",
        "acknowledge",
        "acknowledge_many",
        "join_room",
        "leave_room",
        "delete_delivered_before",
        "set_device_keys",
        "add_one_time_keys",
        "claim_key",
        "add_encrypted",
        "add_encrypted_message",
    }
)
"""The :class:`Store` methods that write (and so join the current batch)."""

KEEPS_DEVICE_SETS: Final = frozenset(
    {
        "create_session",
        "touch_session",
        "add_invitation",
        "delete_invitation",
        "add_friendship",
        "delete_friendship",
        "add_block",
        "delete_block",
        "add_message",
        "add_messages",
        "acknowledge",
        "acknowledge_many",
        "delete_delivered_before",
        "add_one_time_keys",
        "claim_key",
        "add_encrypted",
        "add_encrypted_message",
    }
)
"""The :data:`STORE_WRITES` that never change which devices a user has (a session
is a device only once it uploads keys: ``set_device_keys``). Every other write
moves :attr:`WriteTrackingStore.device_generation` on: a write added later is
counted as one that may change a device set unless it is listed here."""

CURSOR_READERS: Final = frozenset(
    {
        "create_session",
        "delete_account",
        "delete_session",
        "delete_sessions_unused_since",
        "delete_sessions_created_before",
        "delete_block",
        "leave_room",
        "delete_delivered_before",
    }
)
"""The :class:`Store` writes whose work depends on the delivery cursors (they copy,
move or delete them): deferred acknowledgements are written before they run. The reads
need not wait for a write (which a full disk would refuse): ``pending_deliveries``
leaves out what waits to be acknowledged, and ``count_waiting``, a cap, may count
it for a moment."""


FLUSH_ATTEMPTS: Final = 3
"""Most tries at storing a batch's staged messages when each loses a race with
another node (a deadlock: see ``StoreUnavailableError.conflict``)."""


@runtime_checkable
class CommitsInOneTrip(Protocol):
    """A store a round trip away that can end a batch in one: store its messages,
    write its acknowledgements and commit (PostgreSQL's pipeline). Only for a batch
    that wrote nothing before (:attr:`transaction_open` False): the whole batch is
    then this one call, and a conflict with another node is retried whole."""

    @property
    def transaction_open(self) -> bool:
        """Whether the batch wrote anything already (then the call is not made)."""
        ...

    def store_and_commit(
        self,
        messages: Sequence[tuple[ChatMessage, bytes | None]],
        acknowledgements: Sequence[Acknowledgement],
        now: float,
    ) -> tuple[list[StoredMessage | None], list[Receipt] | None]:
        """Store ``messages`` (as :meth:`Store.add_messages`), write the
        acknowledgements (as :meth:`Store.acknowledge_many`, in a block of their
        own) and commit, all in one transaction. Returns what ``add_messages``
        would, and the receipts, or None if the acknowledgements alone failed
        (undone; the rest committed).

        Raises:
            StoreUnavailableError: nothing was committed (``conflict``: a race
                with another node, the same call will most likely pass).
        """
        ...


_Staged = tuple[ChatMessage, bytes | None, Callable[[], None], Callable[[], None] | None, bool, int]
"""A staged message: it, its origin, its ``refused`` and ``stored`` callbacks,
whether ``stored`` writes, and what ``stored`` charges its sender (see
:meth:`WriteTrackingStore.stage_message`)."""


class WriteTrackingStore:
    """A store that forwards every call to ``inner``, notes writes and defers
    cursor moves.

    Its :data:`STORE_READS` and :data:`STORE_WRITES` methods are derived from those
    two declarations: a write sets :attr:`dirty` (the batch has something to
    commit) before it runs, so that even a write that fails is committed, or rolled
    back, with its batch. Use it through ``typing.cast(Store, tracker)``.

    :meth:`acknowledge` is deferred: the ids wait in memory (merged per session)
    and are written when the server's timer calls :meth:`flush_acknowledgements`
    (within ``CURSOR_WRITE_DELAY``), before a write that copies or deletes cursors
    (:data:`CURSOR_READERS`), or at the next :meth:`commit` of a batch that writes
    anyway, a session's once it has ``carry_at`` of them; meanwhile
    :meth:`pending_deliveries` leaves them out. An acknowledgement alone then costs
    no commit of its own, and a batch's commit no cursor write of its own.
    Cursors only ever move forward and a lost move only means a message is pushed
    again (clients drop repeats by id), so the delay costs nothing the promise
    needs; written moves that a failed request or a lost batch undid are put back
    to be written again.

    With ``stage_messages`` (a database a round trip away: PostgreSQL, always on a
    cluster's node),
    new messages are *staged* (:meth:`stage_message`) and stored together by one
    :meth:`Store.add_messages` call: before any other write, before a read that
    could see them (:meth:`get_message`, :meth:`history`), before an atomic block,
    and at the commit. Their answers wait with the batch meanwhile, as every answer
    of a batch that writes does; one whose id turned out to be taken is told so by
    its ``refused`` callback, before the commit. :meth:`stored_bytes` counts the
    staged ones.

    Args:
        inner: the store to forward to.
        stage_messages: stage new messages (see above).
        carry_at: a session's deferred ids from which a commit carries them all
            (:data:`CARRIED_ACKNOWLEDGEMENTS`; 1: every commit that writes).
    """

    def __init__(
        self,
        inner: Store,
        *,
        stage_messages: bool = False,
        carry_at: int = CARRIED_ACKNOWLEDGEMENTS,
    ) -> None:
        self.inner = inner
        self._carry_at = carry_at
        self._carry: dict[tuple[str, bytes], None] = {}
        """The sessions whose deferred ids reached ``carry_at``: the next commit
        writes theirs (only theirs: the others' stay few)."""
        self.stages_messages = stage_messages
        """Whether new messages are staged (:meth:`stage_message`)."""
        self._staged: list[_Staged] = []
        """Messages staged and not stored yet, in order, each with its callbacks."""
        self._staged_bytes: dict[str, int] = {}
        """What the staged messages count against each sender's quota."""
        self._flush_failure: StoreUnavailableError | None = None
        """Why storing the staged messages failed in this batch (it is lost)."""
        self.conflicts_retried = 0
        """How many times storing the staged messages lost a race and was done again."""
        self.dirty = False
        """Whether anything was written since the last :meth:`commit`."""
        self.device_generation = 0
        """Moved on by every write that may change a user's devices or a room's
        members (all but :data:`KEEPS_DEVICE_SETS`), by a failed atomic block and
        by a lost batch (what was read meanwhile may have been undone): a device
        set read at one generation holds while it stays the same (``Caches``)."""
        self._deferred: dict[tuple[str, bytes], dict[bytes, None]] = {}
        """Acknowledged ids not written yet, per (username, token hash)."""
        self._written: list[tuple[tuple[str, bytes], list[bytes]]] = []
        """Acknowledgements written in the current batch (put back if it is lost)."""
        self._acknowledged_at = 0.0
        """When the latest deferred acknowledgement came (wall clock)."""
        self._receipts: list[Receipt] = []
        """Deliveries the current batch's acknowledgements recorded, reported once it
        is durable (:meth:`take_receipts`)."""

    @property
    def acknowledgements_deferred(self) -> bool:
        """Whether acknowledgements wait to be written."""
        return bool(self._deferred)

    def acknowledge(
        self, username: str, token_hash: bytes, message_ids: Sequence[bytes], now: float
    ) -> list[Receipt]:
        """Note that the session acknowledged these; written later (see the class),
        so the receipts come from :meth:`take_receipts` once they are durable."""
        waiting = self._deferred.setdefault((username, token_hash), {})
        waiting.update(dict.fromkeys(message_ids))
        if len(waiting) >= self._carry_at:
            self._carry[username, token_hash] = None
        self._acknowledged_at = now
        return []

    def acknowledge_many(
        self, acknowledgements: Sequence[Acknowledgement], now: float
    ) -> list[Receipt]:
        """:meth:`acknowledge` each (deferred alike)."""
        for username, token_hash, message_ids in acknowledgements:
            self.acknowledge(username, token_hash, message_ids, now)
        return []

    # --- staged messages -------------------------------------------------------------

    def stage_message(
        self,
        message: ChatMessage,
        origin: bytes | None,
        refused: Callable[[], None],
        stored: Callable[[], None] | None = None,
        *,
        writes: bool = False,
        sealed: int = 0,
    ) -> None:
        """Store ``message`` with the batch's others (see the class). Once they are
        stored (before the commit), ``refused`` is called if its id was taken
        (nothing of it was kept), else ``stored``; ``writes``: ``stored`` writes
        what refers to the message (then all of it is one atomic block, and its
        failure loses the batch). ``sealed``: what ``stored`` will charge its
        sender besides (an encrypted message's :func:`sealed_size`), counted by
        :meth:`stored_bytes` meanwhile, so that the batch's next message of the
        same sender sees it. The batch counts as written from now on."""
        self.dirty = True
        self._staged.append((message, origin, refused, stored, writes, sealed))
        size = stored_size(message.text) + sealed
        self._staged_bytes[message.sender] = self._staged_bytes.get(message.sender, 0) + size

    def flush_messages(self) -> None:
        """Store the staged messages now (one :meth:`Store.add_messages` call), then
        call the ``refused`` of each that was not stored.

        Raises:
            StoreUnavailableError: from ``inner``; the batch is lost (the staged
                messages' answers were held with it), and :meth:`commit` raises.
        """
        if not self._staged:
            return
        staged, self._staged, self._staged_bytes = self._staged, [], {}
        messages = [(message, origin) for message, origin, *_ in staged]
        # A ``stored`` callback that writes (an encrypted message's devices and
        # shares) writes in one atomic block with the messages: should it fail, no
        # message is kept without what refers to it.
        writes = any(entry[4] for entry in staged)
        for attempt in range(1, FLUSH_ATTEMPTS + 1):
            calling = False
            try:
                with self.inner.atomic() if writes else contextlib.nullcontext():
                    stored = self.inner.add_messages(messages)
                    calling = True
                    self._call_back(staged, stored)
            except StoreUnavailableError as failure:
                if failure.conflict and not calling and attempt < FLUSH_ATTEMPTS:
                    # Lost a race with another node (a deadlock): nothing was kept,
                    # and the same statements done again will most likely pass.
                    # (Not once callbacks ran: they may have pushed.)
                    self.conflicts_retried += 1
                    continue
                self._flush_failure = failure
                raise
            break

    @staticmethod
    def _call_back(staged: Sequence[_Staged], stored: Sequence[StoredMessage | None]) -> None:
        for (_message, _origin, refused, done, *_), kept in zip(staged, stored, strict=True):
            if kept is None:
                refused()
            elif done is not None:
                done()

    def stored_bytes(self, username: str) -> int:
        """``inner``'s, and what the staged messages of ``username`` add to it."""
        return self.inner.stored_bytes(username) + self._staged_bytes.get(username, 0)

    def _unstage_from(self, start: int) -> None:
        """Forget the messages staged from index ``start`` on (their step failed)."""
        if len(self._staged) <= start:
            return
        del self._staged[start:]
        self._staged_bytes = {}
        for message, _origin, _refused, _done, _writes, sealed in self._staged:
            size = stored_size(message.text) + sealed
            self._staged_bytes[message.sender] = self._staged_bytes.get(message.sender, 0) + size

    def deferred_for(self, username: str) -> bool:
        """Whether acknowledgements of a session of ``username`` wait to be written
        (a scan of the waiting sessions: for a rare question, not the hot path)."""
        return any(user == username for user, _hashed in self._deferred)

    def take_receipts(self) -> list[Receipt]:
        """The deliveries recorded by the batch just committed (each returned once)."""
        receipts, self._receipts = self._receipts, []
        return receipts

    def pending_deliveries(self, username: str, token_hash: bytes, limit: int) -> list[ChatMessage]:
        """``inner``'s, without the messages whose acknowledgement waits to be written."""
        deferred = self._deferred.get((username, token_hash))
        if not deferred:
            return self.inner.pending_deliveries(username, token_hash, limit)
        # Ask for as many more as could be left out, so that a short answer still
        # means the end of the backlog.
        pending = self.inner.pending_deliveries(username, token_hash, limit + len(deferred))
        return [message for message in pending if message.id not in deferred][:limit]

    def pending_deliveries_many(
        self, sessions: Sequence[tuple[str, bytes, int]]
    ) -> list[list[ChatMessage]]:
        """``inner``'s (one read), each without the messages whose acknowledgement
        waits to be written."""
        if not sessions:
            return []
        deferred = [self._deferred.get((user, hashed)) for user, hashed, _limit in sessions]
        found = self.inner.pending_deliveries_many(
            [
                (user, hashed, limit + len(waiting or ()))
                for (user, hashed, limit), waiting in zip(sessions, deferred, strict=True)
            ]
        )
        return [
            pending
            if not waiting
            else [message for message in pending if message.id not in waiting][:limit]
            for (_user, _hashed, limit), waiting, pending in zip(
                sessions, deferred, found, strict=True
            )
        ]

    def flush_acknowledgements(
        self, *, own_block: bool = False, sessions: Iterable[tuple[str, bytes]] | None = None
    ) -> None:
        """Write the deferred acknowledgements into the current batch.

        Args:
            own_block: in an atomic block of their own (outside any request's: on
                the timer, or at commit), so that a write that fails half-way
                leaves nothing of them in the batch.
            sessions: only those of these ``(username, token hash)`` (None: all).

        Raises:
            StoreUnavailableError: from ``inner`` (what was not written waits again).
        """
        if sessions is None:
            deferred, self._deferred = self._deferred, {}
            self._carry.clear()
        else:
            deferred = {}
            for key in sessions:
                if (ids := self._deferred.pop(key, None)) is not None:
                    deferred[key] = ids
                self._carry.pop(key, None)
        if not deferred:
            return
        pending = [(key, list(ids)) for key, ids in deferred.items()]
        try:
            self.dirty = True
            with self.inner.atomic() if own_block else contextlib.nullcontext():
                # One call for every session: a store writes each table once.
                receipts = self.inner.acknowledge_many(
                    [(user, hashed, ids) for (user, hashed), ids in pending],
                    self._acknowledged_at,
                )
        except BaseException:
            self._put_back(pending)
            raise
        self._written.extend(pending)
        self._receipts.extend(receipts)

    def carry_deferred(self) -> None:
        """Have this batch's commit write every deferred id (the timer's write,
        where a store a round trip away ends the batch in one:
        :class:`CommitsInOneTrip`). The batch counts as written from now on; a
        failure there leaves them waiting, as :meth:`commit` says."""
        if not self._deferred:
            return
        self._carry = dict.fromkeys(self._deferred)
        self.dirty = True

    def _put_back(self, items: Sequence[tuple[tuple[str, bytes], Iterable[bytes]]]) -> None:
        for key, ids in items:
            # Older ids first: the cursors take the highest anyway.
            merged = dict.fromkeys(ids)
            merged.update(self._deferred.get(key, {}))
            self._deferred[key] = merged
            if len(merged) >= self._carry_at:
                self._carry[key] = None

    def commit(self) -> None:
        """Store the staged messages, write the deferred ids of the sessions that have
        ``carry_at`` waiting, and commit ``inner``; the batch is over either way
        (see ``Store.commit``), and a lost batch's acknowledgements wait again.

        Raises:
            StoreUnavailableError: from ``inner``, or the staged messages could not
                be stored (the batch is lost).
        """
        if self._commit_in_one_trip():
            return
        with contextlib.suppress(StoreUnavailableError):
            self.flush_messages()  # (if it fails, the commit below says the batch is lost)
        if self._carry:
            # Only those sessions': a few wait for the timer (CARRIED_ACKNOWLEDGEMENTS).
            # A failure leaves them waiting (put back), not the batch half-written:
            # the rest of it commits (or its commit says the whole batch is lost).
            with contextlib.suppress(StoreUnavailableError):
                self.flush_acknowledgements(own_block=True, sessions=list(self._carry))
        failure, self._flush_failure = self._flush_failure, None
        try:
            self.inner.commit()
            if failure is not None:
                # (A store that lost the staged messages loses the batch: its
                # commit raises. Were one not to, the answers held are still wrong.)
                raise failure
        except BaseException:
            self.batch_lost()
            raise
        finally:
            self.dirty = False
        self._written.clear()

    def _commit_in_one_trip(self) -> bool:
        """The commit of a batch whose only writes are its staged messages and the
        carried acknowledgements, in one round trip if ``inner`` can
        (:class:`CommitsInOneTrip`): at low load a batch is one message and the
        acknowledgements since the last, and their three round trips (messages,
        acknowledgements, commit) were most of a message's latency. Returns False
        (nothing done) where it does not apply.

        Raises:
            StoreUnavailableError: the batch is lost (as :meth:`commit`).
        """
        inner = self.inner
        if (
            not (self._staged or self._carry)
            or not isinstance(inner, CommitsInOneTrip)
            or inner.transaction_open
            or self._flush_failure is not None
            # (A message whose ``stored`` writes needs the round trip before it.)
            or any(entry[4] for entry in self._staged)
        ):
            return False
        staged, self._staged, self._staged_bytes = self._staged, [], {}
        messages = [(message, origin) for message, origin, *_ in staged]
        taken = self._take_deferred(list(self._carry))
        acknowledgements = [(user, hashed, ids) for (user, hashed), ids in taken]
        for attempt in range(1, FLUSH_ATTEMPTS + 1):
            try:
                stored, receipts = inner.store_and_commit(
                    messages, acknowledgements, self._acknowledged_at
                )
            except StoreUnavailableError as failure:
                if failure.conflict and attempt < FLUSH_ATTEMPTS:
                    # Lost a race with another node: nothing was kept, and the
                    # batch, all of it in this call, is done again.
                    self.conflicts_retried += 1
                    continue
                self._put_back(taken)
                self.batch_lost()
                raise
            break
        if receipts is None:
            self._put_back(taken)  # (only they failed: written by a later batch)
        else:
            self._receipts.extend(receipts)
        self._written.clear()
        try:
            # Committed; the answers are still held (``dirty`` until the end), so
            # a refusal replaces its acceptance before anything is sent.
            self._call_back(staged, stored)
        finally:
            self.dirty = False
        return True

    def _take_deferred(
        self, sessions: Iterable[tuple[str, bytes]]
    ) -> list[tuple[tuple[str, bytes], list[bytes]]]:
        """The deferred ids of these sessions, taken out to be written."""
        taken: list[tuple[tuple[str, bytes], list[bytes]]] = []
        for key in sessions:
            if (ids := self._deferred.pop(key, None)) is not None:
                taken.append((key, list(ids)))
            self._carry.pop(key, None)
        return taken

    def batch_committed(self) -> None:
        """The caller committed ``inner`` itself: the batch's writes are durable."""
        self.dirty = False
        self._written.clear()

    def batch_lost(self) -> None:
        """The batch was discarded: what it wrote of the acknowledgements waits again
        (and what it staged is dropped: its answers went out as ``unavailable``)."""
        self.dirty = False
        self.device_generation += 1
        self._staged, self._staged_bytes, self._flush_failure = [], {}, None
        written, self._written = self._written, []
        self._put_back(written)
        self._receipts.clear()  # recorded again when the acknowledgements are

    def close(self) -> None:
        """Close ``inner`` (acknowledgements not written are dropped: pushed again)."""
        self.inner.close()

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """``inner``'s atomic block; acknowledgements written inside a block that
        fails were undone with it, so they wait again."""
        # What earlier steps staged is stored outside this block: a failure of this
        # one must not undo it.
        self.flush_messages()
        start, receipts_start = len(self._written), len(self._receipts)
        staged_start = len(self._staged)
        try:
            with self.inner.atomic():
                yield
        except BaseException:
            self.device_generation += 1  # (what was read inside may be undone)
            undone, self._written[start:] = self._written[start:], []
            self._put_back(undone)
            del self._receipts[receipts_start:]
            self._unstage_from(staged_start)
            raise


def _forward(name: str, *, write: bool) -> Callable[..., Any]:
    # Three shapes, so that the common ones (a read, a plain write) test nothing:
    # every store call of the hot path goes through here.
    # A write that may change a device set moves the generation on (before it runs:
    # whatever is read from then on may see it).
    moves = write and name not in KEEPS_DEVICE_SETS
    if name in CURSOR_READERS:  # (all writes)

        def forward(self: WriteTrackingStore, *args: Any, **kwargs: Any) -> Any:
            if self._staged:
                self.flush_messages()
            if self._deferred:
                self.flush_acknowledgements()
            self.dirty = True
            if moves:
                self.device_generation += 1
            return getattr(self.inner, name)(*args, **kwargs)

    elif moves:

        def forward(self: WriteTrackingStore, *args: Any, **kwargs: Any) -> Any:
            if self._staged:
                self.flush_messages()  # (in the order they were asked for)
            self.dirty = True
            self.device_generation += 1
            return getattr(self.inner, name)(*args, **kwargs)

    elif write or name in _SEE_STAGED:

        def forward(self: WriteTrackingStore, *args: Any, **kwargs: Any) -> Any:
            if self._staged:
                self.flush_messages()  # (in the order they were asked for)
            if write:
                self.dirty = True
            return getattr(self.inner, name)(*args, **kwargs)

    else:

        def forward(self: WriteTrackingStore, *args: Any, **kwargs: Any) -> Any:
            return getattr(self.inner, name)(*args, **kwargs)

    forward.__name__ = name
    forward.__doc__ = f"``inner.{name}`` ({'a write: sets dirty' if write else 'a read'})."
    return forward


#: Reads that would miss a staged message: the staged ones are stored first. (The
#: others need not wait: ``pending_deliveries`` in a cluster is read again once the
#: batch is durable, and ``count_waiting`` is a cap.)
_SEE_STAGED: Final = frozenset({"get_message", "history"})
_OWN: Final = frozenset(
    {
        "acknowledge",
        "acknowledge_many",
        "pending_deliveries",
        "pending_deliveries_many",
        "stored_bytes",
    }
)
for _name in sorted((STORE_READS | STORE_WRITES) - _OWN):
    setattr(WriteTrackingStore, _name, _forward(_name, write=_name in STORE_WRITES))
