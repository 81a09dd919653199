"""Interoperability: a client written from docs/PROTOCOL.md on third-party libraries.

The client (:mod:`tests.stranger`) does the Noise NX handshake with
``noiseprotocol``, protects packets with the split keys and ``cryptography``'s
ChaCha20Poly1305, and writes frames and messages as the specification describes
them; it talks to the server role sans-IO. A second test checks that our Noise
code and ``noiseprotocol`` write the same bytes for the same keys, ephemerals,
prologues and payloads.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.stranger import (
    SansIOServer,
    StrangerClient,
    answer,
    connect,
    exchange,
    noise_handshake,
    varint,
)
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
    server.server.handle_timer(server.now)
    server.server.commit()
    for datagram, to in server.server.datagrams_to_send(server.now):
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
