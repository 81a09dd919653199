"""The server's static key and its printable fingerprint.

The server keeps one X25519 static key (its Noise ``s``) in a key file as the raw
32 private bytes. Clients pin the public half on first use and show it as a
fingerprint in the style of SSH: ``"SHA256:"`` followed by the unpadded base64 of
the SHA-256 of the 32-byte public key.
"""

from __future__ import annotations

import base64
import functools
import hashlib

import attrs

from ..errors import LocalProtocolError
from ..randomness import RandomSource
from . import handshake

__all__ = ["KEY_SIZE", "ServerKey", "fingerprint"]

KEY_SIZE = handshake.DH_LEN


def fingerprint(public_key: bytes) -> str:
    """Return the printable fingerprint of a public key.

    Args:
        public_key: the raw 32-byte X25519 public key.

    Returns:
        ``"SHA256:"`` + unpadded base64 of ``sha256(public_key)`` (50 characters),
        as ``ssh-keygen -l`` prints.

    Raises:
        LocalProtocolError: ``public_key`` is not 32 bytes.
    """
    if len(public_key) != KEY_SIZE:
        raise LocalProtocolError(f"a public key is {KEY_SIZE} bytes, got {len(public_key)}")
    digest = hashlib.sha256(public_key).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _check_private(_instance: object, _attribute: object, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != KEY_SIZE:
        size = len(value) if isinstance(value, bytes) else type(value).__name__
        raise LocalProtocolError(f"a server key is {KEY_SIZE} bytes, got {size}")


@attrs.frozen
class ServerKey:
    """The server's static X25519 key pair.

    Attributes:
        private_bytes: the raw 32-byte private key (what the key file holds). Never
            shown by ``repr``.
    """

    private_bytes: bytes = attrs.field(repr=False, validator=_check_private)

    @classmethod
    def generate(cls, random: RandomSource) -> ServerKey:
        """Make a new key from ``random`` (the system CSPRNG in production).

        Args:
            random: the source of the 32 private bytes.

        Returns:
            The new key.
        """
        return cls(random.token_bytes(KEY_SIZE))

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerKey:
        """Load a key from its raw 32-byte form, as saved in the key file.

        Args:
            data: the private key bytes.

        Returns:
            The key.

        Raises:
            LocalProtocolError: ``data`` is not 32 bytes.
        """
        return cls(bytes(memoryview(data)))

    @functools.cached_property
    def public_bytes(self) -> bytes:
        """The raw 32-byte X25519 public key (what clients pin)."""
        return handshake.public_key(self.private_bytes)

    @property
    def fingerprint(self) -> str:
        """The printable fingerprint of :attr:`public_bytes` (see :func:`fingerprint`)."""
        return fingerprint(self.public_bytes)
