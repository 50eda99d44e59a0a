"""A failure while an Untrusted plugin's first workers boot fails that plugin only, whatever raised it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from plugin_pool import PluginHost, PluginState


def test_a_folder_gone_before_start_fails_only_that_plugin(
    open_host: Callable[..., PluginHost], make_plugin: Callable[..., Path]
) -> None:
    host = open_host()
    one = {"min_workers": 1, "max_workers": 1}
    gone = make_plugin("gone", pool=one)
    host.add_plugin_dir(gone)
    host.add_plugin_dir(make_plugin("healthy", pool=one))
    shutil.rmtree(gone)  # staging the private copy now fails with an OSError, not a boot error

    health = host.start_plugins()  # does not raise
    assert health.active == ("healthy",)
    failed = host.get_plugin_health("gone")
    assert failed.state is PluginState.FAILED
    assert failed.reason is not None and "gone" in failed.reason
    assert host.invoke("healthy", "echo", 1) == 1
    assert host.start_plugin("gone") is PluginState.FAILED  # a retry is a legal move, and fails again
