"""``--config`` and ``--print-config`` (issue 23, item 14): what is printed reads
back, for any path; any file that cannot be used is one clear error naming it."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat_server.cli import command
from udpchat_server.config_file import (
    MAX_CONFIG_BYTES,
    ConfigError,
    defaults_from_toml,
    load_defaults,
    to_toml,
    toml_string,
)

#: Text as a path may hold it (any character but NUL, which no path holds).
paths = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1)


def printed(**values: Any) -> str:
    """``--print-config``'s text for these option values."""
    return to_toml(command, values)


def read_back(text: str) -> dict[str, Any]:
    """What ``--config`` makes of a file holding ``text``."""
    return defaults_from_toml(click.Context(command), text.encode(), "server.toml")


def test_a_path_with_del_and_escapes_prints_as_valid_toml() -> None:
    """json.dumps (the old encoder) leaves DEL as it is, which TOML forbids."""
    db = "/srv/chat\x7f/\x1b[31mred\u202e.sqlite3"
    text = printed(db=db, host="::1")
    assert "\x7f" not in text and "\x1b" not in text and "\u202e" not in text
    assert tomllib.loads(text)["db"] == db
    assert read_back(text)["db"] == db


@given(db=paths, host=paths)
def test_print_config_reads_back_for_any_path(db: str, host: str) -> None:
    text = printed(db=db, host=host, port=9999)
    assert text.isascii() or all(c.isprintable() for line in text.splitlines() for c in line)
    assert tomllib.loads(text) == {"db": db, "host": host, "port": 9999}
    assert read_back(text) == {"db": db, "host": host, "port": 9999}


@given(paths)
def test_a_toml_string_is_what_tomllib_reads(text: str) -> None:
    assert tomllib.loads(f"x = {toml_string(text)}")["x"] == text


def test_a_path_that_is_not_utf8_is_one_error_not_a_broken_file() -> None:
    db = os.fsdecode(b"/srv/chat-\xff.sqlite3")  # (a lone surrogate in Python)
    with pytest.raises(ConfigError, match=r"^--print-config: db: .* is not valid UTF-8"):
        printed(db=db)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a = " + "[" * 100_000, "arrays or tables nested too deeply"),
        ("a = " + "{b = " * 100_000, "arrays or tables nested too deeply"),
        ("port = 1\n\udcff", "not UTF-8"),  # (the byte 0xff)
        ('port = "\x1b[31m"', "Illegal character '\\x1b'"),
    ],
)
def test_a_document_that_is_not_toml_is_one_error_naming_the_file(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        defaults_from_toml(
            click.Context(command), text.encode("utf-8", "surrogateescape"), "x.toml"
        )
    assert str(caught.value).startswith("x.toml: not valid TOML: ")
    assert message in str(caught.value)
    assert str(caught.value).isprintable()


def test_an_error_line_stays_short_and_printable() -> None:
    key = "k\x1b[2J" * 10_000
    with pytest.raises(ConfigError) as caught:
        read_back(f'"{key}" = 1\n'.replace("\x1b", "\\u001b"))
    assert len(str(caught.value)) <= 400 and str(caught.value).isprintable()
    with pytest.raises(ConfigError) as caught:
        read_back(f'port = "{"9" * 100_000}"\n')
    assert len(str(caught.value)) <= 400


def test_a_directory_a_fifo_or_a_huge_file_is_one_error_naming_it(tmp_path: Path) -> None:
    context = click.Context(command)
    with pytest.raises(ConfigError, match="it is a directory"):
        load_defaults(context, tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_defaults(context, fifo)  # (never opened: it would block for ever)
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="over 1,048,576 bytes"):
        load_defaults(context, huge)
