"""What a plugin receives in ``initialize(context)``: its configuration, a bound logger, allowed services."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from plugin_pool.errors import ServiceNotAllowedError
from plugin_pool.model import TrustLevel

__all__ = ["PluginContext", "PluginLoggerAdapter"]


class PluginLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger bound to one plugin: every record carries ``pluginId`` and ``trustLevel`` as extra fields."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


class PluginContext:
    """The plugin's view of the host. Safe to share between threads; never blocks.

    - ``config``: the plugin's own configuration (read-only mapping from the host's config).
    - ``logger``: a logger already bound to the plugin id.
    - ``get_service(name)``: a service the host registered, if this plugin is allowed to use it.
    """

    __slots__ = ("_allowed", "_services", "config", "logger", "plugin_id", "trust_level")

    def __init__(
        self,
        plugin_id: str,
        trust_level: TrustLevel,
        config: Mapping[str, Any],
        services: Mapping[str, Any],
        allowed_services: tuple[str, ...],
        logger: logging.Logger | None = None,
    ) -> None:
        self.plugin_id = plugin_id
        self.trust_level = trust_level
        self.config: Mapping[str, Any] = config
        base = logger or logging.getLogger(f"plugin_pool.plugins.{plugin_id}")
        self.logger = PluginLoggerAdapter(base, {"pluginId": plugin_id, "trustLevel": trust_level.value})
        self._services = services
        self._allowed = allowed_services

    @property
    def allowed_services(self) -> tuple[str, ...]:
        """The names of the host services this plugin may use."""
        return self._allowed

    def get_service(self, name: str) -> Any:
        """Return the host service ``name``.

        Raises ServiceNotAllowedError if this plugin is not allowed it, LookupError if the host has none.
        """
        if name not in self._allowed:
            raise ServiceNotAllowedError(self.plugin_id, name, self._allowed)
        try:
            return self._services[name]
        except KeyError:
            raise LookupError(
                f"plugin {self.plugin_id!r} is allowed service {name!r} but the host registered none by "
                f"that name; call host.register_service({name!r}, obj) before starting plugins"
            ) from None
