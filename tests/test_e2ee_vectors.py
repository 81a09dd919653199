"""docs/vectors/e2ee.json: an end-to-end encrypted session, replayed.

vodozemac draws its keys from the operating system, so the file is recorded, not
regenerated (``tools/e2ee_vectors.py`` makes a new one, with new keys). What is
checked instead:

* a fresh server fed the recorded client datagrams sends exactly the recorded
  server datagrams (the relaying of ciphertexts, shares, ``devices_changed``);
* every DATA datagram opens with the connection's key (``cryptography``), its
  STREAM frames make the listed messages, and each message's bytes decode with
  this implementation's codec and encode back to the same bytes;
* from the pickled accounts and Olm sessions alone, vodozemac decrypts every key
  share and message each device received to the listed plaintexts, written
  here from PROTOCOL.md ("End-to-end encryption"), not with ``udpchat_proto.e2ee``;
  and the library's ``CryptoState`` made from a pickled account reads the same;
* the generator still makes the same session (every datagram's time, ends,
  length, frames and message types), only with other keys.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import vodozemac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tests.stranger import nonce, read_varint
from udpchat_proto import messages as m
from udpchat_proto.chat import decode, encode
from udpchat_proto.e2ee import CryptoState, Decrypted, KeyShareReceived

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "docs" / "vectors" / "e2ee.json"


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (e2ee_vectors imports session_vectors by name)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return loaded


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def test_a_fresh_server_answers_the_recorded_client_datagrams_byte_for_byte(
    document: dict[str, Any],
) -> None:
    tool = _load("session_vectors")
    addresses = {c["name"]: _address(c["address"]) for c in document["connections"]}
    driver = tool.ServerDriver("udpchat e2ee vectors: server")
    for entry in document["datagrams"]:
        if entry["to"] == "server":
            arrival = entry["time"] + document["latency"]
            driver.receive(bytes.fromhex(entry["datagram"]), addresses[entry["from"]], arrival)
    driver.advance(document["end"])
    sent = [(time, data.hex(), addr) for time, data, addr in driver.sent]
    expected = [
        (entry["time"], entry["datagram"], addresses[entry["to"]])
        for entry in document["datagrams"]
        if entry["from"] == "server"
    ]
    assert len(expected) > 50
    assert sent == expected


def test_the_datagrams_open_and_decode_to_the_listed_messages(document: dict[str, Any]) -> None:
    keys = {}
    for c in document["connections"]:
        keys[c["name"], "server"] = bytes.fromhex(c["client_to_server_key"])
        keys["server", c["name"]] = bytes.fromhex(c["server_to_client_key"])
    streams: dict[tuple[str, str], bytearray] = {}
    ends: dict[tuple[str, str], int] = {}
    types: set[str] = set()
    for entry in document["datagrams"]:
        if entry["packet"] != "DataPacket":
            continue
        data = bytes.fromhex(entry["datagram"])
        number = int.from_bytes(data[9:17], "big")
        key = keys[entry["from"], entry["to"]]
        plaintext = ChaCha20Poly1305(key).decrypt(nonce(number), data[17:], data[:17])
        assert plaintext.hex() == entry["plaintext"]
        way = (entry["from"], entry["to"])
        stream = streams.setdefault(way, bytearray())
        for offset, data in _stream_frames(plaintext):
            end = ends.get(way, 0)
            assert offset <= end  # a lossless network: never a gap (maybe a repeat)
            stream += data[end - offset :]
            ends[way] = max(end, offset + len(data))
        completed = []
        while stream:
            length, pos = read_varint(bytes(stream), 0)
            if len(stream) < pos + length:
                break
            completed.append(bytes(stream[pos : pos + length]))
            del stream[: pos + length]
        assert [json.loads(c[1:]) for c in completed] == entry["messages"]
        assert [c[0] for c in completed] == entry["versions"]
        for raw in completed:
            message = decode(raw)
            assert encode(message) == raw  # the codec writes what it read, byte for byte
            types.add(json.loads(raw[1:])["type"])
    assert {
        "upload_keys",
        "keys_stored",
        "get_devices",
        "conversation_devices",
        "claim_keys",
        "claimed_keys",
        "send_message",
        "message_delivered",
        "device_added",
        "one_time_keys_low",
        "error",
    } <= types


def _stream_frames(plaintext: bytes) -> list[tuple[int, bytes]]:
    """The STREAM frames (offset, data) of one DATA plaintext (PROTOCOL.md, "Frames")."""
    frames, pos = [], 0
    while pos < len(plaintext):
        kind = plaintext[pos]  # one byte, not a varint
        pos += 1
        if kind in (0x00, 0x01):  # PADDING, PING
            continue
        if kind == 0x02:  # ACK: largest, delay, range count, first range, (gap, length)s
            for _ in range(2):
                _, pos = read_varint(plaintext, pos)
            count, pos = read_varint(plaintext, pos)
            for _ in range(1 + 2 * count):
                _, pos = read_varint(plaintext, pos)
        elif kind in (0x03, 0x04):  # STREAM: offset, length, data; CLOSE: code, length, reason
            offset, pos = read_varint(plaintext, pos)
            length, pos = read_varint(plaintext, pos)
            if kind == 0x03:
                frames.append((offset, plaintext[pos : pos + length]))
            pos += length
        else:
            raise AssertionError(f"frame type {kind} in the vectors")
    return frames


# --- decrypting, from PROTOCOL.md and vodozemac alone -------------------------------------------


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _labelled(*parts: bytes) -> bytes:
    """``L(x)``: one byte of the length, then the bytes."""
    return b"".join(bytes([len(p)]) + p for p in parts)


def test_the_device_records_are_signed_as_specified(document: dict[str, Any]) -> None:
    records = [
        message["device"] if message["type"] == "device_added" else keys
        for entry in document["datagrams"]
        for message in entry.get("messages", [])
        for keys in (message.get("device_set", {}) or {}).get("devices", [None])
        if message["type"] in ("device_added", "conversation_devices")
    ]
    records = [r for r in records if r is not None]
    assert len(records) >= 6
    for record in records:
        signed = b"udpchat-e2ee-device-keys-v1\x00" + _labelled(
            record["user"].encode(),
            bytes.fromhex(record["device_id"]),
            bytes.fromhex(record["curve25519"]),
            bytes.fromhex(record["ed25519"]),
        )
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(record["ed25519"]))
        key.verify(bytes.fromhex(record["signature"]), signed)  # raises if not
        device = next(d for d in document["devices"] if d["device_id"] == record["device_id"])
        assert device["curve25519"] == record["curve25519"]
        assert device["ed25519"] == record["ed25519"]
        digest = hashlib.sha256(
            b"udpchat-e2ee-fingerprint-v1\x00" + bytes.fromhex(record["ed25519"])
        ).digest()
        groups = [int.from_bytes(digest[i : i + 5], "big") % 100_000 for i in range(0, 30, 5)]
        assert device["fingerprint"] == " ".join(f"{g:05d}" for g in groups)


def test_every_delivery_decrypts_from_the_pickled_accounts(document: dict[str, Any]) -> None:
    pickle_key = bytes.fromhex(document["pickle_key"])
    devices = {d["device_id"]: d for d in document["devices"]}
    accounts = {}
    sessions: dict[tuple[str, str], list[vodozemac.Session]] = {}
    for device in document["devices"]:
        account = vodozemac.Account.from_pickle(device["account"], pickle_key)
        assert account.curve25519_key.to_bytes().hex() == device["curve25519"]
        assert _b64(account.ed25519_key.to_base64()).hex() == device["ed25519"]
        accounts[device["connection"]] = account
        for opened in device["olm_sessions"]:
            session = vodozemac.Session.from_pickle(opened["pickle"], pickle_key)
            assert session.session_id == opened["session_id"]
            sessions.setdefault((device["connection"], opened["peer_device"]), []).append(session)
    groups: dict[tuple[str, bytes], vodozemac.InboundGroupSession] = {}
    reads = iter(document["reads"])
    for entry in document["datagrams"]:
        me = entry["to"]
        for push in entry.get("messages", []):
            if push["type"] != "message_delivered":
                continue
            read = next(reads)
            assert (read["connection"], read["message_id"]) == (me, push["message"]["id"])
            mine = next(d for d in document["devices"] if d["connection"] == me)
            for share, listed in zip(push.get("key_shares", []), read["key_shares"], strict=True):
                sender = push["sender_keys"]
                assert share["recipient_device"] == mine["device_id"]
                olm = vodozemac.AnyOlmMessage.from_parts(
                    share["message_type"], base64.b64decode(share["ciphertext"])
                )
                held = sessions.setdefault((me, sender["device_id"]), [])
                pre_key = olm.to_pre_key()
                if pre_key is not None and not any(s.session_matches(pre_key) for s in held):
                    identity = vodozemac.Curve25519PublicKey.from_bytes(
                        bytes.fromhex(devices[sender["device_id"]]["curve25519"])
                    )
                    session, plaintext = accounts[me].create_inbound_session(identity, pre_key)
                    held.insert(0, session)
                else:
                    plaintext = _first_that_opens(held, olm)
                assert plaintext.decode() == listed["plaintext"]
                payload = json.loads(plaintext)
                assert payload["v"] == 1 and payload["type"] == "megolm_key"
                assert payload["recipient_device"] == mine["device_id"]
                assert payload["sender_device"] == sender["device_id"]
                assert _b64(payload["sender_ed25519"]).hex() == sender["ed25519"]
                group = vodozemac.InboundGroupSession(vodozemac.SessionKey(payload["session_key"]))
                assert _b64(group.session_id) == _b64(payload["session_id"])
                assert group.first_known_index == payload["first_index"]
                groups[me, _b64(payload["session_id"])] = group
            record = push["message"]["ciphertext"]
            group = groups[me, bytes.fromhex(record["session_id"])]
            megolm = vodozemac.MegolmMessage.from_bytes(base64.b64decode(record["ciphertext"]))
            opened = group.decrypt(megolm)
            assert opened.plaintext.hex() == read["plaintext"]
            assert opened.message_index == read["message_index"]
            # 01 | message id (16 bytes) | L(conversation) | text
            plaintext = opened.plaintext
            assert plaintext[0] == 1 and plaintext[1:17].hex() == push["message"]["id"]
            length = plaintext[17]
            assert plaintext[18 : 18 + length].decode() == record["conversation"]
            assert plaintext[18 + length :].decode() == read["text"]
    assert next(reads, None) is None
    assert len(document["reads"]) == 7


def _first_that_opens(held: list[vodozemac.Session], olm: vodozemac.AnyOlmMessage) -> bytes:
    for session in held:
        try:
            return session.decrypt(olm)
        except vodozemac.OlmDecryptionException:
            continue
    raise AssertionError("no Olm session held opens the share")


def test_the_library_reads_the_recorded_deliveries_from_a_pickled_account(
    document: dict[str, Any],
) -> None:
    # bob's second device received only pre-key shares (it opened no Olm session
    # itself), so its account alone is all its CryptoState needs.
    device = next(d for d in document["devices"] if d["connection"] == "bob2")
    pickle_key = bytes.fromhex(document["pickle_key"])
    account = vodozemac.Account.from_pickle(device["account"], pickle_key)
    state = CryptoState(account, device["user"], bytes.fromhex(device["device_id"]))
    texts = []
    for entry in document["datagrams"]:
        if entry["to"] != "bob2":
            continue
        for version, raw in zip(entry.get("versions", []), entry.get("messages", []), strict=True):
            if raw["type"] != "message_delivered":
                continue
            push = decode(bytes([version]) + json.dumps(raw).encode())
            assert isinstance(push, m.MessageDelivered)
            for share in push.key_shares:
                assert isinstance(state.receive_key_share(share), KeyShareReceived)
            assert push.message.ciphertext is not None
            result = state.decrypt(push.message.ciphertext, push.message.id)
            assert isinstance(result, Decrypted), result
            texts.append(result.text)
    assert texts == [r["text"] for r in document["reads"] if r["connection"] == "bob2"]
    assert len(texts) == 2


def test_the_generator_makes_the_same_session_with_other_keys(document: dict[str, Any]) -> None:
    _load("session_vectors")
    tool = _load("e2ee_vectors")
    fresh = tool.generate()

    def shape(doc: dict[str, Any]) -> list[Any]:
        return [
            (
                e["time"],
                e["from"],
                e["to"],
                len(e["datagram"]),
                [f["type"] for f in e.get("frames", [])],
                [(msg["type"], msg.get("code")) for msg in e.get("messages", [])],
                e.get("versions"),
            )
            for e in doc["datagrams"]
        ]

    assert shape(fresh) == shape(document), (
        "docs/vectors/e2ee.json is stale: if the wire change is intended, run "
        "python tools/e2ee_vectors.py and say so in the changelog of the protocol"
    )
    assert [r["text"] for r in fresh["reads"]] == [r["text"] for r in document["reads"]]
    assert fresh["devices"][0]["curve25519"] != document["devices"][0]["curve25519"]
