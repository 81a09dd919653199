"""Issue 26 end to end on one real server (SQLite): two users with two devices each
and a room of five whose devices come and go, every command after the set-up
through a 30% loss proxy, the server killed with SIGKILL (and restarted on its
database, key file and port) while every device sends. Every device decrypts
everything it receives, once, in order; a device ended or a member gone reads
nothing sent after; nothing is ever undecryptable (the scenario and its checks:
:mod:`tests.e2e.e2ee_churn`). The figures are printed (``pytest -s``)."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from .conftest import ServerProcess
from .e2ee_churn import SEED, WEATHER, Churn, restart, run_scenario
from .udp_proxy import LossyProxy

pytestmark = pytest.mark.e2e


@pytest.mark.slow(seconds=49)
def test_devices_come_and_go_over_loss_and_a_sigkill(tmp_path: Path) -> None:
    started = time.monotonic()
    same = functools.partial(
        ServerProcess, tmp_path, db=tmp_path / "chat.sqlite3", key_file=tmp_path / "server.key"
    )
    servers = [same().start()]
    try:
        port = servers[0].port

        def crash() -> None:
            # SIGKILL: no last commit, no reply (its exit awaited longer than usual:
            # on a loaded machine a process in an fsync dies only when it returns).
            servers[-1].kill(timeout=60.0)
            servers.append(restart(functools.partial(same, port=port)))

        with LossyProxy(
            ("127.0.0.1", port), seed=SEED, upstream=WEATHER, downstream=WEATHER
        ) as proxy:
            churn = Churn(tmp_path, lambda _d: proxy.address_text, lambda _d: servers[-1].address)
            figures = run_scenario(churn, crash)
            stats = proxy.snapshot()
        took = time.monotonic() - started
        print(f"seed {SEED}: {figures}; {churn.phases}; {took:.1f} s; proxy {stats}")
        assert len(servers) == 2, "the server was never killed"
        # The weather really was bad, both ways.
        for direction in ("up", "down"):
            assert stats[direction].dropped >= 0.2 * stats[direction].received, stats
    finally:
        for server in servers:
            server.stop()
            server.kill()
