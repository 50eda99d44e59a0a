"""plugin_pool.aio: awaited calls that never block the event loop, cancellation, the async context manager."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _plugins import TEST_ACTOR, AsyncRecorder, Recorder, make_info

from plugin_pool import (
    AsyncPluginHost,
    PluginBase,
    PluginCallError,
    PluginHost,
    PluginNotFoundError,
    PluginState,
    QueueTimeoutError,
    TrustLevel,
    capability,
    load_config,
)
from plugin_pool.registry import InMemoryPluginRegistry

MakeHost = Callable[..., PluginHost]


class Blocking(PluginBase):
    """A Trusted plugin whose ``hold`` blocks its thread until ``gate`` opens; ``echo`` records what ran."""

    info = make_info("blocking", TrustLevel.TRUSTED)

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.holding = threading.Event()
        self.ran: list[Any] = []

    @capability
    def hold(self, payload: Any) -> Any:
        self.holding.set()
        self.gate.wait(5)
        return payload

    @capability
    def echo(self, payload: Any) -> Any:
        self.ran.append(payload)
        return payload


def test_awaited_calls_at_every_in_process_level(make_host: MakeHost) -> None:
    host = make_host()
    host.add_plugin(Recorder("plain"))
    host.add_plugin(Recorder("watched", TrustLevel.TRUSTED))
    host.add_plugin(AsyncRecorder("coro", TrustLevel.TRUSTED))
    host.start_plugins()

    async def main() -> None:
        ahost = AsyncPluginHost(host)
        results = await asyncio.gather(
            *(ahost.invoke(pid, "scan", n) for n in range(20) for pid in ("plain", "watched", "coro"))
        )
        assert sorted((r["plugin"], r["payload"]) for r in results) == sorted(
            (pid, n) for n in range(20) for pid in ("plain", "watched", "coro")
        )
        assert await ahost.invoke_many("watched", "scan", [1, 2]) == [
            {"plugin": "watched", "payload": 1},
            {"plugin": "watched", "payload": 2},
        ]
        assert await ahost.map("coro", "scan", [3]) == [{"plugin": "coro", "payload": 3}]
        with pytest.raises(PluginCallError, match="cannot scan"):
            await ahost.invoke("watched", "fail", 1)
        with pytest.raises(PluginNotFoundError):
            await ahost.invoke("ghost", "scan", 1)
        await ahost.aclose()  # a wrapped host stays open

    asyncio.run(main())
    assert host.is_open


def test_a_blocked_trusted_call_does_not_block_the_event_loop(make_host: MakeHost) -> None:
    host = make_host({"host": {"submit_threads": 1}})
    plugin = Blocking()
    host.add_plugin(plugin)
    host.start_plugins()

    async def main() -> None:
        ahost = AsyncPluginHost(host)
        held = asyncio.ensure_future(ahost.invoke("blocking", "hold", "held"))
        while not plugin.holding.is_set():  # the loop keeps turning while the plugin's thread is blocked
            await asyncio.sleep(0.001)
        queued = asyncio.ensure_future(ahost.invoke("blocking", "echo", "cancelled"))
        late = asyncio.ensure_future(ahost.invoke("blocking", "echo", "late", timeout_s=0.01))
        await asyncio.sleep(0.05)  # the late call's deadline passes while the only thread is held
        queued.cancel()  # not started yet: it never runs
        await asyncio.sleep(0)  # the cancellation reaches the call's Future on the loop's next turn
        plugin.gate.set()
        assert await held == "held"
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(QueueTimeoutError):
            await late
        assert await ahost.invoke("blocking", "echo", "after") == "after"

    asyncio.run(main())
    assert plugin.ran == ["after"]


def test_the_async_context_manager_opens_and_closes_a_host_it_made() -> None:
    config = load_config(overrides={"host": {"actor": TEST_ACTOR}})

    async def main() -> PluginHost:
        async with AsyncPluginHost(config, registry=InMemoryPluginRegistry()) as ahost:
            ahost.host.add_plugin(Recorder("echo"))
            health = await ahost.start_plugins()
            assert health.active == ("echo",)
            assert await ahost.stop_plugin("echo") is PluginState.STOPPED
            assert await ahost.start_plugin("echo") is PluginState.ACTIVE
            assert ahost.get_plugin_health("echo").is_active and ahost.get_health().active == ("echo",)
        await ahost.aclose()  # idempotent
        return ahost.host

    host = asyncio.run(main())
    assert not host.is_open
    assert host.get_plugin_health("echo").state is PluginState.STOPPED
