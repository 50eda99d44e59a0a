"""The plugin host a scanning service imports (the seed's Host): lifecycle, trust enforcement, routing, health.

One call's path: ``host.invoke(plugin_id, capability, payload)`` looks up a route built when the plugin
became Active (two dict lookups) and calls it. A BuiltIn route is the bound method itself; a Trusted route
is a monitoring closure; an Untrusted route is a sandbox proxy. Anything that is not routable (unknown
plugin, plugin not Active, undeclared capability) falls to the slow path, which raises a precise error.
"""

from __future__ import annotations

import getpass
import importlib.machinery
import importlib.util
import inspect
import itertools
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CollectorRegistry

from plugin_pool._dispatch import CallStats, CallStatsSnapshot, Route, async_route, monitored_route
from plugin_pool._loader import load_entry
from plugin_pool._steps import StepRunner, StepTimeout
from plugin_pool.config import Config, PluginSettings, SandboxConfig
from plugin_pool.context import PluginContext
from plugin_pool.discovery import (
    ContentHashMismatchError,
    DiscoveredPlugin,
    Discovery,
    DiscoveryResult,
    RescanReport,
    check_content_hash,
)
from plugin_pool.errors import (
    CapabilityDeniedError,
    ConfigError,
    DuplicatePluginError,
    HostClosedError,
    IllegalTransitionError,
    InvalidPluginError,
    LifecycleError,
    LifecycleTimeoutError,
    PluginCallError,
    PluginDisabledError,
    PluginNotActiveError,
    PluginNotFoundError,
    PluginPoolError,
    RegistryConflictError,
    RegistryError,
    RequiredPluginError,
    TrustViolationError,
)
from plugin_pool.integrity import ContentHash, compute_content_hash
from plugin_pool.lifecycle import PluginState, check_transition
from plugin_pool.manifest import Manifest, read_manifest
from plugin_pool.metrics import HostMetrics, PluginSample
from plugin_pool.model import NETWORK_CAPABILITIES, Capabilities, Plugin, PluginInfo, TrustLevel, thaw_json
from plugin_pool.registry.base import EventKind, PluginRegistry, RegistryChange
from plugin_pool.registry.factory import open_registry

if TYPE_CHECKING:
    # The sandbox (and grpc with it) is imported only when the first Untrusted plugin starts, so a host
    # with in-process plugins alone never pays for it.
    from plugin_pool.sandbox.pool import PoolStats, SandboxPool

__all__ = ["HostHealth", "PluginClient", "PluginHealth", "PluginHost"]

# A library never configures logging; the NullHandler only keeps Python's last-resort handler from printing
# our warnings to stderr when the application has not configured logging either.
logging.getLogger("plugin_pool").addHandler(logging.NullHandler())
_log = logging.getLogger("plugin_pool.host")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_INTEGRITY_EVENTS: Mapping[EventKind, str] = MappingProxyType(
    {EventKind.HASH_MISMATCH: "hash_mismatch", EventKind.SIGNATURE_REJECTED: "signature"}
)


@dataclass(frozen=True, slots=True)
class PluginHealth:
    """One plugin's health as the host sees it."""

    plugin_id: str
    name: str
    version: str
    trust_level: TrustLevel
    state: PluginState
    reason: str | None
    capabilities: tuple[str, ...]
    stats: CallStatsSnapshot | None
    """Call counters (None where calls are not monitored, e.g. BuiltIn with monitor_builtin off)."""
    workers: PoolStats | None = None
    """Untrusted plugins: their sandbox workers, queue and restarts by reason (None otherwise)."""

    @property
    def is_active(self) -> bool:
        """Whether the plugin receives work."""
        return self.state is PluginState.ACTIVE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        out: dict[str, Any] = {
            "plugin_id": self.plugin_id,
            "name": self.name,
            "version": self.version,
            "trust_level": self.trust_level.value,
            "state": self.state.value,
            "reason": self.reason,
            "capabilities": list(self.capabilities),
        }
        if self.stats is not None:
            out["calls"] = self.stats.calls
            out["errors"] = self.stats.errors
            out["last_error"] = self.stats.last_error
        if self.workers is not None:
            out["workers"] = {
                "alive": self.workers.workers,
                "busy": self.workers.busy,
                "idle": self.workers.idle,
                "waiting": self.workers.waiting,
                "restarts": dict(self.workers.restarts),
            }
        return out


@dataclass(frozen=True, slots=True)
class HostHealth:
    """The health of every plugin the host knows, in the order they were added."""

    plugins: tuple[PluginHealth, ...]

    @property
    def active(self) -> tuple[str, ...]:
        """Ids of Active plugins."""
        return tuple(p.plugin_id for p in self.plugins if p.is_active)

    @property
    def failed(self) -> Mapping[str, str | None]:
        """Failed plugin ids mapped to the reason."""
        return {p.plugin_id: p.reason for p in self.plugins if p.state is PluginState.FAILED}

    def is_active(self, plugin_id: str) -> bool:
        """Whether ``plugin_id`` is Active. False for unknown ids."""
        return any(p.plugin_id == plugin_id and p.is_active for p in self.plugins)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return {"plugins": [p.to_dict() for p in self.plugins]}


@dataclass(slots=True)
class _Slot:
    """The host's private bookkeeping for one plugin."""

    info: PluginInfo
    plugin: Plugin | None
    settings: PluginSettings
    manifest: Manifest | None = None
    """Set for a plugin loaded from a folder to run in the sandbox (its code is never imported here)."""
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
    def loadable(self) -> bool:
        """Whether the host has something to start: a plugin object, or a folder."""
        return self.plugin is not None or self.manifest is not None

    @property
    def sandboxed(self) -> bool:
        """Whether the plugin runs in sandbox workers (an Untrusted folder plugin)."""
        return self.manifest is not None and self.info.trust_level is TrustLevel.UNTRUSTED


class PluginClient:
    """A handle on one plugin, called the same way at every trust level: ``client.invoke("scan", payload)``.

    Cheap to create; safe to share between threads. It looks the route up on every call, so it follows
    the plugin through restarts and refuses calls once the plugin is no longer Active.
    """

    __slots__ = ("_host", "plugin_id")

    def __init__(self, host: PluginHost, plugin_id: str) -> None:
        self._host = host
        self.plugin_id = plugin_id

    def invoke(self, capability: str, payload: Any = None) -> Any:
        """Call ``capability`` with ``payload``; see :meth:`PluginHost.invoke`."""
        return self._host.invoke(self.plugin_id, capability, payload)

    def invoke_many(self, capability: str, payloads: Iterable[Any]) -> list[Any]:
        """Call ``capability`` once per payload; see :meth:`PluginHost.invoke_many`."""
        return self._host.invoke_many(self.plugin_id, capability, payloads)


class PluginHost:
    """Loads, starts, routes to, monitors and stops plugins of every trust level.

    Use it as a context manager (``with PluginHost(config) as host:``) or call :meth:`open` and
    :meth:`close`; both are idempotent. All methods are thread-safe. Lifecycle methods block while plugin
    code runs (each step is bounded by its timeout); :meth:`invoke` blocks for the call.

    ``metrics_registry``: the Prometheus registry for the host's metrics (see plugin_pool.metrics); by
    default a private one per host (``host.metrics_registry``), so two hosts in one process never collide.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        registry: PluginRegistry | None = None,
        services: Mapping[str, Any] | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config or Config()
        self._owns_registry = registry is None
        # Without a registry passed in, the host opens the one [registry] names (in-memory by default) and
        # closes it with itself.
        self.registry: PluginRegistry = (
            registry if registry is not None else open_registry(self.config.registry, self.config.host)
        )
        # The actor of the host's own audit events: its configured identity and the OS user it runs as.
        self._actor = f"{self.config.host.actor}/{os_user()}"
        self._acting: str | None = None
        """The actor an administrative call named (start_plugin/stop_plugin(actor=...)), while it runs."""
        self._services: dict[str, Any] = dict(services or {})
        self._lock = threading.RLock()
        self._slots: dict[str, _Slot] = {}
        self._routes: dict[str, dict[str, Route]] = {}
        self._batch_routes: dict[str, Callable[[str, Iterable[Any]], list[Any]]] = {}
        self._runner = StepRunner()
        self._pool: SandboxPool | None = None
        self.restarts: Counter[tuple[str, str]] = Counter()
        """Sandbox worker replacements by (plugin id, reason): the seed's sandbox_process_restarts_total."""
        self._seq = itertools.count(1)
        self._opened = False
        self._closed = False
        self._discovery: Discovery | None = None
        self._private_dirs: list[Path] = []
        self._reported_duplicates: set[tuple[str, str]] = set()
        self.metrics_registry = metrics_registry if metrics_registry is not None else CollectorRegistry()
        """The Prometheus registry the host's metrics are on (plugin_pool.metrics); a private one unless the
        caller passed one. The library serves nothing: expose it as the application does its own."""
        self._metrics = HostMetrics(self.metrics_registry, self._list_metric_samples, self.registry.get_stats)
        # One thread of the host's own, in order, for work that must not hold up the thread that asks for
        # it: an operator's disable/enable (the registry calls back in its listener thread, which must not
        # block) and the audit of worker replacements (the sandbox supervisor thread must never wait for a
        # database that just went away).
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plugin-pool-host")
        self._closing = False
        self._unsubscribe: Callable[[], None] | None = None
        try:
            self._unsubscribe = self.registry.subscribe(self._on_registry_change)
        except PluginPoolError as exc:
            _log.warning("host: not told of registry changes (disable/enable by operators): %s", exc)

    # -- open / close ----------------------------------------------------------------------------------

    def open(self) -> PluginHost:
        """Open the host. Idempotent; raises HostClosedError after close."""
        with self._lock:
            if self._closed:
                raise HostClosedError("the plugin host is already closed; create a new PluginHost")
            self._opened = True
        return self

    def close(self) -> None:
        """Stop every Active plugin in reverse start order, then release the host. Idempotent; blocks."""
        self._closing = True  # operators' changes still queued are dropped; audit writes are not
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._background.shutdown(wait=True)
        with self._lock:
            if self._closed:
                return
            try:
                self.stop_plugins()
            finally:
                self._closed = True
                self._routes = {}
                self._batch_routes = {}
                self._runner.close()
                if self._pool is not None:
                    self._pool.close()
                for private in self._private_dirs:
                    shutil.rmtree(private, ignore_errors=True)
                if self._owns_registry:
                    self.registry.close()

    def __enter__(self) -> PluginHost:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        """Whether the host is open and not closed."""
        return self._opened and not self._closed

    # -- adding plugins --------------------------------------------------------------------------------

    def register_service(self, name: str, service: Any) -> None:
        """Offer ``service`` to plugins whose settings list ``name``. Call before starting them."""
        with self._lock:
            self._services[name] = service

    def add_plugin(
        self,
        plugin: Plugin,
        *,
        config: Mapping[str, Any] | None = None,
        services: Sequence[str] = (),
    ) -> PluginInfo:
        """Add an in-process plugin object (BuiltIn or Trusted) and register it as Discovered.

        The host vouches for code it adds itself, so the plugin's declared level is taken as is; an
        Untrusted plugin is refused here (it may only run in the sandbox). Raises InvalidPluginError for
        a plugin whose info cannot be read, DuplicatePluginError for an id already added.
        """
        settings = self.config.plugins.get(self._read_info(plugin).id)
        if settings is None or config is not None or services:
            settings = PluginSettings(
                config=MappingProxyType(dict(config or {})),
                services=tuple(services),
                enabled=True,
            )
        return self._add(plugin, settings)

    def add_configured_plugins(self) -> list[str]:
        """Load every enabled ``[plugins.<id>]`` entry of the configuration; return the ids added.

        An entry that fails to import or is not a valid plugin does not stop the others: it is kept as
        Failed with the reason, logged and audited.
        """
        added = []
        for plugin_id, settings in self.config.plugins.items():
            if not settings.enabled or (settings.entry is None and settings.path is None):
                continue
            if settings.path is not None:
                try:
                    declared = read_manifest(settings.path).info.id
                    if declared != plugin_id:
                        raise InvalidPluginError(
                            f"folder {settings.path} configured as plugin {plugin_id!r} declares id {declared!r}; "
                            f"rename the [plugins.{declared}] table or fix the manifest",
                            plugin_id=plugin_id,
                            field="id",
                        )
                    self.add_plugin_dir(settings.path, config=settings.config, services=settings.services)
                except DuplicatePluginError:
                    raise
                except Exception as exc:
                    self._add_failed_entry(plugin_id, replace(settings, trust_level="untrusted"), exc)
                added.append(plugin_id)
                continue
            assert settings.entry is not None
            try:
                plugin = load_entry(settings.entry)
                info = self._read_info(plugin)
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
                self._add(plugin, settings)
            except DuplicatePluginError:
                raise
            except Exception as exc:
                self._add_failed_entry(plugin_id, settings, exc)
            added.append(plugin_id)
        return added

    def add_plugin_dir(
        self,
        directory: str | Path,
        *,
        config: Mapping[str, Any] | None = None,
        services: Sequence[str] = (),
        verify_content: bool = True,
    ) -> PluginInfo:
        """Add an Untrusted plugin from its folder (``plugin.toml`` and its code). Reads and hashes its files.

        The plugin's code is never imported in the host: it runs in sandbox workers once started. A folder
        cannot make itself BuiltIn or Trusted here (Trusted folders come from :meth:`discover`, which checks
        their signature); such a manifest raises TrustViolationError. Raises ManifestError (an
        InvalidPluginError) naming the file and field for a bad manifest, IntegrityError for a symlink that
        leaves the folder. The content hash is recorded as the registry's assembly_hash and checked again on
        the private copy the workers load; ``verify_content=False`` records none and checks nothing (only
        for folders the caller prepared itself). Not safe to call twice for one id (DuplicatePluginError).
        """
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
        settings = self._settings_for(info.id, config, services)
        slot = _Slot(info=info, plugin=None, settings=settings, manifest=manifest, content_hash=content_hash)
        return self._insert(slot, manifest.capabilities)

    def _settings_for(
        self, plugin_id: str, config: Mapping[str, Any] | None, services: Sequence[str]
    ) -> PluginSettings:
        configured = self.config.plugins.get(plugin_id)
        return PluginSettings(
            config=MappingProxyType(dict(config if config is not None else (configured.config if configured else {}))),
            services=tuple(services) if services else (configured.services if configured else ()),
            min_workers=configured.min_workers if configured else None,
            max_workers=configured.max_workers if configured else None,
        )

    @staticmethod
    def _pool_bounds(slot: _Slot, sandbox: SandboxConfig, settings: PluginSettings | None) -> tuple[int, int]:
        """A sandboxed plugin's (min, max) workers: ``[plugins.<id>]`` wins over the manifest's [pool],
        which wins over ``[sandbox]``."""
        pool = slot.manifest.pool if slot.manifest is not None else {}
        low = (settings.min_workers if settings else None) or pool.get("min_workers") or sandbox.min_workers
        high = (settings.max_workers if settings else None) or pool.get("max_workers") or sandbox.max_workers
        return int(low), max(int(low), int(high))

    # -- discovery ---------------------------------------------------------------------------------------

    def discover(self) -> DiscoveryResult:
        """Discover plugins as ``[discovery]`` and ``[trust]`` say and add every one not added yet.

        Untrusted folders run in the sandbox; signed Trusted folders and entry points run in-process
        (imported only here, for entry points, or at start after the content hash is checked, for Trusted
        folders). A candidate that cannot be added (bad manifest, rejected signature, duplicate id, entry
        point that fails to import, a changed folder whose version the registry knows with another hash) is
        kept as Failed with the reason, audited, and visible in get_health; the others are added. Blocks
        to read, hash and (entry points) import. The scan is cached: calling it again adds nothing new;
        use :meth:`rescan` to look again. Raises only for a configuration mistake (a bad trusted key).
        """
        with self._lock:
            self._check_usable()
            if self._discovery is None:
                self._discovery = Discovery.from_config(self.config)
            result = self._discovery.get_result()
            self._add_discovered(result)
        return result

    def rescan(self) -> RescanReport:
        """Scan again; add plugins that are new, and report (log) the ids that changed or were removed.

        Active plugins are not disturbed: a changed plugin keeps running the code it verified (restarting
        it checks its files against the hash recorded when it was added and fails it if they changed), and
        a removed one keeps running until stopped. Blocks like :meth:`discover`; safe to call repeatedly.
        """
        with self._lock:
            self._check_usable()
            if self._discovery is None:
                self._discovery = Discovery.from_config(self.config)
            report = self._discovery.rescan()
            self._add_discovered(report.result)
        if report.changed or report.removed:
            _log.warning(
                "rescan: changed %s, removed %s (running plugins are left as they are)",
                list(report.changed),
                list(report.removed),
                extra={"event": "plugins_rescanned"},
            )
        return report

    def _add_discovered(self, result: DiscoveryResult) -> None:
        for found in (*result.plugins, *result.errors):
            if found.plugin_id is None:
                continue
            if found.error_kind == "duplicate":
                self._report_duplicate(found)
                continue
            if found.plugin_id in self._slots:
                continue
            if found.error is not None:
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
        slot = _Slot(
            info=info,
            plugin=None,
            settings=self._settings_for(info.id, None, ()),
            manifest=manifest,
            content_hash=found.content_hash,
            source=found.source,
        )
        try:
            self._insert(slot, manifest.capabilities)
        except RegistryError as exc:
            # The registry knows this version with another hash: the files changed without a new version.
            reason = f"content hash mismatch: {exc}"
            self._add_failed(info, reason, EventKind.HASH_MISMATCH, {"source": found.source, "reason": reason})

    def _add_entry_point(self, found: DiscoveredPlugin) -> None:
        assert found.entry_point is not None and found.plugin_id is not None
        plugin_id = found.plugin_id
        settings = self._settings_for(plugin_id, None, ())
        try:
            loaded = found.entry_point.load()
            plugin = loaded() if isinstance(loaded, type) else loaded
            info = self._read_info(plugin)
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
            self._add(plugin, settings)
            self._slots[plugin_id].source = found.source
        except DuplicatePluginError:
            raise
        except Exception as exc:
            info = PluginInfo(id=plugin_id, name=plugin_id, version="0", trust_level=TrustLevel.TRUSTED)
            reason = f"loading failed: {found.source}: {type(exc).__name__}: {exc}"
            self._add_failed(info, reason, EventKind.FAILED, {"source": found.source, "reason": reason})

    def _add_rejected(self, found: DiscoveredPlugin) -> None:
        assert found.plugin_id is not None and found.error is not None
        if found.manifest is not None:
            info = found.manifest.info
        else:
            info = PluginInfo(id=found.plugin_id, name=found.plugin_id, version="0", trust_level=TrustLevel.UNTRUSTED)
        kind = EventKind.SIGNATURE_REJECTED if found.error_kind == "signature" else EventKind.FAILED
        self._add_failed(info, found.decision, kind, {"source": found.source, "reason": found.decision})

    def _report_duplicate(self, found: DiscoveredPlugin) -> None:
        """The id belongs to the first source: audit the duplicate once, leave the first one's slot alone."""
        key = (found.plugin_id or "", found.source)
        if key in self._reported_duplicates:
            return
        self._reported_duplicates.add(key)
        self.registry.record_event(
            EventKind.FAILED,
            plugin_id=found.plugin_id,
            actor=self._actor,
            details={"reason": found.decision, "source": found.source},
        )
        _log.error("plugin not added: %s", found.decision, extra={"event": "plugin_failed"})

    def _add_failed(self, info: PluginInfo, reason: str, kind: EventKind, details: Mapping[str, Any]) -> None:
        """Keep a plugin that could not be added as Failed (health shows it) and audit why."""
        slot = _Slot(
            info=info,
            plugin=None,
            settings=PluginSettings(),
            state=PluginState.FAILED,
            reason=reason,
            source=str(details.get("source")),
        )
        with self._lock:
            if info.id in self._slots:
                return
            self._slots[info.id] = slot
        self._metrics.add_plugin(info.id)
        self._metrics.count_failure(info.id)
        if kind in _INTEGRITY_EVENTS:
            self._metrics.count_integrity_rejection(info.id, _INTEGRITY_EVENTS[kind])
        self.registry.record_event(
            kind, plugin_id=info.id, actor=self._actor, state=PluginState.FAILED, details=details
        )
        _log.error("plugin failed to load: %s", reason, extra=self._log_fields(slot, "plugin_failed"))

    def _read_info(self, plugin: Any) -> PluginInfo:
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

    def _add(self, plugin: Plugin, settings: PluginSettings) -> PluginInfo:
        info = self._read_info(plugin)
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
        return self._insert(_Slot(info=info, plugin=plugin, settings=settings), declared)

    def _insert(self, slot: _Slot, declared: Capabilities) -> PluginInfo:
        """Register a new slot (Discovered) and keep it; raises DuplicatePluginError for a known id."""
        info = slot.info
        with self._lock:
            self._check_usable()
            if info.id in self._slots:
                raise DuplicatePluginError(
                    f"plugin {info.id!r} is already added to this host; plugin ids must be unique",
                    plugin_id=info.id,
                )
            self._register(slot, declared)
            self._slots[info.id] = slot
        self._metrics.add_plugin(info.id)
        _log.info("plugin added", extra=self._log_fields(slot, "plugin_added"))
        return info

    def _register(self, slot: _Slot, declared: Capabilities) -> None:
        record = self.registry.register(
            slot.info,
            declared,
            actor=self._actor,
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
        # this host's own lifecycle starts at Discovered, and _transition reconciles each move.

    def _add_failed_entry(self, plugin_id: str, settings: PluginSettings, exc: Exception) -> None:
        level = TrustLevel.parse(settings.trust_level or "trusted")
        info = PluginInfo(id=plugin_id, name=plugin_id, version="0", trust_level=level)
        reason = f"loading failed: {type(exc).__name__}: {exc}"
        with self._lock:
            if plugin_id in self._slots:
                raise DuplicatePluginError(f"plugin {plugin_id!r} is already added", plugin_id=plugin_id)
            slot = _Slot(info=info, plugin=None, settings=settings, state=PluginState.FAILED, reason=reason)
            self._slots[plugin_id] = slot
        self._metrics.add_plugin(plugin_id)
        self._metrics.count_failure(plugin_id)
        self.registry.record_event(
            EventKind.FAILED,
            plugin_id=plugin_id,
            actor=self._actor,
            state=PluginState.FAILED,
            details={"reason": reason, "entry": settings.entry},
        )
        _log.error("plugin failed to load: %s", reason, extra=self._log_fields(slot, "plugin_failed"))

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start_plugins(self) -> HostHealth:
        """Load, initialize and start every plugin that is not Active, in the order they were added.

        A plugin that fails or hangs in any step goes to Failed and the others still start; one an operator
        disabled in the registry is skipped (logged). Returns the health afterwards. Blocks; safe to call
        again (it retries Stopped and Failed plugins).
        """
        with self._lock:
            ids = list(self._slots)
        for plugin_id in ids:
            slot = self._slots[plugin_id]
            if slot.disabled is not None:
                _log.info("plugin not started: %s", slot.disabled, extra=self._log_fields(slot, "plugin_disabled"))
            elif slot.loadable and slot.state is not PluginState.ACTIVE:
                self.start_plugin(plugin_id)
        return self.get_health()

    @property
    def actor(self) -> str:
        """Who the host's own audit events name: ``<host.actor>/<OS user>``."""
        return self._actor

    def start_plugin(self, plugin_id: str, *, actor: str | None = None) -> PluginState:
        """Take one plugin through Loading and Initializing to Active; return the state it ends in.

        ``actor`` names who asked (an operator's administrative action); the audit events record it
        instead of the host's own identity. Failures do not raise: the plugin goes to Failed with the
        reason (see get_health). Raises PluginNotFoundError for an unknown id, PluginDisabledError for a
        plugin an operator disabled in the registry, and HostClosedError when the host is not open.
        """
        with self._lock:
            if actor is not None:
                previous, self._acting = self._acting, actor
                try:
                    return self.start_plugin(plugin_id)
                finally:
                    self._acting = previous
            self._check_open()
            slot = self._get_slot(plugin_id)
            if slot.state is PluginState.ACTIVE:
                return slot.state
            if not slot.loadable:
                return slot.state
            if slot.disabled is not None:
                raise PluginDisabledError(plugin_id, slot.disabled)
            slot.stopped_by_disable = False
            self._transition(slot, PluginState.LOADING, "load" if slot.state is PluginState.DISCOVERED else "reload")
            loading_since = time.perf_counter()
            load = self._load_sandboxed if slot.sandboxed else self._load
            try:
                routes = load(slot)
            except ContentHashMismatchError as exc:
                self._fail_integrity(slot, exc)
                return slot.state
            except Exception as exc:
                self._fail(slot, f"loading failed: {exc}")
                return slot.state
            self._transition(slot, PluginState.INITIALIZING, "initialize")
            initialize = self._initialize_sandboxed if slot.sandboxed else self._initialize
            error = initialize(slot)
            if error is not None:
                self._fail(slot, error)
                return slot.state
            self._transition(slot, PluginState.ACTIVE, "started")
            self._metrics.observe_load(slot.info.trust_level, (time.perf_counter() - loading_since) * 1000.0)
            slot.started_seq = next(self._seq)
            new_routes = dict(self._routes)
            new_routes[plugin_id] = routes
            self._routes = new_routes
        _log.info("plugin active", extra=self._log_fields(slot, "plugin_active"))
        return slot.state

    def stop_plugin(self, plugin_id: str, *, reason: str = "stop requested", actor: str | None = None) -> PluginState:
        """Stop one Active plugin (Stopping, then Stopped, or Failed if stop raises or hangs).

        ``actor`` names who asked, for the audit trail (default: the host). No-op for a plugin that is not
        Active. Returns the state it ends in. Blocks up to the stop timeout.
        """
        with self._lock:
            if actor is not None:
                previous, self._acting = self._acting, actor
                try:
                    return self.stop_plugin(plugin_id, reason=reason)
                finally:
                    self._acting = previous
            slot = self._get_slot(plugin_id)
            if slot.state is not PluginState.ACTIVE:
                return slot.state
            routes = dict(self._routes)
            routes.pop(plugin_id, None)
            self._routes = routes
            self._batch_routes.pop(plugin_id, None)
            self._transition(slot, PluginState.STOPPING, reason)
            timeout_s = self.config.lifecycle.stop_timeout_s
            error: str | None
            if slot.plugin is not None:
                step_error = self._run_step(slot, "stop", slot.plugin.stop, (), timeout_s)
                error = None if step_error is None else str(step_error)
            else:
                assert self._pool is not None
                error = self._pool.stop_plugin(plugin_id, timeout_s=timeout_s)
            if error is not None:
                self._fail(slot, error)
            else:
                self._transition(slot, PluginState.STOPPED, reason)
            slot.started_seq = None
        _log.info("plugin stopped", extra=self._log_fields(slot, "plugin_stopped"))
        return slot.state

    def stop_plugins(self) -> None:
        """Stop every Active plugin in reverse start order. One failing stop does not prevent the others."""
        with self._lock:
            active = sorted(
                (s for s in self._slots.values() if s.started_seq is not None),
                key=lambda s: s.started_seq or 0,
                reverse=True,
            )
            for slot in active:
                self.stop_plugin(slot.info.id, reason="host shutdown")

    def _import_trusted_folder(self, slot: _Slot) -> Plugin:
        """Import a signed Trusted folder plugin from a private copy whose hash matched the registered one.

        The folder is copied to a host-private temporary folder, the copy hashed and compared, and then
        imported as a private package (a unique name whose ``__path__`` is the copy), so the code imported
        is the code verified, with no window for a change. The plugin's own modules import each other
        relatively (``from . import rules``); the folder is never put on ``sys.path``.
        """
        manifest = slot.manifest
        assert manifest is not None
        private = Path(tempfile.mkdtemp(prefix=f"plugin-pool-{slot.info.id}-"))
        self._private_dirs.append(private)
        copy = private / "plugin"
        shutil.copytree(manifest.directory, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        if slot.content_hash is not None:
            check_content_hash(slot.info.id, copy, slot.content_hash, shown=manifest.directory)
        package_name = f"plugin_pool_trusted_{slot.info.id.replace('-', '_')}_{private.name[-8:]}"
        package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(package_name, None, is_package=True))
        package.__path__ = [str(copy)]
        sys.modules[package_name] = package
        module_name, _, attr = manifest.entry.partition(":")
        obj: Any = importlib.import_module(f"{package_name}.{module_name}")
        for part in attr.split("."):
            obj = getattr(obj, part)
        plugin: Plugin = obj() if isinstance(obj, type) else obj
        info = self._read_info(plugin)
        if info.id != slot.info.id or info.trust_level is not TrustLevel.TRUSTED:
            raise TrustViolationError(
                f"plugin folder {manifest.directory} declares {slot.info.id!r} (trusted) but its entry "
                f"{manifest.entry!r} says {info.id!r} ({info.trust_level.value}); they must agree",
                plugin_id=slot.info.id,
            )
        return plugin

    def _fail_integrity(self, slot: _Slot, exc: ContentHashMismatchError) -> None:
        self._audit_hash_mismatch(slot, exc)
        self._fail(slot, f"loading failed: {exc}")

    def _audit_hash_mismatch(self, slot: _Slot, exc: ContentHashMismatchError) -> None:
        self._metrics.count_integrity_rejection(slot.info.id, "hash_mismatch")
        self.registry.record_event(
            EventKind.HASH_MISMATCH,
            plugin_id=slot.info.id,
            actor=self._actor,
            state=slot.state,
            details={"changes": exc.changes[:100], "expected": exc.expected.digest, "actual": exc.actual.digest},
        )

    def _load(self, slot: _Slot) -> dict[str, Route]:
        """Read and validate the capabilities and resolve each to a route. Raises on any problem."""
        info = slot.info
        if slot.plugin is None:
            slot.plugin = self._import_trusted_folder(slot)
        plugin = slot.plugin
        caps = plugin.capabilities
        if not isinstance(caps, Capabilities):
            raise InvalidPluginError(
                f"plugin {info.id!r} capabilities must be a Capabilities object, got {type(caps).__name__}",
                plugin_id=info.id,
                field="capabilities",
            )
        if info.trust_level is TrustLevel.UNTRUSTED:  # defence in depth; _add refuses these already
            raise TrustViolationError(f"plugin {info.id!r} is Untrusted", plugin_id=info.id)
        network = sorted(set(caps) & NETWORK_CAPABILITIES)
        if network and not info.trust_level.in_process:
            raise TrustViolationError(
                f"plugin {info.id!r} declares {network[0]!r}, which needs network access: such plugins must "
                f"be at least Trusted",
                plugin_id=info.id,
            )
        monitored = info.trust_level is TrustLevel.TRUSTED or self.config.host.monitor_builtin
        stats = CallStats() if monitored else None
        routes: dict[str, Route] = {}
        for cap in caps.values():
            method = getattr(plugin, cap.method, None)
            if method is None or not callable(method):
                raise InvalidPluginError(
                    f"plugin {info.id!r} declares capability {cap.name!r} but has no method {cap.method!r}",
                    plugin_id=info.id,
                    field="capabilities",
                )
            route: Route = method
            if inspect.iscoroutinefunction(method):
                route = async_route(method, self._runner, info.id, cap.name, self.config.host.call_timeout_s)
            if stats is not None:
                route = monitored_route(route, stats, cap.name)
            routes[cap.name] = route
        slot.capabilities = caps
        slot.stats = stats
        return routes

    def _initialize(self, slot: _Slot) -> str | None:
        """Run initialize(context) and start() in-process, each under its timeout; return an error text."""
        plugin = slot.plugin
        assert plugin is not None
        context = PluginContext(
            slot.info.id,
            slot.info.trust_level,
            slot.settings.config,
            self._services,
            slot.settings.services,
        )
        lifecycle = self.config.lifecycle
        for step, func, args, timeout_s in (
            ("initialize", plugin.initialize, (context,), lifecycle.initialize_timeout_s),
            ("start", plugin.start, (), lifecycle.start_timeout_s),
        ):
            error = self._run_step(slot, step, func, args, timeout_s)
            if error is not None:
                return str(error)
        return None

    def _load_sandboxed(self, slot: _Slot) -> dict[str, Route]:
        """Validate an Untrusted plugin's declared capabilities and build proxy routes. Imports nothing."""
        manifest = slot.manifest
        assert manifest is not None
        info = slot.info
        network = sorted(set(manifest.capabilities) & NETWORK_CAPABILITIES)
        if network:
            raise TrustViolationError(
                f"plugin {info.id!r} declares {network[0]!r}, which needs network access; Untrusted plugins "
                f"never get it (they must be at least Trusted)",
                plugin_id=info.id,
            )
        pool = self._ensure_pool()
        from plugin_pool.sandbox.pool import RESTART_REASONS  # loaded with the pool above

        self._metrics.add_sandboxed_plugin(info.id, RESTART_REASONS)
        timeout_s = min(self.config.host.call_timeout_s, manifest.resources.get("call_timeout_s", float("inf")))
        stats = CallStats()
        routes: dict[str, Route] = {}
        for name in manifest.capabilities:

            def route(payload: Any, _cap: str = name) -> Any:
                return pool.invoke(info.id, _cap, payload, timeout_s)

            routes[name] = monitored_route(route, stats, name)
        self._batch_routes[info.id] = lambda capability, payloads: pool.invoke_many(
            info.id, capability, payloads, timeout_s
        )
        slot.capabilities = manifest.capabilities
        slot.stats = stats
        return routes

    def _initialize_sandboxed(self, slot: _Slot) -> str | None:
        """Boot the plugin's first workers; each runs initialize and start under the lifecycle timeouts."""
        from plugin_pool.sandbox.supervisor import BootError, WorkerPlan

        manifest = slot.manifest
        assert manifest is not None and self._pool is not None
        lifecycle = self.config.lifecycle
        plan = WorkerPlan(
            plugin_id=slot.info.id,
            plugin_dir=manifest.directory,
            entry=manifest.entry,
            capabilities=manifest.capabilities.names,
            config_json=_json_bytes(slot.settings.config),
            services=slot.settings.services,
            initialize_timeout_s=lifecycle.initialize_timeout_s,
            start_timeout_s=lifecycle.start_timeout_s,
            memory_mb=_int_or_none(manifest.resources.get("memory_mb")),
            cpu_time_s=_int_or_none(manifest.resources.get("cpu_time_s")),
            verify_staged_copy=self._staged_copy_check(slot),
        )
        low, high = self._pool_bounds(slot, self.config.sandbox, self.config.plugins.get(slot.info.id) or slot.settings)
        try:
            self._pool.start_plugin(plan, min_workers=low, max_workers=high)
        except ContentHashMismatchError as exc:
            self._batch_routes.pop(slot.info.id, None)
            self._audit_hash_mismatch(slot, exc)
            return f"loading failed: {exc}"
        except BootError as exc:
            self._batch_routes.pop(slot.info.id, None)
            return str(exc)
        except PluginPoolError as exc:
            self._batch_routes.pop(slot.info.id, None)
            return str(exc)
        return None

    @staticmethod
    def _staged_copy_check(slot: _Slot) -> Callable[[Path], None] | None:
        expected = slot.content_hash
        if expected is None or slot.manifest is None:
            return None
        plugin_id = slot.info.id
        original = slot.manifest.directory

        def check(staged: Path) -> None:
            check_content_hash(plugin_id, staged, expected, shown=original)

        return check

    def _ensure_pool(self) -> SandboxPool:
        if self._pool is None:
            from plugin_pool.sandbox.pool import SandboxPool

            pool = SandboxPool(
                self.config.sandbox,
                services=self._services,
                on_restart=self._on_restart,
                on_plugin_failed=self._on_sandbox_failure,
            )
            pool.open()
            self._pool = pool
        return self._pool

    def _on_restart(self, plugin_id: str, reason: str) -> None:
        """A worker was replaced (the sandbox supervisor thread): audit and count it in the background."""
        try:
            self._background.submit(self._count_restart, plugin_id, reason)
        except RuntimeError:  # the host is closing: no thread to hand it to
            self._count_restart(plugin_id, reason)

    def _count_restart(self, plugin_id: str, reason: str) -> None:
        # The audit first, so whoever sees the counter move finds the event too.
        slot = self._slots.get(plugin_id)
        try:
            self.registry.record_event(
                EventKind.WORKER_RESTARTED,
                plugin_id=plugin_id,
                actor=self._actor,
                state=slot.state if slot else None,
                details={"reason": reason},
            )
        finally:
            self._metrics.count_restart(plugin_id, reason)
            self.restarts[plugin_id, reason] += 1

    def _on_sandbox_failure(self, plugin_id: str, reason: str) -> None:
        with self._lock:
            slot = self._slots.get(plugin_id)
            if slot is None or slot.state is not PluginState.ACTIVE:
                return
            routes = dict(self._routes)
            routes.pop(plugin_id, None)
            self._routes = routes
            self._batch_routes.pop(plugin_id, None)
            slot.started_seq = None
            self._fail(slot, reason)

    @property
    def sandbox(self) -> SandboxPool | None:
        """The worker pool of Untrusted plugins, once one has started (None before)."""
        return self._pool

    # -- pool sizing -------------------------------------------------------------------------------------

    def resize_pool(
        self, plugin_id: str, *, min_workers: int | None = None, max_workers: int | None = None
    ) -> tuple[int, int]:
        """Change the worker bounds of an Active sandboxed plugin without failing a call; return (min, max).

        Growing spawns workers up to the new minimum; shrinking retires idle workers above the new
        maximum gracefully, and busy ones as their calls return (see SandboxPool.resize_plugin). The
        bounds last until the plugin stops (a restart takes its manifest's [pool] or [sandbox] again).
        Does not wait for workers to boot or exit; safe to call any number of times. Raises
        PluginNotFoundError, PluginNotActiveError, TrustViolationError for an in-process plugin (it has
        no pool) and ConfigError for invalid bounds.
        """
        slot = self._get_slot(plugin_id)
        if not slot.sandboxed:
            raise TrustViolationError(
                f"plugin {plugin_id!r} is {slot.info.trust_level.value} and runs in the host process: it has "
                f"no worker pool to resize",
                plugin_id=plugin_id,
            )
        if slot.state is not PluginState.ACTIVE or self._pool is None:
            raise PluginNotActiveError(plugin_id, slot.state, slot.reason or slot.disabled)
        return self._pool.resize_plugin(plugin_id, min_workers=min_workers, max_workers=max_workers)

    def set_max_total_workers(self, max_total_workers: int) -> None:
        """Change ``sandbox.max_total_workers`` (the cap of all sandbox workers together) at runtime.

        Lowering it stops growth beyond it; running workers stay until plugins are resized. Safe to call
        twice. Raises ConfigError below 1.
        """
        self.apply_pool_sizes(replace(self.config.sandbox, max_total_workers=max_total_workers), resize=False)

    def apply_pool_sizes(
        self,
        sandbox: SandboxConfig,
        *,
        resize: bool = True,
        plugins: Mapping[str, PluginSettings] | None = None,
    ) -> dict[str, tuple[int, int]]:
        """Apply the pool sizes of ``sandbox`` (e.g. a reloaded configuration file's) to the running host.

        ``max_total_workers`` and the default ``min_workers``/``max_workers`` take effect at once (for
        plugins started later too); with ``resize``, every Active sandboxed plugin is resized to its
        bounds: ``plugins[<id>]`` (the reloaded file's ``[plugins.<id>]``; default: the host's own) wins
        over its manifest's [pool], which wins over the new defaults. Other sandbox settings
        (limits that workers apply when they boot) are not changed. Returns the new bounds by plugin id.
        Safe to call any number of times; no call in flight fails. Raises ConfigError for invalid sizes
        (nothing is changed then).
        """
        for key in ("min_workers", "max_workers", "max_total_workers"):
            if getattr(sandbox, key) < 1:
                raise ConfigError(
                    f"sandbox.{key} = {getattr(sandbox, key)} is too small: the minimum is 1", key=f"sandbox.{key}"
                )
        if sandbox.max_workers < sandbox.min_workers:
            raise ConfigError(
                f"sandbox.max_workers = {sandbox.max_workers} is below sandbox.min_workers = {sandbox.min_workers}",
                key="sandbox.max_workers",
            )
        with self._lock:
            self._check_usable()
            self.config = replace(
                self.config,
                sandbox=replace(
                    self.config.sandbox,
                    min_workers=sandbox.min_workers,
                    max_workers=sandbox.max_workers,
                    max_total_workers=sandbox.max_total_workers,
                ),
            )
            pool = self._pool
            if pool is None:
                return {}
            pool.update_limits(
                min_workers=sandbox.min_workers,
                max_workers=sandbox.max_workers,
                max_total_workers=sandbox.max_total_workers,
            )
            if not resize:
                return {}
            sized: dict[str, tuple[int, int]] = {}
            for slot in tuple(self._slots.values()):
                if not slot.sandboxed or slot.state is not PluginState.ACTIVE or slot.manifest is None:
                    continue
                settings = (plugins if plugins is not None else self.config.plugins).get(slot.info.id) or slot.settings
                low, high = self._pool_bounds(slot, sandbox, settings)
                sized[slot.info.id] = pool.resize_plugin(slot.info.id, min_workers=low, max_workers=high)
        return sized

    def _list_metric_samples(self) -> list[PluginSample]:
        """What the metrics collector reads at scrape time; takes no host lock (like get_health)."""
        pool = self._pool
        samples = []
        for slot in tuple(self._slots.values()):
            stats = slot.stats.snapshot() if slot.stats is not None else None
            workers = pool.get_stats(slot.info.id) if pool is not None and slot.sandboxed else None
            samples.append(
                PluginSample(
                    plugin_id=slot.info.id,
                    trust_level=slot.info.trust_level,
                    active=slot.state is PluginState.ACTIVE,
                    calls=tuple(
                        (name, count, errors, total_ms / 1000.0)
                        for name, (count, errors, total_ms) in sorted(stats.by_capability.items())
                    )
                    if stats is not None
                    else None,
                    workers_busy=workers.busy if workers is not None else None,
                    workers_idle=workers.idle if workers is not None else 0,
                    waiting=workers.waiting if workers is not None else 0,
                    min_workers=workers.min_workers if workers is not None else 0,
                    max_workers=workers.max_workers if workers is not None else 0,
                )
            )
        return samples

    def _run_step(
        self, slot: _Slot, step: str, func: Any, args: tuple[Any, ...], timeout_s: float
    ) -> LifecycleError | None:
        try:
            self._runner.run(func, *args, timeout_s=timeout_s)
        except StepTimeout:
            return LifecycleTimeoutError(plugin_id=slot.info.id, step=step, timeout_s=timeout_s)
        except Exception as exc:
            return LifecycleError(f"{step} raised {type(exc).__name__}: {exc}", plugin_id=slot.info.id, step=step)
        return None

    def _transition(self, slot: _Slot, target: PluginState, reason: str) -> None:
        check_transition(slot.state, target, plugin_id=slot.info.id)
        actor = self._acting or self._actor
        try:
            self.registry.set_status(slot.info.id, target, expected=slot.state, actor=actor, reason=reason)
        except (RegistryConflictError, IllegalTransitionError) as exc:
            # The shared registry holds another state for this plugin: another host runs it too, or an
            # operator changed it. This host's own lifecycle goes on (a plugin's state is per host); the
            # move is still audited, with the state the registry holds.
            held = exc.actual if isinstance(exc, RegistryConflictError) else exc.source
            self.registry.record_event(
                EventKind.for_state(target),
                plugin_id=slot.info.id,
                actor=actor,
                state=target,
                details={"from": slot.state.value, "reason": reason, "registry_state": held.value},
            )
            _log.warning(
                "plugin %s: the shared registry holds state %s (another host or an operator); this host moves %s -> %s",
                slot.info.id,
                held.value,
                slot.state.value,
                target.value,
                extra=self._log_fields(slot, "registry_state_differs"),
            )
        slot.state = target
        slot.reason = reason if target is PluginState.FAILED else None
        if target is PluginState.FAILED:
            self._metrics.count_failure(slot.info.id)

    def _fail(self, slot: _Slot, reason: str) -> None:
        self._transition(slot, PluginState.FAILED, reason)
        _log.error("plugin failed: %s", reason, extra=self._log_fields(slot, "plugin_failed"))

    # -- operators' changes through the registry ---------------------------------------------------------

    def _on_registry_change(self, change: RegistryChange) -> None:
        """Registry callback (its thread; must not block): queue an enable/disable of one of our plugins."""
        if change.kind != "enabled" or change.plugin_id not in self._slots:
            return
        try:
            applied = self._background.submit(self._apply_enabled, change)
        except RuntimeError:  # the host is closing
            return
        applied.add_done_callback(lambda _: self.registry.acknowledge(change))  # the operator may wait for it

    def _apply_enabled(self, change: RegistryChange) -> None:
        """Stop a plugin an operator disabled (and keep it stopped); start it again when enabled."""
        actor = change.actor or "registry"
        with self._lock:
            slot = self._slots.get(change.plugin_id)
            if slot is None or self._closing:
                return
            if change.enabled is False:
                if slot.disabled is not None:
                    return
                slot.disabled = f"disabled by {actor}" + (f": {change.reason}" if change.reason else "")
                _log.warning(
                    "plugin %s: %s; stopping it on this host",
                    slot.info.id,
                    slot.disabled,
                    extra=self._log_fields(slot, "plugin_disabled"),
                )
                if slot.state is PluginState.ACTIVE:
                    self.stop_plugin(slot.info.id, reason=slot.disabled, actor=actor)
                    slot.stopped_by_disable = True
                return
            if slot.disabled is None:
                return
            slot.disabled = None
            _log.warning(
                "plugin %s: enabled by %s", slot.info.id, actor, extra=self._log_fields(slot, "plugin_enabled")
            )
            if slot.stopped_by_disable and self._opened:
                self.start_plugin(slot.info.id, actor=actor)

    # -- calls ---------------------------------------------------------------------------------------------

    def invoke(self, plugin_id: str, capability: str, payload: Any = None) -> Any:
        """Call ``capability`` of an Active plugin with ``payload`` and return its result. Blocks for the call.

        Raises CapabilityDeniedError (audited) for an undeclared capability, PluginNotActiveError or
        PluginNotFoundError when the plugin cannot take work, PluginCallError when the plugin raised
        (the original exception is its ``__cause__``), CallTimeoutError past the call deadline.
        """
        try:
            route = self._routes[plugin_id][capability]
        except KeyError:
            raise self._route_error(plugin_id, capability) from None
        try:
            return route(payload)
        except PluginPoolError:
            raise
        except Exception as exc:
            raise PluginCallError(plugin_id, capability, type(exc).__qualname__, str(exc)) from exc

    def invoke_many(self, plugin_id: str, capability: str, payloads: Iterable[Any]) -> list[Any]:
        """Call ``capability`` once per payload and return the results in order (one round trip for a
        sandboxed plugin). The first item that raises stops the batch with a PluginCallError whose
        ``index`` names it.
        """
        try:
            route = self._routes[plugin_id][capability]
        except KeyError:
            raise self._route_error(plugin_id, capability) from None
        batch = self._batch_routes.get(plugin_id)
        if batch is not None:
            return batch(capability, payloads)
        results = []
        for index, payload in enumerate(payloads):
            try:
                results.append(route(payload))
            except PluginPoolError:
                raise
            except Exception as exc:
                raise PluginCallError(plugin_id, capability, type(exc).__qualname__, str(exc), index=index) from exc
        return results

    def get_client(self, plugin_id: str) -> PluginClient:
        """A :class:`PluginClient` bound to ``plugin_id`` (any trust level). Raises PluginNotFoundError."""
        self._get_slot(plugin_id)
        return PluginClient(self, plugin_id)

    def get_plugin(self, plugin_id: str) -> Any:
        """Return the plugin object itself for zero-overhead direct calls. BuiltIn and Active only.

        Raises TrustViolationError for Trusted and Untrusted plugins (their calls must be monitored or
        sandboxed: use invoke or get_client) and PluginNotActiveError for a plugin that is not Active.
        """
        slot = self._get_slot(plugin_id)
        if slot.info.trust_level is not TrustLevel.BUILTIN:
            raise TrustViolationError(
                f"plugin {plugin_id!r} is {slot.info.trust_level.value}: only BuiltIn plugin objects are "
                f"handed out; call it through host.invoke or host.get_client so its calls are "
                f"{'monitored' if slot.info.trust_level is TrustLevel.TRUSTED else 'sandboxed'}",
                plugin_id=plugin_id,
            )
        if slot.state is not PluginState.ACTIVE:
            raise PluginNotActiveError(plugin_id, slot.state, slot.reason or slot.disabled)
        return slot.plugin

    def list_providers(self, capability: str) -> list[str]:
        """Ids of Active plugins that declare ``capability``, in start order."""
        slots = [
            s for s in tuple(self._slots.values()) if s.state is PluginState.ACTIVE and capability in s.capabilities
        ]
        return [s.info.id for s in sorted(slots, key=lambda s: s.started_seq or 0)]

    def _route_error(self, plugin_id: str, capability: str) -> PluginPoolError:
        if self._closed or not self._opened:
            state = "already closed" if self._closed else "not open yet"
            return HostClosedError(f"the plugin host is {state}; calls need an open host")
        slot = self._slots.get(plugin_id)
        if slot is None:
            return PluginNotFoundError(
                f"no plugin {plugin_id!r} in this host; known: {', '.join(self._slots) or 'none'}",
                plugin_id=plugin_id,
            )
        if slot.state is not PluginState.ACTIVE:
            return PluginNotActiveError(plugin_id, slot.state, slot.reason or slot.disabled)
        declared = slot.capabilities.names
        self._metrics.count_denial(plugin_id)
        self.registry.record_event(
            EventKind.CAPABILITY_DENIED,
            plugin_id=plugin_id,
            actor=self._actor,
            state=slot.state,
            details={"capability": str(capability)[:200], "declared": list(declared)},
        )
        _log.warning(
            "capability denied", extra={**self._log_fields(slot, "capability_denied"), "capability": capability}
        )
        return CapabilityDeniedError(plugin_id, str(capability), declared)

    # -- health ------------------------------------------------------------------------------------------

    def get_health(self) -> HostHealth:
        """A snapshot of every plugin's state, reason and counters. Takes no host lock, so it never waits
        for a lifecycle step in progress."""
        slots = tuple(self._slots.values())  # one C-level copy: atomic under the GIL
        return HostHealth(tuple(self._health_of(s) for s in slots))

    def get_plugin_health(self, plugin_id: str) -> PluginHealth:
        """One plugin's health; raises PluginNotFoundError."""
        return self._health_of(self._get_slot(plugin_id))

    def is_active(self, plugin_id: str) -> bool:
        """Whether ``plugin_id`` is known and Active. Never raises."""
        slot = self._slots.get(plugin_id)
        return slot is not None and slot.state is PluginState.ACTIVE

    def require(self, *plugin_ids: str) -> None:
        """Raise RequiredPluginError naming every plugin in ``plugin_ids`` that is not Active."""
        missing = []
        for plugin_id in plugin_ids:
            slot = self._slots.get(plugin_id)
            if slot is None:
                missing.append(f"{plugin_id} (not added)")
            elif slot.state is not PluginState.ACTIVE:
                missing.append(f"{plugin_id} ({slot.state.value}{': ' + slot.reason if slot.reason else ''})")
        if missing:
            raise RequiredPluginError(
                f"required plugins are not active: {'; '.join(missing)}",
                plugin_id=plugin_ids[0] if len(plugin_ids) == 1 else None,
            )

    def _health_of(self, slot: _Slot) -> PluginHealth:
        return PluginHealth(
            plugin_id=slot.info.id,
            name=slot.info.name,
            version=str(slot.info.version),
            trust_level=slot.info.trust_level,
            state=slot.state,
            reason=slot.reason or slot.disabled,
            capabilities=slot.capabilities.names,
            stats=slot.stats.snapshot() if slot.stats else None,
            workers=self._pool.get_stats(slot.info.id) if self._pool is not None and slot.sandboxed else None,
        )

    # -- helpers -----------------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise HostClosedError("the plugin host is already closed; create a new PluginHost")

    def _check_open(self) -> None:
        self._check_usable()
        if not self._opened:
            raise HostClosedError("the plugin host is not open yet; call host.open() or use 'with PluginHost()'")

    def _get_slot(self, plugin_id: str) -> _Slot:
        slot = self._slots.get(plugin_id)
        if slot is None:
            raise PluginNotFoundError(
                f"no plugin {plugin_id!r} in this host; known: {', '.join(self._slots) or 'none'}",
                plugin_id=plugin_id,
            )
        return slot

    @staticmethod
    def _log_fields(slot: _Slot, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "pluginId": slot.info.id,
            "trustLevel": slot.info.trust_level.value,
            "lifecycleState": slot.state.value,
        }


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def _json_bytes(config: Mapping[str, Any]) -> bytes:
    return orjson.dumps(thaw_json(config))


def os_user() -> str:
    """The OS user this process runs as, for audit actors (the uid when there is no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER: the uid is still an identity
        return f"uid {os.geteuid()}"
