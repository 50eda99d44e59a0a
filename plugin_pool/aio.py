"""The asyncio face of the host: ``await host.invoke(...)`` without stalling the event loop.

    from plugin_pool.aio import AsyncPluginHost

    async with AsyncPluginHost(load_config("plugin_pool.toml")) as host:
        host.host.add_configured_plugins()        # the sync host, for setup
        await host.start_plugins()
        result = await host.invoke("secrets-scanner", "scan", text, timeout_s=2.0)

Built on :meth:`PluginHost.submit`, bridged with ``asyncio.wrap_future``: an await holds no thread. An
Untrusted call waits in its plugin's queue and travels to the pool on one of at most ``max_workers``
dispatcher threads (never one thread per call); an ``async def`` plugin method runs on the host's own event
loop; a Trusted sync method on the host's small executor (``host.submit_threads``); a BuiltIn sync method
runs inline, on the calling loop (BuiltIn plugins are the host's own fast code: keep them fast).

Cancellation: cancelling the awaiting task cancels a call that has not started (it never runs; nothing is
sent to a worker) and an ``async def`` method even while it runs. A sync or Untrusted call that has
started is abandoned: it runs on to its end or its deadline (where the sandbox kills and replaces the
worker, as for any call past its deadline) and its result is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry

from plugin_pool.config import Config
from plugin_pool.host import HostHealth, PluginHealth, PluginHost
from plugin_pool.lifecycle import PluginState
from plugin_pool.registry.base import PluginRegistry

__all__ = ["AsyncPluginHost"]


class AsyncPluginHost:
    """A :class:`PluginHost` for asyncio code: calls are awaited, lifecycle steps run off the loop.

    Wrap an existing host (``AsyncPluginHost(host)``; closing this object then leaves it open) or let it
    make one from the same arguments as ``PluginHost`` (closed with it). ``async with`` opens the host and
    closes it (in a thread: stopping plugins blocks). ``host`` is the synchronous host, for setup calls that
    do not block for long (add_plugin, get_health). Every method is safe to call from any task; ``aclose``
    is idempotent.
    """

    def __init__(
        self,
        host: PluginHost | Config | None = None,
        *,
        registry: PluginRegistry | None = None,
        services: Mapping[str, Any] | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        if isinstance(host, PluginHost):
            self.host = host
            self._owns_host = False
        else:
            self.host = PluginHost(host, registry=registry, services=services, metrics_registry=metrics_registry)
            self._owns_host = True

    async def __aenter__(self) -> AsyncPluginHost:
        self.host.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the host if this object made it (stopping its plugins, in a thread). Idempotent."""
        if self._owns_host:
            await asyncio.to_thread(self.host.close)

    # -- calls -----------------------------------------------------------------------------------------------

    async def invoke(
        self, plugin_id: str, capability: str, payload: Any = None, *, timeout_s: float | None = None
    ) -> Any:
        """Await one call; the result, or the error :meth:`PluginHost.invoke` would raise.

        ``timeout_s`` (default ``host.call_timeout_s``) counts from now, the wait for a worker included:
        past it, QueueTimeoutError if the call never started, CallTimeoutError if it ran. Cancelling the
        await cancels a call that has not started (see the module's notes for one that has).
        """
        return await asyncio.wrap_future(self.host.submit(plugin_id, capability, payload, timeout_s=timeout_s))

    async def invoke_many(
        self, plugin_id: str, capability: str, payloads: Iterable[Any], *, timeout_s: float | None = None
    ) -> list[Any]:
        """Await a batch (:meth:`PluginHost.invoke_many`, started at once); the results in order."""
        return await asyncio.wrap_future(self.host.submit_many(plugin_id, capability, payloads, timeout_s=timeout_s))

    async def map(
        self, plugin_id: str, capability: str, payloads: Iterable[Any], *, timeout_s: float | None = None
    ) -> list[Any]:
        """The same as :meth:`invoke_many` (the asyncio spelling of :meth:`PluginHost.map`)."""
        return await self.invoke_many(plugin_id, capability, payloads, timeout_s=timeout_s)

    # -- lifecycle, off the loop -------------------------------------------------------------------------

    async def start_plugins(self) -> HostHealth:
        """Start every plugin that is not Active (in a thread: the steps block); the health afterwards."""
        return await asyncio.to_thread(self.host.start_plugins)

    async def start_plugin(self, plugin_id: str, *, actor: str | None = None) -> PluginState:
        """:meth:`PluginHost.start_plugin`, in a thread."""
        return await asyncio.to_thread(self.host.start_plugin, plugin_id, actor=actor)

    async def stop_plugin(
        self, plugin_id: str, *, reason: str = "stop requested", actor: str | None = None
    ) -> PluginState:
        """:meth:`PluginHost.stop_plugin`, in a thread."""
        return await asyncio.to_thread(self.host.stop_plugin, plugin_id, reason=reason, actor=actor)

    # -- health (never blocks) ---------------------------------------------------------------------------

    def get_health(self) -> HostHealth:
        """:meth:`PluginHost.get_health` (takes no lock; safe on the loop)."""
        return self.host.get_health()

    def get_plugin_health(self, plugin_id: str) -> PluginHealth:
        """:meth:`PluginHost.get_plugin_health` (takes no lock; safe on the loop)."""
        return self.host.get_plugin_health(plugin_id)
