"""Routes and calls: the route table, ``invoke``/``invoke_many``/``submit``/``map``, and in-process routes.

The table maps plugin id -> capability -> route and is rebuilt (copy-on-write) only when a plugin enters
or leaves Active, so the hot path of ``invoke`` is two dict lookups and no lock. A miss goes to the slow
path, which names the reason: host closed, unknown plugin, plugin not Active (with its state), or a
capability the plugin did not declare (the only case that is a denial, audited).

Route changes are ordered against the plugin's state so that no caller is ever denied a declared
capability: entering Active, the routes are installed *before* the state says Active; leaving it, the
state moves *before* the routes go. A call in the window of a stop gets PluginNotActiveError (stopping).

This module never imports the admission or lifecycle parts (an import-linter contract): it is given
routes and asked to install or drop them.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from plugin_pool._dispatch import (
    CallStats,
    Route,
    TimedRoute,
    async_route,
    async_timed_route,
    call_error,
    monitored_route,
    monitored_timed_route,
    submit_coroutine,
)
from plugin_pool.errors import (
    CapabilityDeniedError,
    PluginNotActiveError,
    PluginPoolError,
    QueueTimeoutError,
)
from plugin_pool.host._core import HostCore
from plugin_pool.host._slots import Slot, log_fields
from plugin_pool.lifecycle import PluginState
from plugin_pool.model import Capabilities, Plugin, TrustLevel
from plugin_pool.registry.base import EventKind

__all__ = [
    "InProcessRoutes",
    "PluginRoutes",
    "Router",
    "build_inprocess_routes",
    "check_timeout",
    "done_future",
    "failed_future",
]

_log = logging.getLogger("plugin_pool.host")


def check_timeout(timeout_s: float | None) -> None:
    """Raise ValueError unless ``timeout_s`` is None or a finite number of seconds above zero."""
    if timeout_s is None:
        return
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not math.isfinite(timeout_s):
        raise ValueError(f"timeout_s = {timeout_s!r} is invalid: expected a finite number of seconds above 0")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s = {timeout_s!r} is invalid: it must be above 0 seconds")


def done_future(result: Any) -> Future[Any]:
    """A Future that already holds ``result``."""
    future: Future[Any] = Future()
    future.set_result(result)
    return future


def failed_future(error: BaseException) -> Future[Any]:
    """A Future that already holds ``error``."""
    future: Future[Any] = Future()
    future.set_exception(error)
    return future


class PluginRoutes:
    """How to call one Active plugin. ``calls`` is what the fast table holds (the default deadline);
    the methods serve explicit deadlines, Futures and batches. Subclasses: in-process and sandboxed."""

    def __init__(self, plugin_id: str, calls: Mapping[str, Route]) -> None:
        self.plugin_id = plugin_id
        self.calls: Mapping[str, Route] = calls

    def call(self, capability: str, payload: Any, timeout_s: float) -> Any:
        """Call with an explicit deadline. Blocks."""
        raise NotImplementedError

    def submit(self, capability: str, payload: Any, timeout_s: float | None) -> Future[Any]:
        """Start the call and return its Future; never raises for the call's own failure."""
        raise NotImplementedError

    def call_many(self, capability: str, payloads: list[Any], timeout_s: float | None) -> list[Any]:
        """Call once per payload, results in order. Blocks."""
        raise NotImplementedError

    def submit_many(self, capability: str, payloads: list[Any], timeout_s: float | None) -> Future[list[Any]]:
        """Start :meth:`call_many` and return its Future."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the routes hold (threads) once they are out of the table. Idempotent."""


class InProcessRoutes(PluginRoutes):
    """A BuiltIn or Trusted plugin's routes.

    Sync methods cannot be stopped once they run (they run in the caller's thread, or a host thread):
    ``timeout_s`` bounds only a submitted call's wait for a thread (:class:`QueueTimeoutError`). BuiltIn
    calls submitted run inline, in the submitting thread (the Future is done when ``submit`` returns);
    Trusted ones run on the host's small executor (``host.submit_threads``). ``async def`` methods run on
    the host's event loop and are cancelled at their deadline (:class:`CallTimeoutError`).
    """

    def __init__(
        self,
        plugin_id: str,
        calls: Mapping[str, Route],
        *,
        timed: Mapping[str, TimedRoute],
        coroutines: Mapping[str, Callable[[Any], Any]],
        inline: bool,
        executor: Callable[[], ThreadPoolExecutor],
        core: HostCore,
        stats: CallStats | None,
    ) -> None:
        super().__init__(plugin_id, calls)
        self._timed = timed
        self._coroutines = coroutines
        self._inline = inline
        self._executor = executor
        self._core = core
        self._stats = stats
        self._default_timeout_s = core.config.host.call_timeout_s

    def call(self, capability: str, payload: Any, timeout_s: float) -> Any:
        return self._timed[capability](payload, timeout_s)

    def submit(self, capability: str, payload: Any, timeout_s: float | None) -> Future[Any]:
        method = self._coroutines.get(capability)
        if method is not None:
            return submit_coroutine(
                self._core.runner,
                method,
                payload,
                plugin_id=self.plugin_id,
                capability=capability,
                timeout_s=timeout_s or self._default_timeout_s,
                stats=self._stats,
            )
        route = self.calls[capability]
        if self._inline:
            try:
                return done_future(route(payload))
            except Exception as exc:
                return failed_future(_chained(call_error(self.plugin_id, capability, exc), exc))
        return self._executor().submit(self._run_queued, route, capability, payload, time.monotonic(), timeout_s)

    def _run_queued(
        self, route: Route, capability: str, payload: Any, queued_at: float, timeout_s: float | None
    ) -> Any:
        if timeout_s is not None:
            waited = time.monotonic() - queued_at
            if waited >= timeout_s:
                raise QueueTimeoutError(self.plugin_id, capability, timeout_s, waited_s=waited)
        try:
            return route(payload)
        except Exception as exc:
            raise call_error(self.plugin_id, capability, exc) from exc

    def call_many(self, capability: str, payloads: list[Any], timeout_s: float | None) -> list[Any]:
        route: Route = self.calls[capability]
        if timeout_s is not None:
            timed, deadline = self._timed[capability], timeout_s

            def route(payload: Any) -> Any:
                return timed(payload, deadline)

        results = []
        for index, payload in enumerate(payloads):
            try:
                results.append(route(payload))
            except Exception as exc:
                raise call_error(self.plugin_id, capability, exc, index=index) from exc
        return results

    def submit_many(self, capability: str, payloads: list[Any], timeout_s: float | None) -> Future[list[Any]]:
        if self._inline and capability not in self._coroutines:
            try:
                return done_future(self.call_many(capability, payloads, timeout_s))
            except PluginPoolError as exc:
                return failed_future(exc)
        return self._executor().submit(self.call_many, capability, payloads, timeout_s)


def _chained(error: PluginPoolError, cause: BaseException) -> PluginPoolError:
    if error is not cause:
        error.__cause__ = cause
    return error


def build_inprocess_routes(
    core: HostCore, slot: Slot, plugin: Plugin, capabilities: Capabilities, executor: Callable[[], ThreadPoolExecutor]
) -> InProcessRoutes:
    """Resolve each declared capability of an in-process plugin to its routes; sets ``slot.stats``.

    BuiltIn sync methods are the bound method itself (unless ``host.monitor_builtin``); Trusted ones are
    monitored; ``async def`` ones run on the host's loop. Raises InvalidPluginError (via the caller's
    checks) when a declared method is missing.
    """
    info = slot.info
    config = core.config.host
    monitored = info.trust_level is TrustLevel.TRUSTED or config.monitor_builtin
    stats = CallStats() if monitored else None
    calls: dict[str, Route] = {}
    timed: dict[str, TimedRoute] = {}
    coroutines: dict[str, Callable[[Any], Any]] = {}
    for cap in capabilities.values():
        method = getattr(plugin, cap.method)
        route: Route = method
        timed_route: TimedRoute = _untimed(method)
        if inspect.iscoroutinefunction(method):
            coroutines[cap.name] = method
            route = async_route(method, core.runner, info.id, cap.name, config.call_timeout_s)
            timed_route = async_timed_route(method, core.runner, info.id, cap.name)
        if stats is not None:
            route = monitored_route(route, stats, cap.name)
            timed_route = monitored_timed_route(timed_route, stats, cap.name)
        calls[cap.name] = route
        timed[cap.name] = timed_route
    slot.stats = stats
    return InProcessRoutes(
        info.id,
        calls,
        timed=timed,
        coroutines=coroutines,
        inline=info.trust_level is TrustLevel.BUILTIN,
        executor=executor,
        core=core,
        stats=stats,
    )


def _untimed(method: Route) -> TimedRoute:
    def call(payload: Any, timeout_s: float) -> Any:
        return method(payload)  # a sync in-process method cannot be stopped: it runs to its end

    return call


class Router:
    """The route table and every call into it. Lock-free reads; writes hold the host lock."""

    def __init__(self, core: HostCore) -> None:
        self._core = core
        self._calls: dict[str, Mapping[str, Route]] = {}
        self._plugins: dict[str, PluginRoutes] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    # -- the table ---------------------------------------------------------------------------------------

    def install(self, routes: PluginRoutes) -> None:
        """Put a plugin's routes in the table (copy-on-write). Call *before* its state says Active."""
        plugins = dict(self._plugins)
        plugins[routes.plugin_id] = routes
        self._plugins = plugins
        calls = dict(self._calls)
        calls[routes.plugin_id] = routes.calls
        self._calls = calls

    def remove(self, plugin_id: str) -> None:
        """Take a plugin's routes out of the table. Call *after* its state left Active. Idempotent."""
        if plugin_id not in self._plugins and plugin_id not in self._calls:
            return
        calls = dict(self._calls)
        calls.pop(plugin_id, None)
        self._calls = calls
        plugins = dict(self._plugins)
        routes = plugins.pop(plugin_id, None)
        self._plugins = plugins
        if routes is not None:
            routes.close()

    def close(self) -> None:
        """Drop every route and stop the executor of submitted in-process calls (their Futures still end).
        Idempotent."""
        for plugin_id in list(self._plugins):
            self.remove(plugin_id)
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    def get_executor(self) -> ThreadPoolExecutor:
        """The host's executor of submitted Trusted calls (``host.submit_threads`` threads), made on first use."""
        executor = self._executor
        if executor is not None:
            return executor
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._core.config.host.submit_threads, thread_name_prefix="plugin-pool-submit"
                )
            return self._executor

    # -- calls ---------------------------------------------------------------------------------------------

    def invoke(self, plugin_id: str, capability: str, payload: Any = None, *, timeout_s: float | None = None) -> Any:
        """The call path of :attr:`PluginHost.invoke` (bound on the host: see its documentation)."""
        if timeout_s is None:
            try:
                route = self._calls[plugin_id][capability]
            except KeyError:
                route = self._resolve(plugin_id, capability).calls[capability]
            try:
                return route(payload)
            except PluginPoolError:
                raise
            except Exception as exc:
                raise call_error(plugin_id, capability, exc) from exc
        check_timeout(timeout_s)
        routes = self._resolve(plugin_id, capability)
        try:
            return routes.call(capability, payload, timeout_s)
        except PluginPoolError:
            raise
        except Exception as exc:
            raise call_error(plugin_id, capability, exc) from exc

    def invoke_many(
        self, plugin_id: str, capability: str, payloads: Iterable[Any], *, timeout_s: float | None = None
    ) -> list[Any]:
        """See :meth:`PluginHost.invoke_many`."""
        check_timeout(timeout_s)
        return self._resolve(plugin_id, capability).call_many(capability, list(payloads), timeout_s)

    def submit(
        self, plugin_id: str, capability: str, payload: Any = None, *, timeout_s: float | None = None
    ) -> Future[Any]:
        """See :meth:`PluginHost.submit`."""
        check_timeout(timeout_s)
        try:
            routes = self._resolve(plugin_id, capability)
        except PluginPoolError as exc:
            return failed_future(exc)
        return routes.submit(capability, payload, timeout_s)

    def submit_many(
        self, plugin_id: str, capability: str, payloads: Iterable[Any], *, timeout_s: float | None = None
    ) -> Future[list[Any]]:
        """Start :meth:`invoke_many` and return its Future (one batch, not a thread per item)."""
        check_timeout(timeout_s)
        try:
            routes = self._resolve(plugin_id, capability)
        except PluginPoolError as exc:
            return failed_future(exc)
        return routes.submit_many(capability, list(payloads), timeout_s)

    def map(
        self, plugin_id: str, capability: str, payloads: Iterable[Any], *, timeout_s: float | None = None
    ) -> Iterator[Any]:
        """See :meth:`PluginHost.map`."""
        future = self.submit_many(plugin_id, capability, payloads, timeout_s=timeout_s)

        def results() -> Iterator[Any]:
            yield from future.result()

        return results()

    # -- the slow path ---------------------------------------------------------------------------------------

    def _resolve(self, plugin_id: str, capability: str) -> PluginRoutes:
        """The routes of an Active plugin that declares ``capability``; otherwise raise the precise error."""
        routes = self._plugins.get(plugin_id)
        if routes is not None and capability in routes.calls:
            return routes
        core = self._core
        closed = core.closed_error()
        if closed is not None:
            raise closed
        slot = core.slots.find(plugin_id)
        if slot is None:
            raise core.slots.not_found(plugin_id)
        if slot.state is not PluginState.ACTIVE:
            raise PluginNotActiveError(plugin_id, slot.state, slot.why_not_active)
        if capability in slot.capabilities:
            # Declared, and the state said Active: a start installed the routes just before it said so (read
            # again), or a stop moved the state just after this read (not active any more). Never a denial.
            routes = self._plugins.get(plugin_id)
            if routes is not None and capability in routes.calls:
                return routes
            raise PluginNotActiveError(plugin_id, slot.state, "its routes were just removed")
        raise self._deny(slot, capability)

    def _deny(self, slot: Slot, capability: str) -> CapabilityDeniedError:
        """Audit and count a call to a capability the plugin did not declare, and return the error."""
        plugin_id = slot.info.id
        declared = slot.capabilities.names
        core = self._core
        core.metrics.count_denial(plugin_id)
        core.audit(
            EventKind.CAPABILITY_DENIED,
            plugin_id,
            state=slot.state,
            details={"capability": str(capability)[:200], "declared": list(declared)},
        )
        _log.warning("capability denied", extra={**log_fields(slot, "capability_denied"), "capability": capability})
        return CapabilityDeniedError(plugin_id, str(capability), declared)

    # -- queries -----------------------------------------------------------------------------------------------

    def list_providers(self, capability: str) -> list[str]:
        """Ids of Active plugins that declare ``capability``, in start order."""
        slots = [
            s for s in self._core.slots.snapshot() if s.state is PluginState.ACTIVE and capability in s.capabilities
        ]
        return [s.info.id for s in sorted(slots, key=lambda s: s.started_seq or 0)]

    def get_route(self, plugin_id: str, capability: str) -> Route | None:
        """The route the fast path would call, or None (for tests and benchmarks)."""
        return self._calls.get(plugin_id, {}).get(capability)
