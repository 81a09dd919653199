"""``udpchat-server --config FILE``: the options from a TOML file, and
``--print-config``: the options in force, as such a file.

The file's keys are the long option names, with dashes or underscores
(``port = 9999``, ``db = "chat.sqlite3"``, ``max-room-members = 256``,
``message_rate = "10/6"``); each value goes through the option's own type, so it
is checked exactly as on the command line. The file only changes the defaults:
an option given on the command line wins.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import click

from udpchat_proto import RateLimit

__all__ = ["ConfigError", "load_defaults", "to_toml"]

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
        ConfigError: it cannot be read, is not TOML, has a key that is no option,
            or a value that the option refuses.
    """
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    options = _options(ctx.command)
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        param = options.get(name)
        if param is None or getattr(param, "hidden", False):
            raise ConfigError(f"{path}: unknown key {key!r} (no such option)")
        if name in defaults:
            raise ConfigError(f"{path}: {key}: given twice (with dashes and underscores)")
        wanted = _toml_type(param)
        if not wanted.accepts(value):
            raise ConfigError(f"{path}: {key}: expected {wanted.name}, not {value!r}")
        try:
            defaults[name] = param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise ConfigError(f"{path}: {key}: {exc.message}") from None
        except Exception as exc:  # a type's own error: still one line naming the key
            raise ConfigError(f"{path}: {key}: {exc}") from None
    return defaults


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
    # A JSON string is a TOML basic string (the same escapes), for any text.
    return json.dumps(str(value), ensure_ascii=False)


def to_toml(
    command: click.Command, values: dict[str, Any], derived: dict[str, Any] | None = None
) -> str:
    """The options in force as a TOML file that ``--config`` reads back. Options
    that are unset are comments; so are ``derived`` ones, with the value their
    default works out to (from the database path: left unset, they follow it)."""
    lines = ["# udpchat-server: the configuration in force"]
    derived = derived or {}
    for name, param in _options(command).items():
        if getattr(param, "hidden", False):
            continue
        shown = _toml_value(values.get(name))
        if shown is not None:
            lines.append(f"{name} = {shown}")
        elif (default := _toml_value(derived.get(name))) is not None:
            lines.append(f"# {name} = {default}  (the default)")
        else:
            lines.append(f"# {name} = (not set)")
    return "\n".join(lines) + "\n"
