"""Run the fuzz harnesses for a while and report executions and speed.

Each harness runs in its own process on a working copy of its seed corpus (the
committed ``fuzz/corpus`` is only read), for the same time, one after the other::

    python fuzz/run.py --minutes 10                 # every harness, 10 minutes each
    python fuzz/run.py --seconds 30 server codec    # two harnesses, 30 s each
    python fuzz/run.py --minutes 5 --work fuzz/work # keep the grown corpora

Crashing inputs are written to ``fuzz/artifacts/`` (``crash-<sha1>``,
``timeout-<sha1>``); reproduce one with ``python fuzz/fuzz_<harness>.py <file>``.
The exit status is 1 if any harness crashed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs

FUZZ = Path(__file__).resolve().parent
HARNESSES = (
    "packet",
    "frames",
    "noise_responder",
    "noise_initiator",
    "codec",
    "client",
    "client_established",
    "server",
    "bus",
    "control",
    "config",
)
#: Harnesses that parse the JSON of application messages get its dictionary.
USES_DICTIONARY = ("codec", "client_established", "server", "control")
#: Each harness's libFuzzer dictionary, if it has one.
DICTIONARIES = {**dict.fromkeys(USES_DICTIONARY, "json.dict"), "config": "toml.dict"}
#: Output of atheris or libFuzzer that means a harness found a failing input.
CRASH_MARKERS = ("Uncaught Python exception", "ERROR: libFuzzer", "==ERROR", "Test unit written")


@attrs.frozen
class Result:
    """What one harness run did."""

    harness: str
    returncode: int
    seconds: float
    executions: int
    """libFuzzer's ``stat::number_of_executed_units``."""
    per_second: int
    """libFuzzer's ``stat::average_exec_per_sec``."""
    corpus: int
    """Files in the working corpus at the end."""
    output: str

    @property
    def crashed(self) -> bool:
        """Whether the harness failed (non-zero exit or a crash report)."""
        return self.returncode != 0 or any(mark in self.output for mark in CRASH_MARKERS)


def _stat(output: str, name: str) -> int:
    found = re.findall(rf"stat::{name}:\s*(\d+)", output)
    return int(found[-1]) if found else 0


def run_harness(
    harness: str,
    seconds: float,
    work: Path,
    artifacts: Path,
    *,
    extra: tuple[str, ...] = (),
    timeout: float | None = None,
) -> Result:
    """Fuzz ``harness`` for ``seconds`` on a copy of its seeds in ``work/<harness>``
    (``timeout``: kill the run after that many seconds, for tests)."""
    corpus = work / harness
    if not corpus.exists():
        shutil.copytree(FUZZ / "corpus" / harness, corpus)
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(FUZZ / f"fuzz_{harness}.py"),
        str(corpus),
        f"-max_total_time={max(1, round(seconds))}",
        "-timeout=30",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/{harness}-",
        *([f"-dict={FUZZ / DICTIONARIES[harness]}"] if harness in DICTIONARIES else []),
        *extra,
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.monotonic() - started
    output = done.stdout + done.stderr
    return Result(
        harness=harness,
        returncode=done.returncode,
        seconds=elapsed,
        executions=_stat(output, "number_of_executed_units"),
        per_second=_stat(output, "average_exec_per_sec"),
        corpus=sum(1 for _ in corpus.iterdir()),
        output=output,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the harnesses, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harnesses", nargs="*", help=f"some of {', '.join(HARNESSES)}")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="time per harness (default 1)")
    length.add_argument("--seconds", type=float, help="time per harness")
    parser.add_argument("--work", type=Path, help="keep the grown corpora here")
    parser.add_argument("--artifacts", type=Path, default=FUZZ / "artifacts")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60.0 * (args.minutes or 1.0)
    harnesses = args.harnesses or list(HARNESSES)
    unknown = sorted(set(harnesses) - set(HARNESSES))
    if unknown:
        parser.error(f"unknown harness(es): {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="udpchat-fuzz-") as scratch:
        work = args.work if args.work is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        print(f"{'harness':<20} {'executions':>12} {'exec/s':>8} {'seconds':>8} {'corpus':>7}")
        failed = False
        for harness in harnesses:
            result = run_harness(harness, seconds, work, args.artifacts.resolve())
            status = "CRASH" if result.crashed else "ok"
            print(
                f"{harness:<20} {result.executions:>12} {result.per_second:>8} "
                f"{result.seconds:>8.1f} {result.corpus:>7} {status}",
                flush=True,
            )
            if result.crashed:
                failed = True
                print(result.output[-4000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
