"""docs/vectors/bus.json: the cluster bus's keys, messages and a receiver's verdicts.

* The file is what ``tools/bus_vectors.py`` makes now (the bus's wire did not
  drift from the recorded one).
* This implementation seals the recorded bodies, at the recorded times, into the
  recorded bytes, and its receiver gives the recorded verdicts.
* A node written from ``docs/PROTOCOL.md`` ("Cluster bus") alone, on
  ``cryptography``'s HKDF and ChaCha20-Poly1305 and the standard library's JSON
  (:class:`StrangerReceiver` below), derives the same keys, opens and seals the
  same bytes, and gives the same verdicts.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from udpchat_proto.bus import (
    BusDropError,
    BusKeys,
    Bye,
    News,
    Opener,
    Resync,
    Sealer,
    SnapshotPart,
    parse,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "docs" / "vectors" / "bus.json"


def _tool() -> Any:
    spec = importlib.util.spec_from_file_location("bus_vectors", ROOT / "tools" / "bus_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bus_vectors"] = module
    spec.loader.exec_module(module)
    return module


def _recorded() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return document


def _arrivals(document: dict[str, Any]) -> list[tuple[int, bytes, str]]:
    """Each arrival at the receiver: its clock (ms), the message, the verdict."""
    sent = [bytes.fromhex(message["message"]) for message in document["messages"]]
    return [
        (
            arrival["at_ms"],
            sent[arrival["sent"]] if "sent" in arrival else bytes.fromhex(arrival["message"]),
            arrival["verdict"],
        )
        for arrival in document["received"]
    ]


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def test_the_vectors_are_what_the_generator_makes_now() -> None:
    tool = _tool()
    assert tool.render(tool.generate()) == VECTORS.read_text(encoding="utf-8"), (
        "docs/vectors/bus.json is stale: if the change to the bus's wire is intended, "
        "run python tools/bus_vectors.py, update docs/PROTOCOL.md and say so in the changelog"
    )


def test_this_implementation_seals_and_judges_as_recorded() -> None:
    document = _recorded()
    keys = BusKeys.derive(bytes.fromhex(document["secret"]))
    assert (keys.subject, keys.message_key.hex()) == (document["subject"], document["message_key"])
    nodes = {name: bytes.fromhex(node["id"]) for name, node in document["nodes"].items()}
    for name, node in document["nodes"].items():
        assert keys.node_key(nodes[name]).hex() == node["key"]
    clocks = {name: Clock(0) for name in nodes}
    sealers = {name: Sealer(keys, nodes[name], clocks[name]) for name in nodes}
    said = []
    for message in document["messages"]:
        name = message["node"]
        clocks[name].ms = message["sent_ms"]
        assert sealers[name].counter == message["counter"]
        sealed = sealers[name].seal(message["body"].encode())
        assert sealed.hex() == message["message"], message["description"]
        said.append(parse(nodes[name].hex(), message["body"].encode()))
    a, b = nodes["a"].hex(), nodes["b"].hex()
    assert [type(s) for s in said] == [News, SnapshotPart, SnapshotPart, Resync, SnapshotPart, Bye]
    assert isinstance(said[0], News) and said[0].news.users == ("bob",)
    assert said[1:3] == [
        SnapshotPart(a, 0, 2, tuple(f"u{n}" for n in range(2000))),
        SnapshotPart(a, 1, 2, ("u2000", "u2001", "u2002")),
    ]
    assert said[3:] == [Resync(b), SnapshotPart(b, 0, 1, ()), Bye(b)]

    receiver = document["receiver"]
    clock = Clock(receiver["started_ms"])
    opener = Opener(keys, nodes[receiver["node"]], clock)
    verdicts = []
    for at, data, _expected in _arrivals(document):
        clock.ms = at
        try:
            node, body = opener.open(data)
            parse(node.hex(), body)
            verdicts.append("accepted")
        except BusDropError as drop:
            verdicts.append(drop.reason)
    assert verdicts == [expected for _at, _data, expected in _arrivals(document)]


# --- a node written from docs/PROTOCOL.md alone -----------------------------------------

USERNAME = re.compile(r"[a-z0-9_.\-]{1,32}")
RELAYED_PUSHES = {
    "delivery_receipts",
    "invitation_received",
    "invitation_answered",
    "invitation_cancelled",
    "unfriended",
    "room_membership_changed",
}


def hkdf(secret: bytes, info: str, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=bytes(32), info=info.encode()).derive(secret)


def node_key(message_key: bytes, node: bytes) -> bytes:
    info = b"udpchat cluster bus node key v1 " + node
    return HKDFExpand(hashes.SHA256(), 32, info).derive(message_key)


def nonce(counter: int) -> bytes:
    return bytes(4) + counter.to_bytes(8, "big")


class StrangerReceiver:
    """The receiver's checks, in PROTOCOL.md's order, with its numbers."""

    def __init__(self, secret: bytes, node: bytes, start: int) -> None:
        self.message_key = hkdf(secret, "udpchat cluster bus message key v1", 32)
        self.node = node
        self.start = start
        self.windows: dict[bytes, tuple[int, set[int], int]] = {}
        """By node: the highest counter accepted, those accepted, the latest sent."""

    def receive(self, data: bytes, now: int) -> str:
        if len(data) > 1_048_576:
            return "too_large"
        if len(data) < 49 or data[0] != 1:
            return "malformed"
        node = data[1:17]
        counter = int.from_bytes(data[17:25], "big")
        sent = int.from_bytes(data[25:33], "big")
        try:
            key = node_key(self.message_key, node)
            body = ChaCha20Poly1305(key).decrypt(nonce(counter), data[33:], data[:33])
        except InvalidTag:
            return "forged"
        if abs(now - sent) > 30_000:
            return "stale"
        if sent < self.start:
            return "before_start"
        if node == self.node:
            return "replayed"
        if node not in self.windows:
            self.windows = {n: w for n, w in self.windows.items() if w[2] >= now - 30_000}
            if len(self.windows) >= 256:
                return "too_many_nodes"
        highest, accepted, latest = self.windows.get(node, (-1, set(), sent))
        if counter in accepted or counter <= highest - 1024 or counter >= 2**64 - 1:
            return "replayed"
        accepted = {c for c in accepted | {counter} if c > max(highest, counter) - 1024}
        self.windows[node] = (max(highest, counter), accepted, max(latest, sent))
        return "accepted" if valid_body(body) else "invalid"


def valid_body(body: bytes) -> bool:
    try:
        value = json.loads(body)
    except ValueError:
        return False
    if not isinstance(value, dict):
        return False
    kind = value.get("type")
    if kind in ("bye", "resync"):
        return True
    if kind == "snapshot":
        part, parts = value.get("part"), value.get("parts")
        if type(part) is not int or type(parts) is not int:  # (not true, not 1.0)
            return False
        return 0 <= part < parts <= 32 and names(value.get("users"), 2000)
    if kind == "news":
        lists = ("users", "pushes", "sessions", "forget", "online", "offline")
        if not all(isinstance(value.get(member), list) for member in lists):
            return False
        return (
            all(names(value[member]) for member in ("users", "forget", "online", "offline"))
            and all(push(item) for item in value["pushes"])
            and all(session(item) for item in value["sessions"])
        )
    return False


def names(value: object, most: int | None = None) -> bool:
    if not isinstance(value, list) or (most is not None and len(value) > most):
        return False
    return all(isinstance(name, str) and USERNAME.fullmatch(name) for name in value)


def push(item: object) -> bool:
    if not (isinstance(item, list) and len(item) == 2 and names(item[:1])):
        return False
    try:
        payload = base64.b64decode(item[1], validate=True)
        message = json.loads(payload[1:])
    except (binascii.Error, TypeError, ValueError):
        return False
    return (
        payload[:1] == b"\x01"
        and isinstance(message, dict)
        and (message.get("type") in RELAYED_PUSHES)
    )


def session(item: object) -> bool:
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
        return False
    hashed, reason = item
    if not re.fullmatch(r"[0-9a-fA-F]{64}", hashed):
        return False
    return reason is None or (isinstance(reason, str) and len(reason) <= 256)


def test_a_node_written_from_the_protocol_agrees_with_the_vectors() -> None:
    document = _recorded()
    secret = bytes.fromhex(document["secret"])
    token = hkdf(secret, "udpchat cluster bus subject v1", 16)
    assert "udpchat.cluster." + token.hex() == document["subject"]
    message_key = hkdf(secret, "udpchat cluster bus message key v1", 32)
    assert message_key.hex() == document["message_key"]
    nodes = {name: bytes.fromhex(node["id"]) for name, node in document["nodes"].items()}
    for name, node in document["nodes"].items():
        assert node_key(message_key, nodes[name]).hex() == node["key"]
    counters: dict[str, int] = {}
    for message in document["messages"]:
        data = bytes.fromhex(message["message"])
        node = nodes[message["node"]]
        # The header, field by field; then the body, sealed again to the same bytes.
        assert data[0] == 1 and data[1:17] == node
        assert int.from_bytes(data[17:25], "big") == message["counter"]
        assert message["counter"] == counters.get(message["node"], 0)
        counters[message["node"]] = message["counter"] + 1
        assert int.from_bytes(data[25:33], "big") == message["sent_ms"]
        body = message["body"].encode()
        cipher = ChaCha20Poly1305(node_key(message_key, node))
        assert cipher.decrypt(nonce(message["counter"]), data[33:], data[:33]) == body
        assert data[:33] + cipher.encrypt(nonce(message["counter"]), body, data[:33]) == data
        # A node sends compact JSON, its members in the documented order.
        value = json.loads(body)
        assert json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() == body
        order = {
            "news": ["type", "users", "pushes", "sessions", "forget", "online", "offline"],
            "snapshot": ["type", "part", "parts", "users"],
            "resync": ["type"],
            "bye": ["type"],
        }
        assert list(value) == order[value["type"]]
        assert valid_body(body), message["description"]
    receiver = document["receiver"]
    stranger = StrangerReceiver(secret, nodes[receiver["node"]], receiver["started_ms"])
    verdicts = [stranger.receive(data, at) for at, data, _expected in _arrivals(document)]
    assert verdicts == [expected for _at, _data, expected in _arrivals(document)]
    # Every reason a sequence of this size can show is there (too_large and
    # too_many_nodes need a megabyte and 256 nodes: tests/test_bus_wire.py).
    assert set(verdicts) == {
        "accepted",
        "replayed",
        "forged",
        "malformed",
        "before_start",
        "stale",
        "invalid",
    }
