"""Test helpers for plugin authors and hosts: a lifecycle harness, a recording fake registry, pytest fixtures,
and load and chaos machinery.

    from plugin_pool.testing import PluginHarness

    def test_scan():
        with PluginHarness(MyPlugin(), config={"threshold": 3}) as harness:
            assert harness.invoke("scan", "some text") == {...}
        assert harness.states == ["discovered", "loading", "initializing", "active", "stopping", "stopped"]

The fixtures (``plugin_host``, ``fake_registry``, ``plugin_harness``) are registered with pytest through
the ``pytest11`` entry point, so any project that installs plugin_pool can use them. Load tests drive a host
with :class:`LoadDriver` (many caller threads, every call accounted for), kill workers with
:class:`ChaosMonkey` and check for leaks with :class:`ResourceSnapshot` (see :mod:`plugin_pool.testing.load`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plugin_pool.testing.harness import FakeRegistry, PluginHarness
    from plugin_pool.testing.load import (
        CallKind,
        ChaosMonkey,
        LatencyHistogram,
        LeakReport,
        LoadDriver,
        LoadReport,
        ResourceSnapshot,
        echo_call,
        make_echo_plugin,
        wait_for_no_leaks,
        write_load_plugin,
    )

_WHERE = {
    "FakeRegistry": "plugin_pool.testing.harness",
    "PluginHarness": "plugin_pool.testing.harness",
    **dict.fromkeys(
        (
            "CallKind",
            "ChaosMonkey",
            "LatencyHistogram",
            "LeakReport",
            "LoadDriver",
            "LoadReport",
            "ResourceSnapshot",
            "echo_call",
            "make_echo_plugin",
            "wait_for_no_leaks",
            "write_load_plugin",
        ),
        "plugin_pool.testing.load",
    ),
}

__all__ = [
    "CallKind",
    "ChaosMonkey",
    "FakeRegistry",
    "LatencyHistogram",
    "LeakReport",
    "LoadDriver",
    "LoadReport",
    "PluginHarness",
    "ResourceSnapshot",
    "echo_call",
    "make_echo_plugin",
    "wait_for_no_leaks",
    "write_load_plugin",
]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): the pytest11 entry point imports plugin_pool.testing.fixtures, and with it this package,
    # in every pytest run of an environment with plugin_pool installed; nothing heavy may load then.
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'plugin_pool.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
