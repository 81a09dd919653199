"""udpchat-proto: a sans-IO chat protocol over UDP."""

from .errors import DecodeError, ErrorCode, LocalProtocolError, ProtocolError
from .randomness import RandomSource, SeededRandomSource, SystemRandomSource

__all__ = [
    "DecodeError",
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
    "RandomSource",
    "SeededRandomSource",
    "SystemRandomSource",
]
