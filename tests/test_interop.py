"""Interoperability: a client written from docs/PROTOCOL.md on third-party libraries.

The client (:mod:`tests.stranger`) does the Noise NX handshake with
``noiseprotocol``, protects packets with the split keys and ``cryptography``'s
ChaCha20Poly1305, and writes frames and messages as the specification describes
them; it talks to the server role sans-IO. A second test checks that our Noise
code and ``noiseprotocol`` write the same bytes for the same keys, ephemerals,
prologues and payloads.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.stranger import (
    SansIOServer,
    StrangerClient,
    answer,
    connect,
    established,
    exchange,
    noise_handshake,
    varint,
)
from udpchat_proto.errors import ErrorCode
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport.handshake import HandshakeState, public_key
from udpchat_proto.transport.keys import fingerprint


def test_a_client_on_third_party_libraries_registers_logs_in_and_chats() -> None:
    server = SansIOServer(seed=1)
    alice, bob = StrangerClient("alice", 1), StrangerClient("bob", 2)
    clients = {alice.address: alice, bob.address: bob}
    for client in (alice, bob):
        connect(server, client)
        assert client.server_key == server.key.public_bytes
        assert fingerprint(client.server_key) == server.key.fingerprint

    tokens = {}
    for client, name in ((alice, "alice"), (bob, "bob")):
        # The first DATA packet: PING (handshake confirmation) and requests together.
        register, frames = client.request(
            {"type": "register", "username": name, "password": "a long password"}
        )
        login, more = client.request(
            {"type": "login", "username": name, "password": "a long password"}
        )
        exchange(server, client, clients, b"\x01" + frames + more)
        assert answer(client, register) == {"type": "ok", "request_id": register}
        logged_in = answer(client, login)
        assert logged_in["type"] == "logged_in" and logged_in["username"] == name
        tokens[name] = bytes.fromhex(logged_in["token"])
        assert len(tokens[name]) == 32
        assert {"type": "caught_up"} in client.messages

    invite, frames = alice.request({"type": "invite", "username": "bob"})
    exchange(server, alice, clients, alice.ack_frame() + frames)
    assert answer(alice, invite)["type"] == "ok"
    assert {"type": "invitation_received", "from_user": "alice"} in bob.messages
    accept, frames = bob.request({"type": "accept_invitation", "username": "alice"})
    exchange(server, bob, clients, bob.ack_frame() + frames)
    assert answer(bob, accept)["type"] == "ok"

    message_id = bytes(range(16)).hex()
    send, frames = alice.request(
        {"type": "send_message", "message_id": message_id, "to": "bob", "text": "hi, bob"}
    )
    exchange(server, alice, clients, alice.ack_frame() + frames)
    accepted = answer(alice, send)
    assert accepted["type"] == "message_accepted" and accepted["message_id"] == message_id
    delivered = [m for m in bob.messages if m["type"] == "message_delivered"]
    assert [d["message"]["text"] for d in delivered] == ["hi, bob"]
    assert delivered[0]["message"]["sender"] == "alice"
    assert delivered[0]["message"]["sent_at"] == accepted["sent_at"]

    # ack_delivery carries no request_id and gets no answer; the sender is told.
    # (A request_id it carries anyway is ignored.)
    before = len(bob.messages)
    acknowledgement = {"type": "ack_delivery", "message_ids": [message_id], "request_id": 99}
    exchange(server, bob, clients, bob.ack_frame() + bob.encode(acknowledgement))
    assert len(bob.messages) == before
    server.now += 2.0  # the cursor is written within a second (CURSOR_WRITE_DELAY)
    for datagram, to in server.end_batch():
        clients[to].receive(datagram)
    status, frames = alice.request({"type": "get_message_status", "message_id": message_id})
    exchange(server, alice, clients, alice.ack_frame() + frames)
    assert answer(alice, status)["delivered_at"] is not None

    # get_history's limit and before are optional (limit 20, the newest page).
    history, frames = bob.request({"type": "get_history", "peer": "alice"})
    exchange(server, bob, clients, bob.ack_frame() + frames)
    assert [m["text"] for m in answer(bob, history)["messages"]] == ["hi, bob"]

    # CLOSE: code 0 and a reason. The server drains: it sends nothing more.
    exchange(server, alice, clients, b"\x04" + varint(0) + varint(3) + b"bye")
    assert server.feed(alice.packet(b"\x01"), alice.address) == []
    # Bob's connection goes on.
    listing, frames = bob.request({"type": "list_friends"})
    exchange(server, bob, clients, bob.ack_frame() + frames)
    assert answer(bob, listing)["friends"] == [{"username": "alice", "online": False}]


# --- our Noise and noiseprotocol write the same bytes ----------------------------------------

keys = st.binary(min_size=32, max_size=32)


@settings(max_examples=60, deadline=None)
@given(
    static=keys,
    initiator_ephemeral=keys,
    responder_ephemeral=keys,
    prologue=st.binary(max_size=64),
    payload1=st.binary(max_size=1200),
    payload2=st.binary(max_size=200),
    transport=st.lists(st.binary(max_size=300), max_size=4),
)
def test_our_noise_and_noiseprotocol_write_the_same_bytes(
    *,
    static: bytes,
    initiator_ephemeral: bytes,
    responder_ephemeral: bytes,
    prologue: bytes,
    payload1: bytes,
    payload2: bytes,
    transport: list[bytes],
) -> None:
    unused = SeededRandomSource("unused: the ephemerals are fixed")
    ours_i = HandshakeState.initiator(
        random=unused, prologue=prologue, ephemeral_private=initiator_ephemeral
    )
    ours_r = HandshakeState.responder(
        static_private=static,
        random=unused,
        prologue=prologue,
        ephemeral_private=responder_ephemeral,
    )
    theirs_i = noise_handshake(initiator=True, prologue=prologue, ephemeral=initiator_ephemeral)
    theirs_r = noise_handshake(
        initiator=False, prologue=prologue, ephemeral=responder_ephemeral, static=static
    )

    message1 = ours_i.write_message(payload1)
    assert bytes(theirs_i.write_message(payload1)) == message1
    assert bytes(theirs_r.read_message(message1)) == payload1
    assert ours_r.read_message(message1) == payload1
    message2 = ours_r.write_message(payload2)
    assert bytes(theirs_r.write_message(payload2)) == message2
    assert bytes(theirs_i.read_message(message2)) == payload2
    assert ours_i.read_message(message2) == payload2

    assert ours_i.remote_static_public == public_key(static)
    for ours in (ours_i, ours_r):
        assert ours.handshake_hash == theirs_i.get_handshake_hash() == theirs_r.get_handshake_hash()
    c1, c2 = ours_i.split()
    assert c1.key == theirs_i.noise_protocol.cipher_state_encrypt.k
    assert c2.key == theirs_i.noise_protocol.cipher_state_decrypt.k
    for index, payload in enumerate(transport):  # alternating, from the initiator
        if index % 2 == 0:
            sealed = c1.encrypt_with_ad(b"", payload)
            assert bytes(theirs_i.encrypt(payload)) == sealed
            assert bytes(theirs_r.decrypt(sealed)) == payload
        else:
            sealed = c2.encrypt_with_ad(b"", payload)
            assert bytes(theirs_r.encrypt(payload)) == sealed
            assert bytes(theirs_i.decrypt(sealed)) == payload


# --- what PROTOCOL.md says of bad input, checked from outside (issue 23, items 15-20) --------

TEXT_ID = "00" * 16


def raw_request(client: StrangerClient, body: bytes) -> tuple[int, bytes]:
    """A request whose JSON members after ``type`` are written as raw bytes."""
    request_id = client.next_request_id
    client.next_request_id += 1
    prefix = b'\x01{"request_id":%d,"message_id":"%s","type":' % (request_id, TEXT_ID.encode())
    return request_id, client.encode_raw(prefix + body + b"}")


def test_a_request_whose_id_is_readable_is_answered_even_if_it_is_not_strict_json() -> None:
    """Item 15: a raw 0xff or a lone surrogate made orjson refuse the whole message,
    and it went unanswered; the spec promises invalid_text (and the rule's code)."""
    server, client, clients = established()
    cases = [
        (b'"send_message","to":"bob","text":"a\xffb"', "invalid_text"),
        (b'"send_message","to":"bob","text":"\\ud800"', "invalid_text"),
        (b'"register","username":"b\xffb","password":"long enough"', "invalid_username"),
        (b'"register","username":"bob","password":"long \\udfff enough"', "invalid_password"),
        (b'"list_online","note":NaN', "bad_request"),
    ]
    sent = [raw_request(client, body) for body, _ in cases]
    exchange(server, client, clients, b"".join(frames for _, frames in sent))
    for (request_id, _), (_, code) in zip(sent, cases, strict=True):
        assert answer(client, request_id)["code"] == code
    assert [m["request_id"] for m in client.messages] == [rid for rid, _ in sent]
    assert server.server.stats.violations == 0


@settings(max_examples=40, deadline=None)
@given(
    body=st.sampled_from(
        [
            b'"send_message","to":"bob","text":"hi @ there"',
            b'"register","username":"bob@","password":"long enough @"',
            b'"invite","username":"@bob"',
            b'"get_history","peer":"#tea@","limit":5',
            b'"join_room","room":"#t@ea"',
        ]
    ),
    insertion=st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=3).map(
                lambda b: b.replace(b'"', b"").replace(b"\\", b"")
            ),
            st.sampled_from([b"\\ud800", b"\\udfff", b"\xff", b"\xe2\x82"]),
        ),
        max_size=4,
    ).map(b"".join),
)
def test_any_request_whose_id_can_be_read_is_answered_exactly_once(
    body: bytes, insertion: bytes
) -> None:
    server, client, clients = established()
    request_id, frames = raw_request(client, body.replace(b"@", insertion))
    _, after = client.request({"type": "list_rooms"})
    exchange(server, client, clients, frames + after)
    reply = answer(client, request_id)  # exactly one
    assert reply["type"] != "error" or reply["code"] in {code.value for code in ErrorCode}
    assert answer(client, request_id + 1)["type"] == "error"  # not_logged_in: still in order
    assert server.server.stats.violations == 0


@pytest.mark.parametrize(
    "message",
    [
        {"type": "message_delivered", "message": {"text": "no id"}},
        {"type": "logged_in", "username": "bob"},
        {"type": "ok", "request_id": "1"},
        {"type": "presence_changed", "username": 5, "online": True},
        {"type": "ack_delivery", "message_ids": ["zz"]},
    ],
)
def test_a_malformed_message_only_a_server_sends_is_a_violation_not_answered(
    message: dict[str, Any],
) -> None:
    """Item 16: these got bad_request with the text "KeyError: 'id'"."""
    server, client, clients = established()
    exchange(server, client, clients, client.encode({"request_id": 9, **message}))
    assert client.messages == []
    assert server.server.stats.violations == 1


def test_too_many_bad_messages_close_with_protocol_violation() -> None:
    """Item 17: the CLOSE frame carried NORMAL_CLOSE (0) and a "protocol violation"
    reason; PROTOCOL.md names PROTOCOL_VIOLATION (1) for a peer that broke the protocol."""
    server, client, clients = established()
    frames = b"".join(client.encode_raw(b"\x01not json") for _ in range(17))  # max_violations + 1
    exchange(server, client, clients, frames)
    assert client.closed is not None
    code, reason = client.closed
    assert code == 1
    assert reason == "too many bad messages; the last: undecodable payload (malformed)"


@pytest.mark.parametrize("request_id", [-1, 2**32, 2**64])
def test_a_request_id_out_of_range_is_dropped_unanswered(request_id: int) -> None:
    """Item 18: PROTOCOL.md said bad_request in one place and dropped in another. It is
    dropped (a violation): an answer could not carry an id outside 0..2^32-1."""
    server, client, clients = established()
    frames = client.encode({"type": "list_online", "request_id": request_id})
    frames += client.encode({"type": "list_online", "request_id": 2**32 - 1})
    exchange(server, client, clients, frames)
    assert [m["request_id"] for m in client.messages] == [2**32 - 1]
    assert server.server.stats.violations == 1


@pytest.mark.parametrize(
    "first", ["stream", "padding"], ids=["requests-without-ping", "padding-only"]
)
def test_any_authenticated_first_packet_confirms_the_handshake(first: str) -> None:
    """Item 19: the spec said the first DATA packet must carry a PING, yet one without
    was accepted. The server needs none: any authenticated packet confirms; a client
    should make it ack-eliciting so that it learns the confirmation arrived."""
    server = SansIOServer(seed=3)
    client = StrangerClient("alice", 3)
    clients = {client.address: client}
    connect(server, client)
    request_id, frames = client.request({"type": "list_online"})
    exchange(server, client, clients, frames if first == "stream" else bytes(20))
    assert server.server.connection_count == 1
    if first == "padding":
        assert client.messages == []
        exchange(server, client, clients, frames)
    assert answer(client, request_id)["code"] == "not_logged_in"


def test_a_lone_ping_is_acknowledged_within_25_ms() -> None:
    """Item 19: PROTOCOL.md's max_ack_delay, with room for the server loop's lateness."""
    server, client, _ = established()

    def ack_time(sent: float) -> float:
        timer = server.server.get_timer()
        assert timer is not None
        server.now = timer
        server.server.handle_timer(timer)
        (ack,) = server.server.datagrams_to_send(timer)
        assert not client.receive(ack[0])  # an ACK alone
        return timer - sent

    assert ack_time(server.now) <= 0.020 + 1e-9  # the first packet's PING
    server.now += 1.0
    server.feed(client.packet(b"\x01"), client.address)
    assert ack_time(server.now) <= 0.020 + 1e-9


def test_what_follows_a_close_in_its_packet_is_ignored() -> None:
    """Item 20: frames before a CLOSE count (a request in them is carried out), nothing
    after it does, and garbage after it does not make the close a violation."""
    server, client, clients = established()
    account = {"username": "alice", "password": "long enough"}
    _, frames = client.request({"type": "register", **account})
    _, login = client.request({"type": "login", **account})
    exchange(server, client, clients, frames + login)
    _, join = client.request({"type": "join_room", "room": "#before"})
    _, ignored = client.request({"type": "join_room", "room": "#after"})
    close = b"\x04" + varint(0) + varint(3) + b"bye"
    assert server.feed(client.packet(join + close + ignored + b"\xff"), client.address) == []
    assert server.server.stats.violations == 0 and client.closed is None
    other = StrangerClient("alice-again", 4)
    clients[other.address] = other
    connect(server, other)
    _, login = other.request({"type": "login", **account})
    rooms, listing = other.request({"type": "list_rooms"})
    exchange(server, other, clients, b"\x01" + login + listing)
    assert answer(other, rooms)["rooms"] == [{"room": "#before", "members": 1}]


def test_a_member_given_twice_counts_once_the_last() -> None:
    """Item 20: PROTOCOL.md says so."""
    server, client, clients = established()
    body = b'"register","username":"first","username":"second","password":"long enough"'
    request_id, frames = raw_request(client, body)
    _, login = client.request({"type": "login", "username": "second", "password": "long enough"})
    exchange(server, client, clients, frames + login)
    assert answer(client, request_id)["type"] == "ok"
    assert answer(client, request_id + 1)["username"] == "second"


@pytest.mark.parametrize(("position", "value"), [(42, 5), (42, 25), (43, 1), (1199, 1)], ids=str)
def test_an_initiation_laid_out_otherwise_gets_no_response(position: int, value: int) -> None:
    """Item 20: the token length (0 or 24) and the zero padding were not checked."""
    server = SansIOServer(seed=5)
    client = StrangerClient("alice", 5)
    initiation = bytearray(client.initiation())
    initiation[position] = value
    assert server.feed(bytes(initiation), client.address) == []
    assert server.server.connection_count == 0
