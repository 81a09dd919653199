"""Codec cost: encode + decode of a typical send-message, beside plain json in the same run.

Run: ``.venv/bin/python benchmarks/codec.py``. Prints the median over several
repeats of microseconds per encode+decode round trip, for udpchat's codec (cattrs
structuring with validation) and for ``json.dumps``/``json.loads`` of an
equivalent dict (the ceiling: the same JSON bytes with no typing or validation),
and their ratio.
"""

from __future__ import annotations

import json
import statistics
import timeit

from udpchat_proto import messages as m
from udpchat_proto.chat import decode, encode

REPEATS = 7
NUMBER = 20_000


def main() -> None:
    message = m.SendMessage(
        request_id=1234,
        message_id=bytes(range(16)),
        to="bob",
        text="Hello Bob! Are we still on for lunch tomorrow at noon? 🍜",
    )
    equivalent = {
        "request_id": 1234,
        "message_id": bytes(range(16)).hex(),
        "to": "bob",
        "text": message.text,
        "type": "send_message",
    }

    def codec_round_trip() -> None:
        decode(encode(message))

    def json_round_trip() -> None:
        json.loads(json.dumps(equivalent, ensure_ascii=False, separators=(",", ":")))

    assert decode(encode(message)) == message
    results = {}
    for name, func in (("udpchat codec", codec_round_trip), ("json dumps+loads", json_round_trip)):
        times = timeit.repeat(func, number=NUMBER, repeat=REPEATS)
        results[name] = statistics.median(times) / NUMBER * 1e6
    size = len(encode(message))
    print(f"typical send-message: {size} bytes encoded; median of {REPEATS} x {NUMBER} round trips")
    for name, micros in results.items():
        print(f"  {name:18s} {micros:7.2f} us per encode+decode")
    ratio = results["udpchat codec"] / results["json dumps+loads"]
    print(f"  ratio codec/json   {ratio:7.2f}x")


if __name__ == "__main__":
    main()
