"""The in-memory registry: the embedded default, for tests and offline use. Thread-safe; nothing persists.

One store can be shared by several hosts in one process: :meth:`InMemoryPluginRegistry.for_host` opens
another host's view of the same store, with the same fleet semantics as hosts sharing a PostgreSQL
registry (per-host instances, an aggregate status, acknowledged disables). A view is live while it is open
and gone once closed; processes cannot be lost in memory, so no heartbeat is needed.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from packaging.version import Version

from plugin_pool.errors import PluginNotFoundError, RegistryError
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
    pick_version,
)
from plugin_pool.registry.fleet import (
    Acknowledgements,
    FleetStatus,
    HostLiveness,
    HostRecord,
    InstanceRecord,
    PluginStatus,
    RegistryStats,
    default_host_id,
    source_state,
)
from plugin_pool.registry.validation import (
    check_enabled_change,
    check_event,
    check_host_id,
    check_limit,
    check_registration,
    check_state,
    check_status_move,
    check_trust_level,
)

__all__ = ["InMemoryPluginRegistry"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Catalog:
    """One plugin as stored: everything of PluginRecord but the aggregate status."""

    id: str
    name: str
    trust_level: TrustLevel
    config: Mapping[str, Any]
    registered_at: datetime
    updated_at: datetime
    enabled: bool = True
    enabled_seq: int = 0
    enabled_by: str | None = None
    enabled_reason: str | None = None


@dataclass(slots=True)
class _Host:
    view: InMemoryPluginRegistry
    started_at: datetime
    closed_at: datetime | None = None


class _Store:
    """What the views of one in-memory registry share. ``lock`` guards everything; ``acked`` is notified
    whenever an acknowledgement arrives."""

    def __init__(self, clock: Callable[[], datetime], max_events: int | None) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.acked = threading.Condition(self.lock)
        self.plugins: dict[str, _Catalog] = {}
        self.versions: dict[str, list[VersionRecord]] = {}
        self.capabilities: dict[int, list[CapabilityRecord]] = {}
        self.events: list[AuditEvent] = []
        self.hosts: dict[str, _Host] = {}
        self.instances: dict[tuple[str, str], InstanceRecord] = {}
        self.acks: dict[tuple[str, str], int] = {}
        self.version_ids = itertools.count(1)
        self.event_ids = itertools.count(1)
        self.max_events = max_events
        self.dropped_events = 0


class InMemoryPluginRegistry:
    """A :class:`~plugin_pool.registry.PluginRegistry` held in this process's memory.

    Every method takes the store's lock for its whole work, so each is atomic and thread-safe; none blocks
    on I/O. ``max_events`` bounds the audit trail (oldest events are dropped first, and counted in
    ``dropped_events``); None keeps every event. ``host_id`` is this view's host (default: a new
    :func:`~plugin_pool.registry.fleet.default_host_id`).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = _utcnow,
        max_events: int | None = 100_000,
        host_id: str | None = None,
        _store: _Store | None = None,
    ) -> None:
        self._store = _store if _store is not None else _Store(clock, max_events)
        self._host_id = check_host_id(host_id) if host_id is not None else default_host_id()
        self._closed = False
        self._subscribers = Subscribers()
        self._registered: dict[str, str] = {}  # plugin id -> version this host registered
        store = self._store
        with store.lock:
            known = store.hosts.get(self._host_id)
            if known is not None and known.closed_at is None:
                raise RegistryError(
                    f"host id {self._host_id!r} is already open on this in-memory registry; give each host its "
                    f"own [host] id"
                )
            store.hosts[self._host_id] = _Host(self, store.clock())
            for key in [k for k in store.instances if k[1] == self._host_id]:
                del store.instances[key]  # an earlier view with this id: its instances ended with it

    def for_host(self, host_id: str) -> InMemoryPluginRegistry:
        """Another host's view of this registry's store (the in-memory stand-in for a second host process
        sharing a database). Raises RegistryError if a view with that id is open."""
        return InMemoryPluginRegistry(host_id=host_id, _store=self._store)

    @property
    def host_id(self) -> str:
        """See :attr:`PluginRegistry.host_id`."""
        return self._host_id

    @property
    def dropped_events(self) -> int:
        """Audit events dropped because the trail passed ``max_events``."""
        return self._store.dropped_events

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
        checked = check_registration(info, capabilities, actor=actor, assembly_hash=assembly_hash, config=config)
        plugin_id, level, name, version = checked.plugin_id, checked.level, checked.name, checked.version
        config_json, params = checked.config, checked.capabilities
        store = self._store
        with store.lock:
            self._check_open()
            now = store.clock()
            plugin = store.plugins.get(plugin_id)
            # Check the hash before changing anything, so a refused register leaves the record as it was.
            existing = pick_version(store.versions.get(plugin_id, []), version)
            if existing is not None and existing.assembly_hash != assembly_hash:
                raise RegistryError(
                    f"plugin {plugin_id!r} version {version} is already registered with content hash "
                    f"{existing.assembly_hash!r}, not {assembly_hash!r}: changed code needs a new version",
                    plugin_id=plugin_id,
                )
            details = {"version": str(version), "trust_level": level.value}
            if plugin is None:
                plugin = _Catalog(plugin_id, name, level, MappingProxyType(config_json), now, now)
                store.plugins[plugin_id] = plugin
                store.versions[plugin_id] = []
                self._append_event(EventKind.REGISTERED, plugin_id, actor, PluginState.DISCOVERED, details)
            else:
                if plugin.trust_level is not level:
                    state = self._record_locked(plugin).status
                    details["previous_trust_level"] = plugin.trust_level.value
                    self._append_event(EventKind.REGISTERED, plugin_id, actor, state, details)
                plugin.name = name
                plugin.trust_level = level
                if config is not None:
                    plugin.config = MappingProxyType(config_json)
            self._registered[plugin_id] = str(version)
            if existing is None:
                record = VersionRecord(next(store.version_ids), plugin_id, version, assembly_hash, now)
                versions = store.versions[plugin_id]
                versions.append(record)
                versions.sort(key=lambda v: v.version)
                store.capabilities[record.id] = [
                    CapabilityRecord(record.id, cap, MappingProxyType(params[cap])) for cap in sorted(params)
                ]
            return self._record_locked(plugin)

    def set_status(
        self,
        plugin_id: str,
        status: PluginState,
        *,
        expected: PluginState | None,
        actor: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> InstanceRecord:
        """See :meth:`PluginRegistry.set_status`. Atomic compare-and-set on this host's instance."""
        move = check_status_move(plugin_id, status, expected=expected, actor=actor, reason=reason, details=details)
        status, expected, reason, extra = move.status, move.expected, move.reason, move.details
        store = self._store
        with store.lock:
            self._check_open()
            self._get(plugin_id)
            key = (plugin_id, self._host_id)
            current = store.instances.get(key)
            source = source_state(plugin_id, current.state if current else None, expected)
            check_transition(source, status, plugin_id=plugin_id)
            now = store.clock()
            version = self._registered.get(plugin_id) or self._latest_version(plugin_id)
            instance = InstanceRecord(
                plugin_id=plugin_id,
                host_id=self._host_id,
                version=version,
                state=status,
                reason=reason,
                started_at=now if status is PluginState.ACTIVE else (current.started_at if current else None),
                updated_at=now,
            )
            store.instances[key] = instance
            extra["from"] = source.value
            if reason is not None:
                extra["reason"] = reason
            self._append_event(EventKind.for_state(status), plugin_id, actor, status, extra)
            others = self._open_views(exclude=self)
        change = RegistryChange(plugin_id, "status", status=status, host=self._host_id)
        for view in others:
            view._subscribers.notify(change)
        return instance

    def set_enabled(self, plugin_id: str, enabled: bool, *, actor: str, reason: str | None = None) -> PluginRecord:
        """See :meth:`PluginRegistry.set_enabled`. Subscribers of every open view are called in this thread,
        after the change; a view that has none (or never registered the plugin) acknowledges at once."""
        reason = check_enabled_change(plugin_id, enabled, actor=actor, reason=reason)
        store = self._store
        with store.lock:
            self._check_open()
            plugin = self._get(plugin_id)
            if plugin.enabled is enabled:
                return self._record_locked(plugin)
            plugin.enabled = enabled
            plugin.enabled_seq += 1
            plugin.enabled_by = actor
            plugin.enabled_reason = reason
            plugin.updated_at = store.clock()
            kind = EventKind.ENABLED if enabled else EventKind.DISABLED
            state = self._record_locked(plugin).status
            self._append_event(kind, plugin_id, actor, state, {} if reason is None else {"reason": reason})
            record = self._record_locked(plugin)
            views = self._open_views()
        change = RegistryChange(
            plugin_id, "enabled", enabled=enabled, actor=actor, reason=reason, seq=record.enabled_seq
        )
        for view in views:
            view._deliver_switch(change)
        return record

    def acknowledge(self, change: RegistryChange) -> None:
        """See :meth:`PluginRegistry.acknowledge`."""
        if change.kind != "enabled" or change.seq is None:
            return
        store = self._store
        with store.lock:
            if self._closed:
                return
            key = (change.plugin_id, self._host_id)
            if store.acks.get(key, 0) < change.seq:
                store.acks[key] = change.seq
                store.acked.notify_all()

    def get_acknowledgements(self, plugin_id: str) -> Acknowledgements:
        """See :meth:`PluginRegistry.get_acknowledgements`."""
        with self._store.lock:
            return self._acknowledgements_locked(plugin_id)

    def wait_for_acknowledgements(self, plugin_id: str, *, timeout_s: float) -> Acknowledgements:
        """See :meth:`PluginRegistry.wait_for_acknowledgements`. Waits on a condition, no polling."""
        store = self._store
        with store.lock:
            store.acked.wait_for(lambda: self._acknowledgements_locked(plugin_id).complete, timeout=timeout_s)
            return self._acknowledgements_locked(plugin_id)

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """See :meth:`PluginRegistry.subscribe`. Changes are delivered synchronously, in the thread that made
        them: enable/disable from any view, status moves of other views."""
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
        request = check_event(plugin_id, actor=actor, state=state, details=details)
        plugin_id, state, extra = request.plugin_id, request.state, request.details
        kind = EventKind.checked(event, plugin_id)
        with self._store.lock:
            self._check_open()
            return self._append_event(kind, plugin_id, actor, state, extra)

    # -- reads -------------------------------------------------------------------------------------------

    def get_plugin(self, plugin_id: str) -> PluginRecord:
        """See :meth:`PluginRegistry.get_plugin`."""
        with self._store.lock:
            return self._record_locked(self._get(plugin_id))

    def list_plugins(
        self,
        *,
        trust_level: TrustLevel | None = None,
        status: PluginState | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[PluginRecord]:
        """See :meth:`PluginRegistry.list_plugins`."""
        level = check_trust_level(trust_level, None) if trust_level is not None else None
        wanted = check_state(status, "status") if status is not None else None
        limit = check_limit(limit)
        with self._store.lock:
            ids = sorted(i for i in self._store.plugins if after is None or i > after)
            out: list[PluginRecord] = []
            for plugin_id in ids:
                if limit is not None and len(out) >= limit:
                    break
                plugin = self._store.plugins[plugin_id]
                if level is not None and plugin.trust_level is not level:
                    continue
                record = self._record_locked(plugin)
                if wanted is None or record.status is wanted:
                    out.append(record)
            return out

    def list_status(self, *, after: str | None = None, limit: int | None = None) -> list[PluginStatus]:
        """See :meth:`PluginRegistry.list_status`."""
        return [r.to_status() for r in self.list_plugins(after=after, limit=limit)]

    def list_instances(
        self,
        *,
        plugin_id: str | None = None,
        host_id: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[InstanceRecord]:
        """See :meth:`PluginRegistry.list_instances`."""
        limit = check_limit(limit)
        with self._store.lock:
            rows = sorted(
                (key, self._with_liveness(instance))
                for key, instance in self._store.instances.items()
                if (plugin_id is None or key[0] == plugin_id)
                and (host_id is None or key[1] == host_id)
                and (after is None or key > after)
            )
        out = [instance for _, instance in rows]
        return out if limit is None else out[:limit]

    def list_hosts(self) -> list[HostRecord]:
        """See :meth:`PluginRegistry.list_hosts`."""
        with self._store.lock:
            return [
                HostRecord(
                    id=host_id,
                    hostname="localhost (in-memory)",
                    pid=0,
                    started_at=host.started_at,
                    heartbeat_at=host.closed_at or self._store.clock(),
                    heartbeat_s=0.0,
                    lost_after_s=0.0,
                    closed_at=host.closed_at,
                    liveness=HostLiveness.LIVE if host.closed_at is None else HostLiveness.GONE,
                )
                for host_id, host in sorted(self._store.hosts.items())
            ]

    def list_versions(self, plugin_id: str) -> list[VersionRecord]:
        """See :meth:`PluginRegistry.list_versions`."""
        with self._store.lock:
            self._get(plugin_id)
            return list(self._store.versions[plugin_id])

    def list_capabilities(self, plugin_id: str, version: Version | str | None = None) -> list[CapabilityRecord]:
        """See :meth:`PluginRegistry.list_capabilities`."""
        with self._store.lock:
            self._get(plugin_id)
            chosen = pick_version(self._store.versions[plugin_id], version)
            if chosen is None:
                if version is None:
                    return []
                raise PluginNotFoundError(f"plugin {plugin_id!r} has no version {version}", plugin_id=plugin_id)
            return list(self._store.capabilities[chosen.id])

    def list_events(
        self,
        *,
        plugin_id: str | None = None,
        event: EventKind | None = None,
        host_id: str | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """See :meth:`PluginRegistry.list_events`."""
        with self._store.lock:
            events = list(self._store.events)
        out = [
            e
            for e in events
            if e.id > after_id
            and (plugin_id is None or e.plugin_id == plugin_id)
            and (event is None or e.event is event)
            and (host_id is None or e.host == host_id)
        ]
        return out if limit is None else out[: max(limit, 0)]

    def is_active(self, plugin_id: str) -> bool:
        """See :meth:`PluginRegistry.is_active`."""
        with self._store.lock:
            return any(
                key[0] == plugin_id and self._with_liveness(i).is_active for key, i in self._store.instances.items()
            )

    def is_active_here(self, plugin_id: str) -> bool:
        """See :meth:`PluginRegistry.is_active_here`."""
        with self._store.lock:
            instance = self._store.instances.get((plugin_id, self._host_id))
        return not self._closed and instance is not None and instance.state is PluginState.ACTIVE

    def flush(self, *, timeout_s: float) -> bool:
        """See :meth:`PluginRegistry.flush`: every write is done when its call returns; True at once."""
        return True

    def get_stats(self) -> RegistryStats:
        """See :meth:`PluginRegistry.get_stats`: nothing is ever buffered or lost in memory, except events
        dropped past ``max_events``."""
        return RegistryStats(dropped_writes=self._store.dropped_events)

    def close(self) -> None:
        """Close this view: later writes raise RegistryError, reads still work; the host is shown gone and its
        instances stop counting. Idempotent."""
        with self._store.lock:
            if self._closed:
                return
            self._closed = True
            host = self._store.hosts.get(self._host_id)
            if host is not None and host.view is self:
                host.closed_at = self._store.clock()
            self._store.acked.notify_all()

    # -- internals ---------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RegistryError("the in-memory registry is already closed; create a new one")

    def _get(self, plugin_id: str) -> _Catalog:
        try:
            return self._store.plugins[plugin_id]
        except (KeyError, TypeError):
            raise PluginNotFoundError(
                f"plugin {plugin_id!r} is not registered; register it first",
                plugin_id=plugin_id if isinstance(plugin_id, str) else None,
            ) from None

    def _latest_version(self, plugin_id: str) -> str:
        versions = self._store.versions.get(plugin_id)
        return str(versions[-1].version) if versions else "0"

    def _open_views(self, exclude: InMemoryPluginRegistry | None = None) -> list[InMemoryPluginRegistry]:
        return [h.view for h in self._store.hosts.values() if h.closed_at is None and h.view is not exclude]

    def _deliver_switch(self, change: RegistryChange) -> None:
        """Tell this view's subscribers of a switch; acknowledge it at once when nobody here applies it."""
        told = self._subscribers.notify(change) if change.plugin_id in self._registered else 0
        if not told:
            self.acknowledge(change)

    def _with_liveness(self, instance: InstanceRecord) -> InstanceRecord:
        host = self._store.hosts.get(instance.host_id)
        liveness = HostLiveness.LIVE if host is not None and host.closed_at is None else HostLiveness.GONE
        return instance if liveness is instance.host_liveness else replace(instance, host_liveness=liveness)

    def _record_locked(self, plugin: _Catalog) -> PluginRecord:
        instances = [self._with_liveness(i) for k, i in self._store.instances.items() if k[0] == plugin.id]
        fleet, status, reason = FleetStatus.of(instances)
        return PluginRecord(
            id=plugin.id,
            name=plugin.name,
            trust_level=plugin.trust_level,
            status=status,
            status_reason=reason,
            config=plugin.config,
            registered_at=plugin.registered_at,
            updated_at=plugin.updated_at,
            enabled=plugin.enabled,
            enabled_seq=plugin.enabled_seq,
            enabled_by=plugin.enabled_by,
            enabled_reason=plugin.enabled_reason,
            fleet=fleet,
        )

    def _acknowledgements_locked(self, plugin_id: str) -> Acknowledgements:
        plugin = self._get(plugin_id)
        done: list[str] = []
        pending: list[str] = []
        for host_id, host in sorted(self._store.hosts.items()):
            if host.closed_at is not None:
                continue
            acked = self._store.acks.get((plugin_id, host_id), 0) >= plugin.enabled_seq
            (done if acked else pending).append(host_id)
        return Acknowledgements(plugin_id, plugin.enabled_seq, plugin.enabled, tuple(done), tuple(pending))

    def _append_event(
        self,
        kind: EventKind,
        plugin_id: str | None,
        actor: str,
        state: PluginState | None,
        details: dict[str, Any],
    ) -> AuditEvent:
        store = self._store
        event = AuditEvent(
            id=next(store.event_ids),
            plugin_id=plugin_id,
            event=kind,
            state=state,
            actor=actor,
            at=store.clock(),
            details=MappingProxyType(details),
            uid=str(uuid.uuid4()),
            host=self._host_id,
        )
        store.events.append(event)
        if store.max_events is not None and len(store.events) > store.max_events:
            drop = len(store.events) - store.max_events
            del store.events[:drop]
            store.dropped_events += drop
        return event
