"""Fixtures for the sandbox pool's integration tests: real hosts, real zygotes, real worker processes.

Every host a test opens is closed in the fixture's teardown (even when the test fails).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from _pool_helpers import CHAOS, Clock, RecordList, attach_recorder, close_host, copy_plugin, new_host

from plugin_pool import PluginHost


@pytest.fixture
def make_plugin(tmp_path: Path) -> Callable[..., Path]:
    """``make_plugin(id, pool={...})``: a copy of the chaos plugin under ``id``."""

    def make(plugin_id: str, *, pool: Mapping[str, int] | None = None, source: Path = CHAOS) -> Path:
        return copy_plugin(tmp_path, plugin_id, pool=pool, source=source)

    return make


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


@pytest.fixture
def sandbox_log() -> Iterator[RecordList]:
    """Records of the host logger ``plugin_pool.sandbox`` (plugin logs arrive there as ``plugin_log``)."""
    handler, detach = attach_recorder()
    yield handler
    detach()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PluginHost, RecordList]]:
    """One host per module for tests that do not break it: plugin ``steady`` (2 workers, may use the
    ``clock`` service), ``max_message_mb`` 0.05, and a recorder on ``plugin_pool.sandbox``."""
    handler, detach = attach_recorder()
    folder = tmp_path_factory.mktemp("shared")
    host = new_host({"max_message_mb": 0.05})
    try:
        host.register_service("clock", Clock())
        host.register_service("secret", Clock())
        host.add_plugin_dir(
            copy_plugin(folder, "steady", pool={"min_workers": 2, "max_workers": 2}), services=["clock"]
        )
        host.start_plugins()
        assert host.is_active("steady"), host.get_health().failed
        yield host, handler
    finally:
        close_host(host)
        detach()
