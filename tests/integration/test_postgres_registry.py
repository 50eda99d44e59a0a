"""The PostgreSQL registry against a real server: migrations, hosts racing, notifications, outages, bad input.

The contract suite (tests/contract) covers the protocol itself; this file covers what only a shared database
has. Every test works in its own schema (dropped afterwards). Outages are simulated with a TCP proxy thread on
127.0.0.1 between the registry and the server, which a test cuts (every connection closed, new ones refused)
and restores on the same port.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from _concurrency import run_in_threads
from _pg import Proxy, count, wait_for
from psycopg import sql

from plugin_pool import (
    Capabilities,
    PluginBase,
    PluginHost,
    PluginInfo,
    PluginState,
    RegistryConflictError,
    RegistryError,
    TrustLevel,
    capability,
    load_config,
)
from plugin_pool.cli import main
from plugin_pool.registry import EventKind, RegistryChange
from plugin_pool.registry.postgres import (
    PostgresPluginRegistry,
    RegistryUnavailableError,
    list_migrations,
    migrate,
)

pytestmark = pytest.mark.postgres

S = PluginState
ACTOR = "pg-tests"
DSN = os.environ.get("PLUGIN_POOL_TEST_DSN") or "postgresql://postgres@127.0.0.1:5432/test"
LATEST = [name for _, name, _ in list_migrations()]


def info(plugin_id: str = "scanner", version: str = "1.0.0") -> PluginInfo:
    return PluginInfo(id=plugin_id, name=plugin_id.title(), version=version, trust_level=TrustLevel.TRUSTED)


# -- migrations ---------------------------------------------------------------------------------------------


def test_migrate_from_empty_creates_the_tables_and_records_the_version(server: str, schema: str) -> None:
    assert migrate(server, schema) == LATEST
    with psycopg.connect(server) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
            )
        }
        versions = conn.execute(
            sql.SQL("SELECT version, name FROM {} ORDER BY version").format(sql.Identifier(schema, "schema_version"))
        ).fetchall()
    assert tables == {"plugins", "plugin_versions", "plugin_capabilities", "audit_events", "schema_version"}
    assert [name for _, name in versions] == LATEST


def test_migrating_again_is_a_no_op(server: str, schema: str) -> None:
    migrate(server, schema)
    assert migrate(server, schema) == []
    assert count(server, schema, "schema_version") == len(LATEST)


def test_hosts_migrating_at_once_apply_each_migration_once(server: str, schema: str) -> None:
    results, errors = run_in_threads(6, lambda i: migrate(server, schema))
    assert errors == []
    assert sorted(results) == [[]] * 5 + [LATEST]
    assert count(server, schema, "schema_version") == len(LATEST)


def test_open_refuses_an_unmigrated_schema_and_migrates_when_asked(server: str, schema: str) -> None:
    with pytest.raises(RegistryError, match=r"plugin-pool registry migrate"):
        PostgresPluginRegistry(server, schema=schema)
    with PostgresPluginRegistry(server, schema=schema, migrate=True) as registry:
        registry.register(info(), Capabilities.of("scan"), actor=ACTOR)
        assert registry.get_plugin("scanner").status is S.DISCOVERED


def test_unreachable_database_at_open_names_host_and_port() -> None:
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = f"postgresql://postgres@127.0.0.1:{port}/test"
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match=rf"host 127\.0\.0\.1 port {port}") as caught:
        PostgresPluginRegistry(dsn, timeout_s=1.0)
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", str(port))
    assert time.monotonic() - started < 5
    with pytest.raises(RegistryUnavailableError, match=rf"port {port}"):
        migrate(dsn, "anything", timeout_s=1.0)


# -- several hosts on one database ----------------------------------------------------------------------------


def test_two_hosts_registering_the_same_plugin_at_once_make_one_row(
    open_registry: Callable[..., PostgresPluginRegistry], server: str, schema: str
) -> None:
    hosts = [open_registry(), open_registry()]
    caps = Capabilities.of("scan", "connect", "evaluate_policy")

    results, errors = run_in_threads(
        8, lambda i: hosts[i % 2].register(info(), caps, actor=f"host-{i % 2}", assembly_hash="sha256:aa")
    )

    assert errors == []
    assert {r.status for r in results} == {S.DISCOVERED}
    assert len({r.registered_at for r in results}) == 1
    assert (count(server, schema, "plugins"), count(server, schema, "plugin_versions")) == (1, 1)
    assert count(server, schema, "plugin_capabilities") == 3
    assert [e.event for e in hosts[1].list_events()] == [EventKind.REGISTERED]


def test_compare_and_set_conflict_between_two_hosts(open_registry: Callable[..., PostgresPluginRegistry]) -> None:
    first, second = open_registry(), open_registry()
    first.register(info(), Capabilities.of("scan"), actor="host-1")
    second.set_status("scanner", S.LOADING, expected=S.DISCOVERED, actor="host-2")

    with pytest.raises(RegistryConflictError) as caught:
        first.set_status("scanner", S.LOADING, expected=S.DISCOVERED, actor="host-1")

    assert (caught.value.expected, caught.value.actual) == (S.DISCOVERED, S.LOADING)
    assert [e.actor for e in first.list_events(event=EventKind.LOADING)] == ["host-2"]


def test_a_host_learns_of_another_hosts_status_changes(open_registry: Callable[..., PostgresPluginRegistry]) -> None:
    operator, host = open_registry(), open_registry()
    operator.register(info(), Capabilities.of("scan"), actor="operator")
    seen: list[tuple[str, PluginState | None]] = []
    arrived = threading.Event()

    def on_change(change: RegistryChange) -> None:
        seen.append((change.plugin_id, change.status))
        arrived.set()

    unsubscribe = host.subscribe(on_change)
    host.set_status("scanner", S.LOADING, expected=S.DISCOVERED, actor="host")  # its own change: not reported
    operator.set_status("scanner", S.FAILED, expected=S.LOADING, actor="operator", reason="disabled")

    # NOTIFY delivers in commit order: the host's own change (first) was read and left out before this one.
    assert arrived.wait(5)
    assert seen == [("scanner", S.FAILED)]

    unsubscribe()
    unsubscribe()
    # The fence: the listener thread is gone, so nothing can be delivered any more.
    assert not [t for t in threading.enumerate() if t.name.startswith("plugin-pool-registry-listen-")]
    operator.set_status("scanner", S.LOADING, expected=S.FAILED, actor="operator")
    assert seen == [("scanner", S.FAILED)]


# -- outages --------------------------------------------------------------------------------------------------


def test_writes_during_an_outage_are_buffered_and_flushed_in_order(
    open_registry: Callable[..., PostgresPluginRegistry], proxy: Proxy, server: str
) -> None:
    registry = open_registry(proxy.dsn(server), timeout_s=1.0, retry_max_s=0.2)
    direct = open_registry()
    registry.register(info(), Capabilities.of("scan"), actor=ACTOR)
    registry.set_status("scanner", S.LOADING, expected=S.DISCOVERED, actor=ACTOR)

    proxy.cut()
    during = registry.set_status("scanner", S.INITIALIZING, expected=S.LOADING, actor=ACTOR, reason="offline")
    assert (during.status, during.status_reason) == (S.INITIALIZING, "offline")
    for n in range(3):
        event = registry.record_event(EventKind.CAPABILITY_DENIED, plugin_id="scanner", actor=ACTOR, details={"n": n})
        assert event.id == 0
    registry.record_event(EventKind.FAILED, plugin_id="never-registered", actor=ACTOR)
    registry.set_status("scanner", S.ACTIVE, expected=S.INITIALIZING, actor=ACTOR)
    other = registry.register(info("other"), Capabilities.of("scan"), actor=ACTOR)  # buffered too
    assert (other.id, other.status) == ("other", S.DISCOVERED)
    registry.set_status("other", S.LOADING, expected=S.DISCOVERED, actor=ACTOR)
    assert (registry.pending_writes, registry.is_available) == (8, False)
    with pytest.raises(RegistryUnavailableError, match=rf"port {proxy.port}"):
        registry.get_plugin("scanner")
    assert direct.get_plugin("scanner").status is S.LOADING  # nothing written yet

    proxy.restore()
    wait_for(lambda: registry.pending_writes == 0)

    assert (registry.is_available, registry.flushed_writes, registry.dropped_writes) == (True, 8, 0)
    assert direct.get_plugin("scanner").status is S.ACTIVE
    assert registry.get_plugin("scanner").status is S.ACTIVE
    assert direct.get_plugin("other").status is S.LOADING
    assert [c.capability for c in direct.list_capabilities("other")] == ["scan"]
    events = direct.list_events()
    assert [(e.plugin_id, e.event) for e in events[2:]] == [
        ("scanner", EventKind.INITIALIZING),
        ("scanner", EventKind.CAPABILITY_DENIED),
        ("scanner", EventKind.CAPABILITY_DENIED),
        ("scanner", EventKind.CAPABILITY_DENIED),
        ("never-registered", EventKind.FAILED),
        ("scanner", EventKind.ACTIVATED),
        ("other", EventKind.REGISTERED),
        ("other", EventKind.LOADING),
    ]
    assert [e.details.get("n") for e in events[3:6]] == [0, 1, 2]
    assert dict(events[2].details) == {"from": "loading", "reason": "offline"}
    # times of the calls, not of the flush (a buffered registration is stamped when it is written)
    assert [e.at for e in events[:-2]] == sorted(e.at for e in events[:-2])


def test_outage_buffer_overflow_is_counted_and_logged(
    open_registry: Callable[..., PostgresPluginRegistry],
    proxy: Proxy,
    server: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = open_registry(proxy.dsn(server), timeout_s=1.0, retry_max_s=0.2, buffer_limit=2)
    direct = open_registry()
    proxy.cut()
    with caplog.at_level(logging.ERROR, logger="plugin_pool.registry"):
        for n in range(5):
            registry.record_event(EventKind.WORKER_RESTARTED, plugin_id=None, actor=ACTOR, details={"n": n})
    assert (registry.pending_writes, registry.dropped_writes) == (2, 3)
    assert "outage buffer is full" in caplog.text

    proxy.restore()
    wait_for(lambda: registry.pending_writes == 0)
    assert [e.details["n"] for e in direct.list_events()] == [0, 1]


def test_a_buffered_change_another_host_overtook_is_refused_and_counted(
    open_registry: Callable[..., PostgresPluginRegistry], proxy: Proxy, server: str
) -> None:
    registry = open_registry(proxy.dsn(server), timeout_s=1.0, retry_max_s=0.2)
    operator = open_registry()
    registry.register(info(), Capabilities.of("scan"), actor=ACTOR)
    proxy.cut()
    registry.set_status("scanner", S.LOADING, expected=S.DISCOVERED, actor=ACTOR)
    operator.set_status("scanner", S.FAILED, expected=S.DISCOVERED, actor="operator", reason="disabled")

    proxy.restore()
    wait_for(lambda: registry.pending_writes == 0)

    assert registry.conflicted_writes == 1
    assert registry.get_plugin("scanner").status is S.FAILED


# -- bad input ------------------------------------------------------------------------------------------------


def test_bad_input_is_rejected_before_any_sql(server: str) -> None:
    # Not opened: anything that reached the database would fail with "not open yet" instead.
    registry = PostgresPluginRegistry(server, schema="never_created", open=False)
    overlong = PluginInfo(id="a" * 63, name="A", version="1", trust_level="trusted")
    object.__setattr__(overlong, "id", "a" * 64)
    unknown_level = PluginInfo(id="scanner", name="A", version="1", trust_level="trusted")
    object.__setattr__(unknown_level, "trust_level", "superuser")

    with pytest.raises(RegistryError, match=r"plugin id 'a{64}' is invalid"):
        registry.register(overlong, Capabilities(), actor=ACTOR)
    with pytest.raises(RegistryError, match="unknown trust level 'superuser'"):
        registry.register(unknown_level, Capabilities(), actor=ACTOR)
    with pytest.raises(RegistryError, match="configuration of plugin 'scanner' is not valid JSON"):
        registry.register(info(), Capabilities(), actor=ACTOR, config={"handler": object()})
    with pytest.raises(RegistryError, match="assembly_hash"):
        registry.register(info(), Capabilities(), actor=ACTOR, assembly_hash="x" * 201)
    with pytest.raises(RegistryError, match="unknown plugin state 'bogus'"):
        registry.set_status("scanner", "bogus", expected=None, actor=ACTOR)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="audit event plugin id"):
        registry.record_event(EventKind.FAILED, plugin_id="x" * 201, actor=ACTOR)
    with pytest.raises(RegistryError, match="unknown trust level"):
        registry.list_plugins(trust_level="root")  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="not open yet"):
        registry.register(info(), Capabilities(), actor=ACTOR)
    with pytest.raises(RegistryError, match="schema name 'x; DROP TABLE t' is invalid"):
        PostgresPluginRegistry(server, schema="x; DROP TABLE t", open=False)
    with pytest.raises(RegistryError, match="schema name"):
        migrate(server, "Robert'); DROP SCHEMA public CASCADE; --")
    registry.close()
    registry.close()


def test_close_stops_every_thread_and_is_idempotent(open_registry: Callable[..., PostgresPluginRegistry]) -> None:
    registry = open_registry()
    registry.subscribe(lambda change: None)
    registry.close()
    registry.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("plugin-pool-registry-")]
    with pytest.raises(RegistryError, match="already closed"):
        registry.get_plugin("scanner")


# -- wired through configuration: the host and the CLI ------------------------------------------------------


def test_a_host_configured_with_registry_postgres_records_its_lifecycle_there(server: str, schema: str) -> None:
    out = io.StringIO()
    assert main(["--log-format", "none", "registry", "migrate", "--dsn", server, "--schema", schema], out=out) == 0
    assert "applied 2 migration(s): 0001_initial, 0002_plugin_enabled" in out.getvalue()
    out = io.StringIO()
    assert main(["--log-format", "none", "registry", "migrate", "--dsn", server, "--schema", schema], out=out) == 0
    assert out.getvalue() == "the schema is up to date\n"

    config = load_config(
        env={
            "PLUGIN_POOL_REGISTRY_BACKEND": "postgres",
            "PLUGIN_POOL_REGISTRY_DSN": server,
            "PLUGIN_POOL_REGISTRY_SCHEMA": schema,
        }
    )
    host = PluginHost(config)
    assert isinstance(host.registry, PostgresPluginRegistry)
    with host:
        host.add_plugin(_Echo())
        host.start_plugins()
        assert host.invoke("pg-echo", "scan", 3) == 3
    with PostgresPluginRegistry(server, schema=schema) as reader:
        assert reader.get_plugin("pg-echo").status is PluginState.STOPPED
        assert [e.event.value for e in reader.list_events(plugin_id="pg-echo")] == [
            "registered",
            "loading",
            "initializing",
            "activated",
            "stopping",
            "shutdown",
        ]


class _Echo(PluginBase):
    info = PluginInfo(id="pg-echo", name="Echo", version="1.0.0", trust_level=TrustLevel.BUILTIN)

    @capability
    def scan(self, payload: Any) -> Any:
        return payload


def test_status_reads_the_shared_registry_without_loading_anything(server: str, schema: str, tmp_path: Any) -> None:
    config_file = tmp_path / "plugin_pool.toml"
    config_file.write_text(
        f'[registry]\nbackend = "postgres"\ndsn = "{server}"\nschema = "{schema}"\nmigrate_on_start = true\n'
    )
    host = PluginHost(load_config(config_file))
    with host:
        host.add_plugin(_Echo())
        host.start_plugins()
        out = io.StringIO()
        assert main(["--log-format", "none", "status", str(config_file)], out=out) == 0
        line = next(line for line in out.getvalue().splitlines() if line.startswith("pg-echo"))
        assert line.split()[:3] == ["pg-echo", "builtin", "active"]
