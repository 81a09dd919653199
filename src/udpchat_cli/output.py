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
from collections.abc import Iterable
from typing import Any, TextIO

from udpchat_proto.chat import messages as m

__all__ = [
    "JsonObject",
    "Output",
    "OutputClosedError",
    "event_json",
    "event_text",
    "friends_result",
    "invitations_result",
    "iso_utc",
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
]

JsonObject = dict[str, Any]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """Text safe for a terminal: control characters (an escape sequence, a bell, a
    carriage return that would overwrite the line) shown as ``\\xNN`` instead of
    sent to it. Newlines and tabs stay."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


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
    }


def message_text(message: m.ChatMessage) -> str:
    """One line: ``[2024-05-01 12:00:00] alice -> bob: hi`` (local time)."""
    when = _local(message.sent_at)
    # Newlines inside a text would forge extra lines; show them escaped, and any
    # other control character too (an escape sequence would reach the terminal).
    text = visible(message.text.replace("\r", "\\r").replace("\n", "\\n"))
    return f"[{when}] {message.sender} -> {message.to}: {text}"


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


def event_json(push: m.Push) -> JsonObject:
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
    raise TypeError(f"not a push: {type(push).__name__}")  # pragma: no cover


def event_text(push: m.Push) -> str:
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
    raise TypeError(f"not a push: {type(push).__name__}")  # pragma: no cover


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
        self._line(json.dumps(obj, ensure_ascii=False) if self.json_mode else text)

    def event(self, push: m.Push, most: int | None = None) -> int:
        """Print a push's ``listen`` events at once (flushed: a pipe reader sees
        them now): one, or one per receipt of ``delivery_receipts`` (at most
        ``most``). Returns how many were printed."""
        if isinstance(push, m.DeliveryReceipts):
            receipts = push.receipts[:most] if most is not None else push.receipts
            for receipt in receipts:
                self.result(receipt_text(receipt), receipt_json(receipt))
            return len(receipts)
        self.result(event_text(push), event_json(push))
        return 1

    def error(self, code: str, message: str) -> None:
        """Report a failure: one ``error:`` line on stderr; the object on stdout too
        with ``--json``."""
        one_line = " ".join(message.split())
        lead = _LEADS.get(code)
        if lead is not None and not one_line.startswith(lead):
            one_line = f"{lead}: {one_line}"
        print(f"error: {one_line}", file=self.stderr, flush=True)
        if self.json_mode:
            self._line(json.dumps({"ok": False, "error": code, "message": one_line}))

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
