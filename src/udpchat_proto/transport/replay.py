"""Sliding anti-replay window over packet numbers (RFC 6479's window, as WireGuard uses).

The window remembers which of the last ``size`` packet numbers below the highest
one seen have been accepted. A packet number is acceptable if it is above the
highest seen, or within the window and not yet seen. WireGuard checks before
decrypting (cheap rejection) and records only after the packet authenticated, so
a forged packet cannot move the window: :meth:`ReplayWindow.check` and
:meth:`ReplayWindow.update` are separate for that reason.

The window is kept as one integer of *holes*: bit ``i`` is set when the number
``highest - i`` has not been seen. Packets mostly arrive in order, so the integer
is mostly 0 and a connection's window costs no memory (a bitmap of 2,048 bits
cost 320 bytes for every idle connection); a lost or reordered packet costs a few
bits until it arrives or falls out of the window.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_REPLAY_WINDOW", "ReplayWindow"]

#: 2048 packet numbers: at 1200-byte packets, 2.4 MB may be reordered or in flight
#: before a late packet is refused (WireGuard used 2048 until 2019, then 8192 for
#: multi-gigabit links; our send window keeps far fewer packets in flight).
DEFAULT_REPLAY_WINDOW: Final = 2048
#: Packet numbers are 64-bit and 2**64 - 1 is no valid Noise nonce.
_MAX_PACKET_NUMBER: Final = 2**64 - 2


class ReplayWindow:
    """Duplicate and replay detection for one receiving direction."""

    __slots__ = ("_highest", "_holes", "size")

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW) -> None:
        """Create an empty window.

        Args:
            size: how many packet numbers, counting the highest seen, are
                remembered; a positive multiple of 64.

        Raises:
            ValueError: ``size`` is not a positive multiple of 64.
        """
        if size <= 0 or size % 64:
            raise ValueError(f"window size must be a positive multiple of 64, got {size}")
        self.size = size
        self._highest = -1
        self._holes = 0

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
        behind = self._highest - packet_number
        if behind < 0:
            return True
        if behind >= self.size:
            return False
        return bool((self._holes >> behind) & 1)

    def update(self, packet_number: int) -> bool:
        """Record ``packet_number`` as received, if it is acceptable.

        Call it only once the packet has authenticated.

        Returns:
            True if recorded; False (nothing changed) if :meth:`check` refuses it.
        """
        if not self.check(packet_number):
            return False
        ahead = packet_number - self._highest
        if ahead > 0:
            # Slide: the numbers skipped over become holes behind the new highest
            # (and, before the first packet, every number below it is one).
            if ahead >= self.size:  # (never shift by a peer-chosen jump)
                holes = ((1 << (self.size - 1)) - 1) << 1
            else:
                holes = (self._holes << ahead) | (((1 << (ahead - 1)) - 1) << 1)
                if holes.bit_length() > self.size:
                    holes &= (1 << self.size) - 1  # what falls out of the window
            self._holes = holes
            self._highest = packet_number
        else:
            self._holes &= ~(1 << -ahead)
        return True

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, highest={self._highest})"
