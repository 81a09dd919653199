"""docs/vectors/session.json: every datagram of a whole session, replayed byte for byte.

* The file is what ``tools/session_vectors.py`` makes now (the wire behaviour did
  not drift from the recorded one).
* A fresh server fed the recorded client datagrams, at their recorded times,
  sends exactly the recorded server datagrams.
* Everything in the file can be checked without this implementation: the
  handshakes with ``noiseprotocol``, the keys, and every DATA packet opened with
  ``cryptography``'s ChaCha20Poly1305 under the documented nonce and associated data.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tests.stranger import noise_handshake, nonce

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "docs" / "vectors" / "session.json"


def _tool() -> Any:
    spec = importlib.util.spec_from_file_location(
        "session_vectors", ROOT / "tools" / "session_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["session_vectors"] = module
    spec.loader.exec_module(module)
    return module


def _recorded() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return document


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def test_the_vectors_are_what_the_generator_makes_now() -> None:
    tool = _tool()
    assert tool.render(tool.generate()) == VECTORS.read_text(encoding="utf-8"), (
        "docs/vectors/session.json is stale: if the wire change is intended, run "
        "python tools/session_vectors.py and say so in the changelog of the protocol"
    )


def test_a_fresh_server_answers_the_recorded_client_datagrams_byte_for_byte() -> None:
    tool = _tool()
    document = _recorded()
    addresses = {c["name"]: _address(c["address"]) for c in document["connections"]}
    driver = tool.ServerDriver()
    for entry in document["datagrams"]:
        if entry["to"] == "server":
            # It arrives one latency after it was sent (float sums, as recorded).
            arrival = entry["time"] + document["latency"]
            driver.receive(bytes.fromhex(entry["datagram"]), addresses[entry["from"]], arrival)
    driver.advance(document["end"])
    sent = [(time, data.hex(), addr) for time, data, addr in driver.sent]
    expected = [
        (entry["time"], entry["datagram"], addresses[entry["to"]])
        for entry in document["datagrams"]
        if entry["from"] == "server"
    ]
    assert len(expected) > 15
    assert sent == expected


def test_the_vectors_check_out_with_third_party_libraries() -> None:
    document = _recorded()
    server = document["server"]
    static = bytes.fromhex(server["static_private"])
    datagrams = document["datagrams"]
    for connection in document["connections"]:
        name = connection["name"]
        cid = bytes.fromhex(connection["connection_id"])
        prologue = bytes.fromhex(connection["prologue"])
        assert prologue == b"udpchat/1" + cid
        client = noise_handshake(
            initiator=True,
            prologue=prologue,
            ephemeral=bytes.fromhex(connection["client_ephemeral_private"]),
        )
        responder = noise_handshake(
            initiator=False,
            prologue=prologue,
            ephemeral=bytes.fromhex(connection["server_ephemeral_private"]),
            static=static,
        )
        mine = [e for e in datagrams if name in (e["from"], e["to"])]
        initiation, response = (bytes.fromhex(e["datagram"]) for e in mine[:2])
        assert initiation == b"\x01\x01" + cid + bytes(client.write_message(bytes(1158)))
        responder.read_message(initiation[10:])
        assert response == b"\x02" + cid + bytes(responder.write_message(b""))
        state = client.noise_protocol.handshake_state
        assert bytes(client.read_message(response[9:])) == b""
        assert state.rs.public_bytes.hex() == server["static_public"]
        assert client.get_handshake_hash().hex() == connection["handshake_hash"]
        keys = {
            "server": bytes.fromhex(connection["client_to_server_key"]),
            name: bytes.fromhex(connection["server_to_client_key"]),
        }
        assert keys["server"] == client.noise_protocol.cipher_state_encrypt.k
        assert keys[name] == client.noise_protocol.cipher_state_decrypt.k
        numbers: dict[str, int] = {"server": 0, name: 0}
        for entry in mine[2:]:
            data = bytes.fromhex(entry["datagram"])
            number = int.from_bytes(data[9:17], "big")
            # Packet numbers start at 0 each way and go up by one.
            assert number == entry["packet_number"] == numbers[entry["to"]]
            numbers[entry["to"]] += 1
            key = keys[entry["to"]]
            plaintext = ChaCha20Poly1305(key).decrypt(nonce(number), data[17:], data[:17])
            assert plaintext.hex() == entry["plaintext"]
        assert numbers["server"] > 5 and numbers[name] > 5
