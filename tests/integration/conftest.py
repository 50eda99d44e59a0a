"""Fixtures for the sandbox pool's integration tests: real hosts, real zygotes, real worker processes.

Every host a test opens is closed in the fixture's teardown (even when the test fails), and every wait
is bounded: ``wait_until`` polls with a deadline and fails the test naming what it waited for.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest

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


def is_gone(pid: int) -> bool:
    """Whether the process is dead (a zombie not yet reaped by its parent counts as dead)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def live_children(pid: int) -> list[int]:
    """Pids of ``pid``'s children that are still running (zombies excluded)."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    return sorted(c.pid for c in children if not is_gone(c.pid))


def zygote_pid(host: PluginHost) -> int:
    """The pid of the host's current zygote."""
    assert host.sandbox is not None
    zygote = host.sandbox.supervisor._zygote
    assert zygote is not None and zygote.pid is not None
    return zygote.pid


def worker_pids(host: PluginHost, plugin_id: str) -> list[int]:
    """The plugin's live worker pids as the pool knows them."""
    assert host.sandbox is not None
    return host.sandbox.list_worker_pids(plugin_id)


def copy_plugin(
    parent: Path, plugin_id: str, *, pool: Mapping[str, int] | None = None, source: Path = CHAOS
) -> Path:
    """Copy a plugin folder to ``parent/plugin_id`` with its manifest's id (and [pool]) rewritten."""
    target = parent / plugin_id
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = target / "plugin.toml"
    lines = []
    for line in manifest.read_text().splitlines():
        if line.startswith("[pool]"):
            break
        lines.append(f'id = "{plugin_id}"' if line.startswith("id = ") else line)
    if pool:
        lines += ["[pool]", *(f"{key} = {value}" for key, value in pool.items())]
    manifest.write_text("\n".join(lines) + "\n")
    return target


@pytest.fixture
def make_plugin(tmp_path: Path) -> Callable[..., Path]:
    """``make_plugin(id, pool={...})``: a copy of the chaos plugin under ``id``."""

    def make(plugin_id: str, *, pool: Mapping[str, int] | None = None, source: Path = CHAOS) -> Path:
        return copy_plugin(tmp_path, plugin_id, pool=pool, source=source)

    return make


def new_host(
    sandbox: Mapping[str, Any] | None = None,
    *,
    call_timeout_s: float = 10.0,
    lifecycle: Mapping[str, Any] | None = None,
) -> PluginHost:
    """An open host with fast test defaults (no jitter, short backoff) plus ``sandbox`` overrides."""
    settings: dict[str, Any] = {"recycle_jitter": 0.0, "restart_backoff_s": 0.02, "boot_timeout_s": 5.0}
    settings.update(sandbox or {})
    overrides: dict[str, Mapping[str, Any]] = {"sandbox": settings, "host": {"call_timeout_s": call_timeout_s}}
    if lifecycle:
        overrides["lifecycle"] = lifecycle
    return PluginHost(load_config(overrides=overrides)).open()


def close_host(host: PluginHost) -> None:
    """Close ``host`` and make sure its zygote and workers are gone, whatever state the test left."""
    pids: list[int] = []
    pool = host.sandbox
    if pool is not None and pool.supervisor._zygote is not None and pool.supervisor._zygote.pid is not None:
        pids.append(pool.supervisor._zygote.pid)
        pids += live_children(pool.supervisor._zygote.pid)
    host.close()
    for pid in pids:
        if not is_gone(pid):
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def open_host() -> Iterator[Callable[..., PluginHost]]:
    """``open_host(sandbox={...}, call_timeout_s=..., lifecycle={...})``; every host is closed afterwards."""
    hosts: list[PluginHost] = []

    def make(*args: Any, **kwargs: Any) -> PluginHost:
        host = new_host(*args, **kwargs)
        hosts.append(host)
        return host

    yield make
    for host in reversed(hosts):
        close_host(host)


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


def _attach_recorder() -> tuple[RecordList, Callable[[], None]]:
    logger = logging.getLogger("plugin_pool.sandbox")
    handler = RecordList()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)

    def detach() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return handler, detach


@pytest.fixture
def sandbox_log() -> Iterator[RecordList]:
    """Records of the host logger ``plugin_pool.sandbox`` (plugin logs arrive there as ``plugin_log``)."""
    handler, detach = _attach_recorder()
    yield handler
    detach()


class Clock:
    """A host service handed to sandboxed plugins."""

    def now(self) -> float:
        return 1234.5


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PluginHost, RecordList]]:
    """One host per module for tests that do not break it: plugin ``steady`` (2 workers, may use the
    ``clock`` service), ``max_message_mb`` 0.05, and a recorder on ``plugin_pool.sandbox``."""
    handler, detach = _attach_recorder()
    folder = tmp_path_factory.mktemp("shared")
    host = new_host({"max_message_mb": 0.05})
    try:
        host.register_service("clock", Clock())
        host.register_service("secret", Clock())
        host.add_plugin_dir(copy_plugin(folder, "steady", pool={"min_workers": 2, "max_workers": 2}), services=["clock"])
        host.start_plugins()
        assert host.is_active("steady"), host.get_health().failed
        yield host, handler
    finally:
        close_host(host)
        detach()
