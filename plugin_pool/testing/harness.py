"""The harness and fake registry behind :mod:`plugin_pool.testing`."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from plugin_pool.config import Config, load_config
from plugin_pool.host import PluginHealth, PluginHost
from plugin_pool.lifecycle import PluginState
from plugin_pool.model import Plugin, TrustLevel
from plugin_pool.registry.base import AuditEvent, EventKind
from plugin_pool.registry.memory import InMemoryPluginRegistry

__all__ = ["FakeRegistry", "PluginHarness"]


class FakeRegistry(InMemoryPluginRegistry):
    """An in-memory registry that also records every call made to it, in order, in ``calls``.

    It behaves exactly like :class:`InMemoryPluginRegistry` (same contract), so a test asserts on what the
    host did without stubbing anything away. Thread-safe.
    """

    def __init__(self) -> None:
        super().__init__(max_events=None)
        self._calls_lock = threading.Lock()
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def _note(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with self._calls_lock:
            self.calls.append((name, args, kwargs))

    def register(self, *args: Any, **kwargs: Any) -> Any:
        """Record the call, then register as the in-memory registry does."""
        self._note("register", args, kwargs)
        return super().register(*args, **kwargs)

    def set_status(self, *args: Any, **kwargs: Any) -> Any:
        """Record the call, then set the status as the in-memory registry does."""
        self._note("set_status", args, kwargs)
        return super().set_status(*args, **kwargs)

    def record_event(self, *args: Any, **kwargs: Any) -> Any:
        """Record the call, then append the event as the in-memory registry does."""
        self._note("record_event", args, kwargs)
        return super().record_event(*args, **kwargs)

    def call_names(self) -> list[str]:
        """The names of the calls made so far, in order."""
        with self._calls_lock:
            return [name for name, _, _ in self.calls]

    def states_of(self, plugin_id: str) -> list[str]:
        """The states ``plugin_id`` went through, from its audit trail (``discovered`` first)."""
        return [
            e.state.value
            for e in self.list_events(plugin_id=plugin_id)
            if e.state is not None and e.event is not EventKind.CAPABILITY_DENIED
        ]


class PluginHarness:
    """Drives one plugin through its whole lifecycle in a private host with a FakeRegistry.

    ``with PluginHarness(plugin) as h`` adds and starts an in-process plugin object (raising AssertionError
    with the reason if it does not become Active, unless ``expect_active=False``), and stops it on exit.
    ``trust_level`` runs it at another in-process level than its info declares (the host decides:
    plugin_pool.trust), so one class is tested at each level it will run at. :meth:`from_folder` drives a
    plugin *folder* instead, as the host runs it: an Untrusted folder through the real sandbox (confined
    workers, payloads that must cross the boundary, no network, the worker's limits, the precise errors a
    scanning service sees). Not thread-safe to construct; ``invoke`` is
    thread-safe.
    """

    def __init__(
        self,
        plugin: Plugin,
        *,
        config: Mapping[str, Any] | None = None,
        services: Mapping[str, Any] | None = None,
        host_config: Config | None = None,
        lifecycle_timeout_s: float | None = None,
        expect_active: bool = True,
        trust_level: TrustLevel | str | None = None,
    ) -> None:
        if host_config is None and lifecycle_timeout_s is not None:
            t = lifecycle_timeout_s
            host_config = load_config(
                overrides={"lifecycle": {"initialize_timeout_s": t, "start_timeout_s": t, "stop_timeout_s": t}}
            )
        self.plugin: Plugin | None = plugin
        self.folder: Path | None = None
        """The plugin folder, for a harness made by :meth:`from_folder` (then ``plugin`` is None)."""
        self.plugin_id = plugin.info.id
        self.registry = FakeRegistry()
        self.host = PluginHost(host_config, registry=self.registry, services=services)
        self._config = dict(config or {})
        self._services: Sequence[str] = tuple(services or ())
        self._expect_active = expect_active
        self._trust_level = trust_level

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        config: Mapping[str, Any] | None = None,
        services: Mapping[str, Any] | None = None,
        sandbox: Mapping[str, Any] | None = None,
        host_config: Config | None = None,
        lifecycle_timeout_s: float | None = None,
        expect_active: bool = True,
    ) -> PluginHarness:
        """A harness for the plugin folder ``folder`` (its ``plugin.toml`` and code), run as the host runs it.

        The folder is read and hashed like ``host.add_plugin_dir`` does; its code is never imported into this
        process. It starts in sandbox workers with the host's confinement; ``sandbox`` overrides ``[sandbox]``
        settings (for example ``{"memory_mb": 256}``). Nothing starts until :meth:`start` (or ``with``).
        Raises ManifestError for an invalid manifest. Pure until started.
        """
        from plugin_pool.manifest import read_manifest

        manifest = read_manifest(folder)
        if host_config is None:
            overrides: dict[str, Mapping[str, Any]] = {}
            if sandbox:
                overrides["sandbox"] = dict(sandbox)
            if lifecycle_timeout_s is not None:
                t = lifecycle_timeout_s
                overrides["lifecycle"] = {"initialize_timeout_s": t, "start_timeout_s": t, "stop_timeout_s": t}
            host_config = load_config(overrides=overrides)
        harness = cls.__new__(cls)
        harness.plugin = None
        harness.folder = manifest.directory
        harness.plugin_id = manifest.info.id
        harness.registry = FakeRegistry()
        harness.host = PluginHost(host_config, registry=harness.registry, services=services)
        harness._config = dict(config or {})
        harness._services = tuple(services or ())
        harness._expect_active = expect_active
        harness._trust_level = None
        return harness

    def __enter__(self) -> PluginHarness:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> PluginState:
        """Open the host, add the plugin and start it; return the state it reached. Blocks."""
        self.host.open()
        if self.folder is not None:
            self.host.add_plugin_dir(self.folder, config=self._config, services=self._services)
        else:
            assert self.plugin is not None
            self.host.add_plugin(
                self.plugin, config=self._config, services=self._services, trust_level=self._trust_level
            )
        state = self.host.start_plugin(self.plugin_id)
        if self._expect_active and state is not PluginState.ACTIVE:
            reason = self.host.get_plugin_health(self.plugin_id).reason
            raise AssertionError(f"plugin {self.plugin_id!r} did not become active: {state.value}: {reason}")
        return state

    def invoke(self, capability: str, payload: Any = None, *, timeout_s: float | None = None) -> Any:
        """Call a capability through the host, exactly as a scanning service would (blocks for the call)."""
        return self.host.invoke(self.plugin_id, capability, payload, timeout_s=timeout_s)

    def invoke_many(self, capability: str, payloads: Sequence[Any]) -> list[Any]:
        """A batch through the host (``host.invoke_many``): results in order. Blocks."""
        return self.host.invoke_many(self.plugin_id, capability, payloads)

    def stop(self) -> PluginState:
        """Stop the plugin (not the host); return the state it reached."""
        return self.host.stop_plugin(self.plugin_id)

    def close(self) -> None:
        """Stop the plugin and close the host. Idempotent."""
        self.host.close()
        self.registry.close()

    @property
    def state(self) -> PluginState:
        """The plugin's current state."""
        return self.health.state

    @property
    def health(self) -> PluginHealth:
        """The plugin's health as the host reports it."""
        return self.host.get_plugin_health(self.plugin_id)

    @property
    def states(self) -> list[str]:
        """Every state the plugin went through, from the audit trail."""
        return self.registry.states_of(self.plugin_id)

    @property
    def events(self) -> list[AuditEvent]:
        """The plugin's audit events."""
        return self.registry.list_events(plugin_id=self.plugin_id)
