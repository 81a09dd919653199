"""Sealed messages on the cluster bus: one node's sealing, and the checks a
receiver makes before it believes a word.

A message on the bus (all integers big-endian)::

    offset  size   field
    0       1      version: 1
    1       16     node: the sender's id, random at each start
    17      8      counter: 0, 1, 2 ... one per message of that node
    25      8      sent: the sender's wall clock, ms since the epoch (never decreasing)
    33      n+16   the body, sealed with ChaCha20-Poly1305 under the sender's key
                   (:meth:`BusKeys.cipher_for`): nonce = the counter in 12 bytes,
                   associated data = the 33 bytes before

A receiver (:class:`Opener`) keeps, per sending node, the counters it accepted (a
:class:`~udpchat_proto.transport.ReplayWindow`), and drops, with a stable reason
(:data:`~udpchat_proto.bus.errors.DropReason`), what is too large, not a sealed
message, not sealed under the cluster's key, stale, sent before the receiver
started, replayed, or from a node too many. A node restarted gets a new id, so its
counter starts at 0 again; a message captured from its previous life is stale by
the time the receiver forgets that id. A receiver has no window for what was sent
before it started, so it takes none of it: a replay to a node that has just
restarted is dropped too.

Nothing here reads a clock: the wall clock is injected, as the server's is
(:data:`~udpchat_proto.clock.WallClock`).
"""

from __future__ import annotations

import struct
from typing import Final

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..clock import WallClock
from ..errors import LocalProtocolError
from ..transport.replay import ReplayWindow
from .errors import BusDropError
from .keys import NODE_SIZE, BusKeys

__all__ = [
    "FRESHNESS",
    "HEADER",
    "MAX_PEERS",
    "MAX_RECEIVED",
    "REPLAY_WINDOW",
    "TAG_SIZE",
    "VERSION",
    "Opener",
    "Sealer",
]

VERSION: Final = 1
"""The first byte of every message (the layout above)."""
HEADER: Final = struct.Struct(">B16sQQ")
"""version, node, counter, sent (ms): 33 bytes, the sealed body's associated data."""
TAG_SIZE: Final = 16
"""ChaCha20-Poly1305's tag, after the sealed body."""
MAX_RECEIVED: Final = 1024 * 1024
"""Largest message a node reads (NATS's default ``max_payload``): what a node sends
whole is at most 512 KiB of news, or a heartbeat part of about 70 KB."""
FRESHNESS: Final = 30.0
"""Seconds a message's ``sent`` may be from the receiver's clock, either way. It
bounds how long a captured message could be replayed to a receiver that never saw
its sender, and how far the nodes' clocks may drift apart (NTP keeps them within
milliseconds): a node whose clock is further off is not heard (``stale``)."""
REPLAY_WINDOW: Final = 1024
"""Counters remembered per sender, its highest included: one NATS connection
delivers a node's messages in order, so this only absorbs what is reordered
within a node."""
MAX_PEERS: Final = 256
"""Most sending nodes whose counters a node keeps. A node's entry goes once all it
sent is stale; only nodes holding the key get one, so this many at once means
that many restarts within :data:`FRESHNESS`."""


def _nonce(counter: int) -> bytes:
    # (Big-endian in 12 bytes: the transport's nonce is another layout, under
    # other keys.)
    return counter.to_bytes(12, "big")


class Sealer:
    """Seals one node's messages, in the order they are published.

    Call :meth:`seal` in the order the messages go out: the counters must reach
    the other nodes in order, or what is reordered beyond :data:`REPLAY_WINDOW` is
    dropped as a replay.

    Args:
        keys: the cluster's keys.
        node: this node's id, :data:`~udpchat_proto.bus.keys.NODE_SIZE` random bytes
            drawn at each start (never one used before: the counter starts at 0).
        clock: the wall clock, POSIX seconds (``time.time``).

    Raises:
        LocalProtocolError: ``node`` is not ``NODE_SIZE`` bytes.
    """

    def __init__(self, keys: BusKeys, node: bytes, clock: WallClock) -> None:
        if len(node) != NODE_SIZE:
            raise LocalProtocolError(f"a node id is {NODE_SIZE} bytes, not {len(node)}")
        self._cipher = keys.cipher_for(node)
        self._node = node
        self._clock = clock
        self._counter = 0
        self._sent = 0

    @property
    def counter(self) -> int:
        """The counter of the next message."""
        return self._counter

    def seal(self, body: bytes) -> bytes:
        """The message carrying ``body``, with the next counter.

        Args:
            body: what the message says (:mod:`udpchat_proto.bus.bodies`).

        Returns:
            The message to publish on the cluster's subject.
        """
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
        clock: the wall clock, POSIX seconds (``time.time``). What was sent before
            its time when the opener is made (this node's start) is dropped.
    """

    def __init__(self, keys: BusKeys, node: bytes, clock: WallClock) -> None:
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

        Args:
            data: a message as it came off the cluster's subject, from anyone.

        Returns:
            The sender's node id and the body, to :func:`~udpchat_proto.bus.parse`.

        Raises:
            BusDropError: it is dropped; its reason says why (the first check
                that fails, in the order of ``docs/PROTOCOL.md``).
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
            peer = _Peer(cipher, ReplayWindow(REPLAY_WINDOW), sent)
        if not peer.window.update(counter):
            raise BusDropError("replayed", f"counter {counter}")
        # (A new node's window is kept once it took a counter: a message dropped
        # moves no window, nor holds a place among MAX_PEERS.)
        self._peers[node] = peer
        peer.newest = max(peer.newest, sent)
        return node, body

    def _forget_stale(self, now: int) -> None:
        """Forget the nodes all of whose messages are stale now: a replay of any of
        them is dropped as such."""
        cutoff = now - FRESHNESS * 1000
        for node in [node for node, peer in self._peers.items() if peer.newest < cutoff]:
            del self._peers[node]
