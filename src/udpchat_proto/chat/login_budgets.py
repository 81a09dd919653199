"""The budgets of wrong passwords: how many guesses a login (or a password check)
may cost, per address, per account, and per account and address.

A password check is charged as a failure when it starts, and given back if the
password was right, so that guesses in flight count at once however many run in
parallel. Three budgets are charged (``ServerConfig`` gives each its numbers):

* per (username, address prefix): what slows a guesser, from their address;
* per address prefix, any username: what slows one address guessing many accounts;
* per username, from every address: a high ceiling that bounds a guesser spread
  over many addresses.

The ceiling is shared, so guessers elsewhere can keep it spent; were it the last
word, they would lock the owner out of their own account. So while it is spent,
each (username, address) goes on with an allowance of its own
(``login_failures_beyond_ceiling``), charged and given back in the same way: the
owner, from an address that has not failed, still gets in, and each address an
attacker brings adds only that allowance to what the ceiling lets through.
"""

from __future__ import annotations

import enum

from ..ratelimit import KeyedLimiter
from .config import ServerConfig

__all__ = ["FailureCharge", "LoginBudgets"]


class FailureCharge(enum.Enum):
    """Where a password check's failure was charged, for its refund."""

    CEILING = "ceiling"
    """The username's ceiling (with the per-address budgets)."""
    OWN_ALLOWANCE = "own_allowance"
    """The ceiling was spent: the (username, address) allowance beyond it."""


class LoginBudgets:
    """The failure budgets of password checks, keyed by username and address key."""

    def __init__(self, config: ServerConfig) -> None:
        self._user_address: KeyedLimiter[tuple[str, str]] = KeyedLimiter(
            config.login_failures_per_user_address
        )
        self._address: KeyedLimiter[str] = KeyedLimiter(config.login_failures_per_address)
        self._user: KeyedLimiter[str] = KeyedLimiter(config.login_failures_per_user)
        self._beyond_ceiling: KeyedLimiter[tuple[str, str]] = KeyedLimiter(
            config.login_failures_beyond_ceiling
        )

    def charge(self, user: str, host: str, *, now: float) -> FailureCharge | None:
        """Charge one failure to ``user`` from ``host`` (an address key) now.

        Returns:
            Where it was charged (pass it to :meth:`refund`), or None when a budget
            is spent: then nothing was charged, and the check must not run.
        """
        pair = (user, host)
        if self._user_address.spend(pair, now=now):
            if self._address.spend(host, now=now):
                if self._user.spend(user, now=now):
                    return FailureCharge.CEILING
                if self._beyond_ceiling.spend(pair, now=now):
                    return FailureCharge.OWN_ALLOWANCE
                self._address.refund(host, now=now)
            self._user_address.refund(pair, now=now)
        return None

    def refund(self, user: str, host: str, charge: FailureCharge, *, now: float) -> None:
        """Give back what :meth:`charge` took: the check was no failure."""
        pair = (user, host)
        self._user_address.refund(pair, now=now)
        self._address.refund(host, now=now)
        if charge is FailureCharge.CEILING:
            self._user.refund(user, now=now)
        else:
            self._beyond_ceiling.refund(pair, now=now)

    def prune(self, *, now: float) -> None:
        """Forget the buckets that have refilled (the server's sweep)."""
        for limiter in (self._user_address, self._beyond_ceiling):
            limiter.prune(now=now)
        for by_name in (self._address, self._user):
            by_name.prune(now=now)
