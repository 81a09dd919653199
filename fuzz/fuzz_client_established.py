"""Fuzz ``ClientConnection.receive_datagram`` of an established client.

A fresh client (seeded, with a register and a login pending) completes its
handshake with :class:`_session.RawServerPeer`, which holds the server-to-client
key. The first input byte chooses what the rest is, modulo 3:

* 0: a raw datagram from the server's address;
* 1: the plaintext of a DATA packet (frames), sealed with the server's key as
  its first packet, so the frame and stream layers are reached;
* 2: one application payload, put on the stream at offset 0 in a STREAM frame
  and sealed, so the codec and the client's response/push handling are reached.

Invariants: ``receive_datagram`` never raises, and afterwards ``next_event``,
``datagrams_to_send``, ``get_timer`` and ``handle_timer`` still work.

Seed corpus: ``fuzz/corpus/client_established`` (a real session's datagrams,
plaintexts and payloads to this very client, each behind its mode byte).
Run: ``python fuzz/fuzz_client_established.py fuzz/corpus/client_established``.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["udpchat_proto", "_session"]):
    from _session import (
        SERVER_ADDRESS,
        START,
        RawServerPeer,
        handshaking_client,
        settle,
        stream_message,
    )

RAW, FRAMES, MESSAGE = 0, 1, 2
_PEER = RawServerPeer(handshaking_client().datagrams_to_send(START)[0][0])
_NOW = START + 0.02


def fuzz_one_input(data: bytes) -> None:
    """Feed the datagram ``data`` describes to an established client."""
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    client = handshaking_client()
    client.datagrams_to_send(START)
    client.receive_datagram(_PEER.response, SERVER_ADDRESS, START + 0.01)
    settle(client, START + 0.01, fire_timers=False)
    if not client.is_connected:
        raise AssertionError("the genuine response did not establish the client")
    if mode == FRAMES:
        body = _PEER.seal(body, 0)
    elif mode == MESSAGE:
        body = _PEER.seal(stream_message(0, body), 0)
    client.receive_datagram(body, SERVER_ADDRESS, _NOW)
    settle(client, _NOW)


def main() -> None:
    """Hand ``sys.argv`` (corpus directories, libFuzzer flags) to atheris."""
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
