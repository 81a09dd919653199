"""Login tokens: what a store keeps of one, and the name its session is shown by.

Both sides compute these: the server to find a session and list it, a client to
recognise its own session among them (``udpchat-cli sessions``). They live apart
from the request handlers so that a client loads none of the server's modules.
"""

from __future__ import annotations

import hashlib

from .validation import SESSION_ID_SIZE

__all__ = ["session_id", "token_hash"]


def token_hash(token: bytes) -> bytes:
    """What the store keeps of a login token: its SHA-256."""
    return hashlib.sha256(token).digest()


def session_id(hashed: bytes) -> bytes:
    """The 16-byte name of the login session whose token hashes to ``hashed``: shown
    to its user (``list_sessions``), accepted by ``revoke_session``, useless as a
    token (a hash of the token's hash, under its own label)."""
    return hashlib.sha256(b"udpchat session id\0" + hashed).digest()[:SESSION_ID_SIZE]
