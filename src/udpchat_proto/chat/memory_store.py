"""An in-memory :class:`~udpchat_proto.chat.store.Store`, for tests and embedding.

It implements the :class:`~udpchat_proto.chat.store.Store` contract exactly (the same
contract tests run against it and against ``udpchat_server.stores``), but it
keeps nothing across processes: :meth:`MemoryStore.commit` is a no-op, every write
is visible at once and stays until the object is dropped. Use it where durability
is not wanted (unit tests, simulations, a throwaway server); use the SQLite store
where the promise "nothing acknowledged is lost" must hold.

Data layout (the hot paths are O(1) or O(log n) in the size of the store):

* every conversation is a list whose index + 1 is the message's ``seq``, so a
  cursor is an index into it and "what comes after the cursor" is a slice;
* a dict from message id to its log entry (:meth:`MemoryStore.get_message`,
  :meth:`MemoryStore.acknowledge`);
* a per-user index of conversations with the user's floor ``seq`` in each (0 for a
  direct conversation, the room's ``seq`` at join for a room), so
  :meth:`MemoryStore.pending_deliveries` looks only at the user's conversations and
  merges their tails by global insertion order.

Delivery cursors follow the module docstring of :mod:`udpchat_proto.chat.store`. The one
choice it leaves open is *when* a session takes the user's cursor; here (and in the
SQLite store) a session copies the user's cursors when it is created, and from then
on has its own. So a new device receives what no device had acknowledged when it
logged in, and two devices that both exist each receive every later message, even
one the other device acknowledged first.
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Iterator, Sequence

import attrs

from ..e2ee.records import ClaimedKey, DeviceKeys, EncryptedMessage, KeyShare, OneTimeKey
from .messages import ChatMessage
from .passwords import PasswordHash
from .store import (
    Account,
    Acknowledgement,
    LoginSession,
    Receipt,
    StoredMessage,
    add_each,
    conversation_key,
    sealed_size,
    stored_size,
)
from .tokens import session_id
from .validation import is_room

__all__ = ["MemoryStore"]


@attrs.define(kw_only=True)
class _Entry:
    """One message in a conversation log."""

    order: int
    """Global insertion order (the store's message counter)."""
    conversation: str
    stored: StoredMessage
    origin: bytes | None = None
    """The login session it was sent from (the sender's others receive it)."""
    delivered_at: float | None = None
    """A direct message: when its recipient first acknowledged it."""
    removed: bool = False
    """Deleted with its recipient's account before it was delivered (kept in the
    log as a gap, so that an index still maps to its ``seq``)."""
    devices: frozenset[bytes] = frozenset()
    """An encrypted message: the devices it was stored for (no other is given it)."""
    sealed_bytes: int = 0
    """An encrypted message: its record's and key shares' :func:`sealed_size`,
    charged to its sender beside its text's."""

    def is_for(self, username: str, token_hash: bytes) -> bool:
        """Whether the session ``token_hash`` of ``username`` is delivered it."""
        if self.removed:
            return False
        if self.stored.message.encrypted and session_id(token_hash) not in self.devices:
            return False
        if self.stored.message.sender != username:
            return True
        return self.origin is not None and self.origin != token_hash


@attrs.define(kw_only=True)
class _Device:
    """A login session's device keys and what it keeps on the server."""

    token_hash: bytes
    keys: DeviceKeys
    created_at: float
    one_time_keys: dict[str, OneTimeKey] = attrs.Factory(dict)
    """By key id, in the order uploaded (claims take the oldest)."""
    fallback: OneTimeKey | None = None
    fallback_used: bool = False


@attrs.define(kw_only=True)
class _Conversation:
    key: str
    is_room: bool
    log: list[_Entry] = attrs.Factory(list)
    """``log[seq - 1 - base]`` is the message with that ``seq``."""
    base: int = 0
    """How many of its oldest messages retention has deleted."""
    members: dict[str, int] = attrs.Factory(dict)
    """Who receives this conversation's messages, with the ``seq`` they start after."""


def _tail(log: list[_Entry], start: int) -> Iterator[_Entry]:
    # Index from ``start`` directly: itertools.islice would walk the skipped prefix.
    for index in range(start, len(log)):
        yield log[index]


def _order_of(entry: _Entry) -> int:
    return entry.order


class MemoryStore:
    """A :class:`~udpchat_proto.chat.store.Store` kept in Python dicts and lists.

    Not thread-safe: call it from the thread that runs the server state machine,
    as the server runtime does.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._accounts: dict[str, Account] = {}
        self._sessions: dict[bytes, LoginSession] = {}
        self._sessions_of: dict[str, set[bytes]] = {}
        self._session_cursors: dict[bytes, dict[str, int]] = {}
        self._user_cursors: dict[str, dict[str, int]] = {}
        self._invitations: dict[tuple[str, str], float] = {}
        self._incoming: dict[str, set[str]] = {}
        self._outgoing: dict[str, set[str]] = {}
        self._friends: dict[str, set[str]] = {}
        self._blocks: dict[str, set[str]] = {}
        """Whom each user blocks."""
        self._conversations: dict[str, _Conversation] = {}
        self._conversations_of: dict[str, set[str]] = {}
        self._by_id: dict[bytes, _Entry] = {}
        self._retired: set[str] = set()
        """Names of deleted accounts: never registered again."""
        self._stored: dict[str, int] = {}
        """Each account's stored bytes (see Store.stored_bytes)."""
        self._order = 0
        self._devices: dict[bytes, _Device] = {}
        """By device id (its session's id)."""
        self._device_of_session: dict[bytes, bytes] = {}
        """Token hash -> device id, for the sessions that uploaded keys."""
        self._key_shares: dict[bytes, dict[bytes, list[KeyShare]]] = {}
        """Message id -> device id -> the shares sent with the message for it
        (they go with the message)."""

    # --- transactions ------------------------------------------------------------

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """No undo log: the in-memory writes cannot fail half-way for want of disk,
        and the server checks every precondition before its first write."""
        yield

    def commit(self) -> None:
        """Do nothing: in memory every write is final as soon as it is made.

        There is no rollback; the group-commit rule of the server runtime still
        holds trivially, since nothing here outlives the process anyway.
        """

    def close(self) -> None:
        """Drop everything (the store keeps nothing beyond its own lifetime)."""
        self._reset()

    # --- accounts ----------------------------------------------------------------

    def create_account(self, username: str, password: PasswordHash, now: float) -> bool:
        """Create an account; False (and no change) if the name is taken or retired."""
        if username in self._accounts or username in self._retired:
            return False
        self._accounts[username] = Account(username=username, password=password, created_at=now)
        self._stored[username] = 0
        return True

    def set_password(self, username: str, password: PasswordHash) -> bool:
        """Replace the password record of an account; False if there is none."""
        account = self._accounts.get(username)
        if account is None:
            return False
        self._accounts[username] = attrs.evolve(account, password=password)
        return True

    def get_account(self, username: str) -> Account | None:
        """The account of ``username``, or None."""
        return self._accounts.get(username)

    def set_disabled(self, username: str, disabled: bool) -> bool:
        """Disable (or enable) an account; False if there is none."""
        account = self._accounts.get(username)
        if account is None:
            return False
        self._accounts[username] = attrs.evolve(account, disabled=disabled)
        return True

    def accounts(self) -> list[tuple[str, bool]]:
        """Every account's name and whether it is disabled, sorted by name."""
        return [(name, self._accounts[name].disabled) for name in sorted(self._accounts)]

    def delete_account(self, username: str, now: float) -> None:
        """Delete the account and what is only its; retire the name (see Store)."""
        for token_hash in list(self._sessions_of.get(username, ())):
            self.delete_session(token_hash)
        for key in sorted(self._conversations_of.get(username, ())):
            conversation = self._conversations[key]
            if conversation.is_room:
                self.leave_room(key, username)
                continue
            # The direct messages waiting for it go; the conversation stays for the
            # other user, who alone receives from it now.
            for entry in conversation.log:
                if (
                    entry.stored.message.to == username
                    and entry.delivered_at is None
                    and not entry.removed
                ):
                    entry.removed = True
                    self._by_id.pop(entry.stored.message.id, None)
                    self._key_shares.pop(entry.stored.message.id, None)
                    self._uncharge(entry)
            del conversation.members[username]
        self._conversations_of.pop(username, None)
        self._user_cursors.pop(username, None)
        for other in self._friends.pop(username, set()):
            self._friends[other].discard(username)
        for recipient in list(self._outgoing.get(username, ())):
            self.delete_invitation(username, recipient)
        for sender in list(self._incoming.get(username, ())):
            self.delete_invitation(sender, username)
        for blocked in list(self._blocks.get(username, ())):
            self.delete_block(username, blocked)
        for blocker in self.blockers_of(username):
            self.delete_block(blocker, username)
        self._accounts.pop(username, None)
        self._stored.pop(username, None)
        self._retired.add(username)

    # --- login sessions ------------------------------------------------------------

    def create_session(self, token_hash: bytes, username: str, now: float) -> None:
        """Record a new login session, starting at the user's delivery cursors.

        Raises:
            ValueError: a session with this token hash exists.
        """
        if token_hash in self._sessions:
            raise ValueError("a session with this token hash exists")
        self._sessions[token_hash] = LoginSession(
            token_hash=token_hash, username=username, created_at=now, last_used_at=now
        )
        self._sessions_of.setdefault(username, set()).add(token_hash)
        self._session_cursors[token_hash] = dict(self._user_cursors.get(username, {}))

    def get_session(self, token_hash: bytes) -> LoginSession | None:
        """The login session with this token hash, or None."""
        return self._sessions.get(token_hash)

    def existing_sessions(self, token_hashes: list[bytes]) -> set[bytes]:
        """Those of ``token_hashes`` that are sessions still."""
        return {hashed for hashed in token_hashes if hashed in self._sessions}

    def touch_session(self, token_hash: bytes, now: float) -> None:
        """Note that the session was used at ``now``; an unknown session is ignored."""
        session = self._sessions.get(token_hash)
        if session is not None:
            self._sessions[token_hash] = attrs.evolve(session, last_used_at=now)

    def sessions_of(self, username: str) -> list[LoginSession]:
        """The login sessions of ``username``, newest (by creation) first."""
        mine = [self._sessions[t] for t in self._sessions_of.get(username, ())]
        return sorted(mine, key=lambda s: (s.created_at, s.token_hash), reverse=True)

    def delete_session(self, token_hash: bytes) -> None:
        """End a login session and forget its delivery cursors (the user's stay)."""
        session = self._sessions.pop(token_hash, None)
        self._session_cursors.pop(token_hash, None)
        # Its device ends with it: its keys go, it leaves every device set.
        device_id = self._device_of_session.pop(token_hash, None)
        if device_id is not None:
            del self._devices[device_id]
        if session is not None:
            mine = self._sessions_of[session.username]
            mine.discard(token_hash)
            if not mine:
                del self._sessions_of[session.username]

    def delete_sessions_unused_since(self, cutoff: float) -> int:
        """Expire every session last used before ``cutoff``; return how many."""
        expired = [t for t, s in self._sessions.items() if s.last_used_at < cutoff]
        for token_hash in expired:
            self.delete_session(token_hash)
        return len(expired)

    def delete_sessions_created_before(self, cutoff: float) -> list[bytes]:
        """End every session created before ``cutoff``; return their token hashes."""
        ended = [t for t, s in self._sessions.items() if s.created_at < cutoff]
        for token_hash in ended:
            self.delete_session(token_hash)
        return ended

    # --- invitations and friends ------------------------------------------------------

    def add_invitation(self, sender: str, recipient: str, now: float) -> None:
        """Record that ``sender`` invited ``recipient`` (a repeat keeps the first)."""
        self._invitations.setdefault((sender, recipient), now)
        self._outgoing.setdefault(sender, set()).add(recipient)
        self._incoming.setdefault(recipient, set()).add(sender)

    def delete_invitation(self, sender: str, recipient: str) -> bool:
        """Remove that invitation; False if there was none."""
        if self._invitations.pop((sender, recipient), None) is None:
            return False
        self._outgoing[sender].discard(recipient)
        self._incoming[recipient].discard(sender)
        return True

    def has_invitation(self, sender: str, recipient: str) -> bool:
        """Whether ``sender`` has a pending invitation to ``recipient``."""
        return (sender, recipient) in self._invitations

    def incoming_invitations(self, username: str) -> list[str]:
        """Who has invited ``username`` (sorted)."""
        return sorted(self._incoming.get(username, ()))

    def outgoing_invitations(self, username: str) -> list[str]:
        """Whom ``username`` has invited (sorted)."""
        return sorted(self._outgoing.get(username, ()))

    def add_friendship(self, a: str, b: str, now: float) -> None:
        """Make ``a`` and ``b`` friends (symmetric; a repeat changes nothing)."""
        self._friends.setdefault(a, set()).add(b)
        self._friends.setdefault(b, set()).add(a)

    def delete_friendship(self, a: str, b: str) -> bool:
        """End the friendship; False if they were not friends."""
        if not self.are_friends(a, b):
            return False
        self._friends[a].discard(b)
        self._friends[b].discard(a)
        return True

    def are_friends(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are friends."""
        return b in self._friends.get(a, ())

    def friends_of(self, username: str) -> list[str]:
        """The friends of ``username`` (sorted)."""
        return sorted(self._friends.get(username, ()))

    def friends_of_many(self, usernames: list[str]) -> dict[str, list[str]]:
        """The friends of each of ``usernames`` (sorted; ``[]`` for none)."""
        return {name: sorted(self._friends.get(name, ())) for name in usernames}

    def add_block(self, username: str, blocked: str, now: float) -> bool:
        """Record that ``username`` blocks ``blocked``; False if it already did."""
        blocks = self._blocks.setdefault(username, set())
        if blocked in blocks:
            return False
        blocks.add(blocked)
        return True

    def delete_block(self, username: str, blocked: str) -> bool:
        """``username`` stops blocking ``blocked``; False if it did not. Its cursors
        first pass the blocked messages that directly follow them (see Store)."""
        blocks = self._blocks.get(username, set())
        if blocked not in blocks:
            return False
        self._pass_blocked_runs(username, blocks)
        blocks.discard(blocked)
        return True

    def _pass_blocked_runs(self, username: str, blocks: set[str]) -> None:
        """Move each room cursor of ``username`` (its sessions' and its own) past the
        messages from ``blocks`` that directly follow it (or where it joined)."""
        keys = self._conversations_of.get(username)
        if not keys:
            return
        owners = [self._session_cursors[token] for token in self._sessions_of.get(username, ())]
        owners.append(self._user_cursors.setdefault(username, {}))
        for key in keys:
            conversation = self._conversations[key]
            if not conversation.is_room:
                continue
            for cursors in owners:
                start = max(conversation.members[username], cursors.get(key, 0))
                passed = self._past_blocked(conversation, start, blocks)
                if passed > start:
                    cursors[key] = passed

    def has_blocked(self, username: str, blocked: str) -> bool:
        """Whether ``username`` blocks ``blocked``."""
        return blocked in self._blocks.get(username, ())

    def blocked_by(self, username: str) -> list[str]:
        """Whom ``username`` blocks (sorted)."""
        return sorted(self._blocks.get(username, ()))

    def blockers_of(self, username: str) -> list[str]:
        """Who blocks ``username`` (sorted)."""
        return sorted(user for user, blocks in self._blocks.items() if username in blocks)

    # --- messages -------------------------------------------------------------------

    def _conversation(self, key: str) -> _Conversation:
        conversation = self._conversations.get(key)
        if conversation is None:
            conversation = _Conversation(key=key, is_room=is_room(key))
            self._conversations[key] = conversation
        return conversation

    def _add_member(self, conversation: _Conversation, username: str) -> None:
        conversation.members[username] = conversation.base + len(conversation.log)
        self._conversations_of.setdefault(username, set()).add(conversation.key)

    def add_message(self, message: ChatMessage, origin: bytes | None = None) -> StoredMessage:
        """Append a message to the conversation of ``(message.sender, message.to)``.

        The first message between two users creates their conversation, from
        which both then receive. A message to a room that was never joined creates
        the room, with no members.

        Raises:
            ValueError: a message with this id is already stored (nothing is
                written).
        """
        if message.id in self._by_id:
            raise ValueError("a message with this id is already stored")
        key = conversation_key(message.sender, message.to)
        conversation = self._conversation(key)
        if not conversation.is_room and not conversation.members:
            for user in {message.sender, message.to}:
                self._add_member(conversation, user)
        self._order += 1
        stored = StoredMessage(message=message, seq=conversation.base + len(conversation.log) + 1)
        entry = _Entry(order=self._order, conversation=key, stored=stored, origin=origin)
        conversation.log.append(entry)
        self._by_id[message.id] = entry
        if message.sender in self._stored:
            self._stored[message.sender] += stored_size(message.text)
        return stored

    def add_messages(
        self, messages: Sequence[tuple[ChatMessage, bytes | None]]
    ) -> list[StoredMessage | None]:
        """:meth:`add_message` for each, in order; None for a taken id."""
        return add_each(self.add_message, messages)

    def _uncharge(self, entry: _Entry) -> None:
        """A message of its sender's is deleted: it counts no more (its record and
        key shares neither)."""
        message = entry.stored.message
        if message.sender in self._stored:
            self._stored[message.sender] -= stored_size(message.text) + entry.sealed_bytes

    def get_message(self, message_id: bytes) -> StoredMessage | None:
        """The message with this id, or None."""
        entry = self._by_id.get(message_id)
        if entry is None:
            return None
        if entry.delivered_at is None:
            return entry.stored
        return attrs.evolve(entry.stored, delivered_at=entry.delivered_at)

    def history(
        self, username: str, peer: str, limit: int, before: bytes | None = None
    ) -> list[ChatMessage]:
        """The last ``limit`` messages between ``username`` and ``peer`` (a user or a
        room), oldest first; of a room, only those since ``username`` joined it
        (nothing if not a member); with ``before``, only those older than it."""
        key = conversation_key(username, peer)
        conversation = self._conversations.get(key)
        if conversation is None or limit <= 0:
            return []
        log = conversation.log
        if before is not None:
            entry = self._by_id.get(before)
            if entry is None or entry.conversation != key:
                return []
            log = log[: max(0, entry.stored.seq - 1 - conversation.base)]
        if conversation.is_room:
            floor = conversation.members.get(username)
            if floor is None:
                return []
            log = log[max(0, floor - conversation.base) :]
        # A member reads nothing from those it blocks (a direct conversation has
        # nobody else to hide).
        hidden: set[str] | frozenset[str] = frozenset()
        if conversation.is_room:
            hidden = self._blocks.get(username, hidden)
        found: list[ChatMessage] = []
        for entry in reversed(log):
            if not entry.removed and entry.stored.message.sender not in hidden:
                found.append(entry.stored.message)
                if len(found) == limit:
                    break
        return found[::-1]

    def _cursors(self, username: str, token_hash: bytes) -> dict[str, int]:
        cursors = self._session_cursors.get(token_hash)
        # An unknown session is treated as one created now: it starts at the user's.
        return cursors if cursors is not None else self._user_cursors.get(username, {})

    def pending_deliveries(self, username: str, token_hash: bytes, limit: int) -> list[ChatMessage]:
        """Up to ``limit`` messages for ``username`` not yet acknowledged by the
        login session ``token_hash``, in the order they were stored.

        An unknown session is treated as one created now (it starts at the user's
        cursors).
        """
        if limit <= 0:
            return []
        cursors = self._cursors(username, token_hash)
        blocked: set[str] | frozenset[str] = self._blocks.get(username, frozenset())
        tails: list[Iterator[_Entry]] = []
        for key in self._conversations_of.get(username, ()):
            conversation = self._conversations[key]
            start = max(conversation.members[username], cursors.get(key, 0))
            if start < conversation.base + len(conversation.log):
                tail = _tail(conversation.log, max(0, start - conversation.base))
                if conversation.is_room and blocked:
                    tail = (entry for entry in tail if entry.stored.message.sender not in blocked)
                tails.append(tail)
        result: list[ChatMessage] = []
        for entry in heapq.merge(*tails, key=_order_of):
            if entry.is_for(username, token_hash):
                result.append(entry.stored.message)
                if len(result) == limit:
                    break
        return result

    def pending_deliveries_many(
        self, sessions: Sequence[tuple[str, bytes, int]]
    ) -> list[list[ChatMessage]]:
        """:meth:`pending_deliveries` for each ``(username, token_hash, limit)``."""
        return [self.pending_deliveries(user, hashed, limit) for user, hashed, limit in sessions]

    def acknowledge(
        self, username: str, token_hash: bytes, message_ids: Sequence[bytes], now: float
    ) -> list[Receipt]:
        """Advance the session's (and the user's) cursors past these messages.

        Ids that are unknown or in no conversation of ``username`` (direct
        messages between others, rooms it is not in) are ignored. A cursor never
        moves back. An unknown session advances only the user's cursors.

        Returns:
            The direct messages to ``username`` delivered for the first time.
        """
        session_cursors = self._session_cursors.get(token_hash)
        user_cursors = self._user_cursors.setdefault(username, {})
        highest: dict[str, int] = {}
        for message_id in message_ids:
            entry = self._by_id.get(message_id)
            if entry is None:
                continue
            conversation = self._conversations[entry.conversation]
            if username not in conversation.members or not entry.is_for(username, token_hash):
                continue  # (its own message: see udpchat_server.stores.statements)
            highest[entry.conversation] = max(highest.get(entry.conversation, 0), entry.stored.seq)
        receipts: list[Receipt] = []
        blocked = self._blocks.get(username)
        for key, acknowledged in highest.items():
            conversation = self._conversations[key]
            seq = acknowledged
            if conversation.is_room and blocked:
                seq = self._past_blocked(conversation, seq, blocked)
            if session_cursors is not None and session_cursors.get(key, 0) < seq:
                session_cursors[key] = seq
            if user_cursors.get(key, 0) < seq:
                if not conversation.is_room:
                    start = max(user_cursors.get(key, 0) - conversation.base, 0)
                    receipts.extend(
                        self._delivered(
                            conversation.log[start : seq - conversation.base], username, now
                        )
                    )
                user_cursors[key] = seq
        return receipts

    @staticmethod
    def _past_blocked(conversation: _Conversation, seq: int, blocked: set[str]) -> int:
        """The seq after ``seq`` and the room messages from ``blocked`` senders that
        directly follow it (never delivered: a cursor may pass them)."""
        # (Retention may have deleted up to past a cursor: the run starts at the log.)
        for entry in _tail(conversation.log, max(0, seq - conversation.base)):
            if entry.stored.message.sender not in blocked:
                break
            seq = entry.stored.seq
        return seq

    @staticmethod
    def _delivered(entries: list[_Entry], username: str, now: float) -> Iterator[Receipt]:
        """Mark the messages to ``username`` among these delivered, if not yet."""
        for entry in entries:
            message = entry.stored.message
            if message.to == username and entry.delivered_at is None:
                entry.delivered_at = now
                yield Receipt(
                    message_id=message.id,
                    sender=message.sender,
                    recipient=username,
                    delivered_at=now,
                )

    def acknowledge_many(
        self, acknowledgements: Sequence[Acknowledgement], now: float
    ) -> list[Receipt]:
        """:meth:`acknowledge` for each ``(username, token_hash, message_ids)``."""
        receipts: list[Receipt] = []
        for username, token_hash, message_ids in acknowledgements:
            receipts.extend(self.acknowledge(username, token_hash, message_ids, now))
        return receipts

    # --- device keys (end-to-end encryption) -------------------------------------------

    def set_device_keys(self, token_hash: bytes, keys: DeviceKeys, now: float) -> bool:
        """Record the keys of the session's device; False if it has some already."""
        if token_hash in self._device_of_session or token_hash not in self._sessions:
            return False
        self._devices[keys.device_id] = _Device(token_hash=token_hash, keys=keys, created_at=now)
        self._device_of_session[token_hash] = keys.device_id
        return True

    def session_device(self, token_hash: bytes) -> DeviceKeys | None:
        """The keys of the session's device, or None."""
        device_id = self._device_of_session.get(token_hash)
        return None if device_id is None else self._devices[device_id].keys

    def devices_of(self, usernames: Sequence[str]) -> list[tuple[DeviceKeys, float]]:
        """Every live device of each of ``usernames`` (see Store)."""
        wanted = set(usernames)
        found = [
            (device.keys, device.created_at)
            for device in self._devices.values()
            if device.keys.user in wanted
        ]
        return sorted(found, key=lambda item: (item[0].user, item[1], item[0].device_id))

    def add_one_time_keys(self, device_id: bytes, keys: Sequence[OneTimeKey]) -> None:
        """Keep these one-time keys (and a fallback key) of the device."""
        device = self._devices.get(device_id)
        if device is None:
            return
        for key in keys:
            if key.fallback:
                device.fallback, device.fallback_used = key, False
            else:
                device.one_time_keys.setdefault(key.key_id, key)

    def key_counts(self, device_id: bytes) -> tuple[int, bool]:
        """One-time keys held, and whether the fallback key was given out."""
        device = self._devices.get(device_id)
        if device is None:
            return 0, False
        return len(device.one_time_keys), device.fallback_used

    def claim_key(self, device_id: bytes, *, one_time: bool = True) -> ClaimedKey | None:
        """A one-time key (deleted) unless not ``one_time``, else the fallback key
        (noted used), else None."""
        device = self._devices.get(device_id)
        if device is None:
            return None
        if one_time and device.one_time_keys:
            key_id = next(iter(device.one_time_keys))
            key = device.one_time_keys.pop(key_id)
        elif device.fallback is not None:
            key, device.fallback_used = device.fallback, True
        else:
            return None
        return ClaimedKey(device=device.keys, one_time_key=key)

    def add_encrypted(
        self,
        message_id: bytes,
        ciphertext: EncryptedMessage,
        devices: Sequence[bytes],
        key_shares: Sequence[tuple[bytes, KeyShare]],
        *,
        sealed_bytes: int | None = None,
    ) -> None:
        """Note the devices an encrypted message is for, and its key shares (its
        record is the stored message's own)."""
        entry = self._by_id[message_id]
        entry.devices = frozenset(devices)
        shares = self._key_shares.setdefault(message_id, {})
        for device_id, share in key_shares:
            shares.setdefault(device_id, []).append(share)
        entry.sealed_bytes = (
            sealed_size(ciphertext, (share for _device, share in key_shares))
            if sealed_bytes is None
            else sealed_bytes
        )
        if ciphertext.sender in self._stored:
            self._stored[ciphertext.sender] += entry.sealed_bytes

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
        """:meth:`add_message` and :meth:`add_encrypted` (neither can fail once the
        id is found free)."""
        stored = self.add_message(message, origin)
        self.add_encrypted(message.id, ciphertext, devices, key_shares, sealed_bytes=sealed_bytes)
        return stored

    def key_shares_for(self, message_id: bytes, device_id: bytes) -> list[KeyShare]:
        """The shares sent with the message for the device."""
        return list(self._key_shares.get(message_id, {}).get(device_id, ()))

    def stored_for_device(self, device_id: bytes, message_ids: Sequence[bytes]) -> set[bytes]:
        """Those of ``message_ids`` that are encrypted messages stored for the device."""
        found = set()
        for message_id in message_ids:
            entry = self._by_id.get(message_id)
            if entry is not None and device_id in entry.devices:
                found.add(message_id)
        return found

    # --- rooms -------------------------------------------------------------------------

    def join_room(self, room: str, username: str, now: float) -> bool:
        """Add ``username`` to ``room``, creating the room; False if already a member.

        The new member receives only the messages sent after this call.
        """
        conversation = self._conversation(room)
        if username in conversation.members:
            return False
        self._add_member(conversation, username)
        return True

    def leave_room(self, room: str, username: str) -> bool:
        """Remove ``username`` from ``room``; False if not a member.

        The last member's leave deletes the room, its history and every cursor
        into it (a later join creates a new, empty room).
        """
        conversation = self._conversations.get(room)
        if conversation is None or conversation.members.pop(username, None) is None:
            return False
        self._conversations_of[username].discard(room)
        if not conversation.members:
            del self._conversations[room]
            for entry in conversation.log:
                self._by_id.pop(entry.stored.message.id, None)
                self._key_shares.pop(entry.stored.message.id, None)
                self._uncharge(entry)
            for cursors in (*self._session_cursors.values(), *self._user_cursors.values()):
                cursors.pop(room, None)
        return True

    def delete_delivered_before(self, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` of the oldest messages sent before ``cutoff`` that
        every recipient session has acknowledged; return how many (see Store)."""
        deleted = 0
        for conversation in list(self._conversations.values()):
            floors = {
                name: self._delivered_floor(name, conversation.key) for name in conversation.members
            }
            while conversation.log and deleted < limit:
                stored = conversation.log[0].stored
                if stored.message.sent_at.timestamp() >= cutoff or any(
                    name != stored.message.sender
                    and stored.seq > start
                    and floors[name] < stored.seq
                    for name, start in conversation.members.items()
                ):
                    break
                entry = conversation.log.pop(0)
                conversation.base += 1
                if not entry.removed:  # (a removed one was uncharged then)
                    self._by_id.pop(stored.message.id, None)
                    self._key_shares.pop(stored.message.id, None)
                    self._uncharge(entry)
                deleted += 1
        return deleted

    def _delivered_floor(self, username: str, key: str) -> int:
        """The highest seq of ``key`` that the user and every one of its sessions
        acknowledged."""
        floor = self._user_cursors.get(username, {}).get(key, 0)
        for token in self._sessions_of.get(username, ()):
            floor = min(floor, self._session_cursors.get(token, {}).get(key, 0))
        return floor

    def count_waiting(self, username: str, limit: int) -> int:
        """How many direct messages wait for ``username`` (not acknowledged by any of
        its sessions), counting at most ``limit``."""
        cursors = self._user_cursors.get(username, {})
        count = 0
        for key in self._conversations_of.get(username, ()):
            conversation = self._conversations[key]
            if conversation.is_room:
                continue
            start = max(cursors.get(key, 0), conversation.base)
            for entry in _tail(conversation.log, start - conversation.base):
                if entry.stored.message.sender != username:
                    count += 1
                    if count >= limit:
                        return count
        return count

    def stored_bytes(self, username: str) -> int:
        """What the stored messages ``username`` sent count against its quota."""
        return self._stored.get(username, 0)

    def room_exists(self, room: str) -> bool:
        """Whether the room was ever created."""
        return room in self._conversations

    def room_members(self, room: str) -> list[str]:
        """The members of ``room`` (sorted)."""
        conversation = self._conversations.get(room)
        return [] if conversation is None else sorted(conversation.members)

    def rooms_of(self, username: str) -> list[tuple[str, int]]:
        """The rooms ``username`` is in, with their member counts (sorted by name)."""
        return sorted(
            (key, len(self._conversations[key].members))
            for key in self._conversations_of.get(username, ())
            if is_room(key)
        )
