"""Admission: how plugins come into the host -- added in code, configured, from a folder, or discovered.

Every plugin admitted gets a slot (Discovered) and a registration; one that cannot be admitted (a bad
entry or manifest, a rejected signature, a changed folder) gets a Failed slot with the reason, audited and
shown in health, and the others go on. Nothing here starts a plugin (that is the lifecycle part).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from plugin_pool._loader import load_entry, load_entry_point
from plugin_pool.config import PluginSettings
from plugin_pool.discovery import DiscoveredPlugin, Discovery, DiscoveryResult, RescanReport
from plugin_pool.errors import (
    DuplicatePluginError,
    InvalidPluginError,
    RegistryError,
    TrustViolationError,
)
from plugin_pool.host._core import HostCore
from plugin_pool.host._slots import Slot, failed_slot, log_fields, read_info
from plugin_pool.integrity import compute_content_hash
from plugin_pool.lifecycle import PluginState
from plugin_pool.manifest import read_manifest
from plugin_pool.model import Capabilities, Plugin, PluginInfo, TrustLevel
from plugin_pool.registry.base import EventKind

__all__ = ["Admission"]

_log = logging.getLogger("plugin_pool.host")
_INTEGRITY_EVENTS: Mapping[EventKind, str] = MappingProxyType(
    {EventKind.HASH_MISMATCH: "hash_mismatch", EventKind.SIGNATURE_REJECTED: "signature"}
)


class Admission:
    """Adds plugins to the host: objects, configured entries and folders, discovery results."""

    def __init__(self, core: HostCore) -> None:
        self._core = core
        self._discovery: Discovery | None = None
        self._reported_duplicates: set[tuple[str, str]] = set()

    # -- in code and configuration ---------------------------------------------------------------------

    def add_plugin(
        self, plugin: Plugin, *, config: Mapping[str, Any] | None = None, services: Sequence[str] = ()
    ) -> PluginInfo:
        """See :meth:`PluginHost.add_plugin`."""
        settings = self._core.config.plugins.get(read_info(plugin).id)
        if settings is None or config is not None or services:
            settings = PluginSettings(
                config=MappingProxyType(dict(config or {})), services=tuple(services), enabled=True
            )
        return self._add_object(plugin, settings)

    def add_configured_plugins(self) -> list[str]:
        """See :meth:`PluginHost.add_configured_plugins`."""
        added = []
        for plugin_id, settings in self._core.config.plugins.items():
            if not settings.enabled or (settings.entry is None and settings.path is None):
                continue
            try:
                if settings.path is not None:
                    self._add_configured_folder(plugin_id, settings)
                else:
                    self._add_configured_entry(plugin_id, settings)
            except DuplicatePluginError:
                raise
            except Exception as exc:
                level = "untrusted" if settings.path is not None else settings.trust_level or "trusted"
                info = PluginInfo(id=plugin_id, name=plugin_id, version="0", trust_level=TrustLevel.parse(level))
                reason = f"loading failed: {type(exc).__name__}: {exc}"
                details = {"reason": reason, "entry": settings.entry}
                self.add_failed(info, reason, EventKind.FAILED, details, settings=settings, source=settings.path)
            added.append(plugin_id)
        return added

    def _add_configured_folder(self, plugin_id: str, settings: PluginSettings) -> None:
        assert settings.path is not None
        declared = read_manifest(settings.path).info.id
        if declared != plugin_id:
            raise InvalidPluginError(
                f"folder {settings.path} configured as plugin {plugin_id!r} declares id {declared!r}; "
                f"rename the [plugins.{declared}] table or fix the manifest",
                plugin_id=plugin_id,
                field="id",
            )
        self.add_plugin_dir(settings.path, config=settings.config, services=settings.services)

    def _add_configured_entry(self, plugin_id: str, settings: PluginSettings) -> None:
        assert settings.entry is not None
        plugin = load_entry(settings.entry)
        info = read_info(plugin)
        if info.id != plugin_id:
            raise InvalidPluginError(
                f"entry {settings.entry!r} configured as plugin {plugin_id!r} declares id {info.id!r}; "
                f"rename the [plugins.{info.id}] table or fix the plugin's info",
                plugin_id=plugin_id,
                field="id",
            )
        if info.trust_level.value != settings.trust_level:
            raise TrustViolationError(
                f"plugin {plugin_id!r} declares trust level {info.trust_level.value} but the "
                f"configuration says {settings.trust_level}; they must agree",
                plugin_id=plugin_id,
            )
        self._add_object(plugin, settings)

    def add_plugin_dir(
        self,
        directory: str | Path,
        *,
        config: Mapping[str, Any] | None = None,
        services: Sequence[str] = (),
        verify_content: bool = True,
    ) -> PluginInfo:
        """See :meth:`PluginHost.add_plugin_dir`."""
        manifest = read_manifest(directory)
        info = manifest.info
        if info.trust_level is not TrustLevel.UNTRUSTED:
            raise TrustViolationError(
                f"plugin folder {manifest.directory} claims trust level {info.trust_level.value}; a folder "
                f"can only add an Untrusted plugin (Trusted needs a signed manifest; BuiltIn plugins are "
                f"added in code with host.add_plugin)",
                plugin_id=info.id,
            )
        content_hash = compute_content_hash(manifest.directory) if verify_content else None
        settings = self.settings_for(info.id, config, services)
        slot = Slot(info=info, plugin=None, settings=settings, manifest=manifest, content_hash=content_hash)
        return self._insert(slot, manifest.capabilities)

    def settings_for(self, plugin_id: str, config: Mapping[str, Any] | None, services: Sequence[str]) -> PluginSettings:
        """A folder plugin's settings: the arguments given, else its ``[plugins.<id>]`` table."""
        configured = self._core.config.plugins.get(plugin_id)
        return PluginSettings(
            config=MappingProxyType(dict(config if config is not None else (configured.config if configured else {}))),
            services=tuple(services) if services else (configured.services if configured else ()),
            min_workers=configured.min_workers if configured else None,
            max_workers=configured.max_workers if configured else None,
        )

    # -- discovery -------------------------------------------------------------------------------------------

    def discover(self) -> DiscoveryResult:
        """See :meth:`PluginHost.discover`."""
        with self._core.lock:
            self._core.check_usable()
            result = self._get_discovery().get_result()
            self._add_discovered(result)
        return result

    def rescan(self) -> RescanReport:
        """See :meth:`PluginHost.rescan`."""
        with self._core.lock:
            self._core.check_usable()
            report = self._get_discovery().rescan()
            self._add_discovered(report.result)
        if report.changed or report.removed:
            _log.warning(
                "rescan: changed %s, removed %s (running plugins are left as they are)",
                list(report.changed),
                list(report.removed),
                extra={"event": "plugins_rescanned"},
            )
        return report

    def _get_discovery(self) -> Discovery:
        if self._discovery is None:
            self._discovery = Discovery.from_config(self._core.config)
        return self._discovery

    def _add_discovered(self, result: DiscoveryResult) -> None:
        for found in (*result.plugins, *result.errors):
            if found.plugin_id is None:
                continue
            if found.error_kind == "duplicate":
                self._report_duplicate(found)
            elif found.plugin_id in self._core.slots:
                continue
            elif found.error is not None:
                self._add_rejected(found)
            elif found.kind == "entry_point":
                self._add_entry_point(found)
            else:
                self._add_discovered_folder(found)

    def _add_discovered_folder(self, found: DiscoveredPlugin) -> None:
        manifest = found.manifest
        assert manifest is not None and found.plugin_id is not None and found.trust_level is not None
        info = (
            manifest.info
            if manifest.info.trust_level is found.trust_level
            else replace(manifest.info, trust_level=found.trust_level)
        )
        slot = Slot(
            info=info,
            plugin=None,
            settings=self.settings_for(info.id, None, ()),
            manifest=manifest,
            content_hash=found.content_hash,
            source=found.source,
        )
        try:
            self._insert(slot, manifest.capabilities)
        except RegistryError as exc:
            # The registry knows this version with another hash: the files changed without a new version.
            reason = f"content hash mismatch: {exc}"
            self.add_failed(info, reason, EventKind.HASH_MISMATCH, {"source": found.source, "reason": reason})

    def _add_entry_point(self, found: DiscoveredPlugin) -> None:
        assert found.entry_point is not None and found.plugin_id is not None
        plugin_id = found.plugin_id
        try:
            plugin = load_entry_point(found.entry_point)
            info = read_info(plugin)
            if info.id != plugin_id:
                raise InvalidPluginError(
                    f"{found.source} declares id {info.id!r}; name the entry point after the plugin's id",
                    plugin_id=plugin_id,
                    field="id",
                )
            if not info.trust_level.in_process:
                raise TrustViolationError(
                    f"{found.source} says {info.trust_level.value}; an entry point runs in-process, so it must "
                    f"say builtin or trusted",
                    plugin_id=plugin_id,
                )
            self._add_object(plugin, self.settings_for(plugin_id, None, ()), source=found.source)
        except DuplicatePluginError:
            raise
        except Exception as exc:
            info = PluginInfo(id=plugin_id, name=plugin_id, version="0", trust_level=TrustLevel.TRUSTED)
            reason = f"loading failed: {found.source}: {type(exc).__name__}: {exc}"
            self.add_failed(info, reason, EventKind.FAILED, {"source": found.source, "reason": reason})

    def _add_rejected(self, found: DiscoveredPlugin) -> None:
        assert found.plugin_id is not None and found.error is not None
        if found.manifest is not None:
            info = found.manifest.info
        else:
            info = PluginInfo(id=found.plugin_id, name=found.plugin_id, version="0", trust_level=TrustLevel.UNTRUSTED)
        kind = EventKind.SIGNATURE_REJECTED if found.error_kind == "signature" else EventKind.FAILED
        self.add_failed(info, found.decision, kind, {"source": found.source, "reason": found.decision})

    def _report_duplicate(self, found: DiscoveredPlugin) -> None:
        """The id belongs to the first source: audit the duplicate once, leave the first one's slot alone."""
        key = (found.plugin_id or "", found.source)
        if key in self._reported_duplicates:
            return
        self._reported_duplicates.add(key)
        self._core.audit(EventKind.FAILED, found.plugin_id, details={"reason": found.decision, "source": found.source})
        _log.error("plugin not added: %s", found.decision, extra={"event": "plugin_failed"})

    # -- slots -----------------------------------------------------------------------------------------------

    def add_failed(
        self,
        info: PluginInfo,
        reason: str,
        kind: EventKind,
        details: Mapping[str, Any],
        *,
        settings: PluginSettings | None = None,
        source: str | None = None,
    ) -> None:
        """Keep a plugin that could not be admitted as Failed (health shows it), count it and audit why.

        A configured plugin (``settings`` given) whose id is taken raises DuplicatePluginError; a discovered
        one is left out (the id belongs to the first).
        """
        slot = failed_slot(info, reason, settings=settings, source=source or _str_or_none(details.get("source")))
        with self._core.lock:
            if info.id in self._core.slots:
                if settings is None:
                    return
                raise DuplicatePluginError(f"plugin {info.id!r} is already added", plugin_id=info.id)
            self._core.slots.add(slot)
        metrics = self._core.metrics
        metrics.add_plugin(info.id)
        metrics.count_failure(info.id)
        if kind in _INTEGRITY_EVENTS:
            metrics.count_integrity_rejection(info.id, _INTEGRITY_EVENTS[kind])
        self._core.audit(kind, info.id, state=PluginState.FAILED, details=details)
        _log.error("plugin failed to load: %s", reason, extra=log_fields(slot, "plugin_failed"))

    def _add_object(self, plugin: Plugin, settings: PluginSettings, *, source: str | None = None) -> PluginInfo:
        info = read_info(plugin)
        if info.trust_level is TrustLevel.UNTRUSTED:
            raise TrustViolationError(
                f"plugin {info.id!r} is Untrusted: its code never runs in the host process, so it cannot be "
                f"added as an object; load it from its folder so it runs in the sandbox",
                plugin_id=info.id,
            )
        # Capabilities are read again (and validated) at loading; registration records what is declared now.
        try:
            declared = plugin.capabilities
            declared = declared if isinstance(declared, Capabilities) else Capabilities()
        except Exception:
            declared = Capabilities()
        return self._insert(Slot(info=info, plugin=plugin, settings=settings, source=source), declared)

    def _insert(self, slot: Slot, declared: Capabilities) -> PluginInfo:
        """Register a new slot (Discovered) and keep it; raises DuplicatePluginError for a known id."""
        core = self._core
        with core.lock:
            core.check_usable()
            core.slots.check_new(slot.plugin_id)
            self._register(slot, declared)
            core.slots.add(slot)
        core.metrics.add_plugin(slot.plugin_id)
        _log.info("plugin added", extra=log_fields(slot, "plugin_added"))
        return slot.info

    def _register(self, slot: Slot, declared: Capabilities) -> None:
        record = self._core.registry.register(
            slot.info,
            declared,
            actor=self._core.actor,
            assembly_hash=slot.content_hash.digest if slot.content_hash is not None else None,
            config=slot.settings.config,
        )
        slot.registered = True
        if not record.enabled:
            slot.disabled = "disabled in the registry by an operator"
        if record.status in (PluginState.STOPPED, PluginState.FAILED):
            # Known from an earlier run: its lifecycle goes on from there (Stopped/Failed -> Loading).
            slot.state = record.status
        # Any other stored state belongs to another host sharing the registry (or to one that is gone):
        # this host's own lifecycle starts at Discovered, and each move is reconciled with the registry.


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
