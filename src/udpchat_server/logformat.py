"""``--log-format``: the server's log lines as text for people, or as one JSON
object per line for a log collector.

Both formats pass every message through :func:`escape_controls`: a log line
carries strings a remote peer chose (a CLOSE frame's reason, a node id from the
bus, a username, an address), and a newline in one of them would forge a log line
of its own, an ANSI sequence would rewrite the operator's terminal, and a bidi
override would make the line read other than it is.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Final

import orjson

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure_logging", "escape_controls"]

LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: What every LogRecord has: anything else was given as ``extra=`` (a field).
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def escape_controls(text: str) -> str:
    """``text`` with every character that is not printable escaped as ``repr``
    escapes it (``\\n``, ``\\x1b``, ``\\u202e``): C0 and C1 controls, DEL, format
    characters such as the bidi overrides, the line and paragraph separators, and
    spaces other than the plain one. What is left is one line that shows what it
    holds. Printable text, accented or not, is unchanged."""
    if text.isprintable():  # (the common case: nothing to do)
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def _escaped(char: str) -> str:
    code = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


_SHORT: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, with the message's control characters escaped (see
    :func:`escape_controls`); a traceback keeps its line breaks, and only them."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        # A traceback is lines by nature, but its exception's message may quote
        # remote input: escape within each line.
        return "\n".join(escape_controls(line) for line in super().formatException(ei).split("\n"))


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "fields"}`` on one line: ``time`` in
    UTC (ISO 8601, microseconds), ``fields`` what the call gave as ``extra=``, and
    ``exception`` the traceback when there is one. The message is escaped as in
    the text format (the JSON encoder alone would keep the escapes, bidi overrides
    and separators that a viewer of the decoded message then shows)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="microseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": escape_controls(record.getMessage()),
            "fields": {key: value for key, value in vars(record).items() if key not in _STANDARD},
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, log_format: str) -> None:
    """Send the logs to stderr, at ``level``, in ``log_format`` ("text" or "json")."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
