"""What one node of a cluster tells the others, as the core collects it.

A node's state in memory (who is connected, whose sessions live on which
connection, the friend sets it caches) is its own; the database is shared. So
whatever a request does to a user, a session or a cache that *another* node may
hold has to be told to the other nodes once the batch that did it is durable:
:class:`ClusterNews` is that, for one or more batches. The runtime carries it on
the cluster's bus; the receiving node applies it to its own connections only
(see :mod:`udpchat_proto.chat.cluster`). :class:`RemoteUsers` is what a node
knows of who is online on the others, within bounds whoever says what.
"""

from __future__ import annotations

from typing import Final

import attrs

from .stats import ServerStats

__all__ = [
    "HEARTBEAT_INTERVAL",
    "MAX_NODES",
    "MAX_NODE_USERS",
    "NODE_TIMEOUT",
    "ClusterNews",
    "NodeView",
    "RemoteSession",
    "RemoteUser",
    "RemoteUsers",
]

HEARTBEAT_INTERVAL: Final = 5.0
"""Seconds between a node's full lists of who is online on it (its heartbeat)."""
NODE_TIMEOUT: Final = 15.0
"""Seconds without a word from a node after which it counts as gone (three lost
heartbeats): its users go offline, well within the 30 s the cluster promises."""
MAX_NODES: Final = 32
"""Most other nodes whose users a node keeps (a cluster is a handful of nodes). The
news of a node beyond them is still acted on; its users are not counted online
until a tracked node goes silent and makes room."""
MAX_NODE_USERS: Final = 65_536
"""Most names a node keeps as online on one other node: sixteen times the users a
node can hold with the transport's default ``max_connections`` (4096), and about
8 MiB of heap (15-18 MiB of the process once names churn). A node that says more
has the rest ignored (and counted); the bus bounds the names of all nodes
together as well."""


@attrs.frozen(slots=True)
class RemoteUser:
    """Where a push goes when its user is connected to another node too: it is held
    with the batch as a local push is, and dropped with it if the batch is lost."""

    username: str
    device: bytes | None = None
    """For that one device's connections only (its session id): a push that only
    the device it names may be told (``one_time_keys_low``)."""


@attrs.frozen(slots=True)
class RemoteSession:
    """A session that ended, for its connections on other nodes: closed with the
    held reason, or only logged out when the reason is None."""

    token_hash: bytes


@attrs.frozen
class ClusterNews:
    """What committed batches of one node changed for the others (all empty:
    nothing to tell).

    Attributes:
        users: users with new messages in the database (the delivery hints).
        pushes: ``(username, payload)``: an encoded push for that user's
            connections on the other nodes (an invitation, a receipt ...).
        sessions: ``(token_hash, reason)``: a session that ended; its connections
            elsewhere are closed with ``reason``, or logged out if it is None.
        device_pushes: ``(username, device id, payload)``: an encoded push for
            the connections of that one device of the user on the other nodes
            (``one_time_keys_low``: a claim on one node took the keys of a device
            connected to another).
        forget: users whose friendships changed, or whose account was deleted:
            what a node cached about them is stale.
        online: users who came online on this node (their first connection here).
        offline: users who went offline on this node (their last connection here).
    """

    users: tuple[str, ...] = ()
    pushes: tuple[tuple[str, bytes], ...] = ()
    sessions: tuple[tuple[bytes, str | None], ...] = ()
    forget: tuple[str, ...] = ()
    online: tuple[str, ...] = ()
    offline: tuple[str, ...] = ()
    device_pushes: tuple[tuple[str, bytes, bytes], ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.users
            or self.pushes
            or self.sessions
            or self.forget
            or self.online
            or self.offline
            or self.device_pushes
        )


@attrs.define
class NodeView:
    """What a node knows of another: who is online there, and when it last spoke
    (a monotonic ``now``)."""

    users: set[str]
    heard: float


Transition = tuple[str, bool]
"""A user whose count of other nodes went from none to one (True) or from one to
none (False)."""


class RemoteUsers:
    """Who is online on the other nodes, by node, as they said.

    A user is online elsewhere while any node has them. What one node says is
    bounded: at most :data:`MAX_NODE_USERS` names for one node and
    :data:`MAX_NODES` nodes; the rest is ignored and counted
    (``ServerStats.remote_names_ignored``).

    Each change returns its transitions, in order, for presence to tell.

    Args:
        stats: where ignored names are counted.
    """

    def __init__(self, stats: ServerStats) -> None:
        self._stats = stats
        self._online: dict[str, int] = {}
        """Each user online elsewhere, with on how many nodes."""
        self._nodes: dict[str, NodeView] = {}

    def is_online(self, username: str) -> bool:
        """Whether another node has ``username`` online."""
        return username in self._online

    def usernames(self) -> set[str]:
        """Everyone online on another node."""
        return set(self._online)

    def __bool__(self) -> bool:
        return bool(self._online)

    def update(
        self, node: str, online: tuple[str, ...], offline: tuple[str, ...], now: float
    ) -> list[Transition]:
        """``node``'s news: who came online and went offline on it."""
        view = self._heard(node, now)
        if view is None:
            self._stats.remote_names_ignored += len(online)
            return []
        transitions: list[Transition] = []
        for username in offline:  # (first: they make room)
            if username in view.users:
                view.users.discard(username)
                self._left(username, transitions)
        for username in online:
            if username in view.users:
                continue
            if len(view.users) >= MAX_NODE_USERS:
                self._stats.remote_names_ignored += 1
                continue
            view.users.add(username)
            self._joined(username, transitions)
        return transitions

    def replace(self, node: str, usernames: list[str], now: float) -> list[Transition]:
        """``node``'s heartbeat: everyone online on it now (so lost news heals)."""
        view = self._heard(node, now)
        if view is None:
            self._stats.remote_names_ignored += len(usernames)
            return []
        online = set(usernames[:MAX_NODE_USERS])
        self._stats.remote_names_ignored += max(0, len(usernames) - MAX_NODE_USERS)
        transitions: list[Transition] = []
        for username in view.users - online:
            self._left(username, transitions)
        for username in online - view.users:
            self._joined(username, transitions)
        view.users = online
        return transitions

    def forget(self, nodes: list[str]) -> list[Transition]:
        """These nodes are gone: their users are offline unless another has them."""
        transitions: list[Transition] = []
        for node in nodes:
            view = self._nodes.pop(node, None)
            if view is not None:
                for username in view.users:
                    self._left(username, transitions)
        return transitions

    def silent(self, now: float) -> list[str]:
        """The nodes not heard from for :data:`NODE_TIMEOUT`."""
        return [node for node, view in self._nodes.items() if now - view.heard > NODE_TIMEOUT]

    def _heard(self, node: str, now: float) -> NodeView | None:
        """The view of ``node``, heard from now (None: :data:`MAX_NODES` others are
        tracked already, and it is not one of them)."""
        view = self._nodes.get(node)
        if view is None:
            if len(self._nodes) >= MAX_NODES:
                return None
            view = self._nodes[node] = NodeView(users=set(), heard=now)
        view.heard = now
        return view

    def _joined(self, username: str, transitions: list[Transition]) -> None:
        count = self._online.get(username, 0)
        self._online[username] = count + 1
        if count == 0:
            transitions.append((username, True))

    def _left(self, username: str, transitions: list[Transition]) -> None:
        count = self._online.pop(username, 0)
        if count > 1:
            self._online[username] = count - 1
        elif count == 1:
            transitions.append((username, False))
