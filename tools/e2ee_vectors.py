"""Write docs/vectors/e2ee.json: every datagram of a whole end-to-end encrypted session.

Three devices on ``tools/session_vectors.py``'s simulated network (fixed 10 ms
latency, fixed transport keys, seeded randomness): alice, bob, and bob's second
device. They upload their keys, claim one-time keys, fetch device sets, send
encrypted messages with their key shares, take the deliveries and decrypt them,
and one send is refused ``devices_changed`` (bob's second device logged in after
alice last fetched the set) and sent again by the client, as every client does.

vodozemac draws the Olm and Megolm keys from the operating system, so running
this again gives other keys and ciphertexts: the file is **recorded**, not
reproduced. What makes it replayable is that it holds each device's Olm account
as vodozemac pickled it (under a fixed pickle key) when its keys were uploaded,
and the Olm sessions it opened itself (their base keys were drawn then too):
from those, every key share and message it received decrypts again, to the
plaintexts listed. ``tests/test_e2ee_vectors.py`` replays it; the format is in
``docs/vectors/README.md``.

Run after a change to the encrypted wire (and review the difference)::

    .venv/bin/python tools/e2ee_vectors.py
"""

from __future__ import annotations

import base64
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final

import vodozemac
from session_vectors import (
    PASSWORD,
    WALL_CLOCK_AT_ZERO,
    Address,
    Simulation,
    record,
    render,
    server_entry,
)

from udpchat_proto import messages as m
from udpchat_proto.chat import ClientCrypto, SendFlow
from udpchat_proto.e2ee import MAX_MESSAGE_CIPHERTEXT, device_fingerprint

ROOT: Final = Path(__file__).resolve().parent.parent
OUTPUT: Final = ROOT / "docs" / "vectors" / "e2ee.json"

#: The key every pickle in the file is encrypted with (vodozemac's pickle key:
#: 32 bytes), bytes 0x20..0x3f.
PICKLE_KEY: Final = bytes(range(32, 64))
#: Each connection, its address and its user (``bob2`` is bob's second device).
DEVICES: Final[dict[str, tuple[Address, str]]] = {
    "alice": (("198.51.100.1", 40001), "alice"),
    "bob": (("198.51.100.2", 40002), "bob"),
    "bob2": (("198.51.100.3", 40003), "bob"),
}
END: Final = 12.0
TEXTS: Final = {
    "alice": ["Hi Bob! This one is end-to-end encrypted.", "Welcome, Bob's second device."],
    "bob": ["Hi Alice! Both of my devices read you."],
    "bob2": ["And this is Bob's second device 📱."],
}


class Device:
    """One connection and its device: logs in, uploads its keys, sends and reads as
    the library's clients do (``ClientCrypto``), and keeps what the file records."""

    def __init__(self, name: str, session: Simulation) -> None:
        self.name = name
        self.user = DEVICES[name][1]
        self.session = session
        self.conn = session.clients[name]
        self.crypto: ClientCrypto | None = None
        self.account_pickle: str | None = None
        self.flows: dict[int, SendFlow] = {}
        self.uploads: set[int] = set()
        self.sessions_seen: set[str] = set()
        self.opened: list[dict[str, Any]] = []
        """The Olm sessions this device opened (outbound), pickled as they were made."""
        self.read: list[str] = []
        """The texts it decrypted, in order."""
        self.refusals: list[str] = []
        session.on_event[name] = self.on_event

    # --- what the user does ---

    def start(self, register: bool) -> None:
        self.conn.connect(self.session.now)
        if register:
            self.conn.register(self.user, PASSWORD)
        self.conn.login(self.user, PASSWORD)

    def send(self, to: str, text: str) -> None:
        assert self.crypto is not None
        message_id = self.session.randoms[self.name].token_bytes(16)
        flow = self.crypto.send(to, text, message_id, WALL_CLOCK_AT_ZERO + self.session.now)
        self._issue(flow)

    # --- what the client does by itself ---

    def _issue(self, flow: SendFlow) -> None:
        step = flow.step()
        if step is None:
            assert isinstance(flow.result, m.MessageAccepted), flow.result
            return
        self.flows[step.issue(self.conn)] = flow
        if step.save_first:  # it just encrypted: the Olm sessions it opened for it
            self._note_sessions(opened=True)

    def _note_sessions(self, *, opened: bool) -> None:
        assert self.crypto is not None
        # The state keeps its Olm sessions (per device, newest first) to itself: a
        # recorder reads them, never changes them, since their pickles are the only
        # way to hand the randomness of their base keys to a replay.
        held = self.crypto.state._olm
        for (user, device_id), sessions in held.items():
            for olm in sessions:
                if olm.session_id not in self.sessions_seen:
                    self.sessions_seen.add(olm.session_id)
                    if opened:
                        self.opened.append(
                            {
                                "peer_user": user,
                                "peer_device": device_id.hex(),
                                "session_id": olm.session_id,
                                "pickle": olm.pickle(PICKLE_KEY),
                            }
                        )

    def _upload(self) -> None:
        assert self.crypto is not None
        issue = self.crypto.upload()
        if issue is not None:
            self.uploads.add(issue(self.conn))

    def on_event(self, event: Any) -> None:
        if isinstance(event, m.LoggedIn):
            self.crypto = ClientCrypto.create(self.user, event.token)
            self._upload()
        elif isinstance(event, m.KeysStored) and event.request_id in self.uploads:
            assert self.crypto is not None
            self.crypto.keys_stored(event)
            if self.account_pickle is None:  # the account as its login upload left it
                # (read from the state, as its sessions are: see _note_sessions)
                self.account_pickle = self.crypto.state._account.pickle(PICKLE_KEY)
            self._upload()  # (a top-up, if the server asked for one)
        elif isinstance(event, m.MessageDelivered):
            assert self.crypto is not None
            read = self.crypto.read(event)
            assert not read.dropped and read.message is not None, read
            self.read.append(read.message.text)
            self._note_sessions(opened=False)  # (made from a pre-key message)
        elif (flow := self.flows.pop(getattr(event, "request_id", -1), None)) is not None:
            if isinstance(event, m.ErrorResponse):
                self.refusals.append(event.code.value)
            flow.answer(event)
            self._issue(flow)
        elif isinstance(event, m.ErrorResponse):
            raise RuntimeError(f"{self.name}: {event}")
        assert self.crypto is None or self.conn.token is not None
        if self.crypto is not None:
            for push in self.conn.take_device_pushes():
                self.crypto.device_push(push)
                self._upload()

    def entry(self) -> dict[str, Any]:
        assert self.crypto is not None and self.account_pickle is not None
        keys = self.crypto.state.device_keys
        return {
            "connection": self.name,
            "user": self.user,
            "device_id": keys.device_id.hex(),
            "curve25519": keys.curve25519.hex(),
            "ed25519": keys.ed25519.hex(),
            "fingerprint": device_fingerprint(keys.ed25519),
            "account": self.account_pickle,
            "olm_sessions": self.opened,
        }


def _script(session: Simulation, devices: dict[str, Device]) -> None:
    alice, bob, bob2 = devices["alice"], devices["bob"], devices["bob2"]
    session.at(0.0, lambda: alice.start(register=True))
    session.at(0.5, lambda: bob.start(register=True))
    session.at(1.0, lambda: alice.conn.invite("bob"))
    session.at(1.5, lambda: bob.conn.accept_invitation("alice"))
    session.at(2.0, lambda: alice.send("bob", TEXTS["alice"][0]))
    session.at(3.5, lambda: bob2.start(register=False))
    session.at(5.0, lambda: alice.send("bob", TEXTS["alice"][1]))
    session.at(6.5, lambda: bob.send("alice", TEXTS["bob"][0]))
    session.at(8.0, lambda: bob2.send("alice", TEXTS["bob2"][0]))
    session.at(9.5, lambda: alice.conn.close(session.now))
    session.at(10.0, lambda: bob.conn.close(session.now))
    session.at(10.5, lambda: bob2.conn.close(session.now))


# --- decrypting again, from the pickles alone ---------------------------------------------------


def replay(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every delivery each device received, decrypted again with vodozemac from
    the file's pickles alone: the ``reads`` the file lists."""
    devices = {d["device_id"]: d for d in document["devices"]}
    by_connection = {d["connection"]: d for d in document["devices"]}
    reads: list[dict[str, Any]] = []
    accounts = {
        d["connection"]: vodozemac.Account.from_pickle(d["account"], PICKLE_KEY)
        for d in document["devices"]
    }
    olm: dict[tuple[str, str], list[vodozemac.Session]] = {}
    for d in document["devices"]:
        for s in d["olm_sessions"]:
            olm.setdefault((d["connection"], s["peer_device"]), []).append(
                vodozemac.Session.from_pickle(s["pickle"], PICKLE_KEY)
            )
    megolm: dict[tuple[str, str], vodozemac.InboundGroupSession] = {}
    for datagram in document["datagrams"]:
        me = datagram["to"]
        for message in datagram.get("messages", []):
            if message.get("type") != "message_delivered":
                continue
            delivered = message["message"]
            shares = []
            for share in message.get("key_shares", []):
                sender = message["sender_keys"]
                ciphertext = wire_bytes(share["ciphertext"])
                olm_message = vodozemac.AnyOlmMessage.from_parts(share["message_type"], ciphertext)
                peer = (me, sender["device_id"])
                pre_key = olm_message.to_pre_key()
                # A pre-key message no held session matches opens a new one (the
                # receiver's side of PROTOCOL.md's "Key shares", step 3).
                if pre_key is not None and not any(
                    held.session_matches(pre_key) for held in olm.get(peer, [])
                ):
                    identity = vodozemac.Curve25519PublicKey.from_bytes(
                        bytes.fromhex(devices[sender["device_id"]]["curve25519"])
                    )
                    new, plaintext = accounts[me].create_inbound_session(identity, pre_key)
                    olm.setdefault(peer, []).insert(0, new)
                else:
                    plaintext = _olm_decrypt(olm.get(peer, []), olm_message)
                payload = json.loads(plaintext)
                megolm[me, payload["session_id"]] = vodozemac.InboundGroupSession(
                    vodozemac.SessionKey(payload["session_key"])
                )
                shares.append(
                    {
                        "sender_device": sender["device_id"],
                        "message_type": share["message_type"],
                        "plaintext": plaintext.decode(),
                    }
                )
            record_ = delivered["ciphertext"]
            group = megolm[me, olm_base64(bytes.fromhex(record_["session_id"]))]
            opened = group.decrypt(
                vodozemac.MegolmMessage.from_bytes(wire_bytes(record_["ciphertext"]))
            )
            reads.append(
                {
                    "connection": me,
                    "user": by_connection[me]["user"],
                    "message_id": delivered["id"],
                    "from": delivered["sender"],
                    "key_shares": shares,
                    "message_index": opened.message_index,
                    "plaintext": opened.plaintext.hex(),
                    "text": message_text(opened.plaintext)[2],
                }
            )
    return reads


def _olm_decrypt(sessions: list[vodozemac.Session], message: vodozemac.AnyOlmMessage) -> bytes:
    for olm in sessions:
        try:
            return olm.decrypt(message)
        except vodozemac.OlmDecryptionException:
            continue
    raise RuntimeError("no Olm session opens a key share")


def message_text(plaintext: bytes) -> tuple[bytes, str, str]:
    """A Megolm plaintext's message id, conversation and text (PROTOCOL.md:
    ``01 | message id (16 bytes) | L(conversation) | text``)."""
    assert plaintext[0] == 1, plaintext[:1]
    length = plaintext[17]
    conversation = plaintext[18 : 18 + length].decode()
    return plaintext[1:17], conversation, plaintext[18 + length :].decode()


def wire_bytes(text: str) -> bytes:
    """A ciphertext as the wire carries it (standard base64, padded), as bytes."""
    return base64.b64decode(text, validate=True)


def olm_base64(data: bytes) -> str:
    """Bytes as Olm writes them: standard base64 without padding."""
    return base64.b64encode(data).decode().rstrip("=")


def generate() -> dict[str, Any]:
    """Run the session and return the document (what ``e2ee.json`` holds)."""
    session = Simulation(
        {name: address for name, (address, _) in DEVICES.items()}, seed="udpchat e2ee vectors"
    )
    devices = {name: Device(name, session) for name in DEVICES}
    _script(session, devices)
    session.run(END)
    # What the clients read is what the script sent, each on every other device
    # (a user's own other devices included).
    assert devices["bob"].read == [*TEXTS["alice"], *TEXTS["bob2"]], devices["bob"].read
    assert devices["bob2"].read == [TEXTS["alice"][1], *TEXTS["bob"]]
    assert devices["alice"].read == [*TEXTS["bob"], *TEXTS["bob2"]]
    assert devices["alice"].refusals == ["devices_changed"]
    connections, datagrams = record(session, versions=True)
    document: dict[str, Any] = {
        "description": (
            "Every datagram of one end-to-end encrypted udpchat session (messages of "
            "version 2): alice, bob and bob's second device upload keys, claim one-time "
            "keys, fetch device sets, send encrypted messages with key shares, one send is "
            "refused devices_changed and sent again; each device decrypts what it receives. "
            "Recorded (vodozemac draws its keys): replay it from the pickled accounts. "
            "Format: docs/vectors/README.md. Made by tools/e2ee_vectors.py."
        ),
        "protocol": "udpchat/1",
        "noise_protocol": "Noise_NX_25519_ChaChaPoly_SHA256",
        "olm": "m.olm.v1.curve25519-aes-sha2",
        "megolm": "m.megolm.v1.aes-sha2",
        "made_with": "vodozemac " + version("vodozemac"),
        "latency": 0.010,
        "end": END,
        "server": server_entry(),
        "pickle_key": PICKLE_KEY.hex(),
        "devices": [devices[name].entry() for name in DEVICES],
        "connections": connections,
        "datagrams": datagrams,
    }
    document["reads"] = replay(document)
    _check(document, devices)
    return document


def _check(document: dict[str, Any], devices: dict[str, Device]) -> None:
    """The replay from the pickles agrees with what the clients read live, and the
    plaintexts are as PROTOCOL.md says."""
    for name, device in devices.items():
        texts = [r["text"] for r in document["reads"] if r["connection"] == name]
        assert texts == device.read, (name, texts, device.read)
    for read in document["reads"]:
        message_id, _, text = message_text(bytes.fromhex(read["plaintext"]))
        assert (message_id.hex(), text) == (read["message_id"], read["text"])
        for share in read["key_shares"]:
            key = json.loads(share["plaintext"])
            assert (key["type"], key["recipient"]) == ("megolm_key", read["user"])
            assert key["sender"] == read["from"]
    for datagram in document["datagrams"]:
        for message in datagram.get("messages", []):
            if message.get("type") == "send_message":
                record_ = message.get("encrypted")
            elif message.get("type") == "message_delivered":
                record_ = message["message"].get("ciphertext")
            else:
                continue
            if record_ is not None:
                assert len(wire_bytes(record_["ciphertext"])) <= MAX_MESSAGE_CIPHERTEXT


def main() -> int:
    document = generate()
    OUTPUT.write_text(render(document), encoding="utf-8")
    print(
        f"wrote {OUTPUT.relative_to(ROOT)}: {len(document['datagrams'])} datagrams, "
        f"{len(document['reads'])} messages read"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
