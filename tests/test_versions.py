"""Versions: a server answers what it does not speak, never with silence.

* An INITIATION of a transport version the server does not speak (at least 1200
  bytes) gets a VERSION_NEGOTIATION listing the versions it does; a client shows it.
* On a version 1 connection, a message with a higher version byte, or of a type
  the server does not know (a request added later), is answered ``error`` with
  ``unsupported_version`` or ``unknown_request`` when its ``request_id`` is readable.
"""

from __future__ import annotations

import json

import pytest

from tests.stranger import SansIOServer, StrangerClient, answer, connect, exchange
from udpchat_proto import CloseCode
from udpchat_proto import messages as m
from udpchat_proto.chat.client import ClientConnection
from udpchat_proto.chat.codec import decode
from udpchat_proto.chat.events import Connected, Disconnected
from udpchat_proto.errors import DecodeError, ErrorCode
from udpchat_proto.randomness import SeededRandomSource
from udpchat_proto.transport import ClientTransport, ConnectionTerminated
from udpchat_proto.transport.packets import INITIATION_SIZE

SERVER = ("192.0.2.1", 9999)


def _initiation_of_version(version: int, seed: int = 1) -> tuple[StrangerClient, bytes]:
    client = StrangerClient("later", seed)
    initiation = client.initiation()
    return client, initiation[:1] + bytes([version]) + initiation[2:]


def test_an_initiation_of_another_version_gets_the_versions_the_server_speaks() -> None:
    server = SansIOServer(seed=1)
    for version in (0, 2, 255):
        client, initiation = _initiation_of_version(version, seed=version)
        replies = server.feed(initiation, client.address)
        # type 0x05, the connection id echoed, then one byte per version spoken.
        assert replies == [(b"\x05" + client.connection_id + b"\x01", client.address)]
    assert server.server.transport_dropped["unsupported_version"] == 3
    assert server.server.connection_count == 0  # nothing kept


def test_a_short_one_gets_nothing_an_answer_must_not_amplify() -> None:
    server = SansIOServer(seed=1)
    client, initiation = _initiation_of_version(2)
    assert server.feed(initiation[: INITIATION_SIZE - 1], client.address) == []
    # A longer one is answered (a later version may pad more).
    assert len(server.feed(initiation + bytes(100), client.address)) == 1


def _client(seed: str) -> tuple[ClientTransport, bytes]:
    client = ClientTransport(server_address=SERVER, random=SeededRandomSource(seed))
    client.connect(0.0)
    [(initiation, _)] = client.datagrams_to_send(0.0)
    return client, initiation


def test_the_client_ends_the_handshake_with_the_servers_versions() -> None:
    client, _ = _client("a")
    client.receive_datagram(b"\x05" + client.connection_id + b"\x02\x03", SERVER, 0.1)
    event = client.next_event()
    assert isinstance(event, ConnectionTerminated)
    assert event.code is CloseCode.UNSUPPORTED_VERSION
    assert event.reason == "the server speaks protocol version 2, 3; this client speaks 1"
    assert client.is_closed
    assert client.datagrams_to_send(0.2) == []


def test_a_version_negotiation_listing_our_version_or_another_id_is_ignored() -> None:
    server = SansIOServer(seed=1)
    client, initiation = _client("b")
    # Forged or garbled: it lists version 1, or names another connection.
    client.receive_datagram(b"\x05" + client.connection_id + b"\x01\x02", SERVER, 0.1)
    client.receive_datagram(b"\x05" + bytes(8) + b"\x02", SERVER, 0.1)
    assert client.next_event() is None
    assert client.dropped == {"unexpected_version_negotiation": 1, "unknown_connection": 1}
    # The handshake goes on, and once established a late one changes nothing.
    [(response, _)] = server.feed(initiation, ("198.51.100.9", 5000))
    client.receive_datagram(response, SERVER, 0.2)
    assert client.is_established
    client.receive_datagram(b"\x05" + client.connection_id + b"\x02", SERVER, 0.3)
    assert client.is_established


def test_the_chat_client_reports_it_as_a_disconnection_with_the_reason() -> None:
    connection = ClientConnection(server_address=SERVER, random=SeededRandomSource("c"))
    connection.connect(0.0)
    [(initiation, _)] = connection.datagrams_to_send(0.0)
    answer_ = b"\x05" + initiation[2:10] + b"\x02"
    connection.receive_datagram(answer_, SERVER, 0.1)
    events = []
    while (event := connection.next_event()) is not None:
        events.append(event)
    assert events == [
        Disconnected(
            code=CloseCode.UNSUPPORTED_VERSION,
            reason="the server speaks protocol version 2; this client speaks 1",
        )
    ]
    assert not any(isinstance(event, Connected) for event in events)


def _established() -> tuple[SansIOServer, StrangerClient, dict[object, StrangerClient]]:
    server = SansIOServer(seed=2)
    client = StrangerClient("alice", 7)
    connect(server, client)
    exchange(server, client, {client.address: client}, b"\x01")  # PING: confirmed
    return server, client, {client.address: client}


def test_a_message_of_a_higher_version_is_answered_unsupported_version() -> None:
    server, client, clients = _established()
    body = json.dumps({"type": "list_online", "request_id": 5, "something": "new"}).encode()
    exchange(server, client, clients, client.ack_frame() + client.encode_raw(b"\x03" + body))
    error = answer(client, 5)
    assert error["type"] == "error" and error["code"] == ErrorCode.UNSUPPORTED_VERSION
    assert error["message"] == "message version 3; this server speaks versions 1 to 2"
    assert server.server.stats.violations == 0
    # The connection goes on in version 1.
    request_id, frames = client.request({"type": "list_online"})
    exchange(server, client, clients, client.ack_frame() + frames)
    assert answer(client, request_id)["type"] == "error"  # not logged in: an answer


def test_a_request_type_the_server_does_not_know_is_answered_unknown_request() -> None:
    server, client, clients = _established()
    request_id, frames = client.request({"type": "set_status", "status": "away"})
    exchange(server, client, clients, client.ack_frame() + frames)
    error = answer(client, request_id)
    assert error == {
        "type": "error",
        "request_id": request_id,
        "code": "unknown_request",
        "message": 'unknown message type "set_status"',
    }
    assert server.server.stats.violations == 0
    # Without a readable request_id there is nobody to answer: a violation, as before.
    exchange(server, client, clients, client.ack_frame() + client.encode({"type": "set_status"}))
    assert server.server.stats.violations == 1


def test_a_higher_version_byte_not_followed_by_an_object_is_garbage() -> None:
    server, client, clients = _established()
    for payload in (b"\x03garbage", b'\x03{"request_id": 5', b"\x03[5]"):
        exchange(server, client, clients, client.ack_frame() + client.encode_raw(payload))
    assert server.server.stats.violations == 3
    assert server.server.stats.decode_errors == {"bad_version": 2, "unsupported_version": 1}
    assert client.messages == []


def test_a_refusal_with_a_code_this_client_does_not_know_is_kept_with_its_text() -> None:
    # Codes are added by later servers: a client shows one it does not know (with the
    # text), where it used to drop the whole answer and wait for nothing.
    answer = decode(
        b"\x01"
        + json.dumps(
            {"type": "error", "request_id": 7, "code": "later_code", "message": "not now"}
        ).encode()
    )
    assert isinstance(answer, m.ErrorResponse)
    assert answer.code == "later_code" and answer.message == "not now"
    assert (
        answer.code is not ErrorCode.INTERNAL and ErrorCode("user_exists") is ErrorCode.USER_EXISTS
    )
    # Only the shape of a code is checked: anything else is still undecodable.
    for bad in ("Later Code", "", "x" * 65, "1abc", 5):
        with pytest.raises(DecodeError):
            decode(
                b"\x01"
                + json.dumps(
                    {"type": "error", "request_id": 7, "code": bad, "message": "x"}
                ).encode()
            )
