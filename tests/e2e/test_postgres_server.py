"""The real server on PostgreSQL (``--db postgresql://...``): the CLI's flow works as
on SQLite, and what was acknowledged is there after a restart."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.services import postgres_database
from udpchat_cli.profiles import Home

from .conftest import PASSWORD, SERVER, ServerProcess, User, befriend, clean_env, run_cli

pytestmark = pytest.mark.e2e


def test_a_server_on_postgresql_keeps_everything_across_a_restart(tmp_path: Path) -> None:
    with postgres_database() as url:
        key = tmp_path / "cluster.key"
        server = ServerProcess(tmp_path, database_url=url, key_file=key).start()
        try:
            alice = User("alice", tmp_path / "home-alice", server)
            bob = User("bob", tmp_path / "home-bob", server)
            alice.signup()
            bob.signup()
            befriend(alice, bob)
            sent = alice.ok("send", "bob", "stored in postgres")
            bob.ok("join", "tea")
            alice.ok("join", "tea")
            alice.ok("send", "#tea", "in the room")
        finally:
            server.stop()
            server.kill()
        # The same database and key: the same server, as far as clients can tell.
        again = ServerProcess(tmp_path, database_url=url, key_file=key, port=server.port).start()
        try:
            bob = User("bob", bob.home, again)
            alice = User("alice", alice.home, again)
            got = bob.ok("inbox")["messages"]
            assert [(x["from"], x["text"]) for x in got] == [
                ("alice", "stored in postgres"),
                ("alice", "in the room"),
            ]
            assert alice.ok("status", sent["id"])["state"] == "delivered"
            assert bob.ok("friends")["friends"] == [{"user": "alice", "online": False}]
            assert alice.ok("passwd", "--password-stdin", stdin=f"{PASSWORD}\nnew secret!\n") == {
                "ok": True
            }
            alice.refused(
                "bad_credentials", "login", "alice", "--password-stdin", stdin=PASSWORD + "\n"
            )
        finally:
            again.stop()
            again.kill()


def test_postgresql_needs_a_key_file(tmp_path: Path) -> None:
    done = ServerProcess(tmp_path, database_url="postgresql://postgres@127.0.0.1:5432/x")
    command = done.command()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=30, check=False, env=clean_env()
    )
    assert result.returncode != 0 and "--key-file is required" in result.stderr


def test_a_single_server_moves_to_postgresql_as_it_is(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = User("alice", tmp_path / "home-alice", server)
    bob = User("bob", tmp_path / "home-bob", server)
    alice.signup()
    bob.signup()
    befriend(alice, bob)
    alice.ok("join", "tea")
    bob.ok("join", "tea")
    alice.ok("send", "bob", "before the move")
    alice.ok("send", "#tea", "room before the move")
    server.stop()
    server.kill()
    with postgres_database() as url:
        moved = subprocess.run(
            [*SERVER, "migrate", "--from", str(server.db), "--to", url],
            capture_output=True, text=True, timeout=60, check=False, env=clean_env(),
        )  # fmt: skip
        assert moved.returncode == 0, moved
        assert "accounts: 2" in moved.stdout and "messages: 2" in moved.stdout
        # Into a database that is not empty: refused, nothing written.
        again = subprocess.run(
            [*SERVER, "migrate", "--from", str(server.db), "--to", url],
            capture_output=True, text=True, timeout=60, check=False, env=clean_env(),
        )  # fmt: skip
        assert again.returncode == 1 and "already has accounts" in again.stderr
        key = server.db.with_name(server.db.name + ".key")  # the same key: the same server
        on_postgres = ServerProcess(
            tmp_path, database_url=url, key_file=key, port=server.port
        ).start()
        try:
            # bob's login session is still valid, and what waited for him comes.
            bob = User("bob", bob.home, on_postgres)
            got = bob.ok("inbox")["messages"]
            assert [x["text"] for x in got] == ["before the move", "room before the move"]
            alice = User("alice", alice.home, on_postgres)
            assert alice.ok("send", "bob", "after the move")["ok"] is True
            assert [x["text"] for x in bob.ok("history", "alice")["messages"]] == [
                "before the move",
                "after the move",
            ]
            alice.ok("logout")
            alice.ok("login", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        finally:
            on_postgres.stop()
            on_postgres.kill()


def free_udp_port() -> int:
    """A loopback UDP port nothing listens on (bound, then let go)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_clients_move_to_another_node_of_the_same_database(tmp_path: Path) -> None:
    with postgres_database() as url:
        key = tmp_path / "cluster.key"
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        node_a = ServerProcess(tmp_path / "a", database_url=url, key_file=key).start()
        node_b = ServerProcess(tmp_path / "b", database_url=url, key_file=key).start()
        try:
            both = f"{node_a.address},{node_b.address}"
            home = tmp_path / "home-alice"
            alice = User("alice", home, node_a)
            alice.signup()  # on node A (its profile remembers A)
            relist = run_cli(
                "--json", "login", "alice", "--password-stdin",
                home=home, server=both, stdin=PASSWORD + "\n",
            )  # fmt: skip
            assert relist.code == 0, relist
            profile = Home(home).load("default")
            assert profile.server == both  # the profile remembers the list
            pins = Home(home).known_servers
            assert pins.get(node_a.address) == pins.get(node_b.address) is not None
            bob = User("bob", tmp_path / "home-bob", node_b)
            bob.signup()
            bob.ok("invite", "alice")
            assert run_cli("--json", "accept", "bob", home=home).code == 0
            node_a.kill()  # SIGKILL: A dies
            # Tried in order: A does not answer, B does, and resumes the same session.
            moved = run_cli("--json", "--timeout", "1", "send", "bob", "from B", home=home)
            assert moved.code == 0, moved
            assert [x["text"] for x in bob.ok("inbox")["messages"]] == ["from B"]
            sessions = run_cli("--json", "--timeout", "1", "sessions", home=home)
            assert sum(s["current"] for s in sessions.json["sessions"]) == 1
        finally:
            for node in (node_a, node_b):
                node.stop()
                node.kill()


def test_a_list_of_nodes_is_tried_in_order(server: ServerProcess, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_udp_port()}"
    home = tmp_path / "home-carol"
    both = f"{dead},{server.address}"
    done = run_cli(
        "--json", "--timeout", "1", "register", "carol", "--password-stdin",
        home=home, server=both, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert done.code == 0, done
    assert run_cli("--json", "--server", "a:1,,", "whoami", home=home).code == 2
