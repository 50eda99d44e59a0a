"""The ``registry`` fixture: every contract test runs once per backend, each time on an empty registry.

To add a backend, write a factory below that returns an empty registry for one test (it may use other
fixtures through ``request`` and add finalizers, e.g. to drop a per-test schema) and add one line to
BACKENDS. The fixture closes the registry after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from plugin_pool.registry import InMemoryPluginRegistry, PluginRegistry
from plugin_pool.registry.postgres import PostgresPluginRegistry, RegistryUnavailableError, migrate

DEFAULT_TEST_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def open_memory_registry(request: pytest.FixtureRequest) -> PluginRegistry:
    return InMemoryPluginRegistry()


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

    def drop_schema() -> None:  # runs after the fixture closed the registry
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

    request.addfinalizer(drop_schema)
    return PostgresPluginRegistry(dsn, schema=schema, timeout_s=5.0)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], PluginRegistry]] = {
    "memory": open_memory_registry,
    "postgres": open_postgres_registry,
}


@pytest.fixture(params=list(BACKENDS))
def registry(request: pytest.FixtureRequest) -> Iterator[PluginRegistry]:
    """An empty registry of the parametrized backend, closed after the test."""
    opened = BACKENDS[request.param](request)
    try:
        yield opened
    finally:
        opened.close()
