#!/usr/bin/env python3
"""Benchmark what the second isolation pass costs: the same pool with and without its new layers, same run.

    .venv/bin/python scripts/bench_isolation.py            # ~1 min, print the table
    .venv/bin/python scripts/bench_isolation.py --quick    # ~20 s
    .venv/bin/python scripts/bench_isolation.py --write    # also replace the isolation section of docs/benchmarks.md

Two pools of the same configuration run side by side, each with one worker of scripts/bench_plugins/echo:

- **all layers**: what the pool applies on this machine (a uid of its own per worker, a private root with a
  tmpfs /tmp and its own /proc, the zygote's PID namespace, memory/pids/cpu cgroups, and everything before);
- **without the new layers**: the same pool with the cgroup, PID-namespace and private-root layers switched
  off (workers still get their own uid, network namespace, rlimits, Landlock and both seccomp filters).

Measured for each, in interleaved rounds: worker start to first call (fork from the zygote, confinement,
gRPC server, plugin import, initialize, start, then one call answered), the p50 of sequential 200 B
calls, and the idle worker's USS after 20 calls and 0.3 s idle. Targets: start and call p50 within 10% of
the pool without the new layers; idle USS at most 8 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from _benchdoc import Section, Target, fmt_ratio, fmt_s, make_section, mark, measured_on, median, new_parser, run_alone

PLUGIN_DIR = Path(__file__).resolve().parent / "bench_plugins" / "echo"
NEW_LAYERS = frozenset({"cgroup", "pidns", "mountns"})
STACKS = ("all layers", "without the new layers")
PAYLOAD_BYTES = 200
USS_TARGET_MIB = 8.0
RATIO_TARGET = 1.10


@dataclasses.dataclass
class Samples:
    start_s: list[float] = dataclasses.field(default_factory=list)
    call_p50_s: list[float] = dataclasses.field(default_factory=list)
    uss_mib: list[float] = dataclasses.field(default_factory=list)
    applied: list[str] = dataclasses.field(default_factory=list)


def open_pool(stack: str) -> Any:
    """A SandboxPool with the bench plugin started; for the second stack, the new layers switched off."""
    from plugin_pool import load_config
    from plugin_pool.manifest import read_manifest
    from plugin_pool.sandbox.pool import SandboxPool
    from plugin_pool.sandbox.supervisor import WorkerPlan

    # No warm spare: the stacks are compared on one worker each (its idle memory, its calls).
    sandbox = {"min_workers": 1, "max_workers": 1, "idle_cpu_limit": 0, "spare_workers": 0}
    config = load_config(overrides={"sandbox": sandbox}).sandbox
    pool = SandboxPool(config)
    if stack != STACKS[0]:
        supervisor = pool.supervisor
        decide = supervisor._decide_confinement

        def without_new_layers() -> None:
            decide()
            supervisor.applied_layers -= NEW_LAYERS
            supervisor.required_layers -= NEW_LAYERS
            if supervisor.cgroups is not None:
                supervisor.cgroups.close()
                supervisor.cgroups = None

        supervisor._decide_confinement = without_new_layers  # type: ignore[method-assign]
    pool.open()
    manifest = read_manifest(PLUGIN_DIR)
    plan = WorkerPlan(
        plugin_id=manifest.info.id,
        plugin_dir=PLUGIN_DIR,
        entry=manifest.entry,
        capabilities=tuple(manifest.capabilities),
        config_json=b"{}",
        services=(),
        initialize_timeout_s=10.0,
        start_timeout_s=10.0,
    )
    pool.start_plugin(plan, min_workers=1, max_workers=1)
    return pool


def measure_start(pool: Any, plugin_id: str, spawns: int) -> list[float]:
    """Fork to first call answered, for ``spawns`` extra workers spawned and killed one after the other."""
    from plugin_pool.sandbox import _codec as codec

    plan = pool._manager.get_group(plugin_id).plan  # the staged copy the pool's workers load
    frame = codec.encode_call("echo", b"x" * PAYLOAD_BYTES)
    out = []
    for _ in range(spawns):
        started = time.perf_counter()
        handle = pool.supervisor.spawn_worker(plan)  # booted: serving, initialized, started, its stream open
        handle.client.send(frame)
        handle.client.receive()
        out.append(time.perf_counter() - started)
        pool.supervisor.kill_worker(handle, "stop")
        handle.exited.wait(5.0)
    return out


def measure_calls(pool: Any, plugin_id: str, calls: int) -> float:
    payloads = [bytes([n % 256]) * PAYLOAD_BYTES for n in range(calls)]  # distinct objects
    times = []
    for payload in payloads:
        started = time.perf_counter()
        pool.invoke(plugin_id, "echo", payload, 5.0)
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2]


def measure_uss(pool: Any, plugin_id: str) -> float:
    (pid,) = pool.list_worker_pids(plugin_id)
    for n in range(20):
        pool.invoke(plugin_id, "echo", bytes([n]) * PAYLOAD_BYTES, 5.0)
    time.sleep(0.3)
    return float(psutil.Process(pid).memory_full_info().uss) / 2**20


def measure(rounds: int, spawns: int, calls: int) -> dict[str, Samples]:
    samples = {stack: Samples() for stack in STACKS}
    with contextlib.ExitStack() as stack_:
        pools = {}
        for stack in STACKS:
            pool = open_pool(stack)
            stack_.callback(pool.close)
            pools[stack] = pool
            samples[stack].applied = sorted(pool.get_confinement()["applied"])
        plugin_id = "bench-echo"
        for stack in STACKS:  # warm both before anything is timed
            measure_calls(pools[stack], plugin_id, 200)
            measure_start(pools[stack], plugin_id, 2)
        for round_ in range(rounds):
            order = STACKS if round_ % 2 == 0 else tuple(reversed(STACKS))
            for stack in order:
                samples[stack].start_s += measure_start(pools[stack], plugin_id, spawns)
                samples[stack].call_p50_s.append(measure_calls(pools[stack], plugin_id, calls))
        for stack in STACKS:
            samples[stack].uss_mib.append(measure_uss(pools[stack], plugin_id))
    return samples


def render(samples: dict[str, Samples], command: str, rounds: int, spawns: int, calls: int) -> Section:
    new, old = samples[STACKS[0]], samples[STACKS[1]]
    start_new, start_old = median(new.start_s), median(old.start_s)
    call_new, call_old = median(new.call_p50_s), median(old.call_p50_s)
    uss_new, uss_old = median(new.uss_mib), median(old.uss_mib)
    start_ratio, call_ratio = start_new / start_old, call_new / call_old
    targets = [
        Target("worker start to first call vs without the new layers", fmt_ratio(start_ratio), "<= 1.10x",
               start_ratio <= RATIO_TARGET),
        Target("Untrusted call p50 (200 B) vs without the new layers", fmt_ratio(call_ratio), "<= 1.10x",
               call_ratio <= RATIO_TARGET),
        Target("idle worker USS, all layers", f"{uss_new:.1f} MiB", f"<= {USS_TARGET_MIB:g} MiB",
               uss_new <= USS_TARGET_MIB),
    ]  # fmt: skip
    rows = [
        "| measure | all layers | without the new layers | ratio | target | met? |",
        "|---|---:|---:|---:|---|---|",
        f"| worker start to first call (p50 of {len(new.start_s)}) | {fmt_s(start_new)} | {fmt_s(start_old)} | "
        f"{fmt_ratio(start_ratio)} | <= 1.10x | {mark(targets[0].met)} |",
        f"| call p50, 200 B (median of {rounds} rounds of {calls}) | {fmt_s(call_new)} | {fmt_s(call_old)} | "
        f"{fmt_ratio(call_ratio)} | <= 1.10x | {mark(targets[1].met)} |",
        f"| idle worker USS | {uss_new:.1f} MiB | {uss_old:.1f} MiB | {fmt_ratio(uss_new / uss_old)} | "
        f"<= {USS_TARGET_MIB:g} MiB | {mark(targets[2].met)} |",
    ]
    spread = (
        f"Spread of the start times: all layers {fmt_s(min(new.start_s))}-{fmt_s(max(new.start_s))}, without "
        f"{fmt_s(min(old.start_s))}-{fmt_s(max(old.start_s))}. Layers applied: all = {', '.join(new.applied)}; "
        f"without = {', '.join(old.applied)}."
    )
    header = measured_on(f"{rounds} interleaved rounds, {spawns} spawns and {calls} calls per round per pool")
    return make_section(
        "isolation",
        "Isolation layers: what they cost",
        command,
        header + ".",
        "\n".join(rows),
        spread,
        targets=targets,
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = new_parser(__doc__, "isolation")
    return parser.parse_args(argv)


def section(args: argparse.Namespace, command: str) -> Section:
    rounds, spawns, calls = (3, 5, 500) if args.quick else (6, 10, 2000)
    return render(measure(rounds, spawns, calls), command, rounds, spawns, calls)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(run_alone("bench_isolation.py", parse_args, section))
