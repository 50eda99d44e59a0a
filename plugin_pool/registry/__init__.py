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
from plugin_pool.registry.memory import InMemoryPluginRegistry

__all__ = [
    "AuditEvent",
    "CapabilityRecord",
    "ChangeCallback",
    "EventKind",
    "InMemoryPluginRegistry",
    "PluginRecord",
    "PluginRegistry",
    "RegistryChange",
    "VersionRecord",
]
