"""Fuzz the Noise NX responder reading message 1 (a client's initiation).

``HandshakeState.read_message`` on a fresh responder (the server's static key, a
seeded ephemeral key). Invariants: for any bytes it returns or raises
``udpchat_proto.errors.DecodeError``, nothing else; after a failure the state is
unchanged (the genuine initiation is still accepted); after a success the
responder can write message 2 and split.

Seed corpus: ``fuzz/corpus/noise_responder`` (Noise messages 1 of a real session).
Run: ``python fuzz/fuzz_noise_responder.py fuzz/corpus/noise_responder``.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["udpchat_proto", "_session"]):
    from _session import SERVER_KEY, SERVER_SEED, RawClient

    from udpchat_proto.errors import DecodeError
    from udpchat_proto.randomness import SeededRandomSource
    from udpchat_proto.transport import PROLOGUE
    from udpchat_proto.transport.handshake import HandshakeState
    from udpchat_proto.transport.packets import HandshakeInitiation, decode_packet

_CLIENT = RawClient("alice")
_PACKET = decode_packet(_CLIENT.initiation)
assert isinstance(_PACKET, HandshakeInitiation)
_GENUINE: bytes = _PACKET.noise_message


def _responder() -> HandshakeState:
    return HandshakeState.responder(
        static_private=SERVER_KEY.private_bytes,
        random=SeededRandomSource(SERVER_SEED),
        prologue=PROLOGUE + _CLIENT.connection_id,
    )


def fuzz_one_input(data: bytes) -> None:
    """Read ``data`` as message 1; check the invariants above."""
    handshake = _responder()
    try:
        handshake.read_message(data)
    except DecodeError:
        handshake.read_message(_GENUINE)  # all or nothing: still intact
    handshake.write_message(b"")
    handshake.split()


def main() -> None:
    """Hand ``sys.argv`` (corpus directories, libFuzzer flags) to atheris."""
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
