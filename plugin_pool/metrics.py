"""Prometheus metrics of one host, collected in the host process (never prometheus multiprocess mode).

The seed's metrics keep their exact names: ``plugin_active_count{trust_level}``, ``plugin_load_duration_ms``,
``plugin_failures_total{plugin_id}`` and ``sandbox_process_restarts_total{plugin_id,reason}``. Events the
host sees once (a load, a failure, a restart, a denial, an integrity rejection) update counters where the
host records them; everything the host already counts per call (``CallStats`` of monitored routes, the
sandbox pool's workers and queue) is read at scrape time by :class:`HostCollector`, so no call path pays
for metrics and the bare BuiltIn route stays a bare method.

Label values are bounded: plugin ids (validated, one per plugin the host knows), trust levels, restart
reasons, integrity rejection kinds and call outcomes. A capability name a caller asked for is never a
label (a caller could invent any number of them).

The library starts no server: the caller owns the :class:`~prometheus_client.CollectorRegistry`
(``PluginHost(metrics_registry=...)``) and exposes it as it likes; ``plugin-pool run --metrics-port``
serves it for the CLI's run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from plugin_pool.errors import REJECTION_KINDS
from plugin_pool.model import TrustLevel
from plugin_pool.registry.fleet import RegistryStats

__all__ = [
    "DISCOVERY_REJECTION_KINDS",
    "INTEGRITY_KINDS",
    "LOAD_BUCKETS_MS",
    "HostCollector",
    "HostMetrics",
    "PluginSample",
    "RegistryCollector",
]

LOAD_BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0)
"""Buckets of ``plugin_load_duration_ms``: in-process loads take about a millisecond, sandbox boots
hundreds, and a step may run up to its lifecycle timeout (5 s by default)."""

INTEGRITY_KINDS = ("hash_mismatch", "signature", *REJECTION_KINDS)
"""The ``kind`` label of ``plugin_integrity_rejections_total``: a content hash mismatch, a rejected signature,
or what a plugin folder held that it may not (``plugin_pool.errors.REJECTION_KINDS``)."""

DISCOVERY_REJECTION_KINDS = (
    "manifest",
    "signature",
    "integrity",
    "host_version",
    "duplicate",
    "entry_point",
    "missing_path",
    "path",
)
"""The ``kind`` label of ``plugin_discovery_rejections_total``: why discovery refused a candidate
(``plugin_pool.discovery.DiscoveredPlugin.error_kind``)."""


@dataclass(frozen=True, slots=True)
class PluginSample:
    """What the host knows about one plugin at scrape time (the collector's input)."""

    plugin_id: str
    trust_level: TrustLevel
    active: bool
    calls: tuple[tuple[str, int, int, float], ...] | None = None
    """Monitored calls per capability: (capability, calls, errors, total seconds); None when the plugin's
    calls are not monitored (BuiltIn unless host.monitor_builtin)."""
    workers_busy: int | None = None
    """Sandboxed plugins with workers: busy and idle workers, waiting calls, the pool's bounds."""
    workers_idle: int = 0
    waiting: int = 0
    min_workers: int = 0
    max_workers: int = 0


class HostCollector(Collector):
    """Reads the host's own counters at scrape time: active plugins per trust level, monitored calls and
    their duration, sandbox workers and queues. Never called on a call path."""

    def __init__(self, samples: Callable[[], Iterable[PluginSample]]) -> None:
        self._samples = samples

    def describe(self) -> Iterator[Metric]:
        """The families :meth:`collect` yields (so registering does not call the host)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """One consistent-enough snapshot per plugin (each plugin's counters are read under its own lock)."""
        active, calls, duration, workers, waiting, bounds = self._families()
        per_level = dict.fromkeys(TrustLevel, 0)
        for s in self._samples():
            if s.active:
                per_level[s.trust_level] += 1
            for capability, count, errors, total_s in s.calls or ():
                calls.add_metric([s.plugin_id, capability, "ok"], count - errors)
                calls.add_metric([s.plugin_id, capability, "error"], errors)
                duration.add_metric([s.plugin_id, capability], count, total_s)
            if s.workers_busy is not None:
                workers.add_metric([s.plugin_id, "busy"], s.workers_busy)
                workers.add_metric([s.plugin_id, "idle"], s.workers_idle)
                waiting.add_metric([s.plugin_id], s.waiting)
                bounds.add_metric([s.plugin_id, "min"], s.min_workers)
                bounds.add_metric([s.plugin_id, "max"], s.max_workers)
        for level, count in per_level.items():
            active.add_metric([level.value], count)
        yield from (active, calls, duration, workers, waiting, bounds)

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        CounterMetricFamily,
        SummaryMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
    ]:
        return (
            GaugeMetricFamily("plugin_active_count", "Active plugins by trust level", labels=["trust_level"]),
            CounterMetricFamily(
                "plugin_calls",
                "Monitored calls by plugin, capability and outcome (ok, error); BuiltIn calls are not monitored "
                "unless host.monitor_builtin is set",
                labels=["plugin_id", "capability", "outcome"],
            ),
            SummaryMetricFamily(
                "plugin_call_duration_seconds",
                "Time spent in monitored calls, by plugin and capability",
                labels=["plugin_id", "capability"],
            ),
            GaugeMetricFamily(
                "sandbox_workers",
                "Live sandbox workers by plugin and state (busy, idle)",
                labels=["plugin_id", "state"],
            ),
            GaugeMetricFamily(
                "sandbox_queue_waiting", "Calls waiting for a busy plugin's worker", labels=["plugin_id"]
            ),
            GaugeMetricFamily(
                "sandbox_pool_size_bound_workers",
                "The plugin's current pool bounds (min, max); they change with host.resize_pool",
                labels=["plugin_id", "bound"],
            ),
        )


class RegistryCollector(Collector):
    """Reads the registry's counters at scrape time (``registry.get_stats()``, which never blocks): writes
    waiting, written, dropped and refused, the database's availability, lost links, heartbeats, re-syncs."""

    def __init__(self, stats: Callable[[], RegistryStats]) -> None:
        self._stats = stats

    def describe(self) -> Iterator[Metric]:
        """The families :meth:`collect` yields."""
        yield from self._families(RegistryStats())

    def collect(self) -> Iterator[Metric]:
        """One snapshot of the registry's counters."""
        yield from self._families(self._stats())

    @staticmethod
    def _families(stats: RegistryStats) -> Iterator[Metric]:
        writes = CounterMetricFamily(
            "plugin_registry_writes",
            "Registry writes (audit events, status moves, registrations, acknowledgements) by outcome: written, "
            "dropped (the outage buffer was full), refused (the database refused them on replay)",
            labels=["outcome"],
        )
        writes.add_metric(["written"], stats.written_writes)
        writes.add_metric(["dropped"], stats.dropped_writes)
        writes.add_metric(["refused"], stats.conflicted_writes)
        yield writes
        yield GaugeMetricFamily(
            "plugin_registry_writes_pending", "Registry writes waiting for the database", value=stats.pending_writes
        )
        yield GaugeMetricFamily(
            "plugin_registry_available",
            "1 while the registry database is reachable, 0 while writes are buffered",
            value=1 if stats.available else 0,
        )
        yield CounterMetricFamily(
            "plugin_registry_link_lost",
            "Times the registry's notification link was lost (each loss is logged once)",
            value=stats.link_losses,
        )
        yield CounterMetricFamily(
            "plugin_registry_heartbeats", "Heartbeats this host wrote to the registry", value=stats.heartbeats
        )
        yield CounterMetricFamily(
            "plugin_registry_resyncs",
            "Full re-syncs of operators' changes (after every reconnect and every registry.resync_s)",
            value=stats.resyncs,
        )


class HostMetrics:
    """The metrics of one host, registered on ``registry``. Updates are thread-safe and cheap; none of
    them runs per call. Registering a second HostMetrics on the same registry raises ValueError
    (duplicated time series): give each host its own registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        samples: Callable[[], Iterable[PluginSample]],
        registry_stats: Callable[[], RegistryStats] | None = None,
    ) -> None:
        self.registry = registry
        self.load_duration_ms = Histogram(
            "plugin_load_duration_ms",
            "Time from Loading to Active per successful start, in milliseconds",
            ["trust_level"],
            buckets=LOAD_BUCKETS_MS,
            registry=None,
        )
        self.failures = Counter(
            "plugin_failures_total", "Transitions to Failed, by plugin", ["plugin_id"], registry=None
        )
        self.restarts = Counter(
            "sandbox_process_restarts_total",
            "Sandbox worker replacements by plugin and reason (crash, timeout, memory, cpu, recycle)",
            ["plugin_id", "reason"],
            registry=None,
        )
        self.denials = Counter(
            "plugin_capability_denials_total",
            "Calls refused because the plugin does not declare the capability (each is audited)",
            ["plugin_id"],
            registry=None,
        )
        self.integrity_rejections = Counter(
            "plugin_integrity_rejections_total",
            "Plugins refused for their content: a hash mismatch, a rejected signature, or a folder holding what "
            "a plugin folder may not (symlink, special_file, bytecode, limits, ...); plugin_id is empty when the "
            "folder has no valid id",
            ["plugin_id", "kind"],
            registry=None,
        )
        self.discovery_rejections = Counter(
            "plugin_discovery_rejections",
            "Candidates discovery refused (listed in host.get_health().rejected), by why: manifest, signature, "
            "integrity, host_version, duplicate, entry_point, missing_path, path",
            ["kind"],
            registry=None,
        )
        self.collector = HostCollector(samples)
        collectors: tuple[Collector, ...] = (
            self.load_duration_ms,
            self.failures,
            self.restarts,
            self.denials,
            self.integrity_rejections,
            self.discovery_rejections,
            self.collector,
        )
        if registry_stats is not None:
            collectors += (RegistryCollector(registry_stats),)
        registered: list[Collector] = []
        try:
            for collector in collectors:
                registry.register(collector)
                registered.append(collector)
        except ValueError:  # a name already taken: leave the registry as it was
            for done in registered:
                registry.unregister(done)
            raise

    def add_plugin(self, plugin_id: str) -> None:
        """Show the plugin's counters at 0 from the moment it is known. Safe to call twice."""
        self.failures.labels(plugin_id)
        self.denials.labels(plugin_id)

    def add_sandboxed_plugin(self, plugin_id: str, reasons: Iterable[str]) -> None:
        """Show the plugin's restart counters at 0 for every reason. Safe to call twice."""
        for reason in reasons:
            self.restarts.labels(plugin_id, reason)

    def observe_load(self, trust_level: TrustLevel, duration_ms: float) -> None:
        """Record one start that reached Active."""
        self.load_duration_ms.labels(trust_level.value).observe(duration_ms)

    def count_failure(self, plugin_id: str) -> None:
        """Count one transition to Failed."""
        self.failures.labels(plugin_id).inc()

    def count_restart(self, plugin_id: str, reason: str) -> None:
        """Count one worker replacement."""
        self.restarts.labels(plugin_id, reason).inc()

    def count_denial(self, plugin_id: str) -> None:
        """Count one capability denial."""
        self.denials.labels(plugin_id).inc()

    def count_integrity_rejection(self, plugin_id: str | None, kind: str) -> None:
        """Count one rejection; ``kind`` is one of :data:`INTEGRITY_KINDS`; ``plugin_id`` None (a folder
        without a valid id) counts under an empty label."""
        if kind not in INTEGRITY_KINDS:
            raise ValueError(f"unknown integrity rejection kind {kind!r}; expected one of {INTEGRITY_KINDS}")
        self.integrity_rejections.labels(plugin_id or "", kind).inc()

    def count_discovery_rejection(self, kind: str) -> None:
        """Count one candidate discovery refused; ``kind`` is one of :data:`DISCOVERY_REJECTION_KINDS`."""
        if kind not in DISCOVERY_REJECTION_KINDS:
            raise ValueError(f"unknown discovery rejection kind {kind!r}; expected one of {DISCOVERY_REJECTION_KINDS}")
        self.discovery_rejections.labels(kind).inc()
