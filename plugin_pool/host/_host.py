"""The plugin host a scanning service imports (the seed's Host): a thin facade over the parts that own the work.

``PluginHost`` opens and closes, and hands every public call to the part that owns it, as pluggy's
``PluginManager`` hands hook calls to ``_hooks``/``_callers``:

- admission (``_admission``): add_plugin, add_plugin_dir, add_configured_plugins, discover, rescan;
- lifecycle (``_lifecycle``): start/stop/fail moves and their registry reconciliation;
- routes and calls (``_routes``): invoke, invoke_many, submit, map, clients;
- the Untrusted bridge (``_untrusted``): the sandbox pool, its reports, pool sizes;
- health (``_health``): health, require, metric samples.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from plugin_pool.config import Config, PluginSettings, SandboxConfig
from plugin_pool.discovery import DiscoveryResult, RescanReport
from plugin_pool.errors import PluginNotActiveError, PluginPoolError, TrustViolationError
from plugin_pool.host._admission import Admission
from plugin_pool.host._core import HostCore
from plugin_pool.host._health import HostHealth, PluginHealth, health_of, list_metric_samples, require_active
from plugin_pool.host._lifecycle import Lifecycle
from plugin_pool.host._routes import Router
from plugin_pool.host._slots import SlotTable
from plugin_pool.host._untrusted import UntrustedBridge
from plugin_pool.lifecycle import PluginState
from plugin_pool.metrics import HostMetrics
from plugin_pool.model import Plugin, PluginInfo, TrustLevel
from plugin_pool.registry.base import PluginRegistry
from plugin_pool.registry.factory import open_registry

if TYPE_CHECKING:
    from plugin_pool.sandbox.pool import SandboxPool

__all__ = ["Invoke", "PluginClient", "PluginHost"]

# A library never configures logging; the NullHandler only keeps Python's last-resort handler from printing
# our warnings to stderr when the application has not configured logging either.
logging.getLogger("plugin_pool").addHandler(logging.NullHandler())
_log = logging.getLogger("plugin_pool.host")


class Invoke(Protocol):
    """The signature of :attr:`PluginHost.invoke`."""

    def __call__(
        self, plugin_id: str, capability: str, payload: Any = None, *, timeout_s: float | None = None
    ) -> Any: ...


class PluginClient:
    """A handle on one plugin, called the same way at every trust level: ``client.invoke("scan", payload)``.

    Cheap to create; safe to share between threads. It looks the route up on every call, so it follows
    the plugin through restarts and refuses calls once the plugin is no longer Active.
    """

    __slots__ = ("_host", "plugin_id")

    def __init__(self, host: PluginHost, plugin_id: str) -> None:
        self._host = host
        self.plugin_id = plugin_id

    def invoke(self, capability: str, payload: Any = None, *, timeout_s: float | None = None) -> Any:
        """Call ``capability`` with ``payload``; see :meth:`PluginHost.invoke`."""
        return self._host.invoke(self.plugin_id, capability, payload, timeout_s=timeout_s)

    def invoke_many(self, capability: str, payloads: Iterable[Any], *, timeout_s: float | None = None) -> list[Any]:
        """Call ``capability`` once per payload; see :meth:`PluginHost.invoke_many`."""
        return self._host.invoke_many(self.plugin_id, capability, payloads, timeout_s=timeout_s)

    def submit(self, capability: str, payload: Any = None, *, timeout_s: float | None = None) -> Future[Any]:
        """Start a call and return its Future; see :meth:`PluginHost.submit`."""
        return self._host.submit(self.plugin_id, capability, payload, timeout_s=timeout_s)

    def map(self, capability: str, payloads: Iterable[Any], *, timeout_s: float | None = None) -> Iterator[Any]:
        """Results of a batch, in order; see :meth:`PluginHost.map`."""
        return self._host.map(self.plugin_id, capability, payloads, timeout_s=timeout_s)


class PluginHost:
    """Loads, starts, routes to, monitors and stops plugins of every trust level.

    Use it as a context manager (``with PluginHost(config) as host:``) or call :meth:`open` and
    :meth:`close`; both are idempotent. All methods are thread-safe. Lifecycle methods block while plugin
    code runs (each step is bounded by its timeout); :meth:`invoke` blocks for the call, :meth:`submit`
    does not.

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
        config = config or Config()
        self._owns_registry = registry is None
        # Without a registry passed in, the host opens the one [registry] names (in-memory by default) and
        # closes it with itself.
        self.registry: PluginRegistry = (
            registry if registry is not None else open_registry(config.registry, config.host)
        )
        self.metrics_registry = metrics_registry if metrics_registry is not None else CollectorRegistry()
        """The Prometheus registry the host's metrics are on (plugin_pool.metrics); a private one unless the
        caller passed one. The library serves nothing: expose it as the application does its own."""
        slots = SlotTable()
        self._slots = slots
        self._bridge: UntrustedBridge | None = None
        metrics = HostMetrics(
            self.metrics_registry,
            lambda: list_metric_samples(slots.snapshot(), self.sandbox),
            self.registry.get_stats,
        )
        self._core = HostCore(config, self.registry, services or {}, metrics, slots)
        self._bridge = UntrustedBridge(self._core)
        self._router = Router(self._core)
        self._lifecycle = Lifecycle(self._core, self._router, self._bridge)
        self._admission = Admission(self._core)
        self._unsubscribe: Callable[[], None] | None = None
        try:
            self._unsubscribe = self.registry.subscribe(self._lifecycle.on_registry_change)
        except PluginPoolError as exc:
            _log.warning("host: not told of registry changes (disable/enable by operators): %s", exc)

    # -- open / close ------------------------------------------------------------------------------------

    def open(self) -> PluginHost:
        """Open the host. Idempotent; raises HostClosedError after close."""
        with self._core.lock:
            self._core.check_usable()
            self._core.opened = True
        return self

    def close(self) -> None:
        """Stop every Active plugin in reverse start order, then release the host. Idempotent; blocks."""
        core = self._core
        core.closing = True  # operators' changes still queued are dropped; audit writes are not
        if self._unsubscribe is not None:
            self._unsubscribe()
        core.background.shutdown(wait=True)
        with core.lock:
            if core.closed:
                return
            try:
                self._lifecycle.stop_plugins()
            finally:
                core.closed = True
                self._router.close()
                core.runner.close()
                self._bridge_close()
                self._lifecycle.close()
                if self._owns_registry:
                    self.registry.close()

    def _bridge_close(self) -> None:
        if self._bridge is not None:
            self._bridge.close()

    def __enter__(self) -> PluginHost:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        """Whether the host is open and not closed."""
        return self._core.opened and not self._core.closed

    @property
    def config(self) -> Config:
        """The configuration in force (pool sizes change with :meth:`apply_pool_sizes`)."""
        return self._core.config

    @property
    def actor(self) -> str:
        """Who the host's own audit events name: ``<host.actor>/<OS user>``."""
        return self._core.actor

    @property
    def restarts(self) -> Counter[tuple[str, str]]:
        """Sandbox worker replacements by (plugin id, reason): the seed's sandbox_process_restarts_total."""
        assert self._bridge is not None
        return self._bridge.restarts

    @property
    def sandbox(self) -> SandboxPool | None:
        """The worker pool of Untrusted plugins, once one has started (None before)."""
        return self._bridge.pool if self._bridge is not None else None

    # -- adding plugins ----------------------------------------------------------------------------------

    def register_service(self, name: str, service: Any) -> None:
        """Offer ``service`` to plugins whose settings list ``name``. Call before starting them; safe to
        call again (the last one wins for plugins started afterwards)."""
        with self._core.lock:
            self._core.services[name] = service

    def add_plugin(
        self,
        plugin: Plugin,
        *,
        config: Mapping[str, Any] | None = None,
        services: Sequence[str] = (),
        trust_level: TrustLevel | str | None = None,
    ) -> PluginInfo:
        """Add an in-process plugin object (BuiltIn or Trusted) and register it as Discovered.

        The host decides its level (plugin_pool.trust): ``trust_level`` when given, else its
        ``[plugins.<id>] trust_level``, else the level its info declares (the host vouches for code it adds
        itself), so one class runs at any in-process level without a subclass per level. An object whose
        info says Untrusted is refused (it may only run in the sandbox, from a folder), as is
        ``trust_level="untrusted"``: TrustViolationError. Returns the info as registered (with the decided
        level). Raises InvalidPluginError for a plugin whose info cannot be read, DuplicatePluginError for
        an id already added (so not safe to call twice for one id). Blocks briefly on the registry.
        """
        return self._admission.add_plugin(plugin, config=config, services=services, trust_level=trust_level)

    def add_configured_plugins(self) -> list[str]:
        """Load every enabled ``[plugins.<id>]`` entry of the configuration; return the ids added.

        An entry that fails to import or is not a valid plugin does not stop the others: it is kept as
        Failed with the reason, logged and audited. Blocks while importing; calling it twice raises
        DuplicatePluginError.
        """
        return self._admission.add_configured_plugins()

    def add_plugin_dir(
        self,
        directory: str | Path,
        *,
        config: Mapping[str, Any] | None = None,
        services: Sequence[str] = (),
        verify_content: bool = True,
    ) -> PluginInfo:
        """Add a plugin from its folder (``plugin.toml`` and its code). Reads and hashes its files.

        The folder is judged as discovery judges one (plugin_pool.discovery.examine_folder): it runs
        Untrusted, in sandbox workers, and its code is never imported in the host; or Trusted, in-process,
        when its manifest says so and its signature verifies by a key of ``[trust] trusted_keys`` (without a
        valid one it is refused, or downgraded with ``[trust] unsigned_trusted = "downgrade"``). Raises
        ManifestError (an InvalidPluginError) naming the file and field for a bad manifest,
        IntegrityRejectedError (``kind``, ``file``, ``fix``) for what a plugin folder may not hold (a symlink,
        a fifo or device, bytecode, more than the ``[discovery]`` limits), TrustViolationError for a Trusted
        claim without a valid signature or a ``builtin`` claim, InvalidPluginError for an unsupported host
        version. The content hash is recorded as the registry's assembly_hash, and the private copy made
        when the plugin starts must hash to it. ``verify_content=False`` records none and checks nothing
        (Untrusted only, for folders the caller prepared itself). Not safe to call twice for one id
        (DuplicatePluginError).
        """
        return self._admission.add_plugin_dir(
            directory, config=config, services=services, verify_content=verify_content
        )

    def discover(self) -> DiscoveryResult:
        """Discover plugins as ``[discovery]`` and ``[trust]`` say and add every one not added yet.

        Untrusted folders run in the sandbox; signed Trusted folders and entry points of allowed
        distributions run in-process (imported only here, for entry points, or at start from a verified
        copy, for Trusted folders). Each candidate is judged alone: one refused (bad manifest or id, rejected
        signature, what a folder may not hold, an entry point not allowed or failing to import, a changed
        folder whose version the registry knows with another hash) is audited once and counted, listed in
        ``get_health().rejected``, and kept as Failed with the reason when its id is free; a duplicate id is
        audited as ``duplicate_rejected`` without touching the plugin that has it. The others are added.
        Blocks to read, hash and (entry points) import. The scan is cached: calling it again adds nothing
        new; use :meth:`rescan` to look again. Raises only for a configuration mistake (a bad trusted key).
        """
        return self._admission.discover()

    def rescan(self) -> RescanReport:
        """Scan again; add plugins that are new, and report (log) the ids that changed or were removed.

        Active plugins are not disturbed: a changed plugin keeps running the code it verified (restarting
        it checks its files against the hash recorded when it was added and fails it if they changed), and
        a removed one keeps running until stopped. Blocks like :meth:`discover`; safe to call repeatedly.
        """
        return self._admission.rescan()

    # -- lifecycle (operators' calls) -------------------------------------------------------------------------

    def start_plugins(self) -> HostHealth:
        """Load, initialize and start every plugin that is not Active, in the order they were added.

        A plugin that fails or hangs in any step goes to Failed and the others still start; one an operator
        disabled in the registry is skipped (logged). Returns the health afterwards. Blocks; safe to call
        again (it retries Stopped and Failed plugins).
        """
        self._lifecycle.start_plugins()
        return self.get_health()

    def start_plugin(self, plugin_id: str, *, actor: str | None = None) -> PluginState:
        """Take one plugin through Loading and Initializing to Active; return the state it ends in.

        Its routes exist before it is seen Active, so no call is ever denied a declared capability while it
        starts. ``actor`` names who asked (an operator's administrative action); the audit events record it
        instead of the host's own identity. Failures do not raise: the plugin goes to Failed with the
        reason (see get_health). Blocks for the steps; a no-op for an Active plugin (safe to call twice).
        Raises PluginNotFoundError for an unknown id, PluginDisabledError for a plugin an operator disabled
        in the registry, and HostClosedError when the host is not open.
        """
        return self._lifecycle.start_plugin(plugin_id, actor=actor)

    def stop_plugin(self, plugin_id: str, *, reason: str = "stop requested", actor: str | None = None) -> PluginState:
        """Stop one Active plugin (Stopping, then Stopped, or Failed if stop raises or hangs).

        It leaves Active and its routes in one step: from then on calls get PluginNotActiveError (state
        stopping), never CapabilityDeniedError. ``actor`` names who asked, for the audit trail (default: the
        host). No-op for a plugin that is not Active (safe to call twice). Returns the state it ends in.
        Blocks up to the stop timeout. Raises PluginNotFoundError for an unknown id.
        """
        return self._lifecycle.stop_plugin(plugin_id, reason=reason, actor=actor)

    def stop_plugins(self) -> None:
        """Stop every Active plugin in reverse start order. One failing stop does not prevent the others.
        Blocks; safe to call twice."""
        self._lifecycle.stop_plugins()

    # -- pool sizing ----------------------------------------------------------------------------------------

    def resize_pool(
        self, plugin_id: str, *, min_workers: int | None = None, max_workers: int | None = None
    ) -> tuple[int, int]:
        """Change the worker bounds of an Active sandboxed plugin without failing a call; return (min, max).

        Growing spawns workers up to the new minimum; shrinking retires idle workers above the new
        maximum gracefully, and busy ones as their calls return (see SandboxPool.resize_plugin). The
        bounds last until the plugin stops (a restart takes its manifest's [pool] or [sandbox] again).
        Does not wait for workers to boot or exit; safe to call any number of times. Raises
        PluginNotFoundError, PluginNotActiveError, TrustViolationError for an in-process plugin (it has
        no pool) and ConfigError for invalid bounds (plugin_pool.config.check_pool_size).
        """
        slot = self._slots.get(plugin_id)
        if not slot.sandboxed:
            raise TrustViolationError(
                f"plugin {plugin_id!r} is {slot.info.trust_level.value} and runs in the host process: it has "
                f"no worker pool to resize",
                plugin_id=plugin_id,
            )
        assert self._bridge is not None
        if slot.state is not PluginState.ACTIVE or self._bridge.pool is None:
            raise PluginNotActiveError(plugin_id, slot.state, slot.why_not_active)
        return self._bridge.resize(plugin_id, min_workers, max_workers)

    def set_max_total_workers(self, max_total_workers: int) -> None:
        """Change ``sandbox.max_total_workers`` (the cap of all sandbox workers together) at runtime.

        Lowering it stops growth beyond it; running workers stay until plugins are resized. Safe to call
        twice. Raises ConfigError below 1 or below ``sandbox.min_workers``.
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
        (the one rule, plugin_pool.config.check_pool_size; nothing is changed then).
        """
        assert self._bridge is not None
        core = self._core
        with core.lock:
            core.check_usable()
            sized = self._bridge.apply_sizes(sandbox, self._slots.snapshot(), plugins, resize=resize)
            core.config = replace(core.config, sandbox=UntrustedBridge.replace_sizes(core.config.sandbox, sandbox))
        return sized

    # -- calls -----------------------------------------------------------------------------------------------

    @functools.cached_property
    def invoke(self) -> Invoke:
        """``host.invoke(plugin_id, capability, payload=None, *, timeout_s=None)``: call ``capability`` of an
        Active plugin with ``payload`` and return its result. Blocks for the call; safe from any thread.

        ``timeout_s`` (default ``host.call_timeout_s``) is the call's deadline where the host can enforce
        it: an Untrusted call (the worker is killed; capped by the manifest's ``[resources] call_timeout_s``)
        and an ``async def`` method (cancelled). A sync in-process method runs in the caller's thread and is
        not interrupted. Raises CapabilityDeniedError (audited) for an undeclared capability,
        PluginNotActiveError or PluginNotFoundError when the plugin cannot take work, PluginCallError when
        the plugin raised (the original exception is its ``__cause__``), CallTimeoutError past the deadline
        (QueueTimeoutError when the call never started), and the sandbox's errors (README: "Errors").

        The router's own method, bound here once, so a call costs one Python frame, not two.
        """
        return self._router.invoke

    def invoke_many(
        self, plugin_id: str, capability: str, payloads: Iterable[Any], *, timeout_s: float | None = None
    ) -> list[Any]:
        """Call ``capability`` once per payload and return the results in order (a few round trips for a
        sandboxed plugin: chunks spread over its workers). The first item that raises stops the batch with a
        PluginCallError whose ``index`` names it. ``timeout_s`` is the deadline of each call (of each chunk
        for a sandboxed plugin). Blocks for the batch.
        """
        return self._router.invoke_many(plugin_id, capability, payloads, timeout_s=timeout_s)

    def submit(
        self, plugin_id: str, capability: str, payload: Any = None, *, timeout_s: float | None = None
    ) -> Future[Any]:
        """Start a call and return a ``concurrent.futures.Future`` of its result; never blocks for the call.

        Every error :meth:`invoke` raises is set on the Future instead (only a bad ``timeout_s`` raises
        ValueError here). By trust level: an Untrusted call waits in the plugin's queue without a thread of
        its own and goes to the pool on one of at most ``max_workers`` dispatcher threads; a BuiltIn sync
        call runs inline (the Future is done when submit returns); a Trusted sync call runs on the host's
        small executor (``host.submit_threads``); an ``async def`` method runs on the host's event loop.
        ``timeout_s`` counts from now, the wait included: a call still waiting at its deadline fails with
        QueueTimeoutError (it never ran). ``future.cancel()`` stops a call that has not started (an
        ``async def`` one even while it runs); a started call runs on to its end or deadline. Safe to call
        from any thread, and from an event loop (see plugin_pool.aio).
        """
        return self._router.submit(plugin_id, capability, payload, timeout_s=timeout_s)

    def map(
        self, plugin_id: str, capability: str, payloads: Iterable[Any], *, timeout_s: float | None = None
    ) -> Iterator[Any]:
        """Start :meth:`invoke_many` over ``payloads`` now and return an iterator of the results, in order.

        Like ``Executor.map``: the batch is submitted at once (one batch, not a Future per item, on the same
        threads as :meth:`submit`); iterating blocks until it is done and raises the batch's error (a
        PluginCallError names the failing ``index``). Use :meth:`submit_many` for the Future itself.
        """
        return self._router.map(plugin_id, capability, payloads, timeout_s=timeout_s)

    def submit_many(
        self, plugin_id: str, capability: str, payloads: Iterable[Any], *, timeout_s: float | None = None
    ) -> Future[list[Any]]:
        """Start :meth:`invoke_many` and return a Future of the list of results; never blocks for the batch."""
        return self._router.submit_many(plugin_id, capability, payloads, timeout_s=timeout_s)

    def get_client(self, plugin_id: str) -> PluginClient:
        """A :class:`PluginClient` bound to ``plugin_id`` (any trust level). Raises PluginNotFoundError."""
        self._slots.get(plugin_id)
        return PluginClient(self, plugin_id)

    def get_plugin(self, plugin_id: str) -> Any:
        """Return the plugin object itself for zero-overhead direct calls. BuiltIn and Active only.

        Raises TrustViolationError for Trusted and Untrusted plugins (their calls must be monitored or
        sandboxed: use invoke or get_client) and PluginNotActiveError for a plugin that is not Active.
        """
        slot = self._slots.get(plugin_id)
        if slot.info.trust_level is not TrustLevel.BUILTIN:
            raise TrustViolationError(
                f"plugin {plugin_id!r} is {slot.info.trust_level.value}: only BuiltIn plugin objects are "
                f"handed out; call it through host.invoke or host.get_client so its calls are "
                f"{'monitored' if slot.info.trust_level is TrustLevel.TRUSTED else 'sandboxed'}",
                plugin_id=plugin_id,
            )
        if slot.state is not PluginState.ACTIVE:
            raise PluginNotActiveError(plugin_id, slot.state, slot.why_not_active)
        return slot.plugin

    def list_providers(self, capability: str) -> list[str]:
        """Ids of Active plugins that declare ``capability``, in start order. Never blocks."""
        return self._router.list_providers(capability)

    # -- health and operators' reports -------------------------------------------------------------------

    def get_health(self) -> HostHealth:
        """A snapshot of every plugin's state, reason and counters, and of what the last discovery scan
        refused (``rejected``: source, kind, reason; duplicates too). Takes no host lock, so it never waits
        for a lifecycle step in progress."""
        pool = self.sandbox
        return HostHealth(tuple(health_of(s, pool) for s in self._slots.snapshot()), self._slots.rejected)

    def get_plugin_health(self, plugin_id: str) -> PluginHealth:
        """One plugin's health (state, reason, counters, workers); raises PluginNotFoundError. Never blocks."""
        return health_of(self._slots.get(plugin_id), self.sandbox)

    def is_active(self, plugin_id: str) -> bool:
        """Whether ``plugin_id`` is known and Active on this host. Never raises."""
        slot = self._slots.find(plugin_id)
        return slot is not None and slot.state is PluginState.ACTIVE

    def require(self, *plugin_ids: str) -> None:
        """Raise RequiredPluginError naming every plugin in ``plugin_ids`` that is not Active."""
        require_active(self._slots, plugin_ids)

    def list_worker_pids(self, plugin_id: str) -> list[int]:
        """Pids of an Untrusted plugin's live sandbox workers (empty for in-process or stopped plugins).
        Never blocks."""
        self._slots.get(plugin_id)
        pool = self.sandbox
        return pool.list_worker_pids(plugin_id) if pool is not None else []

    def drain_background(self, timeout_s: float = 10.0) -> bool:
        """Wait until every task queued so far on the host's background thread has run: operators'
        disable/enable changes and the sandbox's reports (worker replacements audited and counted, plugins
        failed in the sandbox). Returns False past ``timeout_s`` or once the host is closing. Blocks; safe
        to call any number of times (tests use it as a fence instead of sleeping)."""
        try:
            return self._core.background.submit(lambda: None).exception(timeout_s) is None
        except RuntimeError:  # shut down: the host is closing
            return False
        except TimeoutError:
            return False

    def get_confinement(self) -> dict[str, Any] | None:
        """The sandbox's confinement report: the layers this kernel offers, those workers get, those required,
        the worker uid. None before the first Untrusted plugin starts (the sandbox has not probed yet)."""
        pool = self.sandbox
        return pool.get_confinement() if pool is not None else None
