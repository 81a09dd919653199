"""What a batch holds back until it is durable, and what it tells the other nodes.

A batch is everything between two commits of the store: the datagrams of one turn
of the loop, their requests' writes, the hash jobs and timers that finished. Once
anything is written, every later reply and push is *held* (:class:`Held`) until
the commit: nothing reports what a lost batch would undo. So are the closes a
request decides (a revoked session's connections), and the room joins and leaves,
which go out at the batch's end, coalesced.

Within the batch, each request is a *step*: :meth:`Batch.begin_step` marks where it
began, and a step that fails gives back what it held since its mark
(:meth:`Batch.undo_step`). A step that wrote nothing releases its output at once
(:meth:`Batch.end_step`), unless the batch has earlier writes to wait for.

In a cluster, the batch also collects what the other nodes must hear once it is
durable (:class:`~udpchat_proto.chat.remote.ClusterNews`): whose messages it
stored (the hints), pushes for users online elsewhere, sessions that ended.
"""

from __future__ import annotations

from typing import Final

import attrs

from ..transport import ConnectionId
from ..transport.events import Address
from . import messages as m
from .password_jobs import HashJob
from .remote import ClusterNews, RemoteSession, RemoteUser
from .store import StoreUnavailableError, WriteTrackingStore

__all__ = ["Batch", "BatchEnd", "Close", "Held", "StepMark"]


@attrs.frozen(kw_only=True)
class BatchEnd:
    """What :meth:`ChatServer.end_batch` leaves for the caller to do: write the
    datagrams, run the hash jobs off the loop, publish the news."""

    datagrams: tuple[tuple[bytes, Address], ...]
    """To write now, in order (nothing of the batch left before it was durable)."""
    hash_jobs: tuple[HashJob, ...] = ()
    """To run off the loop; hand each digest back to the next ``end_batch``
    (``hash_results``). Empty when the jobs ran inline (``run_hashes``)."""
    news: ClusterNews = attrs.field(factory=ClusterNews)
    """For the cluster's other nodes (empty for a single server)."""
    committed: bool = False
    """The batch had writes, and they are durable now."""
    failure: StoreUnavailableError | None = None
    """The batch had writes and is lost: the store's reason (its answers went out
    as ``unavailable``)."""
    commit_seconds: float | None = None
    """How long the commit took, by the ``stopwatch`` given (None without one, or
    when nothing was committed)."""


class Held:
    """A reply or push waiting for its batch's commit (never changed once made).

    A plain class with slots, not an attrs one: the compiled build makes it a
    native class, built without a Python ``__init__`` and its ``object.__setattr__``
    calls (two or three are held a message)."""

    __slots__ = ("message", "payload", "target")

    def __init__(
        self,
        target: ConnectionId | RemoteUser,
        message: m.Response | m.Push | m.DevicePush,
        payload: bytes,
    ) -> None:
        self.target: Final = target
        self.message: Final = message
        self.payload: Final = payload


Close = tuple[ConnectionId | RemoteSession, str | None]
"""A connection (or, in a cluster, another node's connections of a session) to
close once the batch is durable, with the reason its client shows (None: for a
remote session, log them out only)."""

_Membership = dict[tuple[str, str], tuple[bool, list[str]]]


class StepMark:
    """Where a step began, to give back what it held if it fails (one a request; a
    plain class with slots for the compiled build, as :class:`Held`)."""

    __slots__ = ("closes", "held", "membership")

    def __init__(self, *, held: int, closes: int, membership: _Membership) -> None:
        self.held: Final = held
        self.closes: Final = closes
        self.membership: Final = membership


class Batch:
    """The output and news of the batch in progress.

    Args:
        tracker: the store wrapper whose ``dirty`` says the batch has written.
    """

    def __init__(self, tracker: WriteTrackingStore) -> None:
        self._tracker = tracker
        self.stepping = False
        """Inside a request's step: its output waits for the step to complete."""
        self._held: list[Held] = []
        self._closes: list[Close] = []
        self._membership: _Membership = {}
        """Room joins and leaves, pushed at the batch's end (coalesced)."""
        self._hints: dict[str, None] = {}
        """Users whose messages this batch stored (a cluster's delivery hints)."""
        self._senders: dict[str, set[ConnectionId] | None] = {}
        """The hinted users' connections here that need no look: those that sent
        their own messages (None: the user was hinted as a recipient too, and
        every connection of theirs looks)."""
        self._hints_out: list[str] = []
        """Hints of committed batches, not yet taken for the other nodes."""
        self._remote_pushes: list[tuple[str, bytes]] = []
        self._device_pushes: list[tuple[str, bytes, bytes]] = []
        self._remote_sessions: list[tuple[bytes, str | None]] = []

    @property
    def holding(self) -> bool:
        """Whether output waits: the batch has written, or a step is running."""
        return self._tracker.dirty or self.stepping

    def hold(self, item: Held) -> None:
        """Keep a reply or push until the commit (or the step's end)."""
        self._held.append(item)

    @property
    def held_count(self) -> int:
        """How many replies and pushes are held."""
        return len(self._held)

    @property
    def last_held(self) -> Held | None:
        """The reply or push held last, if any."""
        return self._held[-1] if self._held else None

    def replace(self, old: Held, new: Held) -> None:
        """Put ``new`` in the place of the held ``old`` (nothing if it is not held any
        more). Looked for from the end: the answers replaced are recent."""
        held = self._held
        for index in range(len(held) - 1, -1, -1):
            if held[index] is old:
                held[index] = new
                return

    def hold_close(self, target: ConnectionId | RemoteSession, reason: str | None) -> None:
        """Close ``target`` once the batch is durable: a lost batch must not have
        disconnected anyone."""
        self._closes.append((target, reason))

    def membership_changed(
        self, room: str, username: str, *, joined: bool, members: list[str]
    ) -> None:
        """Tell ``members`` that ``username`` joined or left ``room``, at the batch's
        end: a join and a leave of the same room by the same user within one batch
        cancel out, so churn pipelined into one batch costs no pushes at all."""
        key = (room, username)
        pending = self._membership.pop(key, None)
        if pending is not None and pending[0] is not joined:
            return  # joined and left (or left and joined) within the batch: nothing
        self._membership[key] = (joined, members)

    def take_membership(self) -> list[tuple[m.RoomMembershipChanged, list[str]]]:
        """The joins and leaves to push now, and to whom."""
        pending, self._membership = self._membership, {}
        return [
            (m.RoomMembershipChanged(room=room, username=username, joined=joined), members)
            for (room, username), (joined, members) in pending.items()
        ]

    def hint(self, recipients: list[str], sender: str, origin: ConnectionId) -> None:
        """A message of this batch for ``recipients``, sent by ``sender`` from the
        connection ``origin``: all of them are told once it is durable (the
        sender's other devices have it too), but ``origin`` needs no look here
        for it: its own message is never pushed to it (and its cursor moved past
        it), so reading the database for it would find nothing new."""
        for username in recipients:
            self._hints[username] = None
            self._senders[username] = None
        self._hints[sender] = None
        senders = self._senders.setdefault(sender, set())
        if senders is not None:
            senders.add(origin)

    # --- steps ----------------------------------------------------------------------

    def begin_step(self) -> StepMark:
        """A request's step starts: its output is held until :meth:`end_step`."""
        self.stepping = True
        return StepMark(
            held=len(self._held), closes=len(self._closes), membership=dict(self._membership)
        )

    def end_step(self, mark: StepMark) -> tuple[list[Held], list[Close]]:
        """The step completed. Returns what it held, to release at once, when the
        batch has nothing to commit; else nothing (it waits for the commit)."""
        self.stepping = False
        if self._tracker.dirty:
            return [], []
        done, self._held[mark.held :] = self._held[mark.held :], []
        closes, self._closes[mark.closes :] = self._closes[mark.closes :], []
        return done, closes

    def undo_step(self, mark: StepMark) -> list[Held]:
        """The step failed: forget its closes and room changes; returns what it held
        (never to be sent: see ``Dispatcher.retract``)."""
        self.stepping = False
        del self._closes[mark.closes :]
        self._membership = mark.membership
        undone, self._held[mark.held :] = self._held[mark.held :], []
        return undone

    # --- the batch's end ------------------------------------------------------------

    def release(self) -> tuple[list[Held], list[Close], list[str], set[ConnectionId]]:
        """The batch is durable: what it held (to send, in order), the closes (to
        do), the users it stored messages for (to look for here; also kept for
        :meth:`take_news`) and the connections of theirs that need no look (see
        :meth:`hint`)."""
        hints = list(self._hints)
        self._hints_out.extend(hints)
        self._hints.clear()
        quiet = {c for senders in self._senders.values() if senders for c in senders}
        self._senders.clear()
        held, self._held = self._held, []
        closes, self._closes = self._closes, []
        return held, closes, hints, quiet

    def lose(self) -> list[Held]:
        """The batch was lost: its closes and hints are dropped; returns what it
        held (never to be sent as it was)."""
        self._closes.clear()
        self._hints.clear()
        self._senders.clear()
        held, self._held = self._held, []
        return held

    # --- for the other nodes ----------------------------------------------------------

    def push_remote(self, username: str, payload: bytes, device: bytes | None = None) -> None:
        """A push for ``username``'s connections on the other nodes (it was held
        with this batch, and is durable now); with ``device``, for that device's
        connections only."""
        if device is None:
            self._remote_pushes.append((username, payload))
        else:
            self._device_pushes.append((username, device, payload))

    def end_remote_session(self, token_hash: bytes, reason: str | None) -> None:
        """A session that ended, for its connections on the other nodes."""
        self._remote_sessions.append((token_hash, reason))

    def take_news(self) -> ClusterNews:
        """The hints, remote pushes (to users and to devices) and ended sessions of
        the committed batches since the last call (each once)."""
        users, self._hints_out = tuple(dict.fromkeys(self._hints_out)), []
        pushes, self._remote_pushes = tuple(self._remote_pushes), []
        sessions, self._remote_sessions = tuple(self._remote_sessions), []
        device_pushes, self._device_pushes = tuple(self._device_pushes), []
        return ClusterNews(
            users=users, pushes=pushes, sessions=sessions, device_pushes=device_pushes
        )
