"""docs/monitoring: the Grafana dashboard and the Prometheus alerting rules name only metrics (and labels) the
library exports, so neither can drift from the code silently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from plugin_pool.metrics import HostMetrics, PluginSample
from plugin_pool.model import TrustLevel
from plugin_pool.registry.fleet import RegistryStats

MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
# Added by Prometheus to every scraped series.
TARGET_LABELS = {"instance", "job"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_IDENTIFIER = re.compile(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()")


def exported() -> dict[str, set[str]]:
    """Every sample name a host's registry exposes, with the labels each carries."""
    registry = CollectorRegistry()
    sample = PluginSample(
        "p",
        TrustLevel.UNTRUSTED,
        True,
        calls=(("scan", 3, 1, 0.5),),
        workers_busy=1,
        workers_idle=1,
        waiting=2,
        min_workers=1,
        max_workers=2,
    )
    metrics = HostMetrics(registry, lambda: [sample], lambda: RegistryStats())
    metrics.add_plugin("p")
    metrics.count_restart("p", "crash")
    metrics.count_failure("p")
    metrics.count_denial("p")
    metrics.count_integrity_rejection("p", "hash_mismatch")
    metrics.observe_load(TrustLevel.UNTRUSTED, 12.0)
    names: dict[str, set[str]] = {}
    for family in registry.collect():
        for s in family.samples:
            names.setdefault(s.name, set()).update(s.labels)
    return names


def metrics_in(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched on it) for every series an expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, Grafana variables)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries: [5m], [$__rate_interval]
    text = _GROUPING.sub("", text)
    found: list[tuple[str, set[str]]] = []
    for match in _SELECTOR.finditer(text):
        labels = {part.split("=")[0].split("!")[0].strip() for part in match.group(2).split(",") if part.strip()}
        if match.group(1) is None:
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        found.append((match.group(1), labels))
    bare = _SELECTOR.sub(" ", text)
    found += [(name, set()) for name in _IDENTIFIER.findall(bare) if name not in _KEYWORDS]
    return found


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):  # label_values(METRIC, LABEL): a Grafana function over one metric
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query["query"]).groups()  # type: ignore[union-attr]
            exprs.append(f'{metric}{{{label}=~".*"}}')
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_expression_names_an_exported_metric_and_its_labels(source: str) -> None:
    names = exported()
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    assert exprs
    for expr in exprs:
        selected = metrics_in(expr)
        assert selected, expr
        for metric, labels in selected:
            assert metric in names, f"{metric!r} (in {expr!r}) is not a metric plugin_pool exports"
            unknown = labels - names[metric] - TARGET_LABELS
            assert not unknown, f"{metric} has no label(s) {sorted(unknown)} (in {expr!r})"


def test_the_alerts_cover_what_operators_must_hear_about() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    by_name = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    wanted = {
        "PluginPoolCrashLoop": "sandbox_process_restarts_total",
        "PluginPoolWorkerRestartRate": "sandbox_process_restarts_total",
        "PluginPoolPluginFailed": "plugin_failures_total",
        "PluginPoolQueueSaturated": "sandbox_queue_waiting",
        "PluginPoolIntegrityRejection": "plugin_integrity_rejections_total",
        "PluginPoolRegistryBufferOverflow": "plugin_registry_writes_total",
        "PluginPoolRegistryLinkLost": "plugin_registry_link_lost_total",
    }
    for alert, metric in wanted.items():
        assert metric in by_name[alert]["expr"], alert
        assert by_name[alert]["labels"]["severity"] in {"warning", "critical"}
        assert by_name[alert]["annotations"]["summary"]


def test_the_checker_itself_catches_a_name_the_library_does_not_export() -> None:
    names = exported()
    assert [m for m, _ in metrics_in('rate(sandbox_restarts_total{plugin_id="x"}[5m])')] == ["sandbox_restarts_total"]
    assert "sandbox_restarts_total" not in names
    [(metric, labels)] = metrics_in('sum by (plugin_id) (sandbox_workers{state="busy", instance=~"$instance"})')
    assert metric == "sandbox_workers" and labels == {"state", "instance"}
    assert {"plugin_id", "state"} <= names["sandbox_workers"]
