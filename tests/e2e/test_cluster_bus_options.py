"""The real ``udpchat-server`` and its ``--bus`` options: nodes sign in to a NATS
server that asks for a password, and no log line ever shows it; options that
cannot work stop the start with one line, before anything is opened; the
options go through ``--config`` and ``--print-config`` as the others do."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.services import postgres_database

from .cluster_helpers import Nats, read_events, texts
from .conftest import ServerProcess, User, befriend, server_command, wait_until_online

pytestmark = pytest.mark.e2e

PASSWORD = "pw-s3cret-do-not-log"
SOME_POSTGRES = "postgresql://postgres@127.0.0.1:1/never-opened"


@pytest.mark.slow(seconds=18)
def test_nodes_sign_in_with_a_password_that_no_log_line_shows(tmp_path: Path) -> None:
    bus = Nats("--user", "node", "--pass", PASSWORD).start()
    url = bus.url.replace("nats://", f"nats://node:{PASSWORD}@")
    try:
        with postgres_database() as database:
            key = tmp_path / "cluster.key"
            nodes: list[ServerProcess] = []
            for name, bus_url in (("a", url), ("b", url), ("c", url.replace("s3cret", "wrong"))):
                (tmp_path / name).mkdir()
                nodes.append(
                    ServerProcess(
                        tmp_path / name, database_url=database, key_file=key,
                        options=("--bus", bus_url),
                    ).start()
                )  # fmt: skip
            node_a, node_b, outsider = nodes
            try:
                alice = User("alice", tmp_path / "home-alice", node_a)
                bob = User("bob", tmp_path / "home-bob", node_b)
                alice.signup()
                bob.signup()
                befriend(alice, bob)
                listener = bob.listen("--for", "20")
                try:
                    wait_until_online(alice, "bob")  # node A heard node B
                    alice.ok("send", "bob", "across")
                    events = read_events(listener, lambda ev: "across" in texts(ev), 10)
                finally:
                    listener.kill()
                    listener.communicate(timeout=10)
                assert texts(events) == ["across"]
                # The node with the wrong password serves, says why, and keeps trying.
                carol = User("carol", tmp_path / "home-carol", outsider)
                carol.signup()
                deadline = time.monotonic() + 15
                while "cannot reach the bus" not in outsider.log_text():
                    assert time.monotonic() < deadline, outsider.log_text()
                    time.sleep(0.1)
                assert "Authorization Violation" in outsider.log_text()
            finally:
                for node in nodes:
                    node.stop()
                    node.kill()
            shown = f"nats://node:***@127.0.0.1:{bus.port}"
            assert f"joined the bus at {shown}" in node_a.log_text()
            for node in nodes:
                assert PASSWORD not in node.log_text()
                assert "s3cret" not in node.log_text().replace("***", "")
    finally:
        bus.stop()


def test_bus_options_that_cannot_work_stop_the_start_with_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    start = ("--port", "0", "--key-file", str(tmp_path / "k"))
    cases = {
        "error: --bus-ca needs --bus": (*start, "--bus-ca", str(junk)),
        "error: --bus takes nats://HOST:PORT or tls://HOST:PORT, not 'http://u:***@h:1'": (
            *start, "--db", SOME_POSTGRES, "--bus", f"http://u:{PASSWORD}@h:1",
        ),
        "error: --bus-ca and --bus-cert need a tls:// --bus URL": (
            *start, "--db", SOME_POSTGRES, "--bus", "nats://h:1", "--bus-ca", str(junk),
        ),
        f"error: --bus-ca {junk}: ": (
            *start, "--db", SOME_POSTGRES, "--bus", "tls://h:1", "--bus-ca", str(junk),
        ),
        f"error: --bus-nkey {junk}: not an nkey seed": (
            *start, "--db", SOME_POSTGRES, "--bus", "nats://h:1", "--bus-nkey", str(junk),
        ),
        f"error: --bus-creds {tmp_path / 'none'}: No such file": (
            *start, "--db", SOME_POSTGRES, "--bus", "nats://h:1",
            "--bus-creds", str(tmp_path / "none"),
        ),
    }  # fmt: skip
    for message, args in cases.items():
        done = server_command(*args)
        assert done.returncode == 1, (message, done)
        assert done.stderr.startswith(message), (message, done.stderr)
        assert done.stderr.count("\n") == 1 and PASSWORD not in done.stderr, done.stderr
        assert done.stdout == ""
    assert not (tmp_path / "k").exists()  # refused before anything was made


def test_bus_options_come_from_a_config_file_and_read_back(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        'bus = "tls://bus.example:4222"\n'
        'bus-creds = "/etc/udpchat/node.creds"\n'
        'bus_ca = "/etc/udpchat/ca.pem"\n'
    )
    done = server_command("--config", str(config), "--print-config")
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert 'bus = "tls://bus.example:4222"' in lines
    assert 'bus_creds = "/etc/udpchat/node.creds"' in lines
    assert 'bus_ca = "/etc/udpchat/ca.pem"' in lines
    assert "# bus_nkey = (not set)" in lines and "# bus_cert = (not set)" in lines
    again = tmp_path / "again.toml"
    again.write_text(done.stdout)
    assert server_command("--config", str(again), "--print-config").stdout == done.stdout
