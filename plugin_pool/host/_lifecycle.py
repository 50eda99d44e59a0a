"""Lifecycle moves: start, stop and fail plugins, in-process loading, and reconciling each move with the registry.

Every move goes through :meth:`Lifecycle.transition`: checked against the one transition table, made in
memory together with the route table (routes in before Active, state out of Active before routes out),
then written to the registry, whose state may differ when other hosts share it (the move is audited with
the state the registry holds). The actor of each move is an argument: the host's own identity, or the
operator an administrative call names.

Operators' disable/enable through the registry arrive here too (queued on the host's background thread).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import itertools
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugin_pool._loader import load_entry
from plugin_pool._steps import StepTimeout
from plugin_pool.content import FolderLimits
from plugin_pool.context import PluginContext
from plugin_pool.errors import (
    IllegalTransitionError,
    IntegrityError,
    InvalidPluginError,
    LifecycleError,
    LifecycleTimeoutError,
    PluginDisabledError,
    RegistryConflictError,
    TrustViolationError,
)
from plugin_pool.host._core import HostCore, integrity_audit
from plugin_pool.host._routes import PluginRoutes, Router, build_inprocess_routes
from plugin_pool.host._slots import Slot, log_fields, read_info, reconcile_capabilities
from plugin_pool.host._untrusted import UntrustedBridge
from plugin_pool.lifecycle import PluginState, check_transition
from plugin_pool.model import NETWORK_CAPABILITIES, Capabilities, Plugin, TrustLevel
from plugin_pool.registry.base import EventKind, RegistryChange
from plugin_pool.staging import StagedPlugin, remove_staged, stage_plugin
from plugin_pool.trust import TrustSource, decide_trust_level

__all__ = ["Lifecycle"]

_log = logging.getLogger("plugin_pool.host")
_S = PluginState


class Lifecycle:
    """Starts, stops and fails plugins; applies operators' disable/enable. Moves hold the host lock."""

    def __init__(self, core: HostCore, router: Router, bridge: UntrustedBridge) -> None:
        self._core = core
        self._router = router
        self._bridge = bridge
        self._seq = itertools.count(1)
        self._private_dirs: list[Path] = []
        bridge.set_failure_handler(self.fail_from_sandbox)

    def close(self) -> None:
        """Remove the private copies of Trusted folders. Idempotent; call once no plugin runs."""
        for private in self._private_dirs:
            shutil.rmtree(private, ignore_errors=True)
        self._private_dirs.clear()

    # -- start -----------------------------------------------------------------------------------------------

    def start_plugins(self) -> None:
        """Start every loadable plugin that is not Active, in the order added; skip (log) disabled ones."""
        for slot in self._core.slots.snapshot():
            if slot.disabled is not None:
                _log.info("plugin not started: %s", slot.disabled, extra=log_fields(slot, "plugin_disabled"))
            elif slot.loadable and slot.state is not _S.ACTIVE:
                self.start_plugin(slot.info.id)

    def start_plugin(self, plugin_id: str, *, actor: str | None = None) -> PluginState:
        """See :meth:`PluginHost.start_plugin`."""
        core = self._core
        with core.lock:
            core.check_open()
            slot = core.slots.get(plugin_id)
            if slot.state is _S.ACTIVE or not slot.loadable:
                return slot.state
            if slot.disabled is not None:
                raise PluginDisabledError(plugin_id, slot.disabled)
            slot.stopped_by_disable = False
            self.transition(slot, _S.LOADING, "load" if slot.state is _S.DISCOVERED else "reload", actor)
            loading_since = time.perf_counter()
            routes: PluginRoutes | None = None
            try:
                routes = self._bridge.load(slot) if slot.sandboxed else self._load(slot)
                self.transition(slot, _S.INITIALIZING, "initialize", actor)
                error = self._bridge.boot(slot) if slot.sandboxed else self._initialize(slot)
            except IntegrityError as exc:  # staging refused the folder: it changed, or holds what it may not
                self._audit_integrity(slot, exc)
                error = f"loading failed: {exc}"
            except Exception as exc:  # whatever the plugin or its folder raised fails this plugin only
                error = f"{'loading' if slot.state is _S.LOADING else 'starting'} failed: {exc}"
            if error is not None:
                if routes is not None:
                    routes.close()
                self._bridge.forget(plugin_id)
                self.fail(slot, error, actor)
                return slot.state
            assert routes is not None
            slot.started_seq = next(self._seq)
            self.transition(slot, _S.ACTIVE, "started", actor, routes=routes)
            core.metrics.observe_load(slot.info.trust_level, (time.perf_counter() - loading_since) * 1000.0)
        _log.info("plugin active", extra=log_fields(slot, "plugin_active"))
        return slot.state

    def _load(self, slot: Slot) -> PluginRoutes:
        """Read and validate an in-process plugin's capabilities and resolve each to a route. Raises on any
        problem (the plugin then fails)."""
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
        if slot.manifest is not None:  # a folder: its signed manifest declares, the code implements
            caps = reconcile_capabilities(slot, caps)
        if info.trust_level is TrustLevel.UNTRUSTED:  # defence in depth; admission refuses these already
            raise TrustViolationError(f"plugin {info.id!r} is Untrusted", plugin_id=info.id)
        network = sorted(set(caps) & NETWORK_CAPABILITIES)
        if network and not info.trust_level.in_process:
            raise TrustViolationError(
                f"plugin {info.id!r} declares {network[0]!r}, which needs network access: such plugins must "
                f"be at least Trusted",
                plugin_id=info.id,
            )
        for cap in caps.values():
            if not callable(getattr(plugin, cap.method, None)):
                raise InvalidPluginError(
                    f"plugin {info.id!r} declares capability {cap.name!r} but has no method {cap.method!r}",
                    plugin_id=info.id,
                    field="capabilities",
                )
        slot.capabilities = caps
        return build_inprocess_routes(self._core, slot, plugin, caps, self._router.get_executor)

    def _import_trusted_folder(self, slot: Slot) -> Plugin:
        """Import a signed Trusted folder plugin from a verified private copy: what runs is what was verified.

        :func:`plugin_pool.staging.stage_plugin` copies the folder to a host-private temporary folder and
        hashes the same bytes in one pass, against the hash registered at discovery (so against the
        signature), under the ``[discovery]`` limits; then the host compiles the bytecode of the copy itself.
        Nothing of the folder is read twice, and no bytecode from outside exists in the copy. The copy is
        imported as a private package (a unique name whose ``__path__`` is the copy); the plugin's modules
        import each other relatively (``from . import rules``); the folder is never put on ``sys.path``.
        Raises ContentHashMismatchError, IntegrityRejectedError, StagingError (naming the plugin's folder).
        """
        manifest = slot.manifest
        assert manifest is not None
        if slot.content_hash is None:
            raise TrustViolationError(
                f"plugin folder {manifest.directory}: a Trusted folder runs only from a verified copy, and this "
                f"one has no registered content hash; add it through discovery or host.add_plugin_dir",
                plugin_id=slot.info.id,
            )
        private = Path(tempfile.mkdtemp(prefix=f"plugin-pool-{slot.info.id}-"))
        try:
            staged = stage_plugin(
                manifest.directory,
                private / "plugin",
                plugin_id=slot.info.id,
                expected=slot.content_hash,
                limits=FolderLimits.from_config(self._core.config.discovery),
                precompile=True,
                isolated_compile=False,  # Trusted code runs in this process anyway
            )
        except BaseException:
            remove_staged(private)
            raise
        self._private_dirs.append(private)
        package_name = f"plugin_pool_trusted_{slot.info.id.replace('-', '_')}_{private.name[-8:]}"
        package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(package_name, None, is_package=True))
        package.__path__ = [str(staged.path)]
        sys.modules[package_name] = package
        try:
            plugin: Plugin = load_entry(manifest.entry, package=package_name)
        except Exception as exc:
            raise InvalidPluginError(
                f"plugin folder {manifest.directory}: importing its entry {manifest.entry!r} raised "
                f"{type(exc).__name__}: {_in_folder(str(exc), staged, package_name)}; fix the plugin's code",
                plugin_id=slot.info.id,
                field="entry",
            ) from exc
        info = read_info(plugin)
        if info.id != slot.info.id:
            raise InvalidPluginError(
                f"plugin folder {manifest.directory} declares id {slot.info.id!r} but its entry "
                f"{manifest.entry!r} says {info.id!r}; they must agree",
                plugin_id=slot.info.id,
                field="id",
            )
        # The host decided Trusted from the signature; the object may only refuse in-process (says untrusted).
        decide_trust_level(
            slot.info.id,
            TrustSource.FOLDER,
            claimed=TrustLevel.TRUSTED,
            signed_by=slot.signed_by,
            declared=info.trust_level,
        )
        return plugin

    def _initialize(self, slot: Slot) -> str | None:
        """Run initialize(context) and start() in-process, each under its timeout; return an error text."""
        plugin = slot.plugin
        assert plugin is not None
        context = PluginContext(
            slot.info.id, slot.info.trust_level, slot.settings.config, self._core.services, slot.settings.services
        )
        lifecycle = self._core.config.lifecycle
        for step, func, args, timeout_s in (
            ("initialize", plugin.initialize, (context,), lifecycle.initialize_timeout_s),
            ("start", plugin.start, (), lifecycle.start_timeout_s),
        ):
            error = self._run_step(slot, step, func, args, timeout_s)
            if error is not None:
                return str(error)
        return None

    def _run_step(
        self, slot: Slot, step: str, func: Callable[..., Any], args: tuple[Any, ...], timeout_s: float
    ) -> LifecycleError | None:
        try:
            self._core.runner.run(func, *args, timeout_s=timeout_s)
        except StepTimeout:
            return LifecycleTimeoutError(plugin_id=slot.info.id, step=step, timeout_s=timeout_s)
        except Exception as exc:
            return LifecycleError(f"{step} raised {type(exc).__name__}: {exc}", plugin_id=slot.info.id, step=step)
        return None

    # -- stop and fail -----------------------------------------------------------------------------------------

    def stop_plugin(self, plugin_id: str, *, reason: str = "stop requested", actor: str | None = None) -> PluginState:
        """See :meth:`PluginHost.stop_plugin`."""
        core = self._core
        with core.lock:
            slot = core.slots.get(plugin_id)
            if slot.state is not _S.ACTIVE:
                return slot.state
            self.transition(slot, _S.STOPPING, reason, actor)  # calls now get PluginNotActiveError (stopping)
            timeout_s = core.config.lifecycle.stop_timeout_s
            error: str | None
            if slot.plugin is not None:
                step_error = self._run_step(slot, "stop", slot.plugin.stop, (), timeout_s)
                error = None if step_error is None else str(step_error)
            else:
                error = self._bridge.stop(plugin_id, timeout_s)
            if error is not None:
                self.fail(slot, error, actor)
            else:
                self.transition(slot, _S.STOPPED, reason, actor)
            slot.started_seq = None
        _log.info("plugin stopped", extra=log_fields(slot, "plugin_stopped"))
        return slot.state

    def stop_plugins(self, reason: str = "host shutdown") -> None:
        """Stop every Active plugin in reverse start order. One failing stop does not prevent the others."""
        with self._core.lock:
            active = sorted(
                (s for s in self._core.slots.snapshot() if s.started_seq is not None),
                key=lambda s: s.started_seq or 0,
                reverse=True,
            )
            for slot in active:
                self.stop_plugin(slot.info.id, reason=reason)

    def fail_from_sandbox(self, plugin_id: str, reason: str) -> None:
        """The sandbox gave the plugin up (queued from the pool's thread, runs on the background thread)."""
        with self._core.lock:
            slot = self._core.slots.find(plugin_id)
            if slot is None or slot.state is not _S.ACTIVE:
                return
            slot.started_seq = None
            self._bridge.forget(plugin_id)
            self.fail(slot, reason, None)

    def fail(self, slot: Slot, reason: str, actor: str | None) -> None:
        """Move ``slot`` to Failed with ``reason`` and log it (caller holds the host lock)."""
        self.transition(slot, _S.FAILED, reason, actor)
        _log.error("plugin failed: %s", reason, extra=log_fields(slot, "plugin_failed"))

    def _audit_integrity(self, slot: Slot, exc: IntegrityError) -> None:
        """Audit and count a folder refused while staging (``hash_mismatch`` or ``integrity_rejected``)."""
        event, details, kind = integrity_audit(exc)
        if kind is not None:
            self._core.metrics.count_integrity_rejection(slot.info.id, kind)
        self._core.audit(event, slot.info.id, state=slot.state, details=details)

    # -- the one move ------------------------------------------------------------------------------------------

    def transition(
        self,
        slot: Slot,
        target: PluginState,
        reason: str,
        actor: str | None,
        *,
        routes: PluginRoutes | None = None,
    ) -> None:
        """Move ``slot`` to ``target`` (caller holds the host lock), then record the move in the registry.

        Entering Active, ``routes`` go into the table before the state says Active; leaving Active, the
        state moves before the routes go, so a caller never sees an Active plugin without routes (no false
        denial) nor is routed to a plugin that left Active. Raises IllegalTransitionError for a move the
        table does not allow (nothing changes then).
        """
        check_transition(slot.state, target, plugin_id=slot.info.id)
        source = slot.state
        if routes is not None:
            self._router.install(routes)
        slot.state = target
        slot.reason = reason if target is _S.FAILED else None
        if source is _S.ACTIVE:
            self._router.remove(slot.info.id)
        if target is _S.FAILED:
            self._core.metrics.count_failure(slot.info.id)
        self._record(slot, source, target, reason, actor or self._core.actor)

    def _record(self, slot: Slot, source: PluginState, target: PluginState, reason: str, actor: str) -> None:
        """Write one move to the registry (compare-and-set on ``source``); reconcile when it holds another state."""
        registry = self._core.registry
        try:
            registry.set_status(slot.info.id, target, expected=source, actor=actor, reason=reason)
        except (RegistryConflictError, IllegalTransitionError) as exc:
            # The shared registry holds another state for this plugin: another host runs it too, or an
            # operator changed it. This host's own lifecycle goes on (a plugin's state is per host); the
            # move is still audited, with the state the registry holds.
            held = exc.actual if isinstance(exc, RegistryConflictError) else exc.source
            self._core.audit(
                EventKind.for_state(target),
                slot.info.id,
                actor=actor,
                state=target,
                details={"from": source.value, "reason": reason, "registry_state": held.value},
            )
            _log.warning(
                "plugin %s: the shared registry holds state %s (another host or an operator); this host moves %s -> %s",
                slot.info.id,
                held.value,
                source.value,
                target.value,
                extra=log_fields(slot, "registry_state_differs"),
            )

    # -- operators' changes through the registry ----------------------------------------------------------

    def on_registry_change(self, change: RegistryChange) -> None:
        """Registry callback (its listener thread; must not block): queue an enable/disable of one of ours."""
        if change.kind == "enabled" and change.plugin_id in self._core.slots:
            self._core.in_background(self._apply_and_acknowledge, change)

    def _apply_and_acknowledge(self, change: RegistryChange) -> None:
        # Acknowledged even when applying failed: the operator's --wait learns this host has seen it.
        try:
            self.apply_enabled(change)
        finally:
            self._core.registry.acknowledge(change)

    def apply_enabled(self, change: RegistryChange) -> None:
        """Stop a plugin an operator disabled (and keep it stopped); start it again when enabled."""
        core = self._core
        actor = change.actor or "registry"
        with core.lock:
            slot = core.slots.find(change.plugin_id)
            if slot is None or core.closing:
                return
            if change.enabled is False:
                if slot.disabled is not None:
                    return
                slot.disabled = f"disabled by {actor}" + (f": {change.reason}" if change.reason else "")
                _log.warning(
                    "plugin %s: %s; stopping it on this host",
                    slot.info.id,
                    slot.disabled,
                    extra=log_fields(slot, "plugin_disabled"),
                )
                if slot.state is _S.ACTIVE:
                    self.stop_plugin(slot.info.id, reason=slot.disabled, actor=actor)
                    slot.stopped_by_disable = True
                return
            if slot.disabled is None:
                return
            slot.disabled = None
            _log.warning("plugin %s: enabled by %s", slot.info.id, actor, extra=log_fields(slot, "plugin_enabled"))
            if slot.stopped_by_disable and core.opened:
                self.start_plugin(slot.info.id, actor=actor)


def _in_folder(text: str, staged: StagedPlugin, package_name: str) -> str:
    """An error text about the private copy, naming the plugin's own folder instead (and no private name)."""
    return text.replace(str(staged.path), str(staged.source)).replace(package_name + ".", "").replace(package_name, "")
