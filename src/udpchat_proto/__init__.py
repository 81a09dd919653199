"""udpchat-proto: a sans-IO chat protocol over UDP.

The public API is what this module re-exports; everything else is internal.
"""

from . import messages
from .codec import MAX_ENCODED_SIZE, PROTOCOL_VERSION, decode, encode
from .errors import DecodeError, ErrorCode, LocalProtocolError, ProtocolError
from .keys import ServerKey, fingerprint
from .passwords import PasswordHash, ScryptParams
from .randomness import RandomSource, SeededRandomSource, SystemRandomSource
from .store import Account, LoginSession, Store, StoredMessage
from .validation import ValidationError

__all__ = [
    "MAX_ENCODED_SIZE",
    "PROTOCOL_VERSION",
    "Account",
    "DecodeError",
    "ErrorCode",
    "LocalProtocolError",
    "LoginSession",
    "PasswordHash",
    "ProtocolError",
    "RandomSource",
    "ScryptParams",
    "SeededRandomSource",
    "ServerKey",
    "Store",
    "StoredMessage",
    "SystemRandomSource",
    "ValidationError",
    "decode",
    "encode",
    "fingerprint",
    "messages",
]
