"""``--metrics HOST:PORT``: the server's counters in Prometheus' text format, at
``/metrics``.

The loop hands a snapshot of its counters (:meth:`ServerMetrics.update`, about
once a second and after every commit's timing) to this object; the HTTP server
(prometheus_client's, on its own thread) reads the latest snapshot when scraped,
so a scrape never touches the loop's state. The names are listed in
``docs/OPERATIONS.md``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import udpchat_proto

__all__ = ["COMMIT_BUCKETS", "ServerMetrics"]

COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""Seconds: a commit on a local SSD takes about a millisecond, on PostgreSQL a few."""

#: Counters taken as they are from the loop's counters: (name, key, help).
_COUNTERS: Final = (
    ("udpchat_datagrams_received", "datagrams_in", "UDP datagrams read."),
    ("udpchat_datagrams_sent", "datagrams_out", "UDP datagrams written."),
    ("udpchat_handshakes", "connections_opened", "Handshakes completed (connections opened)."),
    ("udpchat_requests", "requests", "Requests answered, refusals included."),
    ("udpchat_messages_stored", "messages_stored", "New messages stored."),
    ("udpchat_messages_delivered", "messages_delivered", "Messages pushed to a device."),
    ("udpchat_commits", "commits", "Batches committed."),
    ("udpchat_commits_failed", "failed_commits", "Batches lost (their answers: unavailable)."),
    ("udpchat_hash_jobs", "hash_jobs", "Password hashes run (register, login ...)."),
    ("udpchat_sessions_expired", "sessions_expired", "Login sessions expired."),
    ("udpchat_internal_errors", "internal_errors", "Requests that failed unexpectedly."),
    ("udpchat_violations", "violations", "Payloads dropped as protocol violations."),
)
#: Counters by label: (name, key, label, help).
_LABELLED: Final = (
    ("udpchat_datagrams_dropped", "dropped", "reason", "Datagrams dropped, by reason."),
    ("udpchat_refusals", "refusals", "code", "Requests refused, by error code."),
    ("udpchat_bus_dropped", "bus_dropped", "reason", "Cluster bus messages dropped, by reason."),
)
#: Gauges: (name, key, help).
_GAUGES: Final = (
    ("udpchat_connections", "connections", "Connections open now."),
    ("udpchat_sessions_logged_in", "sessions_logged_in", "Login sessions in use now."),
    ("udpchat_online_users", "online_users", "Users online now."),
    ("udpchat_hash_jobs_pending", "hash_jobs_pending", "Password hashes waiting or running."),
)


class ServerMetrics:
    """What ``/metrics`` shows: the latest snapshot of the loop's counters, and the
    commit latency histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.commit_seconds = Histogram(
            "udpchat_commit_seconds",
            "Time to commit one batch (the fsync included).",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        self._counters: dict[str, Any] = {}
        self._started = time.monotonic()
        self.registry.register(_Snapshot(self))

    def update(self, counters: dict[str, Any]) -> None:
        """The loop's counters now (a new dict each time: the scrape thread reads
        the one it finds, whole)."""
        self._counters = counters

    def serve(self, host: str, port: int) -> Any:
        """Start the HTTP server on ``host:port`` (port 0: a free one); returns it
        (its ``server_address`` says where, ``shutdown()`` stops it).

        Raises:
            OSError: the address cannot be bound.
        """
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

    def collect(self) -> Iterator[Metric]:
        counters = self._counters
        for name, key, text in _COUNTERS:
            yield CounterMetricFamily(name, text, value=counters.get(key, 0))
        for name, key, label, text in _LABELLED:
            family = CounterMetricFamily(name, text, labels=[label])
            for value, count in sorted(counters.get(key, {}).items()):
                family.add_metric([value], count)
            yield family
        for name, key, text in _GAUGES:
            yield GaugeMetricFamily(name, text, value=counters.get(key, 0))
        yield GaugeMetricFamily(
            "udpchat_uptime_seconds", "Seconds since the server started.",
            value=time.monotonic() - self._started,
        )  # fmt: skip
        info = GaugeMetricFamily("udpchat_info", "The server's version.", labels=["version"])
        info.add_metric([udpchat_proto.__version__], 1)
        yield info


class _Snapshot(Collector):
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()
