"""Fixtures for the integration tests: real hosts, real zygotes, real worker processes, a real PostgreSQL.

Every host and registry a test opens is closed in the fixture's teardown (even when the test fails).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _hosts import close_host, closed_after
from _pg import DSN, Proxy
from _pool_helpers import CHAOS, Clock, RecordList, attach_recorder, copy_plugin, new_host
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from plugin_pool import PluginHost
from plugin_pool.registry.postgres import PostgresPluginRegistry, migrate


@pytest.fixture
def make_plugin(tmp_path: Path) -> Callable[..., Path]:
    """``make_plugin(id, pool={...})``: a copy of the chaos plugin under ``id``."""

    def make(plugin_id: str, *, pool: Mapping[str, int] | None = None, source: Path = CHAOS) -> Path:
        return copy_plugin(tmp_path, plugin_id, pool=pool, source=source)

    return make


@pytest.fixture
def open_host() -> Iterator[Callable[..., PluginHost]]:
    """``open_host(sandbox={...}, call_timeout_s=..., lifecycle={...})``; every host is closed afterwards."""
    yield from closed_after(new_host)


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


# -- PostgreSQL -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> str:
    """The test server's DSN; a missing server fails under CI and skips otherwise."""
    try:
        with psycopg.connect(DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required under CI (PLUGIN_POOL_TEST_DSN={DSN}): {exc}")
        pytest.skip(f"no PostgreSQL server at {DSN}: {exc}")
    return DSN


@pytest.fixture
def schema(server: str) -> Iterator[str]:
    """A unique, empty schema name; the schema (if created) is dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def open_registry(server: str, schema: str) -> Iterator[Callable[..., PostgresPluginRegistry]]:
    """``open_registry(dsn=..., **options)``: a registry on the test schema (migrated); all closed afterwards."""
    opened: list[PostgresPluginRegistry] = []
    migrate(server, schema)

    def make(dsn: str = server, **options: Any) -> PostgresPluginRegistry:
        registry = PostgresPluginRegistry(dsn, schema=schema, **options)
        opened.append(registry)
        return registry

    yield make
    for registry in reversed(opened):
        registry.close()
    assert not [t.name for t in threading.enumerate() if t.name.endswith(f"-{schema}")]


@pytest.fixture
def proxy(server: str) -> Iterator[Proxy]:
    params = conninfo_to_dict(server)
    opened = Proxy((str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)))
    yield opened
    opened.cut()
