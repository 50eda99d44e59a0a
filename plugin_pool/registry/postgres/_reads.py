"""The registry's reads, as functions of a connection: plugins (the fleet view), instances, hosts, versions,
capabilities, audit events, acknowledgements. Each runs one or two queries and returns records."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import psycopg
from packaging.version import Version
from psycopg import sql

from plugin_pool.errors import PluginNotFoundError
from plugin_pool.registry.base import AuditEvent, CapabilityRecord, EventKind, PluginRecord, VersionRecord, pick_version
from plugin_pool.registry.fleet import Acknowledgements, HostRecord, InstanceRecord, PluginStatus
from plugin_pool.registry.postgres import _rows, _sql

__all__ = [
    "acknowledgements",
    "capabilities",
    "events",
    "hosts",
    "instances",
    "is_active",
    "plugins",
    "statuses",
    "versions",
    "wait_for_acknowledgements",
]

Conn = psycopg.Connection[tuple[Any, ...]]
Queries = Mapping[str, sql.Composed]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _not_found(plugin_id: str) -> PluginNotFoundError:
    return PluginNotFoundError(f"plugin {plugin_id!r} is not registered; register it first", plugin_id=plugin_id)


def _require_plugin(conn: Conn, q: Queries, plugin_id: str) -> None:
    if conn.execute(q["plugin_exists"], [plugin_id]).fetchone() is None:
        raise _not_found(plugin_id)


def plugins(conn: Conn, q: Queries, params: Mapping[str, Any]) -> list[PluginRecord]:
    """A page of the ``plugins`` view (trust_level, status, after, limit)."""
    return [_rows.plugin_record(row) for row in conn.execute(q["list_plugins"], params)]


def statuses(conn: Conn, q: Queries, params: Mapping[str, Any]) -> list[PluginStatus]:
    """A page of the ``plugins`` view without configuration (after, limit)."""
    return [_rows.plugin_status(row) for row in conn.execute(q["list_status"], params)]


def instances(conn: Conn, q: Queries, params: Mapping[str, Any]) -> list[InstanceRecord]:
    """A page of instances with their hosts' liveness (plugin_id, host_id, after_plugin, after_host, limit)."""
    return [_rows.instance_record(row) for row in conn.execute(q["list_instances"], params)]


def hosts(conn: Conn, q: Queries) -> list[HostRecord]:
    """Every host with its liveness."""
    return [_rows.host_record(row) for row in conn.execute(q["list_hosts"])]


def is_active(conn: Conn, q: Queries, plugin_id: str) -> bool:
    """Whether the plugin is Active on a live host."""
    row = conn.execute(q["is_active"], [plugin_id]).fetchone()
    return bool(row and row[0])


def versions(conn: Conn, q: Queries, plugin_id: str) -> list[VersionRecord]:
    """The plugin's versions in PEP 440 order (sorted here: SQL cannot order PEP 440 versions)."""
    rows = conn.execute(q["list_versions"], [plugin_id]).fetchall()
    if not rows:
        _require_plugin(conn, q, plugin_id)
    return sorted((VersionRecord(r[0], r[1], Version(r[2]), r[3], r[4]) for r in rows), key=lambda v: v.version)


def capabilities(conn: Conn, q: Queries, plugin_id: str, version: Version | str | None) -> list[CapabilityRecord]:
    """The capabilities of one version (default: the highest), ordered by name; one query."""
    rows = conn.execute(q["list_capabilities"], [plugin_id]).fetchall()
    if not rows:
        _require_plugin(conn, q, plugin_id)
    known = {r[0]: VersionRecord(r[0], plugin_id, Version(r[1]), None, _EPOCH) for r in rows}
    chosen = pick_version(list(known.values()), version)
    if chosen is None:
        if version is None:
            return []
        raise PluginNotFoundError(f"plugin {plugin_id!r} has no version {version}", plugin_id=plugin_id)
    return sorted(
        (CapabilityRecord(r[0], r[2], MappingProxyType(r[3])) for r in rows if r[0] == chosen.id and r[2]),
        key=lambda c: c.capability,
    )


def events(conn: Conn, schema: str, filters: Mapping[str, Any], after_id: int, limit: int | None) -> list[AuditEvent]:
    """Audit events in id order; ``filters`` maps plugin_id, event, host_id to the value wanted."""
    where: list[sql.Composable] = [sql.SQL("id > %(after_id)s")]
    params: dict[str, Any] = {"after_id": int(after_id), "limit": limit}
    for column, value in filters.items():
        if value is not None:
            where.append(sql.SQL("{} = %({})s").format(sql.Identifier(column), sql.SQL(column)))
            params[column] = EventKind(value).value if column == "event" else str(value)
    return [_rows.audit_event(row) for row in conn.execute(_sql.events_query(schema, where), params)]


def acknowledgements(conn: Conn, q: Queries, plugin_id: str) -> Acknowledgements:
    """Which live hosts acknowledged the plugin's latest switch, and which did not."""
    rows = conn.execute(q["acknowledgements"], [plugin_id]).fetchall()
    if not rows:
        raise _not_found(plugin_id)
    done = tuple(r[2] for r in rows if r[2] is not None and r[3])
    pending = tuple(r[2] for r in rows if r[2] is not None and not r[3])
    return Acknowledgements(plugin_id, rows[0][0], rows[0][1], done, pending)


def wait_for_acknowledgements(
    conn: Conn, q: Queries, channel: str, plugin_id: str, timeout_s: float
) -> Acknowledgements:
    """Listen on ``conn`` (its own) and look again at every acknowledgement, and at least every 0.25 s (hosts
    may be lost meanwhile), until every live host acknowledged or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    while True:
        state = acknowledgements(conn, q, plugin_id)
        remaining = deadline - time.monotonic()
        if state.complete or remaining <= 0:
            return state
        for _ in conn.notifies(timeout=min(remaining, 0.25), stop_after=1):
            pass
