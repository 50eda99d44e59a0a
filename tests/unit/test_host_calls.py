"""Calls beyond invoke: submit (Futures), submit_many and map, and per-call timeouts, at the in-process levels.

BuiltIn sync calls run inline, Trusted ones on the host's small executor, ``async def`` ones on the host's
event loop; every error invoke raises is set on the Future instead; a call still waiting for a thread at its
deadline fails with QueueTimeoutError (it never ran), a coroutine past it with CallTimeoutError.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

import pytest
from _plugins import AsyncRecorder, Recorder, make_info

from plugin_pool import (
    CallTimeoutError,
    CapabilityDeniedError,
    HostClosedError,
    PluginBase,
    PluginCallError,
    PluginHost,
    PluginNotActiveError,
    PluginNotFoundError,
    QueueTimeoutError,
    TrustLevel,
    capability,
)
from plugin_pool.registry import EventKind

MakeHost = Callable[..., PluginHost]


class Gated(PluginBase):
    """``where`` names the thread it runs in; ``hold`` blocks until ``gate`` opens (at most 5 s)."""

    def __init__(self, plugin_id: str, trust_level: TrustLevel, gate: threading.Event) -> None:
        self.info = make_info(plugin_id, trust_level)  # type: ignore[misc]
        self.gate = gate
        self.holding = threading.Event()
        self.ran: list[Any] = []

    @capability
    def where(self, payload: Any) -> str:
        self.ran.append(payload)
        return threading.current_thread().name

    @capability
    def hold(self, payload: Any) -> Any:
        self.holding.set()
        self.gate.wait(5)
        return payload


class Sleeper(AsyncRecorder):
    """``hang`` sets ``started`` first, so a test knows the coroutine runs before it cancels it."""

    def __init__(self, plugin_id: str) -> None:
        super().__init__(plugin_id, TrustLevel.TRUSTED)
        self.started = threading.Event()

    async def sleep_until_cancelled(self) -> None:
        self.started.set()
        await super().sleep_until_cancelled()


class OwnTimeout(PluginBase):
    info = make_info("own-timeout", TrustLevel.TRUSTED)

    @capability
    async def scan(self, payload: Any) -> Any:
        raise TimeoutError("the plugin's own upstream timed out")


def test_a_builtin_call_runs_inline_and_its_future_is_done_at_once(host: PluginHost, release: threading.Event) -> None:
    host.add_plugin(Gated("inline", TrustLevel.BUILTIN, release))
    host.start_plugins()
    future = host.submit("inline", "where", 1)
    assert future.done()
    assert future.result() == threading.current_thread().name


def test_a_trusted_call_runs_on_the_hosts_executor_and_is_counted(host: PluginHost, release: threading.Event) -> None:
    host.add_plugin(Gated("monitored", TrustLevel.TRUSTED, release))
    host.start_plugins()
    assert host.submit("monitored", "where", 1).result(5).startswith("plugin-pool-submit")
    client = host.get_client("monitored")
    assert client.submit("where", 2).result(5).startswith("plugin-pool-submit")
    stats = host.get_plugin_health("monitored").stats
    assert stats is not None and stats.calls == 2


def test_every_error_invoke_raises_is_set_on_the_future(host: PluginHost) -> None:
    host.add_plugin(Recorder("echo", TrustLevel.TRUSTED))
    host.add_plugin(Recorder("idle"))
    host.start_plugin("echo")
    with pytest.raises(PluginCallError, match="cannot scan 3") as caught:
        host.submit("echo", "fail", 3).result(5)
    assert isinstance(caught.value.__cause__, ValueError)
    with pytest.raises(PluginNotFoundError):
        host.submit("ghost", "scan").result(5)
    with pytest.raises(PluginNotActiveError):
        host.submit("idle", "scan").result(5)
    with pytest.raises(CapabilityDeniedError):
        host.submit("echo", "teleport").result(5)
    assert [e.details["capability"] for e in host.registry.list_events(event=EventKind.CAPABILITY_DENIED)] == [
        "teleport"
    ]


def test_a_bad_timeout_is_refused_at_once(host: PluginHost) -> None:
    host.add_plugin(Recorder("echo"))
    host.start_plugins()
    for bad in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="timeout_s"):
            host.submit("echo", "scan", 1, timeout_s=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout_s"):
            host.invoke("echo", "scan", 1, timeout_s=bad)  # type: ignore[arg-type]


def test_a_call_waiting_for_a_thread_past_its_deadline_never_runs(make_host: MakeHost) -> None:
    gate = threading.Event()
    host = make_host({"host": {"submit_threads": 1}})
    plugin = Gated("busy", TrustLevel.TRUSTED, gate)
    host.add_plugin(plugin)
    host.start_plugins()
    holding = host.submit("busy", "hold", "first")
    assert plugin.holding.wait(5)  # the only submit thread is taken
    queued = host.submit("busy", "where", "late", timeout_s=0.01)
    waiting = host.submit("busy", "where", "patient")
    cancelled = host.submit("busy", "where", "cancelled")
    assert cancelled.cancel()
    threading.Event().wait(0.05)  # the late call's deadline passes while the thread is held
    gate.set()
    assert holding.result(5) == "first"
    with pytest.raises(QueueTimeoutError) as caught:
        queued.result(5)
    assert caught.value.started is False and caught.value.waited_s >= 0.01
    assert waiting.result(5).startswith("plugin-pool-submit")
    with pytest.raises(CancelledError):
        cancelled.result(5)
    assert plugin.ran == ["patient"]  # neither the late nor the cancelled call ran


def test_async_calls_time_out_by_call_and_cancel_when_the_future_is_cancelled(host: PluginHost) -> None:
    plugin = Sleeper("async-echo")
    host.add_plugin(plugin)
    host.start_plugins()
    assert host.submit("async-echo", "scan", 5).result(5) == {"plugin": "async-echo", "payload": 5}
    with pytest.raises(CallTimeoutError) as caught:
        host.invoke("async-echo", "hang", timeout_s=0.05)
    assert (caught.value.timeout_s, caught.value.started) == (0.05, True)
    assert plugin.cancelled.wait(5)
    plugin.cancelled.clear()
    with pytest.raises(CallTimeoutError):
        host.submit("async-echo", "hang", timeout_s=0.05).result(5)
    assert plugin.cancelled.wait(5)
    plugin.cancelled.clear()
    plugin.started.clear()
    running = host.submit("async-echo", "hang")
    assert plugin.started.wait(5)
    assert running.cancel()  # an async call is cancelled even while it runs
    assert plugin.cancelled.wait(5)
    with pytest.raises(PluginCallError, match="KeyError"):
        host.submit("async-echo", "fail", "k").result(5)
    stats = host.get_plugin_health("async-echo").stats
    assert stats is not None and (stats.calls, stats.errors) == (4, 3)  # the cancelled call is not counted


def test_a_plugins_own_timeout_error_is_its_error_not_a_deadline(host: PluginHost) -> None:
    host.add_plugin(OwnTimeout())
    host.start_plugins()
    with pytest.raises(PluginCallError, match="upstream timed out"):
        host.invoke("own-timeout", "scan", 1)
    with pytest.raises(PluginCallError, match="upstream timed out"):
        host.submit("own-timeout", "scan", 1).result(5)


def test_map_and_submit_many_run_one_batch_and_name_the_failing_item(host: PluginHost) -> None:
    host.add_plugin(Recorder("plain"))
    host.add_plugin(Recorder("watched", TrustLevel.TRUSTED))
    host.start_plugins()
    for plugin_id in ("plain", "watched"):
        assert list(host.map(plugin_id, "scan", [1, 2, 3])) == [{"plugin": plugin_id, "payload": n} for n in (1, 2, 3)]
        assert host.submit_many(plugin_id, "scan", []).result(5) == []
        with pytest.raises(PluginCallError) as caught:
            list(host.map(plugin_id, "fail", ["a", "b"]))
        assert caught.value.index == 0
    assert host.get_client("plain").map("scan", [7]).__next__() == {"plugin": "plain", "payload": 7}
    with pytest.raises(PluginNotFoundError):
        list(host.map("ghost", "scan", [1]))


def test_invoke_many_takes_a_timeout_per_call(host: PluginHost) -> None:
    host.add_plugin(AsyncRecorder("async-echo"))
    host.start_plugins()
    assert host.invoke_many("async-echo", "scan", [1], timeout_s=1.0) == [{"plugin": "async-echo", "payload": 1}]
    with pytest.raises(CallTimeoutError):
        host.invoke_many("async-echo", "hang", [1], timeout_s=0.05)


def test_calls_on_a_closed_host_fail_in_the_future(make_host: MakeHost) -> None:
    host = make_host()
    host.add_plugin(Recorder("echo"))
    host.start_plugins()
    host.close()
    with pytest.raises(HostClosedError):
        host.submit("echo", "scan").result(5)
