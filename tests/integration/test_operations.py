"""Operations with real workers: a scripted scenario checked through exact metrics, the exact audit trail
and every JSON log line it produced; pool resizes under load that fail no call; the CLI's metrics port and
SIGHUP reload."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import sys
import threading
import types
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from _pool_helpers import copy_plugin, supervisor_fence, wait_until, worker_pids

from plugin_pool import (
    CapabilityDeniedError,
    ConfigError,
    PluginBase,
    PluginHost,
    PluginInfo,
    TrustLevel,
    capability,
)
from plugin_pool._loader import load_entry
from plugin_pool.cli import main
from plugin_pool.logs import configure_json_logging

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ACTOR = "plugin-pool"  # the default [host] actor of open_host's hosts


def sample(host: PluginHost, name: str, **labels: str) -> float | None:
    return host.metrics_registry.get_sample_value(name, labels)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """plugin_pool's records as JSON lines in a StringIO (INFO and up); the logger is restored afterwards."""
    logger = logging.getLogger("plugin_pool")
    level = logger.level
    stream = io.StringIO()
    handler = configure_json_logging(logging.INFO, stream)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_scripted_scenario_exact_metrics_audit_events_and_json_logs(
    open_host: Callable[..., PluginHost], make_plugin: Callable[..., Path], json_log: io.StringIO
) -> None:
    host = open_host()
    host.add_plugin(load_entry(f"{EXAMPLES / 'hello_world' / 'plugin.py'}:HelloWorld"))
    host.add_plugin(load_entry(f"{EXAMPLES / 'keyword_policy' / 'plugin.py'}:KeywordPolicy"))
    host.add_plugin_dir(make_plugin("alpha", pool={"min_workers": 2, "max_workers": 2}))
    host.add_plugin_dir(make_plugin("beta", pool={"min_workers": 1, "max_workers": 1}))
    tampered = make_plugin("tampered", pool={"min_workers": 1, "max_workers": 1})
    host.add_plugin_dir(tampered)
    host.add_plugin_dir(make_plugin("broken", pool={"min_workers": 1, "max_workers": 1}), config={"init": "raise"})
    # Changed after it was hashed and registered: the private copy made at start no longer matches.
    (tampered / "chaos.py").write_text((tampered / "chaos.py").read_text() + "\n# changed after add\n")

    health = host.start_plugins()
    assert health.active == ("hello-world", "keyword-policy", "alpha", "beta")
    assert set(health.failed) == {"tampered", "broken"}
    assert "chaos.py" in (health.failed["tampered"] or "")

    for n in range(3):
        assert host.invoke("hello-world", "scan", "a b c") == {"words": 3, "lines": 1}
        host.invoke("keyword-policy", "scan", f"the password {n}")
        assert host.invoke("alpha", "echo", n) == n
        assert host.invoke("beta", "echo", n) == n
    with pytest.raises(CapabilityDeniedError):
        host.invoke("beta", "scan", "x")

    first, second = worker_pids(host, "alpha")
    for victim, kills in ((first, 1), (second, 2)):
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda v=victim, k=kills: (
                host.restarts["alpha", "crash"] == k
                and len(worker_pids(host, "alpha")) == 2
                and v not in worker_pids(host, "alpha")
            ),
            f"the replacement of alpha's worker {victim}",
        )
    for n in range(5):
        assert host.invoke("alpha", "echo", n) == n

    # -- metrics: exact values ------------------------------------------------------------------------
    assert host.restarts == Counter({("alpha", "crash"): 2})
    assert sample(host, "sandbox_process_restarts_total", plugin_id="alpha", reason="crash") == 2.0
    for reason in ("timeout", "memory", "cpu", "recycle"):
        assert sample(host, "sandbox_process_restarts_total", plugin_id="alpha", reason=reason) == 0.0
    assert sample(host, "sandbox_process_restarts_total", plugin_id="beta", reason="crash") == 0.0
    failures = {
        p: sample(host, "plugin_failures_total", plugin_id=p)
        for p in ("hello-world", "keyword-policy", "alpha", "beta", "tampered", "broken")
    }
    assert failures == {"hello-world": 0, "keyword-policy": 0, "alpha": 0, "beta": 0, "tampered": 1, "broken": 1}
    active = {level.value: sample(host, "plugin_active_count", trust_level=level.value) for level in TrustLevel}
    assert active == {"builtin": 1.0, "trusted": 1.0, "untrusted": 2.0}
    assert sample(host, "plugin_capability_denials_total", plugin_id="beta") == 1.0
    assert sample(host, "plugin_capability_denials_total", plugin_id="alpha") == 0.0
    assert sample(host, "plugin_integrity_rejections_total", plugin_id="tampered", kind="hash_mismatch") == 1.0
    loads = {
        level.value: sample(host, "plugin_load_duration_ms_count", trust_level=level.value) for level in TrustLevel
    }
    assert loads == {"builtin": 1.0, "trusted": 1.0, "untrusted": 2.0}
    assert sample(host, "plugin_calls_total", plugin_id="keyword-policy", capability="scan", outcome="ok") == 3.0
    assert sample(host, "plugin_calls_total", plugin_id="alpha", capability="echo", outcome="ok") == 8.0
    assert sample(host, "plugin_calls_total", plugin_id="alpha", capability="echo", outcome="error") == 0.0
    assert sample(host, "plugin_calls_total", plugin_id="beta", capability="echo", outcome="ok") == 3.0
    assert (
        sample(host, "plugin_calls_total", plugin_id="hello-world", capability="scan", outcome="ok") is None
    )  # BuiltIn: bare
    assert sample(host, "sandbox_workers", plugin_id="alpha", state="idle") == 2.0
    assert sample(host, "sandbox_workers", plugin_id="alpha", state="busy") == 0.0
    assert sample(host, "sandbox_queue_waiting", plugin_id="alpha") == 0.0
    assert sample(host, "sandbox_workers", plugin_id="tampered", state="idle") is None

    # -- the audit trail: exact events ------------------------------------------------------------------
    events = host.registry.list_events()
    assert {e.actor for e in events} == {host.actor}
    assert host.actor.startswith(f"{ACTOR}/")  # the configured identity, then the OS user
    started = ["loading", "initializing", "activated"]
    expected = [
        *(
            (p, "registered", "discovered")
            for p in ("hello-world", "keyword-policy", "alpha", "beta", "tampered", "broken")
        ),
        *((p, e, {"activated": "active"}.get(e, e)) for p in ("hello-world", "keyword-policy") for e in started),
        *((p, e, {"activated": "active"}.get(e, e)) for p in ("alpha", "beta") for e in started),
        # Staged (copied and hashed in one pass) while Loading: a changed file fails it there.
        ("tampered", "loading", "loading"),
        ("tampered", "hash_mismatch", "loading"),
        ("tampered", "failed", "failed"),
        ("broken", "loading", "loading"),
        ("broken", "initializing", "initializing"),
        ("broken", "failed", "failed"),
        ("beta", "capability_denied", "active"),
        ("alpha", "worker_restarted", "active"),
        ("alpha", "worker_restarted", "active"),
    ]
    assert [(e.plugin_id, e.event.value, e.state.value if e.state else None) for e in events] == expected
    by_kind = {e.event.value: e for e in events}
    assert by_kind["capability_denied"].details == {"capability": "scan", "declared": ["act", "echo"]}
    assert "chaos.py" in json.dumps(dict(by_kind["hash_mismatch"].details))
    assert [dict(e.details) for e in events if e.event.value == "worker_restarted"] == [{"reason": "crash"}] * 2

    # -- logs: every line is JSON; lifecycle records carry the seed's fields ------------------------------
    lines = json_log.getvalue().splitlines()
    assert lines
    records = [json.loads(line) for line in lines]  # raises on any line that is not one JSON object
    assert all({"level", "logger", "message"} <= set(r) for r in records)
    levels = {p.plugin_id: p.trust_level.value for p in health.plugins}
    lifecycle = [r for r in records if r.get("event") in {"plugin_added", "plugin_active", "plugin_failed"}]
    for r in lifecycle:
        assert r["trustLevel"] == levels[r["pluginId"]], r
    assert Counter((r["event"], r["pluginId"], r["lifecycleState"]) for r in lifecycle) == Counter(
        [
            *(("plugin_added", p, "discovered") for p in levels),
            *(("plugin_active", p, "active") for p in ("hello-world", "keyword-policy", "alpha", "beta")),
            ("plugin_failed", "tampered", "failed"),
            ("plugin_failed", "broken", "failed"),
        ]
    )
    [denied] = [r for r in records if r.get("event") == "capability_denied"]
    assert (denied["pluginId"], denied["trustLevel"], denied["lifecycleState"], denied["capability"]) == (
        "beta",
        "untrusted",
        "active",
        "scan",
    )
    for r in records:
        if "pluginId" in r and r["pluginId"] in levels and "trustLevel" in r:
            assert r["trustLevel"] == levels[r["pluginId"]], r
        if r.get("event") in {"worker_output", "plugin_log"}:
            assert r["pluginId"] in levels, r  # worker text is a field of a host record, tagged with its plugin


def test_resizing_a_pool_under_load_fails_no_call_and_worker_counts_converge(
    open_host: Callable[..., PluginHost], make_plugin: Callable[..., Path]
) -> None:
    host = open_host()
    host.add_plugin_dir(make_plugin("elastic", pool={"min_workers": 1, "max_workers": 1}))
    host.start_plugins()
    assert host.is_active("elastic")
    pool = host.sandbox
    assert pool is not None
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = [0] * 4

    def caller(index: int) -> None:
        while not stop.is_set():
            try:
                host.invoke("elastic", "act", {"op": "sleep", "s": 0.002})
            except BaseException as exc:
                errors.append(exc)
                return
            calls[index] += 1

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()

    def workers() -> int:
        stats = pool.get_stats("elastic")
        assert stats is not None
        return stats.workers

    try:
        for low, high, settles in ((3, 4, (3, 4)), (1, 1, (1, 1)), (2, 3, (2, 3)), (1, 2, (1, 2)), (4, 4, (4, 4))):
            before = sum(calls)
            assert host.resize_pool("elastic", min_workers=low, max_workers=high) == (low, high)
            wait_until(
                lambda s=settles: s[0] <= workers() <= s[1] and len(worker_pids(host, "elastic")) == workers(),
                f"elastic's workers to settle in {settles}",
                timeout_s=15.0,
            )
            wait_until(lambda b=before: sum(calls) > b + 20, "calls to go on after the resize")
            assert sample(host, "sandbox_pool_size_bound_workers", plugin_id="elastic", bound="max") == high
        host.resize_pool("elastic", min_workers=1, max_workers=1)
        wait_until(lambda: workers() == 1 and len(worker_pids(host, "elastic")) == 1, "elastic back to 1 worker")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10.0)
    assert errors == []
    assert all(n > 0 for n in calls)
    # Retirements are not replacements: nothing counted as a restart.
    assert host.restarts == Counter()
    assert sample(host, "sandbox_process_restarts_total", plugin_id="elastic", reason="recycle") == 0.0
    assert host.is_active("elastic")


def test_max_total_workers_caps_growth_and_apply_pool_sizes_resizes_running_plugins(
    open_host: Callable[..., PluginHost], make_plugin: Callable[..., Path]
) -> None:
    host = open_host({"min_workers": 1, "max_workers": 1})
    host.add_plugin_dir(make_plugin("sized", pool={}))  # no [pool] keys: follows [sandbox]
    host.add_plugin_dir(make_plugin("pinned", pool={"min_workers": 1, "max_workers": 1}))
    host.start_plugins()
    assert host.get_health().active == ("sized", "pinned")
    host.set_max_total_workers(3)
    assert host.resize_pool("sized", min_workers=4, max_workers=4) == (4, 4)
    wait_until(lambda: len(worker_pids(host, "sized")) == 2, "sized to grow to the cap (2 + pinned's 1 = 3)")
    supervisor_fence(host)  # every spawn the resize scheduled has run: a third worker would be here by now
    assert len(worker_pids(host, "sized")) == 2
    sandbox = host.config.sandbox
    sized = host.apply_pool_sizes(replace(sandbox, min_workers=3, max_workers=3, max_total_workers=8))
    assert sized == {"sized": (3, 3), "pinned": (1, 1)}  # the manifest's [pool] wins for pinned
    wait_until(lambda: len(worker_pids(host, "sized")) == 3, "sized to grow to its new min 3 (the cap is 8 now)")
    assert host.config.sandbox.max_total_workers == 8
    with pytest.raises(ConfigError, match="min_workers"):
        host.resize_pool("sized", min_workers=3, max_workers=2)
    assert host.restarts == Counter()


GATE = threading.Event()


class Gate(PluginBase):
    """A BuiltIn plugin whose ``echo`` holds the CLI's workload until the test opens the gate."""

    info = PluginInfo(id="gate", name="Gate", version="1.0.0", trust_level=TrustLevel.BUILTIN)

    @capability
    def echo(self, payload: Any) -> Any:
        GATE.wait(30)
        return payload


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def test_cli_run_serves_metrics_and_sighup_reloads_pool_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = copy_plugin(tmp_path, "reloaded", pool={})
    config = tmp_path / "plugin_pool.toml"

    def write_config(low: int, high: int) -> None:
        config.write_text(
            f"[sandbox]\nmin_workers = {low}\nmax_workers = {high}\nboot_timeout_s = 5.0\n\n"
            f'[workload]\ncapability = "echo"\ncalls = 2\nthreads = 2\n\n'
            f'[plugins.reloaded]\npath = "{plugin}"\n'
        )

    write_config(1, 1)
    module = types.ModuleType("_operations_gate")
    module.Gate = Gate  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "_operations_gate", module)
    GATE.clear()
    out, err = io.StringIO(), io.StringIO()
    # A late SIGHUP (after run restored the previous handler) must not end the test process.
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: None)
    seen: dict[str, str] = {}

    def operator() -> None:
        try:
            match = wait_until(
                lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", err.getvalue()), "the metrics port"
            )
            port = int(match.group(1))
            wait_until(lambda: 'plugin_active_count{trust_level="untrusted"} 1.0' in scrape(port), "reloaded active")
            seen["before"] = scrape(port)
            write_config(2, 3)
            wait_until(lambda: signal.getsignal(signal.SIGHUP) is not handler_of_test, "run's SIGHUP handler")
            os.kill(os.getpid(), signal.SIGHUP)
            wait_until(lambda: "reloaded pool sizes" in err.getvalue(), "the reload", timeout_s=10.0)
            wait_until(
                lambda: 'sandbox_workers{plugin_id="reloaded",state="idle"} 2.0' in scrape(port),
                "a second worker after the reload",
                timeout_s=10.0,
            )
            seen["after"] = scrape(port)
        except BaseException as exc:  # reported by the main thread
            seen["error"] = repr(exc)
        finally:
            GATE.set()

    handler_of_test = signal.getsignal(signal.SIGHUP)
    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    try:
        code = main(
            [
                "--log-format",
                "none",
                "run",
                str(config),
                "--plugin",
                "gate=_operations_gate:Gate@builtin",
                "--metrics-port",
                "0",
                "--quiet",
                "--json",
            ],
            out=out,
            err=err,
        )
    finally:
        GATE.set()
        thread.join(30)
        signal.signal(signal.SIGHUP, previous)
    assert "error" not in seen, seen.get("error")
    assert code == 0, err.getvalue()
    assert 'sandbox_pool_size_bound_workers{bound="max",plugin_id="reloaded"} 1.0' in seen["before"]
    assert 'sandbox_pool_size_bound_workers{bound="max",plugin_id="reloaded"} 3.0' in seen["after"]
    assert 'plugin_active_count{trust_level="builtin"} 1.0' in seen["after"]
    assert "reloaded 2..3" in err.getvalue()
    summary = json.loads(out.getvalue())
    assert {p["plugin_id"]: p["errors"] for p in summary["plugins"]} == {"gate": 0, "reloaded": 0}


def test_per_plugin_pool_sizes_in_the_config_file_win_over_the_manifest(tmp_path: Path) -> None:
    from plugin_pool import ConfigError, load_config

    examples = Path(__file__).resolve().parents[2] / "examples"
    config_file = tmp_path / "plugin_pool.toml"
    config_file.write_text(
        f'[plugins.secrets-scanner]\npath = "{examples / "secrets_scanner"}"\nmin_workers = 2\nmax_workers = 3\n'
    )
    with PluginHost(load_config(config_file)) as host:  # the manifest says min 1, max 2
        host.add_configured_plugins()
        host.start_plugins()
        stats = host.get_plugin_health("secrets-scanner").workers
        assert stats is not None and (stats.workers, stats.min_workers, stats.max_workers) == (2, 2, 3)
    config_file.write_text('[plugins.secrets-scanner]\npath = "x"\nmin_workers = 0\n')
    with pytest.raises(ConfigError, match=r"plugins.secrets-scanner.min_workers = 0 .* at least 1"):
        load_config(config_file)
