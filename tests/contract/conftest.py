"""The ``registry`` fixture: every contract test runs once per backend, each time on an empty registry.

To add a backend, write a factory below that returns an empty registry for one test (it may use other
fixtures through ``request`` and add finalizers, e.g. to drop a per-test schema) and add one line to
BACKENDS. The fixture closes the registry after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from plugin_pool.registry import InMemoryPluginRegistry, PluginRegistry


def open_memory_registry(request: pytest.FixtureRequest) -> PluginRegistry:
    return InMemoryPluginRegistry()


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], PluginRegistry]] = {
    "memory": open_memory_registry,
}


@pytest.fixture(params=list(BACKENDS))
def registry(request: pytest.FixtureRequest) -> Iterator[PluginRegistry]:
    """An empty registry of the parametrized backend, closed after the test."""
    opened = BACKENDS[request.param](request)
    try:
        yield opened
    finally:
        opened.close()
