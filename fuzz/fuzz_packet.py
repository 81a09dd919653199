"""Fuzz the packet decoder, ``udpchat_proto.transport.packets.decode_packet``.

Invariant: for any bytes, ``decode_packet`` returns a packet or raises
``udpchat_proto.errors.DecodeError``, and raises nothing else.

Seed corpus: ``fuzz/corpus/packet`` (every kind of datagram of a real session).
Run: ``python fuzz/fuzz_packet.py fuzz/corpus/packet`` (libFuzzer flags follow).
"""

from __future__ import annotations

import contextlib
import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["udpchat_proto"]):
    from udpchat_proto.errors import DecodeError
    from udpchat_proto.transport.packets import decode_packet


def fuzz_one_input(data: bytes) -> None:
    """Decode one datagram; only DecodeError may escape, and it is expected."""
    with contextlib.suppress(DecodeError):
        decode_packet(data)


def main() -> None:
    """Hand ``sys.argv`` (corpus directories, libFuzzer flags) to atheris."""
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
