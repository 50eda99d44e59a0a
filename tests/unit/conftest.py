"""Unit test fixtures: hosts that are always closed, hung plugin threads that are always released."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from _plugins import TEST_ACTOR

from plugin_pool import PluginHost, load_config
from plugin_pool.registry import InMemoryPluginRegistry


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hanging plugins wait on; set after the test so their threads end at once."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def make_host() -> Iterator[Callable[..., PluginHost]]:
    """A factory of open hosts (actor ``unit-tests``) on a fresh in-memory registry, closed after the test.

    ``overrides`` maps section to settings as for ``load_config``; ``opened=False`` returns it unopened.
    """
    hosts: list[PluginHost] = []

    def make(overrides: Mapping[str, Mapping[str, Any]] | None = None, *, opened: bool = True) -> PluginHost:
        merged: dict[str, dict[str, Any]] = {"host": {"actor": TEST_ACTOR}}
        for section, values in (overrides or {}).items():
            merged.setdefault(section, {}).update(values)
        host = PluginHost(load_config(overrides=merged), registry=InMemoryPluginRegistry())
        hosts.append(host)
        return host.open() if opened else host

    yield make
    for host in reversed(hosts):
        host.close()


@pytest.fixture
def host(make_host: Callable[..., PluginHost]) -> PluginHost:
    """An open host with the default timeouts."""
    return make_host()
