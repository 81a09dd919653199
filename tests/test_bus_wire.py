"""The cluster bus's wire, without NATS: only a holder of the server's private key
can name the cluster's subject or seal a message its nodes take; a forgery, an
edit, a replay or a stale message is dropped with its reason; what an authentic
message may say is bounded."""

from __future__ import annotations

import base64
import datetime
import hashlib

import attrs
import orjson
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.test_cluster_hints import NODE_A, Cluster, signed_up
from udpchat_proto import ErrorCode, LocalProtocolError, ServerKey
from udpchat_proto import messages as m
from udpchat_proto.bus import (
    FRESHNESS,
    HEADER,
    HEARTBEAT_PARTS_MAX,
    MAX_NEWS_BODY,
    MAX_PEERS,
    MAX_RECEIVED,
    MAX_REMOTE_NAMES,
    PEER_SILENCE,
    SNAPSHOT_PART,
    BusDropError,
    BusKeys,
    Bye,
    Heartbeats,
    News,
    Opener,
    RemoteNames,
    Resync,
    Sealer,
    Snapshot,
    SnapshotPart,
    bye_body,
    news_bodies,
    news_body,
    parse,
    resync_body,
    snapshot_bodies,
)
from udpchat_proto.chat import MAX_NODE_USERS, MAX_NODES, ClusterNews, encode
from udpchat_proto.e2ee import DeviceKeys
from udpchat_proto.randomness import SeededRandomSource

KEY = ServerKey.generate(SeededRandomSource("bus-wire"))
KEYS = BusKeys.derive(KEY.private_bytes)
SENDER = bytes(range(16))
RECEIVER = bytes(range(16, 32))
NEWS = ClusterNews(
    users=("bob",),
    pushes=(("bob", encode(m.InvitationReceived(from_user="alice"))),),
    sessions=((b"\x07" * 32, "revoked"), (b"\x08" * 32, None)),
    forget=("carol",),
    online=("alice",),
    offline=("dave",),
)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reason(opener: Opener, data: bytes) -> str:
    with pytest.raises(BusDropError) as dropped:
        opener.open(data)
    return dropped.value.reason


def test_the_subject_comes_from_the_private_key_and_not_from_the_public() -> None:
    token = KEYS.subject_token
    assert len(token) == 32
    public = KEY.public_bytes
    # Whatever anyone can compute from the public key (the clients all have it):
    from_public = {
        hashlib.sha256(public).hexdigest(),
        hashlib.blake2b(public).hexdigest(),
        BusKeys.derive(public).subject_token,
        public.hex(),
    }
    assert not any(token in candidate for candidate in from_public)
    # ... where the old subject was the SHA-256 of the public key:
    assert token != hashlib.sha256(public).hexdigest()[:16]
    expected = HKDF(
        algorithm=hashes.SHA256(), length=16, salt=None, info=b"udpchat cluster bus subject v1"
    ).derive(KEY.private_bytes)
    assert token == expected.hex()
    other = ServerKey.generate(SeededRandomSource("another cluster"))
    assert BusKeys.derive(other.private_bytes).subject_token != token
    # Two private keys that X25519 clamps to one public key: same public key,
    # different subjects (it is the private bytes that name it).
    twin = ServerKey(bytes([KEY.private_bytes[0] ^ 1]) + KEY.private_bytes[1:])
    assert twin.public_bytes == public
    assert BusKeys.derive(twin.private_bytes).subject_token != token
    assert KEYS.message_key not in (KEY.private_bytes, expected)
    assert KEYS.message_key.hex() not in repr(KEYS)


def test_what_a_node_seals_another_opens_once_and_reads_back() -> None:
    clock = Clock()
    sealer, opener = Sealer(KEYS, SENDER, clock), Opener(KEYS, RECEIVER, clock)
    node = SENDER.hex()
    said = []
    for body in (news_body(NEWS), *snapshot_bodies(["ann", "ben"]), resync_body(), bye_body()):
        sender, opened = opener.open(sealer.seal(body))
        assert sender == SENDER and opened == body
        said.append(parse(sender.hex(), opened))
    assert said == [
        News(node, NEWS),
        SnapshotPart(node, 0, 1, ("ann", "ben")),
        Resync(node),
        Bye(node),
    ]


def test_forgeries_and_edits_are_dropped_and_a_genuine_message_still_opens() -> None:
    clock = Clock()
    sealer, opener = Sealer(KEYS, SENDER, clock), Opener(KEYS, RECEIVER, clock)
    genuine = sealer.seal(news_body(NEWS))
    size = HEADER.size
    # What the previous release took: plain JSON naming a node, with a push.
    forged_json = orjson.dumps(
        {"node": "a" * 32, "news": {"users": [], "pushes": [["bob", "AXt9"]], "sessions": []}}
    )
    other_keys = BusKeys.derive(ServerKey.generate(SeededRandomSource("x")).private_bytes)
    edits = {
        "plain JSON": (forged_json, "malformed"),
        "random bytes": (bytes(range(256)) * 3, "malformed"),
        "empty": (b"", "malformed"),
        "no tag": (genuine[: size + 3], "malformed"),
        "another version": (b"\x02" + genuine[1:], "malformed"),
        "another cluster's key": (Sealer(other_keys, SENDER, clock).seal(b"{}"), "forged"),
        "garbled tag": (genuine[:-1] + bytes([genuine[-1] ^ 1]), "forged"),
        "tag cut off": (genuine[:-16] + bytes(16), "forged"),
        "a body byte flipped": (_flip(genuine, size + 2), "forged"),
        "the node id changed": (_flip(genuine, 1), "forged"),
        "the counter changed": (_flip(genuine, 24), "forged"),
        "the time changed": (_flip(genuine, 32), "forged"),
        "too large": (genuine + bytes(MAX_RECEIVED), "too_large"),
    }
    for name, (data, why) in edits.items():
        assert reason(opener, data) == why, name
    # None of them moved anything: the genuine one opens once, then is a replay.
    assert opener.open(genuine)[0] == SENDER
    assert reason(opener, genuine) == "replayed"
    assert opener.open(sealer.seal(bye_body()))[1] == bye_body()


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x40]) + data[index + 1 :]


def test_replays_are_dropped_but_a_reordered_message_is_taken_once() -> None:
    clock = Clock()
    sealer, opener = Sealer(KEYS, SENDER, clock), Opener(KEYS, RECEIVER, clock)
    first, second, third = (sealer.seal(bye_body()) for _ in range(3))
    opener.open(first)
    opener.open(third)
    assert reason(opener, first) == "replayed"
    assert opener.open(second)[0] == SENDER  # late, never seen: taken
    assert reason(opener, second) == "replayed"
    assert reason(opener, third) == "replayed"
    # A message bearing the receiver's own id is one of its own, replayed
    # (NATS does not echo a node's messages back to it).
    assert reason(opener, Sealer(KEYS, RECEIVER, clock).seal(bye_body())) == "replayed"


def test_a_message_sent_too_far_from_the_receivers_clock_is_stale() -> None:
    sent = 1_800_000_000.0
    clock = Clock(sent)
    sealer, opener = Sealer(KEYS, SENDER, clock), Opener(KEYS, RECEIVER, clock)
    message = sealer.seal(bye_body())
    clock.now = sent + FRESHNESS + 1  # received late
    assert reason(opener, message) == "stale"
    clock.now = sent - FRESHNESS - 1  # from the future: the receiver's clock is behind
    assert reason(opener, message) == "stale"
    clock.now = sent - FRESHNESS + 1  # within FRESHNESS
    assert opener.open(message)[0] == SENDER


def test_a_sender_whose_clock_steps_back_still_dates_messages_in_order() -> None:
    clock = Clock()
    sealer = Sealer(KEYS, SENDER, clock)
    first = sealer.seal(bye_body())
    clock.now -= 10
    second = sealer.seal(bye_body())
    assert HEADER.unpack_from(second)[3] == HEADER.unpack_from(first)[3]


def test_a_restarted_node_starts_over_and_its_old_messages_stay_dead() -> None:
    clock = Clock()
    opener = Opener(KEYS, RECEIVER, clock)
    before = Sealer(KEYS, SENDER, clock)
    captured = [before.seal(bye_body()) for _ in range(3)]
    for data in captured:
        opener.open(data)
    restarted = Sealer(KEYS, bytes(16), clock)  # a new id: counter 0 again
    assert opener.open(restarted.seal(bye_body()))[0] == bytes(16)
    # Later, the old id is forgotten, and what was captured of it is stale.
    clock.now += FRESHNESS + 1
    opener.open(restarted.seal(bye_body()))
    opener.open(Sealer(KEYS, b"\x01" * 16, clock).seal(bye_body()))  # (a new node: a sweep)
    assert opener.peers == 2
    assert {reason(opener, data) for data in captured} == {"stale"}


def test_a_message_sealed_before_the_receiver_started_is_dropped() -> None:
    """A node restarted took, for up to 30 s, a replay of what was sent before its
    start (it has no window for it): bob, on it, was told `unfriended` again while
    he and alice were friends. Whatever was sent before the start is dropped now,
    even a genuine message a moment older (lost news costs time only)."""
    start = 1_800_000_000.0
    clock = Clock(start - 1)
    sealer = Sealer(KEYS, SENDER, clock)
    captured = sealer.seal(news_body(NEWS))  # at T - 1 s
    clock.now = start - 0.005
    just_before = sealer.seal(bye_body())  # at T - 5 ms
    clock.now = start
    opener = Opener(KEYS, RECEIVER, clock)  # the node (re)starts at T
    clock.now = start + 0.01
    assert reason(opener, captured) == "before_start"
    assert reason(opener, just_before) == "before_start"
    fresh = sealer.seal(bye_body())  # at T + 10 ms
    assert opener.open(fresh) == (SENDER, bye_body())
    # The sender is known now: what it sent before the start stays dropped.
    assert reason(opener, captured) == "before_start"
    assert reason(opener, fresh) == "replayed"
    assert opener.open(Sealer(KEYS, bytes(16), Clock(start)).seal(bye_body()))[0] == bytes(16)


def test_the_nodes_a_receiver_keeps_counters_for_are_bounded() -> None:
    clock = Clock()
    opener = Opener(KEYS, RECEIVER, clock)
    for n in range(MAX_PEERS):
        opener.open(Sealer(KEYS, n.to_bytes(16, "big"), clock).seal(bye_body()))
    one_more = Sealer(KEYS, b"\xff" * 16, clock)
    assert reason(opener, one_more.seal(bye_body())) == "too_many_nodes"
    assert opener.peers == MAX_PEERS
    clock.now += FRESHNESS + 1  # all they sent is stale now: their entries go
    assert opener.open(one_more.seal(bye_body()))[0] == b"\xff" * 16
    assert opener.peers == 1


def test_keys_and_node_ids_of_the_wrong_size_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="32 bytes, not 31"):
        BusKeys.derive(KEY.private_bytes[:31])
    with pytest.raises(LocalProtocolError, match="16 bytes, not 15"):
        Sealer(KEYS, SENDER[:15], Clock())
    with pytest.raises(LocalProtocolError, match="16 bytes, not 17"):
        KEYS.node_key(SENDER + b"x")
    # Each node seals under a key of its own: its counter is a nonce no other uses.
    assert KEYS.node_key(SENDER) != KEYS.node_key(RECEIVER)
    assert KEYS.subject == f"udpchat.cluster.{KEYS.subject_token}"


def test_a_dropped_message_from_a_new_node_keeps_no_window() -> None:
    """A counter no window takes (2**64 - 1 is no nonce) must not hold one of the
    MAX_PEERS places, nor move the window a genuine message then opens in."""
    clock = Clock()
    opener = Opener(KEYS, RECEIVER, clock)
    sealer = Sealer(KEYS, SENDER, clock)
    header = HEADER.pack(1, SENDER, 2**64 - 1, int(clock.now * 1000))
    last = header + KEYS.cipher_for(SENDER).encrypt((2**64 - 1).to_bytes(12, "big"), b"{}", header)
    assert reason(opener, last) == "replayed"
    assert opener.peers == 0
    assert opener.open(sealer.seal(bye_body()))[0] == SENDER
    assert opener.peers == 1


def test_news_too_large_for_one_message_goes_in_parts_in_order() -> None:
    pushes = tuple((f"user{n}", encode(m.Unfriended(by_user=f"u{n}"))) for n in range(20_000))
    news = ClusterNews(users=("ann", "ben", "cid"), pushes=pushes, online=("dee",))
    bodies = news_bodies(news)
    assert len(bodies) > 1 and all(len(b) <= MAX_NEWS_BODY for b in bodies)
    parts = [parse("a", b) for b in bodies]
    assert all(isinstance(p, News) for p in parts)
    said = [p.news for p in parts if isinstance(p, News)]
    assert tuple(p for n in said for p in n.pushes) == pushes  # (in their order)
    assert tuple(u for n in said for u in n.users) == news.users
    assert tuple(u for n in said for u in n.online) == news.online
    small = ClusterNews(users=("bob",))
    assert news_bodies(small) == [news_body(small)]


def test_news_whose_lists_hold_one_entry_each_is_still_split() -> None:
    """Halving every list left the first half empty and the second whole: news of
    one name and one large push recursed for ever. The first entry goes first."""
    large = encode(m.Unfriended(by_user="bob")) + b" " * MAX_NEWS_BODY
    news = ClusterNews(users=("ann",), pushes=(("bob", large),))
    bodies = news_bodies(news)
    assert len(bodies) == 2
    assert orjson.loads(bodies[0])["users"] == ["ann"]
    assert orjson.loads(bodies[0])["pushes"] == []
    assert orjson.loads(bodies[1])["users"] == []
    assert base64.b64decode(orjson.loads(bodies[1])["pushes"][0][1]) == large  # (alone)


def body(**fields: object) -> bytes:
    return orjson.dumps(fields)


def news(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "type": "news",
        "users": [],
        "pushes": [],
        "sessions": [],
        "forget": [],
        "online": [],
        "offline": [],
    }
    return body(**{**fields, **changes})


def b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


MESSAGE = m.ChatMessage(
    id=bytes(16),
    sender="alice",
    to="bob",
    text="FORGED: wire 500 EUR",
    sent_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
)


DEVICE = DeviceKeys(
    user="bob",
    device_id=b"\x01" * 16,
    curve25519=b"\x02" * 32,
    ed25519=b"\x03" * 32,
    signature=b"\x04" * 64,
)

LOW = encode(m.OneTimeKeysLow(one_time_keys=3, fallback_used=True))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("not JSON", b"{"),
        ("not an object", b"[]"),
        ("no type", body()),
        ("unknown type", body(type="shutdown")),
        ("a list missing", body(type="news")),
        ("a name not lowercase", news(online=["Alice"])),
        ("a name with a space", news(users=["bob smith"])),
        ("a name too long", news(forget=["x" * 33])),
        ("a name that is a number", news(offline=[5])),
        ("names not a list", news(users="bob")),
        ("a push that is an error answer", news(pushes=[["bob", b64(encode(
            m.ErrorResponse(request_id=7, code=ErrorCode.INTERNAL, message="\x1b[2J")))]])),
        ("a push that is a message", news(pushes=[["bob", b64(encode(
            m.MessageDelivered(message=MESSAGE)))]])),
        ("a push that is presence", news(pushes=[["bob", b64(encode(
            m.PresenceChanged(username="alice", online=True)))]])),
        ("a push that does not decode", news(pushes=[["bob", b64(b"\x01{}")]])),
        ("a push for one device", news(pushes=[["bob", b64(encode(
            m.OneTimeKeysLow(one_time_keys=3, fallback_used=False)))]])),
        ("a push not in base64", news(pushes=[["bob", "!!"]])),
        ("a push for nobody", news(pushes=[["", b64(encode(m.Unfriended(by_user="a")))]])),
        ("a push of three", news(pushes=[["bob", "", ""]])),
        ("a device push that is for every device", news(device_pushes=[["bob", "01" * 16, b64(
            encode(m.DeviceAdded(user="bob", device=DEVICE)))]])),
        ("a device push that is a message", news(device_pushes=[["bob", "01" * 16, b64(
            encode(m.MessageDelivered(message=MESSAGE)))]])),
        ("a device push with a short id", news(device_pushes=[["bob", "01" * 15, b64(LOW)]])),
        ("a device push with no id", news(device_pushes=[["bob", None, b64(LOW)]])),
        ("a device push for nobody", news(device_pushes=[["", "01" * 16, b64(LOW)]])),
        ("a device push of two", news(device_pushes=[["bob", b64(LOW)]])),
        ("device pushes not a list", news(device_pushes="bob")),
        ("a short token hash", news(sessions=[["07" * 31, None]])),
        ("a token hash not hex", news(sessions=[["zz" * 32, None]])),
        ("a long reason", news(sessions=[["07" * 32, "x" * 257]])),
        ("a reason that is a number", news(sessions=[["07" * 32, 3]])),
        ("a part over its names", body(type="snapshot", part=0, parts=1,
                                       users=[f"u{n}" for n in range(SNAPSHOT_PART + 1)])),
        ("too many parts", body(type="snapshot", part=0, parts=HEARTBEAT_PARTS_MAX + 1, users=[])),
        ("a part past the last", body(type="snapshot", part=2, parts=2, users=[])),
        ("a negative part", body(type="snapshot", part=-1, parts=2, users=[])),
        ("a part that is true", body(type="snapshot", part=True, parts=2, users=[])),
        ("a part that is text", body(type="snapshot", part="0", parts=2, users=[])),
    ],
)  # fmt: skip
def test_an_authentic_message_that_says_what_no_node_says_is_invalid(
    name: str, data: bytes
) -> None:
    with pytest.raises(BusDropError) as dropped:
        parse("node", data)
    assert dropped.value.reason == "invalid", name


def test_every_push_a_node_hands_to_another_passes() -> None:
    pushes: list[m.Push | m.DevicePush] = [
        m.DeviceAdded(user="bob", device=DEVICE),
        m.InvitationReceived(from_user="alice"),
        m.InvitationAnswered(by_user="bob", accepted=True),
        m.InvitationCancelled(by_user="bob"),
        m.Unfriended(by_user="bob"),
        m.RoomMembershipChanged(room="#r", username="bob", joined=False),
        m.DeliveryReceipts(
            receipts=(
                m.DeliveryReceipt(message_id=bytes(16), to="bob", delivered_at=MESSAGE.sent_at),
            )
        ),
    ]
    said = parse("n", news(pushes=[["bob", b64(encode(p))] for p in pushes]))
    assert isinstance(said, News)
    assert [payload for _user, payload in said.news.pushes] == [encode(p) for p in pushes]


def test_a_push_for_one_device_names_it_and_a_body_without_any_says_nothing_new() -> None:
    news_of = ClusterNews(device_pushes=(("bob", b"\x01" * 16, LOW),))
    said = parse("n", news_body(news_of))
    assert said == News("n", news_of)
    # Without any, the body is what a node sent before they existed (and such a
    # node, which reads no member it does not know, ignores them).
    assert b"device_pushes" not in news_body(NEWS)
    assert parse("n", news(device_pushes=[])) == News("n", ClusterNews())
    # A news too large for one body is cut with them, as with every list.
    many = ClusterNews(device_pushes=tuple(("bob", bytes(16), LOW) for _ in range(20_000)))
    bodies = news_bodies(many)
    assert len(bodies) > 1 and all(len(body) <= MAX_NEWS_BODY for body in bodies)
    parts = [parse("n", body) for body in bodies]
    assert sum(len(p.news.device_pushes) for p in parts if isinstance(p, News)) == 20_000


def test_a_heartbeat_in_parts_is_put_together_and_a_gap_starts_over() -> None:
    names = [f"user{n:05d}" for n in range(4500)]
    bodies = snapshot_bodies(names)
    assert len(bodies) == 3
    parts = [parse("a", b) for b in bodies]
    assert all(isinstance(p, SnapshotPart) for p in parts)
    heartbeats = Heartbeats()
    assert [heartbeats.add(p) for p in parts] == [None, None, Snapshot("a", names)]  # type: ignore[arg-type]
    assert heartbeats.pending == 0
    # A lost part: what came is not taken as the whole; the next heartbeat is.
    assert heartbeats.add(parts[0]) is None  # type: ignore[arg-type]
    assert heartbeats.add(parts[2]) is None  # type: ignore[arg-type]
    assert heartbeats.pending == 0
    assert [heartbeats.add(p) for p in parts][-1] == Snapshot("a", names)  # type: ignore[arg-type]
    # A part claiming another length does not continue the heartbeat.
    heartbeats.add(SnapshotPart("b", 0, 3, ("x",)))
    assert heartbeats.add(SnapshotPart("b", 1, 2, ("y",))) is None
    assert heartbeats.pending == 0
    # Half-received heartbeats are bounded: the oldest goes.
    for n in range(MAX_NODES + 1):
        heartbeats.add(SnapshotPart(f"node{n}", 0, 2, ("x",)))
    assert heartbeats.pending == MAX_NODES
    assert heartbeats.add(SnapshotPart("node0", 1, 2, ("y",))) is None  # forgotten
    assert heartbeats.add(SnapshotPart("node1", 1, 2, ("y",))) == Snapshot("node1", ["x", "y"])


def test_a_heartbeat_is_at_most_heartbeat_parts_max_parts() -> None:
    names = [f"u{n:06d}" for n in range(SNAPSHOT_PART * (HEARTBEAT_PARTS_MAX + 3))]
    bodies = snapshot_bodies(names)
    assert len(bodies) == HEARTBEAT_PARTS_MAX
    heartbeats = Heartbeats()
    whole = [heartbeats.add(parse("a", b)) for b in bodies][-1]  # type: ignore[arg-type]
    assert whole == Snapshot("a", names[: SNAPSHOT_PART * HEARTBEAT_PARTS_MAX])
    assert snapshot_bodies([]) == [body(type="snapshot", part=0, parts=1, users=[])]


def test_half_received_heartbeats_hold_at_most_max_remote_names_names() -> None:
    """Thirty-two made-up nodes, each sending all but the last part of a full
    heartbeat, held two million names (31 parts of 2,000 each) until the next."""
    heartbeats = Heartbeats()
    part = tuple(f"u{n:05d}" for n in range(SNAPSHOT_PART))
    for node in range(MAX_NODES):
        for index in range(HEARTBEAT_PARTS_MAX - 1):
            heartbeats.add(SnapshotPart(f"node{node}", index, HEARTBEAT_PARTS_MAX, part))
        assert heartbeats.pending_names <= MAX_REMOTE_NAMES
    assert heartbeats.pending_names > MAX_REMOTE_NAMES - HEARTBEAT_PARTS_MAX * SNAPSHOT_PART
    # The latest are kept, and still complete.
    last = f"node{MAX_NODES - 1}"
    whole = heartbeats.add(SnapshotPart(last, HEARTBEAT_PARTS_MAX - 1, HEARTBEAT_PARTS_MAX, part))
    assert whole is not None and len(whole.users) == HEARTBEAT_PARTS_MAX * SNAPSHOT_PART
    assert heartbeats.add(SnapshotPart("node0", 31, 32, part)) is None  # (dropped: the oldest)
    heartbeats.forget(f"node{MAX_NODES - 2}")
    partial = (HEARTBEAT_PARTS_MAX - 1) * SNAPSHOT_PART
    assert heartbeats.pending_names == heartbeats.pending * partial


FULL = HEARTBEAT_PARTS_MAX * SNAPSHOT_PART


def full_heartbeat(node: int, tag: str = "") -> Snapshot:
    """A heartbeat of ``FULL`` made-up names, as a node holding the key could send."""
    return Snapshot(f"node{node:02d}", [f"n{node:02d}{tag}x{n:05d}" for n in range(FULL)])


def test_the_names_taken_from_all_other_nodes_together_are_bounded() -> None:
    """Forty made-up nodes' full heartbeats took a node from 63 to 636 MiB and
    counted 1.98 million users online: the core keeps 65,536 names for each of 32
    nodes. What the bus hands on is bounded in all now, whatever the nodes."""
    names = RemoteNames()
    handed = [names.snapshot(full_heartbeat(n), now=0.0) for n in range(40)]
    sizes = [len(s.users) for s in handed]
    assert sum(sizes) == names.held == MAX_REMOTE_NAMES
    assert sizes[:4] == [FULL] * 4 and sizes[4] == MAX_REMOTE_NAMES - 4 * FULL
    assert set(sizes[5:]) == {0}
    assert names.ignored == 40 * FULL - MAX_REMOTE_NAMES
    assert handed[4].users == full_heartbeat(4).users[: sizes[4]]  # (the first names)
    # A node's next heartbeat replaces its own count: the same room again.
    assert len(names.snapshot(full_heartbeat(0, "b"), now=1.0).users) == FULL
    assert names.held == MAX_REMOTE_NAMES
    # News: the names that came online are cut to the room; the rest passes.
    news = ClusterNews(users=("bob",), pushes=NEWS.pushes, online=("late", "later"))
    cut = names.news(News("node07", news), now=1.0)
    assert cut == News("node07", attrs.evolve(news, online=()))
    assert names.ignored == 40 * FULL - MAX_REMOTE_NAMES + 2
    # A goodbye makes room, and so does silence.
    names.forget("node00")
    assert len(names.snapshot(full_heartbeat(39), now=2.0).users) == FULL
    assert names.held == MAX_REMOTE_NAMES
    assert names.snapshot(full_heartbeat(38), now=2.0).users == []
    late = PEER_SILENCE + 1.5  # node01 .. node04 are silent; node39 was heard at 2
    assert len(names.snapshot(full_heartbeat(38), now=late).users) == FULL
    assert names.news(News("node37", news), now=late).news == news
    assert names.held == 2 * FULL + 2


def test_news_a_node_holds_no_more_than_the_core_keeps_for_one_node() -> None:
    names = RemoteNames()
    online = tuple(f"u{n:05d}" for n in range(MAX_NODE_USERS + 10))
    assert names.news(News("a", ClusterNews(online=online)), now=0.0).news.online == online
    assert names.held == MAX_NODE_USERS  # (the core ignores the rest itself)
    assert names.ignored == 0


def test_a_node_fed_forty_made_up_nodes_counts_at_most_max_remote_names_online() -> None:
    """What the bus hands on, given to the core: memory and the online count stay
    bounded whatever the number of nodes."""
    cluster = Cluster()
    signed_up(cluster)  # alice on node A, bob on node B
    node = cluster.nodes[NODE_A]
    names = RemoteNames()
    for n in range(40):
        heard = names.snapshot(full_heartbeat(n), cluster.now)
        node.receive_snapshot(heard.node, heard.users, cluster.now)
    assert node.online_count <= MAX_REMOTE_NAMES + 2
