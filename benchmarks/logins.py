"""A burst of logins at the default password-hash cost while messages flow: what
it does to the messages' latency.

Run: ``.venv/bin/python benchmarks/logins.py [--quick] [--json] [--logins 50]
[--rate 1000]``.

The real ``udpchat-server`` process (as ``benchmarks/relay.py`` starts it, but at
the DEFAULT scrypt cost: no ``--scrypt-n``; rate limits raised out of the way and
every login from 127.0.0.1 allowed to wait for a hash at once) and one
load-generator process of ``relay.py``'s kind:

1. set-up (not timed): ``--pairs`` pairs of friends, and ``--logins`` more users
   who register, so that each of them can log in later (every registration and
   login is a full scrypt hash, N=2^17: this takes a while);
2. **without** (before and after the burst; the figure is the mean of the two
   p99s): ``--rate`` messages a second for a window, p50/p99 from the time
   each was due to its delivery, as in ``relay.py``;
3. **with**: the same rate, and at the window's start every one of the
   ``--logins`` users sends its login at once; the window lasts until the last
   of them is answered (at most ``BURST_WINDOW``), and p50/p99 are those of the
   messages due inside it.

The figure is the difference of the two p99s: the hashes run on the server's
worker threads (``hashlib.scrypt`` releases the GIL), but on a two-core machine
they compete with the loop for the cores.
"""

from __future__ import annotations

import argparse
import collections
import json
import selectors
import time
from typing import Any

# The sibling benchmark's server process and load generator.
from relay import (
    DEADLINE,
    NO_RATE_LIMITS,
    PASSWORD,
    Generator,
    Peer,
    percentile,
    udpchat_server,
)

#: The default cost: everything relay.py raises, except the hash cost.
OPTIONS = [
    *NO_RATE_LIMITS,
    # The burst comes from one address: let all of it queue rather than be refused
    # (a login in progress counts against the failed-login budget of its address
    # until it succeeds: at the default 20/15, 30 of 50 are refused).
    "--login-failures-per-address",
    "1000/0.001",
    "--max-pending-hash-jobs",
    "128",
]
#: The window without the burst, seconds (quick, full): at 1,000/s, 2,000 or 5,000
#: messages, so that the p99 is the 20th or 50th worst.
QUIET_WINDOW = (2.0, 5.0)
#: Longest window with the burst: it ends when every login is answered.
BURST_WINDOW = 300.0
WARMUP = 0.5


def latencies(result: dict[str, Any]) -> dict[str, float]:
    values: list[float] = result["latencies"]
    return {
        "p50_ms": percentile(values, 50) * 1e3,
        "p99_ms": percentile(values, 99) * 1e3,
        "messages": len(values),
    }


def run(pairs: int, logins: int, rate: float, quiet: float) -> dict[str, Any]:
    """One server: set-up, the window without, the window with the burst."""
    with udpchat_server(options=OPTIONS) as (_pid, port):
        generator = Generator(pairs, prefix="m")
        started = time.monotonic()
        generator.setup(port, workers=1)
        burst = [Peer(f"burst{i}", ("127.0.0.1", port)) for i in range(logins)]
        for peer in burst:
            generator.selector.register(peer.sock, selectors.EVENT_READ, peer)
            generator.peers.append(peer)
        deadline = time.monotonic() + DEADLINE * 5
        registered_at = time.monotonic()
        for peer in burst:
            generator.sleep_until(time.monotonic() + 1 / 40)  # the handshake limit
            now = time.monotonic()
            peer.conn.connect(now)
            peer.conn.register(peer.name, PASSWORD)
            peer.flush(now)
        generator.drive_until(lambda: all(p.oks >= 1 for p in burst), deadline)
        registration_seconds = time.monotonic() - registered_at
        setup_seconds = time.monotonic() - started

        start = time.monotonic() + 0.1
        before = generator.offer(rate, start, start + WARMUP, start + WARMUP + quiet)
        start = time.monotonic() + 0.1
        fired: list[float] = []
        finished: list[float] = []

        def burst_and_watch(now: float) -> None:
            if not fired and now >= start + WARMUP:
                fired.append(now)
                for peer in burst:
                    peer.conn.login(peer.name, PASSWORD)
                    peer.flush(now)
            # Answers so far: one for the registration, one for the login.
            elif fired and not finished and all(p.oks + p.errors >= 2 for p in burst):
                finished.append(now)

        with_burst = generator.offer(
            rate,
            start,
            start + WARMUP,
            start + WARMUP + BURST_WINDOW,
            also=burst_and_watch,
            stop=lambda: bool(finished),
        )
        # Quiet again: the machine is shared, so "without" is measured on both sides.
        start = time.monotonic() + 0.1
        after = generator.offer(rate, start, start + WARMUP, start + WARMUP + quiet)
        logged_in = sum(p.oks >= 2 for p in burst)
        refused = sum(p.errors for p in burst)
        reasons = collections.Counter(text for p in burst for text in p.refusals)
        return {
            "before": {**latencies(before), "achieved": before["delivered"] / quiet},
            "after": {**latencies(after), "achieved": after["delivered"] / quiet},
            "with": {
                **latencies(with_burst),
                "achieved": with_burst["delivered"] / with_burst["window_s"],
                "window_s": with_burst["window_s"],
            },
            "logged_in": logged_in,
            "refused": refused,
            "refusals": dict(reasons),
            "burst_s": finished[0] - fired[0] if finished and fired else None,
            "registration_burst_s": registration_seconds,
            "setup_s": setup_seconds,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=None, help="default 50 (10 quick)")
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    parser.add_argument("--pairs", type=int, default=None, help="default 8 (2 quick)")
    parser.add_argument("--quick", action="store_true", help="a smaller burst")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logins = args.logins or (10 if args.quick else 50)
    pairs = args.pairs or (2 if args.quick else 8)
    result = run(pairs, logins, args.rate, QUIET_WINDOW[0 if args.quick else 1])
    # The quiet windows before and after the burst, averaged.
    without = (result["before"]["p99_ms"] + result["after"]["p99_ms"]) / 2
    summary = {
        "logins": logins,
        "rate": args.rate,
        "p99_without_ms": without,
        "p99_with_burst_ms": result["with"]["p99_ms"],
        "p99_delta_ms": result["with"]["p99_ms"] - without,
        **result,
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(
        f"{logins} logins at the default scrypt cost while {args.rate:.0f} messages/s flow "
        f"({pairs} pairs); {result['logged_in']} logged in, {result['refused']} refused"
    )
    for name, label in (
        ("before", "before the burst"),
        ("with", "during it"),
        ("after", "after it"),
    ):
        row = result[name]
        print(
            f"  {label:18} p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms"
            f"  achieved {row['achieved']:6.0f}/s  ({row['messages']} messages)"
        )
    print(f"  p99 difference     {summary['p99_delta_ms']:+.2f} ms (from before and after's mean)")
    for reason, count in result["refusals"].items():
        print(f"  refused {count}x: {reason}")
    burst_s = result["burst_s"]
    took = "did not finish in the window" if burst_s is None else f"took {burst_s:.1f} s"
    print(f"  the burst {took}; its registrations took {result['registration_burst_s']:.1f} s")


if __name__ == "__main__":
    main()
