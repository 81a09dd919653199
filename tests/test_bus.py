"""The cluster's bus on the real NATS: what one node publishes reaches the other
nodes of its cluster, whole and in order, never its own node, and never another
cluster on the same NATS."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from tests.services import require_nats
from udpchat_proto.chat import ClusterNews
from udpchat_server.bus import Bye, Heard, NatsBus, News, Snapshot


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


def test_news_heartbeats_and_goodbyes_reach_the_cluster_and_only_it() -> None:
    url = require_nats()
    cluster, other = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    a, b, stranger = NatsBus(url, cluster), NatsBus(url, cluster), NatsBus(url, other)
    for bus in (a, b, stranger):
        bus.start()
    try:
        assert a.connected and b.connected and stranger.connected
        time.sleep(0.2)  # (the subscriptions are in place)
        for bus in (a, b, stranger):
            bus.take()
        news = ClusterNews(
            users=("bob",),
            pushes=(("bob", b"\x01{}"),),
            sessions=((b"\x07" * 32, "revoked"), (b"\x08" * 32, None)),
            forget=("carol",),
            online=("alice",),
            offline=("dave",),
        )
        a.publish(news)
        names = [f"user{n:05d}" for n in range(4500)]  # a heartbeat in three parts
        a.heartbeat(names)
        a.goodbye()
        heard = heard_until(b, lambda h: any(isinstance(x, Bye) for x in h))
        assert heard == [News(a.node, news), Snapshot(a.node, names), Bye(a.node)]
        time.sleep(0.3)
        assert a.take()[0] == []  # its own come back from NATS and are dropped
        assert stranger.take()[0] == []  # another cluster hears nothing
    finally:
        for bus in (a, b, stranger):
            bus.close()


def test_news_larger_than_one_message_goes_in_parts_in_order() -> None:
    url = require_nats()
    cluster = uuid.uuid4().hex[:16]
    a, b = NatsBus(url, cluster), NatsBus(url, cluster)
    a.start()
    b.start()
    try:
        time.sleep(0.2)
        pushes = tuple((f"user{n}", b"x" * 2000) for n in range(600))  # ~1.6 MB in base64
        a.publish(ClusterNews(pushes=pushes))
        heard = heard_until(
            b, lambda h: sum(len(x.news.pushes) for x in h if isinstance(x, News)) == 600
        )
        assert len(heard) > 1
        got = tuple(p for x in heard if isinstance(x, News) for p in x.news.pushes)
        assert got == pushes
    finally:
        a.close()
        b.close()
