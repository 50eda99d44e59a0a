"""The Untrusted dispatcher (host side, no processes): FIFO, at most N threads, bounded, cancellable."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from plugin_pool import PoolOverloadedError
from plugin_pool.host._untrusted import _Dispatcher


class Jobs:
    """Jobs that block on a gate and record how many ran at once and in which order."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.order: list[int] = []
        self.started = threading.Semaphore(0)

    def job(self, n: int) -> int:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.order.append(n)
        self.started.release()
        self.gate.wait(10)
        with self.lock:
            self.running -= 1
        return n


def test_calls_run_in_order_on_at_most_n_threads() -> None:
    jobs = Jobs()
    dispatcher = _Dispatcher("p", 3, queue_limit=1000)
    futures = [dispatcher.submit(jobs.job, n) for n in range(60)]
    for _ in range(3):
        assert jobs.started.acquire(timeout=10)
    assert len([t for t in threading.enumerate() if t.name == "plugin-pool-call-p"]) == 3
    jobs.gate.set()
    assert [f.result(10) for f in futures] == list(range(60))
    assert jobs.most == 3
    assert sorted(jobs.order) == list(range(60))
    assert sorted(jobs.order[:3]) == [0, 1, 2]  # the first three in line took the three threads
    dispatcher.close()


def test_one_thread_runs_calls_in_the_order_they_came() -> None:
    jobs = Jobs()
    jobs.gate.set()
    dispatcher = _Dispatcher("fifo", 1, queue_limit=1000)
    futures = [dispatcher.submit(jobs.job, n) for n in range(50)]
    assert [f.result(10) for f in futures] == list(range(50))
    assert jobs.order == list(range(50))
    dispatcher.close()


def test_a_cancelled_call_never_runs_and_a_full_queue_refuses_at_once() -> None:
    jobs = Jobs()
    dispatcher = _Dispatcher("p", 1, queue_limit=2)
    first = dispatcher.submit(jobs.job, 0)
    assert jobs.started.acquire(timeout=10)
    queued = [dispatcher.submit(jobs.job, n) for n in (1, 2)]
    refused = dispatcher.submit(jobs.job, 3)
    with pytest.raises(PoolOverloadedError, match="queue_limit"):
        refused.result(0)
    assert queued[0].cancel()
    jobs.gate.set()
    assert first.result(10) == 0 and queued[1].result(10) == 2
    with pytest.raises(CancelledError):
        queued[0].result(0)
    assert jobs.order == [0, 2]
    dispatcher.close()


def test_a_call_submitted_after_close_still_ends_and_threads_leave() -> None:
    dispatcher = _Dispatcher("late", 2, queue_limit=10)
    dispatcher.close()
    assert dispatcher.submit(lambda: "ran").result(10) == "ran"
    for thread in [t for t in threading.enumerate() if t.name == "plugin-pool-call-late"]:
        thread.join(10)
        assert not thread.is_alive()
