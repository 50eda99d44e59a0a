"""Calls on streams, dynamic batching, warm spares and chunking by bytes, with real confined workers.

Each test runs a real host (the chaos plugin in ``plugins/chaos`` misbehaves on request); processes are
checked with psutil; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
from _hosts import is_gone, live_children
from _pool_helpers import as_seen_inside, wait_until, worker_pids, zygote_pid

from plugin_pool import PluginHost
from plugin_pool.errors import CallTimeoutError, PluginCallError, WorkerCrashedError
from plugin_pool.sandbox.worker_client import WorkerHandle

pytestmark = [pytest.mark.sandbox]

HostFactory = Callable[..., PluginHost]
PluginFactory = Callable[..., Path]
ONE = {"min_workers": 1, "max_workers": 1}


def handle_of(host: PluginHost, plugin_id: str, pid: int) -> WorkerHandle:
    """The pool's handle of one worker (to reach its stream from the outside)."""
    assert host.sandbox is not None
    group = host.sandbox._manager.get_group(plugin_id)
    assert group is not None
    return next(w.handle for w in group.workers.values() if w.handle.pid == pid)


def serving(host: PluginHost, plugin_id: str) -> list[int]:
    assert host.sandbox is not None
    return host.sandbox.list_worker_pids(plugin_id, spares=False)


def queue_behind(host: PluginHost, plugin_id: str, pool: ThreadPoolExecutor, payloads: list[Any]) -> list[Future[Any]]:
    """Calls that wait in line behind a busy worker, in this order."""
    assert host.sandbox is not None
    futures = []
    for n, payload in enumerate(payloads, start=1):
        futures.append(pool.submit(host.invoke, plugin_id, "act", payload))
        wait_until(lambda n=n: host.sandbox.get_stats(plugin_id).waiting == n, f"{n} calls to wait")
    return futures


# -- calls on a stream -------------------------------------------------------------------------------------


def test_a_deadline_passed_mid_stream_kills_the_worker_and_calls_go_on(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host({"spare_workers": 1}, call_timeout_s=0.5)
    host.add_plugin_dir(make_plugin("deadline", pool=ONE))
    host.start_plugins()
    (pid,) = serving(host, "deadline")
    assert [host.invoke("deadline", "act", {"op": "double", "n": n}) for n in range(5)] == [0, 2, 4, 6, 8]
    with pytest.raises(CallTimeoutError) as caught:
        host.invoke("deadline", "act", {"op": "sleep", "s": 3})  # the stream has carried five calls already
    assert (caught.value.pid, caught.value.timeout_s) == (pid, 0.5)
    wait_until(lambda: is_gone(pid), "the worker to be killed")
    assert host.invoke("deadline", "act", {"op": "double", "n": 21}) == 42
    wait_until(lambda: host.restarts == Counter({("deadline", "timeout"): 1}), "one timeout restart")


def test_a_worker_killed_mid_stream_fails_only_the_call_on_it(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host()
    host.add_plugin_dir(make_plugin("killed", pool={"min_workers": 2, "max_workers": 2}))
    host.start_plugins()
    pids = serving(host, "killed")
    inside = as_seen_inside(pids)
    with ThreadPoolExecutor(2) as pool:
        calls = [pool.submit(host.invoke, "killed", "act", {"op": "sleep", "s": 0.5}) for _ in range(2)]
        wait_until(lambda: host.sandbox.get_stats("killed").busy == 2, "both calls in flight")
        os.kill(pids[0], signal.SIGKILL)
        outcomes: list[Any] = []
        for call in calls:
            try:
                outcomes.append(call.result(5))
            except WorkerCrashedError as exc:
                outcomes.append(exc)
    crashed = [o for o in outcomes if isinstance(o, WorkerCrashedError)]
    assert len(crashed) == 1 and (crashed[0].pid, crashed[0].signal) == (pids[0], 9)
    assert [o for o in outcomes if isinstance(o, dict)] == [{"pid": inside[pids[1]], "calls": 1}]
    wait_until(lambda: host.restarts == Counter({("killed", "crash"): 1}), "one crash restart")
    assert host.invoke("killed", "act", {"op": "double", "n": 2}) == 4


def test_a_worker_whose_server_stopped_is_a_lost_worker_and_is_replaced(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host()
    host.add_plugin_dir(make_plugin("restarted", pool=ONE))
    host.start_plugins()
    (pid,) = serving(host, "restarted")
    assert host.invoke("restarted", "act", {"op": "double", "n": 1}) == 2
    client = handle_of(host, "restarted", pid).client
    assert client is not None
    client.shutdown_future(1.0).result(5)  # its gRPC server stops under its open call stream
    wait_until(lambda: is_gone(pid), "the worker to exit")
    fresh = wait_until(lambda: [p for p in serving(host, "restarted") if p != pid], "a replacement")
    assert host.invoke("restarted", "act", {"op": "double", "n": 2}) == 4
    assert psutil.Process(fresh[0]).ppid() == zygote_pid(host)
    wait_until(lambda: host.restarts == Counter({("restarted", "crash"): 1}), "the replacement to be counted")


def test_a_stream_broken_under_a_live_worker_loses_that_worker(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host()
    host.add_plugin_dir(make_plugin("broken", pool=ONE))
    host.start_plugins()
    (pid,) = serving(host, "broken")
    client = handle_of(host, "broken", pid).client
    assert client is not None
    client.cancel()  # the host's end of the stream breaks; the process lives on
    with pytest.raises(WorkerCrashedError) as caught:
        host.invoke("broken", "act", {"op": "double", "n": 1})
    assert caught.value.pid == pid
    wait_until(lambda: is_gone(pid), "the worker to be killed")
    assert host.invoke("broken", "act", {"op": "double", "n": 3}) == 6


# -- dynamic batching ----------------------------------------------------------------------------------


def test_calls_waiting_for_a_busy_worker_ride_together_each_with_its_own_result_or_error(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host()
    host.add_plugin_dir(make_plugin("batched", pool=ONE))
    host.start_plugins()
    (pid,) = serving(host, "batched")
    inside = as_seen_inside([pid])[pid]
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(host.invoke, "batched", "act", {"op": "sleep", "s": 0.3})
        wait_until(lambda: host.sandbox.get_stats("batched").busy == 1, "the first call in flight")
        payloads = [{"op": "double", "n": 1}, {"op": "raise", "n": 2}, {"op": "pid"}, {"op": "double", "n": 4}]
        futures = queue_behind(host, "batched", pool, payloads)
        assert first.result(5) == {"pid": inside, "calls": 1}
        assert futures[0].result(5) == 2
        with pytest.raises(PluginCallError) as caught:
            futures[1].result(5)
        assert futures[2].result(5) == {"pid": inside, "calls": 4}  # the fourth call the worker ran
        assert futures[3].result(5) == 8
    assert (caught.value.remote_type, caught.value.remote_message) == ("ValueError", "bad item 2")
    stats = host.sandbox.get_stats("batched")
    assert stats.batched == 3 and stats.calls == 5
    assert host.restarts == Counter()


def test_no_batch_when_a_worker_is_idle(open_host: HostFactory, make_plugin: PluginFactory) -> None:
    host = open_host()
    host.add_plugin_dir(make_plugin("alone", pool={"min_workers": 2, "max_workers": 2}))
    host.start_plugins()
    for n in range(30):
        assert host.invoke("alone", "act", {"op": "double", "n": n}) == 2 * n
    assert host.sandbox.get_stats("alone").batched == 0


def test_a_crash_in_a_batch_fails_only_the_poisoned_call_and_counts_once(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host({"spare_workers": 1})
    host.add_plugin_dir(make_plugin("poisoned", pool=ONE))
    host.start_plugins()
    wait_until(lambda: host.sandbox.list_spare_pids("poisoned"), "the spare")
    (pid,) = serving(host, "poisoned")
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(host.invoke, "poisoned", "act", {"op": "sleep", "s": 0.3})
        wait_until(lambda: host.sandbox.get_stats("poisoned").busy == 1, "the first call in flight")
        payloads = [{"op": "double", "n": 1}, {"op": "kill"}, {"op": "double", "n": 3}, {"op": "double", "n": 4}]
        futures = queue_behind(host, "poisoned", pool, payloads)
        first.result(5)
        assert futures[0].result(5) == 2
        with pytest.raises(WorkerCrashedError) as caught:
            futures[1].result(5)
        assert [futures[2].result(5), futures[3].result(5)] == [6, 8]
    assert (caught.value.pid, caught.value.signal, caught.value.capability) == (pid, 9, "act")
    wait_until(lambda: host.restarts == Counter({("poisoned", "crash"): 1}), "the crash, counted once")
    time.sleep(0.2)  # nothing more arrives late: the poisoned call was not run again
    assert host.restarts == Counter({("poisoned", "crash"): 1})
    assert host.is_active("poisoned")


# -- warm spares ------------------------------------------------------------------------------------------


def test_a_spare_takes_over_a_crashed_worker_and_a_new_one_is_prepared(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host({"spare_workers": 1})
    host.add_plugin_dir(make_plugin("spared", pool=ONE))
    host.start_plugins()
    (spare,) = wait_until(lambda: host.sandbox.list_spare_pids("spared"), "the spare")
    (pid,) = serving(host, "spared")
    zygote = zygote_pid(host)
    assert sorted([pid, spare]) == live_children(zygote)
    with pytest.raises(WorkerCrashedError):
        host.invoke("spared", "act", {"op": "kill"})
    wait_until(lambda: serving(host, "spared") == [spare], "the spare to serve")
    assert host.invoke("spared", "act", {"op": "pid"}) == {"pid": as_seen_inside([spare])[spare], "calls": 1}
    (fresh,) = wait_until(lambda: host.sandbox.list_spare_pids("spared"), "a new spare")
    assert fresh not in (pid, spare) and psutil.Process(fresh).ppid() == zygote
    wait_until(lambda: host.restarts == Counter({("spared", "crash"): 1}), "one restart")
    assert sorted([spare, fresh]) == live_children(zygote)


def test_stopping_a_plugin_leaves_no_spare_behind(open_host: HostFactory, make_plugin: PluginFactory) -> None:
    host = open_host({"spare_workers": 2})
    host.add_plugin_dir(make_plugin("stopped", pool=ONE))
    host.add_plugin_dir(make_plugin("kept", pool=ONE))
    host.start_plugins()
    wait_until(lambda: len(host.sandbox.list_spare_pids("stopped")) == 2, "two spares")
    wait_until(lambda: len(host.sandbox.list_spare_pids("kept")) == 2, "the other plugin's spares")
    pids = worker_pids(host, "stopped")
    kept = worker_pids(host, "kept")
    assert len(pids) == 3
    host.stop_plugin("stopped")
    wait_until(lambda: all(is_gone(p) for p in pids), "the plugin's workers and spares to exit")
    assert live_children(zygote_pid(host)) == kept
    assert worker_pids(host, "stopped") == []
    assert host.restarts == Counter()


# -- invoke_many -------------------------------------------------------------------------------------------


def test_invoke_many_cuts_large_items_by_bytes_and_spreads_them_over_the_workers(
    open_host: HostFactory, make_plugin: PluginFactory
) -> None:
    host = open_host({"chunk_mb": 1.0})
    host.add_plugin_dir(make_plugin("chunked", pool={"min_workers": 2, "max_workers": 2}))
    host.start_plugins()
    pad = "x" * (400 * 1024)
    before = host.sandbox.get_stats("chunked").calls
    replies = host.invoke_many("chunked", "act", [{"op": "pid", "pad": pad} for _ in range(8)])
    assert len(replies) == 8
    # Two items of 400 KiB a chunk (chunk_mb): four chunks, on both workers (before: one chunk, one worker).
    assert host.sandbox.get_stats("chunked").calls - before == 4
    assert len({r["pid"] for r in replies}) == 2
