"""The load benchmarks still run: each one's ``--quick --json``, at its smallest sizes
(:data:`SMALLEST`), exits 0 and prints one JSON object with its keys. Nothing is
asserted about the figures (the machine is shared, timings move); the point is that
the benchmarks cannot rot unnoticed, and every step of each still runs.

The four runs take about 20 s of CPU together (each in its own test, on the
suite's processes); the figures come from the full runs (``benchmarks/README.md``).
``cluster.py`` needs PostgreSQL and NATS: without them it is skipped, unless
``UDPCHAT_REQUIRE_SERVICES=1`` (CI), where it fails (``tests/services.py``).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.services import NATS_URL, POSTGRES_URL, postgres_database, require_nats

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

#: Each benchmark, the keys its JSON must have, and the longest it may take
#: (about four times what it takes on the project's machine).
CASES = {
    "client_crypto.py": ({"messages", "cpu_ms", "wall_ms"}, 60),
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
            "e2ee_server_cpu_us_per_msg",
            "e2ee_cpu_ratio",
            "e2ee_at_rate_cpu_ratio",
            "e2ee_decrypted",
            "e2ee_undecryptable",
        },
        150,
    ),
    "sessions.py": ({"bytes_per_idle_conn", "rss_bytes_per_idle_conn", "sizes"}, 90),
    # (its set-up hashes at the default scrypt cost, 128 MiB a hash: 10 s alone, over
    # a minute beside five other test processes, and past 120 s beside seven; one
    # login in the burst, not two, spares two of its eight hashes)
    "logins.py": ({"p99_without_ms", "p99_with_burst_ms", "p99_delta_ms", "logins"}, 300),
    "lowload.py": ({"rates"}, 90),
    "cluster.py": (
        {
            "sqlite_msgs_per_s",
            "one_node_msgs_per_s",
            "two_nodes_msgs_per_s",
            "two_over_one",
            "cross_node_p50_ms",
            "cross_node_p99_ms",
            "same_node_p50_ms",
            "same_node_p99_ms",
            "configurations",
            # (each configuration's floor: floor.py, measured in the same run)
            "cross_node_floor_p99_after_ms",
            "cross_node_p99_after_over_floor",
            "over_floor",
        },
        150,
    ),
}
#: What a benchmark needs beyond this machine's Python: the services it is pointed at.
SERVICES = {"cluster.py": ["--postgres", POSTGRES_URL, "--nats", NATS_URL]}
#: The fewest processes, connections and hashes that still run every step: a smoke
#: test, not a measurement (``--quick`` alone is for a developer's look at the figures).
SMALLEST = {
    "client_crypto.py": [],
    "relay.py": ["--workers", "1", "--pairs", "2"],
    "sessions.py": ["--sizes", "200"],
    "logins.py": ["--logins", "1", "--pairs", "1", "--rate", "200"],
    "lowload.py": ["--workers", "1", "--pairs", "2"],
    "cluster.py": ["--workers", "1", "--pairs", "2"],
}


#: Seconds each run takes in the README's command on the project's machine (the
#: longest start first: tests/conftest.py).
SUITE_SECONDS = {"logins.py": 73, "cluster.py": 70, "relay.py": 26, "sessions.py": 24}


def _benchmark(name: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run ``benchmarks/NAME ARGS`` to completion from the checkout, output captured."""
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.e2e  # (real processes: the benchmark, its server and load generators)
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.slow(seconds=SUITE_SECONDS.get(name, 10)))
        for name in sorted(CASES)
    ],
)
def test_benchmark_runs_quick(name: str) -> None:
    keys, timeout = CASES[name]
    if name in SERVICES:
        require_nats()  # skips (or fails, in CI) when a service cannot be reached
        with postgres_database():
            pass
    done = _benchmark(
        name, "--quick", "--json", *SMALLEST[name], *SERVICES.get(name, []), timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout[-3000:]  # one JSON object, nothing else
    figures = json.loads(lines[0])
    assert keys <= set(figures), keys - set(figures)
    if name == "relay.py":
        for step in figures["latency"]:
            assert {"offered", "achieved", "p50_ms", "p99_ms"} <= set(step)
        # Every encrypted delivery decrypted afterwards (the run fails otherwise).
        assert figures["e2ee_decrypted"] > 0 and figures["e2ee_undecryptable"] == 0


@pytest.mark.slow
@pytest.mark.e2e  # (real processes: the benchmark, its nodes and load generators)
def test_the_cluster_benchmark_measures_latency_alone() -> None:
    require_nats()
    with postgres_database():
        pass
    done = _benchmark(
        "cluster.py",
        "--quick",
        "--json",
        "--latency-only",
        "--only",
        "one_node",
        *SMALLEST["cluster.py"],
        *SERVICES["cluster.py"],
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert set(figures["latency"]) == {"one_node"}
    assert {"p50_ms", "p99_ms", "achieved"} <= set(figures["latency"]["one_node"])


@pytest.mark.slow(seconds=10)
@pytest.mark.e2e  # (real processes: the benchmark, its server and load generator)
def test_the_low_load_benchmark_reshapes_the_acknowledgements() -> None:
    # Each message brings the server its send and, by default, its own
    # ack_delivery: two datagrams at least. Acknowledged 8 at a time, with the
    # transport's ACKs riding on data for up to 0.5 s, it brings the send, an
    # eighth of an ack_delivery and at most one ACK for every second delivery
    # (the transport acknowledges every second packet at once).
    done = _benchmark(
        "lowload.py",
        "--quick",
        "--json",
        *SMALLEST["lowload.py"],
        "--max-ack-delay",
        "0.5",
        "--ack-every",
        "8",
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (window,) = json.loads(done.stdout)["rates"]
    assert (window["max_ack_delay"], window["ack_every"]) == (0.5, 8)
    assert window["delivered"] > 0
    assert window["datagrams_in_per_msg"] < 1.9


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (("--ack-every", "32"), "--ack-every must be 1 to 31"),
        (("--max-ack-delay", "0.004"), "--max-ack-delay: ack_timer_slack must be less"),
    ],
)
def test_the_low_load_benchmark_refuses_acknowledgements_that_would_stall(
    option: tuple[str, str], said: str
) -> None:
    done = _benchmark("lowload.py", *option, timeout=30)
    assert done.returncode == 2 and said in done.stderr, done.stderr


def test_the_servers_acknowledgement_delay_is_set_where_the_server_builds_its_config() -> None:
    # The shaped run's datagrams in a message say the clients' side took; the
    # server's side is this patch of its configuration builder, which its main()
    # calls: checked in a process of its own, as the server's is.
    check = (
        f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import relay; "
        "exec(relay.AckShape(max_ack_delay=0.5).server_preamble()); "
        "from udpchat_server import cli; print(cli._config({}, None).transport.max_ack_delay)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout) == (0, "0.5\n"), done.stderr
    source = (ROOT / "src" / "udpchat_server" / "cli.py").read_text()
    assert "config = _config(" in source  # (main builds it there: the patch takes)


def test_the_cluster_benchmark_runs_some_configurations_only_for_latency() -> None:
    done = _benchmark("cluster.py", "--only", "one_node", timeout=30)
    assert done.returncode == 2 and "--only goes with --latency-only" in done.stderr


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plots_are_drawn_from_the_summaries(tmp_path: Path) -> None:
    plots = _load("plots")
    steps = [
        {"offered": rate, "p50_ms": p50, "p99_ms": p99, "p99_ms_min": p99 / 2, "p99_ms_max": p99}
        for rate, p50, p99 in [(1000, 1.0, 4.0), (5000, 9.0, 30.0)]
    ]
    relay = {"latency": steps, "udpchat_msgs_per_s": 9000.0, "connections": 64}
    scaling = [
        {"workers": n, "udpchat_msgs_per_s": 5000.0 * n, "raw_relay_msgs_per_s": 1e5 * n}
        for n in (1, 2)
    ]
    sessions = {
        "store": "sqlite",
        "sizes": [
            {"connections": 1000, "rss_bytes_per_conn": 5000.0, "traced_bytes_per_conn": 3800.0},
            {"connections": 100_000, "rss_bytes_per_conn": 4200.0, "traced_bytes_per_conn": None},
        ],
    }
    drawn = [
        plots.latency_plot(relay, tmp_path),
        plots.scaling_plot(scaling, tmp_path),
        plots.memory_plot(sessions, tmp_path),
    ]
    assert [p.name for p in drawn] == ["latency.png", "throughput.png", "memory.png"]
    for path in drawn:
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_profile_is_split_by_the_innermost_layer_that_matches(tmp_path: Path) -> None:
    layers = _load("layers")
    raw = tmp_path / "server.txt"
    run = "<module> (<string>:1);ServerLoop.run (udpchat_server/loop.py:160)"
    handler = f"{run};ServerCore._dispatch (udpchat_proto/chat/core.py:600)"
    raw.write_text(
        f"{handler};SQLiteStore.add_message (udpchat_server/stores/sqlite.py:800) 30\n"
        f"{run};ServerCore.commit (udpchat_proto/chat/core.py:300);"
        "SQLiteStore.commit (udpchat_server/stores/sqlite.py:581) 20\n"
        f"{handler};decode (udpchat_proto/chat/codec.py:174) 25\n"
        f"{run};Connection._seal (udpchat_proto/transport/connection.py:680);"
        "CipherState.seal (udpchat_proto/transport/handshake.py:226) 5\n"
        f"{run};decode_frames (udpchat_proto/transport/packets.py:520) 10\n"
        f"{run} 10\n"
        "garbage line\n"
    )
    shares, functions = layers.split(raw)
    assert shares == {
        "SQLite statements": 0.3,
        "codec (JSON, cattrs)": 0.25,
        "SQLite commit (fsync)": 0.2,
        "transport": 0.1,
        "loop and sockets": 0.1,
        "crypto (ChaCha20-Poly1305)": 0.05,
    }
    assert functions[0] == ("SQLiteStore.add_message (udpchat_server/stores/sqlite.py)", 0.3)


@pytest.mark.e2e  # (real processes: the recording and the replays)
def test_the_relay_replay_feeds_a_fresh_server_what_the_recorded_one_was_given(
    tmp_path: Path,
) -> None:
    # The instruction counts of docs/PERFORMANCE.md come from replays under
    # callgrind; without valgrind, the replay (with each step through its
    # trampoline too) must still do what the recorded server did.
    trace = tmp_path / "encrypted.trace"
    script = str(BENCHMARKS / "relay_replay.py")
    recorded = subprocess.run(
        [sys.executable, script, "record", str(trace), "--encrypted", "--messages", "8"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    )
    assert "128 deliveries" in recorded.stdout
    for steps in ([], ["--steps"]):
        replayed = subprocess.run(
            [sys.executable, script, "replay", str(trace), *steps],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            check=True,
        )
        assert "128 pushed, 128 accepted" in replayed.stdout, replayed.stdout
