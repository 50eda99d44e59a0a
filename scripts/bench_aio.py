#!/usr/bin/env python3
"""Benchmark asyncio callers against threads calling ``invoke``, on one Untrusted plugin, in the same run.

    .venv/bin/python scripts/bench_aio.py            # ~30 s, print the tables
    .venv/bin/python scripts/bench_aio.py --quick    # ~10 s
    .venv/bin/python scripts/bench_aio.py --write    # also replace the aio section of docs/benchmarks.md

The plugin is scripts/bench_plugins/echo (an Untrusted capability returning its payload, 2 workers). Each
round makes CALLS calls of 200 B ``bytes`` both ways, interleaved (the order alternates):

- threads: 4 threads, each calling ``host.invoke`` one call after the other (the sync API's usual shape);
- awaits: one event loop running 1,000 tasks, each awaiting ``AsyncPluginHost.invoke`` one call after the
  other, so 1,000 awaits are in flight at once (``sandbox.queue_limit`` is raised to hold them).

For each: calls per second (the round's calls over its wall time), per-call latency p50/p99 (an await's
latency includes its wait in the queue, as a thread's includes its wait for a worker), the most threads
alive in the process during the run (an await must not cost a thread), and, for the awaits, the event
loop's lag: a ticker task asks to wake every 1 ms and records how late it woke (a blocked loop shows here).
Figures are medians over rounds; ratios compare figures of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _benchdoc import Section, Target, fmt_ratio, fmt_s, make_section, mark, measured_on, new_parser, run_alone

PLUGIN_DIR = Path(__file__).resolve().parent / "bench_plugins" / "echo"
PLUGIN_ID = "bench-echo"
THREADS = 4
AWAITS = 1_000
PAYLOAD = b"x" * 200
THREADS_NAME = f"{THREADS} threads calling host.invoke"
AWAITS_NAME = f"{AWAITS:,} concurrent awaits on one event loop"


@dataclass
class Round:
    """One variant's figures in one round."""

    seconds: float
    latencies_s: list[float]
    max_threads: int
    lag_s: list[float] = field(default_factory=list)

    def calls_per_s(self) -> float:
        return len(self.latencies_s) / self.seconds


@dataclass(frozen=True)
class AioRun:
    """Every round of both variants, and how the run was made."""

    calls: int
    rounds: int
    baseline_threads: int
    """Threads alive with the host open and the plugin started, before the first call was submitted."""
    threads: list[Round]
    awaits: list[Round]


class ThreadCounter:
    """Samples ``threading.active_count()`` every millisecond while it runs; ``most`` is the highest seen."""

    def __init__(self) -> None:
        self.most = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-thread-counter", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.most = max(self.most, threading.active_count() - 1)  # less this sampler

    def __enter__(self) -> ThreadCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_threads(invoke: Callable[..., Any], calls: int) -> Round:
    """THREADS threads, each making calls/THREADS calls to ``invoke`` one after the other."""
    per_thread = calls // THREADS
    latencies: list[list[float]] = [[] for _ in range(THREADS)]
    clock = time.perf_counter

    def work(index: int) -> None:
        mine = latencies[index]
        for _ in range(per_thread):
            t0 = clock()
            invoke(PLUGIN_ID, "echo", PAYLOAD)
            mine.append(clock() - t0)

    with ThreadCounter() as counter, ThreadPoolExecutor(THREADS, thread_name_prefix="bench-caller") as pool:
        started = clock()
        for future in [pool.submit(work, i) for i in range(THREADS)]:
            future.result()
        seconds = clock() - started
    return Round(seconds, [x for part in latencies for x in part], counter.most)


def run_awaits(ahost: Any, calls: int) -> Round:
    """One event loop, AWAITS tasks each awaiting calls/AWAITS calls one after the other, and a lag ticker."""
    per_task = calls // AWAITS
    clock = time.perf_counter

    async def task(latencies: list[float]) -> None:
        for _ in range(per_task):
            t0 = clock()
            await ahost.invoke(PLUGIN_ID, "echo", PAYLOAD)
            latencies.append(clock() - t0)

    async def ticker(done: asyncio.Event, lags: list[float]) -> None:
        while not done.is_set():
            t0 = clock()
            await asyncio.sleep(0.001)
            lags.append(max(0.0, clock() - t0 - 0.001))

    async def main() -> Round:
        latencies: list[float] = []
        lags: list[float] = []
        done = asyncio.Event()
        tick = asyncio.ensure_future(ticker(done, lags))
        with ThreadCounter() as counter:
            started = clock()
            await asyncio.gather(*(task(latencies) for _ in range(AWAITS)))
            seconds = clock() - started
        done.set()
        await tick
        return Round(seconds, latencies, counter.most, lags)

    return asyncio.run(main())


def measure(calls: int, rounds: int) -> AioRun:
    """Run both variants ``rounds`` times, alternating which goes first. Blocks (seconds)."""
    from plugin_pool import AsyncPluginHost, PluginHost, load_config

    overrides = {"sandbox": {"queue_limit": 4 * AWAITS}}
    with PluginHost(load_config(overrides=overrides)) as host:
        host.add_plugin_dir(PLUGIN_DIR)
        health = host.start_plugins()
        if not health.is_active(PLUGIN_ID):
            raise SystemExit(f"the benchmark plugin did not start: {health.failed}")
        ahost = AsyncPluginHost(host)
        for _ in range(200):  # warm-up of the workers and channels
            host.invoke(PLUGIN_ID, "echo", PAYLOAD)
        baseline_threads = threading.active_count()  # before the first await: its dispatcher threads count
        run_awaits(ahost, AWAITS)
        threads: list[Round] = []
        awaits: list[Round] = []
        for n in range(rounds):
            order = (True, False) if n % 2 == 0 else (False, True)
            for use_threads in order:
                if use_threads:
                    threads.append(run_threads(host.invoke, calls))
                else:
                    awaits.append(run_awaits(ahost, calls))
    return AioRun(calls, rounds, baseline_threads, threads, awaits)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def render(run: AioRun, command: str) -> Section:
    """The aio section of docs/benchmarks.md."""
    rows = ["| callers | calls/s | p50 per call | p99 per call | most threads alive | ratio of calls/s |"]
    rows.append("|---|---:|---:|---:|---:|---:|")
    base_rate = _median([r.calls_per_s() for r in run.threads])
    figures: dict[str, tuple[float, float, float, int]] = {}
    for name, rounds in ((THREADS_NAME, run.threads), (AWAITS_NAME, run.awaits)):
        rate = _median([r.calls_per_s() for r in rounds])
        p50 = _median([_pct(r.latencies_s, 0.50) for r in rounds])
        p99 = _median([_pct(r.latencies_s, 0.99) for r in rounds])
        most = max(r.max_threads for r in rounds)
        figures[name] = (rate, p50, p99, most)
        rows.append(f"| {name} | {rate:,.0f} | {fmt_s(p50)} | {fmt_s(p99)} | {most} | {fmt_ratio(rate / base_rate)} |")
    lag_p99 = _median([_pct(r.lag_s, 0.99) for r in run.awaits])
    lag_max = max(max(r.lag_s) for r in run.awaits)
    ratio = figures[AWAITS_NAME][0] / base_rate
    extra_threads = figures[AWAITS_NAME][3] - run.baseline_threads
    targets = (
        Target(f"{AWAITS_NAME}: calls/s vs {THREADS_NAME}", fmt_ratio(ratio), ">= 0.80x", ratio >= 0.80),
        Target(
            "threads the awaits add (an await holds no thread)",
            f"{extra_threads}",
            "<= 4 (2 dispatcher threads for 2 workers, the loop's own)",
            extra_threads <= 4,
        ),
        Target("event loop lag p99 during the awaits", fmt_s(lag_p99), "<= 5 ms", lag_p99 <= 0.005),
    )
    checks = ["| target | measured | goal | met? |", "|---|---:|---|:---:|"]
    checks += [f"| {t.what} | {t.measured} | {t.target} | {mark(t.met)} |" for t in targets]
    header = (
        f"{measured_on()}, {run.rounds} rounds x {run.calls:,} calls per variant (interleaved), one Untrusted "
        f"echo plugin with 2 workers, 200 B `bytes` payloads; {run.baseline_threads} threads alive before the "
        "first await (the host's, the sandbox supervisor's, gRPC's)."
    )
    latency_ratio = figures[AWAITS_NAME][1] / figures[THREADS_NAME][1]
    reading = (
        "An await is `asyncio.wrap_future(host.submit(...))`: the call waits in the plugin's queue without a "
        "thread, and at most `max_workers` (here 2) dispatcher threads carry calls to the pool, so 1,000 awaits "
        "in flight cost the threads of 2 callers. Latency per await includes its wait in that queue (1,000 calls "
        f"share 2 workers), so its p50 is {latency_ratio:,.0f}x a thread's, whose wait is for one of 4 callers. "
        f"The event loop kept turning throughout (lag max {fmt_s(lag_max)} on this shared machine): no call "
        "blocks it."
    )
    return make_section(
        "aio",
        "asyncio: 1,000 concurrent awaits against 4 threads calling invoke (Untrusted)",
        command,
        header,
        "\n".join(rows),
        "\n".join(checks),
        reading,
        targets=targets,
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = new_parser(__doc__, "aio")
    parser.add_argument("--calls", type=int, help="calls per variant per round (default 20000, quick 5000)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, quick 1)")
    args = parser.parse_args(argv)
    args.calls = max(AWAITS, args.calls or (5_000 if args.quick else 20_000))
    args.rounds = args.rounds or (1 if args.quick else 5)
    return args


def section(args: argparse.Namespace, command: str) -> Section:
    return render(measure(args.calls, args.rounds), command)


if __name__ == "__main__":
    raise SystemExit(run_alone("bench_aio.py", parse_args, section))
