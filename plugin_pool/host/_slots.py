"""The host's slot table: one :class:`Slot` per plugin id, its lookup errors, and the one Failed-slot builder.

A slot is the host's private bookkeeping for one plugin (its info, object or folder, state and reason,
counters). Slots are added once and never removed; readers take no lock (a copy of the table's values is
one C-level operation, atomic under the GIL).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from plugin_pool._dispatch import CallStats
from plugin_pool.config import PluginSettings
from plugin_pool.errors import DuplicatePluginError, InvalidPluginError, PluginNotFoundError
from plugin_pool.integrity import ContentHash
from plugin_pool.lifecycle import PluginState
from plugin_pool.manifest import Manifest
from plugin_pool.model import Capabilities, Plugin, PluginInfo, TrustLevel

__all__ = ["Slot", "SlotTable", "failed_slot", "log_fields", "read_info"]


@dataclass(slots=True)
class Slot:
    """The host's private bookkeeping for one plugin."""

    info: PluginInfo
    plugin: Plugin | None
    settings: PluginSettings
    manifest: Manifest | None = None
    """Set for a plugin loaded from a folder (an Untrusted one's code is never imported here)."""
    state: PluginState = PluginState.DISCOVERED
    reason: str | None = None
    capabilities: Capabilities = field(default_factory=Capabilities)
    stats: CallStats | None = None
    started_seq: int | None = None
    registered: bool = False
    content_hash: ContentHash | None = None
    """Folder plugins: the hash of their files when added (recorded as the registry's assembly_hash); the
    copy that is loaded is hashed again at start and must match, else the plugin fails naming the change."""
    source: str | None = None
    """Where discovery found it (folder or entry point), for health and audit details."""
    disabled: str | None = None
    """Why an operator disabled it in the registry (None while enabled): the host does not start it."""
    stopped_by_disable: bool = False
    """The host stopped it because it was disabled, so enabling it starts it again."""

    @property
    def plugin_id(self) -> str:
        """The plugin's id."""
        return self.info.id

    @property
    def loadable(self) -> bool:
        """Whether the host has something to start: a plugin object, or a folder."""
        return self.plugin is not None or self.manifest is not None

    @property
    def sandboxed(self) -> bool:
        """Whether the plugin runs in sandbox workers (an Untrusted folder plugin)."""
        return self.manifest is not None and self.info.trust_level is TrustLevel.UNTRUSTED

    @property
    def why_not_active(self) -> str | None:
        """The reason a caller is told when the plugin takes no work: its failure, or the operator's disable."""
        return self.reason or self.disabled


def failed_slot(
    info: PluginInfo, reason: str, *, settings: PluginSettings | None = None, source: str | None = None
) -> Slot:
    """A slot for a plugin that could not be added or loaded: Failed with ``reason`` (health shows it)."""
    return Slot(
        info=info,
        plugin=None,
        settings=settings or PluginSettings(),
        state=PluginState.FAILED,
        reason=reason,
        source=source,
    )


class SlotTable:
    """Slots by plugin id, in the order they were added. Writers hold the host lock; readers take none."""

    __slots__ = ("_slots",)

    def __init__(self) -> None:
        self._slots: dict[str, Slot] = {}

    def get(self, plugin_id: str) -> Slot:
        """The slot of ``plugin_id``; raises PluginNotFoundError naming the ids that are known."""
        slot = self._slots.get(plugin_id)
        if slot is None:
            raise self.not_found(plugin_id)
        return slot

    def find(self, plugin_id: str) -> Slot | None:
        """The slot of ``plugin_id``, or None."""
        return self._slots.get(plugin_id)

    def not_found(self, plugin_id: str) -> PluginNotFoundError:
        """The error for an id this host does not know."""
        return PluginNotFoundError(
            f"no plugin {plugin_id!r} in this host; known: {', '.join(self._slots) or 'none'}",
            plugin_id=plugin_id,
        )

    def check_new(self, plugin_id: str) -> None:
        """Raise DuplicatePluginError if ``plugin_id`` is taken."""
        if plugin_id in self._slots:
            raise DuplicatePluginError(
                f"plugin {plugin_id!r} is already added to this host; plugin ids must be unique",
                plugin_id=plugin_id,
            )

    def add(self, slot: Slot) -> None:
        """Keep a new slot (caller holds the host lock); raises DuplicatePluginError for a known id."""
        self.check_new(slot.plugin_id)
        self._slots[slot.plugin_id] = slot

    def __contains__(self, plugin_id: object) -> bool:
        return plugin_id in self._slots

    def __iter__(self) -> Iterator[Slot]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        return len(self._slots)

    def snapshot(self) -> tuple[Slot, ...]:
        """Every slot, in the order added: one C-level copy, so it never sees a table half-changed."""
        return tuple(self._slots.values())

    def ids(self) -> list[str]:
        """Every plugin id, in the order added."""
        return list(self._slots)


def log_fields(slot: Slot, event: str) -> dict[str, Any]:
    """The seed's log fields for one plugin: ``event``, ``pluginId``, ``trustLevel``, ``lifecycleState``."""
    return {
        "event": event,
        "pluginId": slot.info.id,
        "trustLevel": slot.info.trust_level.value,
        "lifecycleState": slot.state.value,
    }


def read_info(plugin: Any) -> PluginInfo:
    """A plugin object's info, checked to be a PluginInfo; raises InvalidPluginError naming the object."""
    try:
        info = plugin.info
    except Exception as exc:
        raise InvalidPluginError(f"cannot read the info of plugin {plugin!r}: {exc}", field="info") from exc
    if not isinstance(info, PluginInfo):
        raise InvalidPluginError(
            f"plugin {plugin!r} has info of type {type(info).__name__}; it must be a PluginInfo",
            field="info",
        )
    return info
