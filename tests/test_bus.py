"""The cluster's bus on the real NATS: what one node publishes reaches the other
nodes of its cluster, whole and in order, never its own node, and never another
cluster on the same NATS; whatever someone without the cluster's key publishes on
its subject (forgeries, replays and edits of real messages) is dropped and counted;
and a node signs in to a NATS server that asks for a token, a password, an nkey or
a client certificate over TLS."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import nkeys  # type: ignore[import-untyped]
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.cluster_helpers import Nats
from tests.services import require_nats
from udpchat_proto import ServerKey
from udpchat_proto import messages as m
from udpchat_proto.bus import (
    HEADER,
    HEARTBEAT_PARTS_MAX,
    MAX_REMOTE_NAMES,
    SNAPSHOT_PART,
    BusKeys,
    Sealer,
    news_body,
    snapshot_bodies,
)
from udpchat_proto.chat import ClusterNews, encode
from udpchat_server.bus import (
    BusConfigError,
    BusOptions,
    Bye,
    Heard,
    NatsBus,
    News,
    Snapshot,
    shown_bus,
)

NEWS = ClusterNews(
    users=("bob",),
    pushes=(("bob", encode(m.InvitationReceived(from_user="alice"))),),
    sessions=((b"\x07" * 32, "revoked"), (b"\x08" * 32, None)),
    forget=("carol",),
    online=("alice",),
    offline=("dave",),
)


def heard_until(
    bus: NatsBus, done: Callable[[list[Heard]], bool], within: float = 10.0
) -> list[Heard]:
    heard: list[Heard] = []
    deadline = time.monotonic() + within
    while not done(heard):
        assert time.monotonic() < deadline, f"not in time: {heard}"
        heard.extend(bus.take()[0])
        time.sleep(0.02)
    return heard


def started(*buses: NatsBus) -> None:
    for bus in buses:
        bus.start()
    assert all(bus.connected for bus in buses)
    time.sleep(0.2)  # (the subscriptions are in place)
    for bus in buses:
        bus.take()


def test_news_heartbeats_and_goodbyes_reach_the_cluster_and_only_it() -> None:
    url = require_nats()
    secret = os.urandom(32)
    a, b, stranger = NatsBus(url, secret), NatsBus(url, secret), NatsBus(url, os.urandom(32))
    try:
        started(a, b, stranger)
        a.publish(NEWS)
        names = [f"user{n:05d}" for n in range(4500)]  # a heartbeat in three parts
        a.heartbeat(names)
        a.goodbye()
        heard = heard_until(b, lambda h: any(isinstance(x, Bye) for x in h))
        assert heard == [News(a.node, NEWS), Snapshot(a.node, names), Bye(a.node)]
        time.sleep(0.3)
        assert a.take()[0] == []  # NATS does not echo its own back to it
        assert stranger.take()[0] == []  # another cluster hears nothing
        assert a.dropped == b.dropped == stranger.dropped == {}
    finally:
        for bus in (a, b, stranger):
            bus.close()


def test_news_larger_than_one_message_goes_in_parts_in_order() -> None:
    url = require_nats()
    secret = os.urandom(32)
    a, b = NatsBus(url, secret), NatsBus(url, secret)
    try:
        started(a, b)
        pushes = tuple((f"user{n}", encode(m.Unfriended(by_user=f"u{n}"))) for n in range(20_000))
        a.publish(ClusterNews(pushes=pushes))  # ~1 MB in base64
        heard = heard_until(
            b, lambda h: sum(len(x.news.pushes) for x in h if isinstance(x, News)) == 20_000
        )
        assert len(heard) > 1
        got = tuple(p for x in heard if isinstance(x, News) for p in x.news.pushes)
        assert got == pushes
    finally:
        a.close()
        b.close()


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_forgeries_replays_and_edits_are_dropped_and_counted_and_genuine_news_flows() -> None:
    url = require_nats()
    key = ServerKey(os.urandom(32))
    a, b = NatsBus(url, key.private_bytes), NatsBus(url, key.private_bytes)
    forged_push = m.MessageDelivered(
        message=m.ChatMessage(
            id=os.urandom(16),
            sender="alice",
            to="bob",
            text="FORGED: wire 500 EUR",
            sent_at=datetime.datetime.now(datetime.UTC),
        )
    )
    # The issue's attack on the previous release: plain JSON naming a node.
    old_style = orjson.dumps(
        {
            "node": "f" * 32,
            "news": {
                "users": [],
                "pushes": [["bob", base64.b64encode(encode(forged_push)).decode()]],
                "sessions": [],
                "forget": [],
                "online": ["alice"],
                "offline": [],
            },
        }
    )
    old_subject = "udpchat.cluster." + hashlib.sha256(key.public_bytes).hexdigest()[:16]
    another_cluster = BusKeys.derive(os.urandom(32))

    async def attack() -> tuple[list[bytes], dict[str, int]]:
        """Capture the cluster's real messages, then publish what an attacker
        without the key could: returns what was captured, and what each node
        should have dropped (by reason)."""
        client = await nats.connect(url)
        captured: list[bytes] = []

        async def capture(msg: Any) -> None:
            captured.append(msg.data)

        listening = await client.subscribe(a.subject, cb=capture)
        await client.flush()
        a.publish(NEWS)
        a.heartbeat(["ann"])
        deadline = time.monotonic() + 10
        while len(captured) < 2:
            assert time.monotonic() < deadline, "nothing captured"
            await asyncio.sleep(0.02)
        await listening.unsubscribe()
        real = captured[-2]  # the news
        size = HEADER.size
        forgeries = {
            "malformed": [
                old_style,
                b"\x00" * 40,
                real[:size],  # a header, and no seal at all
            ],
            "forged": [
                real[:size] + news_body(NEWS) + bytes(16),  # the body unsealed, a zero tag
                real[:-1] + bytes([real[-1] ^ 0xFF]),  # a garbled tag
                Sealer(another_cluster, bytes(16), time.time).seal(news_body(NEWS)),  # wrong key
                _flip(real, size + 5),  # a byte of the body
                _flip(real, 3),  # the node id
                real[:17] + (HEADER.unpack_from(real)[2] + 100).to_bytes(8, "big") + real[25:],
                _flip(real, 30),  # the time
            ],
            "replayed": list(captured),  # each real message again
        }
        for datas in forgeries.values():
            for data in datas:
                await client.publish(a.subject, data)
        await client.publish(old_subject, old_style)  # where the cluster no longer is
        await client.flush()
        await client.close()
        return captured, {reason: len(datas) for reason, datas in forgeries.items()}

    try:
        started(a, b)
        captured, expected = asyncio.run(attack())
        heard = heard_until(b, lambda h: len(h) == 2)
        assert heard == [News(a.node, NEWS), Snapshot(a.node, ["ann"])]
        deadline = time.monotonic() + 10
        while b.dropped != expected or a.dropped != expected:
            assert time.monotonic() < deadline, (a.dropped, b.dropped, expected)
            time.sleep(0.05)
        time.sleep(0.2)
        assert b.take() == ([], False)  # none of them got through
        assert a.dropped == b.dropped == expected  # (a hears its own, replayed, as such)
        # After all of it, genuine messages still flow both ways.
        b.publish(ClusterNews(users=("carol",)))
        assert heard_until(a, lambda h: len(h) == 1) == [
            News(b.node, ClusterNews(users=("carol",)))
        ]
        a.goodbye()
        assert heard_until(b, lambda h: len(h) == 1) == [Bye(a.node)]
        assert len(captured) >= 2
    finally:
        a.close()
        b.close()


def test_a_node_started_after_a_message_was_sent_never_takes_its_replay() -> None:
    """Captured 3.7 s before a node restarted and replayed to it, three sealed
    messages told bob, on it, `unfriended` and `invitation_received` while he and
    alice were friends (the restarted node had no window for them)."""
    url = require_nats()
    secret = os.urandom(32)
    a, b = NatsBus(url, secret), NatsBus(url, secret)
    news = ClusterNews(pushes=(("bob", encode(m.Unfriended(by_user="alice"))),))

    async def capture() -> list[bytes]:
        client = await nats.connect(url)
        captured: list[bytes] = []

        async def keep(msg: Any) -> None:
            captured.append(msg.data)

        await client.subscribe(a.subject, cb=keep)
        await client.flush()
        a.publish(news)
        a.publish(ClusterNews(online=("alice",)))
        deadline = time.monotonic() + 10
        while len(captured) < 2:
            assert time.monotonic() < deadline, "nothing captured"
            await asyncio.sleep(0.02)
        await client.close()
        return captured

    async def replay(captured: list[bytes]) -> None:
        client = await nats.connect(url)
        for data in captured:
            await client.publish(a.subject, data)
        await client.flush()
        await client.close()

    restarted: NatsBus | None = None
    try:
        started(a, b)
        captured = asyncio.run(capture())
        assert heard_until(b, lambda h: len(h) == 2)[0] == News(a.node, news)
        b.close()
        time.sleep(0.01)  # (the restart comes after the capture, on any clock)
        restarted = NatsBus(url, secret)  # node b again: a new id, a new start
        started(restarted)
        asyncio.run(replay(captured))
        deadline = time.monotonic() + 10
        while restarted.dropped != {"before_start": 2}:
            assert time.monotonic() < deadline, restarted.dropped
            time.sleep(0.05)
        assert restarted.take() == ([], False)
        a.goodbye()  # what a sends now is taken
        assert heard_until(restarted, lambda h: len(h) == 1) == [Bye(a.node)]
    finally:
        for bus in (a, b, restarted):
            if bus is not None:
                bus.close()


def _flood(url: str, secret: bytes, subject: str, bodies: list[list[bytes]]) -> None:
    """Publish, as one made-up node (holding the key) for each list, its bodies."""
    keys = BusKeys.derive(secret)

    async def publish() -> None:
        client = await nats.connect(url)
        for node in bodies:
            sealer = Sealer(keys, os.urandom(16), time.time)
            for body in node:
                await client.publish(subject, sealer.seal(body))
        await client.flush()
        await client.close()

    asyncio.run(publish())


def test_what_made_up_nodes_say_online_is_bounded_in_all() -> None:
    """Forty made-up nodes' full heartbeats (with the cluster's key) took a node
    from 63 to 636 MiB and 1.98 million users online: the bus handed every name on,
    and the core keeps 65,536 for each of 32 nodes. Six are enough to show it."""
    url = require_nats()
    secret = os.urandom(32)
    bus = NatsBus(url, secret)
    full = HEARTBEAT_PARTS_MAX * SNAPSHOT_PART
    try:
        started(bus)
        heartbeats = [
            snapshot_bodies([f"n{node}x{n:05d}" for n in range(full)]) for node in range(6)
        ]
        _flood(url, secret, bus.subject, heartbeats)
        heard = heard_until(bus, lambda h: len(h) == 6, within=30)
        sizes = [len(x.users) for x in heard if isinstance(x, Snapshot)]
        assert sizes == [full] * 4 + [MAX_REMOTE_NAMES - 4 * full, 0]
        assert bus.names_ignored == 6 * full - MAX_REMOTE_NAMES
        assert bus.dropped == {}
    finally:
        bus.close()


def test_a_server_loop_too_far_behind_loses_news_and_looks_for_everyone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What waits for the server loop is bounded: beyond, news is dropped
    (`backlog`, counted) and the loop is told to look in the database."""
    monkeypatch.setattr("udpchat_server.bus.MAX_BACKLOG", 100)
    url = require_nats()
    secret = os.urandom(32)
    bus = NatsBus(url, secret)
    news = ClusterNews(users=tuple(f"user{n}" for n in range(30)))
    try:
        started(bus)
        _flood(url, secret, bus.subject, [[news_body(news)] * 1 for _ in range(10)])
        deadline = time.monotonic() + 10
        while sum(bus.dropped.values()) < 6:
            assert time.monotonic() < deadline, bus.dropped
            time.sleep(0.05)
        assert bus.dropped == {"backlog": 6}
        heard, resync = bus.take()
        assert len(heard) == 4 and resync
        _flood(url, secret, bus.subject, [[news_body(news)]])  # taken again once caught up
        assert len(heard_until(bus, lambda h: len(h) == 1)) == 1
    finally:
        bus.close()


def _talk(url: str, *, options: BusOptions | None = None) -> None:
    """Two nodes on ``url`` hear each other."""
    secret = os.urandom(32)
    a, b = NatsBus(url, secret, options=options), NatsBus(url, secret, options=options)
    try:
        started(a, b)
        a.goodbye()
        assert heard_until(b, lambda h: len(h) == 1) == [Bye(a.node)]
    finally:
        a.close()
        b.close()


def _refused(url: str, caplog: pytest.LogCaptureFixture, options: BusOptions | None = None) -> None:
    """A node on ``url`` cannot get in (and says why in its warning)."""
    bus = NatsBus(url, os.urandom(32), options=options)
    try:
        with (
            caplog.at_level("WARNING", logger="udpchat_server.bus"),
            pytest.MonkeyPatch.context() as patch,
        ):
            patch.setattr("udpchat_server.bus.CONNECT_TIMEOUT", 1.5)  # (it never comes)
            bus.start()
        assert not bus.connected
        warning = [
            r.getMessage() for r in caplog.records if "cannot reach the bus" in r.getMessage()
        ]
        assert warning, caplog.text
        assert "secret" not in warning[0]  # the URL is shown without its password
    finally:
        bus.close()


def test_a_node_signs_in_with_a_token_or_a_user_and_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with_token = Nats("--auth", "s3cret-token").start()
    try:
        _talk(with_token.url.replace("nats://", "nats://s3cret-token@"))
        _refused(with_token.url, caplog)
    finally:
        with_token.stop()
    with_password = Nats("--user", "node", "--pass", "secret-pw").start()
    try:
        _talk(with_password.url.replace("nats://", "nats://node:secret-pw@"))
        caplog.clear()
        _refused(with_password.url.replace("nats://", "nats://node:secret-wrong@"), caplog)
        # NATS answers -ERR 'Authorization Violation' and closes; on a loaded machine
        # the close can reach the client first, as a reset.
        assert "Authorization Violation" in caplog.text or "reset by peer" in caplog.text
    finally:
        with_password.stop()


def test_a_node_signs_in_with_an_nkey(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key.decode()
    config = tmp_path / "nats.conf"
    config.write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    seed_file = tmp_path / "node.nk"
    seed_file.write_bytes(seed + b"\n")
    server = Nats("-c", str(config)).start()
    try:
        _talk(server.url, options=BusOptions(nkey=seed_file))
        _refused(server.url, caplog)  # without it
    finally:
        server.stop()


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a certificate for 127.0.0.1 and a client's, all issued by it (PEM)."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(name: str, issuer_key: Any, issuer: x509.Name | None, *, ca: bool) -> Any:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        certificate = builder.sign(issuer_key or key, hashes.SHA256())
        (directory / f"{name}.pem").write_bytes(
            certificate.public_bytes(serialization.Encoding.PEM)
        )
        (directory / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return key, certificate.subject

    ca_key, ca_name = issue("ca", None, None, ca=True)
    issue("server", ca_key, ca_name, ca=False)
    issue("client", ca_key, ca_name, ca=False)
    return {name: directory / name for name in os.listdir(directory)}


def test_a_node_talks_tls_to_nats_with_its_own_ca_and_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = _certificates(tmp_path)
    server = Nats(
        "--tls",
        "--tlscert", str(files["server.pem"]),
        "--tlskey", str(files["server.key"]),
        "--tlsverify",
        "--tlscacert", str(files["ca.pem"]),
        scheme="tls",
    ).start()  # fmt: skip
    try:
        _talk(
            server.url,
            options=BusOptions(
                ca=files["ca.pem"], cert=files["client.pem"], key=files["client.key"]
            ),
        )
        # Without a client certificate, or trusting only the system's CAs: refused.
        _refused(server.url, caplog, BusOptions(ca=files["ca.pem"]))
        caplog.clear()
        _refused(server.url, caplog, BusOptions(cert=files["client.pem"], key=files["client.key"]))
    finally:
        server.stop()


def test_bus_options_that_cannot_work_are_refused_with_one_line(tmp_path: Path) -> None:
    pem = tmp_path / "not-a-cert.pem"
    pem.write_text("nothing here\n")
    seed = tmp_path / "seed"
    seed.write_text("SUnot-a-seed\n")
    cases = {
        "--bus-ca and --bus-cert need a tls:// --bus URL": ("nats://h:4222", BusOptions(ca=pem)),
        "--bus-key goes with --bus-cert": ("tls://h:4222", BusOptions(key=pem)),
        f"--bus-ca {pem}": ("tls://h:4222", BusOptions(ca=pem)),
        f"--bus-cert {pem}": ("tls://h:4222", BusOptions(cert=pem)),
        f"--bus-nkey {seed}: not an nkey seed": ("nats://h:4222", BusOptions(nkey=seed)),
        f"--bus-creds {seed}: not a NATS credentials file": (
            "nats://h:4222",
            BusOptions(creds=seed),
        ),
        f"--bus-creds {tmp_path / 'missing'}: No such file": (
            "nats://h:4222",
            BusOptions(creds=tmp_path / "missing"),
        ),
    }
    for message, (url, options) in cases.items():
        with pytest.raises(BusConfigError) as refused:
            options.connect_options(url)
        assert str(refused.value).startswith(message), str(refused.value)
    # A tls:// URL alone: the system's CAs, and the server's name checked.
    context = BusOptions().connect_options("tls://h:4222")["tls"]
    assert context.check_hostname and context.verify_mode.name == "CERT_REQUIRED"
    assert BusOptions().connect_options("nats://h:4222") == {}


def test_a_bus_url_is_shown_without_its_password_or_token() -> None:
    assert shown_bus("nats://node:pw@h:4222") == "nats://node:***@h:4222"
    assert shown_bus("nats://tok3n@h:4222") == "nats://***@h:4222"
    assert shown_bus("tls://h:4222") == "tls://h:4222"
    assert shown_bus("nats://a:b@h1:1, nats://h2:2") == "nats://a:***@h1:1,nats://h2:2"
