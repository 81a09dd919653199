"""RangeSet: merging, subtracting, membership and gaps, against a plain set model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat_proto.transport.ranges import RangeSet


def test_add_merges_overlapping_and_adjacent() -> None:
    rs = RangeSet()
    rs.add(0, 3)
    rs.add(5, 7)
    assert list(rs) == [range(0, 3), range(5, 7)]
    rs.add(3)  # touches [0, 3): merges
    assert list(rs) == [range(0, 4), range(5, 7)]
    rs.add(4)  # fills the hole: one range
    assert list(rs) == [range(0, 7)]
    rs.add(10, 12)
    rs.add(1, 11)  # swallows everything
    assert list(rs) == [range(0, 12)]


def test_add_empty_and_out_of_order() -> None:
    rs = RangeSet()
    rs.add(5, 5)
    assert len(rs) == 0
    rs.add(20, 30)
    rs.add(0, 2)
    rs.add(10, 12)
    assert list(rs) == [range(0, 2), range(10, 12), range(20, 30)]
    assert rs.bounds() == range(0, 30)


def test_subtract_splits_and_trims() -> None:
    rs = RangeSet([range(0, 10), range(20, 30)])
    rs.subtract(3, 5)
    assert list(rs) == [range(0, 3), range(5, 10), range(20, 30)]
    rs.subtract(8, 25)
    assert list(rs) == [range(0, 3), range(5, 8), range(25, 30)]
    rs.subtract(0, 100)
    assert list(rs) == []


def test_contains_shift_missing() -> None:
    rs = RangeSet([range(2, 4), range(6, 8)])
    assert [v for v in range(9) if v in rs] == [2, 3, 6, 7]
    assert rs.missing(0, 10) == [range(0, 2), range(4, 6), range(8, 10)]
    assert rs.missing(2, 4) == []
    assert rs.missing(3, 7) == [range(4, 6)]
    assert rs.shift() == range(2, 4)
    assert list(rs) == [range(6, 8)]
    assert rs == RangeSet([range(6, 8)])
    assert rs != RangeSet()


def test_empty_bounds_raises() -> None:
    with pytest.raises(IndexError):
        RangeSet().bounds()


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(0, 12)), max_size=40)


@given(ops, st.integers(0, 70), st.integers(0, 20))
def test_matches_a_set_model(operations: list[tuple[bool, int, int]], lo: int, span: int) -> None:
    rs = RangeSet()
    model: set[int] = set()
    for adding, start, length in operations:
        if adding:
            rs.add(start, start + length)
            model |= set(range(start, start + length))
        else:
            rs.subtract(start, start + length)
            model -= set(range(start, start + length))
    assert {v for r in rs for v in r} == model
    # Invariant: sorted, non-empty, disjoint and not touching.
    for a, b in zip(list(rs), list(rs)[1:], strict=False):
        assert a.stop < b.start
    assert all(len(r) > 0 for r in rs)
    gaps = {v for r in rs.missing(lo, lo + span) for v in r}
    assert gaps == set(range(lo, lo + span)) - model
    assert all((v in rs) == (v in model) for v in range(80))
