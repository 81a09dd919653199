"""The control socket: whose it is (issue 23, item 8), what its request parser
accepts, and how its accept loop behaves when accept() fails (item 4)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.planted import IS_ROOT, NOBODY, planted_listener, shared_directory
from udpchat_proto import ChatServer, MemoryStore, ServerConfig
from udpchat_proto.chat.passwords import ScryptParams
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport.keys import ServerKey
from udpchat_server.control import (
    ControlError,
    ControlNotOursError,
    ControlSocket,
    ControlUnreachableError,
    ControlUntrustedError,
    call,
    check_peer,
    check_socket_file,
    parse_request,
    trusted_owners,
)
from udpchat_server.operations import Operations

ME, ROOT, STRANGER, SERVICE = 1000, 0, 4242, 998

needs_root = pytest.mark.skipif(not IS_ROOT, reason="becoming another user needs root")


def found(kind: int, uid: int) -> os.stat_result:
    """An lstat result of that kind (stat.S_IFSOCK ...) owned by ``uid``."""
    return os.stat_result((kind | 0o600, 1, 1, 1, uid, uid, 0, 0, 0, 0))


# --- whom the client trusts -----------------------------------------------------------------


def test_the_client_trusts_itself_root_and_the_owner_of_a_private_directory(
    tmp_path: Path,
) -> None:
    private = tmp_path / "state"
    private.mkdir(mode=0o700)
    owner = private.stat().st_uid
    assert trusted_owners(private / "db.ctl", euid=ME) == {ME, ROOT, owner}
    for mode in (0o1777, 0o777, 0o770, 0o730):  # others may write: anyone may have planted it
        private.chmod(mode)
        assert trusted_owners(private / "db.ctl", euid=ME) == {ME, ROOT}, oct(mode)
    assert trusted_owners(tmp_path / "missing" / "db.ctl", euid=ME) == {ME, ROOT}


@pytest.mark.parametrize(
    ("kind", "uid", "refused"),
    [
        (stat.S_IFSOCK, ME, None),
        (stat.S_IFSOCK, ROOT, None),
        (stat.S_IFSOCK, SERVICE, None),
        (stat.S_IFSOCK, STRANGER, "belongs to uid 4242"),
        (stat.S_IFLNK, ME, "symbolic link"),
        (stat.S_IFREG, ME, "not a socket"),
    ],
)
def test_the_socket_file_must_be_a_socket_of_a_trusted_user(
    kind: int, uid: int, refused: str | None
) -> None:
    trusted = frozenset({ME, ROOT, SERVICE})
    path = Path("/srv/chat/db.ctl")
    if refused is None:
        check_socket_file(found(kind, uid), path, trusted)
    else:
        with pytest.raises(ControlUntrustedError, match=refused):
            check_socket_file(found(kind, uid), path, trusted)


def test_the_listener_must_run_as_a_trusted_user() -> None:
    trusted = frozenset({ME, ROOT})
    check_peer(ME, Path("x.ctl"), trusted)
    check_peer(ROOT, Path("x.ctl"), trusted)
    check_peer(None, Path("x.ctl"), trusted)  # (a platform without SO_PEERCRED)
    with pytest.raises(ControlUntrustedError, match="runs as uid 4242"):
        check_peer(STRANGER, Path("x.ctl"), trusted)


def test_a_missing_socket_is_unreachable_not_untrusted(tmp_path: Path) -> None:
    with pytest.raises(ControlUnreachableError, match="no server answers"):
        call(tmp_path / "none.ctl", "status", {})


@needs_root
def test_a_planted_listener_receives_nothing(tmp_path: Path) -> None:
    """A socket another user planted in a shared directory gets no request (a
    reset-password's new password above all): neither when its file is theirs,
    nor when only the process behind it is (the file's owner changed)."""
    with shared_directory() as shared:
        path = shared / "db.sqlite3.ctl"
        with planted_listener(path) as received:
            request = {"user": "alice", "password": "the new password"}
            with pytest.raises(ControlUntrustedError, match=f"belongs to uid {NOBODY}"):
                call(path, "reset-password", request, timeout=5)
            os.chown(path, 0, 0, follow_symlinks=False)  # the file looks like root's now
            with pytest.raises(ControlUntrustedError, match=f"runs as uid {NOBODY}"):
                call(path, "reset-password", request, timeout=5)
            assert received() == b""
        # The same listener, trusted (its user's own): the check lets it through.
        with planted_listener(path) as received:
            answer = call(path, "kick", {"user": "x"}, timeout=5, trusted=frozenset({NOBODY}))
            assert answer["ok"] is True
            assert orjson.loads(received())["command"] == "kick"


# --- what the server uses ---------------------------------------------------------------------


@needs_root
def test_the_server_neither_uses_nor_replaces_another_users_socket() -> None:
    with shared_directory() as shared:
        path = shared / "db.sqlite3.ctl"
        with planted_listener(path):
            with pytest.raises(ControlNotOursError, match=f"belongs to uid {NOBODY}"):
                ControlSocket(path).open()
            assert stat.S_ISSOCK(path.lstat().st_mode)
            assert path.lstat().st_uid == NOBODY  # left where it is
        # A dead one of another user's (not listening): not removed either.
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(path))
        dead.close()
        os.chown(path, NOBODY, NOBODY)
        with pytest.raises(ControlNotOursError):
            ControlSocket(path).open()
        assert path.lstat().st_uid == NOBODY


def test_the_server_does_not_follow_a_link_at_its_socket_path(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.ctl"
    path = tmp_path / "db.sqlite3.ctl"
    path.symlink_to(target)
    with pytest.raises(ControlNotOursError, match="symbolic link"):
        ControlSocket(path).open()
    assert path.is_symlink() and not target.exists()


def test_the_server_replaces_its_own_stale_socket_and_answers(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3.ctl"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    control = ControlSocket(path)
    control.open()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert call(path, "ping", {}, timeout=5) == {"ok": True}
    finally:
        control.close()
    assert not path.exists()


# --- the request parser -------------------------------------------------------------------------


def test_a_request_is_an_object_with_a_command_and_optional_args() -> None:
    assert parse_request(b'{"command": "status"}') == ("status", {})
    assert parse_request(b'{"command": "kick", "args": {"user": "a"}}') == (
        "kick",
        {"user": "a"},
    )
    for bad in (b"", b"[]", b'"status"', b"{}", b'{"command": 1}', b'{"command": "x", "args": 1}'):
        with pytest.raises(ControlError) as caught:
            parse_request(bad)
        assert caught.value.code == "bad_request", bad


@given(st.binary() | st.builds(orjson.dumps, st.recursive(st.none(), st.lists)))
def test_any_bytes_parse_or_are_a_bad_request(data: bytes) -> None:
    try:
        command, args = parse_request(data)
    except ControlError as exc:
        assert exc.code == "bad_request"
    else:
        assert isinstance(command, str) and isinstance(args, dict)


def test_a_malformed_password_record_is_a_bad_request_not_an_internal_error() -> None:
    """Found by fuzz/fuzz_control.py: PasswordHash.from_string raises DecodeError,
    which Operations.run let through (the loop then logged a traceback and
    answered 'internal')."""
    store = MemoryStore()
    server = ChatServer(
        store=store,
        static_key=ServerKey.generate(SeededRandomSource(1)),
        clock=lambda: 1_700_000_000.0,
        config=ServerConfig(scrypt=ScryptParams(n=16)),
    )
    operations = Operations(server, store, counters=dict)
    args = {"user": "alice", "hash": "scrypt$16$1$1$7373"}
    answer = operations.run("reset-password", args, 0.0)
    assert answer["ok"] is False and answer["error"] == "bad_request", answer
