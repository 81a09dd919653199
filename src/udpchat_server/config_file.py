"""``udpchat-server --config FILE``: the options from a TOML file, and
``--print-config``: the options in force, as such a file.

The file's keys are the long option names, with dashes or underscores
(``port = 9999``, ``db = "chat.sqlite3"``, ``max-room-members = 256``,
``message_rate = "10/6"``); each value goes through the option's own type, so it
is checked exactly as on the command line. The file only changes the defaults:
an option given on the command line wins.
"""

from __future__ import annotations

import math
import stat
import tomllib
from pathlib import Path
from typing import Any, Final

import click

from udpchat_proto import RateLimit

from .logformat import escape_controls

__all__ = [
    "MAX_CONFIG_BYTES",
    "ConfigError",
    "defaults_from_toml",
    "load_defaults",
    "to_toml",
    "toml_string",
]

MAX_CONFIG_BYTES: Final = 1024 * 1024
"""A configuration file is a few hundred bytes; a larger one was named by mistake
(a database, a log), and is refused before it is read whole."""
#: The longest value quoted in an error line, and the longest error line.
_SHOWN_MAX: Final = 60
_MESSAGE_MAX: Final = 400

#: Options that are about the file itself, or that only a command line can give.
_NOT_IN_FILES = frozenset({"config", "print_config", "help", "version"})


class ConfigError(Exception):
    """The file cannot be used (the message names the file and the key)."""


def _options(command: click.Command) -> dict[str, click.Parameter]:
    return {
        param.name: param
        for param in command.params
        if param.name is not None and param.name not in _NOT_IN_FILES
    }


def load_defaults(ctx: click.Context, path: Path) -> dict[str, Any]:
    """The options ``path`` sets, converted by each option's type, as a click
    ``default_map``.

    Raises:
        ConfigError: it cannot be read (missing, a directory, not a regular file,
            over :data:`MAX_CONFIG_BYTES`), is not TOML, has a key that is no
            option, or a value that the option refuses.
    """
    return defaults_from_toml(ctx, _read(path), str(path))


def _read(path: Path) -> bytes:
    try:
        kind = path.stat().st_mode
        if stat.S_ISDIR(kind):
            raise ConfigError(f"cannot read {path}: it is a directory, not a configuration file")
        if not stat.S_ISREG(kind):  # (a FIFO would block the start for ever)
            raise ConfigError(f"cannot read {path}: not a regular file")
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"cannot read {path}: over {MAX_CONFIG_BYTES:,} bytes")
    return data


def defaults_from_toml(ctx: click.Context, data: bytes, name: str) -> dict[str, Any]:
    """The options the TOML document ``data`` sets (see :func:`load_defaults`);
    ``name`` names it in errors. Whatever ``data`` holds, this returns or raises
    :class:`ConfigError` (``fuzz/fuzz_config.py`` holds it to that).

    Raises:
        ConfigError: as :func:`load_defaults`; its message is one printable line.
    """
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _error(
            f"{name}: not valid TOML: not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise _error(f"{name}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per level of nested arrays or tables
        raise _error(f"{name}: not valid TOML: arrays or tables nested too deeply") from None
    options = _options(ctx.command)
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        option = key.replace("-", "_")
        param = options.get(option)
        if param is None or getattr(param, "hidden", False):
            raise _error(f"{name}: unknown key {_shown(key)} (no such option)")
        if option in defaults:
            raise _error(f"{name}: {key}: given twice (with dashes and underscores)")
        wanted = _toml_type(param)
        if not wanted.accepts(value):
            raise _error(f"{name}: {key}: expected {wanted.name}, not {_shown(value)}")
        try:
            defaults[option] = param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise _error(f"{name}: {key}: {exc.message}") from None
        except Exception as exc:  # a type's own error: still one line naming the key
            raise _error(f"{name}: {key}: {exc}") from None
    return defaults


def _shown(value: Any) -> str:
    """``value`` for an error line: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."


def _error(message: str) -> ConfigError:
    """One line, printable (a value from the file may hold escapes), not a page."""
    message = escape_controls(message)
    if len(message) > _MESSAGE_MAX:
        message = message[: _MESSAGE_MAX - 3] + "..."
    return ConfigError(message)


class _Wanted:
    """The TOML type an option takes (TOML is stricter than a command line: a
    port is never ``true``, a count never ``2.9``)."""

    def __init__(self, name: str, accepts: Any) -> None:
        self.name = name
        self.accepts = accepts


def _toml_type(param: click.Parameter) -> _Wanted:
    kind = param.type
    if isinstance(param, click.Option) and param.is_flag:
        return _Wanted("true or false", lambda v: isinstance(v, bool))
    if isinstance(kind, click.types.IntParamType):
        return _Wanted("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool))
    if isinstance(kind, click.types.FloatParamType):
        return _Wanted(
            "a number",
            lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
        )
    return _Wanted("a non-empty string", lambda v: isinstance(v, str) and v != "")


def _toml_value(value: Any) -> str | None:
    """``value`` as a TOML value, or None for an unset option."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, RateLimit):  # (exact: the file reads back the same)
        interval = value.interval
        shown = str(int(interval)) if interval == int(interval) else repr(interval)
        value = f"{value.burst}/{shown}"
    return toml_string(str(value))


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string that ``tomllib`` reads back as ``text``.

    TOML forbids the control characters but tab, and DEL, in a basic string (a
    JSON string is not enough: it leaves DEL as it is); everything unprintable is
    escaped here (\\uXXXX), so the file also reads the same in a terminal.

    Raises:
        ValueError: ``text`` holds a lone surrogate (a path that is not UTF-8, as
            Python decodes it): no TOML document can hold it.
    """
    parts = ['"']
    for char in text:
        if char in _TOML_ESCAPES:
            parts.append(_TOML_ESCAPES[char])
        elif char.isprintable():
            parts.append(char)
        elif 0xD800 <= ord(char) <= 0xDFFF:
            raise ValueError(f"{text!r} is not valid UTF-8, which TOML cannot hold")
        elif ord(char) <= 0xFFFF:
            parts.append(f"\\u{ord(char):04X}")
        else:
            parts.append(f"\\U{ord(char):08X}")
    parts.append('"')
    return "".join(parts)


_TOML_ESCAPES: Final = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def to_toml(
    command: click.Command, values: dict[str, Any], derived: dict[str, Any] | None = None
) -> str:
    """The options in force as a TOML file that ``--config`` reads back. Options
    that are unset are comments; so are ``derived`` ones, with the value their
    default works out to (from the database path: left unset, they follow it).

    Raises:
        ConfigError: a value no TOML document can hold (a path that is not UTF-8).
    """
    lines = ["# udpchat-server: the configuration in force"]
    derived = derived or {}
    for name, param in _options(command).items():
        if getattr(param, "hidden", False):
            continue
        try:
            shown = _toml_value(values.get(name))
            default = _toml_value(derived.get(name))
        except ValueError as exc:
            raise _error(f"--print-config: {name}: {exc}") from None
        if shown is not None:
            lines.append(f"{name} = {shown}")
        elif default is not None:
            lines.append(f"# {name} = {default}  (the default)")
        else:
            lines.append(f"# {name} = (not set)")
    return "\n".join(lines) + "\n"
