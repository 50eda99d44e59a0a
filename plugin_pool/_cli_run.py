"""The workload of ``plugin-pool run``: calls through every active plugin that declares the capability, driven
by :class:`plugin_pool.testing.load.LoadDriver` (the one load generator), with worker kills on request
(:class:`plugin_pool.testing.load.ChaosMonkey`) and a summary. Kept apart from cli.py, which parses arguments.

Messages for the operator go through a :class:`Reporter`: plain ``[run] ...`` lines, or with ``--json`` one
JSON object per line, so stderr then holds only JSON lines (the log records are JSON lines too).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from plugin_pool.config import Config
from plugin_pool.errors import ConfigError, PluginPoolError
from plugin_pool.host import PluginHost
from plugin_pool.testing.load import CallKind, ChaosMonkey, LoadDriver, LoadReport

__all__ = ["SAMPLE_TEXTS", "Reporter", "run_workload"]

SAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "user=admin password=hunter2 # do not commit this line",
    "Quarterly report, confidential until release; the token rotates weekly.",
    "",
    "def scan(payload):\n    return {'findings': []}\n",
    "A longer paragraph of ordinary prose, the kind of text a scanner sees most of the time, with nothing "
    "secret in it at all, only words that go on for a while so that the payload is a few hundred bytes long "
    "and the work per call is not entirely trivial for the plugins that count or search its words.",
)


class Reporter:
    """Where ``plugin-pool run`` tells the operator what it does: ``[run] text`` lines, or JSON lines
    (``{"event": ..., "message": ..., ...}``) when ``as_json``. Thread-safe; never raises for a closed stream."""

    def __init__(self, err: TextIO, *, as_json: bool) -> None:
        self.err = err
        self.as_json = as_json
        self._lock = threading.Lock()

    def say(self, event: str, message: str, **fields: Any) -> None:
        """Write one message (a JSON object with ``event``, ``message`` and ``fields`` when ``as_json``)."""
        line = json.dumps({"event": event, "message": message, **fields}) if self.as_json else f"[run] {message}"
        with self._lock:
            try:
                self.err.write(line + "\n")
                self.err.flush()
            except ValueError:
                pass


def _call_kind(host: PluginHost, plugin_id: str, capability: str, deadline_s: float) -> CallKind:
    invoke = host.invoke

    def call(n: int) -> Any:
        return invoke(plugin_id, capability, SAMPLE_TEXTS[n % len(SAMPLE_TEXTS)])

    # Any result is right (the CLI does not know the plugins); every plugin_pool error is a precise error.
    return CallKind(plugin_id, call, None, (PluginPoolError,), None, deadline_s, 1.0, plugin_id)


def run_workload(
    host: PluginHost, config: Config, out: TextIO, reporter: Reporter, *, quiet: bool, kill_workers: int = 0
) -> dict[str, Any]:
    """Push ``[workload] calls`` calls per plugin through every active plugin that declares ``[workload]
    capability`` on ``[workload] threads`` threads; kill ``kill_workers`` sandbox workers on the way. Blocks
    until done. Returns the summary (JSON-compatible).

    Raises ConfigError when no active plugin declares the capability (naming those that are declared) or
    when workers are to be killed and no Untrusted plugin is active.
    """
    work = config.workload
    providers = host.list_providers(work.capability)
    if not providers:
        declared = sorted({c for p in host.get_health().plugins if p.state.value == "active" for c in p.capabilities})
        raise ConfigError(
            f"capability {work.capability!r} matches no active plugin; the active plugins declare: "
            f"{', '.join(declared) or 'nothing (no plugin is active)'}; use --capability with one of them",
            key="workload.capability",
        )
    # Generous: on a loaded machine a replacement may take seconds to boot, and the summary must count it.
    monkey = ChaosMonkey(host, settle_timeout_s=60.0) if kill_workers else None
    if monkey is not None and not _sandboxed(host):
        raise ConfigError(
            f"--kill-workers {kill_workers}: no Untrusted plugin is active, so there is no sandbox worker to kill; "
            f"add one (for example --plugin-dir examples/secrets_scanner)",
            key="--kill-workers",
        )
    deadline_s = config.host.call_timeout_s
    kinds = [_call_kind(host, pid, work.capability, deadline_s) for pid in providers]
    driver = LoadDriver(kinds, threads=work.threads, calls=work.calls * len(providers), grace_s=5.0, interleave=True)
    total = work.calls * len(providers)
    stop = threading.Event()
    progress = None
    driver.start()
    if not quiet:
        progress = threading.Thread(target=_progress, args=(driver, total, stop, reporter), daemon=True)
        progress.start()
    killed = _kill_on_the_way(driver, total, kill_workers, monkey, reporter) if monkey is not None else 0
    report = driver.join()
    stop.set()
    if progress is not None:
        progress.join(2.0)
    if monkey is not None:
        killed += _kill_rest(kill_workers - killed, monkey, reporter)
        if not monkey.wait_settled():  # every killed worker replaced ...
            reporter.say("pool_unsettled", "the pool had not replaced every killed worker within 60 s")
        _settle(host)  # ... and counted, so the summary shows each replacement
        if killed < kill_workers:
            why = "; ".join(monkey.errors) or "no live worker could be found settled in time"
            reporter.say(
                "kill_workers_short",
                f"killed {killed} of {kill_workers} workers: {why}",
                killed=killed,
                requested=kill_workers,
            )
    return _summary(host, work.capability, work.threads, report, killed if monkey is not None else None)


def _settle(host: PluginHost, timeout_s: float = 10.0) -> None:
    """Wait until the supervisor ran every task scheduled so far (a replacement reports itself from there) and
    the host's background thread handled what they queued (the count of each replacement)."""
    pool = host.sandbox
    if pool is not None:
        reached = threading.Event()
        pool.supervisor.schedule(0.0, reached.set)
        reached.wait(timeout_s)
    host.drain_background(timeout_s)


def _sandboxed(host: PluginHost) -> list[str]:
    return [p.plugin_id for p in host.get_health().plugins if p.workers is not None and p.state.value == "active"]


def _kill_on_the_way(driver: LoadDriver, total: int, count: int, monkey: ChaosMonkey, reporter: Reporter) -> int:
    """Kill ``count`` workers at even points of the workload while it runs; return how many were killed."""
    killed = 0
    for n in range(1, count + 1):
        while driver.is_running and driver.snapshot().calls < total * n / (count + 1):
            time.sleep(0.02)
        if not driver.is_running:
            break
        killed += _kill_one(monkey, reporter)
    return killed


def _kill_rest(count: int, monkey: ChaosMonkey, reporter: Reporter) -> int:
    """The workload ended first (a short run): kill the rest now, each once the pool has settled."""
    return sum(_kill_one(monkey, reporter) for _ in range(max(0, count)))


def _kill_one(monkey: ChaosMonkey, reporter: Reporter) -> int:
    before = dict(monkey.kills)
    if not monkey.wait_settled():
        return 0
    plugin_id = monkey.kill_one()
    if plugin_id is None:
        return 0
    reporter.say(
        "worker_killed",
        f"killed a worker of plugin {plugin_id!r} on purpose (SIGKILL); the pool replaces it",
        pluginId=plugin_id,
        kills=monkey.kills[plugin_id] - before.get(plugin_id, 0),
    )
    return 1


def _progress(driver: LoadDriver, total: int, stop: threading.Event, reporter: Reporter) -> None:
    started = time.monotonic()
    while not stop.wait(2.0):
        done = driver.snapshot().calls
        rate = done / max(time.monotonic() - started, 1e-9)
        reporter.say("progress", f"{done:,}/{total:,} calls ({rate:,.0f}/s)", calls=done, total=total)


def _summary(host: PluginHost, capability: str, threads: int, report: LoadReport, killed: int | None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "capability": capability,
        "threads": threads,
        "elapsed_s": round(report.elapsed_s, 3),
        "plugins": [],
    }
    if killed is not None:
        summary["killed_workers"] = killed
    for p in host.get_health().plugins:
        kind = report.kinds.get(p.plugin_id)
        errors: dict[str, int] = {}
        if kind is not None:
            for label, n in (*kind.errors.items(), *kind.unexpected.items()):
                errors[label] = errors.get(label, 0) + n
        summary["plugins"].append(
            {
                "plugin_id": p.plugin_id,
                "trust_level": p.trust_level.value,
                "state": p.state.value,
                "reason": p.reason,
                "calls": kind.calls if kind is not None else 0,
                "errors": sum(errors.values()),
                "errors_by_type": errors,
                "p50_us": round(kind.latency.percentile(50) * 1e6, 2) if kind is not None else 0.0,
                "p99_us": round(kind.latency.percentile(99) * 1e6, 2) if kind is not None else 0.0,
                "restarts": dict(p.workers.restarts) if p.workers is not None else {},
            }
        )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the table ``plugin-pool run`` prints. Pure."""
    lines = [
        f"\nworkload: capability {summary['capability']!r}, {summary['threads']} threads, {summary['elapsed_s']} s"
    ]
    header = ("PLUGIN", "TRUST", "STATE", "CALLS", "ERRORS", "P50 µs", "P99 µs", "WORKER RESTARTS")
    rows: list[Sequence[str]] = [header]
    for p in summary["plugins"]:
        rows.append(
            (
                p["plugin_id"],
                p["trust_level"],
                p["state"],
                f"{p['calls']:,}",
                f"{p['errors']:,}",
                f"{p['p50_us']:.1f}",
                f"{p['p99_us']:.1f}",
                ", ".join(f"{reason} {n}" for reason, n in sorted(p["restarts"].items()))
                or ("0" if p["trust_level"] == "untrusted" else "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for p in summary["plugins"]:
        if p["reason"]:
            lines.append(f"  {p['plugin_id']}: {p['reason']}")
        for kind, n in sorted(p["errors_by_type"].items()):
            lines.append(f"  {p['plugin_id']}: {n:,} calls failed with {kind}")
    if "killed_workers" in summary:
        lines.append(f"killed {summary['killed_workers']} sandbox workers on purpose (--kill-workers)")
    return "\n".join(lines) + "\n"
