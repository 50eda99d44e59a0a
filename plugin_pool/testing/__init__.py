"""Test helpers for plugin authors and hosts: a lifecycle harness, a recording fake registry, pytest fixtures.

    from plugin_pool.testing import PluginHarness

    def test_scan():
        with PluginHarness(MyPlugin(), config={"threshold": 3}) as harness:
            assert harness.invoke("scan", "some text") == {...}
        assert harness.states == ["discovered", "loading", "initializing", "active", "stopping", "stopped"]

The fixtures (``plugin_host``, ``fake_registry``, ``plugin_harness``) are registered with pytest through
the ``pytest11`` entry point, so any project that installs plugin_pool can use them.
"""

from plugin_pool.testing.harness import FakeRegistry, PluginHarness

__all__ = ["FakeRegistry", "PluginHarness"]
