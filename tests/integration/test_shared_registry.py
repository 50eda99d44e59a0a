"""Hosts sharing one PostgreSQL registry: an operator's disable/enable reaches every host (LISTEN/NOTIFY, no
polling), a host cut off from the database learns of it when it reconnects, and a host whose database is
down at start runs on its own view and writes everything once the database is reachable.

Each test works in its own schema; outages use the TCP proxy of conftest.py (cut, then restored on the port).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _pg import Proxy, wait_for

from plugin_pool import (
    Capabilities,
    PluginBase,
    PluginDisabledError,
    PluginHost,
    PluginInfo,
    PluginNotActiveError,
    PluginState,
    TrustLevel,
    capability,
    load_config,
)
from plugin_pool.cli import main
from plugin_pool.registry import EventKind
from plugin_pool.registry.postgres import PostgresPluginRegistry, RegistryUnavailableError

pytestmark = pytest.mark.postgres

S = PluginState
OPERATOR = "ops/alice"


class Scanner(PluginBase):
    info = PluginInfo(id="scanner", name="Scanner", version="1.0.0", trust_level=TrustLevel.TRUSTED)

    @capability
    def scan(self, payload: Any) -> Any:
        return {"seen": payload}


@pytest.fixture
def hosts(open_registry: Callable[..., PostgresPluginRegistry]) -> Iterator[Callable[..., PluginHost]]:
    """``hosts(dsn=...)``: an open host on its own registry instance of the test schema, Scanner Active."""
    made: list[PluginHost] = []

    def make(**options: Any) -> PluginHost:
        host = PluginHost(registry=open_registry(**options)).open()
        made.append(host)
        host.add_plugin(Scanner())
        assert host.start_plugin("scanner") is S.ACTIVE
        return host

    yield make
    for host in reversed(made):
        host.close()


def test_an_operators_disable_stops_the_plugin_on_every_host_and_enable_starts_it_again(
    hosts: Callable[..., PluginHost], open_registry: Callable[..., PostgresPluginRegistry]
) -> None:
    first, second = hosts(), hosts()
    operator = open_registry()

    operator.set_enabled("scanner", False, actor=OPERATOR, reason="CVE-2026-1234")

    for host in (first, second):
        wait_for(lambda h=host: h.get_plugin_health("scanner").state is S.STOPPED)  # type: ignore[misc]
        health = host.get_plugin_health("scanner")
        assert health.reason == f"disabled by {OPERATOR}: CVE-2026-1234"
        with pytest.raises(PluginNotActiveError, match="disabled by ops/alice: CVE-2026-1234"):
            host.invoke("scanner", "scan", 1)
        with pytest.raises(PluginDisabledError, match="plugin-pool registry enable scanner"):
            host.start_plugin("scanner")
        assert host.start_plugins().active == ()  # skipped, not started

    operator.set_enabled("scanner", True, actor=OPERATOR)

    for host in (first, second):
        wait_for(lambda h=host: h.is_active("scanner"))  # type: ignore[misc]
        assert host.invoke("scanner", "scan", 2) == {"seen": 2}
    assert operator.wait_for_acknowledgements("scanner", timeout_s=10).complete  # written after the moves
    stops = [e for e in operator.list_events(plugin_id="scanner") if e.event is EventKind.STOPPING]
    assert {e.actor for e in stops} == {OPERATOR}  # each host audits the stop as the operator's
    assert sorted(e.host for e in stops) == sorted([first.registry.host_id, second.registry.host_id])
    assert {e.details["reason"] for e in stops} == {f"disabled by {OPERATOR}: CVE-2026-1234"}
    kinds = [e.event for e in operator.list_events(plugin_id="scanner")]
    assert kinds.count(EventKind.DISABLED) == kinds.count(EventKind.ENABLED) == 1


def test_a_host_that_starts_after_the_disable_does_not_start_the_plugin(
    open_registry: Callable[..., PostgresPluginRegistry],
) -> None:
    operator = open_registry()
    operator.register(Scanner.info, Capabilities.of("scan"), actor=OPERATOR)
    operator.set_enabled("scanner", False, actor=OPERATOR, reason="not yet")

    with PluginHost(registry=open_registry()) as host:
        host.add_plugin(Scanner())
        health = host.start_plugins()
        assert health.active == ()
        assert host.get_plugin_health("scanner").reason == "disabled in the registry by an operator"

        operator.set_enabled("scanner", True, actor=OPERATOR)
        wait_for(lambda: host.get_plugin_health("scanner").reason is None)
        assert host.start_plugin("scanner") is S.ACTIVE  # enabled: it may start (it was never stopped by us)


def test_a_host_cut_off_from_the_database_learns_of_a_disable_when_it_reconnects(
    hosts: Callable[..., PluginHost],
    open_registry: Callable[..., PostgresPluginRegistry],
    proxy: Proxy,
    server: str,
) -> None:
    host = hosts(dsn=proxy.dsn(server), timeout_s=1.0, retry_max_s=0.2)
    operator = open_registry()

    proxy.cut()
    operator.set_enabled("scanner", False, actor=OPERATOR, reason="while you were away")
    assert host.invoke("scanner", "scan", 1) == {"seen": 1}  # not told yet; calls go on
    proxy.restore()

    wait_for(lambda: host.get_plugin_health("scanner").state is S.STOPPED)
    # Learnt late, after the reconnect, but with who and why all the same.
    assert host.get_plugin_health("scanner").reason == f"disabled by {OPERATOR}: while you were away"
    assert operator.wait_for_acknowledgements("scanner", timeout_s=10).complete
    stop = operator.list_events(plugin_id="scanner", event=EventKind.STOPPING)[-1]
    assert (stop.actor, stop.host, stop.details["reason"]) == (
        OPERATOR,
        host.registry.host_id,
        f"disabled by {OPERATOR}: while you were away",
    )


def test_a_host_whose_database_is_down_at_start_runs_offline_and_syncs_later(
    open_registry: Callable[..., PostgresPluginRegistry],
    proxy: Proxy,
    server: str,
    schema: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {
        "PLUGIN_POOL_REGISTRY_BACKEND": "postgres",
        "PLUGIN_POOL_REGISTRY_DSN": proxy.dsn(server),
        "PLUGIN_POOL_REGISTRY_SCHEMA": schema,
        "PLUGIN_POOL_REGISTRY_TIMEOUT_S": "1",
        "PLUGIN_POOL_REGISTRY_RETRY_MAX_S": "0.2",
    }
    direct = open_registry()  # migrates the schema and reads it directly
    proxy.cut()
    with pytest.raises(RegistryUnavailableError, match=rf"port {proxy.port}"):
        PluginHost(load_config(env=env))  # offline_start is off by default: a clear error

    config = load_config(env={**env, "PLUGIN_POOL_REGISTRY_OFFLINE_START": "true"})

    caplog.set_level(logging.WARNING, logger="plugin_pool.registry")
    with PluginHost(config) as host:
        registry = host.registry
        assert isinstance(registry, PostgresPluginRegistry)
        assert "starting offline" in caplog.text
        host.add_plugin(Scanner())
        assert host.start_plugin("scanner") is S.ACTIVE
        assert host.invoke("scanner", "scan", 7) == {"seen": 7}
        assert (registry.is_available, registry.pending_writes) == (False, 5)  # joining, registering, 3 moves
        assert direct.list_plugins() == []

        proxy.restore()
        assert registry.flush(timeout_s=20)
        assert (registry.dropped_writes, registry.conflicted_writes) == (0, 0)
        assert direct.get_plugin("scanner").status is S.ACTIVE
        assert [e.event.value for e in direct.list_events(plugin_id="scanner")] == [
            "registered",
            "loading",
            "initializing",
            "activated",
        ]
        operator_disable = direct.set_enabled("scanner", False, actor=OPERATOR)  # and it listens now
        assert operator_disable.enabled is False
        wait_for(lambda: host.get_plugin_health("scanner").state is S.STOPPED)


def test_the_cli_disables_and_enables_a_plugin_and_status_shows_it(
    hosts: Callable[..., PluginHost], server: str, schema: str, tmp_path: Path
) -> None:
    host = hosts()
    base = ["--log-format", "none", "registry"]
    where = ["--dsn", server, "--schema", schema]

    out = io.StringIO()
    code = main([*base, "disable", "scanner", *where, "--reason", "noisy", "--actor", OPERATOR], out=out)
    assert code == 0
    assert out.getvalue() == (
        f"plugin scanner disabled by {OPERATOR}: every host sharing the registry stops it and will not start it\n"
    )
    wait_for(lambda: host.get_plugin_health("scanner").state is S.STOPPED)
    out = io.StringIO()
    assert main([*base, "disable", "scanner", *where], out=out) == 0
    assert out.getvalue() == "plugin scanner was already disabled; nothing changed\n"
    config_file = tmp_path / "plugin_pool.toml"
    config_file.write_text(f'[registry]\nbackend = "postgres"\ndsn = "{server}"\nschema = "{schema}"\n')
    out = io.StringIO()
    main(["--log-format", "none", "status", str(config_file)], out=out)
    line = next(line for line in out.getvalue().splitlines() if line.startswith("scanner"))
    assert line.split()[:4] == ["scanner", "trusted", "stopped", "NO"]

    assert main([*base, "enable", "scanner", *where], out=io.StringIO()) == 0
    wait_for(lambda: host.is_active("scanner"))

    err = io.StringIO()
    assert main([*base, "disable", "ghost", *where], out=io.StringIO(), err=err) != 0
    assert "ghost" in err.getvalue()


def test_the_cli_refuses_to_disable_without_a_shared_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLUGIN_POOL_REGISTRY_DSN", raising=False)
    err = io.StringIO()
    assert main(["--log-format", "none", "registry", "disable", "scanner"], out=io.StringIO(), err=err) != 0
    assert "registry disable needs the shared PostgreSQL registry: pass --dsn" in err.getvalue()


def test_the_cli_refuses_a_reason_that_is_not_utf8(hosts: Callable[..., PluginHost], server: str, schema: str) -> None:
    hosts()
    # What Python makes of `--reason $'\xff'` (surrogateescape): not text PostgreSQL can store.
    err = io.StringIO()
    code = main(
        [
            "--log-format",
            "none",
            "registry",
            "disable",
            "scanner",
            "--dsn",
            server,
            "--schema",
            schema,
            "--reason",
            "\udcff",
        ],
        out=io.StringIO(),
        err=err,
    )
    assert code == 1
    assert err.getvalue().count("\n") == 1
    assert "reason '\\udcff' is invalid: it is not valid UTF-8 text" in err.getvalue()
    with PostgresPluginRegistry(server, schema=schema) as reader:
        assert reader.get_plugin("scanner").enabled is True


def test_status_lists_every_plugin_and_pages_with_limit_and_after(
    open_registry: Callable[..., PostgresPluginRegistry], server: str, schema: str
) -> None:
    host = open_registry(host_id="pager", join=True)
    ids = [f"p{n:03d}" for n in range(23)]
    for plugin_id in ids:
        host.register(
            PluginInfo(id=plugin_id, name=plugin_id, version="1", trust_level="trusted"), Capabilities(), actor="t"
        )
        host.set_status(plugin_id, S.LOADING, expected=None, actor="t")
    assert host.flush(timeout_s=10)
    where = ["--log-format", "none", "status", "--dsn", server, "--schema", schema]

    out = io.StringIO()
    assert main([*where, "--json"], out=out) == 0
    document = json.loads(out.getvalue())
    assert [p["plugin_id"] for p in document["plugins"]] == ids
    assert {p["state"] for p in document["plugins"]} == {"loading"}
    assert document["next_after"] is None

    out = io.StringIO()
    assert main([*where, "--limit", "7", "--after", "p010"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines[2:-1]] == ids[11:18]
    assert lines[-1] == "(more: --after p017)"

    out = io.StringIO()
    assert main([*where, "--hosts", "--json", "--limit", "3"], out=out) == 0
    document = json.loads(out.getvalue())
    assert [(i["plugin_id"], i["host_id"]) for i in document["instances"]] == [(p, "pager") for p in ids[:3]]
    assert document["next_after"] == "p002"
