"""Short coverage-guided fuzzing runs of every harness in ``fuzz/`` (atheris).

Each harness runs in its own subprocess, on a copy of its committed seed corpus
(``fuzz/corpus/<harness>``) in a temporary directory, so the repository is never
modified, for :data:`SECONDS_PER_HARNESS` second (libFuzzer's shortest) or its
seeds and :data:`MUTATIONS_PER_HARNESS` more inputs, whichever comes first: about
2 seconds of CPU each, most of it the start-up (atheris instrumenting the imports).
A smoke test that every harness runs, replays its seeds and mutates them (a few
hundred inputs), not a search: that is what longer runs are for,
``python fuzz/run.py --minutes 10`` (see ``fuzz/README.md``).
A crash found here or there becomes a test in ``tests/test_fuzz_regressions.py``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
SECONDS_PER_HARNESS = 1
#: ...or the seeds and this many mutated inputs, whichever comes first. The
#: harnesses run 1,000 to 100,000 inputs a second: a whole second of mutations
#: (the former bound, 20,000 inputs) made this file's tests 33 s of CPU instead of 22
#: (run one at a time), and teaches a smoke test nothing more.
MUTATIONS_PER_HARNESS = 300


def _load_runner() -> ModuleType:
    """fuzz/run.py, the runner developers use, so the test fuzzes the same way."""
    spec = importlib.util.spec_from_file_location("fuzz_runner", FUZZ / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs resolves the module of its classes
    spec.loader.exec_module(module)
    return module


runner = _load_runner()
HARNESSES: tuple[str, ...] = runner.HARNESSES

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("atheris") is None,
        reason="atheris is not installed (pip install -e '.[dev]'): the harnesses cannot run",
    ),
    pytest.mark.e2e,  # (each test runs the harnesses in processes of their own)
]


@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_fuzzes_without_a_crash(harness: str, tmp_path: Path) -> None:
    seeds = len(list((FUZZ / "corpus" / harness).iterdir()))
    assert seeds > 0, f"fuzz/corpus/{harness} is empty: run python fuzz/make_corpus.py"
    artifacts = tmp_path / "artifacts"
    result = runner.run_harness(
        harness,
        SECONDS_PER_HARNESS,
        tmp_path / "work",
        artifacts,
        extra=(f"-runs={seeds + MUTATIONS_PER_HARNESS}",),
        timeout=120,
    )
    output = result.output[-4000:]
    assert result.returncode == 0, f"fuzz_{harness}.py exited {result.returncode}:\n{output}"
    assert not result.crashed, f"fuzz_{harness}.py reported a crash:\n{output}"
    written = sorted(p.name for p in artifacts.iterdir())
    assert not written, f"fuzz_{harness}.py wrote {written}:\n{output}"
    # It ran the seeds and then mutated them, not only replayed the corpus.
    assert result.executions > seeds, output


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
