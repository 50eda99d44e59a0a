"""Helpers of the sandbox pool's integration tests: bounded waits, process checks, plugin copies, hosts.

Every wait is bounded: ``wait_until`` polls with a deadline and fails the test naming what it waited for.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from _hosts import ns_pid

from plugin_pool import PluginHost, load_config

PLUGINS = Path(__file__).parent / "plugins"
CHAOS = PLUGINS / "chaos"


def wait_until(predicate: Callable[[], Any], what: str, timeout_s: float = 5.0, poll_s: float = 0.005) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def supervisor_fence(host: PluginHost, timeout_s: float = 10.0) -> None:
    """Wait until the sandbox supervisor has run every task scheduled so far (spawns of replacements and of
    resized pools run in schedule order on its one thread): a fence, instead of sleeping."""
    assert host.sandbox is not None
    reached = threading.Event()
    host.sandbox.supervisor.schedule(0.0, reached.set)
    assert reached.wait(timeout_s), f"the sandbox supervisor did not reach the fence within {timeout_s:g} s"


def settle(host: PluginHost, timeout_s: float = 10.0) -> None:
    """Fence the supervisor, then the host's background thread (restart audits and counts, failures)."""
    supervisor_fence(host, timeout_s)
    assert host.drain_background(timeout_s), "the host's background thread did not drain"


def zygote_pid(host: PluginHost) -> int:
    """The pid of the host's current zygote."""
    assert host.sandbox is not None
    pid = host.sandbox.supervisor.zygote_pid
    assert pid is not None
    return pid


def worker_pids(host: PluginHost, plugin_id: str) -> list[int]:
    """The plugin's live worker pids as the pool knows them."""
    assert host.sandbox is not None
    return host.sandbox.list_worker_pids(plugin_id)


def as_seen_inside(pids: list[int]) -> dict[int, int]:
    """Host pid -> the pid the worker reports for itself (its PID namespace numbers it); workers must be alive."""
    return {pid: ns_pid(pid) for pid in pids}


def copy_plugin(parent: Path, plugin_id: str, *, pool: Mapping[str, int] | None = None, source: Path = CHAOS) -> Path:
    """Copy a plugin folder to ``parent/plugin_id`` with its manifest's id (and [pool]) rewritten."""
    target = parent / plugin_id
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = target / "plugin.toml"
    lines = []
    for line in manifest.read_text().splitlines():
        if line.startswith("[pool]") and pool is not None:
            break
        lines.append(f'id = "{plugin_id}"' if line.startswith("id = ") else line)
    if pool is not None:
        lines += ["[pool]", *(f"{key} = {value}" for key, value in pool.items())]
    manifest.write_text("\n".join(lines) + "\n")
    return target


def new_host(
    sandbox: Mapping[str, Any] | None = None,
    *,
    call_timeout_s: float = 10.0,
    lifecycle: Mapping[str, Any] | None = None,
) -> PluginHost:
    """An open host with fast test defaults (no jitter, short backoff, no warm spares: these tests count serving
    workers and their replacements; tests of spares ask for them) plus ``sandbox`` overrides."""
    settings: dict[str, Any] = {
        "recycle_jitter": 0.0,
        "restart_backoff_s": 0.02,
        "boot_timeout_s": 5.0,
        "spare_workers": 0,
    }
    settings.update(sandbox or {})
    overrides: dict[str, Mapping[str, Any]] = {"sandbox": settings, "host": {"call_timeout_s": call_timeout_s}}
    if lifecycle:
        overrides["lifecycle"] = lifecycle
    return PluginHost(load_config(overrides=overrides)).open()


class RecordList(logging.Handler):
    """Keeps every record logged to the logger it is attached to (from any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def plugin_logs(self, plugin_id: str, contains: str = "") -> list[logging.LogRecord]:
        """The ``plugin_log`` records of ``plugin_id`` whose message contains ``contains``."""
        return [
            r
            for r in list(self.records)
            if getattr(r, "event", None) == "plugin_log"
            and getattr(r, "pluginId", None) == plugin_id
            and contains in r.getMessage()
        ]


def attach_recorder() -> tuple[RecordList, Callable[[], None]]:
    logger = logging.getLogger("plugin_pool.sandbox")
    handler = RecordList()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)

    def detach() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return handler, detach


class Clock:
    """A host service handed to sandboxed plugins."""

    def now(self) -> float:
        return 1234.5
