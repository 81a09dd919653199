"""Write the seed corpus of ``fuzz_bus.py`` from the real encoders and sealer.

Every kind of message a node sends (news with each of its lists, a heartbeat in
parts, an empty one, resync, bye), in both of the harness's modes: sealed by its
genuine node at its fixed time (mode 0, as on NATS), and as the plain body
(mode 1, which the harness seals). The keys, node ids and clock are the
harness's, so the output is the same on every run::

    python fuzz/make_bus_corpus.py
"""

from __future__ import annotations

import datetime
import hashlib
import shutil
from pathlib import Path

from fuzz_bus import KEYS, RAW, SEALED, SENDER, clock

from udpchat_proto import messages as m
from udpchat_proto.bus import (
    Sealer,
    bye_body,
    news_body,
    resync_body,
    snapshot_bodies,
)
from udpchat_proto.chat import ClusterNews, encode

CORPUS = Path(__file__).resolve().parent / "corpus" / "bus"


def bodies() -> list[bytes]:
    """What a node says, one body per message."""
    receipt = m.DeliveryReceipt(
        message_id=bytes(range(16)),
        to="bob",
        delivered_at=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    )
    news = ClusterNews(
        users=("alice", "bob"),
        pushes=(
            ("bob", encode(m.InvitationReceived(from_user="alice"))),
            ("alice", encode(m.DeliveryReceipts(receipts=(receipt,)))),
            ("carol", encode(m.RoomMembershipChanged(room="#tea", username="bob", joined=True))),
        ),
        sessions=((bytes(range(32)), "this login session was ended from another device"),),
        forget=("carol",),
        online=("dave",),
        offline=("erin",),
    )
    return [
        news_body(news),
        news_body(ClusterNews(sessions=((b"\x07" * 32, None),))),
        news_body(ClusterNews(users=("bob",))),
        *snapshot_bodies([f"user{n:04d}" for n in range(2003)]),  # two parts
        *snapshot_bodies([]),
        resync_body(),
        bye_body(),
    ]


def main() -> None:
    """Empty ``fuzz/corpus/bus`` and write the seeds (named by their SHA-1)."""
    shutil.rmtree(CORPUS, ignore_errors=True)
    CORPUS.mkdir(parents=True)
    sealer = Sealer(KEYS, SENDER, clock)
    seeds = [bytes([RAW]) + sealer.seal(body) for body in bodies()]
    seeds += [bytes([SEALED]) + body for body in bodies()]
    for seed in seeds:
        (CORPUS / hashlib.sha1(seed).hexdigest()).write_bytes(seed)  # (libFuzzer names them so)
    print(f"{len(seeds)} seeds in {CORPUS}")


if __name__ == "__main__":
    main()
