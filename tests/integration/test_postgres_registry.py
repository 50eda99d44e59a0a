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
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from _concurrency import run_in_threads
from _pg import Proxy, count, wait_for
from psycopg import sql

from plugin_pool import (
    Capabilities,
    CapabilityDeniedError,
    PluginBase,
    PluginHost,
    PluginInfo,
    PluginState,
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
OPERATOR = "ops/alice"
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
    assert tables == {
        "plugins",  # the seed's table, a view now: its status is the aggregate over live hosts
        "plugin_catalog",
        "plugin_versions",
        "plugin_capabilities",
        "audit_events",
        "schema_version",
        "hosts",
        "host_status",
        "plugin_instances",
        "plugin_fleet",
        "plugin_acks",
    }
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
    operator.set_status("scanner", S.FAILED, expected=S.DISCOVERED, actor="operator", reason="disabled")

    assert arrived.wait(5)
    time.sleep(0.2)  # a report of the host's own change would have arrived by now
    assert seen == [("scanner", S.FAILED)]

    unsubscribe()
    unsubscribe()
    operator.set_status("scanner", S.LOADING, expected=S.FAILED, actor="operator")
    time.sleep(0.2)
    assert seen == [("scanner", S.FAILED)]


# -- outages --------------------------------------------------------------------------------------------------


def test_writes_during_an_outage_are_buffered_and_flushed_in_order(
    open_registry: Callable[..., PostgresPluginRegistry], proxy: Proxy, server: str
) -> None:
    registry = open_registry(proxy.dsn(server), timeout_s=1.0, retry_max_s=0.2)
    direct = open_registry()
    registry.register(info(), Capabilities.of("scan"), actor=ACTOR)
    registry.set_status("scanner", S.LOADING, expected=S.DISCOVERED, actor=ACTOR)

    assert registry.flush(timeout_s=10)
    written_before = registry.flushed_writes

    proxy.cut()
    during = registry.set_status("scanner", S.INITIALIZING, expected=S.LOADING, actor=ACTOR, reason="offline")
    assert (during.state, during.reason) == (S.INITIALIZING, "offline")
    for n in range(3):
        event = registry.record_event(EventKind.CAPABILITY_DENIED, plugin_id="scanner", actor=ACTOR, details={"n": n})
        assert event.id == 0
    registry.record_event(EventKind.FAILED, plugin_id="never-registered", actor=ACTOR)
    registry.set_status("scanner", S.ACTIVE, expected=S.INITIALIZING, actor=ACTOR)
    other = registry.register(info("other"), Capabilities.of("scan"), actor=ACTOR)  # buffered too
    assert (other.id, other.status) == ("other", S.DISCOVERED)
    registry.set_status("other", S.LOADING, expected=S.DISCOVERED, actor=ACTOR)
    wait_for(lambda: not registry.is_available)  # the writer found the database gone
    assert registry.pending_writes == 8
    with pytest.raises(RegistryUnavailableError, match=rf"port {proxy.port}"):
        registry.get_plugin("scanner")
    assert direct.get_plugin("scanner").status is S.LOADING  # nothing written yet

    proxy.restore()
    wait_for(lambda: registry.pending_writes == 0)

    assert (registry.is_available, registry.flushed_writes - written_before, registry.dropped_writes) == (True, 8, 0)
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
    registry.register(info(), Capabilities.of("scan"), actor=ACTOR)  # joins the fleet: nothing else queued
    proxy.cut()
    with caplog.at_level(logging.ERROR, logger="plugin_pool.registry"):
        for n in range(5):
            registry.record_event(EventKind.WORKER_RESTARTED, plugin_id=None, actor=ACTOR, details={"n": n})
    assert (registry.pending_writes, registry.dropped_writes) == (2, 3)
    assert "outage buffer is full" in caplog.text

    proxy.restore()
    wait_for(lambda: registry.pending_writes == 0)
    assert [e.details["n"] for e in direct.list_events(event=EventKind.WORKER_RESTARTED)] == [0, 1]


def test_a_hosts_moves_during_an_outage_never_conflict_with_another_hosts(
    open_registry: Callable[..., PostgresPluginRegistry], proxy: Proxy, server: str
) -> None:
    registry = open_registry(proxy.dsn(server), timeout_s=1.0, retry_max_s=0.2, host_id="cut-off")
    other = open_registry(host_id="connected")
    registry.register(info(), Capabilities.of("scan"), actor=ACTOR)
    proxy.cut()
    for target in (S.LOADING, S.INITIALIZING, S.ACTIVE):
        registry.set_status("scanner", target, expected=None, actor=ACTOR)
    other.set_status("scanner", S.FAILED, expected=S.DISCOVERED, actor="other", reason="boom")
    assert other.get_plugin("scanner").status is S.FAILED

    proxy.restore()
    assert registry.flush(timeout_s=20)

    assert registry.conflicted_writes == 0
    record = other.get_plugin("scanner")
    assert (record.status, record.fleet.failed_on) == (S.ACTIVE, (("connected", "boom"),))
    assert [(i.host_id, i.state) for i in other.list_instances(plugin_id="scanner")] == [
        ("connected", S.FAILED),
        ("cut-off", S.ACTIVE),
    ]


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
    with pytest.raises(RegistryError, match="configuration of plugin 'scanner' is invalid at handler"):
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
    assert f"applied {len(LATEST)} migration(s): {', '.join(LATEST)}" in out.getvalue()
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
    with host, PostgresPluginRegistry(server, schema=schema) as reader:
        host.add_plugin(_Echo())
        host.start_plugins()
        assert host.invoke("pg-echo", "scan", 3) == 3
        assert host.registry.flush(timeout_s=10)
        assert reader.get_plugin("pg-echo").status is PluginState.ACTIVE
        assert reader.is_active("pg-echo")
    with PostgresPluginRegistry(server, schema=schema) as reader:
        record = reader.get_plugin("pg-echo")  # the host left the fleet: it runs nowhere
        assert (record.status, record.fleet.live) == (PluginState.DISCOVERED, 0)
        assert [h.liveness.value for h in reader.list_hosts()] == ["gone"]
        assert {e.host for e in reader.list_events(plugin_id="pg-echo")} == {host.registry.host_id}
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


# -- exactly once, silent links, nothing on the call path -------------------------------------------------


def test_a_write_whose_reply_is_lost_after_commit_is_stored_once(
    open_registry: Callable[..., PostgresPluginRegistry], proxy: Proxy, server: str
) -> None:
    registry = open_registry(proxy.dsn(server), timeout_s=2.0, retry_max_s=0.2)
    direct = open_registry()
    registry.register(info(), Capabilities.of("scan"), actor=ACTOR)
    assert registry.flush(timeout_s=10)

    marker = f"marker-{uuid.uuid4().hex}"
    proxy.lose_reply_after(marker.encode())
    event = registry.record_event(EventKind.CAPABILITY_DENIED, plugin_id="scanner", actor=ACTOR, details={"m": marker})
    assert registry.flush(timeout_s=20)  # the writer saw the connection drop and wrote it again
    assert proxy.lost_replies == 1
    proxy.lose_reply_after(f"{marker}-move".encode())
    registry.set_status("scanner", S.LOADING, expected=S.DISCOVERED, actor=ACTOR, details={"m": f"{marker}-move"})
    assert registry.flush(timeout_s=20)
    assert proxy.lost_replies == 2

    denials = [e for e in direct.list_events(plugin_id="scanner") if e.details.get("m") == marker]
    assert [e.uid for e in denials] == [event.uid]  # stored once, under the uid the host gave it
    moves = [e for e in direct.list_events(plugin_id="scanner") if e.event is EventKind.LOADING]
    assert len(moves) == 1
    assert [(i.state, i.host_id) for i in direct.list_instances(plugin_id="scanner")] == [(S.LOADING, registry.host_id)]
    assert (registry.dropped_writes, registry.conflicted_writes) == (0, 0)


def test_a_silent_outage_is_noticed_logged_once_and_a_disable_made_after_it_arrives(
    open_registry: Callable[..., PostgresPluginRegistry],
    proxy: Proxy,
    server: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # heartbeat_s is the round trip that finds a silent link; the black hole never resets anything.
    host = open_registry(proxy.dsn(server), timeout_s=1.0, retry_max_s=0.2, heartbeat_s=0.2, resync_s=60)
    operator = open_registry()
    host.register(info(), Capabilities.of("scan"), actor=ACTOR)
    told: list[RegistryChange] = []
    host.subscribe(lambda change: told.append(change) if change.kind == "enabled" else None)

    caplog.set_level(logging.INFO, logger="plugin_pool.registry")
    proxy.blackhole()
    wait_for(lambda: host.get_stats().link_losses == 1, timeout_s=20)
    time.sleep(1.0)  # further failed attempts while it is still down are not logged again
    proxy.restore()  # new connections work; the black-holed ones stay silent forever
    operator.set_enabled("scanner", False, actor=OPERATOR, reason="after the outage")

    wait_for(lambda: bool(told), timeout_s=30)  # the target: within 30 s of the database's return
    assert [(c.enabled, c.actor, c.reason) for c in told] == [(False, OPERATOR, "after the outage")]
    assert host.get_stats().link_losses == 1
    lost = [r for r in caplog.records if "registry link to" in r.getMessage() and "lost" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING
    assert "\n" not in lost[0].getMessage()


def test_audit_writes_on_the_call_path_never_wait_for_a_silent_database(
    open_registry: Callable[..., PostgresPluginRegistry], proxy: Proxy, server: str
) -> None:
    # A registry that would wait 300 s for each query: a call that waited for it would exceed the test timeout.
    registry = open_registry(proxy.dsn(server), timeout_s=300.0, tcp_user_timeout_s=300.0, heartbeat_s=60)
    with PluginHost(registry=registry) as host:
        host.add_plugin(_Echo())
        host.start_plugins()
        assert registry.flush(timeout_s=10)
        proxy.blackhole()
        done = threading.Event()

        def calls() -> None:
            for n in range(200):
                with pytest.raises(CapabilityDeniedError):
                    host.invoke("pg-echo", f"undeclared-{n}", None)
                assert host.invoke("pg-echo", "scan", n) == n
            done.set()

        caller = threading.Thread(target=calls, daemon=True)
        caller.start()
        caller.join(60)
        assert done.is_set(), "calls waited for the database"
        assert registry.pending_writes >= 200  # every denial audit waits in the buffer, none was lost
        assert registry.dropped_writes == 0
        proxy.cut()  # the black-holed connections break at once: the writer reconnects
        proxy.restore()
        assert registry.flush(timeout_s=60)
    assert registry.flush(timeout_s=60)  # the host's stop moves too
    registry.close()  # before the proxy goes: this registry would wait its 300 s for an unreachable database
    with PostgresPluginRegistry(server, schema=registry.schema) as reader:
        assert len(reader.list_events(event=EventKind.CAPABILITY_DENIED)) == 200


def test_a_refused_write_in_a_batch_refuses_only_itself(
    open_registry: Callable[..., PostgresPluginRegistry], proxy: Proxy, server: str, schema: str
) -> None:
    registry = open_registry(proxy.dsn(server), timeout_s=1.0, retry_max_s=0.2)
    direct = open_registry()
    registry.register(info("kept"), Capabilities.of("scan"), actor=ACTOR)
    registry.register(info("doomed"), Capabilities.of("scan"), actor=ACTOR)
    assert registry.flush(timeout_s=10)
    proxy.cut()
    for n in range(5):  # queued together: written as one batch when the database is back
        registry.record_event(EventKind.CAPABILITY_DENIED, plugin_id="kept", actor=ACTOR, details={"n": n})
        if n == 2:
            registry.set_status("doomed", S.LOADING, expected=S.DISCOVERED, actor=ACTOR)
    with psycopg.connect(server, autocommit=True) as conn:  # meanwhile the plugin goes: its move will be refused
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = 'doomed'").format(sql.Identifier(schema, "plugin_catalog")))

    proxy.restore()
    assert registry.flush(timeout_s=20)
    assert registry.conflicted_writes == 1
    denials = direct.list_events(plugin_id="kept", event=EventKind.CAPABILITY_DENIED)
    assert [e.details["n"] for e in denials] == [0, 1, 2, 3, 4]
    assert direct.list_instances(plugin_id="doomed") == []
