"""pytest fixtures, registered through the ``pytest11`` entry point ``plugin_pool``.

Loaded by every pytest run in an environment where plugin_pool is installed, so importing this module loads
nothing but pytest: the host (with psutil, cryptography, prometheus-client and the registry) is imported
when a test first asks for one of these fixtures.

- ``fake_registry``: a fresh :class:`FakeRegistry`.
- ``plugin_host``: an open :class:`PluginHost` on ``fake_registry``, closed after the test.
- ``plugin_harness``: a factory ``plugin_harness(plugin, **kwargs)`` returning a started
  :class:`PluginHarness`; every harness it made is closed after the test.
- ``plugin_folder_harness``: a factory ``plugin_folder_harness(folder, **kwargs)`` returning a started
  :meth:`PluginHarness.from_folder` harness: the folder's plugin running in real sandbox workers as the host
  runs it; every harness it made (and its workers) is closed after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from plugin_pool.host import PluginHost
    from plugin_pool.model import Plugin
    from plugin_pool.testing.harness import FakeRegistry, PluginHarness


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    """A fresh recording in-memory registry."""
    from plugin_pool.testing.harness import FakeRegistry

    registry = FakeRegistry()
    yield registry
    registry.close()


@pytest.fixture
def plugin_host(fake_registry: FakeRegistry) -> Iterator[PluginHost]:
    """An open host on ``fake_registry``; closed (plugins stopped) after the test."""
    from plugin_pool.host import PluginHost

    host = PluginHost(registry=fake_registry)
    with host:
        yield host


@pytest.fixture
def plugin_harness() -> Iterator[Callable[..., PluginHarness]]:
    """A factory that starts a PluginHarness per plugin and closes them all after the test."""
    made: list[PluginHarness] = []

    def make(plugin: Plugin, **kwargs: Any) -> PluginHarness:
        from plugin_pool.testing.harness import PluginHarness

        harness = PluginHarness(plugin, **kwargs)
        made.append(harness)
        harness.start()
        return harness

    yield make
    for harness in reversed(made):
        harness.close()


@pytest.fixture
def plugin_folder_harness() -> Iterator[Callable[..., PluginHarness]]:
    """A factory that starts a plugin folder through the real sandbox (PluginHarness.from_folder) and closes
    every harness it made after the test."""
    made: list[PluginHarness] = []

    def make(folder: str | Path, **kwargs: Any) -> PluginHarness:
        from plugin_pool.testing.harness import PluginHarness

        harness = PluginHarness.from_folder(folder, **kwargs)
        made.append(harness)
        harness.start()
        return harness

    yield make
    for harness in reversed(made):
        harness.close()
