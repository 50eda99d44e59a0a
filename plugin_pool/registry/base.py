"""The registry protocol and its records (the seed's ``plugins``, ``plugin_versions``, ``plugin_capabilities``
tables plus an audit table of lifecycle events), and the input checks every backend shares.
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

import orjson
from packaging.version import Version

from plugin_pool.errors import RegistryError
from plugin_pool.lifecycle import PluginState
from plugin_pool.model import Capabilities, PluginInfo, TrustLevel, thaw_json, validate_plugin_id

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

REASON_MAX_LEN = 2000
ACTOR_MAX_LEN = 200
CONFIG_MAX_BYTES = 256 * 1024
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
    """A row of ``plugins``: the plugin's identity, trust level, current status and configuration."""

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

    @property
    def is_active(self) -> bool:
        """Whether the plugin is Active (ready to receive work)."""
        return self.status is PluginState.ACTIVE


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
    """One audit trail entry: what happened to which plugin, the state reached, who did it and when."""

    id: int
    plugin_id: str | None
    event: EventKind
    state: PluginState | None
    actor: str
    at: datetime
    details: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """A change to a plugin that a registry tells its subscribers about (see PluginRegistry.subscribe).

    ``kind`` is ``"status"`` (``status`` is set: a lifecycle move another host made) or ``"enabled"``
    (``enabled`` is set: an operator disabled or enabled the plugin; ``actor`` and ``reason`` say who and why).
    """

    plugin_id: str
    kind: Literal["status", "enabled"]
    status: PluginState | None = None
    enabled: bool | None = None
    actor: str | None = None
    reason: str | None = None


ChangeCallback = Callable[[RegistryChange], None]
"""Called with each RegistryChange; runs in the registry's notification thread (or the caller's) and must
not block."""


@runtime_checkable
class PluginRegistry(Protocol):
    """The plugin catalog. Every backend passes the same contract suite (tests/contract).

    All methods are thread-safe and may block on I/O (the PostgreSQL backend). ``close`` is idempotent.
    """

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
    ) -> PluginRecord:
        """Move a plugin to ``status`` and audit it, atomically.

        Compare-and-set: when ``expected`` is given and the stored status differs, raise
        RegistryConflictError. An illegal move raises IllegalTransitionError.
        """
        ...

    def set_enabled(self, plugin_id: str, enabled: bool, *, actor: str, reason: str | None = None) -> PluginRecord:
        """Disable or enable a plugin for every host sharing the registry (an operator's action).

        A change is audited (``disabled``/``enabled``, with ``actor`` and ``reason``) and told to every
        subscriber; setting the value the plugin already has changes nothing and audits nothing. Raises
        PluginNotFoundError for an unknown id.
        """
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
        """Append an audit event (capability denial, hash mismatch, restart, ...)."""
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
        self, *, trust_level: TrustLevel | None = None, status: PluginState | None = None
    ) -> list[PluginRecord]:
        """Return plugins ordered by id, optionally filtered."""
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
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """Return audit events in the order they were recorded, optionally filtered."""
        ...

    def is_active(self, plugin_id: str) -> bool:
        """Whether the plugin is registered and Active (the seed's health query). Never raises for unknown ids."""
        ...

    def close(self) -> None:
        """Release resources. Idempotent."""
        ...


class Subscribers:
    """The callbacks of one registry's subscribe(): thread-safe add/remove, and delivery that logs (never
    raises) a callback's exception so one bad subscriber cannot stop the others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[ChangeCallback] = []

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

    def notify(self, change: RegistryChange) -> None:
        """Call every callback with ``change``, in the calling thread."""
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(change)
            except Exception:
                _log.exception("registry change callback %r raised on %r", callback, change)


def check_actor(actor: object) -> str:
    """Return ``actor`` if it is a usable actor identity, else raise RegistryError."""
    if not isinstance(actor, str) or not actor.strip() or len(actor) > ACTOR_MAX_LEN:
        raise RegistryError(f"actor {actor!r} is invalid: expected a non-empty string of at most {ACTOR_MAX_LEN}")
    return actor


def check_reason(reason: object) -> str | None:
    """Return ``reason`` cut to REASON_MAX_LEN characters, or None; raise RegistryError for non-strings."""
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise RegistryError(f"reason {reason!r} is invalid: expected a string")
    return reason if len(reason) <= REASON_MAX_LEN else reason[: REASON_MAX_LEN - 1] + "…"


def check_json(value: Mapping[str, Any] | None, what: str, *, plugin_id: str | None = None) -> dict[str, Any]:
    """Return a JSON-round-tripped copy of ``value`` or raise RegistryError naming ``what``.

    Both backends store exactly what JSON can hold, so the in-memory backend cannot accept what
    PostgreSQL's ``jsonb`` would refuse.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RegistryError(f"{what} must be a mapping, got {type(value).__name__}", plugin_id=plugin_id)
    try:
        encoded = orjson.dumps(thaw_json(value))  # frozen model values (mappingproxy, tuple) are JSON too
    except TypeError as exc:
        raise RegistryError(f"{what} is not valid JSON: {exc}", plugin_id=plugin_id) from None
    if len(encoded) > CONFIG_MAX_BYTES:
        raise RegistryError(
            f"{what} is {len(encoded)} bytes as JSON; the limit is {CONFIG_MAX_BYTES}", plugin_id=plugin_id
        )
    result: dict[str, Any] = orjson.loads(encoded)
    return result


def check_plugin_id(plugin_id: object) -> str:
    """Validate an id before it reaches storage."""
    try:
        return validate_plugin_id(plugin_id)
    except ValueError as exc:
        raise RegistryError(str(exc)) from None


def pick_version(versions: Sequence[VersionRecord], version: Version | str | None) -> VersionRecord | None:
    """Return the record of ``version`` (default: the highest) from ``versions``, or None."""
    if not versions:
        return None
    if version is None:
        return max(versions, key=lambda v: v.version)
    wanted = Version(version) if isinstance(version, str) else version
    return next((v for v in versions if v.version == wanted), None)
