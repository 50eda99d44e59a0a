"""The workers of each Untrusted plugin as the pool sees them (host side): states, groups, the budget.

Per plugin, a ``WorkerGroup`` holds its workers by state (``WorkerState``): serving ones (idle or busy),
warm spares (booted, initialized and started, taking no call), and those retiring. All workers of all
plugins share one ``WorkerBudget`` (``sandbox.max_total_workers``): every process counts, spares and
retiring workers too, until it has exited. Why a worker is replaced is ``restart_reason``; which deaths
are the plugin's doing, ``counts_toward_crash_loop``.

The one step that acts on these, ``WorkerManager.reconcile``, is in ``manager.py``; which worker takes a
call is ``pool.py``'s; processes are the supervisor's.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from plugin_pool.config import SandboxConfig
from plugin_pool.sandbox.worker_client import WorkerHandle, WorkerPlan

__all__ = [
    "RESTART_REASONS",
    "RESTING",
    "Worker",
    "WorkerBudget",
    "WorkerGroup",
    "WorkerRunner",
    "WorkerState",
    "counts_toward_crash_loop",
    "restart_reason",
]

_log = logging.getLogger("plugin_pool.sandbox")

RESTART_REASONS = ("crash", "timeout", "memory", "cpu", "recycle")
"""Why a worker was replaced; each replacement counts once under one of these."""
_SIGXCPU = 24


class WorkerState(enum.Enum):
    """Where one worker is in its life, as the pool sees it."""

    BOOTING = "booting"
    """Forked, confining itself, initializing (counted in ``WorkerGroup.booting``; no Worker yet)."""
    SPARE = "spare"
    """Booted, initialized and started, its call stream open; takes no call until it is promoted."""
    IDLE = "idle"
    """Serving, no call in flight."""
    BUSY = "busy"
    """Serving, a call (or a batch, or chunks of one) in flight."""
    RETIRING = "retiring"
    """Leaving: its stop() or shutdown is under way, or it was killed; still a process until it exits."""
    EXITED = "exited"
    """Reaped."""


RESTING = (WorkerState.IDLE, WorkerState.SPARE)
"""States in which a worker has no call in flight."""


class WorkerRunner(Protocol):
    """What the manager and the router need from a supervisor (``Supervisor``; tests pass a fake)."""

    config: SandboxConfig
    on_worker_exit: Callable[[WorkerHandle], None]
    on_idle_cpu: Callable[[WorkerHandle, float], None] | None

    def spawn_worker(self, plan: WorkerPlan) -> WorkerHandle: ...

    def kill_worker(self, handle: WorkerHandle, reason: str) -> None: ...

    def retire_worker(self, handle: WorkerHandle, reason: str, *, call_stop: bool = True) -> None: ...

    def stop_steps(self, handles: list[WorkerHandle], timeout_s: float) -> list[str | None]: ...

    def unstage_plugin(self, staged: Any) -> None: ...

    def schedule(self, delay_s: float, job: Callable[[], None]) -> None: ...

    def call_later(self, delay_s: float, action: Callable[[], object]) -> Any: ...


@dataclass(eq=False)
class Worker:
    """One worker of a group: its handle and its state (changed under the group's lock)."""

    handle: WorkerHandle
    state: WorkerState
    calls_limit: int
    """Calls after which it is recycled (drawn once, with jitter)."""
    age_limit_s: float
    """Age after which it is recycled (drawn once, with jitter)."""
    recycling: bool = False
    """It retires to be replaced (counted in ``WorkerGroup.recycling`` until it exits)."""
    due: str | None = None
    """Due for recycling (``recycle``: its calls or age) while every recycle slot was taken."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One Untrusted plugin's workers and counters at one moment."""

    workers: int
    """Serving workers (idle or busy); spares are counted apart."""
    busy: int
    idle: int
    waiting: int
    calls: int
    """Calls answered by a worker (each call of a batch counts), and chunks of ``invoke_many``."""
    errors: int
    restarts: Mapping[str, int]
    last_error: str | None
    min_workers: int = 0
    max_workers: int = 0
    spares: int = 0
    """Warm spares: booted, initialized and started, taking no call until one takes a serving place."""
    batched: int = 0
    """Calls that rode in a frame with other calls (dynamic batching)."""


@dataclass(eq=False)
class WorkerGroup:
    """The workers of one plugin and its counters. Everything here is guarded by ``lock``."""

    plan: WorkerPlan
    min_workers: int
    max_workers: int
    spare_workers: int
    lock: threading.RLock = field(default_factory=threading.RLock)
    workers: dict[WorkerHandle, Worker] = field(default_factory=dict)
    """Every live worker of the plugin, whatever its state."""
    idle: list[Worker] = field(default_factory=list)
    """IDLE workers, least recently used first."""
    spares: list[Worker] = field(default_factory=list)
    """SPARE workers, oldest first."""
    busy: int = 0
    booting: int = 0
    waiters: collections.deque[Any] = field(default_factory=collections.deque)
    """Calls waiting for a worker, oldest first (the router's; their number drives growth)."""
    demand: int = 0
    """Workers wanted beyond the waiting calls (``invoke_many`` spreading chunks)."""
    owed: collections.deque[str] = field(default_factory=collections.deque)
    """Reasons of replacements owed: each is counted when a worker takes the place of the one that left."""
    recycling: int = 0
    active: bool = True
    starting: bool = False
    """Its first workers are booting (``start_plugin``): nothing else boots or promotes for it yet."""
    starved: bool = False
    """It needs a serving worker and the budget had no slot (a spare elsewhere is asked to give way)."""
    spawn_after: float = 0.0
    """No boot before this monotonic time (the backoff after a crash)."""
    calls: int = 0
    """Calls answered (each call of a batch counts) and chunks of invoke_many answered."""
    batched: int = 0
    """Calls that rode in a frame with other calls."""
    errors: int = 0
    last_error: str | None = None
    restarts: collections.Counter[str] = field(default_factory=collections.Counter)
    crashes: collections.deque[float] = field(default_factory=collections.deque)

    @property
    def plugin_id(self) -> str:
        """The plugin's id."""
        return self.plan.plugin_id

    @property
    def serving(self) -> int:
        """Workers that take calls: idle or busy (caller holds the lock)."""
        return len(self.idle) + self.busy

    def get_stats(self) -> PoolStats:
        """Its workers and counters now. Takes the lock briefly."""
        with self.lock:
            return PoolStats(
                workers=self.serving,
                busy=self.busy,
                idle=len(self.idle),
                waiting=len(self.waiters),
                calls=self.calls,
                errors=self.errors,
                restarts=dict(self.restarts),
                last_error=self.last_error,
                min_workers=self.min_workers,
                max_workers=self.max_workers,
                spares=len(self.spares),
                batched=self.batched,
            )

    def wants_more(self) -> int:
        """How many more serving workers the calls waiting (and ``demand``) could use (caller holds lock)."""
        return max(0, len(self.waiters) - len(self.idle)) + self.demand


class WorkerBudget:
    """``sandbox.max_total_workers``: every worker process of every plugin holds one slot until it exits.

    Thread-safe; ``take`` grants what is free (maybe less than asked), ``give`` returns slots."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, count: int = 1) -> int:
        """Take up to ``count`` slots; return how many were granted. Never blocks."""
        with self._lock:
            granted = max(0, min(count, self.limit - self.used))
            self.used += granted
            return granted

    def give(self, count: int = 1) -> None:
        """Return ``count`` slots. Never blocks."""
        with self._lock:
            self.used -= count

    @property
    def free(self) -> int:
        """Slots free now. No side effects."""
        return max(0, self.limit - self.used)


def restart_reason(handle: WorkerHandle) -> str:
    """The restart reason of a worker that died: what the host killed it for, else how it died."""
    if handle.killed_for in ("timeout", "memory", "recycle", "cpu"):
        return handle.killed_for
    if handle.oom_killed:
        return "memory"
    if handle.exit_signal == _SIGXCPU:
        return "cpu"
    return "crash"


def counts_toward_crash_loop(handle: WorkerHandle, reason: str) -> bool:
    """Deaths the plugin caused: crashes, CPU (its lifetime budget, or burning CPU while idle) and OOM kills.

    A zygote death kills every worker at once and says nothing about the plugin; deadlines and host-side
    recycling are the host's decisions. Neither counts."""
    if handle.killed_for == "zygote":
        return False
    return reason in ("crash", "cpu") or handle.oom_killed
