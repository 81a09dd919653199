"""Fuzz the TOML configuration loader, ``udpchat-server --config FILE``.

Each input is a configuration file's bytes. ``defaults_from_toml`` (what
``--config`` does once the file is read) must return the options it sets or raise
``ConfigError`` with one short, printable line naming the file: never
RecursionError, UnicodeDecodeError or a type's own exception. What it accepts must
print (``to_toml``, as ``--print-config`` does) as TOML that reads back to the same
options.

Seed corpus: ``fuzz/corpus/config`` (``docs/OPERATIONS.md``'s example, the
defaults as ``--print-config`` prints them, and some broken files;
``fuzz/make_corpus.py``). Run: ``python fuzz/fuzz_config.py fuzz/corpus/config``
(libFuzzer flags follow).
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["udpchat_server", "tomllib"]):
    import click

    from udpchat_server.cli import command
    from udpchat_server.config_file import ConfigError, defaults_from_toml, to_toml

NAME = "fuzz.toml"


def fuzz_one_input(data: bytes) -> None:
    """Load ``data`` as a configuration file; print what it sets and load that."""
    context = click.Context(command)
    try:
        defaults = defaults_from_toml(context, data, NAME)
    except ConfigError as exc:
        message = str(exc)
        if not message.startswith(f"{NAME}: ") or not message.isprintable():
            raise AssertionError(f"not one line naming the file: {message!r}") from exc
        if len(message) > 400:
            raise AssertionError(f"an error line of {len(message)} characters") from exc
        return
    printed = to_toml(command, defaults)
    again = defaults_from_toml(context, printed.encode(), "printed.toml")
    if again != defaults:
        raise AssertionError(f"{defaults!r} printed as\n{printed}\nreads back as {again!r}")


def main() -> None:
    """Hand ``sys.argv`` (corpus directories, libFuzzer flags) to atheris."""
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
