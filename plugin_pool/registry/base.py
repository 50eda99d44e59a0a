"""The registry protocol and its records: the seed's ``plugins``, ``plugin_versions`` and ``plugin_capabilities``
tables, an audit table of lifecycle events, and the fleet (hosts and their plugin instances, see
:mod:`plugin_pool.registry.fleet`). Input checks live in :mod:`plugin_pool.registry.validation`.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, Protocol, runtime_checkable

from packaging.version import Version

from plugin_pool.errors import RegistryError
from plugin_pool.lifecycle import PluginState
from plugin_pool.model import Capabilities, PluginInfo, TrustLevel
from plugin_pool.registry.fleet import (
    Acknowledgements,
    FleetStatus,
    HostRecord,
    InstanceRecord,
    PluginStatus,
    RegistryStats,
)

__all__ = [
    "AuditEvent",
    "CapabilityRecord",
    "ChangeCallback",
    "EventKind",
    "PluginRecord",
    "PluginRegistry",
    "RegistryChange",
    "VersionRecord",
]

_log = logging.getLogger("plugin_pool.registry")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class EventKind(enum.StrEnum):
    """The kinds of audit events. Lifecycle transitions are named for the state they reach."""

    REGISTERED = "registered"
    LOADING = "loading"
    INITIALIZING = "initializing"
    ACTIVATED = "activated"
    STOPPING = "stopping"
    SHUTDOWN = "shutdown"
    FAILED = "failed"
    CAPABILITY_DENIED = "capability_denied"
    HASH_MISMATCH = "hash_mismatch"
    SIGNATURE_REJECTED = "signature_rejected"
    INTEGRITY_REJECTED = "integrity_rejected"
    """A plugin folder held what a plugin folder may not (a symlink, a device, bytecode, past a limit ...);
    details: ``kind``, ``file``, ``folder``, ``reason``, ``fix``."""
    DUPLICATE_REJECTED = "duplicate_rejected"
    """A discovered source offered an id an earlier source has; recorded without a plugin id (the running
    plugin's history stays its own); details: ``plugin_id``, ``source``, ``first_source``."""
    WORKER_RESTARTED = "worker_restarted"
    DISABLED = "disabled"
    ENABLED = "enabled"

    @classmethod
    def for_state(cls, state: PluginState) -> EventKind:
        """The event recorded when a plugin reaches ``state``."""
        return _EVENT_FOR_STATE[state]

    @classmethod
    def checked(cls, value: str, plugin_id: str | None) -> EventKind:
        """``value`` as an EventKind; raise RegistryError for anything that names no kind."""
        try:
            return cls(value)
        except ValueError:
            raise RegistryError(f"unknown audit event kind {value!r:.60}", plugin_id=plugin_id) from None


_EVENT_FOR_STATE: Mapping[PluginState, EventKind] = MappingProxyType(
    {
        PluginState.DISCOVERED: EventKind.REGISTERED,
        PluginState.LOADING: EventKind.LOADING,
        PluginState.INITIALIZING: EventKind.INITIALIZING,
        PluginState.ACTIVE: EventKind.ACTIVATED,
        PluginState.STOPPING: EventKind.STOPPING,
        PluginState.STOPPED: EventKind.SHUTDOWN,
        PluginState.FAILED: EventKind.FAILED,
    }
)


@dataclass(frozen=True, slots=True)
class PluginRecord:
    """A plugin as the registry holds it: identity, trust level, configuration, the operator's switch, and
    its status across the fleet.

    ``status`` and ``status_reason`` are the aggregate of the plugin's instances on live hosts (see
    :mod:`plugin_pool.registry.fleet`), computed when read: Active when it is Active on any live host;
    ``fleet`` has the counts behind it (``fleet.summary()`` reads "active on 3 of 4 live hosts; ...").
    """

    id: str
    name: str
    trust_level: TrustLevel
    status: PluginState
    status_reason: str | None
    config: Mapping[str, Any]
    registered_at: datetime
    updated_at: datetime
    enabled: bool = True
    """False while an operator has disabled the plugin (set_enabled): hosts sharing the registry stop it and
    refuse to start it until it is enabled again."""
    enabled_seq: int = 0
    """How many times an operator switched the plugin (0: never); hosts acknowledge each switch by number."""
    enabled_by: str | None = None
    """Who switched it last, and why: what a host that learns of the switch late (after a reconnect) records."""
    enabled_reason: str | None = None
    fleet: FleetStatus = field(default_factory=FleetStatus)

    @property
    def is_active(self) -> bool:
        """Whether the plugin is Active on at least one live host."""
        return self.status is PluginState.ACTIVE

    def to_status(self) -> PluginStatus:
        """The status part of the record (what :meth:`PluginRegistry.list_status` returns)."""
        return PluginStatus(
            self.id,
            self.trust_level,
            self.status,
            self.status_reason,
            self.enabled,
            self.enabled_by,
            self.enabled_reason,
            self.updated_at,
            self.fleet,
        )


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """A row of ``plugin_versions``: one published version of a plugin and its content hash."""

    id: int
    plugin_id: str
    version: Version
    assembly_hash: str | None
    published_at: datetime


@dataclass(frozen=True, slots=True)
class CapabilityRecord:
    """A row of ``plugin_capabilities``: a capability declared by one plugin version."""

    plugin_version_id: int
    capability: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audit trail entry: what happened to which plugin, the state reached, who did it, on which host, when.

    ``uid`` is generated by the registry instance that recorded it and is unique: a write replayed after a
    lost reply is stored once. ``id`` orders the trail; it is 0 on an event the PostgreSQL backend has not
    written yet (record_event returns before the write). ``host`` is the host that recorded it (None for an
    operator's tool, such as the CLI). ``actor`` is who asked: the host itself, or the operator whose request
    it carried out (then ``details`` has the operator's reason).
    """

    id: int
    plugin_id: str | None
    event: EventKind
    state: PluginState | None
    actor: str
    at: datetime
    details: Mapping[str, Any]
    uid: str = ""
    host: str | None = None


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """A change to a plugin that a registry tells its subscribers about (see PluginRegistry.subscribe).

    ``kind`` is ``"status"`` (another host moved its instance: ``status`` and ``host`` are set) or
    ``"enabled"`` (an operator disabled or enabled the plugin: ``enabled``, ``actor``, ``reason`` say what,
    who and why, also when the change is learnt late, after a reconnect; ``seq`` numbers the change for
    :meth:`PluginRegistry.acknowledge`).
    """

    plugin_id: str
    kind: Literal["status", "enabled"]
    status: PluginState | None = None
    enabled: bool | None = None
    actor: str | None = None
    reason: str | None = None
    seq: int | None = None
    host: str | None = None


ChangeCallback = Callable[[RegistryChange], None]
"""Called with each RegistryChange; runs in the registry's notification thread (or the caller's) and must
not block."""


@runtime_checkable
class PluginRegistry(Protocol):
    """The plugin catalog and the fleet's view of it. Every backend passes the same contract suite
    (tests/contract). All methods are thread-safe. ``close`` is idempotent.

    A registry instance belongs to one host (``host_id``): the lifecycle moves it records are that host's
    instance of a plugin, the audit events it records name that host. Writes never wait for a database on
    behalf of a call (the PostgreSQL backend queues them for a background writer); reads see every write
    this instance made before them.
    """

    @property
    def host_id(self) -> str:
        """The identity of the host this registry instance records for (``[host] id``). Never blocks."""
        ...

    def register(
        self,
        info: PluginInfo,
        capabilities: Capabilities,
        *,
        actor: str,
        assembly_hash: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> PluginRecord:
        """Record a plugin version and its capabilities. Idempotent for the same id, version and hash.

        A new plugin starts Discovered and a ``registered`` event is audited. Registering the same version
        with a different hash raises RegistryError (the code changed without a new version). A known plugin
        registered with another trust level is audited too (``registered``, with ``previous_trust_level``).
        """
        ...

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
        """Move this host's instance of the plugin to ``status`` and audit the move; return the instance.

        Compare-and-set on this host's own instance: when ``expected`` is given and the instance is in
        another state, raise RegistryConflictError (a host without an instance is at rest: it matches an
        ``expected`` of Discovered, Stopped or Failed). An illegal move raises IllegalTransitionError, an
        unknown plugin PluginNotFoundError. Other hosts' instances never conflict. Does not wait for a
        database once the plugin is known to this instance.
        """
        ...

    def set_enabled(self, plugin_id: str, enabled: bool, *, actor: str, reason: str | None = None) -> PluginRecord:
        """Disable or enable a plugin for every host sharing the registry (an operator's action). Blocks.

        A change is numbered (``enabled_seq``), audited (``disabled``/``enabled``, with ``actor`` and
        ``reason``) and told to every subscriber; setting the value the plugin already has changes nothing
        and audits nothing. Raises PluginNotFoundError for an unknown id.
        """
        ...

    def acknowledge(self, change: RegistryChange) -> None:
        """Record that this host applied ``change`` (an ``enabled`` change it was told of). Never blocks;
        safe to call twice. Changes to plugins this host never registered, and changes told to a registry
        nobody subscribes to, are acknowledged by the registry itself."""
        ...

    def get_acknowledgements(self, plugin_id: str) -> Acknowledgements:
        """Which live hosts acknowledged the plugin's latest disable/enable, and which did not yet."""
        ...

    def wait_for_acknowledgements(self, plugin_id: str, *, timeout_s: float) -> Acknowledgements:
        """Block until every live host acknowledged the plugin's latest disable/enable, or ``timeout_s``
        passed; return who did and who did not (``complete`` says whether all did)."""
        ...

    def record_event(
        self,
        event: EventKind,
        *,
        plugin_id: str | None,
        actor: str,
        state: PluginState | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """Append an audit event (capability denial, hash mismatch, restart, ...). Never waits for a
        database: safe on a call path."""
        ...

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback`` with every RegistryChange; return a function that unsubscribes (safe to call twice).

        Delivered: every enable/disable, whoever made it, and status changes made through *other* registry
        instances (other hosts sharing the database); a host's own status moves are not echoed back to it.
        """
        ...

    def get_plugin(self, plugin_id: str) -> PluginRecord:
        """Return the plugin's record; raise PluginNotFoundError if there is none."""
        ...

    def list_plugins(
        self,
        *,
        trust_level: TrustLevel | None = None,
        status: PluginState | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[PluginRecord]:
        """Return plugins ordered by id, optionally filtered by trust level and aggregate status; a page of at
        most ``limit`` records whose ids sort after ``after`` (keyset paging)."""
        ...

    def list_status(self, *, after: str | None = None, limit: int | None = None) -> list[PluginStatus]:
        """Every plugin's status across the fleet (no configuration: what ``plugin-pool status`` shows),
        ordered by id; a page of at most ``limit`` after ``after``. One query for any number of plugins."""
        ...

    def list_instances(
        self,
        *,
        plugin_id: str | None = None,
        host_id: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> list[InstanceRecord]:
        """Return plugin instances (one per host and plugin), ordered by (plugin id, host id), with their
        host's liveness; optionally one plugin's or one host's; a page after ``after`` = (plugin, host)."""
        ...

    def list_hosts(self) -> list[HostRecord]:
        """Return every host the registry knows (live, lost and gone), ordered by id."""
        ...

    def list_versions(self, plugin_id: str) -> list[VersionRecord]:
        """Return the plugin's versions, oldest version first; raise PluginNotFoundError if unknown."""
        ...

    def list_capabilities(self, plugin_id: str, version: Version | str | None = None) -> list[CapabilityRecord]:
        """Return the capabilities of one version (default: the highest), ordered by name."""
        ...

    def list_events(
        self,
        *,
        plugin_id: str | None = None,
        event: EventKind | None = None,
        host_id: str | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """Return audit events in the order they were recorded, optionally filtered."""
        ...

    def is_active(self, plugin_id: str) -> bool:
        """Whether the plugin is Active on at least one live host of the fleet (the seed's health query:
        "can a module rely on this plugin somewhere?"). Never raises for unknown ids."""
        ...

    def is_active_here(self, plugin_id: str) -> bool:
        """Whether the plugin is Active on this registry's own host (``host_id``). Never raises for unknown
        ids; never blocks (it answers from what this instance recorded)."""
        ...

    def flush(self, *, timeout_s: float) -> bool:
        """Block until every write this instance queued is written (or refused); False if ``timeout_s`` passed
        first (the database is unreachable or slow). Safe to call any time, from any thread."""
        ...

    def get_stats(self) -> RegistryStats:
        """This instance's counters (buffered, written, dropped writes; lost links). Never blocks."""
        ...

    def close(self) -> None:
        """Release resources; the host leaves the fleet (shown gone). Idempotent."""
        ...


class Subscribers:
    """The callbacks of one registry's subscribe(): thread-safe add/remove, and delivery that logs (never
    raises) a callback's exception so one bad subscriber cannot stop the others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[ChangeCallback] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._callbacks)

    def add(self, callback: ChangeCallback) -> int:
        """Add ``callback``; return how many there are now."""
        with self._lock:
            self._callbacks.append(callback)
            return len(self._callbacks)

    def remove(self, callback: ChangeCallback) -> int:
        """Remove ``callback`` if present (removing twice is fine); return how many are left."""
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)
            return len(self._callbacks)

    def notify(self, change: RegistryChange) -> int:
        """Call every callback with ``change``, in the calling thread; return how many were called."""
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(change)
            except Exception:
                _log.exception("registry change callback %r raised on %r", callback, change)
        return len(callbacks)


def pick_version(versions: Sequence[VersionRecord], version: Version | str | None) -> VersionRecord | None:
    """Return the record of ``version`` (default: the highest) from ``versions``, or None."""
    if not versions:
        return None
    if version is None:
        return max(versions, key=lambda v: v.version)
    wanted = Version(version) if isinstance(version, str) else version
    return next((v for v in versions if v.version == wanted), None)
