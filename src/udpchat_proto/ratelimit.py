"""Token buckets for the server's rate limits.

A :class:`RateLimit` describes a budget: ``burst`` tokens, one of which comes back
every ``interval`` seconds. A :class:`TokenBucket` spends one budget; a
:class:`KeyedLimiter` keeps one bucket per key (a username, an address, a login
session) and forgets buckets that have refilled, so that its memory stays bounded
by the keys that were active recently.

Everything takes ``now`` (a monotonic clock, seconds) from the caller: nothing
here reads a clock. A clock that steps backwards refills nothing and spends
normally.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

import attrs

from .config_checks import positive_int, positive_number

__all__ = ["KEYED_LIMITER_MIN_PRUNE", "KeyedLimiter", "RateLimit", "TokenBucket"]

#: A :class:`KeyedLimiter` prunes itself once it holds this many buckets, and after
#: that whenever it has doubled since its last prune (amortised O(1) per spend).
KEYED_LIMITER_MIN_PRUNE = 1024


@attrs.frozen(kw_only=True)
class RateLimit:
    """A budget of events: at most ``burst`` at once, then one per ``interval`` seconds.

    ``RateLimit(burst=5, interval=60.0)`` allows five events in a row, then one a
    minute (the sustained rate is ``1 / interval`` per second).
    """

    burst: int = attrs.field(validator=positive_int)
    """How many events may happen back to back (the bucket's size)."""
    interval: float = attrs.field(validator=positive_number)
    """Seconds for one spent token to come back."""


class TokenBucket:
    """One bucket of a :class:`RateLimit`, full when created."""

    __slots__ = ("_limit", "_tokens", "_updated")

    def __init__(self, limit: RateLimit, *, now: float) -> None:
        self._limit = limit
        self._tokens = float(limit.burst)
        self._updated = now

    def _refill(self, now: float) -> None:
        if now > self._updated:
            gained = (now - self._updated) / self._limit.interval
            self._tokens = min(float(self._limit.burst), self._tokens + gained)
        # A clock stepping backwards must not make the bucket refill twice later.
        self._updated = max(self._updated, now)

    def available(self, *, now: float) -> bool:
        """Whether one event would be allowed at ``now`` (spends nothing)."""
        self._refill(now)
        return self._tokens >= 1.0

    def spend(self, *, now: float) -> bool:
        """Spend one token if there is one.

        Returns:
            True if the event is allowed (a token was spent), False if the budget
            is exhausted (nothing was spent).
        """
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def spend_overdrawn(self, count: int, *, now: float) -> bool:
        """Spend ``count`` tokens at once if there is at least one, going below zero
        if need be (the next events then wait until the bucket is back above one).

        For a request of many events that must pass whole or not at all, and may
        hold more than ``burst`` of them: it is refused only when the budget is
        already spent, and pays for all of them.

        Returns:
            True if the events are allowed (spent), False if the budget is
            exhausted (nothing was spent).
        """
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= count
            return True
        return False

    def refund(self, *, now: float) -> None:
        """Give back one token (never beyond ``burst``): an event charged in advance
        turned out not to count (a login charged as a failure that succeeded)."""
        self._refill(now)
        self._tokens = min(float(self._limit.burst), self._tokens + 1.0)

    def is_full(self, *, now: float) -> bool:
        """Whether the bucket has refilled completely (so it can be forgotten)."""
        self._refill(now)
        return self._tokens >= self._limit.burst


K = TypeVar("K", bound=Hashable)


class KeyedLimiter(Generic[K]):
    """One :class:`TokenBucket` per key, created full on first use.

    Buckets that have refilled are dropped by :meth:`prune`; a dropped bucket is
    indistinguishable from a new one. The owner may call it periodically, and
    :meth:`spend` calls it whenever the number of buckets has doubled since the
    last prune (and reached :data:`KEYED_LIMITER_MIN_PRUNE`), so that memory stays
    within about twice the keys active in the last ``burst * interval`` seconds
    however many distinct keys a remote peer makes up between the owner's prunes.
    """

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._buckets: dict[K, TokenBucket] = {}
        self._prune_at = KEYED_LIMITER_MIN_PRUNE

    def __len__(self) -> int:
        return len(self._buckets)

    def available(self, key: K, *, now: float) -> bool:
        """Whether ``key`` may have one more event at ``now`` (spends nothing)."""
        bucket = self._buckets.get(key)
        return bucket is None or bucket.available(now=now)

    def spend(self, key: K, *, now: float) -> bool:
        """Spend one of ``key``'s tokens; False (nothing spent) when exhausted."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self.prune(now=now)
            bucket = self._buckets[key] = TokenBucket(self.limit, now=now)
        return bucket.spend(now=now)

    def spend_overdrawn(self, key: K, count: int, *, now: float) -> bool:
        """Spend ``count`` of ``key``'s tokens at once, overdrawing (see
        :meth:`TokenBucket.spend_overdrawn`); False (nothing spent) when exhausted."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self.prune(now=now)
            bucket = self._buckets[key] = TokenBucket(self.limit, now=now)
        return bucket.spend_overdrawn(count, now=now)

    def refund(self, key: K, *, now: float) -> None:
        """Give back one of ``key``'s tokens (see :meth:`TokenBucket.refund`)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.refund(now=now)

    def forget(self, key: K) -> None:
        """Drop ``key``'s bucket (for example when its session ends)."""
        self._buckets.pop(key, None)

    def prune(self, *, now: float) -> int:
        """Forget every bucket that is full at ``now``; return how many."""
        full = [key for key, bucket in self._buckets.items() if bucket.is_full(now=now)]
        for key in full:
            del self._buckets[key]
        self._prune_at = max(KEYED_LIMITER_MIN_PRUNE, 2 * len(self._buckets))
        return len(full)
