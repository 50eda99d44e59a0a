"""Benchmark the PostgreSQL registry: registering 1,000 plugins, reading them back, the health query.

    .venv/bin/python scripts/bench_registry.py            # print the table
    .venv/bin/python scripts/bench_registry.py --write    # also replace the registry section of docs/benchmarks.md

The database is ``--dsn``, else ``$PLUGIN_POOL_TEST_DSN``, else postgresql://postgres@127.0.0.1:5432/test; every
round works in a fresh schema that is dropped afterwards. One thread registers 1,000 plugins one by one (one
version, three capabilities with parameters, a small configuration each), as a host does at start. Baselines
in the same run: the in-memory registry doing the same, and the round-trip floor (``SELECT 1`` on a pooled
connection). The health query is ``list_plugins(status=ACTIVE)`` over 1,000 plugins, and ``is_active(id)``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import psycopg
from _benchdoc import Section, Target, fmt_s, make_section, mark, measured_on, new_parser, percentile, run_alone
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from plugin_pool import Capabilities, Capability, PluginInfo, PluginState, TrustLevel
from plugin_pool.registry import InMemoryPluginRegistry, PluginRegistry
from plugin_pool.registry.postgres import PostgresPluginRegistry, migrate

TITLE = "PostgreSQL registry"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_REGISTER_S = 2.0
TARGET_HEALTH_P50_MS = 10.0
ACTOR = "bench"
CAPABILITIES = Capabilities.of(
    Capability("scan", {"media_types": ["text/plain", "application/json"], "max_mb": 10}),
    Capability("evaluate_policy", {"policies": ["default"]}),
    Capability("connect", {"hosts": ["example.org"]}),
)


def plugins(count: int) -> list[PluginInfo]:
    return [
        PluginInfo(id=f"plugin-{i:05d}", name=f"Plugin {i}", version=f"1.0.{i}", trust_level=TrustLevel.TRUSTED)
        for i in range(count)
    ]


def register_all(registry: PluginRegistry, infos: list[PluginInfo]) -> float:
    started = time.perf_counter()
    for info in infos:
        registry.register(
            info, CAPABILITIES, actor=ACTOR, assembly_hash=f"sha256:{info.id}", config={"depth": 3, "paths": ["/a"]}
        )
    return time.perf_counter() - started


def read_back(registry: PluginRegistry, infos: list[PluginInfo]) -> float:
    started = time.perf_counter()
    records = registry.list_plugins()
    for info in infos:
        assert len(registry.list_capabilities(info.id)) == 3
    assert len(records) == len(infos)
    return time.perf_counter() - started


def activate_all(registry: PluginRegistry, infos: list[PluginInfo]) -> float:
    started = time.perf_counter()
    for info in infos:
        previous = PluginState.DISCOVERED
        for target in (PluginState.LOADING, PluginState.INITIALIZING, PluginState.ACTIVE):
            registry.set_status(info.id, target, expected=previous, actor=ACTOR)
            previous = target
    return time.perf_counter() - started


def timed(call: Callable[[], object], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def one_round(dsn: str, count: int, queries: int) -> dict[str, float]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    infos = plugins(count)
    migrate(dsn, schema)
    try:
        with PostgresPluginRegistry(dsn, schema=schema) as registry:
            result = {"register": register_all(registry, infos), "read": read_back(registry, infos)}
            result["activate"] = activate_all(registry, infos)
            assert len(registry.list_plugins(status=PluginState.ACTIVE)) == count
            health = timed(lambda: registry.list_plugins(status=PluginState.ACTIVE), queries)
            ids = [info.id for info in infos]
            is_active = timed(lambda: [registry.is_active(i) for i in ids[:100]], max(1, queries // 10))
            result["health_p50"] = percentile(sorted(health), 0.5)
            result["health_p90"] = percentile(sorted(health), 0.9)
            result["is_active_p50"] = percentile(sorted(is_active), 0.5) / 100
            pool = registry._pool  # the floor: one round trip on a pooled connection
            assert pool is not None
            with pool.connection() as conn:
                result["round_trip"] = statistics.median(timed(lambda: conn.execute("SELECT 1").fetchone(), 500))
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    memory = InMemoryPluginRegistry()
    result["memory_register"] = register_all(memory, infos)
    result["memory_read"] = read_back(memory, infos)
    memory_health = timed(lambda: memory.list_plugins(status=PluginState.DISCOVERED), queries)
    result["memory_health_p50"] = percentile(sorted(memory_health), 0.5)
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
    rounds = [one_round(args.dsn, args.plugins, args.queries) for _ in range(args.rounds)]
    m = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    n = args.plugins
    targets = (
        Target(f"register {n:,} plugins", fmt_s(m["register"]), f"<= {TARGET_REGISTER_S:g} s",
               m["register"] <= TARGET_REGISTER_S),
        Target("health query p50", fmt_s(m["health_p50"]), f"<= {TARGET_HEALTH_P50_MS:g} ms",
               m["health_p50"] * 1e3 <= TARGET_HEALTH_P50_MS),
    )  # fmt: skip
    rows: list[tuple[str, float, float | None, Target | None]] = [
        (f"register {n:,} plugins (1 version, 3 capabilities each)", m["register"], m["memory_register"], targets[0]),
        ("read back (list_plugins + list_capabilities of each)", m["read"], m["memory_read"], None),
        ("move all to Active (3 set_status each)", m["activate"], None, None),
        ("health query list_plugins(status=ACTIVE) p50", m["health_p50"], m["memory_health_p50"], targets[1]),
        ("health query list_plugins(status=ACTIVE) p90", m["health_p90"], None, None),
        ("is_active(id) p50", m["is_active_p50"], None, None),
        ("floor: one round trip (SELECT 1)", m["round_trip"], None, None),
    ]
    table = [
        "| measure | PostgreSQL | in-memory baseline | per plugin | target | met? |",
        "|---|---:|---:|---:|---|:---:|",
    ]
    for label, ours, base, target in rows:
        per = fmt_s(ours / n) if label.startswith(("register", "read", "move")) else ""
        table.append(
            f"| {label} | {fmt_s(ours)} | {fmt_s(base) if base is not None else ''} | {per} | "
            f"{target.target if target else ''} | {mark(target.met) if target else ''} |"
        )
    rounds_s = f"{args.rounds} rounds" if args.rounds != 1 else "1 round"
    header = (
        f"{measured_on(about, f'psycopg {psycopg.__version__}')}, {n:,} plugins, median of {rounds_s} (each in a "
        f"fresh schema), {args.queries} health queries per round; {time.perf_counter() - started:.0f} s."
    )
    reading = (
        "Registration is one transaction of four round trips per plugin (the plugin row and its `registered` event in "
        "one statement, the version and its capabilities in another), so it costs a few round trips of the floor "
        "above. `set_status` is a single statement (compare-and-set, audit event and NOTIFY). The health query "
        f"reads {n:,} rows and decodes their `jsonb` configuration with orjson."
    )
    return make_section("registry", TITLE, command, header, "\n".join(table), reading, targets=targets)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = new_parser(__doc__, "registry")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("PLUGIN_POOL_TEST_DSN") or DEFAULT_DSN,
        help="the database (default $PLUGIN_POOL_TEST_DSN, else " + DEFAULT_DSN + ")",
    )
    parser.add_argument("--plugins", type=int, default=1000, help="plugins to register (default 1000)")
    parser.add_argument(
        "--rounds", type=int, help="rounds, each in a fresh schema; medians reported (default 3, quick 1)"
    )
    parser.add_argument("--queries", type=int, help="health queries per round (default 200, quick 50)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.queries = args.queries or (50 if args.quick else 200)
    return args


if __name__ == "__main__":
    sys.exit(run_alone("bench_registry.py", parse_args, section))
