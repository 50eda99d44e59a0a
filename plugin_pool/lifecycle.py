"""The plugin lifecycle: one state enum and one transition table, shared by every trust level.

Pure: no I/O, no imports from the rest of the package except errors. The seed's states are
Discovered, Loading, Initializing, Active, Stopping (its "Shutdown"), Stopped and Failed::

    DISCOVERED -> LOADING -> INITIALIZING -> ACTIVE -> STOPPING -> STOPPED
                     |            |             |          |
                     +------------+------> FAILED <--------+

``INITIALIZING`` spans ``initialize(context)`` and ``start()``; a plugin is ``ACTIVE`` once ``start()``
returned. ``STOPPED`` and ``FAILED`` plugins may be loaded again (reload, or a retry after a fix).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from plugin_pool.errors import IllegalTransitionError


class PluginState(enum.Enum):
    """Where a plugin is in its lifecycle. Values are the lowercase names stored in the registry."""

    DISCOVERED = "discovered"
    LOADING = "loading"
    INITIALIZING = "initializing"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    @classmethod
    def parse(cls, value: str | PluginState) -> PluginState:
        """Return the state named ``value`` (case-insensitive); raise ValueError naming the allowed values."""
        if isinstance(value, PluginState):
            return value
        try:
            return cls(value.lower())
        except (ValueError, AttributeError):
            allowed = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown plugin state {value!r}; expected one of: {allowed}") from None


_S = PluginState

TRANSITIONS: Mapping[PluginState, frozenset[PluginState]] = MappingProxyType(
    {
        _S.DISCOVERED: frozenset({_S.LOADING, _S.FAILED}),
        _S.LOADING: frozenset({_S.INITIALIZING, _S.FAILED}),
        _S.INITIALIZING: frozenset({_S.ACTIVE, _S.FAILED}),
        _S.ACTIVE: frozenset({_S.STOPPING, _S.FAILED}),
        _S.STOPPING: frozenset({_S.STOPPED, _S.FAILED}),
        _S.STOPPED: frozenset({_S.LOADING}),
        _S.FAILED: frozenset({_S.LOADING}),
    }
)
"""Every allowed move: ``TRANSITIONS[source]`` is the set of states ``source`` may move to."""

TERMINAL_STATES: frozenset[PluginState] = frozenset({_S.STOPPED, _S.FAILED})
"""States in which a plugin holds no resources and receives no work."""


def is_transition_allowed(source: PluginState, target: PluginState) -> bool:
    """Return whether ``source -> target`` is in the table. Pure; never raises."""
    return target in TRANSITIONS[source]


def check_transition(source: PluginState, target: PluginState, *, plugin_id: str | None = None) -> None:
    """Raise :class:`IllegalTransitionError` naming both states unless ``source -> target`` is allowed."""
    if target not in TRANSITIONS[source]:
        raise IllegalTransitionError(source, target, plugin_id=plugin_id)
