"""The host's slot table: one :class:`Slot` per plugin id, its lookup errors, and the one Failed-slot builder.

A slot is the host's private bookkeeping for one plugin (its info, object or folder, state and reason,
counters). Slots are added once and never removed; readers take no lock (a copy of the table's values is
one C-level operation, atomic under the GIL).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from plugin_pool._dispatch import CallStats
from plugin_pool.config import PluginSettings
from plugin_pool.errors import DuplicatePluginError, InvalidPluginError, PluginNotFoundError
from plugin_pool.integrity import ContentHash
from plugin_pool.lifecycle import PluginState
from plugin_pool.manifest import Manifest
from plugin_pool.model import Capabilities, Capability, Plugin, PluginInfo, TrustLevel, is_valid_capability_name

__all__ = [
    "RejectedSource",
    "Slot",
    "SlotTable",
    "failed_slot",
    "log_fields",
    "read_info",
    "reconcile_capabilities",
    "report_undeclared_capabilities",
    "trust_label",
]

_log = logging.getLogger("plugin_pool.host")
_MAX_REPORTED_CAPABILITIES = 64


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
    private copy made at Loading (copied and hashed in one pass, plugin_pool.staging) must match it, else
    the plugin fails naming the change."""
    source: str | None = None
    """Where discovery found it (folder or entry point), for health and audit details."""
    disabled: str | None = None
    """Why an operator disabled it in the registry (None while enabled): the host does not start it."""
    stopped_by_disable: bool = False
    """The host stopped it because it was disabled, so enabling it starts it again."""
    trust_decided: bool = True
    """False for a plugin refused before the host decided its level (``info.trust_level`` is then only a
    placeholder: health and logs say ``unknown``)."""
    signed_by: str | None = None
    """A Trusted folder plugin: the trusted key whose signature verified (the reason it is Trusted)."""

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
    info: PluginInfo,
    reason: str,
    *,
    settings: PluginSettings | None = None,
    source: str | None = None,
    trust_decided: bool = True,
) -> Slot:
    """A slot for a plugin that could not be added or loaded: Failed with ``reason`` (health shows it).

    ``trust_decided`` False: the host refused it before deciding a level (``info``'s is a placeholder)."""
    return Slot(
        info=info,
        plugin=None,
        settings=settings or PluginSettings(),
        state=PluginState.FAILED,
        reason=reason,
        source=source,
        trust_decided=trust_decided,
    )


@dataclass(frozen=True, slots=True)
class RejectedSource:
    """A folder or entry point discovery refused (a duplicate id included), as health lists it.

    ``source`` is the folder or entry point, ``kind`` why (a content kind such as ``symlink``, or
    ``signature``, ``manifest``, ``host_version``, ``entry_point``, ``duplicate``, ``path``), ``reason`` the
    message with the fix; ``plugin_id`` is None when no valid id could be read; ``duplicate_of`` names the
    source that has the id. All text is printable (control characters escaped).
    """

    source: str
    kind: str
    reason: str
    plugin_id: str | None = None
    duplicate_of: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """A JSON-compatible dict."""
        return {
            "source": self.source,
            "kind": self.kind,
            "reason": self.reason,
            "plugin_id": self.plugin_id,
            "duplicate_of": self.duplicate_of,
        }


class SlotTable:
    """Slots by plugin id, in the order they were added. Writers hold the host lock; readers take none."""

    __slots__ = ("_rejected", "_slots")

    def __init__(self) -> None:
        self._slots: dict[str, Slot] = {}
        self._rejected: tuple[RejectedSource, ...] = ()

    @property
    def rejected(self) -> tuple[RejectedSource, ...]:
        """What the last discovery scan refused, in scan order (replaced as a whole by each scan)."""
        return self._rejected

    def set_rejected(self, rejected: tuple[RejectedSource, ...]) -> None:
        """Replace the list of refused sources (caller holds the host lock)."""
        self._rejected = rejected

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


def trust_label(slot: Slot) -> str:
    """The slot's trust level as health and logs show it: its value, or ``unknown`` when never decided."""
    return slot.info.trust_level.value if slot.trust_decided else "unknown"


def log_fields(slot: Slot, event: str) -> dict[str, Any]:
    """The seed's log fields for one plugin: ``event``, ``pluginId``, ``trustLevel``, ``lifecycleState``."""
    return {
        "event": event,
        "pluginId": slot.info.id,
        "trustLevel": trust_label(slot),
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


def reconcile_capabilities(slot: Slot, code: Capabilities) -> Capabilities:
    """A folder plugin's capabilities: the ones its manifest declares, each mapped to the method its code
    names for it (the manifest is what was hashed, signed and registered; the code implements it).

    Raises InvalidPluginError naming the folder for a capability the manifest declares and the code lacks.
    One the code has and the manifest does not is not routed, and is reported (a warning per capability).
    """
    manifest = slot.manifest
    assert manifest is not None
    found = []
    for name, declared in manifest.capabilities.items():
        implemented = code.get(name)
        if implemented is None:
            raise InvalidPluginError(
                f"plugin folder {manifest.directory}: plugin.toml declares capability {name!r} but the code of "
                f"{manifest.entry!r} does not; add it to the code, or remove [capabilities.{name}] from plugin.toml",
                plugin_id=slot.info.id,
                field="capabilities",
            )
        found.append(Capability(name, declared.parameters, method=implemented.method))
    report_undeclared_capabilities(slot, code)
    return Capabilities(found)


def report_undeclared_capabilities(slot: Slot, code_capabilities: Iterable[str]) -> list[str]:
    """Log a warning (event ``capability_undeclared``) for each capability of the plugin's code that its
    ``plugin.toml`` does not declare: the host never routes a call to it, so the author should know.

    ``code_capabilities`` may come from a sandbox worker (untrusted data): only valid capability names are
    reported, at most 64. Returns the names reported. Never raises.
    """
    manifest = slot.manifest
    declared = manifest.capabilities if manifest is not None else slot.capabilities
    undeclared = sorted({n for n in code_capabilities if is_valid_capability_name(n) and n not in declared})
    for name in undeclared[:_MAX_REPORTED_CAPABILITIES]:
        _log.warning(
            "plugin %s: its code offers capability %r, which its plugin.toml does not declare: no call is routed "
            "to it; declare it under [capabilities.%s] (and re-sign a Trusted folder) to offer it",
            slot.info.id,
            name,
            name,
            extra={**log_fields(slot, "capability_undeclared"), "capability": name},
        )
    return undeclared[:_MAX_REPORTED_CAPABILITIES]
