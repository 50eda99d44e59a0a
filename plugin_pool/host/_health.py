"""Health and metric samples: what the host reports about its plugins. Reads only; takes no host lock.

:class:`PluginHealth` and :class:`HostHealth` are what ``host.get_health()`` returns; :func:`list_metric_samples`
is what the Prometheus collector reads at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plugin_pool._dispatch import CallStatsSnapshot
from plugin_pool.errors import RequiredPluginError
from plugin_pool.host._slots import RejectedSource, Slot, SlotTable
from plugin_pool.lifecycle import PluginState
from plugin_pool.metrics import PluginSample
from plugin_pool.model import TrustLevel
from plugin_pool.trust import UnknownTrust

if TYPE_CHECKING:
    # The sandbox (and grpc with it) is imported only when the first Untrusted plugin starts.
    from plugin_pool.sandbox.pool import PoolStats, SandboxPool

__all__ = ["HostHealth", "PluginHealth", "RejectedSource", "health_of", "list_metric_samples", "require_active"]


@dataclass(frozen=True, slots=True)
class PluginHealth:
    """One plugin's health as the host sees it."""

    plugin_id: str
    name: str
    version: str
    trust_level: TrustLevel | UnknownTrust
    """The level the host decided (``UnknownTrust.UNKNOWN`` for a plugin refused before it decided one:
    a folder whose manifest or Trusted claim failed, an entry point refused before import)."""
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
    """The health of every plugin the host knows, in the order they were added, and what discovery refused.

    ``rejected`` lists every folder and entry point the last scan refused, in scan order, whatever it held
    (those without a valid id and duplicates too): source, kind and reason. A refused candidate whose id
    was free is also a Failed plugin in ``plugins``.
    """

    plugins: tuple[PluginHealth, ...]
    rejected: tuple[RejectedSource, ...] = ()

    @property
    def active(self) -> tuple[str, ...]:
        """Ids of Active plugins."""
        return tuple(p.plugin_id for p in self.plugins if p.is_active)

    @property
    def failed(self) -> Mapping[str, str | None]:
        """Failed plugin ids mapped to the reason."""
        return {p.plugin_id: p.reason for p in self.plugins if p.state is PluginState.FAILED}

    @property
    def duplicates(self) -> tuple[RejectedSource, ...]:
        """The refused sources whose id an earlier source has (``duplicate_of`` names it)."""
        return tuple(r for r in self.rejected if r.kind == "duplicate")

    def is_active(self, plugin_id: str) -> bool:
        """Whether ``plugin_id`` is Active. False for unknown ids."""
        return any(p.plugin_id == plugin_id and p.is_active for p in self.plugins)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return {"plugins": [p.to_dict() for p in self.plugins], "rejected": [r.to_dict() for r in self.rejected]}


def health_of(slot: Slot, pool: SandboxPool | None) -> PluginHealth:
    """One slot's health, with its sandbox workers when it has some."""
    return PluginHealth(
        plugin_id=slot.info.id,
        name=slot.info.name,
        version=str(slot.info.version),
        trust_level=slot.info.trust_level if slot.trust_decided else UnknownTrust.UNKNOWN,
        state=slot.state,
        reason=slot.why_not_active,
        capabilities=slot.capabilities.names,
        stats=slot.stats.snapshot() if slot.stats else None,
        workers=pool.get_stats(slot.info.id) if pool is not None and slot.sandboxed else None,
    )


def list_metric_samples(slots: Iterable[Slot], pool: SandboxPool | None) -> list[PluginSample]:
    """What the metrics collector reads at scrape time, one sample per slot."""
    samples = []
    for slot in slots:
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


def require_active(slots: SlotTable, plugin_ids: tuple[str, ...]) -> None:
    """Raise RequiredPluginError naming every plugin in ``plugin_ids`` that is not Active."""
    missing = []
    for plugin_id in plugin_ids:
        slot = slots.find(plugin_id)
        if slot is None:
            missing.append(f"{plugin_id} (not added)")
        elif slot.state is not PluginState.ACTIVE:
            missing.append(f"{plugin_id} ({slot.state.value}{': ' + slot.reason if slot.reason else ''})")
    if missing:
        raise RequiredPluginError(
            f"required plugins are not active: {'; '.join(missing)}",
            plugin_id=plugin_ids[0] if len(plugin_ids) == 1 else None,
        )
