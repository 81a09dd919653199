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
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    options = _options(ctx.command)
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        param = options.get(name)
        if param is None or key in ("config", "print-config", "print_config"):
            raise ConfigError(f"{path}: unknown key {key!r} (no such option)")
        if isinstance(value, dict | list):
            raise ConfigError(f"{path}: {key}: expected a single value")
        try:
            defaults[name] = param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise ConfigError(f"{path}: {key}: {exc.message}") from None
    return defaults


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
    if isinstance(value, RateLimit):
        value = f"{value.burst}/{value.interval:g}"
    # A JSON string is a TOML basic string (the same escapes), for any text.
    return json.dumps(str(value), ensure_ascii=False)


def to_toml(command: click.Command, values: dict[str, Any]) -> str:
    """The options in force as a TOML file that ``--config`` reads back (options
    that are unset are shown as comments)."""
    lines = ["# udpchat-server: the configuration in force"]
    for name, param in _options(command).items():
        if getattr(param, "hidden", False):
            continue
        shown = _toml_value(values.get(name))
        lines.append(f"{name} = {shown}" if shown is not None else f"# {name} = (not set)")
    return "\n".join(lines) + "\n"
