"""The replay window at its edges: 0, the window size, far ahead, far behind."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat_proto.transport.replay import DEFAULT_REPLAY_WINDOW, ReplayWindow


def test_default_is_at_least_2048() -> None:
    assert ReplayWindow().size == DEFAULT_REPLAY_WINDOW >= 2048


def test_zero_then_duplicate() -> None:
    w = ReplayWindow()
    assert w.highest == -1
    assert w.check(0)
    assert w.update(0)
    assert not w.check(0)
    assert not w.update(0)
    assert w.highest == 0


def test_out_of_order_within_window() -> None:
    w = ReplayWindow()
    for pn in (5, 3, 4, 0, 1, 2):
        assert w.update(pn), pn
    for pn in range(6):
        assert not w.check(pn)
    assert w.check(6)


def test_window_edge() -> None:
    w = ReplayWindow(2048)
    assert w.update(5000)
    # 5000 - 2047 is the oldest number still inside the window; 5000 - 2048 is not.
    assert w.check(5000 - 2047)
    assert not w.check(5000 - 2048)
    assert w.update(5000 - 2047)
    assert not w.update(5000 - 2047)
    assert not w.update(5000 - 2048)


def test_far_ahead_clears_everything() -> None:
    w = ReplayWindow(2048)
    for pn in range(100):
        w.update(pn)
    assert w.update(10**9)
    # Everything below the new window is refused, everything inside is fresh.
    assert not w.check(99)
    assert w.check(10**9 - 1)
    assert w.check(10**9 - 2047)
    assert not w.check(10**9 - 2048)


def test_far_behind_and_invalid() -> None:
    w = ReplayWindow()
    w.update(1_000_000)
    assert not w.check(0)
    assert not w.check(-1)
    assert not w.check(2**64 - 1)  # not a valid Noise nonce
    assert w.check(2**64 - 2)


def test_sliding_by_exactly_one_block_keeps_history() -> None:
    w = ReplayWindow(128)
    for pn in range(0, 200):
        assert w.update(pn)
    for pn in range(200 - 128, 200):
        assert not w.check(pn)


@pytest.mark.parametrize("size", [0, 100, -64])
def test_bad_size(size: int) -> None:
    with pytest.raises(ValueError):
        ReplayWindow(size)


def test_a_jump_to_the_last_number_costs_nothing_and_keeps_the_rules() -> None:
    # The peer chooses its packet numbers: a jump must not shift by it.
    w = ReplayWindow(256)
    assert w.update(5)
    assert w.update(2**64 - 2)
    assert not w.check(5) and not w.check(2**64 - 2 - 256)
    assert w.update(2**64 - 3) and not w.check(2**64 - 3)
    assert w.check(2**64 - 2 - 255)


def test_in_order_numbers_leave_no_holes() -> None:
    w = ReplayWindow()
    for pn in range(10_000):
        assert w.update(pn)
    assert w._holes == 0  # nothing to remember: an idle connection costs nothing


@given(st.lists(st.one_of(st.integers(0, 5000), st.integers(2**64 - 600, 2**64 - 1)), max_size=300))
def test_matches_model(numbers: list[int]) -> None:
    w = ReplayWindow(256)
    seen: set[int] = set()
    highest = -1
    for pn in numbers:
        expected = pn <= 2**64 - 2 and pn not in seen and (pn > highest or highest - pn < 256)
        assert w.update(pn) == expected
        if expected:
            seen.add(pn)
            highest = max(highest, pn)
