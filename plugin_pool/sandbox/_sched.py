"""Delayed actions on one thread (host side), in the shape of psycopg_pool's ``sched.py``.

The sandbox has one scheduler: call deadlines, replacement backoffs, retirement timeouts and the
once-a-second worker check are entries in one heap, run by one thread in time order. Actions must be
short and must never block (a blocked action delays every deadline behind it): work that blocks, like
booting a worker, is handed from here to the supervisor thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Scheduler", "Task"]

_log = logging.getLogger("plugin_pool.sandbox")

EMPTY_QUEUE_TIMEOUT_S = 600.0
"""How long the thread sleeps with nothing scheduled (it is woken by the next entry anyway)."""


@dataclass(order=True, slots=True)
class Task:
    """One scheduled action; ``cancel()`` makes the scheduler drop it (safe to call twice, from any thread)."""

    time: float
    seq: int
    action: Callable[[], object] | None = field(compare=False)

    def cancel(self) -> None:
        """Drop the action if it has not run yet. Never blocks."""
        self.action = None


class Scheduler:
    """Runs actions at given monotonic times on its own thread. Thread-safe.

    ``start`` and ``stop`` are idempotent; ``stop`` drops what has not run and joins the thread.
    """

    def __init__(self, name: str = "plugin-pool-sched") -> None:
        self._name = name
        self._queue: list[Task] = []
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        """Start the thread (a no-op when running or stopped). Does not block."""
        with self._lock:
            if self._thread is not None or self._stopped:
                return
            self._thread = threading.Thread(target=self.run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        """Stop the thread after the action in progress; pending actions never run. Blocks up to
        ``timeout_s`` (never when called from the scheduler's own thread). Idempotent."""
        with self._lock:
            self._stopped = True
            self._queue.clear()
            thread = self._thread
        self._event.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    @property
    def is_scheduler_thread(self) -> bool:
        """Whether the caller runs on the scheduler's thread. No side effects."""
        return self._thread is threading.current_thread()

    def enter(self, delay_s: float, action: Callable[[], object]) -> Task:
        """Run ``action`` after ``delay_s`` seconds; return its task (to cancel). Never blocks."""
        return self.enterabs(time.monotonic() + delay_s, action)

    def enterabs(self, when: float, action: Callable[[], object]) -> Task:
        """Run ``action`` at monotonic time ``when``; return its task. Never blocks."""
        task = Task(when, next(self._ids), action)
        with self._lock:
            if self._stopped:
                task.cancel()
                return task
            heapq.heappush(self._queue, task)
            first = self._queue[0] is task
        if first:  # the thread sleeps until the old first entry: wake it to sleep until this one
            self._event.set()
        return task

    def run(self) -> None:
        """The loop: run every due action in time order, sleep until the next. Returns when stopped."""
        queue = self._queue
        while True:
            with self._lock:
                if self._stopped:
                    return
                now = time.monotonic()
                task: Task | None = queue[0] if queue else None
                if task is not None and task.time <= now:
                    heapq.heappop(queue)
                    delay = 0.0
                else:
                    delay = task.time - now if task is not None else EMPTY_QUEUE_TIMEOUT_S
                    task = None
                    self._event.clear()
            if task is None:
                self._event.wait(delay)
                continue
            action = task.action
            if action is None:
                continue
            try:
                action()
            except Exception:
                _log.exception("sandbox scheduled action failed", extra={"event": "sandbox_task_failed"})
