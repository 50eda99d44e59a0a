"""The plugin registry: one protocol, an in-memory backend (and, in plugin_pool.registry.postgres, PostgreSQL)."""

from plugin_pool.registry.base import (
    AuditEvent,
    CapabilityRecord,
    ChangeCallback,
    EventKind,
    PluginRecord,
    PluginRegistry,
    RegistryChange,
    VersionRecord,
)
from plugin_pool.registry.fleet import (
    Acknowledgements,
    FleetStatus,
    HostLiveness,
    HostRecord,
    InstanceRecord,
    PluginStatus,
    RegistryStats,
)
from plugin_pool.registry.memory import InMemoryPluginRegistry

__all__ = [
    "Acknowledgements",
    "AuditEvent",
    "CapabilityRecord",
    "ChangeCallback",
    "EventKind",
    "FleetStatus",
    "HostLiveness",
    "HostRecord",
    "InMemoryPluginRegistry",
    "InstanceRecord",
    "PluginRecord",
    "PluginRegistry",
    "PluginStatus",
    "RegistryChange",
    "RegistryStats",
    "VersionRecord",
]
