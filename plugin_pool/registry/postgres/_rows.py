"""Rows to records: what the queries of _sql.py return, as the registry's frozen records. Pure."""

from __future__ import annotations

import functools
from types import MappingProxyType
from typing import Any

from plugin_pool.lifecycle import PluginState
from plugin_pool.model import TrustLevel
from plugin_pool.registry.base import AuditEvent, EventKind, PluginRecord
from plugin_pool.registry.fleet import FleetStatus, HostLiveness, HostRecord, InstanceRecord, PluginStatus
from plugin_pool.registry.validation import details_from_storable, from_storable

__all__ = ["audit_event", "host_record", "instance_record", "plugin_record", "plugin_status"]

S = PluginState
_COUNTED = (S.DISCOVERED, S.LOADING, S.INITIALIZING, S.ACTIVE, S.STOPPING, S.STOPPED, S.FAILED)
"""The order of the n_* columns of the plugins view (see _sql.PLUGIN_COLUMNS)."""
_TRUST = {level.value: level for level in TrustLevel}  # a dict lookup costs a tenth of an Enum call
_STATE = {state.value: state for state in PluginState}


def _fleet(counts: tuple[Any, ...], lost: int, failed: tuple[tuple[str, str | None], ...]) -> FleetStatus:
    if failed:
        return _new_fleet(counts, lost, failed)
    return _shared_fleet(counts, lost)  # most plugins of a fleet stand alike: one immutable record for them


def _new_fleet(counts: tuple[Any, ...], lost: int, failed: tuple[tuple[str, str | None], ...]) -> FleetStatus:
    return FleetStatus(
        by_state=MappingProxyType({state: n for state, n in zip(_COUNTED, counts, strict=True) if n}),
        lost=lost,
        failed_on=failed,
    )


@functools.lru_cache(maxsize=4096)
def _shared_fleet(counts: tuple[Any, ...], lost: int) -> FleetStatus:
    return _new_fleet(counts, lost, ())


def plugin_status(row: tuple[Any, ...]) -> PluginStatus:
    """A row of the ``plugins`` view (STATUS_COLUMNS): the lean record of ``status`` listings."""
    return PluginStatus(
        row[0],
        _TRUST[row[1]],
        _STATE[row[2]],
        _text(row[3]),
        row[4],
        row[5],
        _text(row[6]),
        row[7],
        _fleet(row[8:15], row[15], _failed(row[16], row[17])),
    )


def _text(stored: str | None) -> str | None:
    """Free text as it was recorded (it is stored in to_storable form)."""
    return stored if stored is None else from_storable(stored)


def _failed(hosts: list[str] | None, reasons: list[str | None] | None) -> tuple[tuple[str, str | None], ...]:
    if not hosts or reasons is None:
        return ()
    return tuple((host, _text(reason)) for host, reason in zip(hosts, reasons, strict=True))


def plugin_record(row: tuple[Any, ...]) -> PluginRecord:
    """A row of the ``plugins`` view (PLUGIN_COLUMNS)."""
    fleet = _fleet(row[12:19], row[19], _failed(row[20], row[21]))
    return PluginRecord(
        id=row[0],
        name=row[1],
        trust_level=TrustLevel(row[2]),
        status=PluginState(row[3]),
        status_reason=_text(row[4]),
        config=MappingProxyType(row[5]),
        registered_at=row[6],
        updated_at=row[7],
        enabled=row[8],
        enabled_seq=row[9],
        enabled_by=row[10],
        enabled_reason=_text(row[11]),
        fleet=fleet,
    )


def audit_event(row: tuple[Any, ...]) -> AuditEvent:
    """A row of ``audit_events`` (EVENT_COLUMNS)."""
    return AuditEvent(
        id=row[0],
        plugin_id=row[1],
        event=EventKind(row[2]),
        state=PluginState(row[3]) if row[3] is not None else None,
        actor=row[4],
        at=row[5],
        details=MappingProxyType(details_from_storable(row[6])),
        uid=str(row[7]) if row[7] is not None else "",
        host=row[8],
    )


def instance_record(row: tuple[Any, ...]) -> InstanceRecord:
    """A row of ``plugin_instances`` joined with its host's liveness (INSTANCE_COLUMNS)."""
    return InstanceRecord(
        plugin_id=row[0],
        host_id=row[1],
        version=row[2],
        state=PluginState(row[3]),
        reason=_text(row[4]),
        started_at=row[5],
        updated_at=row[6],
        host_liveness=HostLiveness(row[7]),
    )


def host_record(row: tuple[Any, ...]) -> HostRecord:
    """A row of the ``host_status`` view (HOST_COLUMNS)."""
    return HostRecord(
        id=row[0],
        hostname=row[1],
        pid=row[2],
        started_at=row[3],
        heartbeat_at=row[4],
        heartbeat_s=row[5],
        lost_after_s=row[6],
        closed_at=row[7],
        liveness=HostLiveness(row[8]),
    )
