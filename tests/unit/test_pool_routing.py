"""Routing, batching, spares and the budget of ``SandboxPool``, with a fake supervisor (no processes, no sockets).

The fake's workers run the real worker-side call loop (``WorkerServicer.serve_calls``: the real codec, batches
and progress cell) on threads; only the transport and the processes are fake. Every wait is bounded.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _fake_sandbox import FakeSupervisor, die, hang

from plugin_pool.config import load_config
from plugin_pool.errors import (
    CallTimeoutError,
    PluginCallError,
    PoolOverloadedError,
    ResourceLimitError,
    SandboxError,
    WorkerCrashedError,
)
from plugin_pool.sandbox.pool import SandboxPool
from plugin_pool.sandbox.worker_client import WorkerPlan

WAIT_S = 5.0


def wait_until(predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


class Plugin:
    """The fake plugin every worker runs: its calls are recorded, some block until released."""

    def __init__(self) -> None:
        self.ran: Counter[str] = Counter()
        self.order: list[str] = []
        self.gate = threading.Event()
        self.lock = threading.Lock()

    def act(self, payload: Any) -> Any:
        op, tag = payload["op"], payload.get("tag", "")
        with self.lock:
            self.ran[tag] += 1
            self.order.append(tag)
        if op == "wait":
            assert self.gate.wait(WAIT_S)
        elif op == "die":
            die()
        elif op == "hang":
            hang()
        elif op == "raise":
            raise ValueError(f"bad {tag}")
        elif op == "memory":
            raise MemoryError
        return {"tag": tag, "n": payload.get("n")}

    def methods(self) -> dict[str, Callable[[Any], Any]]:
        return {"act": self.act, "echo": lambda payload: payload}


class Rig:
    """A pool on a fake supervisor, the plugin its workers run, and what the pool reported."""

    def __init__(self, **sandbox: Any) -> None:
        settings = {"restart_backoff_s": 0.0, "recycle_jitter": 0.0, "spare_workers": 0, **sandbox}
        self.config = load_config(overrides={"sandbox": settings}).sandbox
        self.plugin = Plugin()
        self.fake = FakeSupervisor(self.config, self.plugin.methods())
        self.restarts: Counter[tuple[str, str]] = Counter()
        self.failed: dict[str, str] = {}
        self.pool = SandboxPool(
            self.config,
            supervisor=self.fake,
            on_restart=lambda plugin_id, reason: self.restarts.update([(plugin_id, reason)]),
            on_plugin_failed=self.failed.__setitem__,
        ).open()

    def start(self, plugin_id: str = "fake", *, low: int = 1, high: int = 1) -> None:
        plan = WorkerPlan(
            plugin_id=plugin_id,
            plugin_dir=Path("/nonexistent"),
            entry="fake:Fake",
            capabilities=("act", "echo"),
            config_json=b"{}",
            services=(),
            initialize_timeout_s=1.0,
            start_timeout_s=1.0,
        )
        self.pool.start_plugin(plan, min_workers=low, max_workers=high)

    def call(self, op: str, tag: str = "", *, plugin_id: str = "fake", timeout_s: float = WAIT_S, **extra: Any) -> Any:
        return self.pool.invoke(plugin_id, "act", {"op": op, "tag": tag, **extra}, timeout_s)

    def stats(self, plugin_id: str = "fake") -> Any:
        stats = self.pool.get_stats(plugin_id)
        assert stats is not None
        return stats

    def close(self) -> None:
        self.plugin.gate.set()
        self.pool.close()


@pytest.fixture
def rig() -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**sandbox: Any) -> Rig:
        made.append(Rig(**sandbox))
        return made[-1]

    yield make
    for one in made:
        one.close()


def block_the_workers(rig: Rig, pool: ThreadPoolExecutor, count: int) -> list[Future[Any]]:
    """``count`` calls that hold their workers until ``rig.plugin.gate`` is set."""
    futures = [pool.submit(rig.call, "wait", f"blocker{n}") for n in range(count)]
    wait_until(lambda: rig.stats().busy == count, f"{count} workers to be busy")
    return futures


def queue_calls(rig: Rig, pool: ThreadPoolExecutor, payloads: list[dict[str, Any]]) -> list[Future[Any]]:
    """Submit calls one by one, each waiting in line before the next arrives (their order is known)."""
    futures = []
    for n, payload in enumerate(payloads, start=1):
        futures.append(pool.submit(rig.pool.invoke, "fake", "act", payload, WAIT_S))
        wait_until(lambda n=n: rig.stats().waiting == n, f"{n} calls to wait")
    return futures


# -- routing ----------------------------------------------------------------------------------------------


def test_a_call_takes_the_most_recently_used_idle_worker(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.start(low=2, high=2)
    for n in range(6):
        assert r.call("echo", f"c{n}", n=n) == {"tag": f"c{n}", "n": n}
    frames = sorted(r.fake.frames_of(h) for h in r.fake.live())
    assert frames == [0, 6]  # warm workers stay warm
    assert r.stats().calls == 6 and r.stats().batched == 0


def test_waiting_calls_get_a_worker_in_arrival_order(rig: Callable[..., Rig]) -> None:
    r = rig(max_batch=1)
    r.start()
    with ThreadPoolExecutor(4) as pool:
        blocker = block_the_workers(r, pool, 1)
        queued = queue_calls(r, pool, [{"op": "echo", "tag": tag} for tag in ("a", "b", "c")])
        r.plugin.gate.set()
        assert [f.result(WAIT_S)["tag"] for f in queued] == ["a", "b", "c"]
        blocker[0].result(WAIT_S)
    assert r.plugin.order == ["blocker0", "a", "b", "c"]
    assert r.stats().batched == 0


def test_a_full_queue_refuses_at_once(rig: Callable[..., Rig]) -> None:
    r = rig(queue_limit=1)
    r.start()
    with ThreadPoolExecutor(3) as pool:
        block_the_workers(r, pool, 1)
        queue_calls(r, pool, [{"op": "echo", "tag": "waits"}])
        with pytest.raises(PoolOverloadedError, match="1 calls are waiting"):
            r.call("echo", "refused")
        r.plugin.gate.set()
    assert r.plugin.ran["refused"] == 0


# -- dynamic batching ----------------------------------------------------------------------------------


def test_waiting_calls_ride_in_one_frame_and_each_gets_its_own_result_or_error(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.start()
    (worker,) = r.fake.live()
    with ThreadPoolExecutor(6) as pool:
        blocker = block_the_workers(r, pool, 1)
        payloads = [
            {"op": "echo", "tag": "a", "n": 1},
            {"op": "echo", "tag": "b", "n": 2},
            {"op": "raise", "tag": "c"},
            {"op": "echo", "tag": "d", "n": 4},
        ]
        futures = queue_calls(r, pool, payloads)
        r.plugin.gate.set()
        blocker[0].result(WAIT_S)
        assert futures[0].result(WAIT_S) == {"tag": "a", "n": 1}
        assert futures[1].result(WAIT_S) == {"tag": "b", "n": 2}
        with pytest.raises(PluginCallError) as caught:
            futures[2].result(WAIT_S)
        assert futures[3].result(WAIT_S) == {"tag": "d", "n": 4}
    assert (caught.value.remote_type, caught.value.remote_message, caught.value.index) == ("ValueError", "bad c", None)
    assert r.fake.frames_of(worker) == 2  # the blocker, then the four calls in one frame
    assert r.stats().batched == 3 and r.stats().calls == 5
    assert r.plugin.ran == Counter(blocker0=1, a=1, b=1, c=1, d=1)


def test_no_batch_when_a_worker_is_idle(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.start(low=2, high=2)
    with ThreadPoolExecutor(2) as pool:
        for _ in range(20):  # two callers, two workers: each call finds an idle worker and goes alone
            list(pool.map(lambda n: r.call("echo", str(n)), range(2)))
    assert r.stats().batched == 0
    assert r.stats().calls == 40


def test_no_batch_while_the_pool_can_still_grow(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.start(low=1, high=3)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(r.call, "wait", f"w{n}") for n in range(3)]
        wait_until(lambda: r.stats().busy == 3, "the pool to grow to three busy workers")
        r.plugin.gate.set()
        for future in futures:
            future.result(WAIT_S)
    assert r.stats().batched == 0


def test_a_crash_in_a_batch_fails_only_the_call_the_worker_died_in(rig: Callable[..., Rig]) -> None:
    r = rig(spare_workers=1)
    r.start()
    wait_until(lambda: r.stats().spares == 1, "the spare")
    with ThreadPoolExecutor(6) as pool:
        blocker = block_the_workers(r, pool, 1)
        payloads = [{"op": "echo", "tag": "before"}, {"op": "die", "tag": "poison"}]
        payloads += [{"op": "echo", "tag": "after1"}, {"op": "echo", "tag": "after2"}]
        futures = queue_calls(r, pool, payloads)
        r.plugin.gate.set()
        blocker[0].result(WAIT_S)
        assert futures[0].result(WAIT_S) == {"tag": "before", "n": None}
        with pytest.raises(WorkerCrashedError) as caught:
            futures[1].result(WAIT_S)
        assert [f.result(WAIT_S)["tag"] for f in futures[2:]] == ["after1", "after2"]
    assert caught.value.capability == "act"
    # The poisoned call ran once (counted once); the one before it had run and ran again; those after it never
    # started and ran once, alone.
    assert r.plugin.ran == Counter(blocker0=1, before=2, poison=1, after1=1, after2=1)
    wait_until(lambda: r.restarts == Counter({("fake", "crash"): 1}), "one crash restart")


def test_with_on_crash_fail_every_call_of_a_lost_batch_gets_the_crash_error(rig: Callable[..., Rig]) -> None:
    r = rig(on_crash="fail")
    r.start()
    with ThreadPoolExecutor(4) as pool:
        block_the_workers(r, pool, 1)
        futures = queue_calls(r, pool, [{"op": "die", "tag": "poison"}, {"op": "echo", "tag": "innocent"}])
        r.plugin.gate.set()
        for future in futures:
            with pytest.raises(WorkerCrashedError):
                future.result(WAIT_S)
    assert r.plugin.ran["innocent"] == 0


def test_a_memory_error_in_a_batch_stops_it_and_the_rest_run_elsewhere(rig: Callable[..., Rig]) -> None:
    r = rig(spare_workers=1)
    r.start()
    wait_until(lambda: r.stats().spares == 1, "the spare")
    with ThreadPoolExecutor(4) as pool:
        block_the_workers(r, pool, 1)
        futures = queue_calls(r, pool, [{"op": "memory", "tag": "big"}, {"op": "echo", "tag": "next"}])
        r.plugin.gate.set()
        with pytest.raises(ResourceLimitError) as caught:
            futures[0].result(WAIT_S)
        assert futures[1].result(WAIT_S)["tag"] == "next"
    assert caught.value.limit == "memory"
    assert r.plugin.ran == Counter(blocker0=1, big=1, next=1)  # not run by the worker that hit its limit
    wait_until(lambda: r.restarts == Counter({("fake", "memory"): 1}), "the worker to be recycled")


# -- deadlines ---------------------------------------------------------------------------------------------


def test_a_call_past_its_deadline_gets_its_worker_killed(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.start()
    (worker,) = r.fake.live()
    started = time.monotonic()
    with pytest.raises(CallTimeoutError) as caught:
        r.call("hang", "late", timeout_s=0.2)
    assert 0.19 <= time.monotonic() - started < 2.0
    assert (caught.value.pid, caught.value.timeout_s) == (worker.pid, 0.2)
    assert worker.killed_for == "timeout"
    wait_until(lambda: r.restarts == Counter({("fake", "timeout"): 1}), "the timeout restart")
    assert r.call("echo", "after")["tag"] == "after"


def test_the_call_whose_deadline_fired_fails_and_the_others_of_its_batch_run_again(rig: Callable[..., Rig]) -> None:
    r = rig(spare_workers=1)
    r.start()
    wait_until(lambda: r.stats().spares == 1, "the spare")
    with ThreadPoolExecutor(4) as pool:
        block_the_workers(r, pool, 1)
        hung = pool.submit(r.pool.invoke, "fake", "act", {"op": "hang", "tag": "hung"}, 0.5)
        wait_until(lambda: r.stats().waiting == 1, "the hanging call to wait")
        rider = pool.submit(r.pool.invoke, "fake", "act", {"op": "echo", "tag": "rider"}, WAIT_S)
        wait_until(lambda: r.stats().waiting == 2, "the rider to wait")
        r.plugin.gate.set()
        with pytest.raises(CallTimeoutError) as caught:
            hung.result(WAIT_S)
        assert rider.result(WAIT_S)["tag"] == "rider"
    assert caught.value.pid is not None
    wait_until(lambda: r.restarts == Counter({("fake", "timeout"): 1}), "one timeout restart")


# -- warm spares and the budget ------------------------------------------------------------------------------


def test_a_spare_takes_a_crashed_workers_place_at_once_and_a_new_one_follows(rig: Callable[..., Rig]) -> None:
    r = rig(spare_workers=1)
    r.start()
    wait_until(lambda: r.stats().spares == 1, "the spare")
    (spare,) = r.pool.list_spare_pids("fake")
    with pytest.raises(WorkerCrashedError):
        r.call("die", "poison")
    wait_until(lambda: r.pool.list_worker_pids("fake", spares=False) == [spare], "the spare to serve")
    wait_until(lambda: r.restarts == Counter({("fake", "crash"): 1}), "the restart, counted once")
    wait_until(lambda: r.stats().spares == 1 and r.pool.list_spare_pids("fake") != [spare], "a new spare")
    assert len(r.fake.spawned) == 3
    assert r.call("echo", "served")["tag"] == "served"
    assert r.restarts == Counter({("fake", "crash"): 1})


def test_stopping_a_plugin_leaves_no_spare(rig: Callable[..., Rig]) -> None:
    r = rig(spare_workers=2)
    r.start(low=2, high=2)
    wait_until(lambda: r.stats().spares == 2, "two spares")
    assert len(r.pool.list_worker_pids("fake")) == 4
    assert r.pool.stop_plugin("fake", timeout_s=1.0) is None
    assert r.fake.live() == []
    assert r.pool.get_stats("fake") is None
    assert r.pool._manager.budget.used == 0


def test_spares_count_toward_the_budget_and_give_way_to_another_plugins_worker(rig: Callable[..., Rig]) -> None:
    r = rig(spare_workers=1, max_total_workers=3)
    r.start("alpha")
    wait_until(lambda: r.stats("alpha").spares == 1, "alpha's spare")
    r.start("beta")
    time.sleep(0.05)
    assert r.stats("beta").spares == 0  # no slot left for beta's spare
    assert r.pool._manager.budget.used == 3
    r.start("gamma")  # alpha's spare gives way
    assert r.stats("alpha").spares == 0
    assert r.call("echo", "g", plugin_id="gamma")["tag"] == "g"
    with pytest.raises(SandboxError, match=r"needs 1 workers but only 0 of sandbox\.max_total_workers are free"):
        r.start("delta")
    assert len(r.fake.live()) == 3


def test_a_plugin_started_while_spares_retire_slowly_asks_only_as_many_as_it_needs(rig: Callable[..., Rig]) -> None:
    # A spare that gives way takes a while to exit (its stop() runs first): the starting plugin must wait for
    # it, not fail at once, and must not evict every other spare meanwhile.
    r = rig(spare_workers=1, max_total_workers=8)
    for name in ("a", "b", "c", "d"):
        r.start(name)
        wait_until(lambda name=name: r.stats(name).spares == 1, f"{name}'s spare")
    assert r.pool._manager.budget.used == 8
    r.fake.retire_s = 0.3
    r.start("e")
    assert r.call("echo", "e", plugin_id="e")["tag"] == "e"
    assert sum(r.stats(name).spares for name in ("a", "b", "c", "d")) == 3  # exactly one gave way
    assert r.stats("e").spares == 0


def test_a_spare_steps_in_when_calls_wait_and_the_pool_may_grow(rig: Callable[..., Rig]) -> None:
    r = rig(spare_workers=1)
    r.start(low=1, high=2)
    wait_until(lambda: r.stats().spares == 1, "the spare")
    (spare,) = r.pool.list_spare_pids("fake")
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(r.call, "wait", f"w{n}") for n in range(2)]
        wait_until(lambda: r.stats().busy == 2, "both calls to run")
        assert spare in r.pool.list_worker_pids("fake", spares=False)
        r.plugin.gate.set()
        for future in futures:
            future.result(WAIT_S)
    assert r.restarts == Counter()  # growing is not a replacement


# -- invoke_many -------------------------------------------------------------------------------------------


def test_invoke_many_cuts_large_items_by_bytes_and_spreads_them(rig: Callable[..., Rig]) -> None:
    r = rig(chunk_mb=0.01)  # about 10 KiB a chunk
    r.start(low=2, high=2)
    items = [f"{n:04d}" + "x" * 4096 for n in range(10)]
    assert r.pool.invoke_many("fake", "echo", items, WAIT_S) == items
    assert sorted(r.fake.frames_of(h) for h in r.fake.live()) != [0, 5]
    assert sum(r.fake.frames_of(h) for h in r.fake.live()) == 5  # two items a chunk, on both workers
    assert r.stats().calls == 5


def test_invoke_many_raises_the_lowest_failing_index(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.start(low=2, high=2)
    payloads = [{"op": "echo", "tag": str(n)} for n in range(12)]
    payloads[9] = {"op": "raise", "tag": "nine"}
    payloads[4] = {"op": "raise", "tag": "four"}
    with pytest.raises(PluginCallError) as caught:
        r.pool.invoke_many("fake", "act", payloads, WAIT_S, chunk_size=3)
    assert (caught.value.index, caught.value.remote_message) == (4, "bad four")
    assert r.stats().busy == 0 and r.stats().idle == 2  # every worker given back
