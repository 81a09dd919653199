"""Fuzz the control socket's request parser and the commands behind it.

Each input is one request line as ``udpchat-server ctl`` (or anyone who can reach
the socket) sends it. ``udpchat_server.control.parse_request`` must return a
command and its arguments or refuse with ``ControlError("bad_request")``; a parsed
request is then run as the server loop runs it (``Operations.run``, or
``Operations.backup`` with no database to copy: no file is ever written) on a
fresh server on which alice is connected and logged in and bob is registered.

Invariants: nothing else is raised; every answer is a JSON object with a boolean
``ok`` (a refusal with a string ``error``) that the socket can send; and the
server still commits and runs afterwards.

Seed corpus: ``fuzz/corpus/control`` (every command as ctl sends it, and some bad
requests; ``fuzz/make_corpus.py``). Run: ``python fuzz/fuzz_control.py
fuzz/corpus/control`` (libFuzzer flags follow).
"""

from __future__ import annotations

import sys
from typing import Any

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports(include=["udpchat_server", "udpchat_proto", "_session"]):
    import orjson
    from _session import START, established_server, settle_server

    from udpchat_server.control import ControlError, parse_request
    from udpchat_server.operations import WRITES, Operations

_NOW = START + 1.0


def _counters() -> dict[str, Any]:
    return {"connections": 1, "online_users": 1}


def fuzz_one_input(data: bytes) -> None:
    """Parse ``data`` as a control request line and run it."""
    try:
        command, args = parse_request(data)
    except ControlError as exc:
        if exc.code != "bad_request":
            raise AssertionError(f"the parser refused with {exc.code!r}") from exc
        return
    if not isinstance(command, str) or not isinstance(args, dict):
        raise AssertionError(f"parsed into {command!r}, {args!r}")
    server, store, _alice = established_server()
    operations = Operations(server, store, counters=_counters)
    if command == "backup":
        answer = operations.backup(args, None)
    else:
        answer = operations.run(command, args, _NOW)
        if command in WRITES:
            answer = Operations.settle(answer, None)
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise AssertionError(f"not an answer: {answer!r}")
    if not answer["ok"] and not isinstance(answer.get("error"), str):
        raise AssertionError(f"a refusal without a code: {answer!r}")
    orjson.dumps(answer)  # what the socket's thread sends
    settle_server(server, _NOW)


def main() -> None:
    """Hand ``sys.argv`` (corpus directories, libFuzzer flags) to atheris."""
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
