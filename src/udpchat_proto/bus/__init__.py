"""The cluster bus's wire: how the nodes of one cluster talk (sans-IO).

The nodes of a cluster share the server's static key and a database, and tell
each other what changed for whom on a publish-subscribe bus (NATS, in
``udpchat-server``): the :class:`~udpchat_proto.chat.ClusterNews` of their
batches, heartbeats of who is online on them, a goodbye, a call to look again.
This package is the bytes of it, specified in ``docs/PROTOCOL.md`` ("Cluster
bus") with test vectors in ``docs/vectors/bus.json``: the keys derived from the
shared key, the sealed messages and the checks a receiver makes, the bodies and
their bounds. It opens no connection and reads no clock (the wall clock is
injected, ``now`` is passed in): a runtime carries the bytes.

A node's way round::

    keys = BusKeys.derive(server_key.private_bytes)   # subject: keys.subject
    sealer, opener = Sealer(keys, node, time.time), Opener(keys, node, time.time)
    for body in news_bodies(chat_server.take_news()):  # out, in order
        publish(keys.subject, sealer.seal(body))
    sender, body = opener.open(data)                   # in; BusDropError: count it
    said = parse(sender.hex(), body)                   # News, SnapshotPart, Bye, Resync

The modules behind it:

==============  ================================================================
``keys``        :class:`BusKeys`: the subject and the sealing keys (HKDF-SHA256)
``sealing``     a message's layout; :class:`Sealer`, :class:`Opener` (replay, freshness)
``bodies``      what a message says: the encoders and :func:`parse`, with their bounds
``heard``       heartbeats put together; the names taken from all nodes, bounded
``errors``      :class:`BusDropError` and the stable :data:`DROP_REASONS`
==============  ================================================================
"""

from __future__ import annotations

from .bodies import (
    HEARTBEAT_PARTS_MAX,
    MAX_NEWS_BODY,
    MAX_REASON,
    SNAPSHOT_PART,
    Bye,
    News,
    Resync,
    Said,
    SnapshotPart,
    bye_body,
    news_bodies,
    news_body,
    parse,
    resync_body,
    snapshot_bodies,
)
from .errors import DROP_REASONS, BusDropError, DropReason
from .heard import MAX_REMOTE_NAMES, PEER_SILENCE, Heard, Heartbeats, RemoteNames, Snapshot
from .keys import NODE_SIZE, SUBJECT_PREFIX, BusKeys
from .sealing import (
    FRESHNESS,
    HEADER,
    MAX_PEERS,
    MAX_RECEIVED,
    REPLAY_WINDOW,
    VERSION,
    Opener,
    Sealer,
)

__all__ = [
    "DROP_REASONS",
    "FRESHNESS",
    "HEADER",
    "HEARTBEAT_PARTS_MAX",
    "MAX_NEWS_BODY",
    "MAX_PEERS",
    "MAX_REASON",
    "MAX_RECEIVED",
    "MAX_REMOTE_NAMES",
    "NODE_SIZE",
    "PEER_SILENCE",
    "REPLAY_WINDOW",
    "SNAPSHOT_PART",
    "SUBJECT_PREFIX",
    "VERSION",
    "BusDropError",
    "BusKeys",
    "Bye",
    "DropReason",
    "Heard",
    "Heartbeats",
    "News",
    "Opener",
    "RemoteNames",
    "Resync",
    "Said",
    "Sealer",
    "Snapshot",
    "SnapshotPart",
    "bye_body",
    "news_bodies",
    "news_body",
    "parse",
    "resync_body",
    "snapshot_bodies",
]
