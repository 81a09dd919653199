"""What an operator does with a real ``udpchat-server``: configure it from a file,
print the configuration, scrape its metrics, act on accounts through the control
socket (``udpchat-server ctl``), take a backup while it runs, read JSON logs."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    PASSWORD,
    ServerProcess,
    User,
    befriend,
    server_command,
    wait_until_online,
)

pytestmark = pytest.mark.e2e


def ctl(server: ServerProcess, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``udpchat-server ctl --db DB --json ARGS`` (the default control socket)."""
    return server_command("ctl", "--db", str(server.db), "--json", *args, stdin=stdin)


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done
    answer = json.loads(done.stdout)
    assert answer["ok"] is True
    return answer


# --- configuration --------------------------------------------------------------------------


def test_a_config_file_sets_options_and_the_command_line_wins(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        'port = 1\nmax-room-members = 2\nmessage_rate = "50/1"\npublic_presence = true\n'
    )
    server = ServerProcess(tmp_path, options=("--config", str(config))).start()
    try:
        assert server.port != 1  # --port 0 on the command line won
        users = [User(name, tmp_path / f"home-{name}", server) for name in ("a1", "b2", "c3")]
        for user in users:
            user.signup()
        users[0].ok("join", "#two")
        users[1].ok("join", "#two")
        users[2].refused("room_full", "join", "#two")  # the file's max_room_members
    finally:
        server.stop()
        server.kill()


def test_print_config_shows_what_is_in_force_as_toml_that_reads_back(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('max_room_members = 7\ndb = "from-file.sqlite3"\n')
    done = server_command("--config", str(config), "--port", "4242", "--print-config")
    assert done.returncode == 0, done
    printed = tomllib.loads(done.stdout)
    assert printed["max_room_members"] == 7
    assert printed["db"] == "from-file.sqlite3"
    assert printed["port"] == 4242  # the command line won
    assert printed["message_rate"] == "30/0.2"  # a default, as in force
    # What it prints is a config file that gives the same configuration.
    again = tmp_path / "again.toml"
    again.write_text(done.stdout)
    assert server_command("--config", str(again), "--print-config").stdout == done.stdout


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("colour = 3\n", "colour"),
        ("port = 70000\n", "port"),
        ('max-room-members = "many"\n', "max-room-members"),
        ('message_rate = "fast"\n', "message_rate"),
        ("port = [1, 2]\n", "port"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_exits_1_with_one_line_naming_the_key(
    tmp_path: Path, text: str, named: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    done = server_command("--config", str(config), "--db", str(tmp_path / "db.sqlite3"))
    assert done.returncode == 1, done
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert named in done.stderr
    assert not (tmp_path / "db.sqlite3").exists()  # it never started


def test_a_missing_config_file_is_one_error_line(tmp_path: Path) -> None:
    done = server_command("--config", str(tmp_path / "nope.toml"))
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot read") and done.stderr.count("\n") == 1


# --- metrics --------------------------------------------------------------------------------


def scrape(server: ServerProcess) -> dict[str, float]:
    match = re.search(r"metrics on http://([\d.]+):(\d+)/metrics", server.log_text())
    assert match, server.log_text()
    url = f"http://{match.group(1)}:{match.group(2)}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_are_served_in_prometheus_format_and_move(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, options=("--metrics", "127.0.0.1:0")).start()
    try:
        alice = User("alice", tmp_path / "home-alice", server)
        bob = User("bob", tmp_path / "home-bob", server)
        alice.signup()
        bob.signup()
        befriend(alice, bob)
        alice.ok("send", "bob", "counted")
        alice.refused("not_friends", "send", "carol", "nobody")
        # The snapshot is refreshed every second: wait (bounded) until it has seen
        # the last command, however loaded the machine.
        deadline = time.monotonic() + 15
        while (values := scrape(server)).get('udpchat_refusals_total{code="not_friends"}') != 1:
            assert time.monotonic() < deadline, values
            time.sleep(0.2)
        for name in (
            "udpchat_datagrams_received_total",
            "udpchat_datagrams_sent_total",
            "udpchat_handshakes_total",
            "udpchat_connections",
            "udpchat_sessions_logged_in",
            "udpchat_online_users",
            "udpchat_messages_delivered_total",
            "udpchat_commits_total",
            "udpchat_uptime_seconds",
        ):
            assert name in values, name
        assert values["udpchat_datagrams_received_total"] > 10
        assert values["udpchat_messages_stored_total"] == 1
        assert values["udpchat_handshakes_total"] >= 8
        assert values['udpchat_refusals_total{code="not_friends"}'] == 1
        assert values["udpchat_commit_seconds_count"] >= 4
        assert values['udpchat_commit_seconds_bucket{le="+Inf"}'] >= 4
    finally:
        server.stop()
        server.kill()


def test_metrics_on_a_port_alone_listen_on_loopback(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, options=("--metrics", "0")).start()
    try:
        assert "metrics on http://127.0.0.1:" in server.log_text()
        assert "udpchat_uptime_seconds" in scrape(server)
    finally:
        server.stop()
        server.kill()


# --- the control socket ---------------------------------------------------------------------


def test_ctl_status_users_kick_and_the_socket_s_mode(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        control = Path(f"{server.db}.ctl")
        assert stat.S_ISSOCK(control.stat().st_mode)
        assert stat.S_IMODE(control.stat().st_mode) == 0o600
        alice = User("alice", tmp_path / "home-alice", server)
        bob = User("bob", tmp_path / "home-bob", server)
        alice.signup()
        bob.signup()
        befriend(alice, bob)
        listener = bob.listen("--for", "20")
        try:
            wait_until_online(alice, "bob")
            status = ok(ctl(server, "status"))
            assert status["version"] and status["uptime"] >= 0
            assert status["online_users"] == 1 and status["connections"] >= 1
            assert status["counters"]["datagrams_in"] > 0
            assert ok(ctl(server, "users"))["users"] == [
                {"user": "alice", "online": False, "disabled": False},
                {"user": "bob", "online": True, "disabled": False},
            ]
            assert [u["user"] for u in ok(ctl(server, "users", "--online"))["users"]] == ["bob"]
            kicked = ok(ctl(server, "kick", "bob"))
            assert kicked == {"ok": True, "user": "bob", "closed": 1}
            out, _err = listener.communicate(timeout=20)
        finally:
            listener.kill()
        assert listener.returncode != 0 or "disconnected" in out
        # His session stays: he carries on without logging in again.
        assert bob.ok("friends")["friends"] == [{"user": "alice", "online": False}]
        text = server_command("ctl", "--db", str(server.db), "users")
        assert text.returncode == 0 and text.stdout.splitlines() == ["alice", "bob"]
    finally:
        server.stop()
        server.kill()
    assert not Path(f"{server.db}.ctl").exists()  # removed at a clean stop


def test_ctl_disable_ends_sessions_and_refuses_logins_until_enabled(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        alice = User("alice", tmp_path / "home-alice", server)
        bob = User("bob", tmp_path / "home-bob", server)
        alice.signup()
        bob.signup()
        befriend(alice, bob)
        listener = bob.listen("--for", "20")
        try:
            wait_until_online(alice, "bob")
            assert ok(ctl(server, "disable", "bob")) == {
                "ok": True,
                "user": "bob",
                "disabled": True,
            }
            out, err = listener.communicate(timeout=20)
        finally:
            listener.kill()
        assert "disabled by the server's operator" in out + err
        assert ok(ctl(server, "users"))["users"][1] == {
            "user": "bob",
            "online": False,
            "disabled": True,
        }
        bob.refused("not_logged_in", "friends")  # his session is gone
        refused = bob.run("login", "bob", "--password-stdin", stdin=PASSWORD + "\n")
        assert refused.code == 1 and refused.json["error"] == "account_disabled"
        assert refused.err == (
            "error: this account is disabled by the server's operator; ask them to enable it\n"
        )
        # A wrong password learns nothing about it.
        wrong = bob.run("login", "bob", "--password-stdin", stdin="not the password\n")
        assert wrong.json["error"] == "bad_credentials"
        ok(ctl(server, "enable", "bob"))
        assert bob.ok("login", "bob", "--password-stdin", stdin=PASSWORD + "\n")["ok"]
    finally:
        server.stop()
        server.kill()


def test_ctl_reset_password_ends_sessions_and_sets_the_new_one(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        bob = User("bob", tmp_path / "home-bob", server)
        bob.signup()
        new = "a completely new passphrase"
        ok(ctl(server, "reset-password", "bob", "--password-stdin", stdin=new + "\n"))
        bob.refused("not_logged_in", "friends")
        wrong = bob.run("login", "bob", "--password-stdin", stdin=PASSWORD + "\n")
        assert wrong.json["error"] == "bad_credentials"
        assert bob.ok("login", "bob", "--password-stdin", stdin=new + "\n")["ok"]
        short = ctl(server, "reset-password", "bob", "--password-stdin", stdin="short\n")
        assert short.returncode == 1 and json.loads(short.stdout)["error"] == "invalid_password"
    finally:
        server.stop()
        server.kill()


def test_ctl_refusals_exit_1_and_no_server_exits_3(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        for command in ("disable", "enable", "kick"):
            done = ctl(server, command, "nobody")
            assert done.returncode == 1, done
            assert json.loads(done.stdout)["error"] == "unknown_user"
            assert done.stderr == "error: no user named nobody\n"
        done = ctl(server, "reset-password", "nobody", "--password-stdin", stdin=PASSWORD + "\n")
        assert done.returncode == 1 and json.loads(done.stdout)["error"] == "unknown_user"
    finally:
        server.stop()
        server.kill()
    gone = ctl(server, "status")
    assert gone.returncode == 3
    assert json.loads(gone.stdout)["error"] == "unreachable"
    assert gone.stderr.startswith("error: no server answers on ")
    usage = server_command("ctl", "--db", str(server.db), "fly")
    assert usage.returncode == 2


def test_ctl_backup_is_a_server_with_every_acknowledged_message(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    dest = tmp_path / "backup" / "copy.sqlite3"
    dest.parent.mkdir()
    try:
        alice = User("alice", tmp_path / "home-alice", server)
        bob = User("bob", tmp_path / "home-bob", server)
        alice.signup()
        bob.signup()
        befriend(alice, bob)
        for n in range(5):
            alice.ok("send", "bob", f"before the backup {n}")
        answer = ok(ctl(server, "backup", str(dest)))
        assert answer["dest"] == str(dest) and answer["size"] == dest.stat().st_size
        alice.ok("send", "bob", "after the backup")
        again = ctl(server, "backup", str(dest))
        assert again.returncode == 1 and json.loads(again.stdout)["error"] == "exists"
    finally:
        server.stop()
        server.kill()
    key = Path(f"{dest}.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    restored = ServerProcess(dest.parent, db=dest).start()
    try:
        assert restored.fingerprint == server.fingerprint  # the same server, to clients
        bob = User("bob", tmp_path / "home-bob", restored)
        restored_history = bob.ok("history", "alice")["messages"]
        assert [m["text"] for m in restored_history] == [f"before the backup {n}" for n in range(5)]
    finally:
        restored.stop()
        restored.kill()


def test_an_explicit_control_socket_that_cannot_be_made_stops_the_start(tmp_path: Path) -> None:
    done = server_command(
        "--db",
        str(tmp_path / "db.sqlite3"),
        "--port",
        "0",
        "--control",
        str(tmp_path / "no-such-dir" / "x.ctl"),
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("error: cannot open the control socket")


# --- logs -------------------------------------------------------------------------------


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, options=("--log-format", "json")).start()
    try:
        User("alice", tmp_path / "home-alice", server).signup()
    finally:
        server.stop()
        server.kill()
    lines = [json.loads(line) for line in server.log_text().splitlines()]
    assert lines, "no log lines"
    for entry in lines:
        assert set(entry) >= {"time", "level", "logger", "message", "fields"}
    listening = [e for e in lines if e["message"].startswith("listening on")]
    assert listening and listening[0]["level"] == "info"
    assert any("logged in" in e["message"] for e in lines)  # (--log-level debug)
