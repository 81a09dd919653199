"""Fuzz ``ClientConnection.receive_datagram`` of a client mid-handshake.

A fresh client (seeded, pinning the server's key, with a register and a login
queued) has sent its initiation and waits for the response; the input is the next
datagram "from the server". Invariants: ``receive_datagram`` never raises, and
afterwards ``next_event``, ``datagrams_to_send``, ``get_timer`` and ``handle_timer``
still work.

Seed corpus: ``fuzz/corpus/client`` (every datagram a real session sent this
very client, the handshake response first).
Run: ``python fuzz/fuzz_client.py fuzz/corpus/client`` (libFuzzer flags follow).
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["udpchat_proto", "_session"]):
    from _session import SERVER_ADDRESS, START, handshaking_client, settle


def fuzz_one_input(data: bytes) -> None:
    """Feed ``data`` to a client waiting for its handshake response."""
    client = handshaking_client()
    client.receive_datagram(data, SERVER_ADDRESS, START + 0.01)
    settle(client, START + 0.01)


def main() -> None:
    """Hand ``sys.argv`` (corpus directories, libFuzzer flags) to atheris."""
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
