"""The lossy proxy of the end-to-end tests: its seeded decisions, and one round trip."""

from __future__ import annotations

import random
import socket

import pytest

from tests.e2e.udp_proxy import Faults, LossyProxy

WEATHER = Faults(drop=0.3, duplicate=0.1, delay=0.15)


def test_decisions_are_seeded_and_match_the_rates() -> None:
    first = [WEATHER.decide(random.Random(7)) for _ in range(3)]
    rng_a, rng_b = random.Random(42), random.Random(42)
    runs = [WEATHER.decide(rng_a) for _ in range(20_000)]
    assert runs == [WEATHER.decide(rng_b) for _ in range(20_000)]
    assert first == [WEATHER.decide(random.Random(7)) for _ in range(3)]
    kept = [delays for delays in runs if delays]
    copies = [delay for delays in kept for delay in delays]
    assert abs(1 - len(kept) / len(runs) - 0.3) < 0.02
    assert abs(sum(len(delays) == 2 for delays in kept) / len(kept) - 0.1) < 0.02
    assert abs(sum(delay > 0 for delay in copies) / len(copies) - 0.15) < 0.02
    assert all(delay == 0 or 0.005 <= delay <= 0.15 for delay in copies)
    assert all(Faults().decide(rng_a) == [0.0] for _ in range(100))
    assert all(Faults(drop=1.0).decide(rng_a) == [] for _ in range(100))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Faults(drop=1.5)
    with pytest.raises(ValueError, match="min_delay"):
        Faults(min_delay=0.2, max_delay=0.1)
    with pytest.raises(ValueError, match="loopback"):
        LossyProxy(("192.0.2.1", 9999), seed=1, upstream=Faults(), downstream=Faults())


def test_each_client_gets_its_own_upstream_and_its_replies() -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        echo.bind(("127.0.0.1", 0))
        echo.settimeout(5.0)
        doubled = Faults(duplicate=1.0)
        with LossyProxy(echo.getsockname(), seed=1, upstream=Faults(), downstream=doubled) as p:
            sources = set()
            for i, client in enumerate(clients):
                client.settimeout(5.0)
                client.sendto(b"ping %d" % i, p.address)
                data, source = echo.recvfrom(100)
                sources.add(source)
                echo.sendto(data.upper(), source)
                for _ in range(2):  # duplicated on the way back
                    assert client.recvfrom(100) == (b"PING %d" % i, p.address)
        stats = p.snapshot()  # stopped: nothing still counting
        assert len(sources) == 2
        assert (stats["up"].received, stats["up"].sent, stats["up"].duplicated) == (2, 2, 0)
        assert (stats["down"].received, stats["down"].sent, stats["down"].duplicated) == (2, 4, 2)
    finally:
        echo.close()
        for client in clients:
            client.close()
