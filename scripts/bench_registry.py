"""Benchmark a fleet on one PostgreSQL registry: 10,000 plugins on 4 host processes.

    flock /tmp/plugin-pool-bench.lock .venv/bin/python scripts/bench_registry.py            # print the table
    flock /tmp/plugin-pool-bench.lock .venv/bin/python scripts/bench_registry.py --write    # also the doc section

The database is ``--dsn``, else ``$PLUGIN_POOL_TEST_DSN``, else postgresql://postgres@127.0.0.1:5432/test; the run
works in a fresh schema that is dropped afterwards. Four host processes (this script with ``--host-process``)
each open a registry as a host (``join=True``), register every plugin one by one (one version, three
capabilities, a small configuration: what a host does at start; the first host to register a plugin inserts
it, the others find it), move each to Active (three queued ``set_status``, written by the registry's writer),
then apply operators' switches as PluginHost does (stop or start the plugin: two or three moves, then
``acknowledge``). In the same run: the in-memory registry registering the same plugins (the baseline of the
registration rate), one round trip (``SELECT 1``) and one heartbeat statement (the cost of a heartbeat), the
idle CPU of a host process, ``status`` of every plugin (the aggregate over 40,000 instances: the registry's
query, and ``plugin-pool status --json`` end to end) and of one host (10,000 instances), and ``disable`` -> every
host acknowledged.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psutil
import psycopg
from _benchdoc import Section, Target, fmt_s, make_section, mark, measured_on, new_parser, percentile, run_alone
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from plugin_pool import Capabilities, Capability, PluginInfo, PluginState, TrustLevel
from plugin_pool.cli import main
from plugin_pool.registry import InMemoryPluginRegistry, PluginRegistry, RegistryChange
from plugin_pool.registry.postgres import PostgresPluginRegistry, migrate

TITLE = "PostgreSQL registry (a fleet of hosts)"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_STATUS_MS = 100.0
TARGET_ACK_P50_S = 1.0
ACTOR = "bench"
S = PluginState
CAPABILITIES = Capabilities.of(
    Capability("scan", {"media_types": ["text/plain", "application/json"], "max_mb": 10}),
    Capability("evaluate_policy", {"policies": ["default"]}),
    Capability("connect", {"hosts": ["example.org"]}),
)


def plugins(count: int) -> list[PluginInfo]:
    return [
        PluginInfo(id=f"plugin-{i:05d}", name=f"Plugin {i}", version="1.0.0", trust_level=TrustLevel.TRUSTED)
        for i in range(count)
    ]


def register_all(registry: PluginRegistry, infos: list[PluginInfo]) -> float:
    started = time.perf_counter()
    for info in infos:
        registry.register(
            info, CAPABILITIES, actor=ACTOR, assembly_hash=f"sha256:{info.id}", config={"depth": 3, "paths": ["/a"]}
        )
    return time.perf_counter() - started


# -- one host process ----------------------------------------------------------------------------------------


def host_process(dsn: str, schema: str, host_id: str, count: int, heartbeat_s: float) -> int:
    """A host: register and start every plugin, report, then apply switches until stdin closes."""
    infos = plugins(count)
    with PostgresPluginRegistry(
        dsn, schema=schema, host_id=host_id, join=True, heartbeat_s=heartbeat_s, buffer_limit=200_000
    ) as registry:
        register_s = register_all(registry, infos)
        started = time.perf_counter()
        for info in infos:
            state = S.DISCOVERED
            for target in (S.LOADING, S.INITIALIZING, S.ACTIVE):
                state = registry.set_status(info.id, target, expected=state, actor=ACTOR).state
        queued_s = time.perf_counter() - started
        assert registry.flush(timeout_s=600)
        activate_s = time.perf_counter() - started
        work: queue.Queue[RegistryChange] = queue.Queue()

        def apply() -> None:  # what PluginHost does with a switch, in a thread of its own
            while True:
                change = work.get()
                moves = (S.STOPPING, S.STOPPED) if change.enabled is False else (S.LOADING, S.INITIALIZING, S.ACTIVE)
                for target in moves:
                    registry.set_status(change.plugin_id, target, expected=None, actor=change.actor or ACTOR)
                registry.acknowledge(change)

        threading.Thread(target=apply, daemon=True).start()
        registry.subscribe(lambda change: work.put(change) if change.kind == "enabled" else None)
        report = {"register_s": register_s, "queued_s": queued_s, "activate_s": activate_s}
        print(json.dumps(report), flush=True)
        sys.stdin.read()  # until the benchmark closes it
    return 0


# -- the benchmark ---------------------------------------------------------------------------------------------


def timed(call: Callable[[], object], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return sorted(samples)


def status_cli(dsn: str, schema: str) -> None:
    """``plugin-pool status --json``, end to end: open the registry, list the hosts and every plugin, print."""
    out = io.StringIO()
    assert main(["--log-format", "none", "status", "--dsn", dsn, "--schema", schema, "--json"], out=out) == 0


def measure(dsn: str, count: int, hosts: int, switches: int, queries: int, heartbeat_s: float) -> dict[str, Any]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    migrate(dsn, schema)
    procs: list[subprocess.Popen[str]] = []
    result: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        for n in range(hosts):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--host-process",
                        dsn,
                        schema,
                        f"bench-{n + 1}",
                        str(count),
                        str(heartbeat_s),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        reports = [json.loads(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        result["fleet_start_s"] = time.perf_counter() - started
        result["register_s"] = statistics.median(r["register_s"] for r in reports)
        result["register_max_s"] = max(r["register_s"] for r in reports)
        result["activate_s"] = statistics.median(r["activate_s"] for r in reports)
        result["queued_s"] = statistics.median(r["queued_s"] for r in reports)
        with PostgresPluginRegistry(dsn, schema=schema) as operator:
            assert len(operator.list_hosts()) == hosts
            records = operator.list_plugins()
            assert len(records) == count and all(r.fleet.active == hosts for r in records)
            time.sleep(1.0)  # let the hosts settle (their writers idle)
            result["status_all"] = timed(lambda: operator.list_status(), queries)
            result["plugins_all"] = timed(lambda: operator.list_plugins(), max(3, queries // 4))
            result["status_cli"] = timed(lambda: status_cli(dsn, schema), max(3, queries // 4))
            host_one = timed(lambda: operator.list_instances(host_id="bench-1"), queries)
            assert len(operator.list_instances(host_id="bench-1")) == count
            result["status_host"] = host_one
            result["get_plugin"] = timed(lambda: operator.get_plugin("plugin-00042"), queries * 5)
            acks: list[float] = []
            for n in range(switches):
                plugin_id = f"plugin-{(n * 7919) % count:05d}"
                for enabled in (False, True):
                    t0 = time.perf_counter()
                    operator.set_enabled(plugin_id, enabled, actor="bench/operator", reason="benchmark")
                    state = operator.wait_for_acknowledgements(plugin_id, timeout_s=60)
                    assert state.complete and len(state.acknowledged) == hosts, state
                    acks.append(time.perf_counter() - t0)
            result["acks"] = sorted(acks)
            with operator._db.pool.connection() as conn:  # type: ignore[union-attr]
                result["round_trip"] = statistics.median(timed(lambda: conn.execute("SELECT 1").fetchone(), 500))
                beat = sql.SQL("UPDATE {} SET heartbeat_at = now() WHERE id = %s AND closed_at IS NULL").format(
                    sql.Identifier(schema, "hosts")
                )
                result["heartbeat"] = statistics.median(timed(lambda: conn.execute(beat, ["bench-1"]), 500))
        idle = [psutil.Process(p.pid) for p in procs]
        before = [sum(p.cpu_times()[:2]) for p in idle]
        window_s = 10.0
        time.sleep(window_s)
        spent = [sum(p.cpu_times()[:2]) - b for p, b in zip(idle, before, strict=True)]
        result["idle_cpu"] = statistics.median(cpu / window_s for cpu in spent)
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    memory = InMemoryPluginRegistry()
    result["memory_register_s"] = register_all(memory, plugins(count))
    return result


def server_about(dsn: str) -> str | None:
    """ "PostgreSQL 15.20 on 127.0.0.1 over TCP", or None when no server answers at ``dsn`` within 3 s."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            major, minor = divmod(conn.info.server_version, 10000)
            where = conn.info.host
    except psycopg.Error:
        return None
    over = "a Unix socket" if where.startswith("/") else "TCP"
    return f"PostgreSQL {major}.{minor} on {where} over {over}"


def section(args: argparse.Namespace, command: str) -> Section:
    """The registry section of docs/benchmarks.md; says so, unmeasured, when no database answers."""
    about = server_about(args.dsn)
    if about is None:
        try:
            where = conninfo_to_dict(args.dsn)
            server = f"{where.get('host') or 'localhost'}:{where.get('port') or 5432}/{where.get('dbname') or ''}"
        except psycopg.Error:
            server = "the given DSN (which psycopg cannot parse)"
        body = (
            f"## {TITLE}\n\n{command}\n\nNot measured in this run ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC): no "
            f"PostgreSQL server answered at {server}. Set `PLUGIN_POOL_TEST_DSN` or pass `--dsn` (`scripts/test` "
            "starts a server when the machine has one installed)."
        )
        return Section("registry", body, measured=False)
    started = time.perf_counter()
    m = measure(args.dsn, args.plugins, args.hosts, args.switches, args.queries, args.heartbeat_s)
    n, h = args.plugins, args.hosts
    status_p50 = percentile(m["status_all"], 0.5)
    cli_p50 = percentile(m["status_cli"], 0.5)
    ack_p50, ack_max = percentile(m["acks"], 0.5), m["acks"][-1]
    targets = (
        Target(f"status of {n:,} plugins on {h} hosts p50", fmt_s(status_p50), f"<= {TARGET_STATUS_MS:g} ms",
               status_p50 * 1e3 <= TARGET_STATUS_MS),
        Target(f"disable -> all {h} hosts acknowledged p50", fmt_s(ack_p50), f"<= {TARGET_ACK_P50_S:g} s",
               ack_p50 <= TARGET_ACK_P50_S),
    )  # fmt: skip
    rate = n / m["register_s"]
    rows = [
        (f"register {n:,} plugins, each of {h} hosts at once (median host)", fmt_s(m["register_s"]),
         f"{rate:,.0f} plugins/s per host; {n * h / m['register_max_s']:,.0f}/s for the fleet; in-memory "
         f"{n / m['memory_register_s']:,.0f}/s", None),
        (f"move {n:,} plugins to Active (3 set_status each): call returns", fmt_s(m["queued_s"]),
         f"{m['queued_s'] / (3 * n) * 1e6:.0f} µs per move (queued, nothing waits for the database)", None),
        ("... until written by the host's writer (median host)", fmt_s(m["activate_s"]),
         f"{3 * n / m['activate_s']:,.0f} moves/s per host", None),
        (f"`status` (`list_status()`): every plugin, one query ({n * h:,} instances) p50", fmt_s(status_p50),
         f"p90 {fmt_s(percentile(m['status_all'], 0.9))}", targets[0]),
        (f"`plugin-pool status --json` end to end ({n:,} plugins) p50", fmt_s(cli_p50),
         "connect, hosts, every plugin, JSON out", None),
        (f"`status --host bench-1`: {n:,} instances p50", fmt_s(percentile(m["status_host"], 0.5)), "", None),
        ("`get_plugin(id)` (one plugin's aggregate) p50", fmt_s(percentile(m["get_plugin"], 0.5)), "", None),
        (f"disable or enable -> all {h} hosts acknowledged p50", fmt_s(ack_p50),
         f"max {fmt_s(ack_max)} over {len(m['acks'])} switches", targets[1]),
        ("heartbeat: one statement", fmt_s(m["heartbeat"]), f"floor: one round trip {fmt_s(m['round_trip'])}", None),
        (f"host process idle CPU (heartbeat every {args.heartbeat_s:g} s)", f"{m['idle_cpu'] * 100:.2f} %",
         "of one core, median host", None),
    ]  # fmt: skip
    table = ["| measure | value | notes | target | met? |", "|---|---:|---|---|:---:|"]
    for label, value, notes, target in rows:
        goal, met = (target.target, mark(target.met)) if target else ("", "")
        table.append(f"| {label} | {value} | {notes} | {goal} | {met} |")
    header = (
        f"{measured_on(about, f'psycopg {psycopg.__version__}')}, {n:,} plugins on {h} host processes, "
        f"{args.queries} status queries, {args.switches} disable/enable pairs; the fleet started in "
        f"{m['fleet_start_s']:.0f} s; {time.perf_counter() - started:.0f} s in all."
    )
    reading = (
        "`status` reads the `plugins` view: the catalog joined with per-plugin instance counts that triggers keep "
        "exact (`plugin_fleet`), minus the instances of hosts that are not live (none here), plus the live hosts "
        "where a plugin failed (a partial index); nothing is aggregated over the 40,000 instances when it is read. "
        "A switch reaches each host by NOTIFY; the host applies it (two or three queued moves) and acknowledges; "
        "the operator's wait listens for acknowledgements. Registration is one transaction of a few round trips "
        "per plugin (four hosts registering the same plugins take turns on each row). A heartbeat is one UPDATE "
        "on the host's link connection."
    )
    return make_section("registry", TITLE, command, header, "\n".join(table), reading, targets=targets)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = new_parser(__doc__, "registry")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("PLUGIN_POOL_TEST_DSN") or DEFAULT_DSN,
        help="the database (default $PLUGIN_POOL_TEST_DSN, else " + DEFAULT_DSN + ")",
    )
    parser.add_argument("--plugins", type=int, help="plugins (default 10000, quick 1000)")
    parser.add_argument("--hosts", type=int, default=4, help="host processes (default 4)")
    parser.add_argument("--switches", type=int, help="disable/enable pairs (default 20, quick 5)")
    parser.add_argument("--queries", type=int, help="status queries (default 20, quick 5)")
    parser.add_argument("--heartbeat-s", type=float, default=5.0, help="the hosts' heartbeat_s (default 5)")
    args = parser.parse_args(argv)
    args.plugins = args.plugins or (1000 if args.quick else 10_000)
    args.switches = args.switches or (5 if args.quick else 20)
    args.queries = args.queries or (5 if args.quick else 20)
    return args


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--host-process":
        dsn, schema, host_id, count, heartbeat = sys.argv[2:7]
        sys.exit(host_process(dsn, schema, host_id, int(count), float(heartbeat)))
    sys.exit(run_alone("bench_registry.py", parse_args, section))
