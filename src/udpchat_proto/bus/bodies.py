"""What a message on the cluster bus says: its body, a JSON object with a ``type``.

* ``news``: a :class:`~udpchat_proto.chat.ClusterNews` (``users``, ``forget``,
  ``online``, ``offline``: names; ``pushes``: ``[name, base64 payload]``;
  ``sessions``: ``[token hash in hex, reason or null]``; ``device_pushes``, only
  when there are some: ``[name, device id in hex, base64 payload]``);
* ``snapshot``: part ``part`` of ``parts`` of the node's heartbeat, everyone online
  on it (``users``, at most :data:`SNAPSHOT_PART` names a part, at most
  :data:`HEARTBEAT_PARTS_MAX` parts);
* ``resync``: the sender was cut off from the bus: look for every connection;
* ``bye``: the sender is stopping: its users are offline now.

The encoders (:func:`news_bodies`, :func:`snapshot_bodies`, :func:`bye_body`,
:func:`resync_body`) make what a node sends; :func:`parse` reads what another
node sent, once :class:`~udpchat_proto.bus.Opener` has authenticated it, and
takes nothing a node would not send: every name a username, every push one that
travels between nodes, every list within its bound. Members it does not know are
ignored, so that a later version may add some.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

import attrs
import orjson

from ..chat import messages
from ..chat.codec import decode
from ..chat.remote import MAX_NODE_USERS, ClusterNews
from ..chat.validation import ValidationError, check_username
from ..e2ee.records import DEVICE_ID_SIZE
from ..errors import DecodeError
from .errors import BusDropError

__all__ = [
    "HEARTBEAT_PARTS_MAX",
    "MAX_NEWS_BODY",
    "MAX_REASON",
    "SNAPSHOT_PART",
    "TOKEN_HASH_SIZE",
    "Bye",
    "News",
    "Resync",
    "Said",
    "SnapshotPart",
    "bye_body",
    "news_bodies",
    "news_body",
    "parse",
    "resync_body",
    "snapshot_bodies",
]

SNAPSHOT_PART: Final = 2000
"""Names per heartbeat message (about 70 KB at most)."""
HEARTBEAT_PARTS_MAX: Final = MAX_NODE_USERS // SNAPSHOT_PART
"""Most parts of one heartbeat (32: 64,000 names, under what a node keeps of
another, ``MAX_NODE_USERS``); a longer one is sent cut there."""
MAX_NEWS_BODY: Final = 512 * 1024
"""Largest news body sent whole: :func:`news_bodies` splits a larger one, so that
every message stays under the :data:`~udpchat_proto.bus.MAX_RECEIVED` a node
reads (NATS refuses over 1 MB by default)."""
MAX_REASON: Final = 256
"""Longest reason for an ended session, in characters (the transport sends at most
256 bytes of it)."""
TOKEN_HASH_SIZE: Final = 32
"""Bytes of a login session's token hash (SHA-256), as the store keeps it."""


@attrs.frozen
class News:
    """Another node's :class:`~udpchat_proto.chat.ClusterNews`.

    Attributes:
        node: the sender's id, in hex.
        news: what it says; hand it to ``ChatServer.receive_news``.
    """

    node: str
    news: ClusterNews


@attrs.frozen
class SnapshotPart:
    """One message of another node's heartbeat (put the parts together with
    :class:`~udpchat_proto.bus.Heartbeats`).

    Attributes:
        node: the sender's id, in hex.
        part: which part, from 0.
        parts: of how many.
        users: names online on the sender, this part's.
    """

    node: str
    part: int
    parts: int
    users: tuple[str, ...]


@attrs.frozen
class Bye:
    """Another node is stopping: its users are offline there now."""

    node: str


@attrs.frozen
class Resync:
    """Another node was cut off from the bus: look for every connection."""

    node: str


Said = News | SnapshotPart | Bye | Resync
"""What one body says (:func:`parse`)."""


def news_body(news: ClusterNews) -> bytes:
    """The body of one ``news`` message, whatever its size (see :func:`news_bodies`)."""
    body: dict[str, Any] = {
        "type": "news",
        "users": news.users,
        "pushes": [[u, base64.b64encode(p).decode()] for u, p in news.pushes],
        "sessions": [[h.hex(), reason] for h, reason in news.sessions],
        "forget": news.forget,
        "online": news.online,
        "offline": news.offline,
    }
    if news.device_pushes:
        # Only when there are some: a body without them is what the nodes before
        # them sent, and read (an unknown member is ignored).
        body["device_pushes"] = [
            [u, device.hex(), base64.b64encode(p).decode()] for u, device, p in news.device_pushes
        ]
    return orjson.dumps(body)


def news_bodies(news: ClusterNews) -> list[bytes]:
    """The bodies that carry ``news``, in the order to send them: one, or, when it
    is larger than :data:`MAX_NEWS_BODY`, those of its halves (each list cut in
    two, the first half first), halved again as needed. An entry larger than that
    on its own goes alone."""
    body = news_body(news)
    if len(body) <= MAX_NEWS_BODY or _entries(news) <= 1:
        return [body]
    first, second = _halves(news)
    return [*news_bodies(first), *news_bodies(second)]


def _entries(news: ClusterNews) -> int:
    return sum(len(part) for part in attrs.astuple(news, recurse=False))


def _halves(news: ClusterNews) -> tuple[ClusterNews, ClusterNews]:
    """Two news of fewer entries each, that say together what ``news`` says (it
    has two or more entries)."""
    fields = attrs.asdict(news, recurse=False)
    cuts = {name: len(value) // 2 for name, value in fields.items()}
    if not any(cuts.values()):
        # (No list holds two entries: halving each would leave the first half
        # empty and the second the whole, for ever. The first entry goes first.)
        cuts[next(name for name, value in fields.items() if value)] = 1
    first = {name: value[: cuts[name]] for name, value in fields.items()}
    second = {name: value[cuts[name] :] for name, value in fields.items()}
    return ClusterNews(**first), ClusterNews(**second)


def snapshot_bodies(online: list[str]) -> list[bytes]:
    """The bodies of a heartbeat naming ``online``, in the order they are sent (cut
    at :data:`HEARTBEAT_PARTS_MAX` parts: no node holds that many users; no names
    make one part naming none)."""
    parts = [online[i : i + SNAPSHOT_PART] for i in range(0, len(online), SNAPSHOT_PART)]
    parts = parts[:HEARTBEAT_PARTS_MAX] or [[]]
    return [
        orjson.dumps({"type": "snapshot", "part": index, "parts": len(parts), "users": part})
        for index, part in enumerate(parts)
    ]


def bye_body() -> bytes:
    """The body of a ``bye`` message (a node stopping)."""
    return b'{"type":"bye"}'


def resync_body() -> bytes:
    """The body of a ``resync`` message (a node back on the bus after a gap)."""
    return b'{"type":"resync"}'


def parse(node: str, body: bytes) -> Said:
    """What the authentic ``body`` from ``node`` says.

    Args:
        node: the sender's id, in hex (as :meth:`Opener.open` gives it, ``.hex()``).
        body: the opened body.

    Returns:
        :class:`News`, :class:`SnapshotPart`, :class:`Bye` or :class:`Resync`.

    Raises:
        BusDropError: ``invalid``: it is not what a node sends (bad JSON, an unknown
            type, a name that is no username, a push that is not one, a list over
            its bound ...).
    """
    try:
        value = orjson.loads(body)
        if not isinstance(value, dict):
            raise TypeError("not an object")
        kind = value.get("type")
        if kind == "news":
            return News(node, _news(value))
        if kind == "snapshot":
            return _snapshot_part(node, value)
        if kind == "bye":
            return Bye(node)
        if kind == "resync":
            return Resync(node)
        raise ValueError(f"unknown type {kind!r}")
    except (
        orjson.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        binascii.Error,
        DecodeError,
        ValidationError,
    ) as exc:
        raise BusDropError("invalid", str(exc)[:200]) from None


def _news(value: dict[str, Any]) -> ClusterNews:
    return ClusterNews(
        users=_names(value["users"]),
        pushes=tuple(_push(item) for item in _list(value["pushes"])),
        sessions=tuple(_session(item) for item in _list(value["sessions"])),
        forget=_names(value["forget"]),
        online=_names(value["online"]),
        offline=_names(value["offline"]),
        device_pushes=tuple(_device_push(item) for item in _list(value.get("device_pushes", []))),
    )


def _snapshot_part(node: str, value: dict[str, Any]) -> SnapshotPart:
    part, parts = value["part"], value["parts"]
    if not (_count(part) and _count(parts) and 0 <= part < parts <= HEARTBEAT_PARTS_MAX):
        raise ValueError(f"part {part!r} of {parts!r}")
    users = _names(value["users"])
    if len(users) > SNAPSHOT_PART:
        raise ValueError(f"{len(users)} names in one part")
    return SnapshotPart(node, part, parts, users)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("a list was expected")
    return value


def _names(value: Any) -> tuple[str, ...]:
    """Usernames, as stored (a node never sends anything else).

    Raises:
        TypeError, ValidationError: not a list of them.
    """
    names = _list(value)
    for name in names:
        check_username(name)
    return tuple(names)


def _push(item: Any) -> tuple[str, bytes]:
    """``[name, payload]``: the payload a push for that user's connections (never
    an answer, nor a message: it goes to them as it is)."""
    username, encoded = _list(item)
    check_username(username)
    if not isinstance(encoded, str):
        raise TypeError("a push is base64 text")
    payload = base64.b64decode(encoded, validate=True)
    push = decode(payload)
    if not isinstance(push, CROSSING_PUSHES) or isinstance(push, OWN_PUSHES):
        raise ValueError(f"not a push another node sends: {type(push).__name__}")
    return username, payload


def _device_push(item: Any) -> tuple[str, bytes, bytes]:
    """``[name, device id, payload]``: a push for that one device's connections
    (``one_time_keys_low``, and nothing else)."""
    username, device, encoded = _list(item)
    check_username(username)
    if not isinstance(device, str) or not isinstance(encoded, str):
        raise TypeError("a device push is hex and base64 text")
    device_id = bytes.fromhex(device)
    if len(device_id) != DEVICE_ID_SIZE:
        raise ValueError(f"a device id is {DEVICE_ID_SIZE} bytes")
    payload = base64.b64decode(encoded, validate=True)
    if not isinstance(decode(payload), DEVICE_ONLY_PUSHES):
        raise ValueError("not a push for one device")
    return username, device_id, payload


CROSSING_PUSHES: Final = (*messages.PUSH_TYPES, messages.DeviceAdded)
"""What a ``news`` body's pushes may be: a push of version 1 (an invitation, a
room join ...) or a new device (``device_added``, version 2, which the receiving
node sends only to the devices among the user's connections). Not
``one_time_keys_low``: only the device whose keys ran low may be told, so it
travels in ``device_pushes``, which name the device (:data:`DEVICE_ONLY_PUSHES`)."""
DEVICE_ONLY_PUSHES: Final = (messages.OneTimeKeysLow,)
"""What a ``news`` body's ``device_pushes`` may be: pushes for one device only."""
OWN_PUSHES: Final = (messages.MessageDelivered, messages.CaughtUp, messages.PresenceChanged)
"""Pushes a node makes only from what it reads or knows itself (messages from the
database, presence from the heartbeats), never from another node's word: a push
of these types makes a ``news`` body ``invalid``."""


def _session(item: Any) -> tuple[bytes, str | None]:
    hashed, reason = _list(item)
    token_hash = bytes.fromhex(hashed)
    if len(token_hash) != TOKEN_HASH_SIZE:
        raise ValueError(f"a token hash is {TOKEN_HASH_SIZE} bytes")
    if reason is not None and not (isinstance(reason, str) and len(reason) <= MAX_REASON):
        raise ValueError("a reason is text")
    return token_hash, reason
