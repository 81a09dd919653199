"""The server's log formats: what a remote peer chose never forges or recolours a
log line (issue 23, item 13)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat_proto import ClientDisconnected, CloseCode
from udpchat_server.logformat import JsonFormatter, TextFormatter, escape_controls
from udpchat_server.loop import describe

#: A CLOSE reason as an attacker writes it: a forged line, then ANSI sequences that
#: clear the screen and colour what follows, a bidi override and a line separator.
HOSTILE = (
    "bye\n2026-12-02 09:03:39,202 INFO udpchat_server: [fake] alice logged in"
    "\r\x1b[2J\x1b[31mred\x1b[0m \u202eevil\u2028next\x85\x7f\x00"
)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing to a string through the server's text formatter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter())
    log = logging.getLogger("test_logformat")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield log, out
    finally:
        log.handlers.clear()


def test_a_hostile_close_reason_is_one_escaped_text_line(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = logger
    event = ClientDisconnected(
        connection_id=bytes.fromhex("4cb81ee9a0a0a0a0"), code=CloseCode.NORMAL_CLOSE, reason=HOSTILE
    )
    log.debug("%s", describe(event))
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n"), text
    line = text[:-1]
    assert line.isprintable(), line  # no escape, control, bidi or separator left
    assert "connection 4cb81ee9 disconnected (normal_close: bye\\n2026-12-02" in line
    assert "\\r\\x1b[2J\\x1b[31mred\\x1b[0m \\u202eevil\\u2028next\\x85\\x7f\\x00)" in line


def test_the_text_format_escapes_any_message_and_the_lines_of_a_traceback(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    """Defence in depth: a remote string that reaches a log call without describe()
    (an argument, an exception's message) is escaped too."""
    log, out = logger
    log.info("node %s left the cluster", "abc\nFORGED")
    try:
        raise ValueError("bad\x1b[31m input")
    except ValueError:
        log.exception("failed on %r", "x")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("node abc\\nFORGED left the cluster")
    assert all(line.isprintable() for line in lines)
    assert lines[-1] == "ValueError: bad\\x1b[31m input"


def test_the_json_format_carries_the_same_escaped_message() -> None:
    record = logging.LogRecord("udpchat_server", logging.INFO, "", 0, "%s", (HOSTILE,), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line)["message"] == escape_controls(HOSTILE)


def test_escaping_leaves_printable_text_as_it_is() -> None:
    for text in ("alice logged in", "café ünïcødé 漢字 🙂", "C:\\path\\n (a backslash stays)", ""):
        assert escape_controls(text) == text


@given(st.text())
def test_any_text_escapes_to_one_printable_line_and_escaping_is_idempotent(text: str) -> None:
    escaped = escape_controls(text)
    assert escaped.isprintable()
    assert escape_controls(escaped) == escaped  # (describe() and the formatter both apply it)
    # Exactly the unprintable characters changed; repr reads the escapes back.
    if "\\" not in text and "'" not in text:
        assert eval(f"'{escaped}'") == text
