"""Delivering stored messages to every connection of their recipients.

Each login session has a cursor per conversation in the store. Each logged-in
connection has a window (:class:`~udpchat_proto.chat.delivery.DeliveryWindow`) of
at most ``delivery_window`` pushed but unacknowledged messages; it is filled from
:meth:`~udpchat_proto.chat.store.Store.pending_deliveries` (oldest first) and
topped up as acknowledgements arrive. A connection that has sent its whole backlog
is *caught up*: new messages are pushed to it at once; otherwise they wait their
turn in the store, which keeps every connection's pushes in store order.

An acknowledgement frees room at once; the cursor's move waits in memory
(:data:`CURSOR_WRITE_DELAY`) until the timer writes it, or a batch that writes
anyway carries it once the session has ``CARRIED_ACKNOWLEDGEMENTS`` waiting. Once
durable, the senders of direct messages are told their delivery
(``delivery_receipts``: one push for all of a sender's that were written together).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final

from ..clock import WallClock
from ..e2ee.records import KeyShare
from ..transport import ConnectionId
from . import messages as m
from .connection import ChatConnection
from .connections import ConnectionTable
from .outbox import Outbox
from .presence import Presence
from .requests import utc_from_posix
from .stats import ServerStats
from .store import Receipt, Store, StoreUnavailableError, WriteTrackingStore
from .timers import ServerTimer, ServerTimers
from .tokens import session_id

__all__ = [
    "CURSOR_WRITE_DELAY",
    "RECEIPTS_PER_PUSH",
    "STORE_RETRY_INTERVAL",
    "Deliveries",
    "receipt_pushes",
]

CURSOR_WRITE_DELAY: Final = 1.0
"""Seconds an acknowledgement (a delivery cursor's move) may wait in memory: the
timer then writes it with whatever batch is current (a batch that writes anyway
carries it sooner only once its session has ``CARRIED_ACKNOWLEDGEMENTS`` waiting,
store.py). It bounds how late a sender's ``delivery_receipts`` come. At low load
a delivered message then costs one fsynced commit (its send), not two; a crash
forgets at most this much cursor movement, and those messages are pushed again
(clients drop repeats by id)."""
STORE_RETRY_INTERVAL: Final = 1.0
"""Seconds after a lost batch before the connections whose pushes it dropped are
refilled from the store (which holds what was really kept)."""
RECEIPTS_PER_PUSH: Final = 500
"""Most receipts in one push (about 60 bytes each, well within a message)."""


def receipt_pushes(receipts: list[Receipt]) -> list[m.DeliveryReceipts]:
    """What tells a sender that these messages of theirs were delivered: one push
    for many (a receipt is a small part of a packet, a push each would cost a
    packet each), within the list limit."""
    records = [
        m.DeliveryReceipt(
            message_id=receipt.message_id,
            to=receipt.recipient,
            delivered_at=utc_from_posix(receipt.delivered_at),
        )
        for receipt in receipts
    ]
    return [
        m.DeliveryReceipts(receipts=tuple(records[start : start + RECEIPTS_PER_PUSH]))
        for start in range(0, len(records), RECEIPTS_PER_PUSH)
    ]


class Deliveries:
    """The delivery windows of the connections here, and their cursors.

    Args:
        store: where messages and cursors are read (and acknowledgements noted).
        tracker: writes the deferred acknowledgements; reports the receipts.
        connections: the connection table.
        outbox: where the pushes go.
        presence: whether a sender is online (to be told of a receipt).
        timers: the cursor-write and store-retry timers.
        stats: counts pushes and failures.
        clock: the wall clock (when an acknowledgement came).
        batch_refills: refill the windows an acknowledgement opened at the batch's
            end (:meth:`refill_queued`), all in one read, not one read each (a
            cluster's node: its database is a round trip away).
    """

    def __init__(
        self,
        *,
        store: Store,
        tracker: WriteTrackingStore,
        connections: ConnectionTable,
        outbox: Outbox,
        presence: Presence,
        timers: ServerTimers,
        stats: ServerStats,
        clock: WallClock,
        batch_refills: bool = False,
    ) -> None:
        self._store = store
        self._batch_refills = batch_refills
        self._queued: dict[ConnectionId, None] = {}
        """Connections to refill at the batch's end (``batch_refills``)."""
        self._tracker = tracker
        self._connections = connections
        self._outbox = outbox
        self._presence = presence
        self._timers = timers
        self._stats = stats
        self._clock = clock
        self._stale: dict[ConnectionId, None] = {}
        """Connections whose pushes a lost batch dropped: refilled at STORE_RETRY."""

    def deliver_new(
        self,
        connection: ChatConnection,
        message: m.ChatMessage,
        key_shares: Sequence[KeyShare] = (),
    ) -> None:
        """A new message for this connection's user was just stored (an encrypted
        one with the key shares sent with it for this connection's device).

        Never raises for a store failure (the send that stored it must not fail
        after its write, see ``Route.writes_once``): a refill that fails is retried."""
        if connection.deliveries.offer(message):
            # Everything older is already in flight, so pushing now keeps the order.
            self._push(connection, message, key_shares)
        else:
            # It is in the store, behind the backlog; the refill will reach it.
            self.retry_refill(connection)

    def refill(self, connection: ChatConnection) -> None:
        """Top up the connection's delivery window from the store.

        Raises:
            StoreUnavailableError: from the store (see :meth:`retry_refill`).
        """
        window = connection.deliveries
        if not window.wants_refill:
            return
        assert connection.username is not None and connection.token_hash is not None
        # Pending starts with what is already in flight (unacknowledged), so ask for a
        # whole window; the window skips those.
        pending = self._store.pending_deliveries(
            connection.username, connection.token_hash, window.size
        )
        pushed, caught_up = window.refill(pending)
        device = session_id(connection.token_hash)
        try:
            # Every share read before anything is pushed: a failure leaves the
            # window as it was (taken back), for the retry to push in order.
            shares = [
                self._store.key_shares_for(message.id, device) if message.encrypted else []
                for message in pushed
            ]
        except BaseException:
            for message in pushed:
                window.take_back(message.id)
            raise
        for message, key_shares in zip(pushed, shares, strict=True):
            self._push(connection, message, key_shares)
        if caught_up:
            self._outbox.send(connection.connection_id, m.CaughtUp())

    def retry_refill(self, connection: ChatConnection) -> None:
        """:meth:`refill`, or again after STORE_RETRY_INTERVAL if the store fails."""
        try:
            self.refill(connection)
        except StoreUnavailableError as failure:
            self._stats.note_store_failure(failure)
            self._stale[connection.connection_id] = None
            self._timers.set_after(ServerTimer.STORE_RETRY, STORE_RETRY_INTERVAL)
        except Exception as exc:
            self._stats.note_internal_error(exc)

    def _push(
        self,
        connection: ChatConnection,
        message: m.ChatMessage,
        key_shares: Sequence[KeyShare] | None = None,
    ) -> None:
        """Push a message; an encrypted one with its key shares for the connection's
        device (from the store, unless given), which the device takes first: they
        ride in its stream at the message's place, acknowledged with it.

        Raises:
            StoreUnavailableError: reading the shares (only when not given).
        """
        if key_shares is None and message.encrypted:
            assert connection.token_hash is not None  # (a delivery is a session's)
            key_shares = self._store.key_shares_for(message.id, session_id(connection.token_hash))
        self._stats.deliveries_pushed += 1
        self._outbox.send(
            connection.connection_id,
            m.MessageDelivered(message=message, key_shares=tuple(key_shares or ())),
        )

    # --- acknowledgements -------------------------------------------------------------

    def acknowledge(
        self, connection: ChatConnection, request: m.AcknowledgeDelivery, now: float
    ) -> None:
        """The client took these messages (``ack_delivery``: never answered)."""
        if not connection.logged_in:
            return  # nothing was delivered on this connection: nothing to advance
        assert connection.username is not None and connection.token_hash is not None
        ids = request.message_ids
        # Out of the window whatever the store does: if the cursor cannot move, the
        # store still holds them as pending and a later refill pushes them again
        # (the client acknowledges a repeat without showing it twice).
        connection.deliveries.acknowledge(ids)
        # Deferred (see CURSOR_WRITE_DELAY): written with the batch's other writes,
        # before anything reads the cursors (the refill below), or by the timer.
        self._store.acknowledge(connection.username, connection.token_hash, ids, self._clock())
        self._timers.arm(ServerTimer.CURSOR_WRITE, now + CURSOR_WRITE_DELAY)
        if self._batch_refills:
            self._queued[connection.connection_id] = None
        else:
            self.retry_refill(connection)

    def write_cursors(self) -> None:
        """Write the deferred acknowledgements (the CURSOR_WRITE timer; the batch
        then commits them)."""
        self._timers.cancel(ServerTimer.CURSOR_WRITE)
        if self._tracker.stages_messages:
            # A database a round trip away: written by the batch's commit, in its
            # round trip (a failure there leaves them waiting: see committed()).
            self._tracker.carry_deferred()
            return
        try:
            self._tracker.flush_acknowledgements(own_block=True)
        except StoreUnavailableError as failure:  # they wait for the next try
            self._stats.note_store_failure(failure)
            self._timers.set_after(ServerTimer.CURSOR_WRITE, CURSOR_WRITE_DELAY)
        except Exception as exc:
            self._stats.note_internal_error(exc)

    def committed(self) -> None:
        """The batch is durable (its acknowledgements with it): tell the senders
        online of their messages' delivery."""
        if not self._tracker.acknowledgements_deferred:
            self._timers.cancel(ServerTimer.CURSOR_WRITE)
        else:  # (some the commit carried may have failed and wait again)
            self._timers.arm_after(ServerTimer.CURSOR_WRITE, CURSOR_WRITE_DELAY)
        by_sender: dict[str, list[Receipt]] = {}
        for receipt in self._tracker.take_receipts():
            if self._presence.is_online(receipt.sender):  # (one offline asks the status later)
                by_sender.setdefault(receipt.sender, []).append(receipt)
        for sender, receipts in by_sender.items():
            for push in receipt_pushes(receipts):
                self._outbox.push_to_user(sender, push)

    def lost(self) -> None:
        """The batch was lost: its acknowledgements wait to be written again."""
        if self._tracker.acknowledgements_deferred:
            self._timers.arm_after(ServerTimer.CURSOR_WRITE, CURSOR_WRITE_DELAY)

    # --- pushes that never left -------------------------------------------------------

    def take_back(self, connection: ChatConnection, push: m.MessageDelivered | m.CaughtUp) -> None:
        """A held push will never be sent (its step or batch was lost): the window
        goes back to reading the store, which pushes again what it holds, and the
        caught_up that ends it (after STORE_RETRY_INTERVAL)."""
        if isinstance(push, m.MessageDelivered):
            connection.deliveries.take_back(push.message.id)
        else:
            connection.deliveries.fall_behind()
        self._stale[connection.connection_id] = None
        self._timers.arm_after(ServerTimer.STORE_RETRY, STORE_RETRY_INTERVAL)

    def refill_stale(self) -> None:
        """Refill the windows a lost batch left behind (the STORE_RETRY timer)."""
        stale, self._stale = self._stale, {}
        for connection_id in stale:
            connection = self._connections.get(connection_id)
            if connection is not None:
                self.retry_refill(connection)

    # --- looking again ----------------------------------------------------------------

    def look_again(self, connection_id: ConnectionId) -> None:
        """Read the store again for this connection: it may hold what is not in
        flight (another node stored it, or news of it was lost)."""
        self._look_again([connection_id])

    def look_again_for(self, usernames: list[str], *, skip: Collection[ConnectionId] = ()) -> None:
        """:meth:`look_again` for every connection here of these users but those
        in ``skip``, in one read."""
        self._look_again(
            [
                connection_id
                for username in usernames
                for connection_id in self._connections.of_user(username)
                if connection_id not in skip
            ]
        )

    def look_again_for_everyone(self) -> None:
        """:meth:`look_again` for every connection here, in one read."""
        self._look_again([connection.connection_id for connection in list(self._connections)])

    def look_again_later_for(self, usernames: list[str]) -> None:
        """:meth:`look_again_for`, at the batch's end (:meth:`refill_queued`), in one
        read with the batch's other refills (news from several nodes in one turn)."""
        self._look_again(
            [
                connection_id
                for username in usernames
                for connection_id in self._connections.of_user(username)
            ],
            now=False,
        )

    def _look_again(self, connection_ids: list[ConnectionId], *, now: bool = True) -> None:
        for connection_id in connection_ids:
            connection = self._connections.get(connection_id)
            if connection is not None and connection.logged_in:
                # A live window pushes only what this node stores: it reads the
                # database again (and says caught_up again once it has).
                connection.deliveries.fall_behind()
                self._queued[connection_id] = None
        if now:
            self.refill_queued()

    def refill_queued(self) -> None:
        """Refill the windows queued (acknowledged, or looked at again), in one read
        of the store (``Store.pending_deliveries_many``); a failure is retried as
        :meth:`retry_refill` retries."""
        queued, self._queued = self._queued, {}
        wanting: list[ChatConnection] = []
        for connection_id in queued:
            connection = self._connections.get(connection_id)
            if connection is not None and connection.deliveries.wants_refill:
                wanting.append(connection)
        if not wanting:
            return
        try:
            found = self._store.pending_deliveries_many(
                [(c.username or "", c.token_hash or b"", c.deliveries.size) for c in wanting]
            )
        except StoreUnavailableError as failure:
            self._stats.note_store_failure(failure)
            self._stale.update(dict.fromkeys(c.connection_id for c in wanting))
            self._timers.set_after(ServerTimer.STORE_RETRY, STORE_RETRY_INTERVAL)
            return
        except Exception as exc:
            self._stats.note_internal_error(exc)
            return
        for connection, pending in zip(wanting, found, strict=True):
            pushed, caught_up = connection.deliveries.refill(pending)
            for message in pushed:
                self._push(connection, message)
            if caught_up:
                self._outbox.send(connection.connection_id, m.CaughtUp())
