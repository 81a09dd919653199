"""Sliding anti-replay window over packet numbers (RFC 6479, as WireGuard uses).

The window remembers which of the last ``size`` packet numbers below the highest
one seen have been accepted. A packet number is acceptable if it is above the
highest seen, or within the window and not yet seen. The bitmap is a ring of
64-bit blocks, so sliding forward clears whole blocks instead of shifting bits
(RFC 6479, section 2). WireGuard checks before decrypting (cheap rejection) and
records only after the packet authenticated, so a forged packet cannot move the
window: :meth:`ReplayWindow.check` and :meth:`ReplayWindow.update` are separate
for that reason.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_REPLAY_WINDOW", "ReplayWindow"]

_BLOCK_BITS: Final = 64
_BLOCK_MASK: Final = _BLOCK_BITS - 1
#: 2048 packet numbers: at 1200-byte packets, 2.4 MB may be reordered or in flight
#: before a late packet is refused (WireGuard used 2048 until 2019, then 8192 for
#: multi-gigabit links; our send window keeps far fewer packets in flight).
DEFAULT_REPLAY_WINDOW: Final = 2048
#: Packet numbers are 64-bit and 2**64 - 1 is no valid Noise nonce.
_MAX_PACKET_NUMBER: Final = 2**64 - 2


class ReplayWindow:
    """Duplicate and replay detection for one receiving direction."""

    __slots__ = ("_bitmap", "_blocks", "_highest", "size")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW) -> None:
        """Create an empty window.

        Args:
            size: how many packet numbers, counting the highest seen, are
                remembered; a positive multiple of 64.

        Raises:
            ValueError: ``size`` is not a positive multiple of 64.
        """
        if size <= 0 or size % _BLOCK_BITS:
            raise ValueError(f"window size must be a positive multiple of 64, got {size}")
        self.size = size
        # One spare block: the block holding the highest number is partly in the future.
        self._blocks = size // _BLOCK_BITS + 1
        self._bitmap = [0] * self._blocks
        self._highest = -1

    @property
    def highest(self) -> int:
        """The highest packet number recorded, or -1 before the first."""
        return self._highest

    def check(self, packet_number: int) -> bool:
        """Whether ``packet_number`` would be accepted (changes nothing).

        Returns:
            False for a number seen before, one at least ``size`` below the highest,
            or one outside the valid nonce range; True otherwise.
        """
        if not 0 <= packet_number <= _MAX_PACKET_NUMBER:
            return False
        if packet_number > self._highest:
            return True
        if self._highest - packet_number >= self.size:
            return False
        block = (packet_number >> 6) % self._blocks
        return not (self._bitmap[block] >> (packet_number & _BLOCK_MASK)) & 1

    def update(self, packet_number: int) -> bool:
        """Record ``packet_number`` as received, if it is acceptable.

        Call it only once the packet has authenticated.

        Returns:
            True if recorded; False (nothing changed) if :meth:`check` refuses it.
        """
        if not self.check(packet_number):
            return False
        if packet_number > self._highest:
            current = self._highest >> 6
            target = packet_number >> 6
            # Clear the blocks the window slides over (all of them if it jumps far).
            for step in range(1, min(target - current, self._blocks) + 1):
                self._bitmap[(current + step) % self._blocks] = 0
            self._highest = packet_number
        block = (packet_number >> 6) % self._blocks
        self._bitmap[block] |= 1 << (packet_number & _BLOCK_MASK)
        return True

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, highest={self._highest})"
