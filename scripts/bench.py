#!/usr/bin/env python3
"""Measure every benchmark in one run and produce the whole of docs/benchmarks.md.

    .venv/bin/python scripts/bench.py                # every section (a few minutes), print it
    .venv/bin/python scripts/bench.py --quick        # a short run (about a minute)
    .venv/bin/python scripts/bench.py --write        # also rewrite docs/benchmarks.md, all of it
    .venv/bin/python scripts/bench.py --only sandbox --write    # some sections; --write replaces only those

The sections, in the order they run (each is also a script of its own that rewrites only its section):
in-process call paths (bench_inprocess.py), the Untrusted sandbox path (bench_sandbox.py), what the
isolation layers cost (bench_isolation.py), asyncio callers against threads (bench_aio.py), discovery
(bench_discovery.py) and the PostgreSQL registry (bench_registry.py: ``--dsn``, else ``$PLUGIN_POOL_TEST_DSN``;
without a reachable database the section says so and the rest of the run goes on). This script calls the
same functions the scripts do, then puts a summary on top: one call at each trust level against every
baseline (direct call, bare gRPC unary echo over a Unix socket, ``ProcessPoolExecutor``,
``multiprocessing.Pool``, socketpair floor), 200 B and 64 KiB payloads, single calls and batches, with
ratios from this run; restart latency, worker memory and the CPU placement regime of the run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import bench_aio
import bench_discovery
import bench_inprocess
import bench_isolation
import bench_registry
import bench_sandbox
from _benchdoc import (
    SECTIONS,
    Section,
    command,
    command_line,
    fmt_ratio,
    fmt_s,
    make_section,
    mark,
    measured_on,
    median,
    new_parser,
    write_doc,
    write_section,
)
from bench_inprocess import InProcessRun
from bench_sandbox import LABEL, SIZES, SandboxRun

BASELINES = {
    "direct": "direct call",
    "grpc": "bare gRPC unary echo (Unix socket)",
    "ppe": "ProcessPoolExecutor",
    "mp": "multiprocessing.Pool",
    "floor": "socketpair floor",
}
TITLES = {
    "inprocess": "in-process",
    "sandbox": "Untrusted (sandbox)",
    "aio": "asyncio",
    "isolation": "isolation layers",
    "discovery": "discovery",
    "registry": "PostgreSQL registry",
}


def summary(inproc: InProcessRun, box: SandboxRun, sections: Sequence[Section], command: str) -> Section:
    """The summary section: every trust level against every baseline, from the runs of the other sections."""

    def ns(x: float) -> float:
        return x * 1e-9

    def us(x: float) -> float:
        return x * 1e-6

    def per_item(path: str, size: int) -> float:
        return 1 / box.items_per_s(path, size)

    # (title, baseline seconds by BASELINES key, our paths' seconds): single calls, then batches, per item.
    blocks: list[tuple[str, dict[str, float], dict[str, float]]] = []
    for size in SIZES:
        base = {"direct": ns(inproc.single_ns[bench_inprocess.DIRECT, size])}
        base |= {path: us(box.lat(path, size)) for path in ("grpc", "ppe", "mp", "floor")}
        ours = {
            "BuiltIn (host.invoke)": ns(inproc.single_ns[bench_inprocess.BUILTIN, size]),
            "Trusted (host.invoke)": ns(inproc.single_ns[bench_inprocess.TRUSTED, size]),
            "Untrusted (host.invoke)": us(box.lat("ours bytes", size)),
        }
        blocks.append((f"one {LABEL[size]} call", base, ours))
    for size in SIZES:
        base = {
            "direct": ns(inproc.batch_ns[bench_inprocess.DIRECT_LOOP, size]),
            "grpc": per_item("grpc chunks", size),
            "ppe": per_item("ppe map", size),
            "mp": per_item("mp imap", size),
            "floor": per_item("floor chunks", size),
        }
        ours = {
            "BuiltIn (host.invoke_many)": ns(inproc.batch_ns[bench_inprocess.BUILTIN_MANY, size]),
            "Trusted (host.invoke_many)": ns(inproc.batch_ns[bench_inprocess.TRUSTED_MANY, size]),
            "Untrusted (host.invoke_many)": per_item("invoke_many", size),
        }
        blocks.append((f"a batch of {box.items[size]:,} x {LABEL[size]}, per item", base, ours))

    # The scan workload: a 4 KiB text secrets scan, the unit of work of a scanning host (no transport baseline).
    def per_scan(path: str) -> float:
        return 1 / box.scan_per_s(path)

    threads = bench_sandbox.SCAN_THREADS
    blocks.append(
        (
            f"{threads} caller threads, one call per 4 KiB scan, per item",
            {"direct": per_scan("direct"), "ppe": per_scan("ppe threads"), "mp": per_scan("mp threads")},
            {"Untrusted (host.invoke)": per_scan("threads")},
        )
    )
    blocks.append(
        (
            f"a batch of {box.scan_items:,} x 4 KiB scans, per item",
            {"direct": per_scan("direct"), "ppe": per_scan("ppe map"), "mp": per_scan("mp imap")},
            {"Untrusted (host.invoke_many)": per_scan("many")},
        )
    )

    table = [
        "| call | ours | " + " | ".join(f"vs {name}" for name in BASELINES.values()) + " |",
        "|---|---:|" + "---:|" * len(BASELINES),
    ]
    for title, base, ours in blocks:
        table.append(
            f"| *{title}: the baselines* |  | "
            + " | ".join(fmt_s(base[k]) if k in base else "—" for k in BASELINES)
            + " |"
        )
        for name, seconds in ours.items():
            ratios = " | ".join(fmt_ratio(seconds / base[k]) if k in base else "—" for k in BASELINES)
            table.append(f"| {name} | {fmt_s(seconds)} | {ratios} |")

    chunk = " and ".join(f"{box.chunk[size]:,} ({LABEL[size]})" for size in SIZES)
    legend = (
        "Ratios are our time / the baseline's time, both from this run (below 1.00x: faster than the baseline). "
        "One call: in-process figures are the best repeat's mean (In-process section), cross-process ones the "
        "median over rounds of each round's p50 (Untrusted section); payloads are `bytes`. The pools' one call is "
        "`ProcessPoolExecutor.submit(...).result()` and `multiprocessing.Pool.apply`; bare gRPC and the "
        "socketpair send one message. A batch: the whole batch's time over its items; the pools run "
        f"`map(chunksize={bench_sandbox.BATCH})` and `imap(chunksize={bench_sandbox.MP_CHUNK})`, bare gRPC and "
        f"the socketpair carry the chunks `invoke_many` makes (items per chunk: {chunk}), the direct call is a "
        f"loop, and the in-process batches pass {bench_inprocess.BATCH_ITEMS:,} references to one payload. "
        f"The scan rows run the same secrets scan of distinct 4 KiB texts everywhere: {threads} threads each making "
        "one call per item (`host.invoke`, `submit().result()`, `apply`), or the whole batch (`invoke_many`, "
        f"`map(chunksize={bench_sandbox.BATCH})`, `imap(chunksize={bench_sandbox.MP_CHUNK})`); the direct "
        "baseline is the scan in a loop in the host process. "
        "Every process-based path has 2 processes (workers) on this 2-core machine; the Untrusted plugins also "
        "keep one warm spare each (idle)."
    )
    r50 = median(box.restart_ms)
    mem, ppe_mem = box.worker_mem, box.ppe_mem
    extras = [
        f"- CPU placement regime: {box.regime()}",
        f"- Restart after SIGKILL: {r50:.1f} ms p50 until a replacement has served a call (listed after "
        f"{median(box.listed_ms):.1f} ms; max {max(box.restart_ms):.1f} ms over {box.kills} kills).",
        f"- Idle worker memory, USS (PSS / RSS): {mem}, against {ppe_mem} for a ProcessPoolExecutor worker "
        f"({fmt_ratio(mem.uss / ppe_mem.uss)} its USS)"
        + (f"; a warm spare: {box.spare_mem}." if box.spare_mem is not None else "."),
    ]
    targets = ["| section | target | measured | goal | met? |", "|---|---|---:|---|:---:|"]
    for sec in sections:
        if not sec.measured:
            targets.append(f"| {TITLES.get(sec.name, sec.name)} | not measured in this run |  |  |  |")
        targets += [
            f"| {TITLES.get(sec.name, sec.name)} | {t.what} | {t.measured} | {t.target} | {mark(t.met)} |"
            for t in sec.targets
        ]
    missed = sum(len(sec.missed) for sec in sections)
    met = sum(len(sec.targets) for sec in sections) - missed
    return make_section(
        "summary",
        "Summary: one call at each trust level against every baseline",
        command,
        f"{measured_on()}: every section below, measured in this one run.",
        "\n".join(table),
        legend,
        "\n".join(extras),
        f"Targets of every section ({met} met, {missed} missed):\n\n" + "\n".join(targets),
    )


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = new_parser(__doc__, "")
    parser.add_argument("--dsn", help="the registry benchmark's database (default $PLUGIN_POOL_TEST_DSN, ...)")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS[1:],
        help="run only this section (repeatable); the summary needs all of them, so it is left out",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    run_by = command("bench.py", argv)
    quick = ["--quick"] if args.quick else []
    wanted = args.only or SECTIONS[1:]

    def line(script: str, extra: Sequence[str] = ()) -> str:
        """The "Command:" line of a section this run measures."""
        return command_line(command(script, [*quick, *extra]), run_by)

    def done(section: Section, t0: float) -> Section:
        progress(f"{section.name}: {time.monotonic() - t0:.0f} s" + ("" if section.measured else ", NOT measured"))
        print(section.body + "\n", flush=True)
        return section

    sections: list[Section] = []
    inproc: InProcessRun | None = None
    box: SandboxRun | None = None
    # In-process first: it leaves no thread behind, so the sandbox benchmark can still fork its baselines.
    if "inprocess" in wanted:
        t0 = time.monotonic()
        progress("in-process call paths")
        a = bench_inprocess.parse_args(quick)
        inproc = bench_inprocess.measure(a.calls, a.repeats)
        sections.append(done(bench_inprocess.render(inproc, line("bench_inprocess.py")), t0))
    if "sandbox" in wanted:
        t0 = time.monotonic()
        progress("Untrusted (sandbox) call path")
        a = bench_sandbox.parse_args(quick)
        box = bench_sandbox.measure(a.rounds, a.calls, a.kills, a.pin, a.quick)
        sections.append(done(bench_sandbox.render(box, line("bench_sandbox.py")), t0))
    if "aio" in wanted:
        t0 = time.monotonic()
        progress("asyncio callers against threads")
        sections.append(done(bench_aio.section(bench_aio.parse_args(quick), line("bench_aio.py")), t0))
    if "isolation" in wanted:
        t0 = time.monotonic()
        progress("isolation layers")
        sections.append(
            done(bench_isolation.section(bench_isolation.parse_args(quick), line("bench_isolation.py")), t0)
        )
    if "discovery" in wanted:
        t0 = time.monotonic()
        progress("discovery")
        sections.append(
            done(bench_discovery.section(bench_discovery.parse_args(quick), line("bench_discovery.py")), t0)
        )
    if "registry" in wanted:
        t0 = time.monotonic()
        progress("PostgreSQL registry")
        dsn = ["--dsn", args.dsn] if args.dsn else []
        a = bench_registry.parse_args([*quick, *dsn])
        sections.append(done(bench_registry.section(a, line("bench_registry.py", dsn)), t0))

    elapsed = time.monotonic() - started
    if inproc is not None and box is not None and not args.only:
        top = summary(inproc, box, sections, f"Command: `{run_by}` ({elapsed:.0f} s for the whole file).")
        print(top.body)
        sections.insert(0, top)
    if args.write:
        if args.only:
            for sec in sections:
                write_section(args.doc, sec.name, sec.body)
        else:
            write_doc(args.doc, sections)
        progress(f"wrote {', '.join(sec.name for sec in sections)} to {args.doc}")
    progress(f"done in {elapsed:.0f} s")
    return 1 if args.strict and any(sec.missed or not sec.measured for sec in sections) else 0


if __name__ == "__main__":
    raise SystemExit(main())
