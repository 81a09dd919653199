"""Fuzz ``ChatServer.receive_datagram`` of a server with an established connection.

A fresh server (seeded, MemoryStore) replays a fixed set-up: :class:`_session.RawClient`
"alice" completes a handshake, registers "alice" and "bob" and logs in as alice
(hash jobs run and the store commits, as the real loop does). The first input byte
chooses what the rest is, modulo 4:

* 0: a raw datagram from alice's address;
* 1: the plaintext of a DATA packet (frames), sealed with alice's key as her next
  packet, from another address (the connection migrates);
* 2: the same from alice's address, so the frame and stream layers are reached;
* 3: one application payload, put on alice's stream at her next offset and sealed,
  so the codec and every request handler behind it are reached.

Invariants: ``receive_datagram`` never raises, and afterwards the batch's end
(``end_batch``: hash jobs, timers, commit, datagrams), ``next_event`` and
``get_timer`` still work.

Seed corpus: ``fuzz/corpus/server`` (a real session's datagrams, plaintexts and
requests to the server, each behind its mode byte).
Run: ``python fuzz/fuzz_server.py fuzz/corpus/server`` (libFuzzer flags follow).
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["udpchat_proto", "_session"]):
    from _session import (
        ALICE_ADDRESS,
        OTHER_ADDRESS,
        START,
        established_server,
        settle_server,
        stream_message,
    )

RAW, MIGRATE, FRAMES, MESSAGE = 0, 1, 2, 3
_NOW = START + 1.0


def fuzz_one_input(data: bytes) -> None:
    """Feed the datagram ``data`` describes to a server with alice logged in."""
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    server, _store, alice = established_server()
    address = OTHER_ADDRESS if mode == MIGRATE else ALICE_ADDRESS
    if mode in (MIGRATE, FRAMES):
        body = alice.seal(body)
    elif mode == MESSAGE:
        body = alice.seal(stream_message(alice.stream_offset, body))
    server.receive_datagram(body, address, _NOW)
    settle_server(server, _NOW)


def main() -> None:
    """Hand ``sys.argv`` (corpus directories, libFuzzer flags) to atheris."""
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
