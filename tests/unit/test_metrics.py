"""Host metrics without processes: the seed's names and types, a registry per host, counters that follow the
lifecycle, denials and integrity rejections, and call counters read at scrape time (none on the BuiltIn route)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from _plugins import TEST_ACTOR, RaisesIn, Recorder
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from plugin_pool import CapabilityDeniedError, PluginCallError, PluginHost, TrustLevel, load_config
from plugin_pool.integrity import load_private_key, sign_plugin, write_keypair
from plugin_pool.lifecycle import PluginState
from plugin_pool.metrics import HostMetrics
from plugin_pool.registry import InMemoryPluginRegistry

SEED_METRICS = {
    "plugin_active_count": "gauge",
    "plugin_load_duration_ms": "histogram",
    "plugin_failures": "counter",  # samples are plugin_failures_total
    "sandbox_process_restarts": "counter",
}


def sample(host: PluginHost, name: str, **labels: str) -> float | None:
    return host.metrics_registry.get_sample_value(name, labels)


def families(registry: CollectorRegistry) -> dict[str, str]:
    return {family.name: family.type for family in registry.collect()}


def test_the_seed_metrics_exist_with_their_names_and_types(host: PluginHost) -> None:
    found = families(host.metrics_registry)
    assert {name: found.get(name) for name in SEED_METRICS} == SEED_METRICS
    assert found["plugin_capability_denials"] == "counter"
    assert found["plugin_integrity_rejections"] == "counter"
    assert found["plugin_calls"] == "counter"
    assert found["plugin_call_duration_seconds"] == "summary"
    text = generate_latest(host.metrics_registry).decode()
    assert 'plugin_active_count{trust_level="builtin"} 0.0' in text
    assert 'plugin_active_count{trust_level="untrusted"} 0.0' in text


def test_every_host_has_its_own_registry_unless_given_one() -> None:
    first, second = PluginHost(), PluginHost()
    try:
        assert first.metrics_registry is not second.metrics_registry
        given = CollectorRegistry()
        third = PluginHost(metrics_registry=given)
        assert third.metrics_registry is given and "plugin_active_count" in families(given)
        # A second host on the same registry would duplicate every series: refused, registry left intact.
        with pytest.raises(ValueError, match="Duplicated"):
            PluginHost(metrics_registry=given)
        assert "plugin_active_count" in families(given)
        third.close()
    finally:
        first.close()
        second.close()


def test_registration_failure_leaves_the_registry_as_it_was() -> None:
    registry = CollectorRegistry()
    Gauge("plugin_capability_denials_total", "taken", registry=registry)  # a name the host needs
    with pytest.raises(ValueError):
        HostMetrics(registry, list)
    assert set(families(registry)) == {"plugin_capability_denials_total"}


def test_active_counts_load_durations_and_failures_follow_the_lifecycle(host: PluginHost) -> None:
    host.add_plugin(Recorder("fast"))
    host.add_plugin(Recorder("policy", TrustLevel.TRUSTED))
    host.add_plugin(RaisesIn("broken", "start"))
    assert sample(host, "plugin_failures_total", plugin_id="broken") == 0.0  # known plugins show 0
    host.start_plugins()
    assert sample(host, "plugin_active_count", trust_level="builtin") == 1.0
    assert sample(host, "plugin_active_count", trust_level="trusted") == 1.0
    assert sample(host, "plugin_active_count", trust_level="untrusted") == 0.0
    assert sample(host, "plugin_failures_total", plugin_id="broken") == 1.0
    assert sample(host, "plugin_failures_total", plugin_id="fast") == 0.0
    # One observation per start that reached Active; the failed start observes nothing.
    assert sample(host, "plugin_load_duration_ms_count", trust_level="builtin") == 1.0
    assert sample(host, "plugin_load_duration_ms_count", trust_level="trusted") == 1.0
    assert (sample(host, "plugin_load_duration_ms_sum", trust_level="builtin") or 0.0) > 0.0

    host.start_plugin("broken")  # Failed -> Loading -> ... -> Failed again: a second failure
    assert sample(host, "plugin_failures_total", plugin_id="broken") == 2.0
    host.stop_plugin("fast")
    host.start_plugin("fast")
    assert sample(host, "plugin_load_duration_ms_count", trust_level="builtin") == 2.0
    host.stop_plugins()
    assert sample(host, "plugin_active_count", trust_level="builtin") == 0.0
    assert sample(host, "plugin_active_count", trust_level="trusted") == 0.0


def test_a_plugin_that_cannot_be_added_counts_as_a_failure(tmp_path: Path) -> None:
    file = tmp_path / "plugin_pool.toml"
    file.write_text('[plugins.missing]\nentry = "no_such_module_here:Plugin"\ntrust_level = "trusted"\n')
    with PluginHost(load_config(file), registry=InMemoryPluginRegistry()) as host:
        host.add_configured_plugins()
        assert host.get_plugin_health("missing").state is PluginState.FAILED
        assert sample(host, "plugin_failures_total", plugin_id="missing") == 1.0


def test_denials_are_counted_by_plugin_and_never_labelled_by_capability(host: PluginHost) -> None:
    host.add_plugin(Recorder("fast"))
    host.start_plugins()
    for name in ("nope", "other", "x" * 300):
        with pytest.raises(CapabilityDeniedError):
            host.invoke("fast", name)
    assert sample(host, "plugin_capability_denials_total", plugin_id="fast") == 3.0
    text = generate_latest(host.metrics_registry).decode()
    assert "nope" not in text and "capability=" not in text


def test_monitored_calls_are_read_at_scrape_time_and_builtin_routes_stay_bare(host: PluginHost) -> None:
    fast = Recorder("fast")
    host.add_plugin(fast)
    host.add_plugin(Recorder("policy", TrustLevel.TRUSTED))
    host.start_plugins()
    for n in range(5):
        host.invoke("fast", "scan", n)
        host.invoke("policy", "scan", n)
    for n in range(2):
        with pytest.raises(PluginCallError, match="cannot scan"):
            host.invoke("policy", "fail", n)
    assert sample(host, "plugin_calls_total", plugin_id="policy", capability="scan", outcome="ok") == 5.0
    assert sample(host, "plugin_calls_total", plugin_id="policy", capability="fail", outcome="error") == 2.0
    assert sample(host, "plugin_calls_total", plugin_id="policy", capability="scan", outcome="error") == 0.0
    assert sample(host, "plugin_call_duration_seconds_count", plugin_id="policy", capability="scan") == 5.0
    assert sample(host, "plugin_call_duration_seconds_count", plugin_id="policy", capability="fail") == 2.0
    assert (sample(host, "plugin_call_duration_seconds_sum", plugin_id="policy", capability="scan") or 0.0) > 0.0
    # BuiltIn: no wrapper, so nothing to read and no series (the route is the bound method itself).
    assert sample(host, "plugin_calls_total", plugin_id="fast", capability="scan", outcome="ok") is None
    assert host._router.get_route("fast", "scan") == fast.scan


def test_monitor_builtin_makes_builtin_calls_visible(make_host: Callable[..., PluginHost]) -> None:
    host = make_host({"host": {"monitor_builtin": True}})
    host.add_plugin(Recorder("fast"))
    host.start_plugins()
    host.invoke("fast", "scan", 1)
    assert sample(host, "plugin_calls_total", plugin_id="fast", capability="scan", outcome="ok") == 1.0


TRUSTED_MODULE = """\
from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Plugin(PluginBase):
    info = PluginInfo(id="{id}", name="{id}", version="1.0.0", trust_level=TrustLevel.TRUSTED)

    @capability
    def scan(self, payload):
        return payload
"""


def trusted_folder(root: Path, plugin_id: str) -> Path:
    folder = root / plugin_id
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(
        f'[plugin]\nid = "{plugin_id}"\nname = "{plugin_id}"\nversion = "1.0.0"\ntrust_level = "trusted"\n'
        f'entry = "mod:Plugin"\n\n[capabilities.scan]\n'
    )
    (folder / "mod.py").write_text(TRUSTED_MODULE.format(id=plugin_id))
    return folder


def test_integrity_rejections_are_counted_by_kind(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    write_keypair(keys / "k.key", keys / "k.pub")
    plugins = tmp_path / "plugins"
    trusted_folder(plugins, "unsigned")
    sign_plugin(trusted_folder(plugins, "tampered"), load_private_key(keys / "k.key"))
    sign_plugin(trusted_folder(plugins, "vetted"), load_private_key(keys / "k.key"))
    config = load_config(
        overrides={
            "host": {"actor": TEST_ACTOR},
            "discovery": {"paths": [str(plugins)], "use_entry_points": False},
            "trust": {"trusted_keys": [str(keys / "k.pub")]},
        }
    )
    with PluginHost(config, registry=InMemoryPluginRegistry()) as host:
        host.discover()
        (plugins / "tampered" / "mod.py").write_text(TRUSTED_MODULE.format(id="tampered") + "\n# changed\n")
        host.start_plugins()
        assert host.get_health().active == ("vetted",)
        assert sample(host, "plugin_integrity_rejections_total", plugin_id="unsigned", kind="signature") == 1.0
        assert sample(host, "plugin_integrity_rejections_total", plugin_id="tampered", kind="hash_mismatch") == 1.0
        assert sample(host, "plugin_integrity_rejections_total", plugin_id="vetted", kind="signature") is None
        assert sample(host, "plugin_failures_total", plugin_id="unsigned") == 1.0
        assert sample(host, "plugin_failures_total", plugin_id="tampered") == 1.0
        assert sample(host, "plugin_active_count", trust_level="trusted") == 1.0
        kinds = [(e.plugin_id, e.event.value) for e in host.registry.list_events() if e.plugin_id != "vetted"]
        assert ("unsigned", "signature_rejected") in kinds and ("tampered", "hash_mismatch") in kinds


def test_unknown_integrity_kinds_are_refused() -> None:
    metrics = HostMetrics(CollectorRegistry(), list)
    with pytest.raises(ValueError, match="unknown integrity rejection kind"):
        metrics.count_integrity_rejection("p", "other")
