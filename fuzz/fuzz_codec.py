"""Fuzz the application codec, ``udpchat_proto.chat.codec.decode``.

Invariant: for any bytes, ``decode`` returns a validated message or raises
``udpchat_proto.errors.DecodeError``, and raises nothing else; a DecodeError that
names a ``request_id`` also names the ``code`` to answer with.

Seed corpus: ``fuzz/corpus/codec`` (every application payload of a real session).
Run: ``python fuzz/fuzz_codec.py fuzz/corpus/codec`` (libFuzzer flags follow).
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["udpchat_proto"]):
    from udpchat_proto.chat.codec import decode
    from udpchat_proto.errors import DecodeError


def fuzz_one_input(data: bytes) -> None:
    """Decode one payload; only DecodeError may escape, and it is expected."""
    try:
        decode(data)
    except DecodeError as exc:
        if exc.request_id is not None and exc.code is None:
            raise AssertionError("a DecodeError with a request_id must carry a code") from exc


def main() -> None:
    """Hand ``sys.argv`` (corpus directories, libFuzzer flags) to atheris."""
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
