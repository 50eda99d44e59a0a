"""Calls to Untrusted plugins beyond invoke: Futures, asyncio, per-call deadlines, real workers.

A submitted call waits in its plugin's queue without a thread of its own; at most max_workers dispatcher
threads carry calls to the pool. A call that never started fails with QueueTimeoutError (retry-safe), one
that ran past its deadline with CallTimeoutError naming the killed worker; a cancelled call that had not
started never reaches a worker.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path

import pytest
from _pool_helpers import as_seen_inside, settle, wait_until

from plugin_pool import (
    AsyncPluginHost,
    CallTimeoutError,
    PluginHost,
    PoolOverloadedError,
    QueueTimeoutError,
)

HostFactory = Callable[..., PluginHost]
PluginFactory = Callable[..., Path]


def dispatcher_threads(plugin_id: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(f"plugin-pool-call-{plugin_id}")]


def test_many_submitted_calls_use_at_most_max_workers_threads(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host()
    host.add_plugin_dir(make_plugin("wide", pool={"min_workers": 1, "max_workers": 2}))
    host.start_plugins()
    futures = [host.submit("wide", "echo", {"n": n}) for n in range(250)]  # below sandbox.queue_limit (256)
    assert [f.result(30) for f in futures] == [{"n": n} for n in range(250)]
    assert 1 <= len(dispatcher_threads("wide")) <= 2
    assert list(host.map("wide", "echo", range(1000))) == list(range(1000))
    assert host.submit_many("wide", "act", [{"op": "double", "n": 4}]).result(10) == [8]
    assert len(host.list_worker_pids("wide")) == 2  # the pool grew to max_workers under the burst
    confinement = host.get_confinement()
    assert confinement is not None and "applied" in confinement


def test_a_call_waiting_past_its_deadline_never_runs_and_one_running_past_it_is_killed(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host()
    host.add_plugin_dir(make_plugin("single", pool={"min_workers": 1, "max_workers": 1}))
    host.start_plugins()
    (pid,) = host.list_worker_pids("single")
    inside = as_seen_inside([pid])[pid]  # the worker's own pid, as its PID namespace numbers it
    busy = host.submit("single", "act", {"op": "sleep", "s": 0.6})
    wait_until(lambda: host.sandbox is not None and host.sandbox.get_stats("single").busy == 1, "the worker busy")
    # Waiting in the dispatcher queue (submit) and in the pool's queue (invoke from another thread).
    queued = host.submit("single", "act", {"op": "pid"}, timeout_s=0.1)
    cancelled = host.submit("single", "act", {"op": "pid"})
    assert cancelled.cancel()
    with pytest.raises(QueueTimeoutError) as waited:
        host.invoke("single", "act", {"op": "pid"}, timeout_s=0.1)
    assert waited.value.started is False and waited.value.pid is None
    with pytest.raises(QueueTimeoutError) as caught:
        queued.result(10)
    assert caught.value.started is False
    with pytest.raises(CancelledError):
        cancelled.result(10)
    assert busy.result(10) == {"pid": inside, "calls": 1}
    # Neither the late, nor the cancelled, nor the pool-queued call ran: this is the worker's second call.
    assert host.invoke("single", "act", {"op": "pid"}) == {"pid": inside, "calls": 2}

    with pytest.raises(CallTimeoutError) as killed:
        host.submit("single", "act", {"op": "sleep", "s": 10}, timeout_s=0.3).result(10)
    assert type(killed.value) is CallTimeoutError
    assert (killed.value.started, killed.value.pid, killed.value.timeout_s) == (True, pid, 0.3)
    wait_until(lambda: host.restarts["single", "timeout"] == 1, "the killed worker's replacement")
    settle(host)
    assert host.restarts == {("single", "timeout"): 1}


def test_submitted_calls_beyond_the_queue_limit_are_refused_at_once(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host({"queue_limit": 2})
    host.add_plugin_dir(make_plugin("narrow", pool={"min_workers": 1, "max_workers": 1}))
    host.start_plugins()
    gate = time.time() + 0.5
    running = host.submit("narrow", "act", {"op": "sleep_until", "t": gate})
    wait_until(lambda: host.sandbox is not None and host.sandbox.get_stats("narrow").busy == 1, "the worker busy")
    waiting = [host.submit("narrow", "echo", n) for n in range(2)]
    refused = host.submit("narrow", "echo", "one too many")
    assert refused.done()
    with pytest.raises(PoolOverloadedError, match=r"sandbox\.queue_limit"):
        refused.result()
    running.result(10)
    assert [f.result(10) for f in waiting] == [0, 1]


def test_awaited_calls_to_an_untrusted_plugin_and_a_cancelled_await(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host()
    host.add_plugin_dir(make_plugin("awaited", pool={"min_workers": 1, "max_workers": 1}))
    host.start_plugins()
    (pid,) = host.list_worker_pids("awaited")
    inside = as_seen_inside([pid])[pid]

    async def main() -> None:
        ahost = AsyncPluginHost(host)
        assert await asyncio.gather(*(ahost.invoke("awaited", "echo", n) for n in range(200))) == list(range(200))
        busy = asyncio.ensure_future(ahost.invoke("awaited", "act", {"op": "sleep", "s": 0.3}))
        while host.sandbox is None or host.sandbox.get_stats("awaited").busy != 1:
            await asyncio.sleep(0.002)  # the loop turns while the worker is busy
        queued = asyncio.ensure_future(ahost.invoke("awaited", "act", {"op": "pid"}))
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert (await busy)["calls"] == 1
        assert await ahost.invoke("awaited", "act", {"op": "pid"}) == {"pid": inside, "calls": 2}
        assert await ahost.invoke_many("awaited", "echo", [1, 2, 3]) == [1, 2, 3]

    asyncio.run(main())
