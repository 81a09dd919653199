"""The server's rate limits per user and per address, in one place.

Each is a :class:`~udpchat_proto.ratelimit.KeyedLimiter` (a bucket per key, pruned
by the sweep) whose numbers are a field of :class:`ServerConfig`; the budgets of
wrong passwords, which are charged and refunded, are
:class:`~udpchat_proto.chat.login_budgets.LoginBudgets`. A connection's own
request budget is its :attr:`ChatConnection.requests`.
"""

from __future__ import annotations

from ..ratelimit import KeyedLimiter
from ..transport import address_key
from ..transport.events import Address
from .config import ServerConfig
from .login_budgets import LoginBudgets

__all__ = ["Limits"]


class Limits:
    """The keyed rate limiters of a server.

    Args:
        config: their numbers.
    """

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self.logins: KeyedLimiter[str] = KeyedLimiter(config.logins_per_user)
        """Successful logins per user."""
        self.registrations: KeyedLimiter[str] = KeyedLimiter(config.registrations_per_address)
        """Registrations per address key."""
        self.message_rate: KeyedLimiter[str] = KeyedLimiter(config.message_rate)
        """Messages stored per sender."""
        self.membership_changes: KeyedLimiter[str] = KeyedLimiter(
            config.membership_changes_per_user
        )
        """Room joins and leaves per user."""
        self.login_failures = LoginBudgets(config)
        """Wrong passwords, per user, per address and per both."""
        self.key_claims: KeyedLimiter[str] = KeyedLimiter(config.key_claims_per_user)
        """Keys claimed per claiming user."""
        self.device_key_claims: KeyedLimiter[bytes] = KeyedLimiter(config.key_claims_per_device)
        """One-time keys handed out per device (by its id)."""

    def address_key(self, address: Address) -> str:
        """What the per-address limits key on: the client's network (an IPv6 /64,
        an IPv4 address by default), as the transport's own limits do."""
        return address_key(address[0], self._config.transport)

    def prune(self, now: float) -> None:
        """Forget the buckets that have refilled (the sweep): memory stays bounded
        by the keys active lately."""
        for limiter in (self.registrations, self.logins, self.message_rate):
            limiter.prune(now=now)
        self.membership_changes.prune(now=now)
        self.login_failures.prune(now=now)
        self.key_claims.prune(now=now)
        self.device_key_claims.prune(now=now)
