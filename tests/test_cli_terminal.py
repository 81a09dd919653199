"""What reaches a terminal from the network: message texts, the server's refusals and
close reasons, in ``history``, ``inbox``, ``listen``, ``error:`` lines and the chat's
pane. No control, bidi or separator character gets through raw, and no line of a
text can pass for another sender's message; ``--json`` keeps every string exact."""

from __future__ import annotations

import datetime
import io
import json
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from udpchat_cli import output
from udpchat_cli.chat.app import CONTINUATION_MARK, render_message
from udpchat_cli.cli import main
from udpchat_cli.profiles import Home
from udpchat_cli.session import ConnectionLostError, Session
from udpchat_proto import CloseCode
from udpchat_proto import messages as m

from .strategies import texts

WHEN = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)

ZWNJ, ZWJ = "\u200c", "\u200d"
SCOTLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"

# The list, each with what it must look like once escaped.
ESCAPED = {
    "\x1b": "\\x1b",  # ESC: starts a sequence (colour, cursor, window title)
    "\x07": "\\x07",
    "\x08": "\\x08",
    "\r": "\\r",  # overwrites the line from its start
    "\n": "\\n",
    "\x0b": "\\x0b",
    "\x0c": "\\x0c",
    "\x7f": "\\x7f",
    "\x85": "\\x85",  # NEL
    "\x9b": "\\x9b",  # the one-byte CSI
    "\u061c": "\\u061c",  # ARABIC LETTER MARK
    "\u200e": "\\u200e",
    "\u200f": "\\u200f",
    **{chr(code): f"\\u{code:04x}" for code in range(0x202A, 0x202F)},  # embeddings, overrides
    **{chr(code): f"\\u{code:04x}" for code in range(0x2066, 0x206A)},  # isolates
    "\u2028": "\\u2028",  # LINE SEPARATOR
    "\u2029": "\\u2029",  # PARAGRAPH SEPARATOR
    "\u200b": "\\u200b",  # ZERO WIDTH SPACE: hides text
    "\ufeff": "\\ufeff",
    "\U000e0041": "\\U000e0041",  # a tag character outside a flag: hidden text
}

ORDINARY = [
    "café, naïve, Ærøskøbing",
    "日本語のテキスト、한국어",
    "שלום עולם and مرحبا",  # right-to-left scripts are text, not overrides
    "می\u200cخواهم",  # noqa: RUF001 (Persian, with ZWNJ)
    "👩\u200d💻 👨\u200d👩\u200d👧 ❤\ufe0f 🇫🇷 " + SCOTLAND,  # ZWJ, a variation selector, flags
    "tab\tseparated",
    "a\u00a0b",  # no-break space
]

HOSTILE = (
    "ok \x1b[31mred\x1b[0m \u202eevil\u202c \u2028sep\u2029 \x85nel\rover"
    "\n[2026-01-01 00:00:00] mallory -> bob: fake"
)


def message(text: str, sender: str = "alice", to: str = "bob") -> m.ChatMessage:
    return m.ChatMessage(id=b"\x01" * 16, sender=sender, to=to, text=text, sent_at=WHEN)


def misleading(text: str) -> list[str]:
    """The characters of ``text`` a terminal must not receive raw: controls but the
    tab, format characters but ZWNJ, ZWJ and a flag's tags, line and paragraph
    separators (this test's own reading of the rule)."""
    text = text.replace(SCOTLAND, "")
    found = []
    kept = ("\t", ZWNJ, ZWJ)
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") and char not in kept:
            found.append(char)
    return found


def nasty_texts() -> st.SearchStrategy[str]:
    """Texts rich in what the rule is about, among ordinary characters."""
    pieces = st.one_of(
        st.sampled_from([*ESCAPED, "\r\n", "\n", ZWJ, ZWNJ, SCOTLAND, "[", "]", "->", ": "]),
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=5),
    )
    return st.lists(pieces, min_size=1, max_size=30).map("".join).filter(bool)


# --- the escaping ----------------------------------------------------------------------


@pytest.mark.parametrize(("char", "shown"), ESCAPED.items())
def test_each_misleading_character_is_shown_escaped(char: str, shown: str) -> None:
    assert output.visible(f"a{char}b") == f"a{shown}b"


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_stays_as_typed(text: str) -> None:
    assert output.visible(text) == text
    assert output.message_text(message(text)).endswith(f"alice -> bob: {text}")


def test_tags_pass_only_as_a_flag() -> None:
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "ignore previous instructions")
    assert output.visible("\U0001f3f4" + hidden + "\U000e007f") == (
        "\U0001f3f4" + "".join(f"\\U{ord(c):08x}" for c in hidden) + "\\U000e007f"
    )
    assert output.visible("x" + SCOTLAND[1:]).startswith("x\\U000e0067")  # no flag before


@settings(max_examples=300)
@given(st.one_of(nasty_texts(), texts))
def test_every_line_of_a_message_is_safe_and_every_further_line_is_marked(text: str) -> None:
    rendered = output.message_text(message(text))
    lines = rendered.split("\n")
    assert misleading(rendered.replace("\n", "")) == []
    assert lines[0].startswith("[2026-01-01 ") and " alice -> bob: " in lines[0]
    assert all(line.startswith(output.CONTINUATION) for line in lines[1:])
    # One line per line of the text (LF or CRLF), no more: nothing else breaks one.
    assert len(lines) == text.replace("\r\n", "\n").count("\n") + 1


def test_a_forged_line_is_a_marked_continuation() -> None:
    rendered = output.message_text(message(HOSTILE))
    assert rendered.split("\n") == [
        f"[{output._local(WHEN)}] alice -> bob: ok \\x1b[31mred\\x1b[0m \\u202eevil\\u202c "
        "\\u2028sep\\u2029 \\x85nel\\rover",
        "  | [2026-01-01 00:00:00] mallory -> bob: fake",
    ]
    push = m.MessageDelivered(message=message(HOSTILE))
    assert output.event_text(push) == rendered  # listen prints the same


# --- JSON stays exact ------------------------------------------------------------------


@settings(max_examples=300)
@given(st.one_of(nasty_texts(), texts))
def test_json_keeps_every_text_exact_and_sends_no_raw_control(text: str) -> None:
    obj = output.message_json(message(text))
    line = output.json_line(obj)
    assert json.loads(line) == obj
    assert misleading(line) == []
    assert "\n" not in line


def test_json_keeps_ordinary_text_readable() -> None:
    obj = {"text": "café 日本 👩\u200d💻 " + SCOTLAND}
    assert output.json_line(obj) == json.dumps(obj, ensure_ascii=False)
    assert output.json_line({"t": "\u202e\U000e0041"}) == '{"t": "\\u202e\\udb40\\udc41"}'


def test_json_mode_results_go_through_json_line() -> None:
    stdout = io.StringIO()
    out = output.Output(json_mode=True, stdout=stdout, stderr=io.StringIO())
    out.result("ignored", {"messages": [output.message_json(message(HOSTILE))]})
    printed = stdout.getvalue()
    assert misleading(printed.rstrip("\n")) == []
    assert json.loads(printed)["messages"][0]["text"] == HOSTILE


# --- error: lines ------------------------------------------------------------------------


@pytest.mark.parametrize("json_mode", [False, True])
def test_an_error_line_shows_the_servers_words_escaped(json_mode: bool) -> None:
    stdout, stderr = io.StringIO(), io.StringIO()
    out = output.Output(json_mode=json_mode, stdout=stdout, stderr=stderr)
    out.error("not_friends", "no \x1b]0;owned\x07 \u202eyes\u202c\nerror: forged")
    assert stderr.getvalue() == "error: no \\x1b]0;owned\\x07 \\u202eyes\\u202c error: forged\n"
    if json_mode:
        assert json.loads(stdout.getvalue()) == {
            "ok": False,
            "error": "not_friends",
            "message": "no \x1b]0;owned\x07 \u202eyes\u202c error: forged",
        }
        assert misleading(stdout.getvalue().rstrip("\n")) == []
    else:
        assert stdout.getvalue() == ""
    out.error_line("not delivered: \x1b[2J")
    assert stderr.getvalue().endswith("error: not delivered: \\x1b[2J\n")


@pytest.mark.parametrize("json_mode", [False, True])
def test_a_close_reason_from_the_server_is_escaped(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    json_mode: bool,
) -> None:
    home = tmp_path / "home"
    Home(home).update("default", lambda p: p.login("alice", b"t" * 32, "127.0.0.1:9"))

    def hostile_close(self: Session) -> bytes:
        raise ConnectionLostError(CloseCode.NORMAL_CLOSE, "bye\x1b[2J\u202e\u2028\x9b31m")

    monkeypatch.setattr(Session, "open", hostile_close)
    args = ["--home", str(home), *(["--json"] if json_mode else []), "friends"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 3
    captured = capsys.readouterr()
    assert captured.err == (
        "error: connection closed (normal_close): bye\\x1b[2J\\u202e \\x9b31m\n"
    )
    if json_mode:
        assert json.loads(captured.out)["message"] == (
            "connection closed (normal_close): bye\x1b[2J\u202e \x9b31m"
        )


# --- the chat's pane ---------------------------------------------------------------------


def drawn(text: str, width: int, sender: str = "bob") -> list[str]:
    """The lines the chat's pane shows for a message, at ``width`` columns."""
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(render_message(message(text, sender=sender, to="alice")))
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue().rstrip("\n").split("\n")


def test_the_pane_marks_further_lines_and_escapes_the_rest() -> None:
    lines = drawn(HOSTILE, 120)
    header = f"{WHEN.astimezone().strftime('%H:%M')} bob: "
    assert lines[0].rstrip() == (
        header + "ok \\x1b[31mred\\x1b[0m \\u202eevil\\u202c \\u2028sep\\u2029 \\x85nel\\rover"
    )
    gutter = " " * (len(header) - 2) + CONTINUATION_MARK + " "
    assert lines[1].rstrip() == gutter + "[2026-01-01 00:00:00] mallory -> bob: fake"
    assert len(lines) == 2


def test_a_wrapped_line_cannot_start_where_a_header_does() -> None:
    # Padding that makes a narrow pane wrap just before the forged header.
    for width in range(20, 60):
        lines = drawn("x " * 40 + "12:01 mallory: fake", width)
        assert all(line.startswith(" ") for line in lines[1:]), (width, lines)
        assert sum("mallory" in line for line in lines) == 1


@settings(max_examples=100, deadline=None)
@given(st.one_of(nasty_texts(), texts), st.integers(min_value=24, max_value=100))
def test_the_pane_never_draws_a_raw_control_or_an_unmarked_line(text: str, width: int) -> None:
    lines = drawn(text, width, sender="a")
    assert misleading("".join(lines)) == []
    header = len(WHEN.astimezone().strftime("%H:%M") + " a: ")
    assert lines[0].startswith(WHEN.astimezone().strftime("%H:%M") + " a:")
    # Every other line leaves the header's columns blank but for the mark.
    assert all(line[:header].strip() in ("", CONTINUATION_MARK) for line in lines[1:])
    marked = sum(line[:header].strip() == CONTINUATION_MARK for line in lines[1:])
    assert marked == text.replace("\r\n", "\n").count("\n")
