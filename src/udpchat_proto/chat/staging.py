"""Key shares staged for an encrypted message that is still to come (``share_keys``).

A rotation in a full room needs a key share for every other device of the room
(511 for 256 members of two devices each, about 680 KB), far more than one request
may carry (the server's 64 KiB receive limit). So a client sends them ahead in
``share_keys`` requests of at most 16, and then the ``send_message`` that names
how many it staged. The server holds them here, in memory, for that connection
only, and hands them to the send, which stores them with the message, all or
nothing, exactly as if the request had carried them: nothing staged is delivered
on its own, so no device ever receives a share without its message nor a message
without its share, and a refused send leaves nothing behind.

What an attacker could make the server hold is bounded three ways: one message
per connection (a new message id drops the previous one's shares), one share
per recipient device (a second replaces the first) up to the most devices a
conversation can have, and a byte budget for the whole server; what a send does
not take within :data:`STAGED_LIFETIME` seconds is dropped, as is what a closed
connection staged.
"""

from __future__ import annotations

from typing import Final

import attrs

from ..e2ee.records import KeyShare
from ..errors import ErrorCode
from ..transport import ConnectionId
from .requests import RefusedError

__all__ = ["STAGED_BYTES_BUDGET", "STAGED_LIFETIME", "ShareStaging"]

#: Seconds staged shares wait for their message: a client sends them and the
#: message back to back, so a minute is plenty even on a lossy link.
STAGED_LIFETIME: Final = 60.0
#: Bytes of staged shares (their Olm messages) the whole server holds at most:
#: fifty full-room rotations of 680 KB being sent at the same moment.
STAGED_BYTES_BUDGET: Final = 32 * 1024 * 1024
#: What a share costs besides its ciphertext (its record and the dict's entry).
_SHARE_OVERHEAD: Final = 200


def share_cost(share: KeyShare) -> int:
    """The bytes a staged share is counted for."""
    return len(share.ciphertext) + _SHARE_OVERHEAD


@attrs.define
class _Staged:
    """One connection's shares for one message to come."""

    session: bytes
    """The login session (token hash) that staged them: another one's send (the
    connection logged in again) finds nothing."""
    message_id: bytes
    shares: dict[bytes, KeyShare]
    """By recipient device: one share each (a second replaces the first)."""
    size: int
    expires: float
    refusal: tuple[ErrorCode, str] | None = None
    """Why a ``share_keys`` for this message was refused (the server's budget was
    spent): its send is refused the same way, not as if the shares were lost."""


class ShareStaging:
    """The shares staged by each connection, bounded and expiring.

    Args:
        max_shares: the most shares one message may stage (the most devices a
            conversation can have, the sender's aside).
        budget: bytes of shares held for all connections at most.
        lifetime: seconds a staged message waits for its send.
    """

    def __init__(
        self,
        *,
        max_shares: int,
        budget: int = STAGED_BYTES_BUDGET,
        lifetime: float = STAGED_LIFETIME,
    ) -> None:
        self._max_shares = max_shares
        self._budget = budget
        self._lifetime = lifetime
        self._staged: dict[ConnectionId, _Staged] = {}
        """Oldest first: expiry stops at the first one still alive."""
        self._held = 0

    @property
    def held_bytes(self) -> int:
        """Bytes held for all connections now."""
        return self._held

    def __len__(self) -> int:
        return len(self._staged)

    def stage(
        self,
        connection: ConnectionId,
        session: bytes,
        message_id: bytes,
        shares: tuple[KeyShare, ...],
        now: float,
    ) -> bool:
        """Hold ``shares`` for the message ``message_id`` of this connection.

        Returns:
            Whether this continues what the connection staged for the message, with
            shares for new devices only (a send's next batch, not its first, nor
            one that replaces shares already held): the server counts a send's
            staging as one request (see ``MessageHandlers.share_keys``).

        Raises:
            RefusedError: ``too_large`` past the shares one message may stage,
                ``rate_limited`` when the server's budget is spent (the message's
                send is then refused the same way).
        """
        self.expire(now)
        entry = self._staged.get(connection)
        continues = entry is not None and (entry.message_id, entry.session) == (
            message_id,
            session,
        )
        if entry is None or not continues:
            self.drop(connection)
            entry = _Staged(
                session=session,
                message_id=message_id,
                shares={},
                size=0,
                expires=now + self._lifetime,
            )
            self._staged[connection] = entry
        if entry.refusal is not None:
            raise RefusedError(*entry.refusal)
        added = {share.recipient_device: share for share in shares}
        replaced = sum(share_cost(entry.shares[d]) for d in added if d in entry.shares)
        growth = sum(share_cost(share) for share in added.values()) - replaced
        if len(entry.shares.keys() | added.keys()) > self._max_shares:
            entry.refusal = (
                ErrorCode.TOO_LARGE,
                f"a message is shared with at most {self._max_shares} devices",
            )
            raise RefusedError(*entry.refusal)
        if self._held + growth > self._budget:
            entry.refusal = (
                ErrorCode.RATE_LIMITED,
                "the server holds all the key shares it can for messages being sent; "
                "try again shortly",
            )
            raise RefusedError(*entry.refusal)
        continues = continues and not (added.keys() & entry.shares.keys())
        entry.shares.update(added)
        entry.size += growth
        self._held += growth
        return continues

    def take(
        self, connection: ConnectionId, session: bytes, message_id: bytes, now: float
    ) -> list[KeyShare]:
        """The shares this connection's session staged for ``message_id`` (empty if
        none, or expired), no longer held: a send takes them whatever its answer.

        Raises:
            RefusedError: a ``share_keys`` for this message was refused: so is its send.
        """
        entry = self._staged.get(connection)
        if entry is None:
            return []
        if entry.message_id != message_id or entry.session != session:
            return []  # another message's: it stays until its own send or expiry
        self.drop(connection)
        if entry.refusal is not None:
            raise RefusedError(*entry.refusal)
        if entry.expires <= now:
            return []
        return list(entry.shares.values())

    def drop(self, connection: ConnectionId) -> None:
        """Forget what ``connection`` staged (it closed, or stages another message)."""
        entry = self._staged.pop(connection, None)
        if entry is not None:
            self._held -= entry.size

    def expire(self, now: float) -> None:
        """Drop what waited past its lifetime."""
        while self._staged:
            connection, entry = next(iter(self._staged.items()))
            if entry.expires > now:
                return
            self.drop(connection)
