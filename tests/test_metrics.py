"""The metrics endpoint and the listening sockets' accept loops under abuse
(issue 23, item 4): idle and dripping connections are capped and cut off, and
accept() failures (EMFILE) neither spin a core nor flood the log."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from udpchat_server.accepting import LONGEST_WAIT, SHORTEST_WAIT, AcceptBackoff
from udpchat_server.control import MAX_CLIENTS, ControlSocket, call
from udpchat_server.metrics import MAX_CONNECTIONS, MetricsHTTPServer, ServerMetrics

TIMEOUT = 1.0


@pytest.fixture
def serve() -> Iterator[MetricsHTTPServer]:
    """A metrics server on 127.0.0.1 with a 1 s deadline, 8 connections, 4 per address."""
    metrics = ServerMetrics()
    server = MetricsHTTPServer(
        ("127.0.0.1", 0), metrics.registry, max_connections=8, max_per_address=4, timeout=TIMEOUT
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def where(server: MetricsHTTPServer) -> tuple[str, int]:
    host, port = server.server_address[:2]
    return str(host), int(port)


def scrape(server: MetricsHTTPServer) -> str:
    host, port = where(server)
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


def idle(server: MetricsHTTPServer, source: str) -> socket.socket:
    """A connection from ``source`` (any 127/8 address) that never sends a byte."""
    sock = socket.create_connection(where(server), source_address=(source, 0))
    sock.settimeout(TIMEOUT + 5)
    return sock


def closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes ``sock`` (bounded by its timeout)."""
    started = time.monotonic()
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def wait_until(condition: object, deadline: float = 5.0) -> None:
    assert callable(condition)
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_fifty_idle_connections_hold_at_most_the_cap_and_are_closed_at_the_deadline(
    serve: MetricsHTTPServer,
) -> None:
    """prometheus_client's server kept a thread and a descriptor for each of them,
    for as long as the client liked."""
    clients = [idle(serve, f"127.0.0.{2 + i % 10}") for i in range(50)]
    try:
        # Each beyond the cap ended the oldest idle one (none had sent a request).
        wait_until(lambda: serve.refused + serve.evicted == 42)
        assert serve.open_connections == 8
        # (an evicted connection's thread may take a moment to end: bounded wait)
        wait_until(lambda: handler_threads() <= 8)
        started = time.monotonic()
        waited = sorted(closed_after(sock) for sock in clients)
        # The 42 ended or refused were closed at once, the 8 others at their deadline.
        assert waited[41] < 0.5, waited
        assert TIMEOUT - 0.3 <= time.monotonic() - started < TIMEOUT + 1.5, waited
        wait_until(lambda: serve.open_connections == 0)
        assert "udpchat_uptime_seconds" in scrape(serve)
    finally:
        for sock in clients:
            sock.close()


def test_one_address_cannot_take_the_slots_of_the_others(serve: MetricsHTTPServer) -> None:
    clients = [idle(serve, "127.0.0.2") for _ in range(20)]
    try:
        wait_until(lambda: serve.refused == 16)
        assert serve.open_connections == 4
        started = time.monotonic()
        assert "udpchat_info" in scrape(serve)  # from 127.0.0.1, at once
        assert time.monotonic() - started < TIMEOUT / 2
    finally:
        for sock in clients:
            sock.close()


def test_idle_connections_reopened_from_four_addresses_do_not_starve_the_scraper() -> None:
    """Four addresses, four idle connections each (a request line and no end of
    headers), reopened as they are closed, held all 16 slots: 20 scrapes of 21
    failed. A newcomer now ends the oldest connection that has not sent its
    request; a scrape sends its request at once, and is answered."""
    metrics = ServerMetrics()
    server = MetricsHTTPServer(("127.0.0.1", 0), metrics.registry)  # (the defaults)
    assert (server.max_connections, server.max_per_address) == (MAX_CONNECTIONS, 4)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stop = threading.Event()

    def hold(source: str) -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            alive = []
            for sock in held:
                try:
                    if sock.recv(1) == b"":
                        sock.close()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    sock.close()
                    continue
                alive.append(sock)
            held = alive
            while len(held) < 4 and not stop.is_set():
                sock = socket.socket()
                try:
                    sock.bind((source, 0))
                    sock.connect(where(server))
                    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
                except OSError:
                    sock.close()
                    break
                sock.setblocking(False)
                held.append(sock)
            stop.wait(0.05)
        for sock in held:
            sock.close()

    holders = [threading.Thread(target=hold, args=(f"127.0.20.{n}",)) for n in range(1, 5)]
    for holder in holders:
        holder.start()
    try:
        wait_until(lambda: server.open_connections == MAX_CONNECTIONS)
        answered = 0
        for _ in range(20):
            with contextlib.suppress(OSError):
                answered += "udpchat_info" in scrape(server)
            # (the holders reopen what was closed every 0.05 s: each scrape finds
            # every slot taken again)
            wait_until(lambda: server.open_connections == MAX_CONNECTIONS)
        assert answered >= 19, f"{answered} of 20 scrapes answered"
        assert server.evicted > 0  # (room was made: the holders kept every slot)
    finally:
        stop.set()
        for holder in holders:
            holder.join(timeout=5)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class HeldCollector(Collector):
    """A collector that holds every scrape until released (so that a test's slots
    are busy answering for as long as it needs, however slow the machine)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.collecting = 0

    def describe(self) -> Iterator[Metric]:  # (else registering it would collect)
        return iter(())

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            self.collecting += 1
        self.release.wait(timeout=20)
        return iter(())


def test_a_connection_that_sent_its_request_is_never_ended_for_a_newcomer(
    serve: MetricsHTTPServer,
) -> None:
    """Only a connection still waiting for its request makes room: with every
    slot answering a request (a held collect here), a newcomer is refused, and
    every answer arrives whole."""
    held = HeldCollector()
    serve.registry.register(held)
    host, port = where(serve)
    answers: list[str] = []

    def scrape_slowly(source: str) -> None:
        with socket.create_connection((host, port), source_address=(source, 0)) as sock:
            sock.settimeout(25)
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            answers.append(b"".join(iter(lambda: sock.recv(65536), b"")).decode())

    scrapers = [
        threading.Thread(target=scrape_slowly, args=(f"127.0.1.{n}",)) for n in range(2, 10)
    ]
    for scraper in scrapers:
        scraper.start()
    try:
        wait_until(lambda: held.collecting == 8, deadline=15)  # (every slot answering)
        newcomer = idle(serve, "127.0.1.20")
        wait_until(lambda: serve.refused == 1, deadline=15)
        assert closed_after(newcomer) < 2.0
        newcomer.close()
    finally:
        held.release.set()
        for scraper in scrapers:
            scraper.join(timeout=10)
    assert serve.evicted == 0
    assert len(answers) == 8 and all("udpchat_info" in answer for answer in answers)


def test_a_client_dripping_a_byte_at_a_time_is_cut_off_at_the_deadline(
    serve: MetricsHTTPServer,
) -> None:
    """A per-read timeout is reset by every byte; the deadline is for the request."""
    sock = idle(serve, "127.0.0.1")
    stop = threading.Event()

    def drip() -> None:
        for byte in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"x" * 1000:
            if stop.wait(0.1):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return

    dripping = threading.Thread(target=drip, daemon=True)
    started = time.monotonic()
    dripping.start()
    try:
        closed_after(sock)
        assert time.monotonic() - started < TIMEOUT + 1.0
    finally:
        stop.set()
        dripping.join(timeout=5)
        sock.close()


def test_only_metrics_is_served_and_head_works(serve: MetricsHTTPServer) -> None:
    host, port = where(serve)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://{host}:{port}/other", timeout=5)
    assert caught.value.code == 404
    request = urllib.request.Request(f"http://{host}:{port}/metrics", method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200 and response.read() == b""
        assert int(response.headers["Content-Length"]) > 100


# --- accept() failing -------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


EMFILE = OSError(errno.EMFILE, "Too many open files")


def test_accept_failures_wait_longer_each_time_and_are_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeTime()
    backoff = AcceptBackoff("test socket", wait=fake.wait, clock=fake.clock)
    with caplog.at_level(logging.INFO, logger="udpchat_server.accepting"):
        for _ in range(30):  # about 25 s of failures in a row
            backoff.failed(EMFILE)
        assert fake.waits[:3] == [SHORTEST_WAIT, SHORTEST_WAIT * 2, SHORTEST_WAIT * 4]
        assert max(fake.waits) == LONGEST_WAIT
        assert [r.getMessage() for r in caplog.records] == [
            "test socket: cannot accept connections: Too many open files (1 failure(s) "
            "since the last report; retrying at most every 1 s)"
        ]
        for _ in range(100):  # flapping at the limit: no line per flap
            backoff.succeeded()
            backoff.failed(EMFILE)
        assert len(caplog.records) == 2  # the recovery, once
        fake.now += 60
        backoff.failed(EMFILE)
        # (29 after the first line, 100 flaps, this one)
        assert "(130 failure(s) since the last report" in caplog.records[-1].getMessage()
        assert not any(r.exc_info for r in caplog.records)  # no tracebacks


class FailingListener:
    """A listening socket whose accept() fails as at the descriptor limit."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls = 0

    def accept(self) -> tuple[socket.socket, object]:
        self.calls += 1
        raise EMFILE

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def test_the_metrics_server_at_the_descriptor_limit_neither_spins_nor_floods_the_log(
    serve: MetricsHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    failing = FailingListener(serve.socket)
    serve.socket = failing  # type: ignore[assignment]
    waiting = socket.create_connection(where(serve))  # readable for ever
    try:
        with caplog.at_level(logging.DEBUG, logger="udpchat_server"):
            time.sleep(1.5)
            serve.socket = failing.sock
        # A tight loop made tens of thousands of calls in 1.5 s.
        assert 3 <= failing.calls <= 20, failing.calls
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "metrics endpoint" in warnings[0].getMessage()
        assert "udpchat_info" in scrape(serve)  # and it serves again
    finally:
        serve.socket = failing.sock
        waiting.close()


def test_the_control_socket_at_the_descriptor_limit_neither_spins_nor_floods_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It logged a traceback per pass: 13.5 MB of log in 5 s."""
    control = ControlSocket(tmp_path / "db.ctl")
    control.open()
    assert control._sock is not None
    real = control._sock
    failing = FailingListener(real)
    try:
        with caplog.at_level(logging.DEBUG, logger="udpchat_server"):
            control._sock = failing  # type: ignore[assignment]
            time.sleep(2.0)  # (the thread may sit in a 0.5 s accept() first)
            control._sock = real
            time.sleep(1.1)  # (at most one longest wait before it tries again)
            assert call(tmp_path / "db.ctl", "ping", {}, timeout=5) == {"ok": True}
        assert 3 <= failing.calls <= 20, failing.calls
        messages = [r.getMessage() for r in caplog.records]
        assert sum("cannot accept" in m for m in messages) == 1, messages
        assert any("accepting connections again" in m for m in messages), messages
        assert not any(r.exc_info for r in caplog.records)
    finally:
        control._sock = real
        control.close()


def test_the_systemd_unit_sets_a_descriptor_limit_above_what_the_caps_allow() -> None:
    """UDP connections take no descriptor; the server's own, the ctl clients and
    the metrics connections are capped, so a limit above their sum is never hit
    (and bounds a leak)."""
    unit = (Path(__file__).parent.parent / "contrib" / "udpchat-server.service").read_text()
    (limit,) = [
        line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")
    ]
    own = 20  # sockets, the database's three files, stdio, a backup's files
    assert int(limit) >= 2 * (own + MAX_CLIENTS + MAX_CONNECTIONS + 2)
