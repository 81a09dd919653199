"""The chat server state machine: many connections, one store.

:class:`ChatServer` owns a :class:`~udpchat_proto.transport.ServerTransport` (the
handshake, packet protection and reliable delivery of every connection) and turns
the payloads it delivers into requests, answers and pushes, reading and writing
through an injected :class:`~udpchat_proto.chat.store.Store`. It has the five methods of
every role (``receive_datagram``, ``datagrams_to_send``, ``get_timer``,
``handle_timer``, ``next_event``) and three duties towards its caller:

* **Group commit.** After any store write, every later reply and push is *held*:
  :attr:`ChatServer.writes_pending` turns True, and the caller calls
  :meth:`ChatServer.commit` once per batch, which commits the store and only then
  releases them. So no ``message_accepted`` (nor anything else) leaves before what
  it reports is durable. If the store cannot commit (a full disk:
  :class:`~udpchat_proto.chat.store.StoreUnavailableError`), the batch is lost whole:
  every answer it held becomes an ``unavailable`` refusal and its pushes are
  dropped, so nothing that was rolled back is ever reported.
* **Password hashing off the loop.** Register and login need scrypt, which takes
  tens of milliseconds. The state machine never hashes: it queues a
  :class:`HashJob` (:meth:`ChatServer.take_hash_jobs`), the caller runs
  :meth:`HashJob.run` on a worker thread and hands the digest back
  (:meth:`ChatServer.complete_hash_job`). The connection's later requests wait in
  its queue meanwhile (requests on one connection are answered in order); other
  connections are not delayed.
* **Timers.** :meth:`ChatServer.get_timer` is the earliest of the transport's timers
  and the next session sweep.

A typical loop::

    server.receive_datagram(data, addr, now)        # for each datagram read
    for job in server.take_hash_jobs():             # run off the loop, then:
        server.complete_hash_job(job.job_id, job.run(), now)
    server.commit()                                 # group commit, then:
    for data, addr in server.datagrams_to_send(now):
        sock.sendto(data, addr)

Message delivery: every login session has a cursor per conversation in the store.
Each logged-in connection has a window of at most ``delivery_window`` pushed but
unacknowledged messages; the server fills it from
:meth:`~udpchat_proto.chat.store.Store.pending_deliveries` (oldest first) and tops it up
as acknowledgements arrive. A connection that has sent its whole backlog is
*caught up*: new messages are pushed to it at once; otherwise they wait their turn
in the store, which keeps every connection's pushes in store order.
"""

from __future__ import annotations

from .admin import Administration
from .cluster import ClusterNode
from .config import ServerConfig
from .handlers import (
    AccountChangeRequests,
    BlockRequests,
    FriendRequests,
    MessageRequests,
    RoomRequests,
)
from .introspection import Introspection
from .password_jobs import HashJob
from .requests import HANDLERS, token_hash
from .stats import ServerStats

__all__ = ["HANDLERS", "ChatServer", "HashJob", "ServerConfig", "ServerStats", "token_hash"]


class ChatServer(
    AccountChangeRequests,
    BlockRequests,
    FriendRequests,
    MessageRequests,
    RoomRequests,
    ClusterNode,
    Introspection,
    Administration,
):
    """The server role: routes every connection's requests to the store and back.

    Args:
        store: where accounts, sessions, friendships, rooms and messages live.
        static_key: the server's Noise static key.
        clock: the wall clock, POSIX seconds (``time.time`` in a real server):
            message timestamps and session expiry, which outlive the process.
            Timers and rate limits run on the ``now`` each call passes instead, a
            monotonic clock, so that a wall-clock step (NTP) never moves them.
        config: limits and timeouts (defaults: :class:`ServerConfig`).
        random: where tokens, salts and transport keys come from (default: the OS).

    Nothing here raises for remote input. A store that cannot work answers
    ``unavailable``; any other store exception in a request is answered
    ``internal`` and counted in :attr:`stats`.
    """
