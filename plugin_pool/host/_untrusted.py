"""The host side of the sandbox: Untrusted plugins' routes, boots and stops, pool sizes, and the pool's reports.

The sandbox (and grpc with it) is imported only when the first Untrusted plugin starts. The pool reports
from its own threads (the supervisor, the zygote reader): a worker replaced, a plugin failed in the
sandbox. Both reports are queued on the host's background thread and handled there, in order, so those
threads never wait for the host lock or the registry -- a start that holds the host lock while it waits
for the zygote reader can never deadlock with a report the reader is delivering.

Calls submitted to an Untrusted plugin (``host.submit``, ``plugin_pool.aio``) wait in the plugin's
dispatcher queue without a thread each; at most ``max_workers`` dispatcher threads per plugin (started on
demand, ended after a few idle seconds) carry calls to the pool, as many as it may have workers.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from plugin_pool._dispatch import CallStats, Route, monitored_route, monitored_timed_route
from plugin_pool.config import PluginSettings, SandboxConfig, check_pool_size, resolve_pool_size
from plugin_pool.content import FolderLimits
from plugin_pool.errors import (
    CallTimeoutError,
    PluginPoolError,
    PoolOverloadedError,
    QueueTimeoutError,
    TrustViolationError,
)
from plugin_pool.host._core import HostCore
from plugin_pool.host._routes import PluginRoutes
from plugin_pool.host._slots import Slot, report_undeclared_capabilities
from plugin_pool.lifecycle import PluginState
from plugin_pool.model import NETWORK_CAPABILITIES, thaw_json
from plugin_pool.registry.base import EventKind

if TYPE_CHECKING:
    from plugin_pool.sandbox.pool import SandboxPool
    from plugin_pool.sandbox.supervisor import WorkerPlan

__all__ = ["SandboxRoutes", "UntrustedBridge"]

_log = logging.getLogger("plugin_pool.host")

FailureHandler = Callable[[str, str], None]
"""``(plugin_id, reason)``: move a plugin that failed in the sandbox to Failed (runs on the background thread)."""


class _Dispatcher:
    """Carries submitted calls of one Untrusted plugin to the pool: a FIFO queue bounded by
    ``sandbox.queue_limit`` and at most ``threads`` threads (see :func:`dispatch_threads`), started on
    demand; a thread that finds the queue empty for a while ends."""

    _IDLE_S = 5.0
    """How long a dispatcher thread waits for the next call before it ends."""

    def __init__(self, plugin_id: str, threads: int, queue_limit: int) -> None:
        self._plugin_id = plugin_id
        self._queue_limit = queue_limit
        self._threads = threads
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self._running = 0
        self._idle = 0
        self._closed = False

    def submit(self, job: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue ``job(*args)``; a Future holding PoolOverloadedError when the queue is full."""
        future: Future[Any] = Future()
        with self._cond:
            if len(self._queue) >= self._queue_limit:
                future.set_exception(
                    PoolOverloadedError(
                        f"plugin {self._plugin_id!r}: {len(self._queue)} submitted calls are waiting for a "
                        f"worker (sandbox.queue_limit); retry later or raise sandbox.max_workers",
                        plugin_id=self._plugin_id,
                    )
                )
                return future
            self._queue.append((future, job, args))
            if self._idle:
                self._cond.notify()
            # More calls queued than idle threads to take them: start one more, up to the limit (even once
            # closed, so a call submitted in the moment its plugin stopped still ends, failing fast).
            if len(self._queue) > self._idle and self._running < self._threads:
                self._running += 1
                threading.Thread(target=self._serve, name=f"plugin-pool-call-{self._plugin_id}", daemon=True).start()
        return future

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if self._closed:
                        self._running -= 1
                        return
                    self._idle += 1
                    woken = self._cond.wait(self._IDLE_S)
                    self._idle -= 1
                    if not woken and not self._queue:
                        self._running -= 1
                        return
                if self._running > self._threads:  # resized down: this thread leaves
                    self._running -= 1
                    return
                future, job, args = self._queue.popleft()
            if not future.set_running_or_notify_cancel():  # cancelled while it waited: never runs
                continue
            try:
                result = job(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def resize(self, threads: int) -> None:
        """Carry calls on at most ``threads`` threads from now on."""
        with self._cond:
            self._threads = threads

    def close(self) -> None:
        """Let queued calls run out (they fail fast once the plugin's workers are gone); then threads end."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class SandboxRoutes(PluginRoutes):
    """An Untrusted plugin's routes: monitored proxies to the sandbox pool, deadlines capped by the
    manifest's ``[resources] call_timeout_s``."""

    def __init__(
        self,
        plugin_id: str,
        pool: SandboxPool,
        capabilities: tuple[str, ...],
        *,
        stats: CallStats,
        default_timeout_s: float,
        limit_s: float,
        dispatcher: _Dispatcher,
    ) -> None:
        self._pool = pool
        self._default_timeout_s = default_timeout_s
        self._limit_s = limit_s
        self._dispatcher = dispatcher
        calls: dict[str, Route] = {}
        self._timed = {}
        for name in capabilities:

            def route(payload: Any, _cap: str = name) -> Any:
                return pool.invoke(plugin_id, _cap, payload, default_timeout_s)

            def timed(payload: Any, timeout_s: float, _cap: str = name) -> Any:
                return pool.invoke(plugin_id, _cap, payload, timeout_s)

            calls[name] = monitored_route(route, stats, name)
            self._timed[name] = monitored_timed_route(timed, stats, name)
        super().__init__(plugin_id, calls)

    def _deadline(self, timeout_s: float | None) -> float:
        return self._default_timeout_s if timeout_s is None else min(timeout_s, self._limit_s)

    def call(self, capability: str, payload: Any, timeout_s: float) -> Any:
        return self._timed[capability](payload, self._deadline(timeout_s))

    def submit(self, capability: str, payload: Any, timeout_s: float | None) -> Future[Any]:
        return self._dispatcher.submit(
            self._run_queued, capability, payload, time.monotonic(), self._deadline(timeout_s)
        )

    def _run_queued(self, capability: str, payload: Any, queued_at: float, timeout_s: float) -> Any:
        remaining = timeout_s - (time.monotonic() - queued_at)
        if remaining <= 0:
            raise QueueTimeoutError(self.plugin_id, capability, timeout_s, waited_s=timeout_s - remaining)
        try:
            return self._timed[capability](payload, remaining)
        except QueueTimeoutError:  # the pool saw only what was left of the deadline: name the caller's
            raise QueueTimeoutError(self.plugin_id, capability, timeout_s) from None
        except CallTimeoutError as exc:
            raise CallTimeoutError(self.plugin_id, capability, timeout_s, pid=exc.pid) from None

    def call_many(self, capability: str, payloads: list[Any], timeout_s: float | None) -> list[Any]:
        return self._pool.invoke_many(self.plugin_id, capability, payloads, self._deadline(timeout_s))

    def submit_many(self, capability: str, payloads: list[Any], timeout_s: float | None) -> Future[list[Any]]:
        return self._dispatcher.submit(self.call_many, capability, payloads, timeout_s)

    def resize(self, max_workers: int) -> None:
        """Follow a change of the plugin's ``max_workers``."""
        self._dispatcher.resize(dispatch_threads(max_workers))

    def close(self) -> None:
        self._dispatcher.close()


class UntrustedBridge:
    """Everything the host does with the sandbox pool. Thread-safe where the host calls it under its lock."""

    def __init__(self, core: HostCore) -> None:
        self._core = core
        self._pool: SandboxPool | None = None
        self._routes: dict[str, SandboxRoutes] = {}
        self._bounds: dict[str, tuple[int, int]] = {}
        """The (min, max) workers each plugin was loaded with (resolved once, booted with)."""
        self._staged: dict[str, WorkerPlan] = {}
        """Plans staged at Loading and not yet handed to the pool (which owns the copy once it boots)."""
        self._on_failed: FailureHandler | None = None
        self.restarts: Counter[tuple[str, str]] = Counter()
        """Sandbox worker replacements by (plugin id, reason): the seed's sandbox_process_restarts_total."""

    @property
    def pool(self) -> SandboxPool | None:
        """The worker pool of Untrusted plugins, once one has started (None before)."""
        return self._pool

    def set_failure_handler(self, handler: FailureHandler) -> None:
        """Who moves a plugin that failed in the sandbox to Failed (the lifecycle part)."""
        self._on_failed = handler

    def close(self) -> None:
        """Kill every worker and the zygote. Idempotent."""
        if self._pool is not None:
            self._pool.close()

    # -- boot and stop -------------------------------------------------------------------------------------

    def load(self, slot: Slot) -> SandboxRoutes:
        """Validate an Untrusted plugin's declared capabilities, stage its verified copy, build its routes.

        Imports no plugin code. Staging (:meth:`SandboxPool.stage_plugin`) copies the folder and hashes the
        same bytes in one pass against the hash registered at discovery, under the ``[discovery]`` limits,
        then compiles its bytecode in an isolated child: a folder changed or swapped since discovery fails
        here, at Loading, naming the plugin's folder. Raises TrustViolationError for a capability that needs
        the network (never given to Untrusted code), ContentHashMismatchError, IntegrityRejectedError or
        StagingError.
        """
        manifest = slot.manifest
        assert manifest is not None
        info = slot.info
        network = sorted(set(manifest.capabilities) & NETWORK_CAPABILITIES)
        if network:
            raise TrustViolationError(
                f"plugin {info.id!r} declares {network[0]!r}, which needs network access; Untrusted plugins "
                f"never get it (they must be at least Trusted)",
                plugin_id=info.id,
            )
        pool = self._ensure_pool()
        from plugin_pool.sandbox.pool import RESTART_REASONS  # loaded with the pool above

        self.forget(info.id)  # a copy left by an earlier load that never booted
        self._staged[info.id] = pool.stage_plugin(self._plan(slot))
        self._core.metrics.add_sandboxed_plugin(info.id, RESTART_REASONS)
        limit_s = float(manifest.resources.get("call_timeout_s", float("inf")))
        stats = CallStats()
        low, high = self.pool_bounds(slot, self._core.config.sandbox, None)
        self._bounds[info.id] = (low, high)
        routes = SandboxRoutes(
            info.id,
            pool,
            manifest.capabilities.names,
            stats=stats,
            default_timeout_s=min(self._core.config.host.call_timeout_s, limit_s),
            limit_s=limit_s,
            dispatcher=_Dispatcher(info.id, dispatch_threads(high), max(1, self._core.config.sandbox.queue_limit)),
        )
        slot.capabilities = manifest.capabilities
        slot.stats = stats
        self._routes[info.id] = routes
        return routes

    def _plan(self, slot: Slot) -> WorkerPlan:
        from plugin_pool.sandbox.supervisor import WorkerPlan

        manifest = slot.manifest
        assert manifest is not None
        lifecycle = self._core.config.lifecycle
        return WorkerPlan(
            plugin_id=slot.info.id,
            plugin_dir=manifest.directory,
            entry=manifest.entry,
            capabilities=manifest.capabilities.names,
            config_json=orjson.dumps(thaw_json(slot.settings.config)),
            services=slot.settings.services,
            initialize_timeout_s=lifecycle.initialize_timeout_s,
            start_timeout_s=lifecycle.start_timeout_s,
            memory_mb=_int_or_none(manifest.resources.get("memory_mb")),
            cpu_time_s=_int_or_none(manifest.resources.get("cpu_time_s")),
            content_hash=slot.content_hash,
            limits=FolderLimits.from_config(self._core.config.discovery),
            python_path=manifest.python_path,
        )

    def boot(self, slot: Slot) -> str | None:
        """Boot the plugin's first workers from the copy staged at Loading (each runs initialize and start
        under the lifecycle timeouts). Returns None when they serve, else the reason (naming the plugin's
        folder, never the private copy). Reports capabilities its code offers but its manifest does not.
        """
        from plugin_pool.sandbox.supervisor import BootError

        plan = self._staged.pop(slot.info.id, None)
        assert plan is not None and self._pool is not None, "boot() follows a successful load()"
        try:
            low, high = self._bounds[slot.info.id]
            self._pool.start_plugin(plan, min_workers=low, max_workers=high)  # the pool owns the copy now
        except (BootError, PluginPoolError) as exc:
            assert slot.manifest is not None
            return str(exc).replace(str(plan.plugin_dir), str(slot.manifest.directory))
        report_undeclared_capabilities(slot, self._pool.get_code_capabilities(slot.info.id))
        return None

    def stop(self, plugin_id: str, timeout_s: float) -> str | None:
        """Run the plugin's stop() in every worker and retire them; the first error, or None. Blocks."""
        self._routes.pop(plugin_id, None)
        if self._pool is None:
            return None
        return self._pool.stop_plugin(plugin_id, timeout_s=timeout_s)

    def forget(self, plugin_id: str) -> None:
        """The plugin left Active without a stop, or never reached it (it failed): drop what the bridge keeps
        for it, and a staged copy no worker was booted from. Idempotent."""
        self._routes.pop(plugin_id, None)
        plan = self._staged.pop(plugin_id, None)
        if plan is not None and self._pool is not None:
            self._pool.unstage_plugin(plan)

    def _ensure_pool(self) -> SandboxPool:
        if self._pool is None:
            from plugin_pool.sandbox.pool import SandboxPool

            pool = SandboxPool(
                self._core.config.sandbox,
                services=self._core.services,
                on_restart=self._on_restart,
                on_plugin_failed=self._on_plugin_failed,
            )
            pool.open()
            self._pool = pool
        return self._pool

    # -- the pool's reports (its threads) -------------------------------------------------------------------

    def _on_restart(self, plugin_id: str, reason: str) -> None:
        """A worker was replaced (the supervisor thread): audit and count it on the background thread."""
        if not self._core.in_background(self._count_restart, plugin_id, reason):
            self._count_restart(plugin_id, reason)  # closing: the count must not be lost

    def _count_restart(self, plugin_id: str, reason: str) -> None:
        # The audit first, so whoever sees the counter move finds the event too.
        slot = self._core.slots.find(plugin_id)
        try:
            self._core.audit(
                EventKind.WORKER_RESTARTED,
                plugin_id,
                state=slot.state if slot else None,
                details={"reason": reason},
            )
        finally:
            self._core.metrics.count_restart(plugin_id, reason)
            self.restarts[plugin_id, reason] += 1
            _log.info(
                "plugin %r: a worker was replaced (%s); %d replacements for this reason so far",
                plugin_id,
                reason,
                self.restarts[plugin_id, reason],
                extra={"event": "worker_restarted", "pluginId": plugin_id, "trustLevel": "untrusted", "reason": reason},
            )

    def _on_plugin_failed(self, plugin_id: str, reason: str) -> None:
        """The pool gave a plugin up (a zygote reader or supervisor thread): move it on the background thread.

        Never on the reporting thread: the move takes the host lock and writes the registry, and a start
        may hold that lock while it waits for this very thread.
        """
        handler = self._on_failed
        if handler is None or not self._core.in_background(handler, plugin_id, reason):
            _log.error(
                "plugin %s failed in the sandbox while the host closes (not recorded as Failed): %s",
                plugin_id,
                reason,
                extra={"event": "plugin_failed", "pluginId": plugin_id, "trustLevel": "untrusted"},
            )

    # -- pool sizes --------------------------------------------------------------------------------------

    def pool_bounds(
        self, slot: Slot, sandbox: SandboxConfig, plugins: Mapping[str, PluginSettings] | None
    ) -> tuple[int, int]:
        """A sandboxed plugin's (min, max) workers: ``[plugins.<id>]`` wins over the manifest's [pool], which
        wins over ``[sandbox]`` (see :func:`plugin_pool.config.resolve_pool_size`); a bound moved to meet a
        more specific one is logged."""
        settings = (plugins if plugins is not None else self._core.config.plugins).get(slot.info.id) or slot.settings
        pool = dict(slot.manifest.pool) if slot.manifest is not None else {}
        where = f"{slot.manifest.source if slot.manifest is not None else slot.info.id} [pool]"
        (low, high), note = resolve_pool_size(
            slot.info.id,
            (
                (f"plugins.{slot.info.id}", {"min_workers": settings.min_workers, "max_workers": settings.max_workers}),
                (where, pool),
                ("sandbox", {"min_workers": sandbox.min_workers, "max_workers": sandbox.max_workers}),
            ),
        )
        if note is not None:
            _log.info(note, extra={"event": "pool_bounds", "pluginId": slot.info.id, "trustLevel": "untrusted"})
        return low, high

    def resize(self, plugin_id: str, min_workers: int | None, max_workers: int | None) -> tuple[int, int]:
        """Change one Active plugin's bounds (see PluginHost.resize_pool)."""
        assert self._pool is not None
        low, high = self._pool.resize_plugin(plugin_id, min_workers=min_workers, max_workers=max_workers)
        routes = self._routes.get(plugin_id)
        if routes is not None:
            routes.resize(high)
        return low, high

    def apply_sizes(
        self,
        sandbox: SandboxConfig,
        slots: tuple[Slot, ...],
        plugins: Mapping[str, PluginSettings] | None,
        *,
        resize: bool,
    ) -> dict[str, tuple[int, int]]:
        """Apply new defaults and cap to the pool and, with ``resize``, resize every Active sandboxed plugin.

        Checks every plugin's new bounds before changing anything, so a bad size changes nothing.
        """
        check_pool_size(sandbox.min_workers, sandbox.max_workers, max_total_workers=sandbox.max_total_workers)
        wanted = {
            slot.info.id: self.pool_bounds(slot, sandbox, plugins)
            for slot in slots
            if resize and slot.sandboxed and slot.state is PluginState.ACTIVE and slot.manifest is not None
        }
        pool = self._pool
        if pool is None:
            return {}
        pool.update_limits(
            min_workers=sandbox.min_workers,
            max_workers=sandbox.max_workers,
            max_total_workers=sandbox.max_total_workers,
        )
        return {plugin_id: self.resize(plugin_id, low, high) for plugin_id, (low, high) in wanted.items()}

    @staticmethod
    def replace_sizes(config: SandboxConfig, sandbox: SandboxConfig) -> SandboxConfig:
        """``config`` with the pool sizes of ``sandbox`` (the other sandbox settings apply at worker boot)."""
        return replace(
            config,
            min_workers=sandbox.min_workers,
            max_workers=sandbox.max_workers,
            max_total_workers=sandbox.max_total_workers,
        )


def dispatch_threads(max_workers: int) -> int:
    """Dispatcher threads for a plugin of ``max_workers``: one per worker it may have. (Two per worker, one
    waiting to take a worker over, measured slower on 2 cores: more threads contend for the GIL.)"""
    return max_workers


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)
