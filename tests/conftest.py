"""Fixtures shared by the simulated-network tests of the chat roles, and the
hypothesis profiles.

``stores`` runs a test once per store (the in-memory one of the core and the SQLite
one of the server, on a fresh file), and ``world`` is a :class:`ChatWorld` on it.

Hypothesis: a property test that names no ``max_examples`` follows the profile,
``default`` (100 examples, hypothesis's own count) in the README's commands, or
``deep`` (1,000) with ``pytest --hypothesis-profile=deep`` for a thorough run (after
changing the codec or the messages, say). Neither has a deadline: the suite runs on
several processes of a shared machine, where an example's time measures the
machine's load, not the code.

Bytecode: the suite starts some 1,300 Python processes (servers, CLI commands,
fuzzers, benchmarks); each would compile the project's sources again where
``PYTHONDONTWRITEBYTECODE`` is set (0.07 to 0.1 s of CPU per process, a fifth of a
CLI command's), so the suite and what it starts keep their bytecode caches
(``__pycache__``, ignored by git) whatever that variable says.
"""

from __future__ import annotations

import compileall
import fcntl
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.chat_helpers import ChatWorld, StoreFactory

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# Ctrl-C: some tests send SIGINT to a command (`listen`, a command still loading) and
# expect what a person pressing Ctrl-C gets. A shell without job control (a script,
# `bash -c '... &'`) starts a background command with SIGINT ignored, and whatever it
# starts inherits that: Python then installs no KeyboardInterrupt handler, and the
# command rightly ignores the signal, so those tests hung there and failed (not on a
# terminal). The suite's processes take the default back, so that the commands they
# start (an exec resets a handled signal to its default) get the SIGINT a terminal
# gives, wherever the suite was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    """Once, before any test process starts (not in pytest-xdist's workers): the
    sources' bytecode written now, so that the six workers and the first servers and
    commands of a fresh checkout do not each compile them again at once."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        root = Path(__file__).resolve().parent.parent
        compileall.compile_dir(root / "src", quiet=1)


settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile("deep", max_examples=1000, deadline=None)
settings.load_profile("default")  # (--hypothesis-profile, read later, wins)


SLOW_SECONDS = 20.0
"""What a ``slow`` test that names no ``seconds`` is taken to run for (in the
README's command on the project's two-core machine)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``slow`` tests first, longest first (``@pytest.mark.slow(seconds=...)``),
    the ``exclusive`` ones last, the others in their order: on several processes
    (``-n``) each slow test starts early on a process of its own, and the run does
    not end with one of them still going while the other processes are idle; an
    exclusive test waits for the others, best when they are done.

    pytest-xdist hands each process two tests at first (then one at a time, as
    each ends): the first pairs are made of a long slow test and a short one, so
    that no process starts with two of the longest one after the other."""

    def seconds(item: pytest.Item) -> float:
        slow = item.get_closest_marker("slow")
        assert slow is not None
        return float(slow.kwargs.get("seconds", SLOW_SECONDS))

    def rank(item: pytest.Item) -> tuple[int, float]:
        if item.get_closest_marker("exclusive") is not None:
            return (2, 0.0)
        if item.get_closest_marker("slow") is None:
            return (1, 0.0)
        return (0, -seconds(item))

    items.sort(key=rank)  # (stable: the others keep their order)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    slow = sum(1 for item in items if item.get_closest_marker("slow") is not None)
    if workers > 1 and slow >= 2 * workers:
        first = items[: 2 * workers]
        items[: 2 * workers] = [
            test for i in range(workers) for test in (first[i], first[2 * workers - 1 - i])
        ]


@pytest.fixture(autouse=True)
def _exclusive_runs_alone(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A test marked ``exclusive`` times real processes under a load it makes itself:
    it runs while no other test of the run does, on any of its processes (they hold
    this lock shared; the directory above a process's temporary one is the run's)."""
    base = tmp_path_factory.getbasetemp()
    run = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    exclusive = request.node.get_closest_marker("exclusive") is not None
    with (run / "exclusive.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


@pytest.fixture(params=["memory", "sqlite"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Each store the server can run on, one test run each."""
    return StoreFactory(request.param, tmp_path / "chat.sqlite3")


@pytest.fixture
def world(stores: StoreFactory) -> ChatWorld:
    """A server on that store, and no users yet."""
    return ChatWorld(stores)
