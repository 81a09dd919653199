"""The real server on PostgreSQL (``--db postgresql://...``): the CLI's flow works as
on SQLite, and what was acknowledged is there after a restart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.services import postgres_database

from .conftest import PASSWORD, ServerProcess, User, clean_env

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
            alice.ok("invite", "bob")
            bob.ok("accept", "alice")
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
