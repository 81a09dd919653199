"""What ``udpchat-cli`` prints: short human text, or the JSON objects of the contract.

With ``--json``, stdout carries exactly one JSON object per command (one per line,
per event, for ``listen``); the shapes are the CLI contract in the README and must
not change. Errors go to stderr as one ``error: ...`` line in both modes, and with
``--json`` the refusal object goes to stdout as well, so a script reads one object
whatever happened.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, TextIO, assert_never

from udpchat_proto import messages as m
from udpchat_proto.e2ee import device_fingerprint

__all__ = [
    "CONTINUATION",
    "EventPush",
    "JsonObject",
    "Output",
    "OutputClosedError",
    "event_json",
    "event_text",
    "friends_result",
    "invitations_result",
    "iso_utc",
    "json_line",
    "members_result",
    "message_json",
    "message_text",
    "messages_result",
    "online_result",
    "receipt_json",
    "receipt_text",
    "rooms_result",
    "status_result",
    "visible",
    "visible_lines",
]

JsonObject = dict[str, Any]

CONTINUATION = "  | "
"""What starts each further line of a message's text in ``history``, ``inbox`` and
``listen``: a line of the text can never pass for a message of its own, which
starts with ``[``."""

# What a terminal must never receive from a remote string, by Unicode category:
# controls (C0, DEL, C1: ESC starts a sequence that recolours, moves the cursor or
# retitles the window; CR overwrites the line), format characters (the bidi
# controls U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C reorder what
# follows, so "txt.exe" can read "exe.txt"; zero-width ones hide text) and the line
# and paragraph separators U+2028 and U+2029.
_MISLEADING = frozenset({"Cc", "Cf", "Zl", "Zp"})
# The exceptions, each harmless and needed by ordinary text: the tab (it only moves
# right), ZWNJ and ZWJ (U+200C, U+200D: Persian and Indic words are shaped with
# them, and ZWJ joins emoji such as the woman technologist).
_KEPT = frozenset("\t\u200c\u200d")
# A subdivision flag (the Scottish one: a black flag, up to seven tag letters or
# digits, CANCEL TAG) is the one legitimate use of the tag characters; anywhere
# else they hide text.
_EMOJI_TAG_SEQUENCE = re.compile(
    "\U0001f3f4[\U000e0030-\U000e0039\U000e0061-\U000e007a]{1,7}\U000e007f"
)
_FLAG = "\U0001f3f4"
_NAMED = {"\n": "\\n", "\r": "\\r"}
_LINE_BREAK = re.compile(r"\r?\n")


def _is_misleading(char: str) -> bool:
    return (
        not char.isprintable() and char not in _KEPT and unicodedata.category(char) in _MISLEADING
    )


def _rewrite(text: str, escape: Callable[[str], str]) -> str:
    """``text`` with ``escape(char)`` for each misleading character."""
    if text.isprintable():  # the common case: nothing to look at
        return text
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == _FLAG and (flag := _EMOJI_TAG_SEQUENCE.match(text, index)) is not None:
            out.append(flag.group())
            index = flag.end()
            continue
        out.append(escape(char) if _is_misleading(char) else char)
        index += 1
    return "".join(out)


def _backslash_escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON escapes a character beyond the BMP as a UTF-16 pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def visible(text: str) -> str:
    """One line safe for a terminal: every character that could mislead it (a
    control such as ESC or CR, a newline, a bidi override, a zero-width or other
    format character, a line or paragraph separator) shown as an escape
    (``\\x1b``, ``\\n``, ``\\u202e``) instead of sent to it.

    Ordinary text is left as it is: accents, CJK, emoji (ZWJ sequences and
    subdivision flags included), tabs.
    """
    return _rewrite(text, _backslash_escape)


def visible_lines(text: str) -> list[str]:
    """``text`` cut at its line breaks (LF or CRLF), each line :func:`visible`."""
    return [visible(line) for line in _LINE_BREAK.split(text)]


def json_line(obj: JsonObject) -> str:
    """``obj`` as one line of JSON, non-ASCII text kept readable, but with every
    character :func:`visible` would escape written as a JSON ``\\u`` escape: a JSON
    reader gets exactly the same strings, a terminal gets no raw control."""
    return _rewrite(json.dumps(obj, ensure_ascii=False), _json_escape)


def iso_utc(moment: datetime.datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z``: ``2024-05-01T12:00:00.250000Z``."""
    utc = moment.astimezone(datetime.UTC)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def message_json(message: m.ChatMessage) -> JsonObject:
    """The message object ``M`` of the contract."""
    return {
        "id": message.id.hex(),
        "from": message.sender,
        "to": message.to,
        "text": message.text,
        "sent_at": iso_utc(message.sent_at),
        "encrypted": message.encrypted,
    }


def message_text(message: m.ChatMessage) -> str:
    """``[2024-05-01 12:00:00] alice -> bob: hi`` (local time); each further line
    of a text of several starts with :data:`CONTINUATION`, so that no line of it
    can pass for another message. Every line is :func:`visible`."""
    when = _local(message.sent_at)
    first, *more = visible_lines(message.text)
    head = f"[{when}] {message.sender} -> {message.to}: {first}"
    return "\n".join([head, *(CONTINUATION + line for line in more)])


def messages_result(messages: Iterable[m.ChatMessage], empty: str) -> tuple[str, JsonObject]:
    """inbox and history: ``{"messages": [M, ...]}``, oldest first."""
    items = list(messages)
    text = "\n".join(message_text(item) for item in items) or empty
    return text, {"messages": [message_json(item) for item in items]}


def invitations_result(answer: m.Invitations) -> tuple[str, JsonObject]:
    """``{"incoming": [...], "outgoing": [...]}``."""
    text = (
        f"incoming: {', '.join(answer.incoming) or '(none)'}\n"
        f"outgoing: {', '.join(answer.outgoing) or '(none)'}"
    )
    return text, {"incoming": list(answer.incoming), "outgoing": list(answer.outgoing)}


def _presence_lines(people: Iterable[m.UserPresence]) -> str:
    return "\n".join(
        f"{person.username} {'online' if person.online else 'offline'}" for person in people
    )


def friends_result(answer: m.Friends) -> tuple[str, JsonObject]:
    """``{"friends": [{"user": "bob", "online": true}]}``."""
    text = _presence_lines(answer.friends) or "no friends yet"
    return text, {
        "friends": [{"user": item.username, "online": item.online} for item in answer.friends]
    }


def sessions_result(answer: m.Sessions) -> tuple[str, JsonObject]:
    """``{"sessions": [{"id": "<hex>", "current": true, "created_at": ..., ...}]}``."""
    items = [
        {
            "id": s.session_id.hex(),
            "current": s.current,
            "created_at": iso_utc(s.created_at),
            "last_used_at": iso_utc(s.last_used_at),
        }
        for s in answer.sessions
    ]
    text = "\n".join(
        f"{item['id']}  logged in {item['created_at']}  last used {item['last_used_at']}"
        + ("  (this one)" if item["current"] else "")
        for item in items
    )
    return text or "no sessions", {"sessions": items}


def status_result(answer: m.MessageStatus) -> tuple[str, JsonObject]:
    """``{"id": "<hex>", "to": "bob", "state": "delivered", "delivered_at": "<ISO>"}``
    (``"state": "stored"`` and ``"delivered_at": null`` until it is)."""
    delivered = answer.delivered_at
    obj = {
        "id": answer.message_id.hex(),
        "to": answer.to,
        "state": "stored" if delivered is None else "delivered",
        "delivered_at": None if delivered is None else iso_utc(delivered),
    }
    if delivered is None:
        text = f"stored, not yet delivered to {answer.to}"
    else:
        text = f"delivered to {answer.to} at {_local(delivered)}"
    return text, obj


def _local(moment: datetime.datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def online_result(answer: m.OnlineUsers) -> tuple[str, JsonObject]:
    """``{"online": ["alice"]}``."""
    return "\n".join(answer.usernames) or "nobody online", {"online": list(answer.usernames)}


def rooms_result(answer: m.Rooms) -> tuple[str, JsonObject]:
    """``{"rooms": [{"room": "#general", "members": 3}]}``."""
    text = "\n".join(
        f"{item.room} ({item.members} member{'' if item.members == 1 else 's'})"
        for item in answer.rooms
    )
    return text or "in no room", {
        "rooms": [{"room": item.room, "members": item.members} for item in answer.rooms]
    }


def members_result(answer: m.RoomMembers) -> tuple[str, JsonObject]:
    """``{"room": "#general", "members": [{"user": "alice", "online": true}]}``."""
    text = _presence_lines(answer.members) or f"{answer.room} has no members"
    return text, {
        "room": answer.room,
        "members": [{"user": item.username, "online": item.online} for item in answer.members],
    }


def receipt_json(receipt: m.DeliveryReceipt) -> JsonObject:
    """The ``delivered`` event of one receipt."""
    return {
        "event": "delivered",
        "id": receipt.message_id.hex(),
        "to": receipt.to,
        "at": iso_utc(receipt.delivered_at),
    }


def receipt_text(receipt: m.DeliveryReceipt) -> str:
    when = _local(receipt.delivered_at)
    return f"[{when}] {receipt.to} received your message {receipt.message_id.hex()}"


EventPush = (
    m.MessageDelivered
    | m.PresenceChanged
    | m.InvitationReceived
    | m.InvitationAnswered
    | m.InvitationCancelled
    | m.Unfriended
    | m.RoomMembershipChanged
    | m.DeviceAdded
)
"""The pushes that are one ``listen`` event each. The others: ``delivery_receipts``
is one event per receipt (:func:`receipt_json`), ``caught_up`` is bookkeeping, not
an event for people."""


def event_json(push: EventPush) -> JsonObject:
    """One ``listen`` line.

    The contract's events, plus ``invitation_cancelled`` and ``unfriended`` (same
    shape as ``invitation_declined``) so that ``listen`` prints every push.
    """
    match push:
        case m.MessageDelivered(message=message):
            return {"event": "message", **message_json(message)}
        case m.InvitationReceived(from_user=user):
            return {"event": "invitation", "from": user}
        case m.InvitationAnswered(by_user=user, accepted=True):
            return {"event": "invitation_accepted", "by": user}
        case m.InvitationAnswered(by_user=user):
            return {"event": "invitation_declined", "by": user}
        case m.InvitationCancelled(by_user=user):
            return {"event": "invitation_cancelled", "by": user}
        case m.Unfriended(by_user=user):
            return {"event": "unfriended", "by": user}
        case m.PresenceChanged(username=user, online=online):
            return {"event": "presence", "user": user, "online": online}
        case m.RoomMembershipChanged(room=room, username=user, joined=joined):
            return {"event": "joined" if joined else "left", "room": room, "user": user}
        case m.DeviceAdded(user=user, device=device):
            return {
                "event": "device_added",
                "user": user,
                "device": device.device_id.hex(),
                "fingerprint": device_fingerprint(device.ed25519),
            }
        case _:
            assert_never(push)


def event_text(push: EventPush) -> str:
    """One human line for a ``listen`` event."""
    match push:
        case m.MessageDelivered(message=message):
            return message_text(message)
        case m.InvitationReceived(from_user=user):
            return f"{user} invited you to be friends (udpchat-cli accept {user})"
        case m.InvitationAnswered(by_user=user, accepted=True):
            return f"{user} accepted your invitation: you are now friends"
        case m.InvitationAnswered(by_user=user):
            return f"{user} declined your invitation"
        case m.InvitationCancelled(by_user=user):
            return f"{user} cancelled their invitation"
        case m.Unfriended(by_user=user):
            return f"{user} ended your friendship"
        case m.PresenceChanged(username=user, online=online):
            return f"{user} is {'online' if online else 'offline'}"
        case m.RoomMembershipChanged(room=room, username=user, joined=joined):
            return f"{user} {'joined' if joined else 'left'} {room}"
        case m.DeviceAdded(user=user, device=device):
            return (
                f"{user} has a new device {device.device_id.hex()} (fingerprint "
                f"{device_fingerprint(device.ed25519)}): compare it with them, then "
                f"udpchat-cli verify {user} {device.device_id.hex()} FINGERPRINT"
            )
        case _:
            assert_never(push)


class Output:
    """Where results, events and errors go, in human or JSON form."""

    def __init__(
        self, *, json_mode: bool, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json_mode = json_mode
        self._stdout = stdout
        self._stderr = stderr

    @property
    def stdout(self) -> TextIO:
        # Looked up late so that click's test runner (which swaps sys.stdout) works.
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self._stderr or sys.stderr

    def result(self, text: str, obj: JsonObject) -> None:
        """Print a command's result: ``text`` for humans, ``obj`` with ``--json``."""
        self._line(json_line(obj) if self.json_mode else text)

    def event(self, push: m.Push | m.DeviceAdded, most: int | None = None) -> int:
        """Print a push's ``listen`` events at once (flushed: a pipe reader sees
        them now): one, one per receipt of ``delivery_receipts`` (at most
        ``most``), or none for ``caught_up``. Returns how many were printed."""
        if isinstance(push, m.DeliveryReceipts):
            receipts = push.receipts[:most] if most is not None else push.receipts
            for receipt in receipts:
                self.result(receipt_text(receipt), receipt_json(receipt))
            return len(receipts)
        if isinstance(push, m.CaughtUp):
            return 0
        self.result(event_text(push), event_json(push))
        return 1

    def error(self, code: str, message: str) -> None:
        """Report a failure: one ``error:`` line on stderr; the object on stdout too
        with ``--json``.

        ``message`` may carry what the server said (a refusal's text, a close
        reason): the line shows it :func:`visible`, the object as it is (in JSON's
        escapes)."""
        one_line = " ".join(message.split())
        lead = _LEADS.get(code)
        if lead is not None and not one_line.startswith(lead):
            one_line = f"{lead}: {one_line}"
        self.error_line(one_line)
        if self.json_mode:
            self._line(json.dumps({"ok": False, "error": code, "message": one_line}))

    def error_line(self, message: str) -> None:
        """Only the ``error:`` line on stderr, for a command whose result has already
        said what happened: its whitespace (line breaks included) collapsed to
        single spaces, then :func:`visible`."""
        print(f"error: {visible(' '.join(message.split()))}", file=self.stderr, flush=True)

    def _line(self, text: str) -> None:
        try:
            print(text, file=self.stdout, flush=True)
        except BrokenPipeError:
            raise OutputClosedError from None


_LEADS: dict[str, str] = {
    "quota_exceeded": "your storage quota on this server is full, nothing was sent",
}
"""What the CLI itself says before the server's text, for a refusal whose text
(another server's, or an older one's) may not say what happened."""


class OutputClosedError(Exception):
    """The reader of stdout went away (``listen | head -1``): stop, successfully.

    Not an OSError, so that click does not turn it into exit status 1.
    """
