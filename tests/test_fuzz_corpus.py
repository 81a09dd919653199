"""The fuzz seeds reach every request handler (issue 23: the server harness's
corpus, captured from one session, reached 29-51% of the handlers' code).

The server harness (``fuzz/fuzz_server.py``) reads its first byte modulo 4: mode 3
is one application payload on alice's stream, mode 2 the frames of a DATA packet
from her address. Between them, the seeds must hold a valid request of every type
of the catalogue, so that each handler is reached before any mutation.
"""

from __future__ import annotations

from pathlib import Path

from udpchat_proto import messages as m
from udpchat_proto.chat.codec import decode
from udpchat_proto.transport.packets import StreamFrame, decode_frames, decode_varint

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"
MESSAGE, FRAMES = 3, 2


def _stream_payloads(frames: bytes) -> list[bytes]:
    """The whole messages in the STREAM frames of one packet (each starts a message)."""
    payloads = []
    for frame in decode_frames(frames):
        if isinstance(frame, StreamFrame):
            data, pos = frame.data, 0
            while pos < len(data):
                length, pos = decode_varint(data, pos)
                payloads.append(data[pos : pos + length])
                pos += length
    return payloads


def _server_requests() -> list[m.Message]:
    payloads: list[bytes] = []
    for seed in sorted((CORPUS / "server").iterdir()):
        data = seed.read_bytes()
        if data and data[0] % 4 == MESSAGE:
            payloads.append(data[1:])
        elif data and data[0] % 4 == FRAMES:
            payloads.extend(_stream_payloads(data[1:]))
    return [decode(payload) for payload in payloads]


def test_the_server_seeds_hold_a_request_of_every_type() -> None:
    tags = {type(message).TAG for message in _server_requests()}
    missing = {cls.TAG for cls in m.REQUEST_TYPES} - tags
    assert not missing, f"fuzz/corpus/server reaches no {sorted(missing)}: run fuzz/make_corpus.py"


def test_some_server_seeds_are_sequences_that_reach_past_the_refusals() -> None:
    """A login as bob on alice's connection, then bob accepting alice's invitation:
    a friendship, so that a message to a friend is stored (not refused not_friends)."""
    sequences = [
        [type(message) for message in (decode(p) for p in _stream_payloads(seed.read_bytes()[1:]))]
        for seed in sorted((CORPUS / "server").iterdir())
        if seed.read_bytes()[:1] == bytes((FRAMES,))
    ]
    assert any(
        kinds[:4] == [m.Invite, m.Login, m.AcceptInvitation, m.Login] and m.SendMessage in kinds
        for kinds in sequences
    )


def test_the_codec_seeds_hold_a_message_of_every_request_type() -> None:
    tags = {type(decode(seed.read_bytes())).TAG for seed in (CORPUS / "codec").iterdir()}
    assert {cls.TAG for cls in m.REQUEST_TYPES} <= tags
