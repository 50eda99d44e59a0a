"""Routes: what ``host.invoke`` calls for one (plugin, capability). Built once at activation, never per call.

- BuiltIn: the bound method itself (no wrapper at all).
- Trusted (and Untrusted, around the sandbox proxy): a closure that times the call and counts it in
  :class:`CallStats`, recording the exceptions.
- ``async def`` methods: a closure that runs the coroutine on the host's loop under the call timeout.

The counters are exact under any number of threads without a lock on the call path: each thread counts
in a cell of its own (a ``threading.local``), and a read sums the cells. A thread's cell is folded into
the totals when the thread ends, so cells never outnumber the threads alive.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from plugin_pool._steps import StepRunner, StepTimeout
from plugin_pool.errors import CallTimeoutError, PluginCallError, PluginPoolError

__all__ = [
    "CallStats",
    "CallStatsSnapshot",
    "Route",
    "TimedRoute",
    "async_route",
    "async_timed_route",
    "call_error",
    "monitored_route",
    "monitored_timed_route",
    "submit_coroutine",
]

Route = Callable[[Any], Any]
TimedRoute = Callable[[Any, float], Any]
"""A route that takes the call's deadline in seconds as its second argument."""

# One thread's counters of one capability: [calls, errors, total ns, max ns] (monitored_route indexes them
# with literals, the rest with these names).
_CALLS, _ERRORS, _TOTAL, _MAX = range(4)


@dataclass(frozen=True, slots=True)
class CallStatsSnapshot:
    """Counters of a monitored plugin at one moment."""

    calls: int
    errors: int
    total_ms: float
    max_ms: float
    last_error: str | None
    by_capability: Mapping[str, tuple[int, int, float]] = field(default_factory=dict)
    """capability -> (calls, errors, total ms)."""

    @property
    def mean_ms(self) -> float:
        """Mean call duration in milliseconds (0 before the first call)."""
        return self.total_ms / self.calls if self.calls else 0.0


class _ThreadCell(threading.local):
    """The calling thread's cell of one :class:`_Counters`; ``__init__`` runs once in each thread."""

    cell: list[int]
    alive: object

    def __init__(self, counters: _Counters) -> None:
        self.cell, self.alive = counters.new_cell()


class _Alive:
    """Held only by a thread's ``_ThreadCell``: it is freed when the thread ends, which folds the cell."""

    __slots__ = ("__weakref__",)


class _Counters:
    """The exact counters of one capability: a cell per thread, written without a lock, summed when read."""

    __slots__ = ("_cells", "_dead", "_lock", "_retired", "local")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._cells: dict[int, list[int]] = {}
        self._dead: collections.deque[list[int]] = collections.deque()
        self._retired = [0, 0, 0, 0]
        self.local = _ThreadCell(self)

    def new_cell(self) -> tuple[list[int], object]:
        """A cell for the calling thread, and the object whose end (the thread's) retires it."""
        cell = [0, 0, 0, 0]
        alive = _Alive()
        # deque.append is atomic, so the finalizer takes no lock: it may run in any thread, at any time.
        weakref.finalize(alive, self._dead.append, cell)
        with self._lock:
            self._fold_dead()
            self._cells[id(cell)] = cell
        return cell, alive

    def _fold_dead(self) -> None:
        """Fold the cells of threads that ended into the retired totals (caller holds the lock)."""
        retired = self._retired
        while self._dead:
            cell = self._dead.popleft()
            if self._cells.pop(id(cell), None) is None:
                continue
            retired[_CALLS] += cell[_CALLS]
            retired[_ERRORS] += cell[_ERRORS]
            retired[_TOTAL] += cell[_TOTAL]
            retired[_MAX] = max(retired[_MAX], cell[_MAX])

    def read(self) -> list[int]:
        """[calls, errors, total ns, max ns] summed over every thread (caller holds the lock)."""
        self._fold_dead()
        total = list(self._retired)
        for cell in tuple(self._cells.values()):
            total[_CALLS] += cell[_CALLS]
            total[_ERRORS] += cell[_ERRORS]
            total[_TOTAL] += cell[_TOTAL]
            total[_MAX] = max(total[_MAX], cell[_MAX])
        return total

    def live_cells(self) -> int:
        """How many threads' cells are held (for tests: it never exceeds the threads alive plus ended ones
        not folded yet)."""
        with self._lock:
            self._fold_dead()
            return len(self._cells)


class CallStats:
    """Call counters of one plugin, by capability. Exact under many threads; no lock on the call path.

    A snapshot read while calls run may count a call whose duration is not added yet (the two fields of one
    cell are written one after the other); counts are never lost or doubled.
    """

    __slots__ = ("__weakref__", "_by_capability", "_lock", "last_error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_capability: dict[str, _Counters] = {}
        self.last_error: str | None = None

    def counters(self, capability: str) -> _Counters:
        """The counters of ``capability`` (made on first use, when the route is built)."""
        with self._lock:
            counters = self._by_capability.get(capability)
        if counters is not None:
            return counters
        made = _Counters(self._lock)  # outside the lock: making it gives this thread a cell, which takes it
        with self._lock:
            return self._by_capability.setdefault(capability, made)

    def record_error(self, capability: str, exc: BaseException) -> None:
        """Remember what the last failed call raised (the failure itself is counted by the route)."""
        with self._lock:
            self.last_error = f"{capability}: {type(exc).__name__}: {exc}"[:500]

    def snapshot(self) -> CallStatsSnapshot:
        """A copy of the counters, summed over every thread. Takes the stats lock briefly."""
        with self._lock:
            per = {name: counters.read() for name, counters in self._by_capability.items()}
            last_error = self.last_error
        return CallStatsSnapshot(
            sum(c[_CALLS] for c in per.values()),
            sum(c[_ERRORS] for c in per.values()),
            sum(c[_TOTAL] for c in per.values()) / 1e6,
            max((c[_MAX] for c in per.values()), default=0) / 1e6,
            last_error,
            {name: (c[_CALLS], c[_ERRORS], c[_TOTAL] / 1e6) for name, c in per.items()},
        )


def monitored_route(method: Route, stats: CallStats, capability: str) -> Route:
    """Wrap ``method`` so every call is timed, counted and its exceptions recorded; re-raises them."""
    clock = time.perf_counter_ns
    local = stats.counters(capability).local
    record_error = stats.record_error

    def call(payload: Any) -> Any:
        started = clock()
        try:
            result = method(payload)
        except BaseException as exc:
            _count(local.cell, clock() - started, 1)
            record_error(capability, exc)
            raise
        elapsed = clock() - started
        cell = local.cell  # [calls, errors, total ns, max ns]; literal indices: no global lookups per call
        cell[0] += 1
        cell[2] += elapsed
        if elapsed > cell[3]:
            cell[3] = elapsed
        return result

    return call


def monitored_timed_route(method: TimedRoute, stats: CallStats, capability: str) -> TimedRoute:
    """:func:`monitored_route` for a route that takes its deadline; counts into the same counters."""
    clock = time.perf_counter_ns
    local = stats.counters(capability).local
    record_error = stats.record_error

    def call(payload: Any, timeout_s: float) -> Any:
        started = clock()
        try:
            result = method(payload, timeout_s)
        except BaseException as exc:
            _count(local.cell, clock() - started, 1)
            record_error(capability, exc)
            raise
        _count(local.cell, clock() - started, 0)
        return result

    return call


def _count(cell: list[int], elapsed_ns: int, error: int) -> None:
    cell[_CALLS] += 1
    cell[_ERRORS] += error
    cell[_TOTAL] += elapsed_ns
    if elapsed_ns > cell[_MAX]:
        cell[_MAX] = elapsed_ns


def call_error(plugin_id: str, capability: str, exc: Exception, *, index: int | None = None) -> PluginPoolError:
    """What a caller gets for ``exc``: plugin_pool's own errors as they are, anything the plugin raised as a
    :class:`PluginCallError` (chain it with ``raise ... from exc``)."""
    if isinstance(exc, PluginPoolError):
        return exc
    return PluginCallError(plugin_id, capability, type(exc).__qualname__, str(exc), index=index)


def async_route(method: Route, runner: StepRunner, plugin_id: str, capability: str, timeout_s: float) -> Route:
    """Run an ``async def`` capability on the host's loop, blocking the caller; cancel it past ``timeout_s``."""
    timed = async_timed_route(method, runner, plugin_id, capability)

    def call(payload: Any) -> Any:
        return timed(payload, timeout_s)

    return call


def async_timed_route(method: Route, runner: StepRunner, plugin_id: str, capability: str) -> TimedRoute:
    """:func:`async_route` with the deadline as an argument: raises :class:`CallTimeoutError` past it."""

    def call(payload: Any, timeout_s: float) -> Any:
        try:
            return runner.run_coroutine(method(payload), timeout_s)
        except StepTimeout:
            raise CallTimeoutError(plugin_id, capability, timeout_s) from None

    return call


def submit_coroutine(
    runner: StepRunner,
    method: Callable[[Any], Coroutine[Any, Any, Any]],
    payload: Any,
    *,
    plugin_id: str,
    capability: str,
    timeout_s: float,
    stats: CallStats | None,
) -> Future[Any]:
    """Start an ``async def`` capability on the host's loop and return its Future at once (no thread waits).

    Past ``timeout_s`` the coroutine is cancelled and the Future holds :class:`CallTimeoutError`; what the
    plugin raises becomes :class:`PluginCallError`. Cancelling the Future cancels the coroutine, even once
    it runs. Counted in ``stats`` like a blocking call.
    """
    clock = time.perf_counter_ns
    local = stats.counters(capability).local if stats is not None else None

    async def run() -> Any:
        started = clock()
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                result = await method(payload)
        except Exception as exc:  # CancelledError (a cancelled Future) is no Exception: it passes through
            error: PluginPoolError = (
                CallTimeoutError(plugin_id, capability, timeout_s)
                if isinstance(exc, TimeoutError) and deadline.expired()
                else call_error(plugin_id, capability, exc)
            )
            if local is not None and stats is not None:
                _count(local.cell, clock() - started, 1)
                stats.record_error(capability, error)
            if error is exc:
                raise
            raise error from (None if isinstance(error, CallTimeoutError) else exc)
        if local is not None:
            _count(local.cell, clock() - started, 0)
        return result

    return asyncio.run_coroutine_threadsafe(run(), runner.get_loop())
