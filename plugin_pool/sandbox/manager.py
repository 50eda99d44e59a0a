"""How many workers each Untrusted plugin keeps (host side): start, stop, replacements, spares, recycling.

One step, ``WorkerManager.reconcile``, compares what a plugin's group has with what it needs (its minimum,
the calls waiting, its spares) and acts: it promotes a spare, boots workers (on the supervisor thread) and
retires what is too much, like gunicorn's ``manage_workers``. Exits, resizes, recycling and starts all end
in it. A spare gives way: a plugin that needs a serving worker and finds the budget full retires another
plugin's spare. The states and the budget are in ``workers.py``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from plugin_pool.config import SandboxConfig
from plugin_pool.errors import SandboxError
from plugin_pool.sandbox.worker_client import BootError, WorkerHandle, WorkerPlan
from plugin_pool.sandbox.workers import (
    RESTING,
    Worker,
    WorkerBudget,
    WorkerGroup,
    WorkerRunner,
    WorkerState,
    counts_toward_crash_loop,
    restart_reason,
)

__all__ = ["WorkerManager"]

_log = logging.getLogger("plugin_pool.sandbox")

ZYGOTE_RETRY_S = 0.05
"""How soon a boot that found no zygote tries again (the supervisor restarts the zygote meanwhile)."""
SPARE_BOOT_DELAY_S = 0.05
"""How long a spare's boot waits (none for a serving worker's): it must not slow the calls right after a
handover."""
EVICTION_WAIT_S = 5.0
"""How long a plugin start waits for other plugins' spares to give way."""


class WorkerManager:
    """The workers of every Untrusted plugin: start, stop, resize, replace, spares, recycling, budget.

    Thread-safe. ``on_ready(group)`` is called with the group's lock held whenever idle workers appear
    (the router hands them to waiting calls); ``on_restart(plugin_id, reason)`` once per replacement, when
    the new worker is in place; ``on_plugin_failed(plugin_id, reason)`` when a plugin keeps crashing or
    cannot boot. Callbacks must not block.
    """

    def __init__(
        self,
        config: SandboxConfig,
        runner: WorkerRunner,
        *,
        on_ready: Callable[[WorkerGroup], None],
        on_restart: Callable[[str, str], None],
        on_plugin_failed: Callable[[str, str], None],
    ) -> None:
        self.config = config
        self.runner = runner
        self.budget = WorkerBudget(config.max_total_workers)
        self._on_ready = on_ready
        self._on_restart = on_restart
        self._on_plugin_failed = on_plugin_failed
        self._groups: dict[str, WorkerGroup] = {}
        self._owners: dict[WorkerHandle, WorkerGroup] = {}
        self._lock = threading.Lock()
        self._random = random.Random()
        runner.on_worker_exit = self.on_worker_exit
        runner.on_idle_cpu = self.on_idle_cpu

    def get_group(self, plugin_id: str) -> WorkerGroup | None:
        """The plugin's group, or None when it has no workers. No side effects."""
        return self._groups.get(plugin_id)

    def list_groups(self) -> list[WorkerGroup]:
        """Every group with workers. No side effects."""
        return list(self._groups.values())

    # -- start and stop ---------------------------------------------------------------------------

    def start_plugin(self, plan: WorkerPlan, low: int, high: int) -> WorkerGroup:
        """Boot the plugin's first ``low`` workers (initialize and start run in each); spares follow in the
        background. Blocks. Raises SandboxError when the budget cannot hold ``low`` more workers, or
        BootError (with the worker's last output) if one cannot boot."""
        plugin_id = plan.plugin_id
        group = WorkerGroup(plan=plan, min_workers=low, max_workers=high, spare_workers=self.config.spare_workers)
        group.starting = True  # reconcile leaves it alone until its first workers are in
        with self._lock:
            if plugin_id in self._groups:
                raise SandboxError(f"plugin {plugin_id!r} already has workers", plugin_id=plugin_id)
            self._groups[plugin_id] = group
        try:
            self._take_for_start(group, low)
        except BaseException:
            with self._lock:
                self._groups.pop(plugin_id, None)
            raise
        booted: list[WorkerHandle] = []
        try:
            for _ in range(low):
                booted.append(self.runner.spawn_worker(plan))
        except BaseException:
            with self._lock:
                self._groups.pop(plugin_id, None)
            self.budget.give(low)
            for handle in booted:
                self.runner.kill_worker(handle, "stop")
            raise
        with group.lock:
            group.starting = False
            for handle in booted:
                if not self._adopt(group, handle, WorkerState.IDLE):
                    self.budget.give(1)  # it died before it was tracked: no exit will give its slot back
            self.reconcile(group)
        return group

    def _take_for_start(self, group: WorkerGroup, low: int) -> None:
        """Take ``low`` slots, asking other plugins' spares to give way when the budget is full."""
        granted = self.budget.take(low)
        deadline = time.monotonic() + EVICTION_WAIT_S
        group.starved = granted < low  # meanwhile no other plugin takes a freed slot for a spare
        try:
            while granted < low:
                evictable = self._evictable_spares(group)
                leaving = self._leaving_elsewhere(group)  # their slots come back when they exit
                if granted + self.budget.free + evictable + leaving < low or time.monotonic() > deadline:
                    self.budget.give(granted)
                    raise SandboxError(
                        f"plugin {group.plugin_id!r} needs {low} workers but only {granted + self.budget.free} of "
                        "sandbox.max_total_workers are free",
                        plugin_id=group.plugin_id,
                    )
                # Only as many as are still missing: spares already asked to leave are on their way out.
                wanted = low - granted - self.budget.free - leaving
                if wanted > 0:
                    self._evict_spares(group, wanted)
                time.sleep(0.005)  # the evicted spares give their slots back when they exit
                granted += self.budget.take(low - granted)
        finally:
            group.starved = False

    def stop_plugin(self, plugin_id: str, *, timeout_s: float) -> str | None:
        """Run the plugin's stop() in every worker (spares too), in parallel, then retire them all and wait
        for their exits. Blocks up to about ``timeout_s`` + 3 s. Returns the first error, or None."""
        with self._lock:
            group = self._groups.pop(plugin_id, None)
        if group is None:
            return None
        with group.lock:
            group.active = False
            self._on_ready(group)  # the router wakes its waiting calls: they fail, the plugin stopped
            workers = list(group.workers.values())
            running = [w.handle for w in workers if w.state is not WorkerState.RETIRING and not w.handle.retiring]
            for worker in workers:
                if worker.state is not WorkerState.RETIRING:
                    self._set_state(group, worker, WorkerState.RETIRING)
        errors = self.runner.stop_steps(running, timeout_s)
        for handle in running:
            self.runner.retire_worker(handle, "stop", call_stop=False)
        for worker in workers:
            worker.handle.exited.wait(3.0)
        return next((e for e in errors if e), None)

    def fail_plugin(self, group: WorkerGroup, reason: str) -> None:
        """Take the plugin out of service: kill every worker and report it failed. Never blocks."""
        with self._lock:
            if self._groups.get(group.plugin_id) is not group:
                return
            del self._groups[group.plugin_id]
        with group.lock:
            group.active = False
            self._on_ready(group)
            workers = list(group.workers.values())
            for worker in workers:
                if worker.state is not WorkerState.RETIRING:
                    self._set_state(group, worker, WorkerState.RETIRING)
        for worker in workers:
            self.runner.kill_worker(worker.handle, "stop")
        self.runner.unstage_plugin(group.plan.plugin_dir)  # its copy goes now, not when the pool closes
        _log.error(
            "plugin failed in the sandbox: %s",
            reason,
            extra={"event": "plugin_failed", "pluginId": group.plugin_id, "trustLevel": "untrusted"},
        )
        self._on_plugin_failed(group.plugin_id, reason)

    # -- the reconcile step ----------------------------------------------------------------------------

    def reconcile(self, group: WorkerGroup) -> None:
        """Bring the group to what it needs now (caller holds its lock). Never blocks.

        In order: promote spares where a serving worker is missing (below the minimum, or calls waiting
        with no idle worker, up to the maximum); retire idle workers above the maximum; boot what is still
        missing, serving workers first, then spares (a spare never takes a slot another plugin needs).
        """
        if not group.active or group.starting:
            return
        for worker in [*group.idle, *group.spares]:  # due, idle, and a recycle slot free: retire it now
            due = worker.handle.recycle_for or worker.due
            if due is not None and worker.state in RESTING and group.recycling < self.config.max_concurrent_recycles:
                self._recycle(group, worker, due)
        while group.spares and (
            group.serving < group.min_workers or (group.wants_more() and group.serving < group.max_workers)
        ):
            self._promote(group, group.spares[0])
        while group.idle and group.serving > group.max_workers:
            self._retire(group, group.idle[0], "stop")  # the least recently used: warm workers stay warm
        want_serving = min(group.max_workers, max(group.min_workers, group.serving + group.wants_more()))
        missing_serving = max(0, want_serving - group.serving - group.booting)
        missing_spares = max(0, want_serving + group.spare_workers - group.serving - len(group.spares) - group.booting)
        missing_spares -= missing_serving
        granted = self.budget.take(missing_serving) if missing_serving else 0
        serving_boots = granted
        if granted < missing_serving and not group.starved:
            group.starved = True
            self.runner.call_later(0.0, self._rebalance)
        elif granted == missing_serving:
            group.starved = False
        # Spares only from what is free, and not while another plugin waits for a slot: a spare never makes
        # another plugin wait (one that did would be asked to give way again, and again).
        if missing_spares > 0 and not any(g.starved for g in self.list_groups() if g is not group):
            granted += self.budget.take(missing_spares)
        delay = max(0.0, group.spawn_after - time.monotonic())
        for n in range(granted):
            group.booting += 1
            # A spare is prepared a moment later: a boot (fork, confinement, cgroup moves) takes CPU that the
            # calls served right after a handover need more.
            self.runner.schedule(
                delay if n < serving_boots else max(delay, SPARE_BOOT_DELAY_S), lambda: self._boot(group)
            )

    def _promote(self, group: WorkerGroup, worker: Worker) -> None:
        """A spare takes a serving place at once (caller holds the lock); the replacement it stands for is
        counted now."""
        if group.owed:
            self._count(group, group.owed.popleft())
        self._set_state(group, worker, WorkerState.IDLE)

    def _boot(self, group: WorkerGroup) -> None:
        """Boot one worker for ``group`` (on the supervisor thread) and place it. A boot that found no zygote
        is tried again soon and counts toward nothing; a worker that dies while booting counts as a crash."""
        if not group.active:
            self._boot_done(group, None)
            return
        try:
            handle = self.runner.spawn_worker(group.plan)
        except BootError as exc:
            if exc.zygote_down:
                self.runner.schedule(ZYGOTE_RETRY_S, lambda: self._boot(group))  # keeps its slot and count
                return
            if exc.boot_failure:
                self._boot_done(group, None)
                self.fail_plugin(group, f"a replacement worker could not boot: {exc}")
                return
            failure: Exception = exc
        except Exception as exc:  # the host could not even prepare it (a directory, a cgroup): retried too
            failure = exc
        else:
            self._boot_done(group, handle)
            return
        _log.warning(
            "plugin %r: a worker could not boot: %s",
            group.plugin_id,
            failure,
            extra={"event": "worker_boot_failed", "pluginId": group.plugin_id, "trustLevel": "untrusted"},
        )
        with group.lock:
            self._crashed(group)  # counts toward the crash loop and sets the backoff of the next try
        self._boot_done(group, None)

    def _boot_done(self, group: WorkerGroup, handle: WorkerHandle | None) -> None:
        with group.lock:
            group.booting = max(0, group.booting - 1)
            if handle is None:
                self.budget.give(1)
                self.reconcile(group)
                self._reconcile_starved(exclude=group)
                return
            if not group.active:
                state = None
            elif group.serving < group.min_workers or (group.wants_more() and group.serving < group.max_workers):
                state = WorkerState.IDLE
            elif len(group.spares) < group.spare_workers:
                state = WorkerState.SPARE
            else:
                state = None
            if state is not None and not handle.exited.is_set():
                if group.owed:  # counted first: whoever sees the worker in place finds the count on its way
                    self._count(group, group.owed.popleft())
                self._adopt(group, handle, state)
                self.reconcile(group)
                return
            if handle.exited.is_set():  # died before it was tracked: its exit gave nothing back
                self.budget.give(1)
                self.reconcile(group)
                return
            self._owners[handle] = group
            group.workers[handle] = Worker(handle, WorkerState.RETIRING, 0, 0.0)
        self.runner.retire_worker(handle, "stop")  # not needed any more (stopped, or the need went away)

    def _adopt(self, group: WorkerGroup, handle: WorkerHandle, state: WorkerState) -> bool:
        """Track a booted worker in ``state`` (caller holds the lock); False if it already died."""
        if handle.exited.is_set():
            return False
        calls_limit, age_limit_s = self._recycle_limits()
        worker = Worker(handle, WorkerState.BOOTING, calls_limit, age_limit_s)
        group.workers[handle] = worker
        self._owners[handle] = group
        self._set_state(group, worker, state)
        return True

    def _set_state(self, group: WorkerGroup, worker: Worker, state: WorkerState) -> None:
        """Move a worker (caller holds the lock); keeps the idle and spare lists and the busy count right,
        and calls ``on_ready`` when a worker becomes idle."""
        old = worker.state
        if old is WorkerState.IDLE:
            group.idle.remove(worker)
        elif old is WorkerState.SPARE:
            group.spares.remove(worker)
        elif old is WorkerState.BUSY:
            group.busy -= 1
        worker.state = state
        handle = worker.handle
        handle.busy = state is WorkerState.BUSY
        if state is WorkerState.IDLE:
            handle.idle_since = time.monotonic()
            group.idle.append(worker)
            self._on_ready(group)
        elif state is WorkerState.SPARE:
            handle.idle_since = time.monotonic()
            group.spares.append(worker)
        elif state is WorkerState.BUSY:
            group.busy += 1
        elif state is WorkerState.RETIRING:
            handle.retiring = True

    # -- routing's side: taking and giving back workers ----------------------------------------------

    def take_idle(self, group: WorkerGroup) -> Worker | None:
        """The most recently used idle worker, now BUSY, or None (caller holds the lock). Workers due for
        recycling are retired on the way."""
        while group.idle:
            worker = group.idle[-1]
            handle = worker.handle
            if handle.recycle_for is not None:  # marked (its memory): it serves no call again
                self._recycle(group, worker, handle.recycle_for)
            elif handle.exited.is_set():
                group.idle.pop()  # its exit report is on its way; it will find the worker gone from the list
                worker.state = WorkerState.EXITED
            else:
                self._set_state(group, worker, WorkerState.BUSY)
                return worker
        return None

    def release(self, group: WorkerGroup, worker: Worker, calls: int) -> None:
        """A worker's frames are answered: count ``calls`` plugin calls and make it idle, or retire it when it
        is due for recycling or the group is over its maximum (caller holds the lock)."""
        handle = worker.handle
        handle.calls += calls
        if worker.state is not WorkerState.BUSY:
            return  # retired or lost meanwhile
        too_old = worker.age_limit_s and time.monotonic() - handle.booted_at > worker.age_limit_s
        due = handle.recycle_for or ("recycle" if handle.calls >= worker.calls_limit or too_old else None)
        if handle.exited.is_set() or handle.retiring:
            return
        if due is not None and group.active and group.recycling < self.config.max_concurrent_recycles:
            self._recycle(group, worker, due)
        elif group.serving > group.max_workers:
            self._retire(group, worker, "stop")  # the pool was made smaller: the worker that comes back goes
        else:
            worker.due = due  # when due: retired as soon as a recycle slot is free (it serves meanwhile)
            self._set_state(group, worker, WorkerState.IDLE)

    def _recycle(self, group: WorkerGroup, worker: Worker, reason: str) -> None:
        """Retire a worker gracefully and owe its replacement under ``reason`` (caller holds the lock)."""
        group.recycling += 1
        worker.recycling = True
        worker.handle.recycle_for = reason
        self._retire(group, worker, reason)
        if group.active:
            group.owed.append(reason)
            self.reconcile(group)

    def _retire(self, group: WorkerGroup, worker: Worker, reason: str) -> None:
        self._set_state(group, worker, WorkerState.RETIRING)
        # Non-blocking: the stop and shutdown steps run on gRPC callbacks and the scheduler.
        self.runner.retire_worker(worker.handle, reason)

    # -- exits --------------------------------------------------------------------------------------

    def on_worker_exit(self, handle: WorkerHandle) -> None:
        """A worker is gone (zygote reader thread): give back its slot, and replace it when the group needs
        it (a spare at once, else a boot, after a backoff when the plugin caused the death)."""
        group = self._owners.pop(handle, None)
        if group is None:
            return
        self.budget.give(1)
        lost_in_service = False
        with group.lock:
            worker = group.workers.pop(handle, None)
            if worker is not None:
                old = worker.state
                if old in (WorkerState.IDLE, WorkerState.SPARE, WorkerState.BUSY):
                    self._set_state(group, worker, WorkerState.EXITED)
                worker.state = WorkerState.EXITED
                if worker.recycling:
                    group.recycling = max(0, group.recycling - 1)
                if group.active and handle.killed_for != "stop" and old is not WorkerState.RETIRING:
                    self._lost(group, handle, was_spare=old is WorkerState.SPARE)
                    lost_in_service = True
            self._on_ready(group)  # waiting calls look again (the pool may grow, or it stopped)
            self.reconcile(group)
        self._reconcile_starved(exclude=group)
        if lost_in_service:  # logged once its replacement is decided (the host logs the replacement itself)
            reason = restart_reason(handle)
            _log.log(
                logging.INFO if reason == "recycle" else logging.WARNING,
                "plugin %r: %s (%s)",
                handle.plugin_id,
                handle.describe_exit(),
                reason,
                extra={
                    "event": "worker_exited",
                    "pluginId": handle.plugin_id,
                    "trustLevel": "untrusted",
                    "pid": handle.pid,
                    "reason": reason,
                },
            )

    def _lost(self, group: WorkerGroup, handle: WorkerHandle, *, was_spare: bool) -> None:
        """A worker died in service or in reserve (caller holds the lock)."""
        reason = restart_reason(handle)
        if counts_toward_crash_loop(handle, reason) and self._crashed(group):
            return
        # A worker in service is replaced when the group needs one (below its minimum, or calls waiting);
        # a spare always is. Either way the replacement is counted once, when the new worker is in place.
        if was_spare or group.serving < group.min_workers or group.wants_more():
            group.owed.append(reason)

    def _crashed(self, group: WorkerGroup) -> bool:
        """Count a crash toward the crash loop and set the backoff; fail the plugin when it loops (caller holds
        the lock). Returns whether it failed."""
        now = time.monotonic()
        group.crashes.append(now)
        while group.crashes and now - group.crashes[0] > self.config.crash_window_s:
            group.crashes.popleft()
        if len(group.crashes) >= self.config.crash_limit:
            reason = (
                f"its workers crashed {len(group.crashes)} times within {self.config.crash_window_s:g} s "
                "(sandbox.crash_limit)"
            )
            self.runner.call_later(0.0, lambda: self.fail_plugin(group, reason))
            group.active = False
            return True
        backoff = self.config.restart_backoff_s * (2 ** max(len(group.crashes) - 1, 0))
        group.spawn_after = now + min(backoff, self.config.restart_backoff_max_s)
        return False

    def on_idle_cpu(self, handle: WorkerHandle, share: float) -> None:
        """A worker burned ``share`` CPUs with no call in flight (a thread left spinning): replace it.

        It is idle (or a spare), so no call is lost; its replacement counts as ``cpu``, toward the crash loop.
        """
        group = self._owners.get(handle)
        if group is None:
            return
        with group.lock:
            worker = group.workers.get(handle)
            if worker is None or worker.state not in RESTING:
                return  # a call took it meanwhile: judged again at the next check
            was_spare = worker.state is WorkerState.SPARE
            handle.killed_for = handle.killed_for or "cpu"
            self._set_state(group, worker, WorkerState.RETIRING)  # out of service now: no call may take it
            if group.active:
                self._lost(group, handle, was_spare=was_spare)
                self.reconcile(group)
        _log.warning(
            "plugin %r: worker pid %s burned %.2f CPUs with no call in flight (sandbox.idle_cpu_limit = %g); "
            "replacing it",
            handle.plugin_id,
            handle.pid,
            share,
            self.config.idle_cpu_limit,
            extra={
                "event": "worker_idle_cpu",
                "pluginId": handle.plugin_id,
                "trustLevel": "untrusted",
                "pid": handle.pid,
            },
        )
        self.runner.kill_worker(handle, "cpu")

    def _count(self, group: WorkerGroup, reason: str) -> None:
        group.restarts[reason] += 1
        self._on_restart(group.plugin_id, reason)

    # -- sizing -------------------------------------------------------------------------------------

    def resize(self, group: WorkerGroup, low: int, high: int) -> int:
        """Set the group's bounds and reconcile; return how many serving workers the budget could not give
        (caller holds no lock). Never blocks."""
        with group.lock:
            group.min_workers, group.max_workers = low, high
            self.reconcile(group)
            return max(0, low - group.serving - group.booting)

    def set_limit(self, config: SandboxConfig) -> None:
        """Use a new configuration (``max_total_workers`` takes effect for new workers). Never blocks."""
        self.config = config
        self.budget.limit = config.max_total_workers

    def _recycle_limits(self) -> tuple[int, float]:
        jitter = self.config.recycle_jitter
        calls = max(1, int(self.config.recycle_after_calls * (1 + jitter * self._random.random())))
        return calls, self.config.recycle_after_s * (1 + jitter * self._random.random())

    # -- spares giving way ------------------------------------------------------------------------------

    def _evictable_spares(self, needy: WorkerGroup) -> int:
        # Workers still booting elsewhere count too: they become spares (or serve) within a boot, and then a
        # spare can give way; a plugin started right after others must not fail for their spares' boots.
        return sum(len(g.spares) + g.booting for g in self.list_groups() if g is not needy)

    def _leaving_elsewhere(self, needy: WorkerGroup) -> int:
        """Workers of other plugins retiring now (each holds a slot until it exits)."""
        leaving = 0
        for group in self.list_groups():
            if group is not needy:
                with group.lock:
                    leaving += sum(1 for w in group.workers.values() if w.state is WorkerState.RETIRING)
        return leaving

    def _evict_spares(self, needy: WorkerGroup, count: int) -> int:
        """Retire up to ``count`` spares of other plugins; their slots come back when they exit."""
        evicted = 0
        for group in self.list_groups():
            if group is needy:
                continue
            with group.lock:
                while group.spares and evicted < count:
                    self._retire(group, group.spares[-1], "stop")
                    evicted += 1
            if evicted >= count:
                break
        return evicted

    def _rebalance(self) -> None:
        """Starved groups ask other plugins' spares to give way (scheduler thread; holds one lock at a time)."""
        for group in self.list_groups():
            if group.starved and group.active:
                with group.lock:
                    short = max(0, group.min_workers - group.serving - group.booting)
                    short = max(short, min(group.wants_more(), group.max_workers - group.serving - group.booting))
                if short:
                    self._evict_spares(group, short - self.budget.free)

    def _reconcile_starved(self, *, exclude: WorkerGroup | None = None) -> None:
        for group in self.list_groups():
            if group.starved and group is not exclude:
                with group.lock:
                    self.reconcile(group)
