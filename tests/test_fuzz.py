"""Short coverage-guided fuzzing runs of every harness in ``fuzz/`` (atheris).

Each harness runs in its own subprocess, on a copy of its committed seed corpus
(``fuzz/corpus/<harness>``) in a temporary directory, so the repository is never
modified, for :data:`SECONDS_PER_HARNESS` seconds: about 45 seconds for the
eight. Longer runs: ``python fuzz/run.py --minutes 10`` (see ``fuzz/README.md``).
A crash found here or there becomes a test in ``tests/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
HARNESSES = (
    "packet",
    "frames",
    "noise_responder",
    "noise_initiator",
    "codec",
    "client",
    "client_established",
    "server",
)
SECONDS_PER_HARNESS = 3
#: Harnesses that parse the JSON of application messages get its dictionary.
USES_DICTIONARY = ("codec", "client_established", "server")
#: What atheris and libFuzzer print when an input fails.
CRASH_MARKERS = ("Uncaught Python exception", "ERROR: libFuzzer", "==ERROR", "Test unit written")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install -e '.[dev]'), so the fuzz harnesses cannot run",
)


def _executions(output: str) -> int:
    found = re.findall(r"stat::number_of_executed_units:\s*(\d+)", output)
    return int(found[-1]) if found else 0


@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_fuzzes_without_a_crash(harness: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / harness, corpus)
    seeds = len(list(corpus.iterdir()))
    assert seeds > 0, f"fuzz/corpus/{harness} is empty: run python fuzz/make_corpus.py"
    done = subprocess.run(
        [
            sys.executable,
            str(FUZZ / f"fuzz_{harness}.py"),
            str(corpus),
            f"-max_total_time={SECONDS_PER_HARNESS}",
            "-timeout=20",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            f"-artifact_prefix={tmp_path}/",
            *([f"-dict={FUZZ / 'json.dict'}"] if harness in USES_DICTIONARY else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"fuzz_{harness}.py exited {done.returncode}:\n{output[-4000:]}"
    for marker in CRASH_MARKERS:
        assert marker not in output, f"fuzz_{harness}.py reported a crash:\n{output[-4000:]}"
    artifacts = sorted(p.name for p in tmp_path.iterdir() if p.name != "corpus")
    assert not artifacts, f"fuzz_{harness}.py wrote {artifacts}:\n{output[-4000:]}"
    # It ran the seeds and then mutated them, not only replayed the corpus.
    assert _executions(output) > seeds, output[-4000:]


_REPLAY = """
import importlib, pathlib, sys
fuzz = pathlib.Path(sys.argv[1])
sys.path.insert(0, str(fuzz))
for name in sys.argv[2:]:
    module = importlib.import_module("fuzz_" + name)  # importing runs no fuzzing
    for seed in sorted((fuzz / "corpus" / name).iterdir()):
        module.fuzz_one_input(seed.read_bytes())
        module.fuzz_one_input(seed.read_bytes())  # fresh state each time: same outcome
print("replayed")
"""


def test_harnesses_import_without_running_and_pass_their_seeds() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _REPLAY, str(FUZZ), *HARNESSES],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("replayed"), done.stdout + done.stderr
