"""What a node takes of what the other nodes said: heartbeats put together from
their parts, and the names online elsewhere, within one bound for all the nodes.

Both are bounds a receiver keeps whoever speaks (a node holding the key may say
anything a body allows): :class:`Heartbeats` holds at most ``MAX_NODES`` nodes'
half-received heartbeats and :data:`MAX_REMOTE_NAMES` names in them;
:class:`RemoteNames` hands the core at most :data:`MAX_REMOTE_NAMES` names online
on other nodes, all of them together. ``now`` is the monotonic clock, as
everywhere in the core.
"""

from __future__ import annotations

from typing import Final

import attrs

from ..chat.remote import MAX_NODE_USERS, MAX_NODES, NODE_TIMEOUT
from .bodies import Bye, News, SnapshotPart

__all__ = [
    "MAX_REMOTE_NAMES",
    "PEER_SILENCE",
    "Heard",
    "Heartbeats",
    "RemoteNames",
    "Snapshot",
]

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


@attrs.frozen
class Snapshot:
    """Another node's heartbeat, whole: everyone online on it (hand it to
    ``ChatServer.receive_snapshot``).

    Attributes:
        node: the sender's id, in hex.
        users: the names, in the order of its parts.
    """

    node: str
    users: list[str]


Heard = News | Snapshot | Bye
"""What a server acts on: news, a whole heartbeat, a goodbye."""


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
        """Take one part of a node's heartbeat.

        Args:
            part: what :func:`~udpchat_proto.bus.parse` read.

        Returns:
            The whole heartbeat once ``part`` completes it, else None.
        """
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
        """A node's whole heartbeat, as the core may take it.

        Args:
            heard: the heartbeat.
            now: a monotonic clock, seconds.

        Returns:
            ``heard``, its names cut to the room left (the core replaces what it
            held for that node with them).
        """
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
        """A node's news, as the core may take it.

        Args:
            heard: the news.
            now: a monotonic clock, seconds.

        Returns:
            ``heard``, the names it says came online cut to the room left (the
            core adds them to what it holds for that node).
        """
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
