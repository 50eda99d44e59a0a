"""Routing calls to sandbox workers (host side): which worker takes a call, and what its failure means.

Each Untrusted plugin has its own set of workers (never shared with another plugin). A call takes an idle
worker of that plugin (the most recently used, so warm workers stay warm), waiting in a bounded queue when
all are busy and growing the set up to ``max_workers``; it runs under a deadline the host enforces, and a
worker that misses it is killed. Process supervision (forking, reaping, restarting the zygote) lives in
``supervisor.py``; this module only asks it for workers and tells it which to kill.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from plugin_pool.config import SandboxConfig, check_pool_size
from plugin_pool.errors import (
    CallTimeoutError,
    CapabilityDeniedError,
    MalformedReplyError,
    PayloadError,
    PluginCallError,
    PluginNotActiveError,
    PoolOverloadedError,
    QueueTimeoutError,
    ResourceLimitError,
    SandboxError,
    WorkerCrashedError,
)
from plugin_pool.lifecycle import PluginState
from plugin_pool.sandbox import _codec as codec
from plugin_pool.sandbox.supervisor import BootError, Supervisor, WorkerHandle, WorkerPlan

__all__ = ["RESTART_REASONS", "PoolStats", "SandboxPool"]

_log = logging.getLogger("plugin_pool.sandbox")

RESTART_REASONS = ("crash", "timeout", "memory", "cpu", "recycle")
"""Why a worker was replaced; each replacement counts once under one of these."""

CHUNK_MIN_ITEMS = 256
CHUNK_MAX_ITEMS = 4096
ZYGOTE_RETRY_S = 0.05
"""How soon a replacement that found no zygote tries again (the supervisor restarts the zygote meanwhile)."""
_SIGXCPU = 24
_SIGKILL = 9


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One Untrusted plugin's workers and counters at one moment."""

    workers: int
    busy: int
    idle: int
    waiting: int
    calls: int
    errors: int
    restarts: Mapping[str, int]
    last_error: str | None
    min_workers: int = 0
    max_workers: int = 0


@dataclass(eq=False)
class _Waiter:
    """A call waiting for a worker: handed one (``handle``) in arrival order, woken by its own condition."""

    cond: threading.Condition
    handle: WorkerHandle | None = None


@dataclass(eq=False)
class _PluginWorkers:
    """The workers of one plugin and the calls waiting for them. Guarded by ``lock``."""

    plan: WorkerPlan
    min_workers: int
    max_workers: int
    lock: threading.RLock = field(default_factory=threading.RLock)
    idle: list[WorkerHandle] = field(default_factory=list)
    workers: set[WorkerHandle] = field(default_factory=set)
    spawning: int = 0
    waiters: collections.deque[_Waiter] = field(default_factory=collections.deque)
    """Calls waiting for a worker, oldest first: a worker that comes free goes to the oldest."""
    recycling: int = 0
    active: bool = True
    calls: int = 0
    errors: int = 0
    last_error: str | None = None
    restarts: collections.Counter[str] = field(default_factory=collections.Counter)
    crashes: collections.deque[float] = field(default_factory=collections.deque)
    recycle_limits: dict[WorkerHandle, tuple[int, float]] = field(default_factory=dict)
    """Per worker: the calls and the age (s) after which it is recycled, each drawn once with jitter."""
    shrinking: set[WorkerHandle] = field(default_factory=set)
    """Workers retired because the pool was made smaller (still in ``workers`` until their exit)."""

    @property
    def waiting(self) -> int:
        """How many calls wait for a worker (caller holds the lock)."""
        return len(self.waiters)

    def wake_all(self) -> None:
        """Wake every waiting call to look at the group again: it stopped, or it may grow (caller holds lock)."""
        for waiter in self.waiters:
            waiter.cond.notify()


class SandboxPool:
    """The preforked, confined worker pool for Untrusted plugins.

    Thread-safe. ``open`` (probes confinement, starts the zygote) and ``close`` are idempotent.
    ``on_restart(plugin_id, reason)`` is called once per replacement; ``on_plugin_failed(plugin_id,
    reason)`` when a plugin keeps crashing or its replacement cannot boot (the host moves it to Failed).
    """

    def __init__(
        self,
        config: SandboxConfig,
        *,
        services: Mapping[str, Any] | None = None,
        on_restart: Callable[[str, str], None] | None = None,
        on_plugin_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.supervisor = Supervisor(config, on_worker_exit=self._on_worker_exit, services=services)
        self.supervisor.on_idle_cpu = self._on_idle_cpu
        self._on_restart = on_restart or (lambda plugin_id, reason: None)
        self._on_plugin_failed = on_plugin_failed or (lambda plugin_id, reason: None)
        self._plugins: dict[str, _PluginWorkers] = {}
        self._lock = threading.Lock()
        self._total = 0
        self._random = random.Random()
        self._max_message_bytes = int(config.max_message_mb * 1024 * 1024)
        self._executor: ThreadPoolExecutor | None = None

    def open(self) -> SandboxPool:
        """Probe confinement and start the zygote. Raises ConfinementUnavailableError below the minimum."""
        self.supervisor.open()
        return self

    def close(self) -> None:
        """Kill every worker and the zygote. Idempotent."""
        with self._lock:
            groups = list(self._plugins.values())
            self._plugins.clear()
        for group in groups:
            with group.lock:
                group.active = False
                group.wake_all()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self.supervisor.close()

    def get_confinement(self) -> dict[str, Any]:
        """Which layers this kernel offers, which the workers get, and which are required."""
        return {
            "layers": {name: status.to_dict() for name, status in self.supervisor.layers.items()},
            "applied": sorted(self.supervisor.applied_layers),
            "required": sorted(self.supervisor.required_layers),
            "worker_uids": (
                None
                if self.supervisor.identities is None
                else f"{self.supervisor.identities.first}-{self.supervisor.identities.last}, one per worker"
            ),
            "user_namespace": self.supervisor.user_namespace,
            "pid_namespace": self.supervisor.pid_namespace,
            "mount_namespace": self.supervisor.mount_namespace,
            "cgroups": None if self.supervisor.cgroups is None else self.supervisor.cgroups.describe(),
        }

    # -- plugin lifecycle -------------------------------------------------------------------------------

    def stage_plugin(self, plan: WorkerPlan) -> WorkerPlan:
        """Make the verified private copy the plugin's workers will load; return the plan pointing at it.

        Workers load a private read-only copy: readable by their uid wherever the folder lives, holding
        exactly the bytes that were hashed (and checked against ``plan.content_hash``), and the code that
        runs cannot change under them. The host stages while the plugin is Loading, so a folder that
        changed or holds what it may not fails the load. Raises ContentHashMismatchError,
        IntegrityRejectedError or StagingError (see Supervisor.stage_plugin). Blocks on the copy.
        """
        return dataclasses.replace(plan, plugin_dir=self.supervisor.stage_plugin(plan))

    def unstage_plugin(self, plan: WorkerPlan) -> None:
        """Remove a copy made by stage_plugin that was never handed to start_plugin. Idempotent."""
        self.supervisor.unstage_plugin(plan.plugin_dir)

    def start_plugin(self, plan: WorkerPlan, *, min_workers: int | None = None, max_workers: int | None = None) -> None:
        """Boot the plugin's first workers (initialize and start run in each). Blocks.

        ``plan`` comes from :meth:`stage_plugin` (or is staged here first); from here the pool owns the copy
        and removes it when the plugin stops or fails. Raises BootError (with the worker's last output) if
        the first worker cannot boot.
        """
        low, high = check_pool_size(
            self.config.min_workers if min_workers is None else min_workers,
            self.config.max_workers if max_workers is None else max_workers,
            max_total_workers=self.config.max_total_workers,
            where=f"plugins.{plan.plugin_id}",
        )
        if not self.supervisor.is_staged(plan.plugin_dir):
            plan = self.stage_plugin(plan)
        group = _PluginWorkers(plan=plan, min_workers=low, max_workers=high)
        try:
            with self._lock:
                if plan.plugin_id in self._plugins:
                    raise SandboxError(f"plugin {plan.plugin_id!r} already has workers", plugin_id=plan.plugin_id)
                if self._total + low > self.config.max_total_workers:
                    raise SandboxError(
                        f"plugin {plan.plugin_id!r} needs {low} workers but only "
                        f"{self.config.max_total_workers - self._total} of sandbox.max_total_workers are free",
                        plugin_id=plan.plugin_id,
                    )
                self._plugins[plan.plugin_id] = group
                self._total += low
                group.spawning = low
        except BaseException:
            self.supervisor.unstage_plugin(plan.plugin_dir)
            raise
        self.supervisor.allow_services(plan.plugin_id, plan.services)
        booted: list[WorkerHandle] = []
        try:
            for _ in range(low):
                booted.append(self.supervisor.spawn_worker(plan))
        except BaseException:
            with self._lock:
                self._plugins.pop(plan.plugin_id, None)
                self._total -= low
            for handle in booted:
                self.supervisor.kill_worker(handle, "stop")
            self.supervisor.unstage_plugin(plan.plugin_dir)
            raise
        with group.lock:
            group.spawning = 0
            group.workers.update(booted)
            group.idle.extend(booted)
            for handle in booted:
                group.recycle_limits[handle] = self._recycle_limits()
            self._serve_waiters(group)
            group.wake_all()

    def stop_plugin(self, plugin_id: str, *, timeout_s: float) -> str | None:
        """Run the plugin's stop() in every worker, then retire them. Returns the first error, or None."""
        with self._lock:
            group = self._plugins.pop(plugin_id, None)
        if group is None:
            return None
        with group.lock:
            group.active = False
            group.wake_all()
            workers = list(group.workers)
        errors: list[str | None] = [None] * len(workers)

        def stop_one(index: int, handle: WorkerHandle) -> None:
            errors[index] = self.supervisor.stop_step(handle, timeout_s)
            self.supervisor.retire_worker(handle, "stop", call_stop=False)

        # In parallel: each worker's stop() has the full timeout, and n workers take one timeout, not n.
        threads = [
            threading.Thread(target=stop_one, args=(i, h), name="plugin-pool-stop", daemon=True)
            for i, h in enumerate(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout_s + 5.0)
        error = next((e for e in errors if e), None)
        self.supervisor.unstage_plugin(group.plan.plugin_dir)
        with self._lock:
            self._total -= len(workers)  # workers still spawning give their slot back themselves
        return error

    # -- sizing ---------------------------------------------------------------------------------------

    def resize_plugin(
        self, plugin_id: str, *, min_workers: int | None = None, max_workers: int | None = None
    ) -> tuple[int, int]:
        """Change a running plugin's pool bounds without failing a call; return the new (min, max).

        Growing the minimum spawns workers up to it (as far as ``max_total_workers`` allows); lowering the
        maximum retires idle workers above it gracefully (their stop() runs) and each busy one above it
        when its call returns. Retirements are not replacements: no restart is counted. Idle workers
        between the new minimum and maximum stay (the pool never shrinks towards its minimum by itself).
        Does not block on workers; safe to call any number of times. Raises PluginNotActiveError for a
        plugin without workers and ConfigError for bounds below 1 or a minimum above the maximum.
        """
        group = self._plugins.get(plugin_id)
        if group is None:
            raise PluginNotActiveError(plugin_id, PluginState.STOPPED, "it has no sandbox workers")
        with group.lock:
            low = group.min_workers if min_workers is None else min_workers
            high = group.max_workers if max_workers is None else max_workers
            if max_workers is None and high < low:
                high = low  # raising only the minimum carries the maximum along
            check_pool_size(low, high, where=f"plugins.{plugin_id}", source="resize")
            group.min_workers, group.max_workers = low, high
            self._trim(group)
            missing = low - (len(group.workers) - len(group.shrinking) + group.spawning)
            granted = 0
            with self._lock:
                while granted < missing and self._total < self.config.max_total_workers:
                    self._total += 1
                    granted += 1
            group.spawning += granted
            group.wake_all()
        for _ in range(granted):
            self.supervisor.schedule(0.0, lambda: self._spawn_into(group, reason=None))
        if granted < missing:
            _log.warning(
                "plugin %r: %d of %d workers for min_workers=%d were not started: sandbox.max_total_workers "
                "(%d) is reached",
                plugin_id,
                missing - granted,
                missing,
                low,
                self.config.max_total_workers,
                extra={"event": "pool_resized", "pluginId": plugin_id, "trustLevel": "untrusted"},
            )
        _log.info(
            "plugin %r: pool resized to min_workers=%d, max_workers=%d",
            plugin_id,
            low,
            high,
            extra={"event": "pool_resized", "pluginId": plugin_id, "trustLevel": "untrusted"},
        )
        return low, high

    def update_limits(
        self, *, min_workers: int | None = None, max_workers: int | None = None, max_total_workers: int | None = None
    ) -> SandboxConfig:
        """Change the defaults for plugins started later (``min_workers``, ``max_workers``) and the cap of all
        workers together (``max_total_workers``), and return the configuration now in force.

        Lowering the cap stops growth and new plugins beyond it; running workers stay (resize the plugins
        to retire some). Running plugins keep their bounds: use :meth:`resize_plugin`. Safe to call twice.
        """
        changes: dict[str, Any] = {
            key: value
            for key, value in (
                ("min_workers", min_workers),
                ("max_workers", max_workers),
                ("max_total_workers", max_total_workers),
            )
            if value is not None
        }
        config = dataclasses.replace(self.config, **changes)
        check_pool_size(config.min_workers, config.max_workers, max_total_workers=config.max_total_workers)
        self.config = config  # one reference swap: readers see the old or the new limits, never a mix
        return config

    def _trim(self, group: _PluginWorkers) -> None:
        """Retire idle workers while the plugin has more than its maximum (caller holds the lock). Busy ones
        are left to their call; ``_release`` trims again when it returns."""
        while group.idle and len(group.workers) - len(group.shrinking) > group.max_workers:
            handle = group.idle.pop(0)  # the least recently used: warm workers stay warm
            group.shrinking.add(handle)
            handle.retiring = True
            threading.Thread(
                target=self.supervisor.retire_worker, args=(handle, "stop"), name="plugin-pool-retire", daemon=True
            ).start()

    # -- calls --------------------------------------------------------------------------------------

    def invoke(self, plugin_id: str, capability: str, payload: Any, timeout_s: float) -> Any:
        """Run one call in a worker of ``plugin_id`` and return its result. Blocks up to ``timeout_s``."""
        data = self._encode(plugin_id, codec.encode_call, capability, payload, "payload")
        outcomes, pid = self._call(
            plugin_id, capability, timeout_s, lambda handle, t: handle.call(data, timeout=t), _single
        )
        return self._result(plugin_id, capability, outcomes[0], None, pid)

    def invoke_many(
        self,
        plugin_id: str,
        capability: str,
        payloads: Iterable[Any],
        timeout_s: float,
        *,
        chunk_size: int | None = None,
    ) -> list[Any]:
        """Run many inputs of one capability and return the results in order.

        The inputs go in chunks, one round trip each, spread over the plugin's workers (growing to
        ``max_workers``) so chunks run in parallel. By default a batch is cut into two chunks per worker
        (so a worker has its next chunk while the host decodes the last), of 256 to 4096 items.
        The failing item with the lowest index raises its error, with ``index`` set for a PluginCallError.
        """
        items = list(payloads)
        if not items:
            return []
        group = self._plugins.get(plugin_id)
        workers = group.max_workers if group is not None else 1
        size = chunk_size or min(CHUNK_MAX_ITEMS, max(CHUNK_MIN_ITEMS, -(-len(items) // (2 * workers))))
        size = max(1, size)
        chunks = [items[start : start + size] for start in range(0, len(items), size)]
        if len(chunks) == 1:
            return self._run_chunk(plugin_id, capability, chunks[0], 0, timeout_s)
        executor = self._ensure_executor()
        futures = [
            executor.submit(self._run_chunk, plugin_id, capability, chunk, n * size, timeout_s)
            for n, chunk in enumerate(chunks)
        ]
        results: list[Any] = []
        first_error: BaseException | None = None
        for future in futures:  # in order, so the error raised is the one with the lowest index
            try:
                part = future.result()
            except BaseException as exc:
                first_error = first_error or exc
                continue
            results.extend(part)
        if first_error is not None:
            raise first_error
        return results

    def _run_chunk(self, plugin_id: str, capability: str, chunk: list[Any], offset: int, timeout_s: float) -> list[Any]:
        parts = self._encode_parts(plugin_id, capability, chunk, offset)  # all encoded before any is sent
        results = self._send_chunk(plugin_id, capability, *parts[0], timeout_s)
        for part in parts[1:]:
            results += self._send_chunk(plugin_id, capability, *part, timeout_s)
        return results

    def _encode_parts(
        self, plugin_id: str, capability: str, chunk: list[Any], offset: int
    ) -> list[tuple[list[Any], int, bytes]]:
        """The chunk encoded, halved until every part fits sandbox.max_message_mb: (items, offset, data)."""
        data = self._encode(plugin_id, codec.encode_batch, capability, chunk, "batch", check_size=len(chunk) == 1)
        if len(data) <= self._max_message_bytes:
            return [(chunk, offset, data)]
        half = len(chunk) // 2
        first = self._encode_parts(plugin_id, capability, chunk[:half], offset)
        return first + self._encode_parts(plugin_id, capability, chunk[half:], offset + half)

    def _send_chunk(
        self, plugin_id: str, capability: str, chunk: list[Any], offset: int, data: bytes, timeout_s: float
    ) -> list[Any]:
        outcomes, pid = self._call(
            plugin_id,
            capability,
            timeout_s,
            lambda handle, t: handle.call_batch(data, timeout=t),
            codec.decode_batch_results,
        )
        if len(outcomes) != len(chunk):
            if len(outcomes) == 1 and not outcomes[0][0]:  # the whole batch failed (e.g. reply too large)
                self._result(plugin_id, capability, outcomes[0], offset, pid)
            raise MalformedReplyError(
                f"plugin {plugin_id!r}: the worker answered {len(outcomes)} of {len(chunk)} batch items",
                plugin_id=plugin_id,
            )
        if all(ok for ok, _ in outcomes):
            return [value for _, value in outcomes]
        return [self._result(plugin_id, capability, o, offset + n, pid) for n, o in enumerate(outcomes)]

    def _ensure_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.config.max_total_workers, thread_name_prefix="plugin-pool-batch"
                )
            return self._executor

    def _encode(
        self,
        plugin_id: str,
        encode: Callable[[str, Any], bytes],
        capability: str,
        payload: Any,
        what: str,
        *,
        check_size: bool = True,
    ) -> bytes:
        """Encode in the host, so a payload that cannot cross the boundary fails before anything is sent.

        Raises PayloadError for a value that cannot cross, and (``check_size``) for data over the limit."""
        try:
            data = encode(capability, payload)
        except TypeError as exc:
            raise PayloadError(
                f"plugin {plugin_id!r}: the {what} cannot cross the sandbox boundary ({exc}); send "
                f"JSON-compatible values or bytes",
                plugin_id=plugin_id,
            ) from None
        if check_size and len(data) > self._max_message_bytes:
            raise PayloadError(
                f"plugin {plugin_id!r}: the {what} is {len(data)} bytes; the limit is {self._max_message_bytes} "
                f"(sandbox.max_message_mb){'; send smaller batches' if what == 'batch' else ''}",
                plugin_id=plugin_id,
            )
        return data

    def _call(
        self,
        plugin_id: str,
        capability: str,
        timeout_s: float,
        rpc: Callable[[WorkerHandle, float], memoryview],
        decode: Callable[[memoryview], list[codec.Outcome]],
    ) -> tuple[list[codec.Outcome], int | None]:
        """Run ``rpc`` on an idle worker and decode the reply; return the outcomes and the worker's pid.

        A worker that reports a memory limit is recycled once idle.
        """
        deadline = time.monotonic() + timeout_s
        group = self._plugins.get(plugin_id)
        if group is None:
            raise PluginNotActiveError(plugin_id, PluginState.STOPPED, "it has no sandbox workers")
        handle = self._acquire(group, plugin_id, capability, deadline, timeout_s)
        try:
            if handle.call is None:
                raise _WorkerLost
            reply = rpc(handle, max(deadline - time.monotonic(), 0.001))
        except (grpc.RpcError, _WorkerLost, ValueError) as exc:  # ValueError: its channel was just closed
            error = self._call_failed(group, handle, capability, exc, timeout_s)
            with group.lock:
                group.errors += 1
                group.last_error = str(error)[:500]
            raise error from None
        try:
            outcomes = decode(reply)
        except (ValueError, UnicodeDecodeError) as exc:
            self._release(group, handle)
            raise MalformedReplyError(
                f"plugin {plugin_id!r}: worker pid {handle.pid} sent a malformed reply: {exc}",
                plugin_id=plugin_id,
                pid=handle.pid,
            ) from None
        if any(not ok and value[0] == "resource_limit" for ok, value in outcomes):
            handle.recycle_for = handle.recycle_for or "memory"
        self._release(group, handle)
        return outcomes, handle.pid

    def _acquire(
        self, group: _PluginWorkers, plugin_id: str, capability: str, deadline: float, timeout_s: float
    ) -> WorkerHandle:
        """An idle worker for one call; when there is none, wait in line: workers go to waiting calls in the
        order they came (a call arriving later never takes a worker before one that waits)."""
        with group.lock:
            if not group.active:
                raise PluginNotActiveError(plugin_id, PluginState.STOPPED, "its sandbox workers were stopped")
            if not group.waiters:
                handle = self._take_idle(group)
                if handle is not None:
                    return handle
            if len(group.waiters) >= self.config.queue_limit:
                raise PoolOverloadedError(
                    f"plugin {plugin_id!r}: all {len(group.workers)} workers are busy and "
                    f"{len(group.waiters)} calls are waiting (sandbox.queue_limit); retry later or raise "
                    f"sandbox.max_workers",
                    plugin_id=plugin_id,
                )
            waiter = _Waiter(threading.Condition(group.lock))
            group.waiters.append(waiter)
            try:
                self._serve_waiters(group)
                while waiter.handle is None:
                    if not group.active:
                        raise PluginNotActiveError(plugin_id, PluginState.STOPPED, "its sandbox workers were stopped")
                    self._grow(group)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise QueueTimeoutError(plugin_id, capability, timeout_s)
                    waiter.cond.wait(remaining)
                return waiter.handle
            finally:
                if waiter.handle is None:
                    group.waiters.remove(waiter)

    def _take_idle(self, group: _PluginWorkers) -> WorkerHandle | None:
        """Take the most recently used usable idle worker, recycling any that are due (caller holds lock)."""
        while group.idle:
            handle = group.idle.pop()
            if handle.recycle_for is not None:
                self._recycle(group, handle, handle.recycle_for)
            elif not handle.exited.is_set() and not handle.retiring:
                group.calls += 1
                handle.busy = True
                return handle
        return None

    def _serve_waiters(self, group: _PluginWorkers) -> None:
        """Hand idle workers to waiting calls, oldest call first (caller holds the lock)."""
        while group.waiters and group.idle:
            handle = self._take_idle(group)
            if handle is None:
                return
            waiter = group.waiters.popleft()
            waiter.handle = handle
            waiter.cond.notify()

    def _grow(self, group: _PluginWorkers) -> None:
        """Ask for one more worker when every worker is busy and the limits allow (caller holds the lock)."""
        if group.spawning or len(group.workers) >= group.max_workers:
            return
        with self._lock:
            if self._total >= self.config.max_total_workers:
                return
            self._total += 1
        group.spawning += 1
        self.supervisor.schedule(0.0, lambda: self._spawn_into(group, reason=None))

    def _release(self, group: _PluginWorkers, handle: WorkerHandle) -> None:
        with group.lock:
            handle.busy = False
            handle.idle_since = time.monotonic()
            handle.calls += 1
            calls_limit, age_limit_s = group.recycle_limits.get(handle, (self.config.recycle_after_calls, 0.0))
            too_old = age_limit_s and time.monotonic() - handle.booted_at > age_limit_s
            due = handle.recycle_for or ("recycle" if handle.calls >= calls_limit or too_old else None)
            if due is not None and group.recycling < self.config.max_concurrent_recycles and group.active:
                self._recycle(group, handle, due)
            elif not handle.exited.is_set() and not handle.retiring:
                group.idle.append(handle)
                self._trim(group)  # a pool made smaller retires the worker that comes back
                self._serve_waiters(group)

    def _recycle(self, group: _PluginWorkers, handle: WorkerHandle, reason: str) -> None:
        """Retire an idle worker gracefully and count its replacement under ``reason`` (caller holds the lock)."""
        group.recycling += 1
        handle.retiring = True
        handle.recycle_for = reason
        # Its own thread: a graceful retirement takes up to 2.5 s and must not hold up replacements.
        threading.Thread(
            target=self.supervisor.retire_worker, args=(handle, reason), name="plugin-pool-retire", daemon=True
        ).start()

    def _result(
        self, plugin_id: str, capability: str, outcome: codec.Outcome, index: int | None, pid: int | None
    ) -> Any:
        ok, value = outcome
        if ok:
            return value
        kind, type_name, message = value
        if kind == "resource_limit":
            # The worker caught a real MemoryError (RLIMIT_DATA); it is recycled once idle.
            raise ResourceLimitError(
                limit=type_name[:50] or "memory", plugin_id=plugin_id, pid=pid, capability=capability
            )
        if kind == "plugin_raised":
            raise PluginCallError(plugin_id, capability, type_name[:200] or "Exception", message[:2000], index=index)
        if kind in ("bad_payload", "bad_reply", "reply_too_large"):
            what = {
                "bad_payload": "the worker could not decode the payload",
                "bad_reply": "the plugin's result cannot cross the sandbox boundary",
                "reply_too_large": "the plugin's result is too large",
            }[kind]
            raise PayloadError(f"plugin {plugin_id!r}: {what}: {message[:500]}", plugin_id=plugin_id)
        if kind == "unknown_capability":
            raise CapabilityDeniedError(plugin_id, capability, ())
        raise MalformedReplyError(
            f"plugin {plugin_id!r}: the worker reported {kind[:50]!r}: {message[:500]}", plugin_id=plugin_id, pid=pid
        )

    def _call_failed(
        self, group: _PluginWorkers, handle: WorkerHandle, capability: str, exc: BaseException, timeout_s: float
    ) -> SandboxError | CallTimeoutError | PayloadError:
        plugin_id = group.plan.plugin_id
        code = exc.code() if isinstance(exc, grpc.RpcError) else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not handle.exited.is_set():
            self.supervisor.kill_worker(handle, "timeout")
            return CallTimeoutError(plugin_id, capability, timeout_s, pid=handle.pid)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not handle.exited.is_set():
            self._release(group, handle)
            return PayloadError(
                f"plugin {plugin_id!r}: the reply exceeds sandbox.max_message_mb "
                f"({exc.details() if isinstance(exc, grpc.RpcError) else ''})",
                plugin_id=plugin_id,
            )
        # Anything else means the worker is gone or the channel is broken: wait for the zygote's exit
        # report (it arrives within milliseconds of the death) so the error can say how it died.
        if not handle.exited.wait(1.0):
            self.supervisor.kill_worker(handle, "crash")
            handle.exited.wait(1.0)
        if handle.exit_signal == _SIGXCPU:
            return ResourceLimitError(
                limit="cpu", plugin_id=plugin_id, pid=handle.pid, signal=handle.exit_signal, capability=capability
            )
        if handle.oom_killed:  # its memory cgroup was full: shared mappings, memfd or /tmp count there too
            return ResourceLimitError(
                limit="memory", plugin_id=plugin_id, pid=handle.pid, signal=handle.exit_signal, capability=capability
            )
        return WorkerCrashedError(
            plugin_id=plugin_id,
            pid=handle.pid,
            exit_code=handle.exit_code,
            signal=handle.exit_signal,
            capability=capability,
            detail=" | ".join(line for line in handle.exit_tail[-2:] if line.strip())[:300],
        )

    # -- replacements -------------------------------------------------------------------------------

    def _on_worker_exit(self, handle: WorkerHandle) -> None:
        group = self._plugins.get(handle.plugin_id)
        if group is None:
            return
        with group.lock:
            if handle not in group.workers:
                return
            group.workers.discard(handle)
            group.recycle_limits.pop(handle, None)
            group.shrinking.discard(handle)
            if handle in group.idle:
                group.idle.remove(handle)
            reason = _restart_reason(handle)
            if handle.recycle_for is not None:
                group.recycling = max(0, group.recycling - 1)
            active = group.active
            group.wake_all()
        with self._lock:
            self._total -= 1
        if not active or handle.killed_for == "stop":
            return
        self._replace_exited(group, handle, reason)
        # Logged once the replacement is decided (the host logs the replacement itself, with the same reason):
        # waiting calls woken above must not get ahead of that decision.
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

    def _replace_exited(self, group: _PluginWorkers, handle: WorkerHandle, reason: str) -> None:
        counted = _counts_toward_crash_loop(handle, reason)
        if counted and self._crash_loop(group):
            return
        need = len(group.workers) + group.spawning < group.min_workers or group.waiting > 0
        if not need:
            return
        with self._lock:
            self._total += 1
        with group.lock:
            group.spawning += 1
        delay = self._backoff(group) if counted else 0.0
        self.supervisor.schedule(delay, lambda: self._spawn_into(group, reason=reason))

    def _on_idle_cpu(self, handle: WorkerHandle, share: float) -> None:
        """A worker burned ``share`` CPUs with no call in flight (a thread left spinning): replace it.

        It is idle, so no call is lost; its replacement counts as ``cpu``, toward the crash loop.
        """
        group = self._plugins.get(handle.plugin_id)
        if group is None:
            return
        with group.lock:
            if handle.busy or handle not in group.idle:
                return  # a call took it meanwhile: judged again at the next check
            group.idle.remove(handle)
            handle.retiring = True
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
        self.supervisor.kill_worker(handle, "cpu")

    def _crash_loop(self, group: _PluginWorkers) -> bool:
        now = time.monotonic()
        with group.lock:
            group.crashes.append(now)
            while group.crashes and now - group.crashes[0] > self.config.crash_window_s:
                group.crashes.popleft()
            looping = len(group.crashes) >= self.config.crash_limit
        if looping:
            self._fail_plugin(
                group,
                f"its workers crashed {len(group.crashes)} times within "
                f"{self.config.crash_window_s:g} s (sandbox.crash_limit)",
            )
        return looping

    def _backoff(self, group: _PluginWorkers) -> float:
        recent = max(len(group.crashes) - 1, 0)
        return float(min(self.config.restart_backoff_s * (2**recent), self.config.restart_backoff_max_s))

    def _spawn_into(self, group: _PluginWorkers, *, reason: str | None) -> None:
        """Boot one worker for ``group`` (on the supervisor thread) and put it to work.

        A replacement (``reason`` set) is counted once, when the new worker is in place; a failed attempt
        is retried under the same reason. Without a zygote the attempt is retried soon and counts toward
        nothing (the supervisor restarts the zygote first); a worker that dies while booting counts as a crash.
        """
        plugin_id = group.plan.plugin_id
        if not group.active:
            self._spawn_done(group, None)
            return
        try:
            handle = self.supervisor.spawn_worker(group.plan)
        except BootError as exc:
            self._spawn_done(group, None)
            if exc.boot_failure:
                self._fail_plugin(group, f"a replacement worker could not boot: {exc}")
            elif exc.zygote_down or not self._crash_loop(group):
                with self._lock:
                    self._total += 1
                with group.lock:
                    group.spawning += 1
                delay = ZYGOTE_RETRY_S if exc.zygote_down else self._backoff(group)
                self.supervisor.schedule(delay, lambda: self._spawn_into(group, reason=reason))
            return
        if reason is not None and group.active:
            with group.lock:
                group.restarts[reason] += 1
            self._on_restart(plugin_id, reason)
        self._spawn_done(group, handle)

    def _spawn_done(self, group: _PluginWorkers, handle: WorkerHandle | None) -> None:
        with group.lock:
            group.spawning = max(0, group.spawning - 1)
            if handle is not None and group.active:
                group.workers.add(handle)
                group.recycle_limits[handle] = self._recycle_limits()
                group.idle.append(handle)
                self._trim(group)
                # The oldest waiter takes this worker; wake the others to ask _grow for the next one
                # (otherwise they slept until a busy worker came back and the pool never grew).
                self._serve_waiters(group)
                group.wake_all()
                return
        with self._lock:
            self._total -= 1
        if handle is not None:
            self.supervisor.retire_worker(handle, "stop")

    def _fail_plugin(self, group: _PluginWorkers, reason: str) -> None:
        plugin_id = group.plan.plugin_id
        with self._lock:
            if self._plugins.get(plugin_id) is not group:
                return
            del self._plugins[plugin_id]
        with group.lock:
            group.active = False
            group.wake_all()
            workers = list(group.workers)
        with self._lock:
            self._total -= len(workers)
        for handle in workers:
            self.supervisor.kill_worker(handle, "stop")
        self.supervisor.unstage_plugin(group.plan.plugin_dir)
        _log.error(
            "plugin failed in the sandbox: %s",
            reason,
            extra={"event": "plugin_failed", "pluginId": plugin_id, "trustLevel": "untrusted"},
        )
        self._on_plugin_failed(plugin_id, reason)

    def _recycle_limits(self) -> tuple[int, float]:
        jitter = self.config.recycle_jitter
        calls = max(1, int(self.config.recycle_after_calls * (1 + jitter * self._random.random())))
        return calls, self.config.recycle_after_s * (1 + jitter * self._random.random())

    # -- health -------------------------------------------------------------------------------------

    def get_stats(self, plugin_id: str) -> PoolStats | None:
        """The plugin's workers and counters, or None if it has no workers."""
        group = self._plugins.get(plugin_id)
        if group is None:
            return None
        with group.lock:
            busy = len(group.workers) - len(group.idle)
            return PoolStats(
                workers=len(group.workers),
                busy=busy,
                idle=len(group.idle),
                waiting=group.waiting,
                calls=group.calls,
                errors=group.errors,
                restarts=dict(group.restarts),
                last_error=group.last_error,
                min_workers=group.min_workers,
                max_workers=group.max_workers,
            )

    def get_code_capabilities(self, plugin_id: str) -> tuple[str, ...]:
        """The capabilities the plugin's code declares, as one of its workers reports them (valid names only;
        empty without a worker that answers). The host compares them with the manifest. Blocks briefly."""
        group = self._plugins.get(plugin_id)
        if group is None:
            return ()
        with group.lock:
            handle = next(iter(group.workers), None)
        return self.supervisor.read_code_capabilities(handle) if handle is not None else ()

    def list_worker_pids(self, plugin_id: str) -> list[int]:
        """Pids of the plugin's live workers (for operators and tests)."""
        group = self._plugins.get(plugin_id)
        if group is None:
            return []
        with group.lock:
            return sorted(h.pid for h in group.workers if h.pid is not None and not h.exited.is_set())


def _single(reply: memoryview) -> list[codec.Outcome]:
    return [codec.decode_reply(reply)]


class _WorkerLost(Exception):
    """The worker's channel was closed before the call could be sent."""


def _restart_reason(handle: WorkerHandle) -> str:
    if handle.killed_for in ("timeout", "memory", "recycle", "cpu"):
        return handle.killed_for
    if handle.oom_killed:
        return "memory"
    if handle.exit_signal == _SIGXCPU:
        return "cpu"
    return "crash"


def _counts_toward_crash_loop(handle: WorkerHandle, reason: str) -> bool:
    """Deaths the plugin caused: crashes, CPU (its lifetime budget, or burning CPU while idle) and OOM kills.

    A zygote death kills every worker at once and says nothing about the plugin; deadlines and host-side
    recycling are the host's decisions. Neither counts."""
    if handle.killed_for == "zygote":
        return False
    return reason in ("crash", "cpu") or handle.oom_killed
