"""The server at fixed offered rates, for what a message and a loop turn cost at
low load.

Run: ``.venv/bin/python benchmarks/lowload.py [--rates 100,1000] [--seconds 8]
[--runs 1] [--workers 2] [--pairs 16] [--perf | --strace | --py-spy FILE |
--callgrind PREFIX | --profile FILE] [--server-python PYTHON] [--max-ack-delay S]
[--ack-every N] [--quick] [--json]``.

``relay.py``'s set-up (a real ``udpchat-server`` on SQLite, 2 generator processes
of 16 pairs, plain messages), one window per rate; per window it reports the
server's CPU a message split into user and kernel time (``/proc/PID/stat``), its
threads' CPU, the loop's turns and commits a message and the datagrams in and out
a message (its counters, through the control socket), the CPU a turn, and
p50/p99. Optionally, over the window: ``--perf``, its context switches a turn
(``perf stat -e task-clock,context-switches``; the project machine's virtual CPUs
count no instructions); ``--strace``, its syscalls (``strace -c``, which slows the
server: its CPU figures are then not comparable); ``--py-spy``, a profile of the
samples that hold the GIL (py-spy's own idle test counts a loop woken but not yet
on a core as busy); ``--callgrind PREFIX``, the server run under callgrind with
collection on for the windows only (``PREFIX.PID.N``, one part a rate: their
totals over the messages delivered are instructions a message, stable on a
shared machine; about 15 times slower, so use low rates, e.g. ``--workers 1
--pairs 4 --rates 10``); ``--profile``, the server under cProfile (whole run).

Two options reshape the acknowledgements, for an experiment only (what a
protocol that acknowledged differently could save; the product's defaults do not
change): ``--max-ack-delay S`` sets the transport's ``max_ack_delay`` on the
server (its configuration patched in its process before ``main()``) and on every
client, so that a lone packet's ACK waits up to S for a packet with data to ride
on instead of leaving alone 25 ms later (every retransmission timeout grows by as
much); ``--ack-every N`` makes each recipient acknowledge its deliveries N at a
time, one ``ack_delivery`` of N ids (as the protocol allows: an acknowledgement
moves the cursor past everything before it; N under 32, half the server's
delivery window, or the window stalls). Each window's figures say which shape
ran (``max_ack_delay``, ``ack_every``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import relay  # (a sibling script, found through the path above)

#: relay.py's default generator: 2 processes of 16 friend pairs.
WORKERS = 2
PAIRS = 16


def threads(pid: int) -> dict[str, tuple[float, float]]:
    """Each thread's name and id: its user and kernel CPU seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            text = (task / "stat").read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            out[f"{name}/{task.name}"] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return out


def user_kernel(pid: int) -> tuple[float, float]:
    """User and kernel CPU seconds of process ``pid`` (all its threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@contextlib.contextmanager
def observer(command: list[str] | None) -> Iterator[list[str]]:
    """Run ``command`` (perf, strace, py-spy, attached to the server) for the
    block; yields the list its stderr lines go into once it has stopped."""
    lines: list[str] = []
    if command is None:
        yield lines
        return
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        yield lines
    finally:
        process.send_signal(2)  # SIGINT: perf and strace print their summary
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        lines.extend(err.splitlines())


def perf_counts(lines: list[str]) -> dict[str, float]:
    """``perf stat -x,`` output: each event's count."""
    counts: dict[str, float] = {}
    for line in lines:
        parts = line.split(",")
        if len(parts) >= 3 and parts[0].replace(".", "", 1).isdigit():
            counts[parts[2]] = float(parts[0])
    return counts


def one_rate(
    team: relay.Workers, pid: int, rate: int, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """One window at ``rate``: the figures, and the observer's output."""
    command: list[str] | None = None
    if args.strace:
        command = ["strace", "-c", "-f", "-p", str(pid)]
    elif args.py_spy:
        command = [
            shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
            "record", "--pid", str(pid), "--rate", "500", "--format", "raw",
            "--output", f"{args.py_spy}.{rate}", "--nonblocking", "--gil",
        ]  # fmt: skip
    elif args.perf:
        events = "task-clock,context-switches,cpu-migrations,page-faults"
        command = ["perf", "stat", "-x,", "-e", events, "-p", str(pid)]
    warmup = 1.0
    start = time.monotonic() + 0.1
    warm, end = start + warmup, start + warmup + seconds
    call = functools.partial(team.call, "offer", rate / len(team.conns))
    results: list[list[dict[str, Any]]] = []

    thread = threading.Thread(target=lambda: results.append(call(start, warm, end)))
    thread.start()
    time.sleep(max(0.0, warm - time.monotonic()))
    before = relay.loop_counters(pid)
    user0, kernel0 = user_kernel(pid)
    threads0 = threads(pid)
    if args.callgrind:
        # The server runs under callgrind with collection off: on for the window.
        command = None
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
    with observer(command) as lines:
        time.sleep(max(0.0, end - time.monotonic()))
    if args.callgrind:
        subprocess.run(
            ["callgrind_control", "-d", f"rate{rate}", str(pid)], check=True, capture_output=True
        )
        subprocess.run(
            ["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True
        )
    user1, kernel1 = user_kernel(pid)
    threads1 = threads(pid)
    after = relay.loop_counters(pid)
    thread.join(relay.DEADLINE)
    latencies = [x for r in results[0] for x in r["latencies"]]
    delivered = sum(r["delivered"] for r in results[0])
    turns = relay.counted(before, after, "turns")
    commits = relay.counted(before, after, "commits")
    user, kernel = user1 - user0, kernel1 - kernel0
    figures: dict[str, Any] = {
        "offered": rate,
        "delivered": delivered,
        "user_us_per_msg": user / max(1, delivered) * 1e6,
        "kernel_us_per_msg": kernel / max(1, delivered) * 1e6,
        "cpu_us_per_msg": (user + kernel) / max(1, delivered) * 1e6,
        "turns_per_msg": turns / max(1, delivered),
        "commits_per_msg": commits / max(1, delivered),
        "waits_per_msg": relay.counted(before, after, "commit_waits") / max(1, delivered),
        "cpu_us_per_turn": (user + kernel) / max(1.0, turns) * 1e6,
        "datagrams_in_per_msg": relay.counted(before, after, "datagrams_in") / max(1, delivered),
        "datagrams_out_per_msg": relay.counted(before, after, "datagrams_out") / max(1, delivered),
        "p50_ms": relay.percentile(latencies, 50) * 1e3,
        "p99_ms": relay.percentile(latencies, 99) * 1e3,
    }
    figures["threads_cpu_s"] = {
        name: round(sum(threads1[name]) - sum(threads0.get(name, (0.0, 0.0))), 3)
        for name in threads1
        if sum(threads1[name]) - sum(threads0.get(name, (0.0, 0.0))) > 0
    }
    counts = perf_counts(lines)
    if counts:
        figures["perf_task_clock_us_per_msg"] = (
            counts.get("task-clock", 0.0) * 1e3 / max(1, delivered)
        )
        figures["context_switches_per_turn"] = counts.get("context-switches", 0.0) / max(1.0, turns)
    if args.strace:
        figures["strace"] = lines
    return figures


def callgrind_python(python: str, prefix: str) -> str:
    """A script that runs ``python`` under callgrind, instrumentation off until
    ``callgrind_control -i on``; its path (for ``relay.udpchat_server``)."""
    path = Path(f"{prefix}.sh")
    path.write_text(
        "#!/bin/sh\n"
        f"PYTHONHASHSEED=0 exec valgrind --tool=callgrind --instr-atstart=no "
        f'--callgrind-out-file={prefix}.%p {python} "$@"\n'
    )
    path.chmod(0o755)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,1000")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--perf", action="store_true", help="perf stat over each window")
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--py-spy", metavar="FILE")
    parser.add_argument("--server-python", default=sys.executable)
    parser.add_argument("--json", action="store_true", help="one JSON object: {rates: [...]}")
    parser.add_argument("--quick", action="store_true", help="one short window at 200/s")
    parser.add_argument("--profile", metavar="FILE", help="run the server under cProfile")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument(
        "--max-ack-delay",
        type=float,
        metavar="S",
        help="the transport's max_ack_delay on the server and the clients (experiment)",
    )
    parser.add_argument(
        "--ack-every",
        type=int,
        default=1,
        metavar="N",
        help="recipients acknowledge deliveries N at a time, N < 32 (experiment)",
    )
    parser.add_argument(
        "--callgrind",
        metavar="PREFIX",
        help="run the server under callgrind, counting the windows only (PREFIX.RATE)",
    )
    args = parser.parse_args()
    if args.quick:
        args.rates, args.seconds = "200", 1.0
    if not 1 <= args.ack_every < 32:
        parser.error("--ack-every must be 1 to 31 (half the server's delivery window)")
    shape = relay.AckShape(max_ack_delay=args.max_ack_delay, ack_every=args.ack_every)
    try:
        shape.client_config()  # (the transport's own checks: more than its timer's slack)
    except ValueError as error:
        parser.error(f"--max-ack-delay: {error}")
    rates = [int(x) for x in args.rates.split(",")]
    runs = []
    for _ in range(args.runs):
        team = relay.Workers(args.workers, args.pairs)
        try:
            python = args.server_python
            if args.callgrind:
                python = callgrind_python(args.server_python, args.callgrind)
            with relay.udpchat_server(args.profile, python=python, shape=shape) as (pid, port):
                team.call("setup", port, args.workers, False, shape)
                for rate in rates:
                    figures = one_rate(team, pid, rate, args.seconds, args)
                    figures["max_ack_delay"] = args.max_ack_delay
                    figures["ack_every"] = args.ack_every
                    runs.append(figures)
                    if args.json:
                        continue
                    trace = figures.pop("strace", None)
                    print(
                        " ".join(
                            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in figures.items()
                        ),
                        flush=True,
                    )
                    if trace:
                        print("\n".join(trace))
            team.call("close")
        finally:
            team.stop()
    if args.json:
        print(json.dumps({"rates": runs}))


if __name__ == "__main__":
    main()
