"""Load and chaos for a running host: many caller threads, every call accounted for, workers killed, leaks checked.

The one place the load tests (``tests/load``) and the soak script (``scripts/soak.py``) take their machinery
from; a scanning service's own load tests can use it the same way::

    from plugin_pool.testing.load import LoadDriver, ResourceSnapshot, echo_call, wait_for_no_leaks

    before = ResourceSnapshot.take()
    with PluginHost(config) as host:
        ...                                            # add and start plugins
        kinds = [echo_call(host, "hello", group="builtin"), echo_call(host, "scanner", group="untrusted",
                 errors=(WorkerCrashedError,), deadline_s=host.config.host.call_timeout_s)]
        report = LoadDriver(kinds, threads=8, calls=10_000).run()
    report.check()                                     # wrong results, imprecise errors, hangs, lost calls
    assert wait_for_no_leaks(before).leaks == []       # children, fds, sockets, temp dirs, threads

- :class:`LoadDriver` runs caller threads for a number of calls or a duration. Each call is one
  :class:`CallKind`: a function that makes the call, a check of its result, the precise errors it may
  raise and its deadline. Every call ends in exactly one of: ok, wrong result, precise error (counted by
  :func:`error_label`), unexpected error; a call slower than its deadline plus ``grace_s`` is also counted
  as overdue. :class:`LoadReport` holds the counts per kind and a :class:`LatencyHistogram` each
  (fixed memory, so a run of any length costs the same).
- :class:`ChaosMonkey` kills sandbox workers (and every so often the zygote) with SIGKILL from its own
  thread and counts what it killed, so a test can compare ``host.restarts`` with it exactly.
- :class:`ResourceSnapshot` and :func:`wait_for_no_leaks` compare this process before and after:
  child processes, file descriptors, open files, sockets, temporary directories, Python threads, memory.
- :func:`make_echo_plugin` (BuiltIn or Trusted, in-process) and :func:`write_load_plugin` (an Untrusted
  plugin folder) are plugins made for load: they echo, sleep, allocate or raise on request.

Nothing here reads the environment: scale factors and durations are the caller's (the tests read
``PLUGIN_POOL_LOAD_SCALE``, the soak script its command line).
"""

from __future__ import annotations

import fnmatch
import gc
import itertools
import math
import os
import random
import signal
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import psutil

from plugin_pool.errors import CallTimeoutError, PluginCallError, ResourceLimitError, WorkerCrashedError
from plugin_pool.host import PluginHost
from plugin_pool.lifecycle import PluginState
from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

__all__ = [
    "DEFAULT_TEMP_PATTERNS",
    "MIB",
    "CallKind",
    "ChaosMonkey",
    "KindReport",
    "LatencyHistogram",
    "LeakReport",
    "LoadDriver",
    "LoadReport",
    "ResourceSnapshot",
    "echo_call",
    "error_label",
    "format_seconds",
    "make_echo_plugin",
    "process_memory",
    "wait_for_no_leaks",
    "write_load_plugin",
]

MIB = 1024 * 1024
"""Bytes in a mebibyte (memory figures are reported in MiB)."""


# -- latency -------------------------------------------------------------------------------------------------


class LatencyHistogram:
    """Durations counted in log-spaced buckets from 1 µs to 100 s, 20 per decade (each about 12% wide).

    Fixed memory whatever the number of samples; percentiles are accurate to one bucket (the geometric
    middle of the bucket is reported, clamped to the exact minimum and maximum). ``add`` is not
    thread-safe: give each thread its own histogram and :meth:`merge` them (the driver does).
    """

    MIN_S = 1e-6
    PER_DECADE = 20
    DECADES = 8
    BUCKETS = PER_DECADE * DECADES + 2  # plus one below MIN_S and one above the top

    __slots__ = ("count", "counts", "max_s", "min_s", "total_s")

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0
        self.min_s = math.inf

    @classmethod
    def _index(cls, seconds: float) -> int:
        if seconds < cls.MIN_S:
            return 0
        return min(int(math.log10(seconds / cls.MIN_S) * cls.PER_DECADE) + 1, cls.BUCKETS - 1)

    @classmethod
    def _bounds(cls, index: int) -> tuple[float, float]:
        if index == 0:
            return 0.0, cls.MIN_S
        low = cls.MIN_S * 10 ** ((index - 1) / cls.PER_DECADE)
        return low, cls.MIN_S * 10 ** (index / cls.PER_DECADE)

    def add(self, seconds: float) -> None:
        """Count one duration (seconds). O(1); not thread-safe."""
        self.counts[self._index(seconds)] += 1
        self.count += 1
        self.total_s += seconds
        if seconds > self.max_s:
            self.max_s = seconds
        if seconds < self.min_s:
            self.min_s = seconds

    def copy(self) -> LatencyHistogram:
        """An independent copy (a consistent enough view of one being filled by another thread)."""
        other = LatencyHistogram()
        other.counts = list(self.counts)
        other.count, other.total_s, other.max_s, other.min_s = self.count, self.total_s, self.max_s, self.min_s
        return other

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add ``other``'s samples to this histogram; return self."""
        for index, value in enumerate(other.counts):
            if value:
                self.counts[index] += value
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)
        self.min_s = min(self.min_s, other.min_s)
        return self

    def minus(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """The samples added since ``earlier`` (a copy taken before). Minimum and maximum of the difference
        are estimated from its outermost non-empty buckets."""
        diff = LatencyHistogram()
        diff.counts = [max(0, a - b) for a, b in zip(self.counts, earlier.counts, strict=True)]
        diff.count = sum(diff.counts)
        diff.total_s = max(0.0, self.total_s - earlier.total_s)
        filled = [i for i, value in enumerate(diff.counts) if value]
        if filled:
            diff.min_s = max(self._bounds(filled[0])[0], self.min_s)
            diff.max_s = min(self._bounds(filled[-1])[1], self.max_s)
        return diff

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in seconds; 0.0 when empty."""
        if self.count == 0:
            return 0.0
        if q >= 100:
            return self.max_s
        rank = max(1, math.ceil(self.count * q / 100))
        seen = 0
        for index, value in enumerate(self.counts):
            seen += value
            if seen >= rank:
                low, high = self._bounds(index)
                middle = math.sqrt(low * high) if low > 0 else high / 2
                return min(max(middle, self.min_s), self.max_s)
        return self.max_s

    @property
    def mean_s(self) -> float:
        """The mean duration in seconds (0.0 when empty)."""
        return self.total_s / self.count if self.count else 0.0


def format_seconds(seconds: float) -> str:
    """``0.0000002`` -> ``200 ns``; ``0.000123`` -> ``123 µs``; ``0.0123`` -> ``12.3 ms``; ``1.5`` -> ``1.50 s``."""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


# -- what one call is ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallKind:
    """One kind of call the driver makes, and how to judge it.

    ``call(n)`` makes the call for sequence number ``n`` (unique across the run) and returns its result;
    ``check(n, result)`` says whether the result is right (None: any result is). An exception that is an
    instance of ``errors`` is a precise error, counted under :func:`error_label`; ``check_error(n, exc)``,
    when given, must also accept it (else the call counts as wrong). Any other exception is unexpected.
    A call that takes longer than ``deadline_s`` plus the driver's grace counts as overdue (a hang).
    ``weight`` is its share of the calls, ``group`` the latency group it reports under (e.g. its trust
    level), ``items`` the results one call returns (a batch's size).
    """

    name: str
    call: Callable[[int], Any]
    check: Callable[[int, Any], bool] | None = None
    errors: tuple[type[BaseException], ...] = ()
    check_error: Callable[[int, BaseException], bool] | None = None
    deadline_s: float = 10.0
    weight: float = 1.0
    group: str = ""
    items: int = 1

    @property
    def latency_group(self) -> str:
        """``group``, or the name when no group is set."""
        return self.group or self.name


def echo_call(
    host: PluginHost,
    plugin_id: str,
    *,
    capability: str = "echo",
    name: str | None = None,
    group: str = "",
    batch: int = 0,
    as_bytes: bool = False,
    errors: tuple[type[BaseException], ...] = (),
    deadline_s: float = 10.0,
    weight: float = 1.0,
) -> CallKind:
    """A :class:`CallKind` that sends a payload unique to the call to an echoing capability and checks
    that exactly that payload comes back. ``batch`` > 0 sends that many items with ``host.invoke_many``
    (each unique, results checked in order); ``as_bytes`` sends bytes instead of text (the sandbox's raw
    path). Pure: the call is made by the driver.
    """
    label = name or f"{plugin_id}.{capability}{f'[{batch}]' if batch else ''}"
    prefix = f"{label}:"

    def payload(n: int, i: int = 0) -> Any:
        text = f"{prefix}{n}.{i}" if batch else f"{prefix}{n}"
        return text.encode() if as_bytes else text

    if batch:

        def call_many(n: int) -> Any:
            return host.invoke_many(plugin_id, capability, [payload(n, i) for i in range(batch)])

        def check_many(n: int, result: Any) -> bool:
            return isinstance(result, list) and result == [payload(n, i) for i in range(batch)]

        return CallKind(label, call_many, check_many, errors, None, deadline_s, weight, group, batch)

    def call_one(n: int) -> Any:
        return host.invoke(plugin_id, capability, payload(n))

    def check_one(n: int, result: Any) -> bool:
        return bool(result == payload(n))

    return CallKind(label, call_one, check_one, errors, None, deadline_s, weight, group, 1)


def error_label(exc: BaseException) -> str:
    """How an error is counted: its type name, with the detail that tells its cause apart.

    ``ResourceLimitError[memory]``, ``CallTimeoutError[worker killed]`` (the deadline passed during the
    call and the worker was killed) versus ``CallTimeoutError`` (no worker became free in time),
    ``WorkerCrashedError[SIGKILL]``; other errors by type name alone. Pure.
    """
    name = type(exc).__name__
    if isinstance(exc, ResourceLimitError):
        return f"{name}[{exc.limit}]"
    if isinstance(exc, CallTimeoutError):
        return f"{name}[worker killed]" if exc.pid is not None else name
    if isinstance(exc, WorkerCrashedError):
        if exc.signal is not None:
            try:
                return f"{name}[{signal.Signals(exc.signal).name}]"
            except ValueError:
                return f"{name}[signal {exc.signal}]"
        return f"{name}[exit {exc.exit_code}]" if exc.exit_code is not None else name
    if isinstance(exc, PluginCallError):
        return f"{name}[{exc.remote_type}]"
    return name


# -- counting --------------------------------------------------------------------------------------------------


class _KindStats:
    """One thread's counters for one kind. Written by that thread only; read (approximately) by others."""

    __slots__ = ("calls", "errors", "finished", "items_ok", "latency", "ok", "overdue", "unexpected", "wrong")

    def __init__(self) -> None:
        self.calls = 0
        self.finished = 0
        self.ok = 0
        self.items_ok = 0
        self.wrong = 0
        self.overdue = 0
        self.errors: dict[str, int] = {}
        self.unexpected: dict[str, int] = {}
        self.latency = LatencyHistogram()


@dataclass(frozen=True, slots=True)
class KindReport:
    """The counts of one call kind. ``calls`` = ``ok + wrong + failed + unexpected_count + in_flight``."""

    name: str
    group: str
    calls: int
    finished: int
    ok: int
    items_ok: int
    wrong: int
    overdue: int
    errors: Mapping[str, int]
    """Precise errors (an instance of the kind's ``errors``) by :func:`error_label`."""
    unexpected: Mapping[str, int]
    """Other errors, by :func:`error_label`."""
    latency: LatencyHistogram

    @property
    def failed(self) -> int:
        """Calls that ended in a precise error."""
        return sum(self.errors.values())

    @property
    def unexpected_count(self) -> int:
        """Calls that ended in an error outside the kind's precise errors."""
        return sum(self.unexpected.values())

    @property
    def in_flight(self) -> int:
        """Calls made that have not ended (0 once the driver has joined its threads)."""
        return self.calls - self.finished


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a :class:`LoadDriver` counted: per kind, plus the run's duration and examples of what went wrong.

    Taken while the driver runs (:meth:`LoadDriver.snapshot`) it is an approximate live view; returned by
    :meth:`LoadDriver.join` it is exact.
    """

    kinds: Mapping[str, KindReport]
    elapsed_s: float
    threads: int
    live_threads: int
    """Caller threads still running when the report was taken (0 after a complete join)."""
    failures: tuple[str, ...] = ()
    """The first wrong results, unexpected errors and overdue calls, described."""
    grace_s: float = 0.0

    def _sum(self, attribute: str) -> int:
        return sum(int(getattr(k, attribute)) for k in self.kinds.values())

    @property
    def calls(self) -> int:
        """Calls made."""
        return self._sum("calls")

    @property
    def ok(self) -> int:
        """Calls answered with the right result."""
        return self._sum("ok")

    @property
    def items_ok(self) -> int:
        """Results checked right (a batch call counts its items)."""
        return self._sum("items_ok")

    @property
    def wrong(self) -> int:
        """Calls answered with a wrong result (or a precise error its ``check_error`` refused)."""
        return self._sum("wrong")

    @property
    def failed(self) -> int:
        """Calls that ended in a precise error."""
        return self._sum("failed")

    @property
    def unexpected_count(self) -> int:
        """Calls that ended in an error that is not one of their kind's precise errors."""
        return self._sum("unexpected_count")

    @property
    def overdue(self) -> int:
        """Calls that took longer than their deadline plus the grace."""
        return self._sum("overdue")

    @property
    def in_flight(self) -> int:
        """Calls made that did not end (a call that vanished or hangs, once the driver has joined)."""
        return self._sum("in_flight")

    @property
    def errors(self) -> Counter[str]:
        """Precise errors of every kind, by label."""
        total: Counter[str] = Counter()
        for kind in self.kinds.values():
            total.update(kind.errors)
        return total

    @property
    def unexpected(self) -> Counter[str]:
        """Unexpected errors of every kind, by label."""
        total: Counter[str] = Counter()
        for kind in self.kinds.values():
            total.update(kind.unexpected)
        return total

    def latency_by_group(self) -> dict[str, LatencyHistogram]:
        """Latency histograms merged by the kinds' groups (e.g. per trust level), in first-seen order."""
        groups: dict[str, LatencyHistogram] = {}
        for kind in self.kinds.values():
            groups.setdefault(kind.group, LatencyHistogram()).merge(kind.latency)
        return groups

    def count_by_group(self, attribute: str = "ok") -> Counter[str]:
        """A per-kind counter (``ok``, ``calls``, ``failed``, ...) summed by group."""
        totals: Counter[str] = Counter()
        for kind in self.kinds.values():
            totals[kind.group] += int(getattr(kind, attribute))
        return totals

    def since(self, earlier: LoadReport) -> LoadReport:
        """The calls of this report that are not in ``earlier`` (a report of the same driver taken before).
        Latencies are the difference of the histograms; examples are left out."""
        kinds = {}
        for name, now in self.kinds.items():
            before = earlier.kinds.get(name)
            if before is None:
                kinds[name] = now
                continue
            kinds[name] = KindReport(
                name=name,
                group=now.group,
                calls=now.calls - before.calls,
                finished=now.finished - before.finished,
                ok=now.ok - before.ok,
                items_ok=now.items_ok - before.items_ok,
                wrong=now.wrong - before.wrong,
                overdue=now.overdue - before.overdue,
                errors=_counter_minus(now.errors, before.errors),
                unexpected=_counter_minus(now.unexpected, before.unexpected),
                latency=now.latency.minus(before.latency),
            )
        return LoadReport(
            MappingProxyType(kinds),
            self.elapsed_s - earlier.elapsed_s,
            self.threads,
            self.live_threads,
            grace_s=self.grace_s,
        )

    def list_problems(self) -> list[str]:
        """What makes this run a failure, one line each (empty when every call was answered right or failed
        with a precise error in time, and none is missing)."""
        problems = []
        if self.wrong:
            problems.append(f"{self.wrong} calls were answered with a wrong result")
        if self.unexpected_count:
            problems.append(f"{self.unexpected_count} calls raised an imprecise error: {dict(self.unexpected)}")
        if self.overdue:
            problems.append(f"{self.overdue} calls took longer than their deadline + {self.grace_s:g} s grace")
        if self.in_flight:
            problems.append(f"{self.in_flight} calls never ended (made but neither answered nor failed)")
        if self.live_threads:
            problems.append(f"{self.live_threads} caller threads were still running")
        accounted = self.ok + self.wrong + self.failed + self.unexpected_count + self.in_flight
        if accounted != self.calls:
            problems.append(f"accounting broken: {accounted} outcomes for {self.calls} calls")
        return problems

    def check(self) -> None:
        """Raise AssertionError listing :meth:`list_problems`, the examples and the table, if there are any."""
        problems = self.list_problems()
        if problems:
            examples = "\n".join(f"  {line}" for line in self.failures)
            raise AssertionError("\n".join([*problems, "examples:", examples, self.format()]))

    def format(self) -> str:
        """A text table: per kind, the calls, outcomes and latency percentiles; then errors by label."""
        header = (
            f"{'kind':<32} {'calls':>9} {'ok':>9} {'failed':>7} {'bad':>5} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}"
        )
        lines = [header, "-" * len(header)]
        for kind in self.kinds.values():
            lat = kind.latency
            bad = kind.wrong + kind.unexpected_count + kind.overdue + kind.in_flight
            lines.append(
                f"{kind.name[:32]:<32} {kind.calls:>9,} {kind.ok:>9,} {kind.failed:>7,} {bad:>5,} "
                f"{format_seconds(lat.percentile(50)):>9} {format_seconds(lat.percentile(90)):>9} "
                f"{format_seconds(lat.percentile(99)):>9} {format_seconds(lat.max_s):>9}"
            )
        lines.append(
            f"{self.calls:,} calls in {self.elapsed_s:.1f} s ({self.calls / max(self.elapsed_s, 1e-9):,.0f}/s) "
            f"from {self.threads} threads: {self.ok:,} ok ({self.items_ok:,} results), {self.failed:,} precise "
            f"errors, {self.wrong} wrong, {self.unexpected_count} unexpected, {self.overdue} overdue, "
            f"{self.in_flight} unfinished"
        )
        for label, count in sorted(self.errors.items()):
            lines.append(f"  error {label}: {count:,}")
        for label, count in sorted(self.unexpected.items()):
            lines.append(f"  UNEXPECTED {label}: {count:,}")
        return "\n".join(lines)


def _counter_minus(now: Mapping[str, int], before: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType({k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)})


# -- the driver ------------------------------------------------------------------------------------------------


class LoadDriver:
    """Runs ``threads`` caller threads that make calls of ``kinds`` until ``calls`` calls were made in total
    or ``duration_s`` passed (at least one is required, so a run always ends), or :meth:`stop` is called.

    The kinds are interleaved in proportion to their weights, in an order fixed by ``seed``; sequence
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
        self._schedule = _schedule(self.kinds, seed)
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


# -- chaos ----------------------------------------------------------------------------------------------------


class ChaosMonkey:
    """Kills sandbox workers of ``host`` with SIGKILL at intervals, from its own thread, and counts each kill.

    Every ``interval_s`` it waits (up to ``settle_timeout_s``) until the pool is settled (see
    :meth:`is_settled`), then kills one random live worker of ``plugin_ids`` (default: every sandboxed
    plugin), or, every ``zygote_every``-th time (0: never), the zygote, which takes every worker of the
    host with it. ``max_kills`` bounds the actions. Waiting for the pool to settle before each kill makes
    the count exact: every killed worker is one replacement, reason ``crash``, for a plugin whose pool has
    ``min_workers == max_workers`` (a pool grown above its minimum replaces a lost worker only when calls
    wait) and a crash limit the kills do not reach. Compare :attr:`kills` with ``host.restarts`` after
    :meth:`stop` and :meth:`wait_settled`.

    ``start``/``stop`` are idempotent; ``stop`` does not block, ``join`` does (bounded). A context manager.
    """

    def __init__(
        self,
        host: PluginHost,
        *,
        plugin_ids: Iterable[str] | None = None,
        interval_s: float = 0.25,
        zygote_every: int = 0,
        max_kills: int | None = None,
        settle_timeout_s: float = 10.0,
        seed: int = 0,
    ) -> None:
        self.host = host
        self.plugin_ids = tuple(plugin_ids) if plugin_ids is not None else None
        self.interval_s = interval_s
        self.zygote_every = zygote_every
        self.max_kills = max_kills
        self.settle_timeout_s = settle_timeout_s
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.kills: Counter[str] = Counter()
        """Workers killed, by plugin id (those that died with a killed zygote included)."""
        self.worker_kills = 0
        """Single workers killed."""
        self.zygote_kills = 0
        """Times the zygote was killed."""
        self.unsettled = 0
        """Times the pool did not settle within ``settle_timeout_s`` (that kill was skipped)."""
        self.errors: list[str] = []
        """Unexpected trouble in the chaos thread (a process that vanished is not trouble)."""

    def start(self) -> ChaosMonkey:
        """Start the chaos thread (no-op if running). Does not block."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="plugin-pool-chaos", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the chaos thread to stop (it finishes the kill in progress). Does not block; idempotent."""
        self._stop.set()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the chaos thread to end (bounded by ``settle_timeout_s`` + 5 s when None)."""
        if self._thread is not None:
            self._thread.join(self.settle_timeout_s + 5.0 if timeout_s is None else timeout_s)

    def __enter__(self) -> ChaosMonkey:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self.join()

    @property
    def total_kills(self) -> int:
        """Workers killed in all (single kills plus those that died with the zygote)."""
        with self._lock:
            return sum(self.kills.values())

    def expected_restarts(self) -> Counter[tuple[str, str]]:
        """The replacements the kills cause, keyed like ``host.restarts``: ``(plugin_id, "crash")``."""
        with self._lock:
            return Counter({(plugin_id, "crash"): n for plugin_id, n in self.kills.items() if n})

    def is_settled(self) -> bool:
        """Whether the pool is at rest: a zygote runs; every Active sandboxed plugin has at least its minimum
        of serving workers and its warm spares, all alive; and the zygote has no other children (no worker
        being born or retired). Never blocks on calls."""
        pool = self.host.sandbox
        if pool is None:
            return True
        zygote = pool.supervisor.zygote_pid
        if zygote is None:
            return False
        expected: set[int] = set()
        for plugin_id in _sandboxed_active(self.host):
            stats = pool.get_stats(plugin_id)
            pids = pool.list_worker_pids(plugin_id)
            if stats is None or len(pids) != stats.workers + stats.spares or stats.workers < stats.min_workers:
                return False
            if stats.spares < pool.config.spare_workers:
                return False
            expected.update(pids)
        return _live_children(zygote) == expected

    def wait_settled(self, timeout_s: float | None = None) -> bool:
        """Poll :meth:`is_settled` until true or ``timeout_s`` (default ``settle_timeout_s``); return it."""
        ends = time.monotonic() + (self.settle_timeout_s if timeout_s is None else timeout_s)
        while True:
            if self.is_settled():
                return True
            if time.monotonic() >= ends or (self._stop.is_set() and threading.current_thread() is self._thread):
                return False
            time.sleep(0.005)

    def kill_one(self) -> str | None:
        """Kill one random live worker of the chosen plugins now and wait until the pool has noticed its
        death; return its plugin id (None: no worker). Does not wait for the replacement (see
        :meth:`wait_settled`)."""
        pool = self.host.sandbox
        if pool is None:
            return None
        zygote = pool.supervisor.zygote_pid
        plugin_ids = self.plugin_ids if self.plugin_ids is not None else _sandboxed_active(self.host)
        candidates = [(p, pid) for p in plugin_ids for pid in pool.list_worker_pids(p)]
        if not candidates or zygote is None:
            return None
        plugin_id, pid = self._random.choice(candidates)
        try:
            if psutil.Process(pid).ppid() != zygote:  # not a worker of this host any more (pid reused)
                return None
            os.kill(pid, signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            return None
        with self._lock:
            self.kills[plugin_id] += 1
            self.worker_kills += 1
        # Until the pool has seen the death, the pool could look settled with the dying worker in it.
        self._wait_until(lambda: pid not in pool.list_worker_pids(plugin_id), f"worker {pid} to be reported dead")
        return plugin_id

    def kill_zygote(self) -> int:
        """Kill the zygote now (its workers die with it) and wait until the supervisor has noticed; return
        how many workers it took. Counts each of those workers in :attr:`kills` under its plugin."""
        pool = self.host.sandbox
        if pool is None or pool.supervisor.zygote_pid is None:
            return 0
        zygote = pool.supervisor.zygote_pid
        taken = {p: len(pool.list_worker_pids(p)) for p in _sandboxed_active(self.host)}
        try:
            os.kill(zygote, signal.SIGKILL)
        except ProcessLookupError:
            return 0
        with self._lock:
            self.kills.update({p: n for p, n in taken.items() if n})
            self.zygote_kills += 1
        self._wait_until(lambda: pool.supervisor.zygote_pid != zygote, f"zygote {zygote} to be reported dead")
        return sum(taken.values())

    def _wait_until(self, condition: Callable[[], bool], what: str) -> None:
        ends = time.monotonic() + self.settle_timeout_s
        while not condition():
            if time.monotonic() >= ends:
                with self._lock:
                    self.errors.append(f"timed out after {self.settle_timeout_s:g} s waiting for {what}")
                return
            time.sleep(0.001)

    def _run(self) -> None:
        actions = 0
        while not self._stop.wait(self.interval_s):
            if self.max_kills is not None and actions >= self.max_kills:
                return
            if not self.wait_settled():
                if self._stop.is_set():
                    return
                with self._lock:
                    self.unsettled += 1
                continue
            try:
                actions += 1
                if self.zygote_every and actions % self.zygote_every == 0:
                    self.kill_zygote()
                else:
                    self.kill_one()
            except Exception as exc:  # keep killing; the test reads errors
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")


def _sandboxed_active(host: PluginHost) -> list[str]:
    return [p.plugin_id for p in host.get_health().plugins if p.workers is not None and p.state is PluginState.ACTIVE]


def _live_children(pid: int) -> set[int]:
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return set()
    alive = set()
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return alive


# -- leaks ----------------------------------------------------------------------------------------------------


def process_memory(*, unique: bool = True) -> tuple[int, int | None]:
    """This process's resident set size and (``unique``) unique set size in bytes: (rss, uss or None).

    USS reads /proc/self/smaps (a few ms); it is what the process alone would give back if it exited.
    """
    process = psutil.Process()
    if unique:
        try:
            full = process.memory_full_info()
            return int(full.rss), int(full.uss)
        except (psutil.AccessDenied, AttributeError):
            pass
    return int(process.memory_info().rss), None


@dataclass(frozen=True, slots=True)
class LeakReport:
    """What this process holds now that it did not hold at the earlier :class:`ResourceSnapshot`."""

    children: tuple[str, ...]
    """Descendant processes started since and still running (pid and command)."""
    fd_growth: int
    files: tuple[str, ...]
    connections: tuple[str, ...]
    """Sockets opened since and still open (inet and unix)."""
    temp_dirs: tuple[str, ...]
    threads: tuple[str, ...]
    """Python threads started since and still alive, by name."""
    rss_growth_bytes: int
    uss_growth_bytes: int | None

    @property
    def leaks(self) -> list[str]:
        """One line per kind of leak (memory growth is reported, not judged here); empty when clean."""
        found = []
        if self.children:
            found.append(f"{len(self.children)} child processes still run: {', '.join(self.children)}")
        if self.fd_growth > 0:
            found.append(f"{self.fd_growth} more file descriptors are open")
        if self.files:
            found.append(f"files still open: {', '.join(self.files)}")
        if self.connections:
            found.append(f"sockets still open: {', '.join(self.connections)}")
        if self.temp_dirs:
            found.append(f"temporary directories left: {', '.join(self.temp_dirs)}")
        if self.threads:
            found.append(f"threads still alive: {', '.join(self.threads)}")
        return found

    def format(self) -> str:
        """The leaks (or ``no leaks``) and the memory growth, for a report."""
        uss = f", USS {self.uss_growth_bytes / MIB:+.1f} MiB" if self.uss_growth_bytes is not None else ""
        head = "; ".join(self.leaks) or "no leaks (children, fds, files, sockets, temp dirs, threads)"
        return f"{head}; memory: RSS {self.rss_growth_bytes / MIB:+.1f} MiB{uss}"


DEFAULT_TEMP_PATTERNS = ("plugin-pool-{pid}-*",)
"""Temporary directories a host of this process creates (the sandbox's private directory has the pid in
its name); ``{pid}`` is replaced by this process's pid."""


@dataclass(frozen=True, slots=True)
class ResourceSnapshot:
    """What this process holds at one moment: descendants, fds, files, sockets, temp dirs, threads, memory.

    Take one before a host opens and compare one taken after it closed (:meth:`compare`), or let
    :func:`wait_for_no_leaks` poll until things that end asynchronously (reaped children, daemon
    threads) have ended. Other processes' temp directories are ignored: only ``temp_patterns`` (glob
    patterns under the temp dir, ``{pid}`` replaced) are looked at.
    """

    children: Mapping[int, str]
    fds: int
    files: frozenset[str]
    connections: Counter[str]
    temp_dirs: frozenset[str]
    threads: Counter[str]
    rss_bytes: int
    uss_bytes: int | None

    @classmethod
    def take(
        cls,
        *,
        temp_patterns: Sequence[str] = DEFAULT_TEMP_PATTERNS,
        temp_root: str | Path | None = None,
        memory: bool = True,
        collect_garbage: bool = True,
    ) -> ResourceSnapshot:
        """Look at this process now. ``memory`` adds USS (slower); ``collect_garbage`` runs ``gc.collect()``
        first so objects that are only waiting for the collector do not count. Blocks a few ms."""
        if collect_garbage:
            gc.collect()
        process = psutil.Process()
        children: dict[int, str] = {}
        for child in process.children(recursive=True):
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                children[child.pid] = " ".join(child.cmdline())[:120] or child.name()
            except psutil.NoSuchProcess:
                continue
        connections: Counter[str] = Counter()
        for conn in process.net_connections(kind="all"):
            connections[_describe_connection(conn)] += 1
        root = Path(temp_root or tempfile.gettempdir())
        patterns = [p.replace("{pid}", str(os.getpid())) for p in temp_patterns]
        try:
            names = os.listdir(root)
        except OSError:
            names = []
        temp_dirs = frozenset(str(root / n) for n in names if any(fnmatch.fnmatch(n, p) for p in patterns))
        rss, uss = process_memory(unique=memory)
        return cls(
            children=MappingProxyType(children),
            fds=process.num_fds(),
            files=frozenset(f.path for f in process.open_files()),
            connections=connections,
            temp_dirs=temp_dirs,
            threads=Counter(t.name for t in threading.enumerate()),
            rss_bytes=rss,
            uss_bytes=uss,
        )

    def compare(self, before: ResourceSnapshot) -> LeakReport:
        """What this snapshot holds beyond ``before``. Pure."""
        return LeakReport(
            children=tuple(
                f"{pid} ({cmd})" for pid, cmd in sorted(self.children.items()) if pid not in before.children
            ),
            fd_growth=self.fds - before.fds,
            files=tuple(sorted(self.files - before.files)),
            connections=tuple(sorted((self.connections - before.connections).elements())),
            temp_dirs=tuple(sorted(self.temp_dirs - before.temp_dirs)),
            threads=tuple(sorted((self.threads - before.threads).elements())),
            rss_growth_bytes=self.rss_bytes - before.rss_bytes,
            uss_growth_bytes=(
                self.uss_bytes - before.uss_bytes
                if self.uss_bytes is not None and before.uss_bytes is not None
                else None
            ),
        )


def _describe_connection(conn: Any) -> str:
    def address(value: Any) -> str:
        if not value:
            return "-"
        if isinstance(value, str):
            return value
        return f"{value[0]}:{value[1]}"

    kind = {1: "unix", 2: "inet", 10: "inet6"}.get(int(conn.family), str(conn.family))
    return f"{kind} {address(conn.laddr)} -> {address(conn.raddr)} {conn.status or ''}".strip()


def wait_for_no_leaks(
    before: ResourceSnapshot,
    *,
    timeout_s: float = 10.0,
    temp_patterns: Sequence[str] = DEFAULT_TEMP_PATTERNS,
    temp_root: str | Path | None = None,
) -> LeakReport:
    """Compare snapshots with ``before`` until nothing leaks or ``timeout_s`` passed; return the last
    comparison. Children are reaped and daemon threads end a moment after a host closes, hence the polling.
    Blocks up to ``timeout_s``."""
    ends = time.monotonic() + timeout_s
    while True:
        report = ResourceSnapshot.take(temp_patterns=temp_patterns, temp_root=temp_root, memory=False).compare(before)
        if not report.leaks or time.monotonic() >= ends:
            break
        time.sleep(0.05)
    # The memory figures of the final report include USS (the polling above skips it: it is the slow part).
    final = ResourceSnapshot.take(temp_patterns=temp_patterns, temp_root=temp_root).compare(before)
    return final if final.leaks or not report.leaks else report


# -- plugins made for load ------------------------------------------------------------------------------------


class _EchoBase(PluginBase):
    """In-process load plugin: echoes (sync and async), sleeps, raises. Subclassed per id by make_echo_plugin."""

    @capability
    def echo(self, payload: Any) -> Any:
        """Return the payload."""
        return payload

    @capability
    async def echo_async(self, payload: Any) -> Any:
        """Return the payload, from a coroutine on the host's loop."""
        return payload

    @capability
    def sleep(self, payload: Any) -> Any:
        """Sleep ``payload["s"]`` seconds, then return ``payload.get("token")``."""
        time.sleep(float(payload["s"]))
        return payload.get("token")

    @capability
    def fail(self, payload: Any) -> Any:
        """Raise ValueError with the payload as its message (a PluginCallError for the caller)."""
        raise ValueError(str(payload))


def make_echo_plugin(plugin_id: str, trust_level: TrustLevel | str = TrustLevel.BUILTIN) -> PluginBase:
    """An in-process plugin ``plugin_id`` (BuiltIn or Trusted) with capabilities ``echo``, ``echo_async``,
    ``sleep`` and ``fail`` (see :class:`_EchoBase`). Add it with ``host.add_plugin``. Pure."""
    info = PluginInfo(
        id=plugin_id, name=f"Load {plugin_id}", version="1.0.0", trust_level=TrustLevel.parse(trust_level)
    )
    cls = type(f"Load_{plugin_id.replace('-', '_')}", (_EchoBase,), {"info": info, "__module__": __name__})
    plugin: PluginBase = cls()
    return plugin


_LOAD_PLUGIN_SOURCE = '''\
"""A sandboxed plugin for load tests, written by plugin_pool.testing.load.write_load_plugin."""

import os
import time
import tomllib
from pathlib import Path

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

with (Path(__file__).parent / "plugin.toml").open("rb") as _fh:
    _ID = tomllib.load(_fh)["plugin"]["id"]


class LoadPlugin(PluginBase):
    info = PluginInfo(id=_ID, name="Load", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def echo(self, payload):
        return payload

    @capability
    def sleep(self, payload):
        time.sleep(float(payload["s"]))
        return payload.get("token")

    @capability
    def allocate(self, payload):
        block = bytearray(int(payload["bytes"]))
        return {"allocated": len(block), "token": payload.get("token")}

    @capability
    def fail(self, payload):
        raise ValueError(str(payload))

    @capability
    def pid(self, payload):
        return os.getpid()
'''


def write_load_plugin(
    parent: str | Path,
    plugin_id: str,
    *,
    min_workers: int = 1,
    max_workers: int | None = None,
    memory_mb: int | None = None,
    call_timeout_s: float | None = None,
) -> Path:
    """Write an Untrusted plugin folder ``parent/plugin_id`` and return it (add it with
    ``host.add_plugin_dir``). Its capabilities: ``echo`` (returns the payload), ``sleep`` (``{"s": seconds,
    "token": ...}``, returns the token), ``allocate`` (``{"bytes": n, "token": ...}``: a MemoryError past the
    worker's memory limit), ``fail`` (raises ValueError with the payload) and ``pid``. ``min_workers`` /
    ``max_workers`` (default: the minimum) go to its [pool]; ``memory_mb`` (>= 256) and ``call_timeout_s``
    to its [resources], where they tighten the host's limits. Blocks on the file writes; raises
    FileExistsError if the folder exists."""
    folder = Path(parent) / plugin_id
    folder.mkdir(parents=True)
    resources = {"memory_mb": memory_mb, "call_timeout_s": call_timeout_s}
    lines = [
        "# Written by plugin_pool.testing.load.write_load_plugin.",
        "[plugin]",
        f'id = "{plugin_id}"',
        'name = "Load"',
        'version = "1.0.0"',
        'trust_level = "untrusted"',
        'entry = "load_plugin:LoadPlugin"',
        "",
        *(f"[capabilities.{name}]" for name in ("echo", "sleep", "allocate", "fail", "pid")),
        "",
        "[pool]",
        f"min_workers = {min_workers}",
        f"max_workers = {max_workers if max_workers is not None else min_workers}",
    ]
    if any(v is not None for v in resources.values()):
        lines += ["", "[resources]", *(f"{k} = {v!r}" for k, v in resources.items() if v is not None)]
    (folder / "plugin.toml").write_text("\n".join(lines) + "\n")
    (folder / "load_plugin.py").write_text(_LOAD_PLUGIN_SOURCE)
    return folder
