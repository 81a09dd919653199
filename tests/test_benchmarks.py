"""The load benchmarks still run: each one's ``--quick --json`` exits 0 and prints one
JSON object with its keys. Nothing is asserted about the figures (the machine is
shared, timings move); the point is that the benchmarks cannot rot unnoticed.

The three quick runs take about 35 s together on the project's two-core machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

#: Each benchmark, the keys its JSON must have, and the longest it may take
#: (about four times what it takes on the project's machine).
CASES = {
    "relay.py": (
        {
            "udpchat_msgs_per_s",
            "raw_relay_msgs_per_s",
            "ratio",
            "p50_ms",
            "p99_ms",
            "server_cpu_us_per_msg",
            "server_rss_mib",
            "latency",
            "p99_crosses_5ms_at",
        },
        120,
    ),
    "sessions.py": ({"bytes_per_idle_conn", "rss_bytes_per_idle_conn", "sizes"}, 90),
    "logins.py": ({"p99_without_ms", "p99_with_burst_ms", "p99_delta_ms", "logins"}, 120),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_quick(name: str) -> None:
    keys, timeout = CASES[name]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout[-3000:]  # one JSON object, nothing else
    figures = json.loads(lines[0])
    assert keys <= set(figures), keys - set(figures)
    if name == "relay.py":
        for step in figures["latency"]:
            assert {"offered", "achieved", "p50_ms", "p99_ms"} <= set(step)
