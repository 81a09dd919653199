"""docs/PROTOCOL.md stays in step with the code."""

from __future__ import annotations

from pathlib import Path

import attrs

from udpchat_proto.chat.codec import MESSAGE_TYPES
from udpchat_proto.errors import ErrorCode

PROTOCOL = (Path(__file__).parent.parent / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")


def test_every_message_type_is_documented_with_its_fields() -> None:
    rows = [line for line in PROTOCOL.splitlines() if line.startswith("| `")]
    for tag, cls in MESSAGE_TYPES.items():
        catalogue_rows = [
            row for row in rows if row.split("|")[1:3] == [f" `{tag}` ", f" {cls.__name__} "]
        ]
        assert catalogue_rows, f"{tag} ({cls.__name__}) is not in the catalogue"
        for field in attrs.fields(cls):
            assert f"`{field.name}`" in catalogue_rows[0], f"{tag}.{field.name} is undocumented"


def test_every_error_code_is_documented() -> None:
    for code in ErrorCode:
        assert f"`{code.value}`" in PROTOCOL
