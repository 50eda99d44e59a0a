"""What plugin authors import: a base class with sensible defaults and the ``@capability`` decorator.

    from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

    class Hello(PluginBase):
        info = PluginInfo(id="hello", name="Hello", version="1.0.0", trust_level=TrustLevel.BUILTIN)

        @capability
        def scan(self, payload):
            return {"greeting": f"hello {payload}"}

Capability methods take one payload and return the result; they may be ``async def``. For Untrusted
plugins both must be JSON-compatible values (or bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

from plugin_pool.errors import InvalidPluginError
from plugin_pool.model import (
    CONNECT,
    EVALUATE_POLICY,
    SCAN,
    Capabilities,
    Capability,
    PluginInfo,
    TrustLevel,
)

if TYPE_CHECKING:
    from plugin_pool.context import PluginContext

__all__ = [
    "CONNECT",
    "EVALUATE_POLICY",
    "SCAN",
    "Capabilities",
    "Capability",
    "PluginBase",
    "PluginInfo",
    "TrustLevel",
    "capability",
]

_MARK = "__plugin_pool_capability__"
F = TypeVar("F", bound=Callable[..., Any])


@overload
def capability(func: F, /) -> F: ...


@overload
def capability(name: str | None = None, /, *, parameters: Mapping[str, Any] | None = None) -> Callable[[F], F]: ...


def capability(func_or_name: Any = None, /, *, parameters: Mapping[str, Any] | None = None) -> Any:
    """Mark a method of a :class:`PluginBase` subclass as a capability the host may call.

    ``@capability`` uses the method's name; ``@capability("scan", parameters={...})`` names it and
    declares parameters (JSON-compatible, stored in the registry). Pure; decorating twice re-marks.
    """

    def mark(func: F, name: str | None) -> F:
        setattr(
            func,
            _MARK,
            Capability(name or func.__name__, MappingProxyType(dict(parameters or {})), method=func.__name__),
        )
        return func

    if callable(func_or_name):
        return mark(func_or_name, None)
    return lambda func: mark(func, func_or_name)


class PluginBase:
    """A base class for plugins: set ``info``, decorate capability methods, override what you need.

    ``initialize`` keeps the context as ``self.context`` (and ``self.config``, ``self.logger``);
    ``start`` and ``stop`` do nothing. Any of them may be overridden as ``async def``.
    """

    info: ClassVar[PluginInfo]
    _declared: ClassVar[Capabilities] = Capabilities()
    context: PluginContext | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, Capability] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                cap = getattr(value, _MARK, None)
                if isinstance(cap, Capability):
                    found = {n: c for n, c in found.items() if c.method != attr}
                    found[cap.name] = cap
        cls._declared = Capabilities(found.values())
        info = cls.__dict__.get("info")
        if info is not None and not isinstance(info, PluginInfo):
            raise InvalidPluginError(
                f"{cls.__qualname__}.info must be a PluginInfo, got {type(info).__name__}", field="info"
            )

    @property
    def capabilities(self) -> Capabilities:
        """The capabilities declared with ``@capability`` on this class and its bases."""
        return self._declared

    @property
    def config(self) -> Mapping[str, Any]:
        """The plugin's configuration (empty before initialize)."""
        return self.context.config if self.context is not None else MappingProxyType({})

    @property
    def logger(self) -> logging.LoggerAdapter[Any] | logging.Logger:
        """A logger bound to this plugin's id (a module logger before initialize)."""
        if self.context is not None:
            return self.context.logger
        return logging.getLogger(f"plugin_pool.plugins.{type(self).__name__}")

    def initialize(self, context: PluginContext) -> None:
        """Keep the context. Override to read configuration or acquire resources (call super())."""
        self.context = context

    def start(self) -> None:
        """Called after initialize; the plugin is Active when it returns. Default: nothing."""

    def stop(self) -> None:
        """Called at shutdown, in reverse start order. Default: nothing."""
