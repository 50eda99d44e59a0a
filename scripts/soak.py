#!/usr/bin/env python3
"""Soak a host: many caller threads at every trust level for a chosen time, with chaos, then a report.

    python scripts/soak.py --duration 60s                  # chaos on: workers killed, deadlines and limits hit
    python scripts/soak.py --duration 10m --threads 16 --plot soak.svg
    python scripts/soak.py --duration 30s --no-chaos

Two hosts run in this process, each with its own zygote, so every worker replacement has one known cause:

- "main": a BuiltIn and a Trusted plugin (in-process) and an Untrusted one (2 workers) take echo calls and
  invoke_many batches with unique payloads, each checked; with chaos, a ChaosMonkey SIGKILLs one of the
  Untrusted workers every --kill-interval and the zygote every --zygote-every-th time;
- "misbehaving" (chaos only): an Untrusted plugin with a 0.5 s call deadline and a 256 MiB memory limit
  is sometimes asked to sleep 2 s or to allocate 2 GiB.

While it runs it shows one updating line on a terminal (a line every --progress-every seconds otherwise).
At the end it prints the calls and their outcomes, errors by type, restarts by reason next to what caused
them, latency percentiles per trust level, host memory over time, and what the closed hosts left behind;
``--plot FILE.svg`` also draws latency and memory over time (no extra dependency). The plugins are written
to a temporary directory; every child process and directory is gone when it exits. Exit status 0 when every
call was answered right or failed with a precise error, the restarts match their causes and nothing leaked.
The load machinery is plugin_pool.testing.load, the same as tests/load uses.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from plugin_pool import PluginHost, __version__, load_config
from plugin_pool.errors import CallTimeoutError, ResourceLimitError, WorkerCrashedError
from plugin_pool.testing.load import (
    DEFAULT_TEMP_PATTERNS,
    MIB,
    CallKind,
    ChaosMonkey,
    LoadDriver,
    LoadReport,
    ResourceSnapshot,
    echo_call,
    format_seconds,
    make_echo_plugin,
    process_memory,
    wait_for_no_leaks,
    write_load_plugin,
)

SANDBOX_ERRORS = (WorkerCrashedError, CallTimeoutError)
CALL_TIMEOUT_S = 5.0
MISBEHAVING_TIMEOUT_S = 0.5
OVERSLEEP_S = 2.0
MEMORY_MB = 256
TOO_MUCH_BYTES = 2 * 1024 * 1024 * 1024
TEMP_PREFIX = "plugin-pool-soak-"
GROUPS = ("builtin", "trusted", "untrusted", "misbehaving")


def parse_duration(text: str) -> float:
    """``90`` or ``90s`` -> 90.0; ``500ms``, ``10m``, ``1.5h``. Raises argparse.ArgumentTypeError."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use e.g. 60s, 10m, 1h or 500ms")
    value = float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match[2] or "s"]
    if value <= 0:
        raise argparse.ArgumentTypeError("the duration must be more than 0")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Soak a plugin host under load (and chaos), then report calls, errors, restarts, latency "
        "and memory.",
    )
    parser.add_argument("--duration", type=parse_duration, default=60.0, help="how long to run (60s, 10m, 1h)")
    parser.add_argument("--threads", type=int, default=8, help="concurrent caller threads (default 8)")
    parser.add_argument(
        "--chaos", action=argparse.BooleanOptionalAction, default=True, help="kill workers, exceed limits (default on)"
    )
    parser.add_argument("--kill-interval", type=parse_duration, default=1.0, help="time between kills (default 1s)")
    parser.add_argument(
        "--zygote-every", type=int, default=10, help="kill the zygote every N-th kill instead (0: never; default 10)"
    )
    parser.add_argument("--batch", type=int, default=64, help="items per invoke_many batch (default 64)")
    parser.add_argument("--sample-interval", type=parse_duration, help="memory sample spacing (default duration/20)")
    parser.add_argument(
        "--progress-every", type=parse_duration, default=10.0, help="progress line spacing off a terminal (10s)"
    )
    parser.add_argument("--plot", type=Path, help="write latency and memory over time to this .svg file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the call order and the kills")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.batch < 1 or args.zygote_every < 0:
        parser.error("--threads and --batch must be at least 1, --zygote-every at least 0")
    if args.plot is not None and args.plot.suffix.lower() != ".svg":
        parser.error(f"--plot writes SVG: name a .svg file (got {args.plot})")
    if args.sample_interval is None:
        args.sample_interval = max(1.0, args.duration / 20)
    return args


# -- the hosts and the calls ------------------------------------------------------------------------------------


def open_hosts(folder: Path, chaos: bool, hosts: list[PluginHost]) -> tuple[PluginHost, PluginHost | None]:
    """The main host (three trust levels) and, with chaos, the misbehaving one, started; each is appended to
    ``hosts`` as soon as it is open, so the caller closes it whatever happens next."""
    config = load_config(
        overrides={
            "sandbox": {
                # Kills are chaos, not a crash loop; replacements come at once.
                "crash_limit": 1_000_000,
                "crash_window_s": 1.0,
                "restart_backoff_s": 0.005,
                "restart_backoff_max_s": 0.05,
            },
            "host": {"call_timeout_s": CALL_TIMEOUT_S},
        }
    )
    main = PluginHost(config).open()
    hosts.append(main)
    misbehaving = PluginHost(config).open() if chaos else None
    if misbehaving is not None:
        hosts.append(misbehaving)
    main.add_plugin(make_echo_plugin("soak-builtin", "builtin"))
    main.add_plugin(make_echo_plugin("soak-trusted", "trusted"))
    main.add_plugin_dir(write_load_plugin(folder, "soak-untrusted", min_workers=2))
    for host in (main, misbehaving):
        if host is None:
            continue
        if host is misbehaving:
            host.add_plugin_dir(
                write_load_plugin(
                    folder, "soak-misbehaving", min_workers=1, memory_mb=MEMORY_MB, call_timeout_s=MISBEHAVING_TIMEOUT_S
                )
            )
        failed = host.start_plugins().failed
        if failed:
            raise SystemExit(f"soak: plugins failed to start: {failed}")
    return main, misbehaving


def build_kinds(main: PluginHost, misbehaving: PluginHost | None, batch: int) -> list[CallKind]:
    kinds = [
        echo_call(main, "soak-builtin", group="builtin", weight=40),
        echo_call(main, "soak-trusted", group="trusted", weight=30),
        echo_call(main, "soak-trusted", capability="echo_async", group="trusted", weight=3, deadline_s=CALL_TIMEOUT_S),
        echo_call(
            main, "soak-untrusted", group="untrusted", weight=12, errors=SANDBOX_ERRORS, deadline_s=CALL_TIMEOUT_S
        ),
        echo_call(
            main,
            "soak-untrusted",
            name="soak-untrusted.bytes",
            group="untrusted",
            as_bytes=True,
            weight=6,
            errors=SANDBOX_ERRORS,
            deadline_s=CALL_TIMEOUT_S,
        ),
        echo_call(
            main,
            "soak-untrusted",
            group="untrusted",
            batch=batch,
            weight=3,
            errors=SANDBOX_ERRORS,
            deadline_s=CALL_TIMEOUT_S,
        ),
    ]
    if misbehaving is not None:
        # One worker serves these, so they are few: about one call in 100, one in 5,000 misbehaving.
        kinds += [
            _sleep_kind(misbehaving, 0.0, weight=0.5),
            _sleep_kind(misbehaving, OVERSLEEP_S, weight=0.02),
            _allocate_kind(misbehaving, MIB, weight=0.5),
            _allocate_kind(misbehaving, TOO_MUCH_BYTES, weight=0.02),
        ]
    return kinds


def _sleep_kind(host: PluginHost, seconds: float, *, weight: float) -> CallKind:
    overdue = seconds > MISBEHAVING_TIMEOUT_S

    def call(n: int) -> Any:
        return host.invoke("soak-misbehaving", "sleep", {"s": seconds, "token": n})

    return CallKind(
        f"misbehaving.sleep({seconds:g}s)",
        call,
        check=lambda n, result: not overdue and result == n,
        errors=(CallTimeoutError,),
        deadline_s=MISBEHAVING_TIMEOUT_S,
        weight=weight,
        group="misbehaving",
    )


def _allocate_kind(host: PluginHost, size: int, *, weight: float) -> CallKind:
    too_much = size > MEMORY_MB * MIB

    def call(n: int) -> Any:
        return host.invoke("soak-misbehaving", "allocate", {"bytes": size, "token": n})

    return CallKind(
        f"misbehaving.allocate({size // MIB} MiB)",
        call,
        check=lambda n, result: not too_much and result == {"allocated": size, "token": n},
        errors=(ResourceLimitError, CallTimeoutError) if too_much else (CallTimeoutError,),
        deadline_s=CALL_TIMEOUT_S,
        weight=weight,
        group="misbehaving",
    )


# -- sampling -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One point of the memory and latency series."""

    at_s: float
    calls: int
    rss_bytes: int
    uss_bytes: int | None
    restarts: int
    p50_s: dict[str, float]
    p99_s: dict[str, float]


def take_sample(at_s: float, now: LoadReport, previous: LoadReport | None, hosts: Sequence[PluginHost]) -> Sample:
    interval = now.since(previous) if previous is not None else now
    groups = interval.latency_by_group()
    rss, uss = process_memory()
    return Sample(
        at_s=at_s,
        calls=now.calls,
        rss_bytes=rss,
        uss_bytes=uss,
        restarts=sum(sum(h.restarts.values()) for h in hosts),
        p50_s={g: h.percentile(50) for g, h in groups.items() if h.count},
        p99_s={g: h.percentile(99) for g, h in groups.items() if h.count},
    )


def progress_line(elapsed_s: float, duration_s: float, report: LoadReport, rate: float, restarts: int) -> str:
    rss, _ = process_memory(unique=False)
    return (
        f"[{elapsed_s:6.0f}s/{duration_s:.0f}s] calls {report.calls:>10,} ({rate:>7,.0f}/s)  ok {report.ok:>10,}  "
        f"errors {report.failed:>5,}  bad {report.wrong + report.unexpected_count + report.overdue:>3}  "
        f"restarts {restarts:>4}  rss {rss / MIB:6.1f} MiB"
    )


# -- the report ------------------------------------------------------------------------------------------------


def restart_rows(
    main: PluginHost, misbehaving: PluginHost | None, monkey: ChaosMonkey | None, report: LoadReport
) -> list[tuple[str, str, str, int, int]]:
    """(host, plugin, reason, restarts, caused) rows; ``caused`` counts the kills, killed deadlines and memory
    errors that each should have caused."""
    expected: Counter[tuple[str, str, str]] = Counter()
    if monkey is not None:
        for (plugin_id, reason), n in monkey.expected_restarts().items():
            expected["main", plugin_id, reason] += n
    timeouts = sum(
        k.errors.get("CallTimeoutError[worker killed]", 0) for k in report.kinds.values() if k.group == "misbehaving"
    )
    memory = sum(
        k.errors.get("ResourceLimitError[memory]", 0) for k in report.kinds.values() if k.group == "misbehaving"
    )
    if timeouts:
        expected["misbehaving", "soak-misbehaving", "timeout"] += timeouts
    if memory:
        expected["misbehaving", "soak-misbehaving", "memory"] += memory
    actual: Counter[tuple[str, str, str]] = Counter()
    for name, host in (("main", main), ("misbehaving", misbehaving)):
        if host is not None:
            for (plugin_id, reason), n in host.restarts.items():
                actual[name, plugin_id, reason] += n
    keys = sorted(set(actual) | set(expected))
    return [(h, p, r, actual[h, p, r], expected[h, p, r]) for h, p, r in keys]


def print_report(
    out: TextIO,
    args: argparse.Namespace,
    report: LoadReport,
    rows: list[tuple[str, str, str, int, int]],
    monkey: ChaosMonkey | None,
    samples: list[Sample],
    leaks_text: str,
    problems: list[str],
) -> None:
    w = out.write
    chaos = (
        f"chaos on (a worker killed every {args.kill_interval:g} s, the zygote every {args.zygote_every}th time; "
        f"deadlines and memory limits exceeded)"
        if args.chaos
        else "chaos off"
    )
    w(f"\n== plugin_pool {__version__} soak: {report.elapsed_s:.1f} s, {args.threads} threads, {chaos} ==\n\n")
    w(
        f"calls: {report.calls:,} made = {report.ok:,} answered right ({report.items_ok:,} results) + "
        f"{report.failed:,} precise errors + {report.wrong} wrong + {report.unexpected_count} unexpected + "
        f"{report.in_flight} unfinished; {report.overdue} past their deadline + {report.grace_s:g} s; "
        f"{report.calls / max(report.elapsed_s, 1e-9):,.0f} calls/s\n\n"
    )
    w("errors by type:\n")
    for label, count in sorted(report.errors.items()):
        w(f"  {label:<40} {count:>8,}\n")
    if not report.errors and not report.unexpected:
        w("  (none)\n")
    for label, count in sorted(report.unexpected.items()):
        w(f"  UNEXPECTED {label:<29} {count:>8,}\n")
    if monkey is not None:
        w(
            f"\nchaos: {monkey.worker_kills} workers killed, {monkey.zygote_kills} zygotes killed (taking "
            f"{monkey.total_kills - monkey.worker_kills} workers with them), {monkey.unsettled} kills skipped "
            f"(pool not settled)\n"
        )
    w("\nrestarts by reason (caused = kills, killed deadlines and memory errors observed):\n")
    w(f"  {'host':<12} {'plugin':<18} {'reason':<8} {'restarts':>9} {'caused':>7}\n")
    for host_name, plugin_id, reason, actual, expected in rows:
        mark = "" if actual == expected else "  <-- MISMATCH"
        w(f"  {host_name:<12} {plugin_id:<18} {reason:<8} {actual:>9,} {expected:>7,}{mark}\n")
    if not rows:
        w("  (none)\n")
    w("\nlatency by trust level (whole run):\n")
    w(f"  {'level':<12} {'calls':>10} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}\n")
    calls_by_group = report.count_by_group("calls")
    for group, hist in report.latency_by_group().items():
        w(
            f"  {group:<12} {calls_by_group[group]:>10,} {format_seconds(hist.percentile(50)):>9} "
            f"{format_seconds(hist.percentile(90)):>9} {format_seconds(hist.percentile(99)):>9} "
            f"{format_seconds(hist.max_s):>9}\n"
        )
    w("\nper call kind:\n")
    for line in report.format().splitlines():
        w(f"  {line}\n")
    w("\nhost memory over time (this process: both hosts, the driver; RSS and USS):\n")
    w(f"  {'t (s)':>7} {'calls':>11} {'RSS MiB':>8} {'USS MiB':>8} {'Δ RSS':>7} {'restarts':>8}  p99 by level\n")
    first = samples[0].rss_bytes if samples else 0
    for s in samples:
        uss = f"{s.uss_bytes / MIB:8.1f}" if s.uss_bytes is not None else f"{'-':>8}"
        p99 = ", ".join(f"{g} {format_seconds(v)}" for g, v in s.p99_s.items())
        w(
            f"  {s.at_s:7.1f} {s.calls:>11,} {s.rss_bytes / MIB:8.1f} {uss} {(s.rss_bytes - first) / MIB:+7.1f} "
            f"{s.restarts:>8}  {p99}\n"
        )
    w(f"\nafter the hosts closed: {leaks_text}\n")
    if report.failures:
        w("\nexamples of bad calls:\n")
        for line in report.failures:
            w(f"  {line}\n")
    w(f"\nverdict: {'PASS' if not problems else 'FAIL: ' + '; '.join(problems)}\n")


# -- the plot ---------------------------------------------------------------------------------------------------

_COLORS = {"builtin": "#1f77b4", "trusted": "#2ca02c", "untrusted": "#ff7f0e", "misbehaving": "#d62728"}


def write_svg(path: Path, samples: list[Sample], title: str) -> None:
    """Two panels over time: latency p50 (solid) and p99 (dashed) per trust level on a log scale, and the host's
    RSS and USS. Plain SVG, no dependency."""
    width, height, left, right, top = 960, 640, 80, 170, 50
    panel_h, gap = 230, 70
    plot_w = width - left - right
    t_max = max((s.at_s for s in samples), default=1.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
        f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="15">{_xml(title)}</text>',
    ]

    def x_of(t: float) -> float:
        return left + plot_w * t / t_max

    def axes(y0: float, label: str) -> None:
        parts.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#444"/>')
        parts.append(
            f'<text x="18" y="{y0 + panel_h / 2}" transform="rotate(-90 18 {y0 + panel_h / 2})" '
            f'text-anchor="middle">{_xml(label)}</text>'
        )
        for i in range(6):
            t = t_max * i / 5
            parts.append(
                f'<text x="{x_of(t)}" y="{y0 + panel_h + 16}" text-anchor="middle">{t:.0f} s</text>'
                f'<line x1="{x_of(t)}" y1="{y0}" x2="{x_of(t)}" y2="{y0 + panel_h}" stroke="#eee"/>'
            )

    # Latency panel (log scale).
    y0 = top
    values = [v for s in samples for d in (s.p50_s, s.p99_s) for v in d.values() if v > 0]
    low = 10 ** math.floor(math.log10(min(values))) if values else 1e-6
    high = 10 ** math.ceil(math.log10(max(values))) if values else 1.0
    high = max(high, low * 10)
    axes(y0, "latency per interval")

    def y_lat(v: float) -> float:
        return y0 + panel_h * (1 - (math.log10(max(v, low)) - math.log10(low)) / (math.log10(high) - math.log10(low)))

    decade = low
    while decade <= high * 1.001:
        parts.append(
            f'<line x1="{left}" y1="{y_lat(decade)}" x2="{left + plot_w}" y2="{y_lat(decade)}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y_lat(decade) + 4}" text-anchor="end">{format_seconds(decade)}</text>'
        )
        decade *= 10
    legend_y = y0 + 10
    for group in GROUPS:
        for key, dash in (("p50_s", ""), ("p99_s", ' stroke-dasharray="6 4"')):
            points = [(x_of(s.at_s), y_lat(getattr(s, key)[group])) for s in samples if group in getattr(s, key)]
            if len(points) < 1:
                continue
            path_points = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(
                f'<polyline points="{path_points}" fill="none" stroke="{_COLORS[group]}" stroke-width="1.8"{dash}/>'
            )
            parts.append(
                f'<line x1="{left + plot_w + 12}" y1="{legend_y}" x2="{left + plot_w + 40}" y2="{legend_y}" '
                f'stroke="{_COLORS[group]}" stroke-width="1.8"{dash}/>'
                f'<text x="{left + plot_w + 46}" y="{legend_y + 4}">{group} {key[:3]}</text>'
            )
            legend_y += 18

    # Memory panel (linear).
    y0 = top + panel_h + gap
    axes(y0, "host memory (MiB)")
    series = [("RSS", [(s.at_s, s.rss_bytes / MIB) for s in samples], "#333", "")]
    uss = [(s.at_s, s.uss_bytes / MIB) for s in samples if s.uss_bytes is not None]
    if uss:
        series.append(("USS", uss, "#9467bd", ' stroke-dasharray="6 4"'))
    top_mib = max((v for _, points, _, _ in series for _, v in points), default=1.0) * 1.15 or 1.0

    def y_mem(v: float) -> float:
        return y0 + panel_h * (1 - v / top_mib)

    for i in range(6):
        v = top_mib * i / 5
        parts.append(
            f'<line x1="{left}" y1="{y_mem(v)}" x2="{left + plot_w}" y2="{y_mem(v)}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y_mem(v) + 4}" text-anchor="end">{v:.0f}</text>'
        )
    legend_y = y0 + 10
    for name, points, color, dash in series:
        path_points = " ".join(f"{x_of(t):.1f},{y_mem(v):.1f}" for t, v in points)
        parts.append(f'<polyline points="{path_points}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>')
        parts.append(
            f'<line x1="{left + plot_w + 12}" y1="{legend_y}" x2="{left + plot_w + 40}" y2="{legend_y}" '
            f'stroke="{color}" stroke-width="1.8"{dash}/>'
            f'<text x="{left + plot_w + 46}" y="{legend_y + 4}">{name}</text>'
        )
        legend_y += 18
    parts.append("</svg>\n")
    path.write_text("\n".join(parts))


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- main --------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stdout
    tty = out.isatty()
    temp_patterns = (*DEFAULT_TEMP_PATTERNS, f"{TEMP_PREFIX}*")
    before = ResourceSnapshot.take(temp_patterns=temp_patterns)
    folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    hosts: list[PluginHost] = []
    monkey: ChaosMonkey | None = None
    samples: list[Sample] = []
    rows: list[tuple[str, str, str, int, int]] = []
    try:
        main_host, misbehaving = open_hosts(folder, args.chaos, hosts)
        kinds = build_kinds(main_host, misbehaving, args.batch)
        driver = LoadDriver(kinds, threads=args.threads, duration_s=args.duration, grace_s=5.0, seed=args.seed)
        if args.chaos:
            monkey = ChaosMonkey(
                main_host,
                plugin_ids=["soak-untrusted"],
                interval_s=args.kill_interval,
                zygote_every=args.zygote_every,
                seed=args.seed,
            )
        started = time.monotonic()
        driver.start()
        if monkey is not None:
            monkey.start()
        previous_sample: LoadReport | None = None
        last_rate: tuple[float, int] = (0.0, 0)
        next_sample = 0.0
        next_line = args.progress_every
        rate = 0.0
        try:
            while driver.is_running:
                time.sleep(0.25)
                elapsed = time.monotonic() - started
                now = driver.snapshot()
                if elapsed - last_rate[0] >= 1.0:
                    rate = (now.calls - last_rate[1]) / (elapsed - last_rate[0])
                    last_rate = (elapsed, now.calls)
                if elapsed >= next_sample:
                    samples.append(take_sample(elapsed, now, previous_sample, hosts))
                    previous_sample = now
                    next_sample += args.sample_interval
                restarts = sum(sum(h.restarts.values()) for h in hosts)
                if tty:
                    out.write("\r" + progress_line(elapsed, args.duration, now, rate, restarts) + "\033[K")
                    out.flush()
                elif elapsed >= next_line:
                    out.write(progress_line(elapsed, args.duration, now, rate, restarts) + "\n")
                    out.flush()
                    next_line += args.progress_every
        except KeyboardInterrupt:
            out.write("\ninterrupted: stopping the callers and reporting what ran\n")
            driver.stop()
        report = driver.join(CALL_TIMEOUT_S + OVERSLEEP_S + 30)
        if monkey is not None:
            monkey.stop()
            monkey.join()
        elapsed = time.monotonic() - started
        if not samples or elapsed - samples[-1].at_s >= 0.5:  # the tail of the run, unless just sampled
            samples.append(take_sample(elapsed, report, previous_sample, hosts))
        if tty:
            out.write("\n")
        for host in hosts:  # let the last replacements finish so restarts and their causes can be compared
            ChaosMonkey(host).wait_settled(10.0)
        rows = restart_rows(main_host, misbehaving, monkey, report)
    finally:
        for host in reversed(hosts):
            host.close()
        shutil.rmtree(folder, ignore_errors=True)
    leaks = wait_for_no_leaks(before, temp_patterns=temp_patterns)
    problems = report.list_problems()
    problems += [f"{p} {r} restarts {a} != caused {e}" for _, p, r, a, e in rows if a != e]
    if monkey is not None and monkey.errors:
        problems.append(f"chaos thread errors: {monkey.errors}")
    problems += leaks.leaks
    print_report(out, args, report, rows, monkey, samples, leaks.format(), problems)
    if args.plot is not None:
        title = f"plugin_pool soak: {report.calls:,} calls in {report.elapsed_s:.0f} s, {args.threads} threads"
        write_svg(args.plot, samples, title + (", chaos" if args.chaos else ""))
        out.write(f"plot written to {args.plot}\n")
    return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
