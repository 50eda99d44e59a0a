"""What one call is (CallKind, echo_call, error_label) and how calls are counted (KindReport, LoadReport).

Part of :mod:`plugin_pool.testing.load` (import from there).
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from plugin_pool.errors import CallTimeoutError, PluginCallError, ResourceLimitError, WorkerCrashedError
from plugin_pool.host import PluginHost
from plugin_pool.testing.load._histogram import LatencyHistogram, format_seconds

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
    call and the worker was killed) versus ``QueueTimeoutError`` (no worker became free in time: the call
    never started), ``WorkerCrashedError[SIGKILL]``; other errors by type name alone. Pure.
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
