"""Fuzz the frame decoder, ``udpchat_proto.transport.packets.decode_frames``.

It decodes the plaintext of an opened DATA packet (PADDING, PING, ACK, STREAM,
CLOSE frames). Invariant: for any bytes it returns the frames or raises
``udpchat_proto.errors.DecodeError``, and raises nothing else.

Seed corpus: ``fuzz/corpus/frames`` (the plaintexts of a real session's DATA packets).
Run: ``python fuzz/fuzz_frames.py fuzz/corpus/frames`` (libFuzzer flags follow).
"""

from __future__ import annotations

import contextlib
import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["udpchat_proto"]):
    from udpchat_proto.errors import DecodeError
    from udpchat_proto.transport.packets import decode_frames


def fuzz_one_input(data: bytes) -> None:
    """Decode one plaintext; only DecodeError may escape, and it is expected."""
    with contextlib.suppress(DecodeError):
        decode_frames(data)


def main() -> None:
    """Hand ``sys.argv`` (corpus directories, libFuzzer flags) to atheris."""
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
