"""The ``registry`` fixture: every contract test runs once per backend, each time on an empty registry; and
``other_host``: another host's registry instance on the same store (the fleet tests).

To add a backend, write a factory below that returns an empty registry for one test (it may use other
fixtures through ``request`` and add finalizers, e.g. to drop a per-test schema) and one that opens another
host on the same store, and add a line to BACKENDS. The fixtures close what they opened after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from plugin_pool.errors import RegistryUnavailableError
from plugin_pool.registry import InMemoryPluginRegistry, PluginRegistry
from plugin_pool.registry.postgres import PostgresPluginRegistry, migrate

DEFAULT_TEST_DSN = "postgresql://postgres@127.0.0.1:5432/test"
HOST_A = "host-a"


@dataclass
class Backend:
    """How to open a registry of one backend for a test, and another host's instance on the same store."""

    open: Callable[[pytest.FixtureRequest], PluginRegistry]
    open_other: Callable[[PluginRegistry, str], PluginRegistry]


def open_memory_registry(request: pytest.FixtureRequest) -> PluginRegistry:
    return InMemoryPluginRegistry(host_id=HOST_A)


def open_other_memory_host(first: PluginRegistry, host_id: str) -> PluginRegistry:
    assert isinstance(first, InMemoryPluginRegistry)
    return first.for_host(host_id)


def open_postgres_registry(request: pytest.FixtureRequest) -> PluginRegistry:
    """A registry in a fresh, migrated schema of its own (xdist workers never share one), dropped afterwards."""
    dsn = os.environ.get("PLUGIN_POOL_TEST_DSN") or DEFAULT_TEST_DSN
    schema = f"contract_{uuid.uuid4().hex[:16]}"
    try:
        migrate(dsn, schema)
    except RegistryUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required under CI: {exc}")
        pytest.skip(f"no PostgreSQL server (set PLUGIN_POOL_TEST_DSN): {exc}")

    def drop_schema() -> None:  # runs after the fixtures closed their registries
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

    request.addfinalizer(drop_schema)
    return PostgresPluginRegistry(dsn, schema=schema, host_id=HOST_A, timeout_s=5.0, heartbeat_s=0.5)


def open_other_postgres_host(first: PluginRegistry, host_id: str) -> PluginRegistry:
    assert isinstance(first, PostgresPluginRegistry)
    dsn = os.environ.get("PLUGIN_POOL_TEST_DSN") or DEFAULT_TEST_DSN
    return PostgresPluginRegistry(dsn, schema=first.schema, host_id=host_id, join=True, heartbeat_s=0.5)


BACKENDS: dict[str, Backend] = {
    "memory": Backend(open_memory_registry, open_other_memory_host),
    "postgres": Backend(open_postgres_registry, open_other_postgres_host),
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def registry(backend: Backend, request: pytest.FixtureRequest) -> Iterator[PluginRegistry]:
    """An empty registry of the parametrized backend, recording for host ``host-a``; closed after the test."""
    opened = backend.open(request)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def other_host(backend: Backend, registry: PluginRegistry) -> Iterator[Callable[[str], PluginRegistry]]:
    """``other_host(host_id)``: another host's registry on the same store (a second host process sharing the
    database); every one is closed after the test, before the registry."""
    opened: list[PluginRegistry] = []

    def make(host_id: str) -> PluginRegistry:
        other = backend.open_other(registry, host_id)
        opened.append(other)
        return other

    yield make
    for other in reversed(opened):
        other.close()
