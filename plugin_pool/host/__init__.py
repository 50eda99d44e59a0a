"""The plugin host: :class:`PluginHost`, a thin facade over parts that each own one thing.

Re-exports only. One call's path: ``host.invoke(plugin_id, capability, payload)`` looks up a route built
when the plugin became Active (two dict lookups) and calls it. A BuiltIn route is the bound method itself;
a Trusted route is a monitoring closure; an Untrusted route is a sandbox proxy. Anything that is not
routable (unknown plugin, plugin not Active, undeclared capability) falls to the slow path, which raises a
precise error. See docs/ARCHITECTURE.md for the parts.
"""

from plugin_pool.host._core import os_user
from plugin_pool.host._health import HostHealth, PluginHealth, RejectedSource
from plugin_pool.host._host import PluginClient, PluginHost

__all__ = ["HostHealth", "PluginClient", "PluginHealth", "PluginHost", "RejectedSource", "os_user"]
