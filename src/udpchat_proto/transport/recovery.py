"""RTT estimation, retransmission timeout and loss detection.

The estimator follows RFC 9002, section 5 (itself RFC 6298 with the peer's ACK
delay taken out); the retransmission timeout is RFC 6298's
``SRTT + max(G, 4 * RTTVAR)`` plus the peer's maximum ACK delay (RFC 9002's PTO),
clamped to ``[min_rto, max_rto]``, doubled after each expiry and capped at
``max_rto``. Loss detection is RFC 9002, section 6.1: a packet is lost once a
packet sent ``PACKET_THRESHOLD`` later is acknowledged, or once it is older than
``9/8`` of the RTT while a later one was acknowledged.

Everything takes ``now`` from the caller (aioquic's ``recovery.py`` style).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = [
    "GRANULARITY",
    "PACKET_THRESHOLD",
    "TIME_THRESHOLD",
    "LossRecovery",
    "RttEstimator",
    "SentPacket",
]

#: RFC 9002 kGranularity: timers are never set closer than 1 ms.
GRANULARITY: Final = 0.001
#: RFC 9002 kPacketThreshold: reordering tolerated before declaring a loss.
PACKET_THRESHOLD: Final = 3
#: RFC 9002 kTimeThreshold.
TIME_THRESHOLD: Final = 9 / 8
#: Backoff exponent cap, so 2**backoff stays a small float even on a dead path.
_MAX_BACKOFF: Final = 16


class RttEstimator:
    """Smoothed RTT and its variation (RFC 9002, section 5; RFC 6298).

    Attributes:
        smoothed_rtt: SRTT, seconds.
        rttvar: RTTVAR, seconds.
        min_rtt: the smallest sample seen (0.0 before any).
        latest_rtt: the last sample (0.0 before any).
        has_sample: whether a sample has been taken.
    """

    __slots__ = (
        "has_sample",
        "latest_rtt",
        "max_ack_delay",
        "max_rto",
        "min_rto",
        "min_rtt",
        "rttvar",
        "smoothed_rtt",
    )

    def __init__(
        self,
        *,
        initial_rtt: float = 0.333,
        min_rto: float = 0.2,
        max_rto: float = 10.0,
        max_ack_delay: float = 0.025,
    ) -> None:
        """Create an estimator with no sample.

        Args:
            initial_rtt: the RTT assumed before the first sample (RFC 9002: 333 ms).
            min_rto: the smallest timeout returned.
            max_rto: the largest timeout returned, backoff included.
            max_ack_delay: the longest the peer delays an ACK (RFC 9000: 25 ms).
        """
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.max_ack_delay = max_ack_delay
        self.smoothed_rtt = initial_rtt
        self.rttvar = initial_rtt / 2
        self.min_rtt = 0.0
        self.latest_rtt = 0.0
        self.has_sample = False

    def update(self, *, latest_rtt: float, ack_delay: float = 0.0) -> None:
        """Take an RTT sample (RFC 9002, section 5.3).

        Args:
            latest_rtt: seconds from sending a packet to receiving its ACK.
            ack_delay: the delay the peer reported in the ACK, capped at
                ``max_ack_delay``; it is subtracted only if that keeps the sample
                above ``min_rtt``.
        """
        latest_rtt = max(latest_rtt, 0.0)
        self.latest_rtt = latest_rtt
        if not self.has_sample:
            self.has_sample = True
            self.min_rtt = latest_rtt
            self.smoothed_rtt = latest_rtt
            self.rttvar = latest_rtt / 2
            return
        self.min_rtt = min(self.min_rtt, latest_rtt)
        ack_delay = min(max(ack_delay, 0.0), self.max_ack_delay)
        adjusted = latest_rtt
        if latest_rtt >= self.min_rtt + ack_delay:
            adjusted = latest_rtt - ack_delay
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.smoothed_rtt - adjusted)
        self.smoothed_rtt = 0.875 * self.smoothed_rtt + 0.125 * adjusted

    def rto(self, backoff: int = 0) -> float:
        """The retransmission timeout after ``backoff`` expiries, in seconds.

        ``clamp(SRTT + max(G, 4 * RTTVAR) + max_ack_delay, min_rto, max_rto)``
        times ``2 ** backoff``, never above ``max_rto``.
        """
        # Asked after every packet (the timers): comparisons, not min() and max(),
        # which are generic calls on boxed floats even when compiled.
        variation = 4 * self.rttvar
        variation = variation if variation >= GRANULARITY else GRANULARITY
        base = self.smoothed_rtt + variation + self.max_ack_delay
        min_rto, max_rto = self.min_rto, self.max_rto
        base = base if base >= min_rto else min_rto
        base = base if base <= max_rto else max_rto
        if backoff:
            base *= 1 << (backoff if backoff < _MAX_BACKOFF else _MAX_BACKOFF)
            base = base if base <= max_rto else max_rto
        return base

    def loss_delay(self) -> float:
        """How long after a later packet's ACK a packet is declared lost (RFC 9002, 6.1.2)."""
        smoothed, latest = self.smoothed_rtt, self.latest_rtt
        delay = TIME_THRESHOLD * (latest if latest > smoothed else smoothed)
        return delay if delay > GRANULARITY else GRANULARITY


class SentPacket:
    """What an ack-eliciting packet carried, so its content can be sent again.

    The packet itself is never resent: on loss its content goes back to the queues
    and leaves under a new packet number (aioquic's ``QuicSentPacket``).

    A plain class with slots rather than an attrs one: one is built for every
    packet sent and read at its acknowledgement, and compiled it is a native
    class (native attribute reads, a compiled ``__init__``), where an attrs
    class stays a Python one. It keeps the attrs class's keyword-only
    constructor, equality and repr.

    Attributes:
        packet_number: the packet number it was sealed with.
        sent_time: when it was built.
        size: datagram bytes.
        stream_ranges: half-open stream offset ranges it carried.
        ping: whether it carried a PING.
        acks_up_to: the largest received packet number its ACK frame covered (-1:
            no ACK). Once it is acknowledged, the peer knows everything up to
            there arrived.
    """

    __slots__ = ("acks_up_to", "packet_number", "ping", "sent_time", "size", "stream_ranges")

    def __init__(
        self,
        *,
        packet_number: int,
        sent_time: float,
        size: int,
        stream_ranges: list[tuple[int, int]] | None = None,
        ping: bool = False,
        acks_up_to: int = -1,
    ) -> None:
        self.packet_number = packet_number
        self.sent_time = sent_time
        self.size = size
        self.stream_ranges: list[tuple[int, int]] = (
            stream_ranges if stream_ranges is not None else []
        )
        self.ping = ping
        self.acks_up_to = acks_up_to

    def _fields(self) -> tuple[int, float, int, list[tuple[int, int]], bool, int]:
        return (
            self.packet_number,
            self.sent_time,
            self.size,
            self.stream_ranges,
            self.ping,
            self.acks_up_to,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SentPacket):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the attrs class was

    def __repr__(self) -> str:
        return (
            f"SentPacket(packet_number={self.packet_number!r}, sent_time={self.sent_time!r}, "
            f"size={self.size!r}, stream_ranges={self.stream_ranges!r}, ping={self.ping!r}, "
            f"acks_up_to={self.acks_up_to!r})"
        )


class LossRecovery:
    """The sent packets of one direction: acknowledgements, losses and the RTO.

    Attributes:
        rtt: the RTT estimator.
        backoff: consecutive RTO expiries without an acknowledgement.
        largest_acked: the largest packet number acknowledged, or -1.
    """

    __slots__ = ("_last_sent_time", "_loss_time", "_sent", "backoff", "largest_acked", "rtt")

    def __init__(self, rtt: RttEstimator) -> None:
        self.rtt = rtt
        self.backoff = 0
        self.largest_acked = -1
        # Insertion order is packet number order: loss detection walks from the front.
        self._sent: dict[int, SentPacket] = {}
        self._last_sent_time: float | None = None
        self._loss_time: float | None = None

    @property
    def in_flight(self) -> int:
        """Ack-eliciting packets sent and neither acknowledged nor declared lost."""
        return len(self._sent)

    def on_packet_sent(self, packet: SentPacket) -> None:
        """Track an ack-eliciting packet."""
        self._sent[packet.packet_number] = packet
        self._last_sent_time = packet.sent_time

    def on_ack_received(
        self, ranges: Sequence[tuple[int, int]], ack_delay: float, *, now: float
    ) -> tuple[list[SentPacket], list[SentPacket]]:
        """Process an ACK frame's ranges.

        Args:
            ranges: ascending half-open ranges of acknowledged packet numbers.
            ack_delay: the delay the peer reported, seconds.
            now: when the ACK arrived.

        Returns:
            ``(acknowledged, lost)``: the packets newly acknowledged and those the
            acknowledgement shows to be lost.
        """
        sent = self._sent
        largest = ranges[-1][1] - 1
        if largest > self.largest_acked:
            # News from the peer, even about packets already given up at a timeout:
            # it is alive and receiving, so the backoff ends (RFC 9002 resets the
            # PTO count on any acknowledgement of a new packet). Without this, the
            # backoff of a lossy moment would slow every later exchange.
            self.largest_acked = largest
            self.backoff = 0
        acked: list[SentPacket] = []
        # The newest packet acknowledged, found while popping (no key function).
        newest: SentPacket | None = None
        for start, stop in ranges:
            if stop - start <= len(sent):
                for pn in range(start, stop):
                    packet = sent.pop(pn, None)
                    if packet is not None:
                        acked.append(packet)
                        if newest is None or pn > newest.packet_number:
                            newest = packet
            else:
                for pn in [pn for pn in sent if start <= pn < stop]:
                    packet = sent.pop(pn)
                    acked.append(packet)
                    if newest is None or pn > newest.packet_number:
                        newest = packet
        if newest is None:
            return [], []
        if not sent:
            # An emptied dict keeps its table; an idle connection should not.
            self._sent = {}
        if newest.packet_number == largest:
            # Karn's rule holds by construction: a packet number is never resent.
            self.rtt.update(latest_rtt=now - newest.sent_time, ack_delay=ack_delay)
        self.backoff = 0
        return acked, self.detect_lost(now=now)

    def detect_lost(self, *, now: float) -> list[SentPacket]:
        """Declare lost the packets the ACKs so far show to be lost (RFC 9002, 6.1)."""
        lost: list[SentPacket] = []
        self._loss_time = None
        if self.largest_acked < 0:
            return lost
        loss_delay = self.rtt.loss_delay()
        for pn, packet in self._sent.items():
            if pn > self.largest_acked:
                break
            # Compare the deadline itself with now (not now - delay with the sent
            # time): the timer fires at exactly this sum, and float rounding must
            # not leave the packet a hair short of lost.
            lost_at = packet.sent_time + loss_delay
            if pn <= self.largest_acked - PACKET_THRESHOLD or lost_at <= now:
                lost.append(packet)
            elif self._loss_time is None:
                # The earliest of the rest: the loss timer fires when it becomes lost.
                self._loss_time = lost_at
        for packet in lost:
            del self._sent[packet.packet_number]
        return lost

    def loss_deadline(self) -> float | None:
        """When :meth:`detect_lost` should run again, if any packet awaits it."""
        return self._loss_time

    def rto_deadline(self) -> float | None:
        """When the retransmission timeout expires, if anything is in flight.

        Measured from the last ack-eliciting packet sent (RFC 9002's PTO), so a
        steady flow of new packets does not fire it early.
        """
        if not self._sent or self._last_sent_time is None:
            return None
        return self._last_sent_time + self.rtt.rto(self.backoff)

    def on_rto(self) -> list[SentPacket]:
        """The timeout expired: everything in flight is lost; back off.

        Returns:
            Every packet in flight, to requeue its content.
        """
        lost = list(self._sent.values())
        self._sent.clear()
        self._loss_time = None
        self.backoff += 1
        return lost
