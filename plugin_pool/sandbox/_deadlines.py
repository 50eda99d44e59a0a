"""Call deadlines on the host (host side): a call past its deadline gets its worker killed.

Calls travel on a stream that has no deadline of its own, so the host keeps them: before a frame goes out
its worker is armed with the deadline, and one scheduler entry, at the earliest deadline in flight, kills
the worker of any frame still unanswered then (the kill closes its channel, so the caller wakes at once).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from plugin_pool.sandbox.worker_client import WorkerHandle
from plugin_pool.sandbox.workers import WorkerRunner

__all__ = ["DeadlineWatch"]


class DeadlineWatch:
    """Kills the worker of a frame past its deadline, through one scheduler entry at the earliest deadline.

    ``arm`` and ``disarm`` cost two attribute writes and a lock nobody else holds; the scheduler entry is
    moved only when a deadline earlier than every other one arrives. Thread-safe."""

    def __init__(self, runner: WorkerRunner, workers: Callable[[], Iterable[WorkerHandle]]) -> None:
        self._runner = runner
        self._workers = workers
        self._lock = threading.Lock()
        self._next_at = math.inf
        self._task: Any = None

    def arm(self, handle: WorkerHandle, deadline: float) -> None:
        """Kill ``handle``'s worker at ``deadline`` unless ``disarm`` comes first. Never blocks. (A worker once
        killed at a deadline is never armed again: ``timed_out`` stays set.)"""
        handle.deadline = deadline
        if deadline < self._next_at:
            with self._lock:
                if deadline < self._next_at:
                    self._next_at = deadline
                    if self._task is not None:
                        self._task.cancel()
                    self._task = self._runner.call_later(max(0.0, deadline - time.monotonic()), self._check)

    def disarm(self, handle: WorkerHandle) -> bool:
        """Stop watching; return False when the deadline won (its worker is being killed). Never blocks."""
        with handle.deadline_lock:
            handle.deadline = 0.0
            return not handle.timed_out

    def _check(self) -> None:
        with self._lock:
            self._next_at = math.inf  # an arm while we look schedules its own check
            self._task = None
        now = time.monotonic()
        earliest = math.inf
        expired = []
        for handle in self._workers():
            deadline = handle.deadline
            if not deadline:
                continue
            if deadline > now:
                earliest = min(earliest, deadline)
                continue
            with handle.deadline_lock:
                if handle.deadline and handle.deadline <= now:
                    handle.deadline = 0.0
                    handle.timed_out = True
                    expired.append(handle)
        for handle in expired:
            self._runner.kill_worker(handle, "timeout")
        if earliest < math.inf:
            with self._lock:
                if earliest < self._next_at:
                    self._next_at = earliest
                    if self._task is not None:
                        self._task.cancel()
                    self._task = self._runner.call_later(max(0.0, earliest - time.monotonic()), self._check)
