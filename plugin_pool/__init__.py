"""plugin_pool: host BuiltIn and Trusted plugins in-process and Untrusted plugins in a confined worker pool.

The public names are imported lazily, so a sandbox worker that imports ``plugin_pool.sandbox`` modules
never loads the host, the registry or their dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plugin_pool.aio import AsyncPluginHost
    from plugin_pool.config import Config, HostConfig, LifecycleConfig, PluginSettings, load_config
    from plugin_pool.context import PluginContext
    from plugin_pool.errors import (
        CallTimeoutError,
        CapabilityDeniedError,
        ConfigError,
        ConfinementUnavailableError,
        ContentHashMismatchError,
        DuplicatePluginError,
        HostClosedError,
        IllegalTransitionError,
        IntegrityError,
        IntegrityRejectedError,
        InvalidPluginError,
        LifecycleError,
        LifecycleTimeoutError,
        MalformedReplyError,
        ManifestError,
        PayloadError,
        PluginCallError,
        PluginDisabledError,
        PluginNotActiveError,
        PluginNotFoundError,
        PluginPoolError,
        PoolOverloadedError,
        QueueTimeoutError,
        RegistryConflictError,
        RegistryError,
        RegistryPermissionError,
        RegistryUnavailableError,
        RequiredPluginError,
        ResourceLimitError,
        SandboxError,
        ServiceNotAllowedError,
        SignatureError,
        StagingError,
        TrustViolationError,
        VendorError,
        WorkerCrashedError,
    )
    from plugin_pool.host import HostHealth, PluginClient, PluginHealth, PluginHost
    from plugin_pool.lifecycle import PluginState
    from plugin_pool.model import Capabilities, Capability, Plugin, PluginInfo, TrustLevel
    from plugin_pool.registry import InMemoryPluginRegistry, PluginRegistry
    from plugin_pool.sdk import PluginBase, capability

__version__ = "0.1.0"

_EXPORTS = {
    "plugin_pool.aio": ("AsyncPluginHost",),
    "plugin_pool.config": ("Config", "HostConfig", "LifecycleConfig", "PluginSettings", "load_config"),
    "plugin_pool.context": ("PluginContext",),
    "plugin_pool.errors": (
        "CallTimeoutError",
        "CapabilityDeniedError",
        "ConfigError",
        "ConfinementUnavailableError",
        "ContentHashMismatchError",
        "DuplicatePluginError",
        "HostClosedError",
        "IllegalTransitionError",
        "IntegrityError",
        "IntegrityRejectedError",
        "InvalidPluginError",
        "LifecycleError",
        "LifecycleTimeoutError",
        "MalformedReplyError",
        "ManifestError",
        "PayloadError",
        "PluginCallError",
        "PluginDisabledError",
        "PluginNotActiveError",
        "PluginNotFoundError",
        "PluginPoolError",
        "PoolOverloadedError",
        "QueueTimeoutError",
        "RegistryConflictError",
        "RegistryError",
        "RegistryPermissionError",
        "RegistryUnavailableError",
        "RequiredPluginError",
        "ResourceLimitError",
        "SandboxError",
        "ServiceNotAllowedError",
        "SignatureError",
        "StagingError",
        "TrustViolationError",
        "VendorError",
        "WorkerCrashedError",
    ),
    "plugin_pool.host": ("HostHealth", "PluginClient", "PluginHealth", "PluginHost"),
    "plugin_pool.lifecycle": ("PluginState",),
    "plugin_pool.model": ("Capabilities", "Capability", "Plugin", "PluginInfo", "TrustLevel"),
    "plugin_pool.registry": ("InMemoryPluginRegistry", "PluginRegistry"),
    "plugin_pool.sdk": ("PluginBase", "capability"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AsyncPluginHost",
    "CallTimeoutError",
    "Capabilities",
    "Capability",
    "CapabilityDeniedError",
    "Config",
    "ConfigError",
    "ConfinementUnavailableError",
    "ContentHashMismatchError",
    "DuplicatePluginError",
    "HostClosedError",
    "HostConfig",
    "HostHealth",
    "IllegalTransitionError",
    "InMemoryPluginRegistry",
    "IntegrityError",
    "IntegrityRejectedError",
    "InvalidPluginError",
    "LifecycleConfig",
    "LifecycleError",
    "LifecycleTimeoutError",
    "MalformedReplyError",
    "ManifestError",
    "PayloadError",
    "Plugin",
    "PluginBase",
    "PluginCallError",
    "PluginClient",
    "PluginContext",
    "PluginDisabledError",
    "PluginHealth",
    "PluginHost",
    "PluginInfo",
    "PluginNotActiveError",
    "PluginNotFoundError",
    "PluginPoolError",
    "PluginRegistry",
    "PluginSettings",
    "PluginState",
    "PoolOverloadedError",
    "QueueTimeoutError",
    "RegistryConflictError",
    "RegistryError",
    "RegistryPermissionError",
    "RegistryUnavailableError",
    "RequiredPluginError",
    "ResourceLimitError",
    "SandboxError",
    "ServiceNotAllowedError",
    "SignatureError",
    "StagingError",
    "TrustLevel",
    "TrustViolationError",
    "VendorError",
    "WorkerCrashedError",
    "__version__",
    "capability",
    "load_config",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'plugin_pool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
