"""The quota check's bound (``Caches.quota_allows``): a sender's stored bytes are
read once and then bounded from above by what was admitted since, so that a send
costs no read of the store, without admitting anything a read would refuse.

Before: every send read the account's counter (one SELECT a message on SQL stores,
about 4% of the server's samples at saturation)."""

from __future__ import annotations

from typing import cast

from udpchat_proto import ServerConfig
from udpchat_proto.chat.caches import QUOTA_BOUNDS_MAX, Caches
from udpchat_proto.chat.connections import ConnectionTable
from udpchat_proto.chat.store import Store, WriteTrackingStore

QUOTA = 1000


class Counter:
    """A store with only ``stored_bytes``, counting its reads."""

    def __init__(self) -> None:
        self.stored: dict[str, int] = {}
        self.reads = 0

    def stored_bytes(self, username: str) -> int:
        self.reads += 1
        return self.stored.get(username, 0)


def caches(store: Counter, *, cluster: bool = False) -> Caches:
    config = ServerConfig(cluster=cluster)
    inner = cast(Store, store)
    return Caches(
        store=inner,
        tracker=WriteTrackingStore(inner),
        connections=ConnectionTable(config, lambda _id, _protect: None),
        config=config,
    )


def admit(cache: Caches, store: Counter, username: str, size: int) -> int | None:
    """The check, and the store's counter moved as a stored send moves it."""
    refused = cache.quota_allows(username, size, QUOTA)
    if refused is None:
        store.stored[username] = store.stored.get(username, 0) + size
    return refused


def test_a_sender_is_read_once_then_bounded() -> None:
    store = Counter()
    cache = caches(store)
    for _ in range(9):
        assert admit(cache, store, "alice", 100) is None
    cache.batch_ended()
    assert admit(cache, store, "alice", 100) is None  # 1000: at the quota, admitted
    assert store.reads == 1  # (one server: batches do not drop the bound)
    # Past the quota the bound does not admit it: read, and refused with the count.
    assert admit(cache, store, "alice", 1) == 1000
    assert store.reads == 2
    assert store.stored["alice"] == QUOTA


def test_what_frees_bytes_is_seen_at_the_next_read() -> None:
    store = Counter()
    cache = caches(store)
    assert admit(cache, store, "alice", 900) is None
    store.stored["alice"] = 0  # retention deleted it (the bound is now loose)
    # The bound would not admit it; the read does.
    assert admit(cache, store, "alice", 500) is None
    assert store.reads == 2
    assert admit(cache, store, "alice", 400) is None
    assert store.reads == 2
    assert store.stored["alice"] == 900


def test_the_bound_never_admits_what_a_read_would_refuse() -> None:
    # Sends admitted but then not stored (refused later, a lost batch) only loosen
    # the bound: the check reads again rather than refuse on it.
    store = Counter()
    cache = caches(store)
    for _ in range(5):
        assert cache.quota_allows("alice", 150, QUOTA) is None  # none stored
    assert admit(cache, store, "alice", 500) is None  # bound 1250: read, 0 stored
    assert store.reads == 2
    assert store.stored["alice"] == 500


def test_a_clusters_node_reads_once_a_batch() -> None:
    # Another node may store the same user's sends: its bound lasts one batch.
    store = Counter()
    cache = caches(store, cluster=True)
    assert admit(cache, store, "alice", 100) is None
    assert admit(cache, store, "alice", 100) is None
    assert store.reads == 1
    store.stored["alice"] += 750  # sent through another node
    cache.batch_ended()
    assert admit(cache, store, "alice", 100) == 950
    assert store.reads == 2


def test_the_bounds_kept_are_bounded() -> None:
    store = Counter()
    cache = caches(store)
    for index in range(QUOTA_BOUNDS_MAX + 1):
        assert admit(cache, store, f"u{index}", 1) is None
    assert admit(cache, store, "u0", 1) is None  # the oldest was dropped: read again
    assert admit(cache, store, f"u{QUOTA_BOUNDS_MAX}", 1) is None  # kept
    assert store.reads == QUOTA_BOUNDS_MAX + 2
