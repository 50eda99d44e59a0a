"""The in-memory registry: the embedded default, for tests and offline use. Thread-safe; nothing persists."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from packaging.version import Version

from plugin_pool.errors import PluginNotFoundError, RegistryConflictError, RegistryError
from plugin_pool.lifecycle import PluginState, check_transition
from plugin_pool.model import Capabilities, PluginInfo, TrustLevel
from plugin_pool.registry.base import (
    AuditEvent,
    CapabilityRecord,
    ChangeCallback,
    EventKind,
    PluginRecord,
    RegistryChange,
    Subscribers,
    VersionRecord,
    check_actor,
    check_json,
    check_plugin_id,
    check_reason,
    pick_version,
)

__all__ = ["InMemoryPluginRegistry"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class InMemoryPluginRegistry:
    """A :class:`~plugin_pool.registry.PluginRegistry` held in this process's memory.

    Every method takes one lock for its whole work, so each is atomic and thread-safe; none blocks on I/O.
    ``max_events`` bounds the audit trail (oldest events are dropped first, and counted in
    ``dropped_events``); None keeps every event.
    """

    def __init__(self, *, clock: Callable[[], datetime] = _utcnow, max_events: int | None = 100_000) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._plugins: dict[str, PluginRecord] = {}
        self._versions: dict[str, list[VersionRecord]] = {}
        self._capabilities: dict[int, list[CapabilityRecord]] = {}
        self._events: list[AuditEvent] = []
        self._version_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._max_events = max_events
        self.dropped_events = 0
        self._closed = False
        self._subscribers = Subscribers()

    # -- writes ------------------------------------------------------------------------------------------

    def register(
        self,
        info: PluginInfo,
        capabilities: Capabilities,
        *,
        actor: str,
        assembly_hash: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> PluginRecord:
        """See :meth:`PluginRegistry.register`. Atomic."""
        check_plugin_id(info.id)
        check_actor(actor)
        config_json = check_json(config, f"configuration of plugin {info.id!r}", plugin_id=info.id)
        params = {
            c.name: check_json(c.parameters, f"parameters of capability {c.name!r}") for c in capabilities.values()
        }
        with self._lock:
            self._check_open()
            now = self._clock()
            record = self._plugins.get(info.id)
            # Check the hash before changing anything, so a refused register leaves the record as it was.
            existing = pick_version(self._versions.get(info.id, []), info.version)
            if existing is not None and existing.assembly_hash != assembly_hash:
                raise RegistryError(
                    f"plugin {info.id!r} version {info.version} is already registered with content hash "
                    f"{existing.assembly_hash!r}, not {assembly_hash!r}: changed code needs a new version",
                    plugin_id=info.id,
                )
            if record is None:
                record = PluginRecord(
                    id=info.id,
                    name=info.name,
                    trust_level=info.trust_level,
                    status=PluginState.DISCOVERED,
                    status_reason=None,
                    config=MappingProxyType(config_json),
                    registered_at=now,
                    updated_at=now,
                )
                self._versions[info.id] = []
                self._append_event(
                    EventKind.REGISTERED,
                    info.id,
                    actor,
                    PluginState.DISCOVERED,
                    {"version": str(info.version), "trust_level": info.trust_level.value},
                )
            else:
                if record.trust_level is not info.trust_level:
                    self._append_event(
                        EventKind.REGISTERED,
                        info.id,
                        actor,
                        record.status,
                        {
                            "version": str(info.version),
                            "trust_level": info.trust_level.value,
                            "previous_trust_level": record.trust_level.value,
                        },
                    )
                record = replace(
                    record,
                    name=info.name,
                    trust_level=info.trust_level,
                    config=MappingProxyType(config_json) if config is not None else record.config,
                )
            self._plugins[info.id] = record
            versions = self._versions[info.id]
            if existing is not None:
                return record
            version = VersionRecord(
                id=next(self._version_ids),
                plugin_id=info.id,
                version=info.version,
                assembly_hash=assembly_hash,
                published_at=now,
            )
            versions.append(version)
            versions.sort(key=lambda v: v.version)
            self._capabilities[version.id] = [
                CapabilityRecord(version.id, name, MappingProxyType(params[name])) for name in sorted(params)
            ]
            return record

    def set_status(
        self,
        plugin_id: str,
        status: PluginState,
        *,
        expected: PluginState | None,
        actor: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> PluginRecord:
        """See :meth:`PluginRegistry.set_status`. Atomic compare-and-set."""
        check_actor(actor)
        reason = check_reason(reason)
        extra = check_json(details, "event details", plugin_id=plugin_id)
        with self._lock:
            self._check_open()
            record = self._get(plugin_id)
            if expected is not None and record.status is not expected:
                raise RegistryConflictError(plugin_id, expected, record.status)
            check_transition(record.status, status, plugin_id=plugin_id)
            extra["from"] = record.status.value
            record = replace(record, status=status, status_reason=reason, updated_at=self._clock())
            self._plugins[plugin_id] = record
            if reason is not None:
                extra["reason"] = reason
            self._append_event(EventKind.for_state(status), plugin_id, actor, status, extra)
            return record

    def set_enabled(self, plugin_id: str, enabled: bool, *, actor: str, reason: str | None = None) -> PluginRecord:
        """See :meth:`PluginRegistry.set_enabled`. Subscribers are called in this thread, after the change."""
        check_actor(actor)
        reason = check_reason(reason)
        if not isinstance(enabled, bool):
            raise RegistryError(f"enabled must be True or False, got {enabled!r}", plugin_id=plugin_id)
        with self._lock:
            self._check_open()
            record = self._get(plugin_id)
            if record.enabled is enabled:
                return record
            record = replace(record, enabled=enabled, updated_at=self._clock())
            self._plugins[plugin_id] = record
            details: dict[str, Any] = {} if reason is None else {"reason": reason}
            kind = EventKind.ENABLED if enabled else EventKind.DISABLED
            self._append_event(kind, plugin_id, actor, record.status, details)
        self._subscribers.notify(RegistryChange(plugin_id, "enabled", enabled=enabled, actor=actor, reason=reason))
        return record

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """See :meth:`PluginRegistry.subscribe`. This registry has no other instances, so only enable/disable
        changes are delivered, synchronously in the thread that made them."""
        self._subscribers.add(callback)

        def unsubscribe() -> None:
            self._subscribers.remove(callback)

        return unsubscribe

    def record_event(
        self,
        event: EventKind,
        *,
        plugin_id: str | None,
        actor: str,
        state: PluginState | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """See :meth:`PluginRegistry.record_event`."""
        check_actor(actor)
        extra = check_json(details, "event details", plugin_id=plugin_id)
        kind = EventKind(event)
        with self._lock:
            self._check_open()
            return self._append_event(kind, plugin_id, actor, state, extra)

    # -- reads -------------------------------------------------------------------------------------------

    def get_plugin(self, plugin_id: str) -> PluginRecord:
        """See :meth:`PluginRegistry.get_plugin`."""
        with self._lock:
            return self._get(plugin_id)

    def list_plugins(
        self, *, trust_level: TrustLevel | None = None, status: PluginState | None = None
    ) -> list[PluginRecord]:
        """See :meth:`PluginRegistry.list_plugins`."""
        with self._lock:
            records = sorted(self._plugins.values(), key=lambda r: r.id)
        return [
            r
            for r in records
            if (trust_level is None or r.trust_level is trust_level) and (status is None or r.status is status)
        ]

    def list_versions(self, plugin_id: str) -> list[VersionRecord]:
        """See :meth:`PluginRegistry.list_versions`."""
        with self._lock:
            self._get(plugin_id)
            return list(self._versions[plugin_id])

    def list_capabilities(self, plugin_id: str, version: Version | str | None = None) -> list[CapabilityRecord]:
        """See :meth:`PluginRegistry.list_capabilities`."""
        with self._lock:
            self._get(plugin_id)
            chosen = pick_version(self._versions[plugin_id], version)
            if chosen is None:
                if version is None:
                    return []
                raise PluginNotFoundError(f"plugin {plugin_id!r} has no version {version}", plugin_id=plugin_id)
            return list(self._capabilities[chosen.id])

    def list_events(
        self,
        *,
        plugin_id: str | None = None,
        event: EventKind | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """See :meth:`PluginRegistry.list_events`."""
        with self._lock:
            events = list(self._events)
        out = [
            e
            for e in events
            if e.id > after_id
            and (plugin_id is None or e.plugin_id == plugin_id)
            and (event is None or e.event is event)
        ]
        return out if limit is None else out[:limit]

    def is_active(self, plugin_id: str) -> bool:
        """See :meth:`PluginRegistry.is_active`."""
        with self._lock:
            record = self._plugins.get(plugin_id)
        return record is not None and record.status is PluginState.ACTIVE

    def close(self) -> None:
        """Mark the registry closed; later writes raise RegistryError. Reads still work. Idempotent."""
        with self._lock:
            self._closed = True

    # -- internals ---------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryError("the in-memory registry is already closed; create a new one")

    def _get(self, plugin_id: str) -> PluginRecord:
        try:
            return self._plugins[plugin_id]
        except KeyError:
            raise PluginNotFoundError(
                f"plugin {plugin_id!r} is not registered; register it first", plugin_id=plugin_id
            ) from None

    def _append_event(
        self,
        kind: EventKind,
        plugin_id: str | None,
        actor: str,
        state: PluginState | None,
        details: dict[str, Any],
    ) -> AuditEvent:
        event = AuditEvent(
            id=next(self._event_ids),
            plugin_id=plugin_id,
            event=kind,
            state=state,
            actor=actor,
            at=self._clock(),
            details=MappingProxyType(details),
        )
        self._events.append(event)
        if self._max_events is not None and len(self._events) > self._max_events:
            drop = len(self._events) - self._max_events
            del self._events[:drop]
            self.dropped_events += drop
        return event
