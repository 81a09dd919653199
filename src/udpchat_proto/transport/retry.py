"""The stateless RETRY token: proof that a client receives at its source address.

Under load a server answers an initiation without a valid token with a RETRY
carrying one, and keeps nothing. The token is the issue time (8 bytes) and a
truncated HMAC-SHA256 over a label, the connection id, the issue time and the
client's exact IP and port, under a key drawn when the server starts; a client
that comes back with it from the same address has proved it sees what is sent
there, which a spoofed source never does. See ``docs/PROTOCOL.md`` (RETRY).
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from .events import Address, ConnectionId
from .packets import RETRY_TOKEN_SIZE

__all__ = ["MAX_RETRIES", "RetryTokens"]

#: A client follows at most this many RETRYs per connect: enough to outlive an
#: expired token or a server restart, few enough that a forger on the path cannot
#: keep it busy (an off-path one does not know the connection id at all).
MAX_RETRIES: Final = 3
#: Domain separation for the RETRY token's MAC.
_RETRY_LABEL: Final = b"udpchat retry token v1"
_ISSUED: Final = struct.Struct(">Q")


class RetryTokens:
    """Mints and checks a server's RETRY tokens.

    Nothing is stored per token: it carries its issue time under the MAC, and the
    key lives as long as this object (a restarted server refuses the old tokens,
    which costs their clients one more RETRY).
    """

    __slots__ = ("_key", "_lifetime")

    def __init__(self, *, key: bytes, lifetime: float) -> None:
        """Args:
        key: the MAC key, 32 random bytes.
        lifetime: seconds a token stays valid (``retry_token_lifetime``).
        """
        self._key = key
        self._lifetime = lifetime

    def _mac(self, cid: ConnectionId, addr: Address, issued: bytes) -> bytes:
        mac = hmac.HMAC(self._key, hashes.SHA256())
        host = addr[0].encode("utf-8", errors="replace")
        for part in (_RETRY_LABEL, cid, issued, host, addr[1].to_bytes(2, "big")):
            mac.update(len(part).to_bytes(2, "big") + part)
        return mac.finalize()[: RETRY_TOKEN_SIZE - _ISSUED.size]

    def mint(self, cid: ConnectionId, addr: Address, now: float) -> bytes:
        """A token for connection id ``cid`` from ``addr``, issued at ``now``."""
        issued = _ISSUED.pack(max(0, int(now)))
        return issued + self._mac(cid, addr, issued)

    def check(self, token: bytes, cid: ConnectionId, addr: Address, now: float) -> str | None:
        """None if ``token`` (empty or 24 bytes, as parsed) is ours for this connection id
        and exact source address, within the lifetime; else why not (the reason
        counted in ``dropped``: ``retry``, ``retry_token_invalid``, ``retry_token_expired``)."""
        if not token:
            return "retry"
        issued = token[: _ISSUED.size]
        if not constant_time.bytes_eq(token[_ISSUED.size :], self._mac(cid, addr, issued)):
            return "retry_token_invalid"
        age = int(now) - _ISSUED.unpack(issued)[0]
        if age < 0 or age > self._lifetime:
            return "retry_token_expired"
        return None
