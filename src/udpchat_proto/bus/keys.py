"""The cluster bus's keys: everything derived from the key the nodes share.

The nodes of a cluster share the server's static key; nothing else on the NATS
server does. From its 32 *private* bytes (never the public half, which every
client knows) HKDF-SHA256, with no salt and a distinct ``info`` each, derives:

* the **subject token**, 16 bytes: the cluster talks on
  ``udpchat.cluster.`` + its lowercase hex, a subject only a holder of the key can
  name, so two clusters on one NATS never hear each other;
* the **message key**, 32 bytes, and from it (HKDF-Expand, ``info`` ending with the
  node id) each node's **sealing key**: a key of its own, so that its counter can
  be its nonce without two nodes ever using one nonce under one key.
"""

from __future__ import annotations

from typing import Final

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from ..errors import LocalProtocolError

__all__ = [
    "MESSAGE_KEY_INFO",
    "NODE_KEY_INFO",
    "NODE_SIZE",
    "SECRET_SIZE",
    "SUBJECT_INFO",
    "SUBJECT_PREFIX",
    "BusKeys",
]

SECRET_SIZE: Final = 32
"""Bytes of the shared secret: the server's static X25519 private key."""
NODE_SIZE: Final = 16
"""Bytes of a node id: random at each start, so two starts never share one (nor,
under one sealing key, a nonce)."""
SUBJECT_PREFIX: Final = "udpchat.cluster"
"""A cluster's subject is ``udpchat.cluster.<subject token in hex>``."""
SUBJECT_INFO: Final = b"udpchat cluster bus subject v1"
"""HKDF ``info`` of the subject token (16 bytes)."""
MESSAGE_KEY_INFO: Final = b"udpchat cluster bus message key v1"
"""HKDF ``info`` of the message key (32 bytes)."""
NODE_KEY_INFO: Final = b"udpchat cluster bus node key v1 "
"""HKDF-Expand ``info`` of a node's sealing key, followed by its 16-byte id (the
space before the id is part of it)."""


@attrs.frozen
class BusKeys:
    """What a cluster's nodes derive from the key they share.

    Build it with :meth:`derive`; hand it to a
    :class:`~udpchat_proto.bus.Sealer` and an :class:`~udpchat_proto.bus.Opener`.
    """

    subject_token: str
    """32 lowercase hex digits: where the cluster talks (:attr:`subject`)."""
    message_key: bytes = attrs.field(repr=False)
    """What each node's sealing key is expanded from (never in a ``repr``)."""

    @classmethod
    def derive(cls, secret: bytes) -> BusKeys:
        """The keys of the cluster whose nodes share ``secret``.

        Args:
            secret: the server's static *private* key (its public half is no
                secret: every client has it).

        Returns:
            The subject token and the message key.

        Raises:
            LocalProtocolError: ``secret`` is not :data:`SECRET_SIZE` bytes.
        """
        if len(secret) != SECRET_SIZE:
            raise LocalProtocolError(
                f"the cluster's secret is {SECRET_SIZE} bytes, not {len(secret)}"
            )
        subject = _hkdf(secret, SUBJECT_INFO, 16)
        return cls(subject_token=subject.hex(), message_key=_hkdf(secret, MESSAGE_KEY_INFO, 32))

    @property
    def subject(self) -> str:
        """The NATS subject every node of this cluster publishes and listens on."""
        return f"{SUBJECT_PREFIX}.{self.subject_token}"

    def node_key(self, node: bytes) -> bytes:
        """The key ``node`` seals its messages with (HKDF-Expand of the message key).

        Raises:
            LocalProtocolError: ``node`` is not :data:`NODE_SIZE` bytes.
        """
        if len(node) != NODE_SIZE:
            raise LocalProtocolError(f"a node id is {NODE_SIZE} bytes, not {len(node)}")
        expand = HKDFExpand(algorithm=hashes.SHA256(), length=32, info=NODE_KEY_INFO + node)
        return expand.derive(self.message_key)

    def cipher_for(self, node: bytes) -> ChaCha20Poly1305:
        """The AEAD ``node`` seals with, and its messages are opened with.

        Raises:
            LocalProtocolError: ``node`` is not :data:`NODE_SIZE` bytes.
        """
        return ChaCha20Poly1305(self.node_key(node))


def _hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)
