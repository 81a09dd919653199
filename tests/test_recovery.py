"""RTT estimator, RTO with backoff and cap, and loss detection, with literal times."""

from __future__ import annotations

import pytest

from udpchat_proto.transport.recovery import LossRecovery, RttEstimator, SentPacket


def test_initial_rto_is_about_one_second() -> None:
    rtt = RttEstimator(initial_rtt=0.333, min_rto=0.2, max_rto=10.0, max_ack_delay=0.025)
    # 0.333 + 4 * 0.1665 + 0.025 (RFC 6298's 1 s, as RFC 9002's first PTO).
    assert rtt.rto() == pytest.approx(1.024)


def test_first_sample_and_smoothing() -> None:
    rtt = RttEstimator(min_rto=0.001, max_ack_delay=0.025)
    rtt.update(latest_rtt=0.100)
    assert (rtt.smoothed_rtt, rtt.rttvar, rtt.min_rtt) == (0.100, 0.050, 0.100)
    assert rtt.rto() == pytest.approx(0.100 + 0.200 + 0.025)
    rtt.update(latest_rtt=0.200)
    # rttvar = 3/4 * 0.05 + 1/4 * |0.1 - 0.2|; srtt = 7/8 * 0.1 + 1/8 * 0.2
    assert rtt.rttvar == pytest.approx(0.0625)
    assert rtt.smoothed_rtt == pytest.approx(0.1125)
    assert rtt.min_rtt == 0.100


def test_ack_delay_is_subtracted_only_above_min_rtt() -> None:
    rtt = RttEstimator(max_ack_delay=0.025)
    rtt.update(latest_rtt=0.100)
    rtt.update(latest_rtt=0.120, ack_delay=0.010)  # adjusted to 0.110
    assert rtt.smoothed_rtt == pytest.approx(0.875 * 0.100 + 0.125 * 0.110)
    rtt2 = RttEstimator(max_ack_delay=0.025)
    rtt2.update(latest_rtt=0.100)
    rtt2.update(latest_rtt=0.105, ack_delay=0.020)  # would go below min_rtt: not adjusted
    assert rtt2.smoothed_rtt == pytest.approx(0.875 * 0.100 + 0.125 * 0.105)
    rtt3 = RttEstimator(max_ack_delay=0.025)
    rtt3.update(latest_rtt=0.100)
    rtt3.update(latest_rtt=0.300, ack_delay=5.0)  # capped at max_ack_delay
    assert rtt3.smoothed_rtt == pytest.approx(0.875 * 0.100 + 0.125 * 0.275)


def test_rto_floor_backoff_and_cap() -> None:
    rtt = RttEstimator(min_rto=0.2, max_rto=10.0, max_ack_delay=0.025)
    rtt.update(latest_rtt=0.010)
    assert rtt.rto() == 0.2  # 0.010 + 0.020 + 0.025 is below the floor
    assert [rtt.rto(b) for b in range(8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    assert rtt.rto(1000) == 10.0


def packet(pn: int, t: float, ranges: list[tuple[int, int]] | None = None) -> SentPacket:
    return SentPacket(packet_number=pn, sent_time=t, size=100, stream_ranges=ranges or [])


def test_ack_samples_rtt_and_detects_packet_threshold_loss() -> None:
    rec = LossRecovery(RttEstimator())
    for pn in range(5):
        rec.on_packet_sent(packet(pn, 10.0 + pn * 0.001))
    assert rec.in_flight == 5
    acked, lost = rec.on_ack_received(((4, 5),), 0.0, now=10.104)
    assert [p.packet_number for p in acked] == [4]
    assert rec.rtt.latest_rtt == pytest.approx(0.100)
    # 0 and 1 are 3+ below the largest acknowledged: lost; 2 and 3 wait for the timer.
    assert [p.packet_number for p in lost] == [0, 1]
    deadline = rec.loss_deadline()
    assert deadline is not None
    assert deadline == pytest.approx(10.002 + 9 / 8 * 0.100)
    assert rec.detect_lost(now=deadline - 0.0001) == []
    assert [p.packet_number for p in rec.detect_lost(now=deadline)] == [2]


def test_rto_deadline_backoff_and_reset() -> None:
    rec = LossRecovery(RttEstimator(initial_rtt=0.333))
    assert rec.rto_deadline() is None
    rec.on_packet_sent(packet(0, 100.0))
    assert rec.rto_deadline() == pytest.approx(101.024)
    lost = rec.on_rto()
    assert [p.packet_number for p in lost] == [0]
    assert rec.in_flight == 0 and rec.backoff == 1
    rec.on_packet_sent(packet(1, 102.0))
    assert rec.rto_deadline() == pytest.approx(102.0 + 2.048)
    rec.on_ack_received(((1, 2),), 0.0, now=102.5)
    assert rec.backoff == 0
    assert rec.rto_deadline() is None


def test_ack_of_unknown_or_old_packets_changes_nothing() -> None:
    rec = LossRecovery(RttEstimator())
    rec.on_packet_sent(packet(7, 1.0))
    assert rec.on_ack_received(((0, 7),), 0.0, now=2.0) == ([], [])
    assert rec.in_flight == 1
    acked, _ = rec.on_ack_received(((0, 1_000_000),), 0.0, now=2.0)  # huge range, cheap
    assert [p.packet_number for p in acked] == [7]


def test_a_late_ack_of_packets_given_up_at_a_timeout_ends_the_backoff() -> None:
    rec = LossRecovery(RttEstimator(initial_rtt=0.333))
    rec.on_packet_sent(packet(0, 100.0))
    rec.on_rto()
    rec.on_packet_sent(packet(1, 101.1))
    rec.on_rto()
    assert rec.backoff == 2 and rec.in_flight == 0
    rec.on_packet_sent(packet(2, 104.0))
    # The ACK of 0 and 1 (given up, not tracked any more) was only late: the peer
    # is alive and receiving, so the next timeout is the base one again.
    assert rec.on_ack_received(((0, 2),), 0.0, now=104.1) == ([], [])
    assert rec.backoff == 0 and rec.largest_acked == 1
    assert rec.rto_deadline() == pytest.approx(104.0 + 1.024)
    # An old ACK again is no news: it changes nothing.
    rec.on_packet_sent(packet(3, 104.2))
    rec.on_rto()
    rec.on_ack_received(((0, 2),), 0.0, now=106.0)
    assert rec.backoff == 1


def test_a_sent_packet_keeps_the_record_class_behaviour() -> None:
    """SentPacket is a plain class with slots (native when compiled); it keeps the
    keyword-only constructor, defaults, equality and repr of the attrs class."""
    one = SentPacket(packet_number=3, sent_time=1.5, size=100)
    two = SentPacket(packet_number=3, sent_time=1.5, size=100)
    assert one == two and one != SentPacket(packet_number=3, sent_time=1.5, size=101)
    assert (one.stream_ranges, one.ping, one.acks_up_to) == ([], False, -1)
    assert one.stream_ranges is not two.stream_ranges  # a fresh list each
    assert repr(one) == (
        "SentPacket(packet_number=3, sent_time=1.5, size=100, stream_ranges=[], "
        "ping=False, acks_up_to=-1)"
    )
    with pytest.raises(TypeError):
        hash(one)
