"""benchmarks/e2ee.py still runs (its ``--quick --json``: a smoke test, no timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e  # (a real process: the benchmark)
def test_the_e2ee_benchmark_runs_quick() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "e2ee.py"),
            *("--quick", "--json", "--server", "memory", "--relay"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["room_devices"] == 2 * summary["room_members"]
    assert all(summary[k] > 0 for k in ("message_us", "first_share_ms", "take_share_us"))
    assert summary["first_read_ms"] >= summary["first_accepted_ms"] > 0  # through the server
    # The server's CPU a message, plain and encrypted (every delivery decrypted).
    assert summary["relay_plain_us"] > 0 and summary["relay_encrypted_us"] > 0
    assert summary["relay_ratio_min"] <= summary["relay_ratio"] <= summary["relay_ratio_max"]
