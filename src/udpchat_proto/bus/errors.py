"""Why a node drops a message from the cluster bus: one stable reason each.

A node never answers on the bus, and a dropped message costs time only (the
database holds everything), so a drop is not an error anyone handles: it is
counted by its reason, which operators read in the counters and the metrics
(``bus_dropped``). The reasons are part of the protocol (``docs/PROTOCOL.md``,
"Cluster bus"): never rename one.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from ..errors import ProtocolError

__all__ = ["DROP_REASONS", "BusDropError", "DropReason"]

DropReason = Literal[
    "too_large",
    "malformed",
    "forged",
    "stale",
    "before_start",
    "replayed",
    "too_many_nodes",
    "invalid",
]
"""Why a message from the bus was dropped. A receiver counts the first check that
fails, in this order (save that a node id it knows is checked for ``replayed``
counters after ``too_many_nodes``, which only a new one can be):

* ``too_large``: longer than :data:`~udpchat_proto.bus.sealing.MAX_RECEIVED`;
* ``malformed``: shorter than a header and a tag, or of another version;
* ``forged``: it does not open under the cluster's key (or was edited);
* ``stale``: sent further than :data:`~udpchat_proto.bus.sealing.FRESHNESS` from
  the receiver's clock;
* ``before_start``: sent before the receiver started;
* ``replayed``: a counter the receiver accepted before from that node, or too far
  behind the highest, or the receiver's own node id;
* ``too_many_nodes``: from a new node while the receiver keeps counters for
  :data:`~udpchat_proto.bus.sealing.MAX_PEERS` others;
* ``invalid``: authentic, but its body says something no node says.
"""

DROP_REASONS: Final[tuple[DropReason, ...]] = get_args(DropReason)
"""Every :data:`DropReason`."""


class BusDropError(ProtocolError):
    """A message from the bus is dropped.

    Args:
        reason: why (one of :data:`DROP_REASONS`), for the counters.
        detail: for a log line (never shown to a user).
    """

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: DropReason = reason
        self.detail = detail
