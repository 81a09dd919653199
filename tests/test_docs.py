"""docs/PROTOCOL.md, docs/EMBEDDING.md and the API reference stay in step with the code.

PROTOCOL.md is the wire: every message tag with its fields (optional ones marked
with their default) and every error code, and no names of the reference
implementation. EMBEDDING.md maps each tag to its Python class.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from tests.chat_helpers import test_config
from udpchat_proto.chat.codec import MESSAGE_TYPES
from udpchat_proto.errors import ErrorCode

DOCS = Path(__file__).parent.parent / "docs"
PROTOCOL = (DOCS / "PROTOCOL.md").read_text(encoding="utf-8")
EMBEDDING = (DOCS / "EMBEDDING.md").read_text(encoding="utf-8")


def _catalogue_row(tag: str) -> str:
    rows = [line for line in PROTOCOL.splitlines() if line.startswith(f"| `{tag}` |")]
    assert rows, f"{tag} is not in the catalogue"
    return rows[0]


def test_every_message_type_is_documented_with_its_fields() -> None:
    for tag, cls in MESSAGE_TYPES.items():
        row = _catalogue_row(tag)
        for field in attrs.fields(cls):
            assert f"`{field.name}`" in row, f"{tag}.{field.name} is undocumented"


def test_optional_fields_are_marked_with_their_default_and_only_they() -> None:
    for tag, cls in MESSAGE_TYPES.items():
        row = _catalogue_row(tag)
        for field in attrs.fields(cls):
            marked = f"`{field.name}` (optional, default" in row
            optional = field.default is not attrs.NOTHING
            assert marked == optional, f"{tag}.{field.name}: optional={optional}, marked={marked}"
    assert "`limit` (optional, default 20" in _catalogue_row("get_history")


def test_every_error_code_is_documented() -> None:
    for code in ErrorCode:
        assert f"`{code.value}`" in PROTOCOL
        assert f"| `{code.value}` |" in PROTOCOL, f"{code.value}: when is it used?"


def test_every_message_class_is_named_in_the_embedding_documentation() -> None:
    for tag, cls in MESSAGE_TYPES.items():
        assert f"| `{tag}` | `{cls.__name__}` |" in EMBEDDING


@pytest.mark.parametrize(
    "name",
    [
        # (sorted: xdist needs every worker to collect the same ids in the same order)
        *sorted(
            {cls.__name__ for cls in MESSAGE_TYPES.values()} - {"Ok", "Unfriend", "Block", "Logout"}
        ),
        "ChatServer",
        "ClientConnection",
        "ClientTransport",
        "ServerTransport",
        "ServerConfig",
        "TransportConfig",
        "DecodeError",
        "LocalProtocolError",
        "RandomSource",
        "CloseCode",
        "ConnectionTerminated",
        "HandshakeCompleted",
        "PayloadReceived",
        "receive_datagram",
        "datagrams_to_send",
        "next_event",
        "get_timer",
        "udpchat_proto",
        "attrs",
    ],
)
def test_the_protocol_names_no_part_of_the_reference_implementation(name: str) -> None:
    # Words that are also wire tags or plain English ("Ok", "Logout") are left out.
    assert not re.search(rf"\b{name}\b", PROTOCOL), f"{name} belongs in docs/EMBEDDING.md"


# --- the API reference (docs/conf.py, docs/api/) and the quickstart -----------------------

API = DOCS / "api"


def test_every_public_module_has_its_page_in_the_reference() -> None:
    # The one list of pages, docs/api/index.rst's toctree; each page documents its
    # module (automodule), or, for the face, each name (autoclass ...).
    import udpchat_proto

    listed = re.findall(r"^   (udpchat_proto[\w.]*)$", (API / "index.rst").read_text(), re.M)
    public = ["udpchat_proto", "udpchat_proto.chat", "udpchat_proto.chat.messages"]
    public += ["udpchat_proto.transport", "udpchat_proto.bus", "udpchat_proto.e2ee"]
    public.append("udpchat_proto.asyncio")
    assert sorted(listed) == sorted(public)
    for module in listed:
        page = (API / f"{module}.rst").read_text()
        assert f".. automodule:: {module}" in page, module
    face = (API / "udpchat_proto.rst").read_text()
    documented = set(re.findall(r"^\.\. auto(?!module)\w+:: (\w+)$", face, re.M))
    assert documented == set(udpchat_proto.__all__) - {"messages"}
    assert ":doc:`the catalogue <udpchat_proto.chat.messages>`" in face


def test_the_quickstart_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its first program is the whole protocol in one process, with no socket. It is
    # run as written, but for the password hashes' cost: its ChatServer gets the
    # tests' tiny scrypt (the default's is 128 MiB and 0.4 s a hash, and this test is
    # not about hashing).
    import udpchat_proto

    fast = functools.partial(udpchat_proto.ChatServer, config=test_config())
    monkeypatch.setattr(udpchat_proto, "ChatServer", fast)
    text = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    program = re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)[0]
    assert "ChatServer(" in program
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(program, "quickstart.md", "exec"), {"__name__": "quickstart"})
    assert output.getvalue() == "alice: hello, bob\n"


@pytest.mark.e2e  # (a server on loopback, in an interpreter of its own)
def test_the_quickstarts_asyncio_program_runs() -> None:
    # A server, a bot and a client on loopback (its own interpreter: a bounded wait).
    text = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    program = re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)[2]
    assert "udpchat_proto.asyncio" in program
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "echo: echo: hello, bot\n"
