"""Commits paced by load: when a batch that wrote waits a little for more work.

At the loads real servers run at, requests arrive one at a time: each wakes the
loop, is stored, committed (an fsync) and answered on its own, and pays the whole
turn around it (the wake-up, the batch's fixed steps, the commit) alone; at 1,000
messages a second that cost ten times the CPU a message costs at saturation
(docs/PERFORMANCE.md, "Low load"). PostgreSQL meets the same problem with
``commit_delay`` and ``commit_siblings``: when other transactions are active, a
commit waits a few hundred microseconds so that one flush serves several.

:class:`CommitPacing` is that rule for the server's batches. When a batch holds
writes, the loop asks how long to wait before committing it (``ChatServer.commit_wait``):
zero unless commits have been frequent lately *and* the batch is small; then a
short, bounded wait, during which the loop reads what arrives into the same batch.
A wait that overslept (the machine had no core for the loop when it ended) stops
the waits for a second: on an overloaded machine, a sleep costs far more than asked.
Nothing changes about durability: the batch is committed before anything of it is
sent, as always; the wait only lets more requests share the commit (and the turn).

The core keeps the time of the last commits; the loop gives it the clock (``now``),
so that the rule is tested with a fake one.
"""

from __future__ import annotations

import math
from typing import Final

import attrs

from ..config_checks import positive_int, positive_number

__all__ = [
    "BACKOFF",
    "BUSY_GAP",
    "MOST_WAIT",
    "OVERSLEEP",
    "OVERSLEEP_SLACK",
    "QUIET_GAPS",
    "SMALL_BATCH",
    "SMOOTHING",
    "CommitPacer",
    "CommitPacing",
]

MOST_WAIT: Final = 0.001
"""Seconds a small batch waits at most for more work before its commit (1 ms).

The wait adds at most this much to the first reply of the batch, against a p99
target of 5 ms; at 1,000 requests a second (one a millisecond) it lets about two
share each commit and turn, which halves the commits and the wake-ups."""

BUSY_GAP: Final = 0.004
"""Seconds between commits, smoothed, under which the server counts as busy (4 ms:
250 commits a second). Further apart, a wait of :data:`MOST_WAIT` would gather a
request in fewer than one case in four: it would cost latency for nearly
nothing, so a quiet server commits at once, as it always did. (PostgreSQL's
``commit_siblings``: wait only when others are likely to join.)"""

SMALL_BATCH: Final = 8
"""A batch of at least this many datagrams commits at once: its commit is shared
already (a message costs two or three datagrams: the request, the transport's
acknowledgements), and a server that is busy enough to read such batches gains
nothing from waiting. So a saturated server, whose batches hold tens of
datagrams, never waits."""

SMOOTHING: Final = 0.25
"""Weight of the newest gap between two commits in the smoothed gap: about the
last four commits count, so that one long pause or one burst does not flip the
rule, and a server that turns busy waits from its sixth commit or so (a gap
counts as at most :data:`QUIET_GAPS` busy gaps)."""

QUIET_GAPS: Final = 4
"""A gap between commits counts in the smoothed gap as at most this many busy
gaps: past that, its length says only "quiet", and a server that was quiet for a
minute is busy again after a few frequent commits, not after a hundred."""


OVERSLEEP: Final = 2.0
"""A wait that took more than this many times what was asked (plus
:data:`OVERSLEEP_SLACK`) says that the machine keeps the loop from its core: a
loop that sleeps gives the core away, and on a machine with more runnable work
than cores it gets it back milliseconds later, not at the end of its wait.
Measured on the project's shared 2-core machine at 500 msg/s: the waits doubled
p50. Then pacing stops for :data:`BACKOFF`."""

OVERSLEEP_SLACK: Final = 0.0005
"""Seconds of lateness a wake-up may have on any machine (timer slack, a wake-up
of the scheduler) before the wait counts as overslept."""

BACKOFF: Final = 1.0
"""Seconds without waits after a wait that overslept (:data:`OVERSLEEP`): long
enough that an overloaded machine costs a wait a second at most, short enough
that pacing comes back soon after the load goes."""


@attrs.frozen(kw_only=True)
class CommitPacing:
    """The rule: how long a batch with writes waits for more work before its commit.

    The defaults are the module's constants (see them for why these values).
    ``most_wait=0`` turns pacing off: every batch commits at once.
    """

    most_wait: float = attrs.field(default=MOST_WAIT, validator=attrs.validators.ge(0.0))
    """Longest wait, seconds (:data:`MOST_WAIT`)."""
    busy_gap: float = attrs.field(default=BUSY_GAP, validator=positive_number)
    """Smoothed seconds between commits under which the server is busy (:data:`BUSY_GAP`)."""
    small_batch: int = attrs.field(default=SMALL_BATCH, validator=positive_int)
    """Datagrams from which a batch commits at once (:data:`SMALL_BATCH`)."""
    smoothing: float = attrs.field(default=SMOOTHING, validator=positive_number)
    """Weight of the newest gap in the smoothed gap, in (0, 1] (:data:`SMOOTHING`)."""
    backoff: float = attrs.field(default=BACKOFF, validator=attrs.validators.ge(0.0))
    """Seconds without waits after one that overslept (:data:`BACKOFF`)."""

    def __attrs_post_init__(self) -> None:
        if self.smoothing > 1.0:
            raise ValueError(f"smoothing must be at most 1, not {self.smoothing}")


class CommitPacer:
    """The state :class:`CommitPacing` needs: when the last commit was, and the
    smoothed gap between commits. One per server; the loop's clock, seconds."""

    def __init__(self, pacing: CommitPacing) -> None:
        self.pacing = pacing
        self._last: float | None = None
        self._gap: float | None = None
        """Smoothed seconds between commits; None before the second commit."""
        self._off_until = -math.inf
        """No waits before this time (after a wait that overslept)."""

    @property
    def gap(self) -> float | None:
        """The smoothed seconds between commits (None until two were made)."""
        return self._gap

    def wait(self, now: float, datagrams: int) -> float:
        """Seconds to wait for more work before committing a batch that holds
        writes and has read ``datagrams`` so far: 0 (commit now) unless the batch
        is small and commits have been frequent, both lately and just now."""
        pacing = self.pacing
        if pacing.most_wait <= 0.0 or datagrams >= pacing.small_batch:
            return 0.0
        if self._last is None or self._gap is None or now < self._off_until:
            return 0.0
        # The gap so far counts too: after a pause the smoothed gap is old news,
        # and the first request after it must not wait for company that is gone.
        if max(self._gap, now - self._last) >= pacing.busy_gap:
            return 0.0
        return pacing.most_wait

    def waited(self, asked: float, took: float, now: float) -> bool:
        """Note a wait of ``asked`` seconds that took ``took`` (on the loop's clock),
        ending at ``now``; if it overslept (:data:`OVERSLEEP`), no more waits for
        ``backoff`` seconds. Returns whether it overslept."""
        if took <= OVERSLEEP * asked + OVERSLEEP_SLACK:
            return False
        self._off_until = now + self.pacing.backoff
        return True

    def committed(self, now: float) -> None:
        """Note a commit made at ``now``."""
        if self._last is not None:
            gap = min(max(0.0, now - self._last), QUIET_GAPS * self.pacing.busy_gap)
            previous = self._gap
            self._gap = (
                gap if previous is None else previous + self.pacing.smoothing * (gap - previous)
            )
        self._last = now
