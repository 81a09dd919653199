"""A set of integers stored as sorted, disjoint, non-adjacent ranges.

After aioquic's ``rangeset.py``: the transport keeps the packet numbers it has
received (for ACK frames), and the stream offsets acknowledged, pending
retransmission and received out of order, as a :class:`RangeSet`. Lookups and
insertions are binary searches, so a long-lived set with few holes stays cheap.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

__all__ = ["RangeSet"]


_NO_RANGES: list[range] = []
"""The ranges of every empty set (see RangeSet.__init__)."""


def _stop(r: range) -> int:
    return r.stop


def _start(r: range) -> int:
    return r.start


class RangeSet:
    """Sorted, disjoint, non-adjacent half-open ranges of integers.

    Adding ``[3, 5)`` to ``{[0, 3)}`` gives ``{[0, 5)}``: touching ranges merge.
    Iterating yields the ranges; ``value in rangeset`` tests an integer.
    """

    __slots__ = ("_ranges",)

    def __init__(self, ranges: Iterable[range] = ()) -> None:
        # Empty sets share one list (never mutated: add() replaces it first): a
        # connection holds several sets that are empty most of the time.
        self._ranges: list[range] = _NO_RANGES
        for r in ranges:
            self.add(r.start, r.stop)

    def add(self, start: int, stop: int | None = None) -> None:
        """Add ``[start, stop)``, or the single value ``start`` if ``stop`` is None."""
        if stop is None:
            stop = start + 1
        if stop <= start:
            return
        ranges = self._ranges
        if ranges is _NO_RANGES:
            ranges = self._ranges = []
        # Fast paths: appending past the end, or extending the last range (packet
        # numbers and offsets mostly grow, by one packet at a time): one range
        # object, no bisection and no list for the slice assignment.
        if not ranges:
            ranges.append(range(start, stop))
            return
        last_range = ranges[-1]
        last_stop = last_range.stop
        if last_stop < start:
            ranges.append(range(start, stop))
            return
        if last_stop == start or (last_range.start <= start and last_stop < stop):
            ranges[-1] = range(last_range.start, stop)
            return
        # First range that overlaps or touches [start, stop) from the left ...
        first = bisect_left(ranges, start, key=_stop)
        # ... and the first one wholly to its right, not touching.
        last = bisect_right(ranges, stop, lo=first, key=_start)
        if first < last:
            start = min(start, ranges[first].start)
            stop = max(stop, ranges[last - 1].stop)
        ranges[first:last] = [range(start, stop)]

    def subtract(self, start: int, stop: int) -> None:
        """Remove ``[start, stop)``."""
        if stop <= start:
            return
        ranges = self._ranges
        first = bisect_right(ranges, start, key=_stop)
        last = bisect_left(ranges, stop, lo=first, key=_start)
        if first >= last:
            return
        kept: list[range] = []
        if ranges[first].start < start:
            kept.append(range(ranges[first].start, start))
        if ranges[last - 1].stop > stop:
            kept.append(range(stop, ranges[last - 1].stop))
        ranges[first:last] = kept

    def missing(self, start: int, stop: int) -> list[range]:
        """The parts of ``[start, stop)`` that are *not* in the set, ascending."""
        gaps: list[range] = []
        ranges = self._ranges
        i = bisect_right(ranges, start, key=_stop)
        cursor = start
        while cursor < stop and i < len(ranges) and ranges[i].start < stop:
            r = ranges[i]
            if r.start > cursor:
                gaps.append(range(cursor, r.start))
            cursor = max(cursor, r.stop)
            i += 1
        if cursor < stop:
            gaps.append(range(cursor, stop))
        return gaps

    def bounds(self) -> range:
        """The range from the smallest to the largest value.

        Raises:
            IndexError: the set is empty.
        """
        return range(self._ranges[0].start, self._ranges[-1].stop)

    def shift(self) -> range:
        """Remove and return the lowest range.

        Raises:
            IndexError: the set is empty.
        """
        first = self._ranges.pop(0)
        if not self._ranges:
            self._ranges = _NO_RANGES  # the emptied list's memory goes back
        return first

    def __contains__(self, value: int) -> bool:
        i = bisect_right(self._ranges, value, key=_start) - 1
        return i >= 0 and value < self._ranges[i].stop

    def __getitem__(self, index: int) -> range:
        return self._ranges[index]

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __len__(self) -> int:
        return len(self._ranges)

    def __iter__(self) -> Iterator[range]:
        return iter(self._ranges)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeSet):
            return NotImplemented
        return self._ranges == other._ranges

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"RangeSet({self._ranges!r})"
