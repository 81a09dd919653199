"""Files another local user plants where the server keeps its own: a key file
they wrote (they know the private key), a link at the key or database path
(dangling: SQLite created the database at its target, mode 0644), a database or
``-wal`` file of theirs. The server's user must own what it uses; links are not
followed, except one to an existing database made by this user or root."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from tests.planted import IS_ROOT, NOBODY
from udpchat_proto.randomness import SeededRandomSource
from udpchat_server.cli import StartupError, _claim_database
from udpchat_server.keyfile import KeyFileError, load_or_create_key
from udpchat_server.stores.sqlite import SQLiteStore

needs_root = pytest.mark.skipif(not IS_ROOT, reason="planting as another user needs root")


@needs_root
def test_a_key_file_another_user_wrote_is_refused(tmp_path: Path) -> None:
    """Mode 0600 and 32 good bytes, but written by `nobody`: it was used as the
    server's static key, so its planter held the private key."""
    path = tmp_path / "db.sqlite3.key"
    path.write_bytes(bytes(range(32)))
    os.chmod(path, 0o600)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(KeyFileError) as refused:
        load_or_create_key(path)
    assert str(refused.value).startswith(f"key file {path} belongs to uid {NOBODY}")
    assert "not to this server's user (uid 0)" in str(refused.value)
    os.chown(path, 0, 0)  # the operator's own again: used
    assert load_or_create_key(path)[0].private_bytes == bytes(range(32))


def test_a_link_at_the_key_path_is_never_followed(tmp_path: Path) -> None:
    key = tmp_path / "real.key"
    created, _ = load_or_create_key(key, SeededRandomSource(1))
    link = tmp_path / "db.sqlite3.key"
    link.symlink_to(key)
    with pytest.raises(KeyFileError, match="is a symbolic link: it is never followed"):
        load_or_create_key(link)
    # Dangling: no key is made at its target (nor did a FileNotFoundError escape).
    dangling = tmp_path / "other.key"
    dangling.symlink_to(tmp_path / "elsewhere" / "key")
    with pytest.raises(KeyFileError, match="symbolic link"):
        load_or_create_key(dangling)
    assert not (tmp_path / "elsewhere").exists()
    assert load_or_create_key(key)[0] == created


def test_a_key_path_that_is_no_regular_file_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    done: list[BaseException] = []

    def load() -> None:
        try:
            load_or_create_key(fifo)
        except BaseException as exc:  # (reported below)
            done.append(exc)

    loading = threading.Thread(target=load, daemon=True)
    loading.start()
    loading.join(timeout=5)
    assert not loading.is_alive(), "opening a FIFO waited for a writer"
    assert isinstance(done[0], KeyFileError) and "not a regular file" in str(done[0])


def test_a_new_database_is_created_0600_and_never_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "stolen.sqlite3"
    target.parent.mkdir()
    link = tmp_path / "db.sqlite3"
    link.symlink_to(target)  # dangling, as planted
    with pytest.raises(StartupError) as refused:
        _claim_database(link)
    assert str(refused.value) == (
        f"database {link} is a symbolic link to {target}, which does not exist: "
        "a new database is never created through a link"
    )
    assert not target.exists()
    fresh = tmp_path / "fresh.sqlite3"
    old = os.umask(0)
    try:
        _claim_database(fresh)
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.lstat().st_mode) == 0o600 and fresh.lstat().st_size == 0


def test_a_link_of_this_user_to_an_existing_database_is_taken(tmp_path: Path) -> None:
    """An operator's own link (the database on another disk) still works."""
    real = tmp_path / "disk" / "udpchat.sqlite3"
    real.parent.mkdir()
    SQLiteStore.open(real).close()
    link = tmp_path / "udpchat.sqlite3"
    link.symlink_to(real)
    _claim_database(link)
    _claim_database(real)
    # ... but a -wal (or -shm, -journal) planted beside it as a link is not.
    (real.parent / "udpchat.sqlite3-wal").symlink_to(tmp_path / "where-they-read")
    with pytest.raises(StartupError, match="-wal is a symbolic link: SQLite makes that file"):
        _claim_database(link)


@needs_root
def test_a_database_link_or_file_of_another_user_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "udpchat.sqlite3"
    SQLiteStore.open(real).close()
    link = tmp_path / "db.sqlite3"
    link.symlink_to(real)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(StartupError) as refused:
        _claim_database(link)
    assert str(refused.value) == (
        f"database {link} is a symbolic link that belongs to uid {NOBODY}, not to this "
        "server's user (uid 0) or root: it is not followed"
    )
    planted = tmp_path / "planted.sqlite3"
    planted.write_bytes(b"")
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(StartupError, match=f"belongs to uid {NOBODY}, not to this server's"):
        _claim_database(planted)
    wal = tmp_path / "udpchat.sqlite3-shm"
    wal.write_bytes(b"")
    os.chown(wal, NOBODY, NOBODY)
    with pytest.raises(StartupError, match=f"{wal} belongs to uid {NOBODY}"):
        _claim_database(real)
