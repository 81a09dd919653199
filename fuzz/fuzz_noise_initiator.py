"""Fuzz the Noise NX initiator reading message 2 (the server's response).

``HandshakeState.read_message`` on an initiator that has written message 1 (seeded
ephemeral key). Invariants: for any bytes it returns or raises
``udpchat_proto.errors.DecodeError``, nothing else; after a failure the state is
unchanged (the genuine response is still accepted); after a success the handshake
is complete, the server's static key is known and ``split`` works.

Seed corpus: ``fuzz/corpus/noise_initiator`` (Noise messages 2 of a real session,
valid for this very initiator).
Run: ``python fuzz/fuzz_noise_initiator.py fuzz/corpus/noise_initiator``.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["udpchat_proto", "_session"]):
    from _session import RawClient, RawServerPeer

    from udpchat_proto.errors import DecodeError
    from udpchat_proto.transport.packets import HandshakeResponse, decode_packet

_PACKET = decode_packet(RawServerPeer(RawClient("alice").initiation).response)
assert isinstance(_PACKET, HandshakeResponse)
_GENUINE: bytes = _PACKET.noise_message


def fuzz_one_input(data: bytes) -> None:
    """Read ``data`` as message 2; check the invariants above."""
    client = RawClient("alice")
    handshake = client.handshake
    try:
        handshake.read_message(data)
    except DecodeError:
        handshake.read_message(_GENUINE)  # all or nothing: still intact
    if not handshake.is_complete or handshake.remote_static_public is None:
        raise AssertionError("message 2 accepted but the handshake is not complete")
    handshake.split()


def main() -> None:
    """Hand ``sys.argv`` (corpus directories, libFuzzer flags) to atheris."""
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
