"""What leaves for the clients: answers and pushes, held with the batch or sent.

Every reply, refusal and push goes through :meth:`Outbox.send`: encoded once,
then held (:class:`~udpchat_proto.chat.batch.Batch`) while the batch has written
or a step runs, else handed to the transport at once. A push for a user who is
online on another node of a cluster goes to them too, as a
:class:`~udpchat_proto.chat.remote.RemoteUser` target that the news carries.
"""

from __future__ import annotations

from collections.abc import Callable

from ..e2ee.records import DeviceSet
from ..errors import ErrorCode, LocalProtocolError
from ..transport import ConnectionId, ServerTransport
from . import messages as m
from .batch import Batch, Held
from .codec import encode
from .connection import ChatConnection
from .connections import ConnectionTable
from .remote import RemoteUser, RemoteUsers
from .stats import ServerStats

__all__ = ["Outbox"]


class Outbox:
    """Sends to connections, through the batch.

    Args:
        transport: where payloads go.
        connections: the connection table (a payload for one that ended, or is
            closing, is dropped).
        remote: who is online on the other nodes (pushes reach them too).
        batch: what holds output until the commit.
        stats: counts refusals.
        on_overflow: closes a connection whose send buffer is full. (It is the
            server's: a close logs the connection out, which tells its friends,
            which sends; so the part that closes is built on this one, not under it.)
    """

    def __init__(
        self,
        *,
        transport: ServerTransport,
        connections: ConnectionTable,
        remote: RemoteUsers,
        batch: Batch,
        stats: ServerStats,
        on_overflow: Callable[[ConnectionId], None],
    ) -> None:
        self._transport = transport
        self._connections = connections
        self._remote = remote
        self._batch = batch
        self._stats = stats
        self._on_overflow = on_overflow

    def send(
        self, target: ConnectionId | RemoteUser, message: m.Response | m.Push | m.DevicePush
    ) -> None:
        """Send ``message`` to ``target``, or hold it with the batch.

        Raises:
            LocalProtocolError: it does not encode (an answer over the size limit).
        """
        payload = encode(message)
        if self._batch.holding:
            self._batch.hold(Held(target, message, payload))
        else:
            self.send_now(target, payload)

    def send_now(self, target: ConnectionId | RemoteUser, payload: bytes) -> None:
        """Hand an encoded payload to the transport (or to the other nodes' news)."""
        if isinstance(target, RemoteUser):  # for the other nodes (a cluster's)
            self._batch.push_remote(target.username, payload, target.device)
            return
        connection = self._connections.get(target)
        if connection is None or connection.closing:
            return  # ended (or is ending) while the payload was held
        try:
            self._transport.send(target, payload)
        except LocalProtocolError:
            # Its send buffer is full (it does not read what it asked for) or it is
            # already closing. Dropping one payload would break the order of its
            # answers, so the connection ends; its session's unacknowledged
            # messages are pushed again on its next connection.
            self._on_overflow(target)

    def release(self, held: list[Held]) -> None:
        """Send what a batch (or a step) held, in order."""
        for item in held:
            self.send_now(item.target, item.payload)

    def reply(self, connection: ChatConnection, message: m.Response) -> None:
        """Answer a request of ``connection``."""
        try:
            self.send(connection.connection_id, message)
        except LocalProtocolError:
            # Only an answer over the size limit can fail to encode.
            self.refuse(
                connection, message.request_id, ErrorCode.TOO_LARGE, "the answer is too large"
            )

    def reply_held(self, connection: ChatConnection, message: m.Response) -> Held | None:
        """:meth:`reply`, and what holds the answer (for :meth:`replace_held`), or None
        if it was not held (sent at once, or refused)."""
        before = self._batch.held_count
        self.reply(connection, message)
        return self._batch.last_held if self._batch.held_count > before else None

    def replace_held(self, held: Held, message: m.Response) -> None:
        """Put ``message`` in the place of a held answer, to go out in its turn (an
        answer decided once the batch's writes were done: see
        ``MessageHandlers._stage``)."""
        self._batch.replace(held, Held(held.target, message, encode(message)))

    def refuse(
        self,
        connection: ChatConnection,
        request_id: int,
        code: ErrorCode,
        message: str,
        device_set: DeviceSet | None = None,
    ) -> None:
        """Answer a request of ``connection`` with an error (counted by code); with
        ``devices_changed``, the conversation's current ``device_set``."""
        self._stats.refusals[code.value] += 1
        self.send(
            connection.connection_id,
            m.ErrorResponse(
                request_id=request_id, code=code, message=message, device_set=device_set
            ),
        )

    def push_to_user(self, username: str, push: m.Push) -> None:
        """Push to every connection of ``username``, here and on the other nodes."""
        for connection_id in self._connections.of_user(username):
            self.send(connection_id, push)
        if self._remote.is_online(username):  # and on the other nodes (cluster.py)
            self.send(RemoteUser(username), push)

    def push_to_other_nodes(
        self, username: str, push: m.Push | m.DevicePush, *, device: bytes | None = None
    ) -> None:
        """Push to ``username``'s connections on the other nodes, if it has any
        (a cluster's; each node picks the connections there it is for); with
        ``device`` (a session id), to that device's connections only."""
        if self._remote.is_online(username):
            self.send(RemoteUser(username, device), push)

    def flush_membership(self) -> None:
        """Push the batch's room joins and leaves to the rooms' members."""
        for push, members in self._batch.take_membership():
            for member in members:
                self.push_to_user(member, push)
