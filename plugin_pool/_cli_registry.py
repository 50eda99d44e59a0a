"""The ``plugin-pool status`` (with a shared registry) and ``plugin-pool registry`` commands: an operator's view
of the fleet and its switches. Kept apart from cli.py, which parses arguments and dispatches here.

Nothing here joins the fleet: the registry is opened without a host identity, so an operator's command is
never counted as a host, never has to acknowledge a switch, and never shows up in ``status``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TextIO

from plugin_pool.config import RegistryConfig, load_config
from plugin_pool.errors import ConfigError
from plugin_pool.host import os_user
from plugin_pool.registry.base import PluginRegistry
from plugin_pool.registry.factory import open_registry
from plugin_pool.registry.fleet import HostLiveness, HostRecord, InstanceRecord, PluginStatus

__all__ = ["add_registry_commands", "add_status_arguments", "registry_command", "status_command"]


def add_status_arguments(cmd: argparse.ArgumentParser) -> None:
    """The options of ``plugin-pool status`` that read a shared registry."""
    cmd.add_argument("--hosts", action="store_true", help="one row per host and plugin instead of the aggregate")
    cmd.add_argument(
        "--host", action="append", default=[], metavar="ID", help="only this host (repeatable; implies --hosts)"
    )
    cmd.add_argument("--limit", type=int, metavar="N", help="at most N rows (then a hint to page on with --after)")
    cmd.add_argument("--after", metavar="ID", help="start after this plugin id (paging)")
    cmd.add_argument("--dsn", help="PostgreSQL connection string (default: registry.dsn)")
    cmd.add_argument("--schema", help="schema name (default: registry.schema)")


def add_registry_commands(sub: Any) -> argparse.ArgumentParser:
    """``plugin-pool registry migrate|disable|enable|grants``; returns the ``registry`` parser."""
    reg: argparse.ArgumentParser = sub.add_parser("registry", help="manage the PostgreSQL registry")
    reg_sub = reg.add_subparsers(dest="action", required=True)
    mig = reg_sub.add_parser("migrate", help="apply pending schema migrations (safe to run from several hosts)")
    mig.add_argument("config", nargs="?", help="configuration file (TOML) with [registry]")
    mig.add_argument("--dsn", help="PostgreSQL connection string (default: registry.dsn)")
    mig.add_argument("--schema", help="schema name (default: registry.schema)")
    for action, text in (
        ("disable", "disable a plugin on every host sharing the registry (they stop it and do not start it)"),
        ("enable", "enable a disabled plugin again (hosts that stopped it start it again)"),
    ):
        switch = reg_sub.add_parser(action, help=text)
        switch.add_argument("plugin_id", help="the plugin's id")
        switch.add_argument("config", nargs="?", help="configuration file (TOML) with [registry]")
        switch.add_argument("--dsn", help="PostgreSQL connection string (default: registry.dsn)")
        switch.add_argument("--schema", help="schema name (default: registry.schema)")
        switch.add_argument("--reason", help="why, for the audit trail and the hosts' logs")
        switch.add_argument("--actor", help="who, for the audit trail (default: operator/<OS user>)")
        switch.add_argument(
            "--wait",
            action="store_true",
            help="return when every live host applied it; exit 1 naming those that did not",
        )
        switch.add_argument(
            "--timeout", type=float, default=30.0, metavar="S", help="how long --wait waits (default 30)"
        )
    grants = reg_sub.add_parser("grants", help="print the SQL that gives a role what it needs (docs/OPERATIONS.md)")
    grants.add_argument("role", help="the role's name")
    grants.add_argument("--kind", required=True, choices=("migration", "application", "readonly"))
    grants.add_argument("--schema", default="plugin_pool", help="schema name (default plugin_pool)")
    grants.add_argument("--database", default="plugins", help="database name (default plugins)")
    return reg


def _registry_config(args: argparse.Namespace, what: str) -> RegistryConfig:
    config = load_config(args.config, env=os.environ).registry
    dsn = args.dsn or config.dsn
    if not dsn:
        raise ConfigError(
            f"{what} needs the shared PostgreSQL registry: pass --dsn, or set registry.dsn "
            f"(or PLUGIN_POOL_REGISTRY_DSN); an in-memory registry lives only inside its host's process",
            key="--dsn",
        )
    return replace(config, backend="postgres", dsn=dsn, schema=args.schema or config.schema, offline_start=False)


def registry_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``plugin-pool registry ...``: 0 done, 1 refused or not acknowledged in time."""
    if args.action == "grants":
        from plugin_pool.registry.postgres import grant_statements

        out.write("\n".join(grant_statements(args.kind, args.role, args.schema, database=args.database)) + "\n")
        return 0
    config = _registry_config(args, f"registry {args.action}")
    if args.action == "migrate":
        from plugin_pool.registry.postgres import migrate

        applied = migrate(config.dsn or "", config.schema, timeout_s=config.timeout_s)
        out.write(
            f"applied {len(applied)} migration(s): {', '.join(applied)}\n" if applied else "the schema is up to date\n"
        )
        return 0
    enabled = args.action == "enable"
    actor = args.actor or f"operator/{os_user()}"
    with closing(open_registry(config)) as registry:
        before = registry.get_plugin(args.plugin_id)
        started = time.monotonic()
        record = registry.set_enabled(args.plugin_id, enabled, actor=actor, reason=args.reason)
        word = "enabled" if enabled else "disabled"
        if before.enabled is enabled:
            out.write(f"plugin {record.id} was already {word}; nothing changed\n")
        else:
            out.write(
                f"plugin {record.id} {word} by {actor}: every host sharing the registry "
                f"{'may start it again' if enabled else 'stops it and will not start it'}\n"
            )
        if not args.wait:
            return 0
        acks = registry.wait_for_acknowledgements(args.plugin_id, timeout_s=args.timeout)
    waited_s = time.monotonic() - started
    if acks.complete:
        out.write(f"acknowledged by all {len(acks.acknowledged)} live hosts in {waited_s:.2f} s\n")
        return 0
    err.write(
        f"plugin-pool: not acknowledged after {args.timeout:g} s by {len(acks.pending)} of "
        f"{len(acks.pending) + len(acks.acknowledged)} live hosts: {', '.join(acks.pending)}\n"
    )
    return 1


# -- status ------------------------------------------------------------------------------------------------


def status_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``plugin-pool status`` on a shared registry: the fleet's hosts, then per plugin the aggregate (or, with
    ``--hosts``/``--host``, one row per host and plugin). Exit 1 when a listed plugin failed on a live host."""
    config = _registry_config(args, "status")
    if args.limit is not None and not args.limit >= 0:
        raise ConfigError(f"--limit {args.limit} is invalid: expected a number of rows, 0 or more", key="--limit")
    per_host = bool(args.hosts or args.host)
    with closing(open_registry(config)) as registry:
        hosts = registry.list_hosts()
        if per_host:
            rows: list[Any] = list(_instances(registry, args))
            failed = any(i.counts and i.state.value == "failed" for i in rows)
        else:
            rows = list(_plugins(registry, args))
            failed = any(r.fleet.failed_on for r in rows)
    more = args.limit is not None and len(rows) > args.limit
    rows = rows[: args.limit] if args.limit is not None else rows
    next_after = rows[-1].plugin_id if more and rows else None
    if args.json:
        document = {
            "hosts": [_host_json(h) for h in hosts],
            "instances" if per_host else "plugins": [_instance_json(r) if per_host else _plugin_json(r) for r in rows],
            "next_after": next_after,
        }
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write(_fleet_line(hosts) + "\n")
        _print_rows(out, _instance_rows(rows) if per_host else _plugin_rows(rows))
        if next_after is not None:
            out.write(f"(more: --after {next_after})\n")
    return 1 if failed else 0


def _wanted(args: argparse.Namespace) -> list[str] | None:
    return sorted(set(args.plugin)) if args.plugin else None


def _plugins(registry: PluginRegistry, args: argparse.Namespace) -> list[PluginStatus]:
    """The requested plugins in id order, in one query (one more row than --limit, to know whether there are
    more): the fleet view costs one pass over the catalog however many rows it returns."""
    budget = None if args.limit is None else args.limit + 1
    wanted = _wanted(args)
    if wanted is None:
        return registry.list_status(after=args.after, limit=budget)
    chosen = [registry.get_plugin(p).to_status() for p in wanted if args.after is None or p > args.after]
    return chosen if budget is None else chosen[:budget]


def _instances(registry: PluginRegistry, args: argparse.Namespace) -> list[InstanceRecord]:
    """The requested instances in (plugin, host) order, one query per host asked for."""
    budget = None if args.limit is None else args.limit + 1
    wanted = _wanted(args)
    after = (args.after, "") if args.after is not None else None
    found: list[InstanceRecord] = []
    for host_id in args.host or [None]:
        rows = registry.list_instances(host_id=host_id, after=after, limit=None if wanted else budget)
        found += [i for i in rows if wanted is None or i.plugin_id in wanted]
    return found if budget is None else found[:budget]


def _ago(at: datetime | None) -> str:
    if at is None:
        return "-"
    seconds = (datetime.now(UTC) - at).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{at:%Y-%m-%d %H:%M:%S}"


def _fleet_line(hosts: Sequence[HostRecord]) -> str:
    live = [h.id for h in hosts if h.liveness is HostLiveness.LIVE]
    lost = [h for h in hosts if h.liveness is HostLiveness.LOST]
    line = f"fleet: {len(live)} live host{'s' if len(live) != 1 else ''}"
    if lost:
        line += "; lost: " + ", ".join(f"{h.id} (last heartbeat {_ago(h.heartbeat_at)})" for h in lost)
    return line


def _plugin_rows(records: Sequence[PluginStatus]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("PLUGIN", "TRUST", "STATUS", "ENABLED", "ACTIVE", "UPDATED", "FLEET")]
    for r in records:
        enabled = "yes" if r.enabled else f"NO ({r.enabled_by}{': ' + r.enabled_reason if r.enabled_reason else ''})"
        rows.append(
            (
                r.plugin_id,
                r.trust_level.value,
                r.status.value,
                enabled,
                f"{r.fleet.active}/{r.fleet.live}",
                f"{r.updated_at:%Y-%m-%d %H:%M:%S}",
                r.fleet.summary(),
            )
        )
    return rows


def _instance_rows(instances: Sequence[InstanceRecord]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("PLUGIN", "HOST", "HOST STATE", "STATE", "VERSION", "ACTIVE SINCE", "UPDATED", "REASON")
    ]
    for i in instances:
        rows.append(
            (
                i.plugin_id,
                i.host_id,
                i.host_liveness.value,
                i.state.value,
                i.version,
                _ago(i.started_at) if i.state.value == "active" else "-",
                _ago(i.updated_at),
                i.reason or "",
            )
        )
    return rows


def _shown(text: str) -> str:
    """``text`` safe for a terminal: a reason may quote a plugin's error message, control characters and
    undecodable bytes included; those are written as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode() for c in text)


def _print_rows(out: TextIO, rows: Sequence[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last column is free text."""
    rows = [tuple(_shown(cell) for cell in row) for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True))
        out.write((cells + "  " + row[-1]).rstrip() + "\n")


def _host_json(h: HostRecord) -> dict[str, Any]:
    return {
        "host_id": h.id,
        "liveness": h.liveness.value,
        "hostname": h.hostname,
        "pid": h.pid,
        "started_at": h.started_at.isoformat(),
        "heartbeat_at": h.heartbeat_at.isoformat(),
        "closed_at": h.closed_at.isoformat() if h.closed_at else None,
    }


def _plugin_json(r: PluginStatus) -> dict[str, Any]:
    return {
        "plugin_id": r.plugin_id,
        "trust_level": r.trust_level.value,
        "state": r.status.value,
        "reason": r.status_reason,
        "enabled": r.enabled,
        "enabled_by": r.enabled_by,
        "enabled_reason": r.enabled_reason,
        "active_hosts": r.fleet.active,
        "live_hosts": r.fleet.live,
        "instances": {state.value: n for state, n in r.fleet.by_state.items()},
        "lost_instances": r.fleet.lost,
        "failed_on": [{"host_id": h, "reason": reason} for h, reason in r.fleet.failed_on],
        "summary": r.fleet.summary(),
        "updated_at": r.updated_at.isoformat(),
    }


def _instance_json(i: InstanceRecord) -> dict[str, Any]:
    return {
        "plugin_id": i.plugin_id,
        "host_id": i.host_id,
        "host_liveness": i.host_liveness.value,
        "state": i.state.value,
        "version": i.version,
        "reason": i.reason,
        "started_at": i.started_at.isoformat() if i.started_at else None,
        "updated_at": i.updated_at.isoformat(),
    }
