"""Call counters of monitored routes: exact under many threads with no lock on the call path."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from plugin_pool._dispatch import CallStats, monitored_route, monitored_timed_route

THREADS = 8
CALLS = 5_000


def echo(payload: Any) -> Any:
    if payload == "bad":
        raise ValueError("bad payload")
    return payload


def run_threads(count: int, target: Any) -> None:
    start = threading.Barrier(count)

    def body() -> None:
        start.wait(10)
        target()

    threads = [threading.Thread(target=body) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()


def test_counts_are_exact_under_many_threads() -> None:
    stats = CallStats()
    scan = monitored_route(echo, stats, "scan")
    fail = monitored_route(echo, stats, "fail")

    def work() -> None:
        for n in range(CALLS):
            scan(n)
            if n % 10 == 0:
                with pytest.raises(ValueError):
                    fail("bad")

    run_threads(THREADS, work)
    snap = stats.snapshot()
    failures = THREADS * (CALLS // 10)
    assert snap.by_capability["scan"][:2] == (THREADS * CALLS, 0)
    assert snap.by_capability["fail"][:2] == (failures, failures)
    assert (snap.calls, snap.errors) == (THREADS * CALLS + failures, failures)
    assert snap.last_error == "fail: ValueError: bad payload"
    assert 0 < snap.max_ms <= snap.total_ms


def test_timed_and_plain_routes_of_one_capability_count_together() -> None:
    stats = CallStats()
    plain = monitored_route(echo, stats, "scan")
    timed = monitored_timed_route(lambda payload, timeout_s: echo(payload), stats, "scan")
    plain(1)
    timed(2, 1.0)
    with pytest.raises(ValueError):
        timed("bad", 1.0)
    assert stats.snapshot().by_capability["scan"][:2] == (3, 1)


def test_the_cells_of_threads_that_ended_are_folded_and_their_counts_kept() -> None:
    stats = CallStats()
    scan = monitored_route(echo, stats, "scan")
    for _ in range(50):  # 50 short-lived threads, one after the other: each leaves its counts behind
        thread = threading.Thread(target=lambda: [scan(n) for n in range(100)])
        thread.start()
        thread.join(10)
    snap = stats.snapshot()
    assert snap.calls == 50 * 100
    # Folded when each thread ended: only the cell of the thread that made the route (this one) is left.
    counters = stats.counters("scan")
    assert counters.live_cells() <= 2
    scan(1)
    assert stats.snapshot().calls == 50 * 100 + 1


def test_a_snapshot_before_any_call_is_all_zero() -> None:
    stats = CallStats()
    monitored_route(echo, stats, "scan")
    snap = stats.snapshot()
    assert (snap.calls, snap.errors, snap.total_ms, snap.max_ms, snap.mean_ms) == (0, 0, 0.0, 0.0, 0.0)
    assert snap.by_capability == {"scan": (0, 0, 0.0)}
