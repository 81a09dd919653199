"""Issue 26 end to end on a two-node cluster (a private PostgreSQL, a private NATS):
the churn scenario of :mod:`tests.e2e.e2ee_churn` with each device talking to its
own node first (so that key shares and messages cross the nodes), node A killed
with SIGKILL and restarted while every device sends; then what the cluster kept
and said is searched for every text sent:

* the database: a ``pg_dump`` of every table's rows, and the bytes of every file
  of its data directory after a checkpoint (the tables, their indexes, the WAL),
  where a row's short text would lie in the clear;
* the bus: everything published on NATS during the conversation, as it went by
  and as opened with the cluster's own key (what a compromised node reads);
* each node's log, and PostgreSQL's.

Each search is shown to look at real data (the room's name is found where the text
is not). As on one server, every command after the set-up goes through a proxy
losing 30% each way, one in front of each node."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import nats
import psycopg
import pytest
from nats.aio.msg import Msg

from udpchat_proto.bus import BusDropError, BusKeys, Opener
from udpchat_server.keyfile import load_or_create_key

from .cluster_helpers import PG_BIN, Nats, Postgres
from .conftest import ServerProcess
from .e2ee_churn import ROOM, SEED, WEATHER, Churn, Device, restart, run_scenario
from .udp_proxy import LossyProxy

pytestmark = pytest.mark.e2e

#: Which node each device talks to first (the other is its fallback).
ON_NODE_B = {"alice/phone", "bob/laptop", "carol/tablet", "erin/laptop"}


class BusTap:
    """Everything published on a NATS server while it runs: the raw payloads, and
    the cluster's messages opened with its key (an eavesdropper who has it).

    Args:
        url: the NATS server.
        keys: the cluster's keys (from its nodes' private key).
    """

    def __init__(self, url: str, keys: BusKeys) -> None:
        self.url = url
        self.subject = keys.subject
        # Made before any node starts: it opens everything they send.
        self.opener = Opener(keys, os.urandom(16), time.time)
        self.raw: list[bytes] = []
        self.opened: list[bytes] = []
        self.dropped: list[str] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> BusTap:
        self._thread.start()
        assert self._ready.wait(10), "the tap never subscribed"
        return self

    def stop(self) -> None:
        """Unsubscribe and end the thread (bounded); idempotent."""
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        client = await nats.connect(self.url)
        await client.subscribe(">", cb=self._got)  # every subject
        await client.flush()
        self._ready.set()
        await self._stop.wait()
        await client.close()

    async def _got(self, message: Msg) -> None:
        self.raw.append(message.data)
        if message.subject == self.subject:
            try:  # (as it arrives: the opener takes only fresh messages)
                self.opened.append(self.opener.open(message.data)[1])
            except BusDropError as error:
                self.dropped.append(error.reason)


def data_files(root: Path) -> dict[Path, bytes]:
    """Every regular file under ``root``, read whole."""
    return {
        path: path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


@pytest.mark.slow(seconds=55)
def test_a_cluster_relays_what_it_cannot_read(tmp_path: Path) -> None:
    started = time.monotonic()
    bus = Nats().start()
    database = Postgres().start()
    key = tmp_path / "cluster.key"
    tap = BusTap(bus.url, BusKeys.derive(load_or_create_key(key)[0].private_bytes)).start()
    nodes: dict[str, list[ServerProcess]] = {}
    proxies: dict[str, LossyProxy] = {}
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            first = functools.partial(
                ServerProcess,
                tmp_path / name,
                database_url=database.url,
                key_file=key,
                options=("--bus", bus.url),
            )
            nodes[name] = [first().start()]

        # A lossy proxy in front of each node (the port stays when node A restarts).
        for n, name in enumerate(("a", "b")):
            proxies[name] = LossyProxy(
                ("127.0.0.1", nodes[name][0].port),
                seed=SEED + n,
                upstream=WEATHER,
                downstream=WEATHER,
            ).start()

        def address(device: Device) -> str:
            a, b = proxies["a"].address_text, proxies["b"].address_text
            return f"{b},{a}" if device.name in ON_NODE_B else f"{a},{b}"

        def direct(device: Device) -> str:
            a, b = nodes["a"][0].address, nodes["b"][0].address
            return f"{b},{a}" if device.name in ON_NODE_B else f"{a},{b}"

        def crash() -> None:
            killed = nodes["a"][-1]
            killed.kill(timeout=60.0)  # SIGKILL: its devices fail over to node B meanwhile
            nodes["a"].append(restart(functools.partial(_node_again, killed, bus.url)))

        churn = Churn(tmp_path, address, direct)
        figures = run_scenario(churn, crash)
        conversation = time.monotonic() - started
        tap.stop()

        # What PostgreSQL holds: every table's rows, then every byte on its disk.
        dump = subprocess.run(
            [str(PG_BIN / "pg_dump"), "--data-only", "--dbname", database.url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        with psycopg.connect(database.url, autocommit=True) as admin:
            admin.execute("CHECKPOINT")  # the tables' pages written to their files
        files = data_files(database.data)
        logs = [node.log_text() for runs in nodes.values() for node in runs]
        logs.append((database.dir / "postgres.log").read_text(errors="replace"))
        news = [
            value
            for value in map(json.loads, tap.opened)
            if isinstance(value, dict) and value.get("type") == "news"
        ]
        # The pushes a node hands another (invitations, device_added ...), decoded.
        pushes = [base64.b64decode(payload) for item in news for _user, payload in item["pushes"]]
        texts = churn.plaintexts
        assert texts
        for text in texts:
            assert text not in dump, text
            found = [path for path, data in files.items() if text.encode() in data]
            assert not found, (text, found)
            assert not any(text.encode() in payload for payload in tap.raw), text
            assert not any(text.encode() in body for body in tap.opened), text
            assert not any(text.encode() in push for push in pushes), text
            assert not any(text in log for log in logs), text
        # Each search looked at real data: the room's name is there, in the clear.
        assert ROOM in dump
        assert any(ROOM.encode() in data for path, data in files.items() if "base" in path.parts)
        assert tap.opened and not tap.dropped, (len(tap.opened), tap.dropped)
        # News of new messages for the friends crossed the bus, and pushes did.
        assert {"alice", "bob"} <= {user for item in news for user in item["users"]}, news
        assert pushes

        print(
            f"{figures}; {churn.phases}; {conversation:.1f} s of conversation; "
            f"searched: dump {len(dump)} chars, {len(files)} files "
            f"{sum(map(len, files.values()))} bytes, bus {len(tap.raw)} messages "
            f"{sum(map(len, tap.raw))} bytes ({len(news)} news, {len(pushes)} pushes)"
        )
        assert len(nodes["a"]) == 2, "node A was never killed"
        for proxy in proxies.values():  # the weather really was bad, both ways
            stats = proxy.snapshot()
            assert all(s.dropped >= 0.2 * s.received for s in stats.values()), stats
    finally:
        tap.stop()
        for proxy in proxies.values():
            proxy.stop()
        for runs in nodes.values():
            for run in runs:
                run.stop()
                run.kill()
        database.remove()
        bus.stop()


def _node_again(killed: ServerProcess, bus: str) -> ServerProcess:
    """The killed node, again: its directory, database, key and port."""
    return ServerProcess(
        killed.directory,
        database_url=killed.database_url,
        key_file=killed.key_file,
        port=killed.port,
        options=("--bus", bus),
    )
