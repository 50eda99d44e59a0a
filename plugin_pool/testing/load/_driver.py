"""LoadDriver: caller threads, every call accounted for. Part of :mod:`plugin_pool.testing.load`."""

from __future__ import annotations

import itertools
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from types import MappingProxyType, TracebackType
from typing import Any

from plugin_pool.testing.load._calls import CallKind, KindReport, LoadReport, _KindStats, error_label
from plugin_pool.testing.load._histogram import LatencyHistogram

# -- the driver ------------------------------------------------------------------------------------------------


class LoadDriver:
    """Runs ``threads`` caller threads that make calls of ``kinds`` until ``calls`` calls were made in total
    or ``duration_s`` passed (at least one is required, so a run always ends), or :meth:`stop` is called.

    The kinds are interleaved in proportion to their weights, in an order fixed by ``seed`` (with
    ``interleave``: in turn, so each kind gets exactly its share of ``calls`` when it divides); sequence
    numbers are unique across threads. Each thread counts only its own calls (no lock on the call path).
    ``start`` does not block; ``join`` waits (bounded by its timeout) and returns the exact
    :class:`LoadReport`; ``run`` is both. Use it as a context manager to stop and join on the way out. Not
    reusable: one driver, one run.
    """

    def __init__(
        self,
        kinds: Sequence[CallKind],
        *,
        threads: int = 8,
        calls: int | None = None,
        duration_s: float | None = None,
        grace_s: float = 5.0,
        seed: int = 0,
        keep_failures: int = 20,
        interleave: bool = False,
    ) -> None:
        if not kinds:
            raise ValueError("LoadDriver needs at least one CallKind")
        if len({k.name for k in kinds}) != len(kinds):
            raise ValueError(f"CallKind names must be unique: {[k.name for k in kinds]}")
        if calls is None and duration_s is None:
            raise ValueError("LoadDriver needs calls= or duration_s= (or both), so that it always ends")
        if threads < 1 or (calls is not None and calls < 0) or (duration_s is not None and duration_s < 0):
            raise ValueError("threads must be >= 1, calls and duration_s >= 0")
        self.kinds = tuple(kinds)
        self.threads = threads
        self.calls = calls
        self.duration_s = duration_s
        self.grace_s = grace_s
        self._schedule = _interleaved(self.kinds) if interleave else _schedule(self.kinds, seed)
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._stats: list[dict[str, _KindStats]] = [{k.name: _KindStats() for k in self.kinds} for _ in range(threads)]
        self._workers: list[threading.Thread] = []
        self._failures: list[str] = []
        self._failures_lock = threading.Lock()
        self._keep_failures = keep_failures
        self._started_at: float | None = None
        self._ended_at: float | None = None

    # -- running ----------------------------------------------------------------------------------------

    def start(self) -> LoadDriver:
        """Start the caller threads and return at once. Raises RuntimeError if already started."""
        if self._started_at is not None:
            raise RuntimeError("this LoadDriver was already started; make a new one for another run")
        self._started_at = time.perf_counter()
        deadline = None if self.duration_s is None else self._started_at + self.duration_s
        for index in range(self.threads):
            thread = threading.Thread(
                target=self._run_thread, args=(self._stats[index], deadline), name=f"plugin-pool-load-{index}"
            )
            thread.daemon = True
            self._workers.append(thread)
        for thread in self._workers:
            thread.start()
        return self

    def stop(self) -> None:
        """Ask every caller thread to stop after its current call. Does not block; safe to call twice."""
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> LoadReport:
        """Wait for the caller threads (up to ``timeout_s`` in total; None: until they end) and return the
        report. Threads still running after the timeout are reported in ``live_threads`` and their calls in
        ``in_flight``; the caller decides what that means (a hang)."""
        ends = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._workers:
            thread.join(None if ends is None else max(0.0, ends - time.monotonic()))
        if self._ended_at is None and not any(t.is_alive() for t in self._workers):
            self._ended_at = time.perf_counter()
        return self.snapshot()

    def run(self, timeout_s: float | None = None) -> LoadReport:
        """Start, wait (see :meth:`join`) and return the report. Blocks."""
        self.start()
        return self.join(timeout_s)

    @property
    def is_running(self) -> bool:
        """Whether any caller thread is still running."""
        return any(t.is_alive() for t in self._workers)

    def __enter__(self) -> LoadDriver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self.join(max(k.deadline_s for k in self.kinds) + self.grace_s + 5.0)

    def snapshot(self) -> LoadReport:
        """The counts so far (approximate while threads run: each thread's counters are copied without
        stopping it). Never blocks on calls."""
        merged: dict[str, KindReport] = {}
        for kind in self.kinds:
            calls = finished = ok = items_ok = wrong = overdue = 0
            errors: Counter[str] = Counter()
            unexpected: Counter[str] = Counter()
            latency = LatencyHistogram()
            for per_thread in self._stats:
                stats = per_thread[kind.name]
                # The reverse of the order the thread writes in (calls, outcome, finished): a live view never
                # shows more calls finished than made.
                finished += stats.finished
                ok += stats.ok
                items_ok += stats.items_ok
                wrong += stats.wrong
                overdue += stats.overdue
                errors.update(dict(stats.errors))  # dict(): one C-level copy, safe against a writing thread
                unexpected.update(dict(stats.unexpected))
                latency.merge(stats.latency.copy())
                calls += stats.calls
            merged[kind.name] = KindReport(
                kind.name,
                kind.latency_group,
                calls,
                finished,
                ok,
                items_ok,
                wrong,
                overdue,
                MappingProxyType(dict(errors)),
                MappingProxyType(dict(unexpected)),
                latency,
            )
        started = self._started_at if self._started_at is not None else time.perf_counter()
        ended = self._ended_at if self._ended_at is not None else time.perf_counter()
        with self._failures_lock:
            failures = tuple(self._failures)
        return LoadReport(
            MappingProxyType(merged),
            ended - started,
            self.threads,
            sum(1 for t in self._workers if t.is_alive()),
            failures,
            self.grace_s,
        )

    # -- one caller thread ------------------------------------------------------------------------------

    def _run_thread(self, stats: dict[str, _KindStats], deadline: float | None) -> None:
        schedule, kinds, numbers, limit, stop = self._schedule, self.kinds, self._numbers, self.calls, self._stop
        per_kind = [stats[k.name] for k in kinds]
        clock = time.perf_counter
        grace_s = self.grace_s
        while not stop.is_set():
            if deadline is not None and clock() >= deadline:
                return
            n = next(numbers)  # atomic under the GIL: every number is taken once
            if limit is not None and n >= limit:
                return
            index = schedule[n % len(schedule)]
            kind, counts = kinds[index], per_kind[index]
            counts.calls += 1
            started = clock()
            try:
                result = kind.call(n)
            except Exception as exc:
                elapsed = clock() - started
                label = error_label(exc)
                if isinstance(exc, kind.errors):
                    if kind.check_error is None or _accepts(kind.check_error, n, exc):
                        counts.errors[label] = counts.errors.get(label, 0) + 1
                    else:
                        counts.wrong += 1
                        self._note(f"{kind.name} #{n}: error refused by check_error: {label}: {exc}")
                else:
                    counts.unexpected[label] = counts.unexpected.get(label, 0) + 1
                    self._note(f"{kind.name} #{n}: unexpected {''.join(traceback.format_exception_only(exc)).strip()}")
            else:
                elapsed = clock() - started
                if kind.check is None or _accepts(kind.check, n, result):
                    counts.ok += 1
                    counts.items_ok += kind.items
                else:
                    counts.wrong += 1
                    self._note(f"{kind.name} #{n}: wrong result {_short(result)}")
            counts.latency.add(elapsed)
            if elapsed > kind.deadline_s + grace_s:
                counts.overdue += 1
                self._note(f"{kind.name} #{n}: took {elapsed:.3f} s, deadline {kind.deadline_s:g} s + {grace_s:g} s")
            counts.finished += 1

    def _note(self, text: str) -> None:
        with self._failures_lock:
            if len(self._failures) < self._keep_failures:
                self._failures.append(text)


def _accepts(check: Callable[[int, Any], bool], n: int, value: Any) -> bool:
    try:
        return bool(check(n, value))
    except Exception:
        return False


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _interleaved(kinds: Sequence[CallKind]) -> list[int]:
    """Kind indexes in turn, each repeated in proportion to its weight (relative to the lightest)."""
    if any(k.weight <= 0 for k in kinds):
        raise ValueError("CallKind weights must be > 0 to interleave")
    lightest = min(k.weight for k in kinds)
    repeats = [max(1, round(k.weight / lightest)) for k in kinds]
    return [i for turn in range(max(repeats)) for i, n in enumerate(repeats) if n > turn]


def _schedule(kinds: Sequence[CallKind], seed: int) -> list[int]:
    """A shuffled list of about 10,000 kind indexes, each as often as its weight asks and at least once unless
    its weight is 0: a kind of weight 0.01 among kinds weighing 100 in all is one call in 10,000."""
    if any(k.weight < 0 for k in kinds) or not any(k.weight > 0 for k in kinds):
        raise ValueError("CallKind weights must be >= 0 and at least one > 0")
    total = sum(k.weight for k in kinds)
    slots = max(10_000, len(kinds))
    order = [i for i, k in enumerate(kinds) if k.weight > 0 for _ in range(max(1, round(slots * k.weight / total)))]
    random.Random(seed).shuffle(order)
    return order
