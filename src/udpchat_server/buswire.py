"""The cluster bus's wire: its keys, its sealed messages, and what they say.

The nodes of a cluster share the server's static key; nothing else on the NATS
server does. From the key's *private* bytes (never its public half, which every
client knows) HKDF-SHA256 derives, with distinct labels:

* the **subject token**, 16 bytes in hex: the cluster talks on
  ``udpchat.cluster.TOKEN``, which only a holder of the key can compute;
* the **message key**, 32 bytes: each sender seals with its own key, HKDF-Expand
  of the message key with its node id, so that a node's counter can be its nonce.

A message on the bus (all integers big-endian)::

    offset  size   field
    0       1      version: 1
    1       16     node: the sender's id, random at each start
    17      8      counter: 0, 1, 2 ... one per message of that node
    25      8      sent: the sender's wall clock, ms since the epoch (never decreasing)
    33      n+16   the body (JSON), sealed with ChaCha20-Poly1305: nonce = the
                   counter in 12 bytes, associated data = the 33 bytes before

A receiver (:class:`Opener`) keeps, per sending node, the counters it accepted (a
:class:`~udpchat_proto.transport.ReplayWindow`), and drops, counting each by a
stable reason (:data:`DROP_REASONS`): what is larger than :data:`MAX_RECEIVED`
(``too_large``), not a sealed message (``malformed``), does not open under the
cluster's key, or was edited (``forged``), was sent more than :data:`FRESHNESS`
from its own clock (``stale``), was sent before the receiver itself started
(``before_start``), was accepted before, or bears its own node id (``replayed``),
comes from a node beyond :data:`MAX_PEERS` (``too_many_nodes``), or is authentic
but says something no node says (``invalid``). A node restarted gets a new id, so
its counter starts at 0 again; a message captured from its previous life is stale
by the time the receiver forgets that id. A receiver has no window for what was
sent before it started, so it takes none of it: a replay to a node that has just
restarted is dropped too.

The body is a JSON object with a ``type``:

* ``news``: a :class:`~udpchat_proto.chat.ClusterNews` (``users``, ``forget``,
  ``online``, ``offline``: names; ``pushes``: ``[name, base64 payload]``;
  ``sessions``: ``[token hash in hex, reason or null]``);
* ``snapshot``: part ``part`` of ``parts`` of the node's heartbeat, everyone online
  on it (``users``, at most :data:`SNAPSHOT_PART` names a part, at most
  :data:`HEARTBEAT_PARTS_MAX` parts);
* ``resync``: the sender was cut off from the bus: look for every connection;
* ``bye``: the sender is stopping: its users are offline now.

Nothing here does I/O: the clock is passed in, and the fuzz harness
(``fuzz/fuzz_bus.py``) drives :class:`Opener`, :func:`parse` and
:class:`Heartbeats` directly.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable
from typing import Any, Final

import attrs
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from udpchat_proto import DecodeError
from udpchat_proto.chat import (
    MAX_NODE_USERS,
    MAX_NODES,
    NODE_TIMEOUT,
    ClusterNews,
    ValidationError,
    check_username,
    decode,
    messages,
)
from udpchat_proto.transport import ReplayWindow

__all__ = [
    "DROP_REASONS",
    "FRESHNESS",
    "HEARTBEAT_PARTS_MAX",
    "MAX_PEERS",
    "MAX_RECEIVED",
    "MAX_REMOTE_NAMES",
    "NODE_SIZE",
    "SNAPSHOT_PART",
    "VERSION",
    "BusDropError",
    "BusKeys",
    "Bye",
    "Heard",
    "Heartbeats",
    "News",
    "Opener",
    "RemoteNames",
    "Resync",
    "Sealer",
    "Snapshot",
    "SnapshotPart",
    "bye_body",
    "news_body",
    "parse",
    "resync_body",
    "snapshot_bodies",
]

VERSION: Final = 1
"""The first byte of every message (the layout above)."""
NODE_SIZE: Final = 16
"""Bytes of a node id: random, so two starts never share one (nor a nonce)."""
HEADER: Final = struct.Struct(">B16sQQ")
"""version, node, counter, sent (ms): 33 bytes, the sealed body's associated data."""
TAG_SIZE: Final = 16
MAX_RECEIVED: Final = 1024 * 1024
"""Largest message a node reads (NATS's default ``max_payload``): what a node sends
whole is at most 512 KiB of news, or a heartbeat part of about 70 KB."""
FRESHNESS: Final = 30.0
"""Seconds a message's ``sent`` may be from the receiver's clock, either way. It
bounds how long a captured message could be replayed to a receiver that never saw
its sender, and how far the nodes' clocks may drift apart (NTP keeps them within
milliseconds): a node whose clock is further off is not heard (``stale``)."""
REPLAY_WINDOW: Final = 1024
"""Counters remembered below a node's highest: one NATS connection delivers a
node's messages in order, so this only absorbs what is reordered within a node."""
MAX_PEERS: Final = 256
"""Most sending nodes whose counters a node keeps. A node's entry goes once all it
sent is stale; only nodes holding the key get one, so this many at once means
that many restarts within :data:`FRESHNESS`."""
SNAPSHOT_PART: Final = 2000
"""Names per heartbeat message (about 70 KB at most)."""
HEARTBEAT_PARTS_MAX: Final = MAX_NODE_USERS // SNAPSHOT_PART
"""Most parts of one heartbeat (32: 64,000 names, under what a node keeps of
another, ``MAX_NODE_USERS``); a longer one is sent cut there."""
MAX_REMOTE_NAMES: Final = 262_144
"""Most names online on other nodes that a node takes, all of them together
(:class:`RemoteNames`): four nodes' worth of ``MAX_NODE_USERS``, sixty-four times
what a node holds with the default 4,096 connections; about 32 MiB of heap (60 MiB
of the process's memory, measured, once the names churn). Beyond, names are
ignored (and counted), however many nodes say them."""
PEER_SILENCE: Final = 2 * NODE_TIMEOUT
"""Seconds without a word after which :class:`RemoteNames` no longer counts a
node's names: twice the core's ``NODE_TIMEOUT``, so that the core (which hears
a little later, through the server loop) has let them go first."""
MAX_REASON: Final = 256
"""Longest reason for an ended session, in characters (the transport sends at most
256 bytes of it)."""
DROP_REASONS: Final = (
    "too_large",
    "malformed",
    "forged",
    "stale",
    "before_start",
    "replayed",
    "too_many_nodes",
    "invalid",
    "backlog",
)
"""Why a message from the bus was dropped (each counted apart). The last is the
bus's, not the :class:`Opener`'s: the server loop was too far behind to take it."""

_SUBJECT_INFO: Final = b"udpchat cluster bus subject v1"
_KEY_INFO: Final = b"udpchat cluster bus message key v1"
_NODE_INFO: Final = b"udpchat cluster bus node key v1 "


class BusDropError(Exception):
    """A message from the bus is dropped; ``reason`` is one of :data:`DROP_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@attrs.frozen
class BusKeys:
    """What a cluster's nodes derive from the key they share."""

    subject_token: str
    """Where the cluster talks: ``udpchat.cluster.<this>`` (32 hex digits)."""
    message_key: bytes = attrs.field(repr=False)

    @classmethod
    def derive(cls, secret: bytes) -> BusKeys:
        """The keys of the cluster whose nodes share ``secret`` (the server's static
        private key: its public half is no secret)."""
        subject = _hkdf(secret, _SUBJECT_INFO, 16)
        return cls(subject_token=subject.hex(), message_key=_hkdf(secret, _KEY_INFO, 32))

    def cipher_for(self, node: bytes) -> ChaCha20Poly1305:
        """The AEAD a node seals with: a key of its own, so that its counter is a
        nonce no other node uses under that key."""
        expand = HKDFExpand(algorithm=hashes.SHA256(), length=32, info=_NODE_INFO + node)
        return ChaCha20Poly1305(expand.derive(self.message_key))


def _hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


class Sealer:
    """Seals one node's messages, in the order they are published.

    Args:
        keys: the cluster's keys.
        node: this node's id (:data:`NODE_SIZE` random bytes).
        clock: the wall clock, seconds since the epoch.
    """

    def __init__(self, keys: BusKeys, node: bytes, clock: Callable[[], float]) -> None:
        if len(node) != NODE_SIZE:
            raise ValueError(f"a node id is {NODE_SIZE} bytes")
        self._cipher = keys.cipher_for(node)
        self._node = node
        self._clock = clock
        self._counter = 0
        self._sent = 0

    def seal(self, body: bytes) -> bytes:
        """The message carrying ``body``, with the next counter."""
        # (Never decreasing: a clock stepped back must not make a later message
        # look older than one a receiver already has.)
        self._sent = max(self._sent, int(self._clock() * 1000))
        header = HEADER.pack(VERSION, self._node, self._counter, self._sent)
        sealed = self._cipher.encrypt(_nonce(self._counter), body, header)
        self._counter += 1
        return header + sealed


@attrs.define
class _Peer:
    cipher: ChaCha20Poly1305
    window: ReplayWindow
    newest: int
    """The latest ``sent`` accepted from it, ms."""


class Opener:
    """Opens the messages of the other nodes, each once, fresh.

    Args:
        keys: the cluster's keys.
        node: this node's own id (a message bearing it is a replay: NATS does not
            echo a node's own messages back to it).
        clock: the wall clock, seconds since the epoch. What was sent before its
            time when the opener is made (this node's start) is dropped.
    """

    def __init__(self, keys: BusKeys, node: bytes, clock: Callable[[], float]) -> None:
        self._keys = keys
        self._node = node
        self._clock = clock
        self._peers: dict[bytes, _Peer] = {}
        self._started = int(clock() * 1000)
        """ms: a message sent before is none this node could check for a replay
        (it kept no window then), so none is taken: lost news costs time only."""

    @property
    def peers(self) -> int:
        """Sending nodes whose counters are kept now."""
        return len(self._peers)

    def open(self, data: bytes) -> tuple[bytes, bytes]:
        """The sender and the body of a message from the bus.

        Raises:
            BusDropError: it is dropped (its reason says why).
        """
        if len(data) > MAX_RECEIVED:
            raise BusDropError("too_large", f"{len(data)} bytes")
        if len(data) < HEADER.size + TAG_SIZE or data[0] != VERSION:
            raise BusDropError("malformed")
        _version, node, counter, sent = HEADER.unpack_from(data)
        peer = self._peers.get(node)
        cipher = peer.cipher if peer is not None else self._keys.cipher_for(node)
        try:
            body = cipher.decrypt(_nonce(counter), data[HEADER.size :], data[: HEADER.size])
        except InvalidTag:
            raise BusDropError("forged") from None
        now = int(self._clock() * 1000)
        if abs(now - sent) > FRESHNESS * 1000:
            raise BusDropError("stale", f"sent {(now - sent) / 1000:.1f} s from now")
        if sent < self._started:
            # (No slack: a genuine message sent a moment before this node started
            # is lost news; a replay of one captured then must never be taken.)
            raise BusDropError("before_start", f"sent {(self._started - sent) / 1000:.3f} s before")
        if node == self._node:
            raise BusDropError("replayed", "this node's own message")
        if peer is None:
            self._forget_stale(now)
            if len(self._peers) >= MAX_PEERS:
                raise BusDropError("too_many_nodes")
            peer = self._peers[node] = _Peer(cipher, ReplayWindow(REPLAY_WINDOW), sent)
        if not peer.window.update(counter):
            raise BusDropError("replayed", f"counter {counter}")
        peer.newest = max(peer.newest, sent)
        return node, body

    def _forget_stale(self, now: int) -> None:
        """Forget the nodes all of whose messages are stale now: a replay of any of
        them is dropped as such."""
        cutoff = now - FRESHNESS * 1000
        for node in [node for node, peer in self._peers.items() if peer.newest < cutoff]:
            del self._peers[node]


# --- what the messages say ---------------------------------------------------------------


@attrs.frozen
class News:
    """Another node's :class:`~udpchat_proto.chat.ClusterNews`."""

    node: str
    news: ClusterNews


@attrs.frozen
class SnapshotPart:
    """One message of another node's heartbeat."""

    node: str
    part: int
    parts: int
    users: tuple[str, ...]


@attrs.frozen
class Snapshot:
    """Another node's heartbeat, whole: everyone online on it."""

    node: str
    users: list[str]


@attrs.frozen
class Bye:
    """Another node is stopping."""

    node: str


@attrs.frozen
class Resync:
    """Another node was cut off from the bus: look for every connection."""

    node: str


Heard = News | Snapshot | Bye
"""What the server loop acts on."""


def news_body(news: ClusterNews) -> bytes:
    """The body of a ``news`` message."""
    return orjson.dumps(
        {
            "type": "news",
            "users": news.users,
            "pushes": [[u, base64.b64encode(p).decode()] for u, p in news.pushes],
            "sessions": [[h.hex(), reason] for h, reason in news.sessions],
            "forget": news.forget,
            "online": news.online,
            "offline": news.offline,
        }
    )


def snapshot_bodies(online: list[str]) -> list[bytes]:
    """The bodies of a heartbeat naming ``online`` (cut at
    :data:`HEARTBEAT_PARTS_MAX` parts: no node holds that many users)."""
    parts = [online[i : i + SNAPSHOT_PART] for i in range(0, len(online), SNAPSHOT_PART)]
    parts = parts[:HEARTBEAT_PARTS_MAX] or [[]]
    return [
        orjson.dumps({"type": "snapshot", "part": index, "parts": len(parts), "users": part})
        for index, part in enumerate(parts)
    ]


def bye_body() -> bytes:
    """The body of a ``bye`` message."""
    return b'{"type":"bye"}'


def resync_body() -> bytes:
    """The body of a ``resync`` message."""
    return b'{"type":"resync"}'


def parse(node: str, body: bytes) -> News | SnapshotPart | Bye | Resync:
    """What the authentic ``body`` from ``node`` says.

    Raises:
        BusDropError: ``invalid``: it is not what a node sends (bad JSON, an unknown
            type, a name that is no username, a push that is not one, a list over
            its bound ...).
    """
    try:
        value = orjson.loads(body)
        if not isinstance(value, dict):
            raise TypeError("not an object")
        kind = value.get("type")
        if kind == "news":
            return News(node, _news(value))
        if kind == "snapshot":
            return _snapshot_part(node, value)
        if kind == "bye":
            return Bye(node)
        if kind == "resync":
            return Resync(node)
        raise ValueError(f"unknown type {kind!r}")
    except (
        orjson.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        binascii.Error,
        DecodeError,
        ValidationError,
    ) as exc:
        raise BusDropError("invalid", str(exc)[:200]) from None


def _news(value: dict[str, Any]) -> ClusterNews:
    return ClusterNews(
        users=_names(value["users"]),
        pushes=tuple(_push(item) for item in _list(value["pushes"])),
        sessions=tuple(_session(item) for item in _list(value["sessions"])),
        forget=_names(value["forget"]),
        online=_names(value["online"]),
        offline=_names(value["offline"]),
    )


def _snapshot_part(node: str, value: dict[str, Any]) -> SnapshotPart:
    part, parts = value["part"], value["parts"]
    if not (_count(part) and _count(parts) and 0 <= part < parts <= HEARTBEAT_PARTS_MAX):
        raise ValueError(f"part {part!r} of {parts!r}")
    users = _names(value["users"])
    if len(users) > SNAPSHOT_PART:
        raise ValueError(f"{len(users)} names in one part")
    return SnapshotPart(node, part, parts, users)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("a list was expected")
    return value


def _names(value: Any) -> tuple[str, ...]:
    """Usernames, as stored (a node never sends anything else).

    Raises:
        TypeError, ValidationError: not a list of them.
    """
    names = _list(value)
    for name in names:
        check_username(name)
    return tuple(names)


def _push(item: Any) -> tuple[str, bytes]:
    """``[name, payload]``: the payload a push for that user's connections (never
    an answer, nor a message: it goes to them as it is)."""
    username, encoded = _list(item)
    check_username(username)
    if not isinstance(encoded, str):
        raise TypeError("a push is base64 text")
    payload = base64.b64decode(encoded, validate=True)
    push = decode(payload)
    if not isinstance(push, messages.Push) or isinstance(push, _OWN_PUSHES):
        raise ValueError(f"not a push another node sends: {type(push).__name__}")
    return username, payload


_OWN_PUSHES: Final = (messages.MessageDelivered, messages.CaughtUp, messages.PresenceChanged)
"""Pushes a node makes only from what it reads or knows itself (messages from the
database, presence from the heartbeats), never from another node's word."""


def _session(item: Any) -> tuple[bytes, str | None]:
    hashed, reason = _list(item)
    token_hash = bytes.fromhex(hashed)
    if len(token_hash) != 32:
        raise ValueError("a token hash is 32 bytes")
    if reason is not None and not (isinstance(reason, str) and len(reason) <= MAX_REASON):
        raise ValueError("a reason is text")
    return token_hash, reason


class Heartbeats:
    """Heartbeats in parts, put together (a node's parts arrive in order). A part
    out of order starts over: the next heartbeat comes 5 s later. At most
    ``MAX_NODES`` nodes' heartbeats, and :data:`MAX_REMOTE_NAMES` names in all,
    are half received at once (as many as a node tracks, and takes): beyond, the
    oldest is dropped."""

    def __init__(self) -> None:
        self._partial: dict[str, tuple[int, int, list[str]]] = {}
        """By node, the least recently added first: the next part expected, of how
        many, and the names so far."""
        self._names = 0
        """Names in :attr:`_partial`, all nodes together."""

    def add(self, part: SnapshotPart) -> Snapshot | None:
        """The whole heartbeat once ``part`` completes it, else None."""
        expected, parts, names = self._pop(part.node)
        if part.part == 0:
            names = []  # (a new heartbeat: one in progress is over)
        elif (expected, parts) != (part.part, part.parts):
            return None  # a part was lost (or is out of place): wait for the next
        names.extend(part.users)
        if part.part + 1 == part.parts:
            return Snapshot(part.node, names)
        while self._partial and (
            len(self._partial) >= MAX_NODES or self._names + len(names) > MAX_REMOTE_NAMES
        ):
            self._pop(next(iter(self._partial)))  # the oldest: likely gone
        self._partial[part.node] = (part.part + 1, part.parts, names)
        self._names += len(names)
        return None

    def forget(self, node: str) -> None:
        """``node`` said goodbye: its heartbeat in progress will not be finished."""
        self._pop(node)

    def _pop(self, node: str) -> tuple[int, int, list[str]]:
        expected, parts, names = self._partial.pop(node, (0, 0, []))
        self._names -= len(names)
        return expected, parts, names

    @property
    def pending(self) -> int:
        """Heartbeats half received now."""
        return len(self._partial)

    @property
    def pending_names(self) -> int:
        """Names in the heartbeats half received now."""
        return self._names


class RemoteNames:
    """What this node takes of the other nodes' online users: at most
    :data:`MAX_REMOTE_NAMES` names for all of them together.

    The core keeps at most ``MAX_NODE_USERS`` names for one node and tracks
    ``MAX_NODES`` nodes: two million names (573 MiB more in the re-test of issue
    23), which a holder of the key filled with made-up nodes (and counted as many
    users online). This
    bound is kept before the core sees a name: per sending node, an upper bound
    of the names the core holds for it. A heartbeat sets it (its names, cut to the
    room the other nodes leave); news adds the names it says came online (cut
    likewise; those it says went offline are not taken off, since they may not be
    held: the next heartbeat sets the count again); a goodbye, or
    :data:`PEER_SILENCE` without a word, takes the node off. What is cut is
    counted (:attr:`ignored`). A bound too high costs room, never memory: a node
    whose names do not fit has the rest ignored until the next heartbeats.

    Args:
        limit: the most names in all.
    """

    def __init__(self, limit: int = MAX_REMOTE_NAMES) -> None:
        self.limit = limit
        self.ignored = 0
        """Names online on another node that were not handed on (no room)."""
        self._held: dict[str, tuple[int, float]] = {}
        """By node: at most how many of its names the core holds, and when it
        was last heard from (``now`` of the calls)."""
        self._total = 0

    @property
    def held(self) -> int:
        """At most how many names the core holds for other nodes now."""
        return self._total

    def snapshot(self, heard: Snapshot, now: float) -> Snapshot:
        """``heard``, its names cut to the room left (the core replaces what it
        held for that node with them)."""
        self._expire(now)
        self._forget(heard.node)
        users = heard.users
        room = self.limit - self._total
        if len(users) > room:
            self.ignored += len(users) - room
            heard = Snapshot(heard.node, users[:room])
        self._keep(heard.node, len(heard.users), now)
        return heard

    def news(self, heard: News, now: float) -> News:
        """``heard``, the names it says came online cut to the room left (the core
        adds them to what it holds for that node)."""
        self._expire(now)
        held = self._forget(heard.node)
        online = heard.news.online
        room = self.limit - self._total - held
        if len(online) > room:
            self.ignored += len(online) - room
            heard = News(heard.node, attrs.evolve(heard.news, online=online[:room]))
        self._keep(heard.node, held + len(heard.news.online), now)
        return heard

    def forget(self, node: str) -> None:
        """``node`` said goodbye: the core holds nothing for it now."""
        self._forget(node)

    def _keep(self, node: str, names: int, now: float) -> None:
        # (The core keeps at most MAX_NODE_USERS for one node: it ignores the rest.)
        names = min(names, MAX_NODE_USERS)
        self._held[node] = (names, now)
        self._total += names

    def _forget(self, node: str) -> int:
        names, _heard = self._held.pop(node, (0, 0.0))
        self._total -= names
        return names

    def _expire(self, now: float) -> None:
        for node in [n for n, (_, heard) in self._held.items() if now - heard > PEER_SILENCE]:
            self._forget(node)
