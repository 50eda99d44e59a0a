"""Registering a plugin in the catalog: one transaction, safe against hosts registering at once; and the record
a registration returns when the database cannot be reached (this instance's own view)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from plugin_pool.errors import PluginNotFoundError, RegistryError
from plugin_pool.lifecycle import PluginState
from plugin_pool.model import TrustLevel
from plugin_pool.registry.base import EventKind, PluginRecord
from plugin_pool.registry.postgres import _rows
from plugin_pool.registry.validation import details_to_storable

__all__ = ["predicted_registration", "read_plugin", "register_in"]

Conn = psycopg.Connection[tuple[Any, ...]]
EventParams = Callable[..., dict[str, Any]]


def read_plugin(conn: Conn, q: Mapping[str, sql.Composed], plugin_id: str) -> PluginRecord:
    """The plugin's row of the ``plugins`` view (its status the fleet's aggregate); PluginNotFoundError."""
    row = conn.execute(q["get_plugin"], [plugin_id]).fetchone()
    if row is None:
        raise PluginNotFoundError(f"plugin {plugin_id!r} is not registered; register it first", plugin_id=plugin_id)
    return _rows.plugin_record(row)


def register_in(
    conn: Conn, q: Mapping[str, sql.Composed], values: Mapping[str, Any], event_params: EventParams
) -> PluginRecord:
    """Insert the plugin (audited) or, when known, lock it, refuse a changed hash for a known version, update
    its name and configuration (a trust change is audited too); add the version and its capabilities."""
    plugin_id, version, assembly_hash = values["id"], values["version"], values["hash"]
    with conn.transaction():
        params = {**values, "details": Jsonb(details_to_storable(values["details"]))}
        created = conn.execute(q["insert_new_plugin"], params).fetchone()
        if created is not None:
            conn.execute(q["insert_version"], params)
            return read_plugin(conn, q, plugin_id)
        locked = conn.execute(q["lock_plugin"], [plugin_id]).fetchone()  # hosts registering at once take turns
        assert locked is not None  # plugins are never deleted
        existing = conn.execute(q["find_version"], [plugin_id, values["version_key"]]).fetchone()
        if existing is not None and existing[1] != assembly_hash:
            raise RegistryError(
                f"plugin {plugin_id!r} version {version} is already registered with content hash "
                f"{existing[1]!r}, not {assembly_hash!r}: changed code needs a new version",
                plugin_id=plugin_id,
            )
        conn.execute(q["update_plugin"], params)
        if locked[2] != values["trust_level"]:  # a trust change is never silent
            status = conn.execute(q["get_status"], [plugin_id]).fetchone()
            details = {**values["details"], "previous_trust_level": locked[2]}
            state = status[0] if status else None
            event = event_params(uuid.uuid4(), plugin_id, EventKind.REGISTERED, state, values["actor"], None, details)
            conn.execute(q["insert_event"], event)
        if existing is None:
            conn.execute(q["insert_version"], params)
        return read_plugin(conn, q, plugin_id)


def predicted_registration(
    plugin_id: str, name: str, level: TrustLevel, config: dict[str, Any] | None, known: PluginRecord | None
) -> PluginRecord:
    """The record a registration that waits in the buffer returns: as this instance last saw the plugin
    (Discovered if it never did), with the new name, trust level and configuration."""
    if known is None:
        at = datetime.now(UTC)
        return PluginRecord(
            plugin_id, name, level, PluginState.DISCOVERED, None, MappingProxyType(config or {}), at, at
        )
    return PluginRecord(
        id=plugin_id,
        name=name,
        trust_level=level,
        status=known.status,
        status_reason=known.status_reason,
        config=MappingProxyType(config) if config is not None else known.config,
        registered_at=known.registered_at,
        updated_at=known.updated_at,
        enabled=known.enabled,
        enabled_seq=known.enabled_seq,
        enabled_by=known.enabled_by,
        enabled_reason=known.enabled_reason,
        fleet=known.fleet,
    )
