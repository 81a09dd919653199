"""What one node of a cluster tells the others, as the core collects it.

A node's state in memory (who is connected, whose sessions live on which
connection, the friend sets it caches) is its own; the database is shared. So
whatever a request does to a user, a session or a cache that *another* node may
hold has to be told to the other nodes once the batch that did it is durable:
:class:`ClusterNews` is that, for one or more batches. The runtime carries it on
the cluster's bus; the receiving node applies it to its own connections only
(see :mod:`udpchat_proto.chat.cluster`).
"""

from __future__ import annotations

import attrs

__all__ = ["ClusterNews", "NodeView", "RemoteSession", "RemoteUser"]


@attrs.frozen(slots=True)
class RemoteUser:
    """Where a push goes when its user is connected to another node too: it is held
    with the batch as a local push is, and dropped with it if the batch is lost."""

    username: str


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

    def __bool__(self) -> bool:
        return bool(
            self.users or self.pushes or self.sessions or self.forget or self.online or self.offline
        )


@attrs.define
class NodeView:
    """What a node knows of another: who is online there, and when it last spoke
    (a monotonic ``now``)."""

    users: set[str]
    heard: float
