"""Admission: how plugins come into the host -- added in code, configured, from a folder, or discovered.

Every plugin admitted gets a slot (Discovered) and a registration, at the trust level the host decides
(plugin_pool.trust, the one rule). One that cannot be admitted (a bad entry or manifest, a rejected
signature, what a folder may not hold, a changed folder) is audited once, counted, listed in health
(``rejected``, for what discovery refused) and, when its id is valid and free, kept as a Failed slot with
the reason; a duplicate id never touches the plugin that has it. The others go on. Nothing here starts a
plugin (that is the lifecycle part).
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
from plugin_pool.discovery import DiscoveredPlugin, Discovery, DiscoveryResult, RescanReport, printable
from plugin_pool.errors import (
    DuplicatePluginError,
    IntegrityError,
    InvalidPluginError,
    RegistryError,
    TrustViolationError,
)
from plugin_pool.host._core import HostCore
from plugin_pool.host._slots import RejectedSource, Slot, failed_slot, log_fields, read_info
from plugin_pool.lifecycle import PluginState
from plugin_pool.manifest import read_manifest
from plugin_pool.model import Capabilities, Plugin, PluginInfo, TrustLevel
from plugin_pool.registry.base import EventKind
from plugin_pool.trust import TrustSource, decide_trust_level

__all__ = ["Admission"]

_log = logging.getLogger("plugin_pool.host")
_DISCOVERY_EVENTS: Mapping[str, EventKind] = MappingProxyType(
    {"signature": EventKind.SIGNATURE_REJECTED, "duplicate": EventKind.DUPLICATE_REJECTED}
)


class Admission:
    """Adds plugins to the host: objects, configured entries and folders, discovery results.

    Every trust level is decided by :func:`plugin_pool.trust.decide_trust_level` (the one rule)."""

    def __init__(self, core: HostCore) -> None:
        self._core = core
        self._discovery: Discovery | None = None
        self._reported: set[tuple[str, str]] = set()
        """Refused sources already audited and counted, by (source, reason): a scan repeats them."""

    # -- in code and configuration ---------------------------------------------------------------------

    def add_plugin(
        self,
        plugin: Plugin,
        *,
        config: Mapping[str, Any] | None = None,
        services: Sequence[str] = (),
        trust_level: TrustLevel | str | None = None,
    ) -> PluginInfo:
        """See :meth:`PluginHost.add_plugin`."""
        info = read_info(plugin)
        settings = self._core.config.plugins.get(info.id)
        configured = trust_level if trust_level is not None else (settings.trust_level if settings else None)
        decision = decide_trust_level(info.id, TrustSource.CODE, declared=info.trust_level, configured=configured)
        if settings is None or config is not None or services:
            settings = PluginSettings(
                config=MappingProxyType(dict(config or {})), services=tuple(services), enabled=True
            )
        return self._add_object(plugin, settings, decision.level)

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
                trust_decided = settings.path is None  # an entry's level is its configured one
                level = (settings.trust_level or "trusted") if trust_decided else "untrusted"
                info = PluginInfo(id=plugin_id, name=plugin_id, version="0", trust_level=TrustLevel.parse(level))
                reason = f"loading failed: {type(exc).__name__}: {exc}"
                details = {"reason": printable(reason), "entry": settings.entry}
                self.add_failed(
                    info,
                    reason,
                    EventKind.FAILED,
                    details,
                    settings=settings,
                    source=settings.path,
                    trust_decided=trust_decided,
                )
            added.append(plugin_id)
        return added

    def _add_configured_folder(self, plugin_id: str, settings: PluginSettings) -> None:
        """A ``[plugins.<id>] path`` folder, judged exactly as a discovered one (a valid signature makes it
        Trusted); a refusal is a Failed slot audited as discovery audits it."""
        assert settings.path is not None
        found = self._get_discovery().examine_folder(settings.path)
        if found.plugin_id is not None and found.plugin_id != plugin_id:
            raise InvalidPluginError(
                f"folder {settings.path} configured as plugin {plugin_id!r} declares id {found.plugin_id!r}; "
                f"rename the [plugins.{found.plugin_id}] table or fix the manifest",
                plugin_id=plugin_id,
                field="id",
            )
        if found.error is not None:
            self._add_refused(replace(found, plugin_id=plugin_id), settings=settings)
            return
        self._add_discovered_folder(found, config=settings.config, services=settings.services)

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
        decision = decide_trust_level(
            plugin_id, TrustSource.ENTRY, declared=info.trust_level, configured=settings.trust_level
        )
        self._add_object(plugin, settings, decision.level)

    def add_plugin_dir(
        self,
        directory: str | Path,
        *,
        config: Mapping[str, Any] | None = None,
        services: Sequence[str] = (),
        verify_content: bool = True,
    ) -> PluginInfo:
        """See :meth:`PluginHost.add_plugin_dir`."""
        if not verify_content:
            manifest = read_manifest(directory)
            info = manifest.info
            if info.trust_level is not TrustLevel.UNTRUSTED:
                raise TrustViolationError(
                    f"plugin folder {manifest.directory} claims trust level {info.trust_level.value}; a folder "
                    f"added without content verification runs Untrusted only (Trusted needs a verified "
                    f"signature: add it with verify_content=True)",
                    plugin_id=info.id,
                )
            slot = Slot(
                info=info, plugin=None, settings=self.settings_for(info.id, config, services), manifest=manifest
            )
            return self._insert(slot, manifest.capabilities)
        found = self._get_discovery().examine_folder(directory)
        if found.error is not None:
            raise _refusal_error(found)
        return self._add_discovered_folder(found, config=config, services=services, raise_errors=True)

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
        for found in result.plugins:
            if found.plugin_id is None or found.plugin_id in self._core.slots:
                continue
            if found.kind == "entry_point":
                self._add_entry_point(found)
            else:
                self._add_discovered_folder(found)
        for found in result.errors:
            self._add_refused(found)
        # Health lists what this scan refused, whatever it held (no valid id, a duplicate): the scan goes on.
        self._core.slots.set_rejected(tuple(_rejected_source(found) for found in result.errors))

    def _add_discovered_folder(
        self,
        found: DiscoveredPlugin,
        *,
        config: Mapping[str, Any] | None = None,
        services: Sequence[str] = (),
        raise_errors: bool = False,
    ) -> PluginInfo:
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
            settings=self.settings_for(info.id, config, services),
            manifest=manifest,
            content_hash=found.content_hash,
            source=found.source,
            signed_by=found.key_id if found.trust_level is TrustLevel.TRUSTED else None,
        )
        try:
            return self._insert(slot, manifest.capabilities)
        except RegistryError as exc:
            if raise_errors:
                raise
            # The registry knows this version with another hash: the files changed without a new version.
            reason = f"content hash mismatch: {exc}"
            details = {"source": printable(found.source), "reason": printable(reason)}
            self.add_failed(info, reason, EventKind.HASH_MISMATCH, details, integrity_kind="hash_mismatch")
            return info

    def _add_entry_point(self, found: DiscoveredPlugin) -> None:
        assert found.entry_point is not None and found.plugin_id is not None
        plugin_id = found.plugin_id
        configured = self._core.config.plugins.get(plugin_id)
        configured_level = configured.trust_level if configured else None
        # Decided before the import (the object may only lower it, by saying untrusted).
        info = PluginInfo(
            id=plugin_id,
            name=plugin_id,
            version="0",
            trust_level=decide_trust_level(plugin_id, TrustSource.ENTRY_POINT, configured=configured_level).level,
        )
        try:
            plugin = load_entry_point(found.entry_point)
            declared = read_info(plugin)
            if declared.id != plugin_id:
                raise InvalidPluginError(
                    f"{found.source} declares id {declared.id!r}; name the entry point after the plugin's id",
                    plugin_id=plugin_id,
                    field="id",
                )
            info = declared  # a refusal below shows the level the object itself declares
            decision = decide_trust_level(
                plugin_id, TrustSource.ENTRY_POINT, declared=declared.trust_level, configured=configured_level
            )
            self._add_object(plugin, self.settings_for(plugin_id, None, ()), decision.level, source=found.source)
        except DuplicatePluginError:
            raise
        except Exception as exc:
            reason = f"loading failed: {found.source}: {type(exc).__name__}: {exc}"
            details = {"source": printable(found.source), "reason": printable(reason)}
            self.add_failed(info, reason, EventKind.FAILED, details, source=found.source)

    def _add_refused(self, found: DiscoveredPlugin, *, settings: PluginSettings | None = None) -> None:
        """Audit and count a refused candidate once; keep it as a Failed plugin when its id is free.

        A duplicate never touches the plugin that has the id: it is audited as ``duplicate_rejected``
        without a plugin id (the details name both sources). Any other refusal whose id is free becomes a
        Failed slot (health, ``require``, the CLI's exit code see it) carrying the audit; one without a valid
        id, or whose id another plugin has, is audited without a plugin id.
        """
        key = (found.source, found.error or "")
        if settings is None and key in self._reported:
            return
        self._reported.add(key)
        core = self._core
        if found.error_kind is not None:
            core.metrics.count_discovery_rejection(found.error_kind)
        event, details, integrity_kind = _refusal_audit(found)
        plugin_id = found.plugin_id
        if (
            found.error_kind != "duplicate"
            and plugin_id is not None
            and (settings is not None or plugin_id not in core.slots)
        ):
            self.add_failed(
                _placeholder_info(found, plugin_id),
                found.decision,
                event,
                details,
                settings=settings,
                source=found.source,
                integrity_kind=integrity_kind,
                trust_decided=_trust_decided(found),
            )
            return
        if integrity_kind is not None:
            core.metrics.count_integrity_rejection(plugin_id, integrity_kind)
        core.audit(event, None, details={**details, "plugin_id": plugin_id})
        _log.error(
            "plugin source refused: %s: %s",
            printable(found.source),
            printable(found.decision),
            extra={"event": event.value, "pluginId": plugin_id, "trustLevel": "unknown"},
        )

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
        integrity_kind: str | None = None,
        trust_decided: bool = True,
    ) -> None:
        """Keep a plugin that could not be admitted as Failed (health shows it), count it and audit why.

        ``integrity_kind`` counts it in ``plugin_integrity_rejections_total{kind}`` too. A configured plugin
        (``settings`` given) whose id is taken raises DuplicatePluginError; a discovered one is left out (the
        id belongs to the first).
        """
        slot = failed_slot(
            info,
            reason,
            settings=settings,
            source=source or _str_or_none(details.get("source")),
            trust_decided=trust_decided,
        )
        with self._core.lock:
            if info.id in self._core.slots:
                if settings is None:
                    return
                raise DuplicatePluginError(f"plugin {info.id!r} is already added", plugin_id=info.id)
            self._core.slots.add(slot)
        metrics = self._core.metrics
        metrics.add_plugin(info.id)
        metrics.count_failure(info.id)
        if integrity_kind is not None:
            metrics.count_integrity_rejection(info.id, integrity_kind)
        self._core.audit(kind, info.id, state=PluginState.FAILED, details=details)
        _log.error("plugin failed to load: %s", printable(reason), extra=log_fields(slot, "plugin_failed"))

    def _add_object(
        self, plugin: Plugin, settings: PluginSettings, level: TrustLevel, *, source: str | None = None
    ) -> PluginInfo:
        """Keep an in-process object at the ``level`` the host decided (its own info may say otherwise)."""
        declared_info = read_info(plugin)
        info = declared_info if declared_info.trust_level is level else replace(declared_info, trust_level=level)
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


def _refusal_audit(found: DiscoveredPlugin) -> tuple[EventKind, dict[str, Any], str | None]:
    """The audit event, its details and the integrity metric kind of a refused candidate. Pure."""
    source = printable(found.source)
    reason = printable(found.decision)
    if found.error_kind == "duplicate":
        details: dict[str, Any] = {
            "plugin_id": found.plugin_id,
            "source": source,
            "first_source": printable(found.duplicate_of or ""),
            "reason": reason,
        }
        return EventKind.DUPLICATE_REJECTED, details, None
    if found.rejection is not None:
        return EventKind.INTEGRITY_REJECTED, {**found.rejection, "source": source}, found.rejection["kind"]
    if found.error_kind == "integrity" and found.integrity_kind is not None:
        return (
            EventKind.FAILED,
            {"source": source, "reason": reason, "kind": found.integrity_kind},
            found.integrity_kind,
        )
    event = _DISCOVERY_EVENTS.get(found.error_kind or "", EventKind.FAILED)
    return event, {"source": source, "reason": reason}, "signature" if found.error_kind == "signature" else None


def _rejected_source(found: DiscoveredPlugin) -> RejectedSource:
    kind = found.integrity_kind if found.error_kind == "integrity" and found.integrity_kind else found.error_kind
    return RejectedSource(
        source=printable(found.source),
        kind=kind or "error",
        reason=printable(found.error or found.decision),
        plugin_id=found.plugin_id,
        duplicate_of=printable(found.duplicate_of) if found.duplicate_of is not None else None,
    )


def _trust_decided(found: DiscoveredPlugin) -> bool:
    """Whether the host decided a level for a refused folder: only one that claims Untrusted (it runs so
    whatever else it holds); a Trusted claim that did not verify, an unreadable manifest or an entry point
    refused before import have none."""
    return found.manifest is not None and found.manifest.info.trust_level is TrustLevel.UNTRUSTED


def _placeholder_info(found: DiscoveredPlugin, plugin_id: str) -> PluginInfo:
    if found.manifest is not None and found.manifest.info.id == plugin_id:
        return found.manifest.info
    return PluginInfo(id=plugin_id, name=plugin_id, version="0", trust_level=TrustLevel.UNTRUSTED)


def _refusal_error(found: DiscoveredPlugin) -> Exception:
    """The exception ``add_plugin_dir`` raises for a folder discovery would refuse."""
    cause = found.cause
    if isinstance(cause, IntegrityError | InvalidPluginError):
        return cause
    if found.error_kind == "signature":
        return TrustViolationError(f"plugin folder {found.source}: {found.error}", plugin_id=found.plugin_id)
    return InvalidPluginError(f"plugin folder {found.source}: {found.error}", plugin_id=found.plugin_id)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
