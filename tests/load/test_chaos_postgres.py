"""A PostgreSQL-backed host under load while its database is stopped and started again.

The test starts its own throwaway cluster (conftest ``postgres_cluster``: initdb + pg_ctl, as the ``postgres``
user when run as root), because it stops that server for real. While callers hammer every trust level and a
ChaosMonkey kills workers, the server goes down; during the outage the host writes audit events (capability
denials, worker restarts) and status changes (a Trusted plugin stopped and started). Calls to active plugins
must keep working; once the server is back every buffered write must reach it (nothing dropped), and nothing
may be left behind when the host closes.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _load_helpers import CALL_TIMEOUT_S, PostgresCluster, load_config_for_tests

from plugin_pool import PluginHost, PluginState
from plugin_pool.errors import CallTimeoutError, CapabilityDeniedError, WorkerCrashedError
from plugin_pool.registry.base import EventKind
from plugin_pool.registry.postgres import PostgresPluginRegistry
from plugin_pool.testing.load import (
    ChaosMonkey,
    LoadDriver,
    ResourceSnapshot,
    echo_call,
    make_echo_plugin,
    wait_for_no_leaks,
    write_load_plugin,
)

pytestmark = [pytest.mark.load, pytest.mark.sandbox, pytest.mark.postgres, pytest.mark.slow]

HostFactory = Callable[..., PluginHost]
SANDBOX_ERRORS = (WorkerCrashedError, CallTimeoutError)
REGISTRY_TIMEOUT_S = 1.0
DENIALS = 3
DRAIN_TIMEOUT_S = 20.0


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Poll ``condition`` until true; fail the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.02)


def test_postgres_stop_and_restart_under_load_loses_no_call_and_no_write(
    open_host: HostFactory, postgres_cluster: PostgresCluster, tmp_path: Path, load_scale: float
) -> None:
    config = load_config_for_tests(
        registry={
            "backend": "postgres",
            "dsn": postgres_cluster.dsn,
            "schema": f"load_{uuid.uuid4().hex[:12]}",
            "migrate_on_start": True,
            "timeout_s": REGISTRY_TIMEOUT_S,
            "retry_max_s": 0.2,
        }
    )
    before = ResourceSnapshot.take()
    host = open_host(config)
    registry = host.registry
    assert isinstance(registry, PostgresPluginRegistry)
    host.add_plugin(make_echo_plugin("pg-builtin", "builtin"))
    host.add_plugin(make_echo_plugin("pg-trusted", "trusted"))
    host.add_plugin(make_echo_plugin("pg-toggle", "trusted"))  # stopped and started during the outage
    host.add_plugin_dir(write_load_plugin(tmp_path, "pg-untrusted", min_workers=2))
    assert host.start_plugins().failed == {}

    kinds = [
        echo_call(host, "pg-builtin", group="builtin", weight=30),
        echo_call(host, "pg-trusted", group="trusted", weight=30),
        echo_call(host, "pg-untrusted", group="untrusted", weight=20, errors=SANDBOX_ERRORS, deadline_s=CALL_TIMEOUT_S),
        echo_call(
            host,
            "pg-untrusted",
            group="untrusted",
            batch=32,
            weight=3,
            errors=SANDBOX_ERRORS,
            deadline_s=CALL_TIMEOUT_S,
        ),
    ]
    phase_s = 1.0 * load_scale
    driver = LoadDriver(kinds, threads=8, duration_s=60.0 + 10 * phase_s, seed=9)  # ended by stop() below
    monkey = ChaosMonkey(host, plugin_ids=["pg-untrusted"], interval_s=0.3, seed=5)
    with driver, monkey:
        time.sleep(phase_s)  # load against a healthy database
        at_stop = driver.snapshot()
        kills_at_stop = monkey.total_kills
        outage_started = datetime.now(UTC)
        postgres_cluster.stop()

        # Writes during the outage: none waits for the database (each is queued for the registry's writer,
        # which finds the database gone within its timeout and keeps them until it is back).
        for n in range(DENIALS):
            with pytest.raises(CapabilityDeniedError):
                host.invoke("pg-builtin", f"undeclared-{n}", None)
        assert host.stop_plugin("pg-toggle") is PluginState.STOPPED
        assert host.start_plugin("pg-toggle") is PluginState.ACTIVE
        wait_for(lambda: monkey.total_kills >= kills_at_stop + 2, "two workers killed during the outage", 10)
        wait_for(lambda: not registry.is_available, "the registry's writer to find the database gone", 10)
        time.sleep(phase_s)
        during = driver.snapshot().since(at_stop)
        kills_during = monkey.total_kills - kills_at_stop
        pending_at_restart = registry.pending_writes

        postgres_cluster.start()
        wait_for(lambda: registry.pending_writes == 0, "the buffered writes to reach the database", DRAIN_TIMEOUT_S)
        time.sleep(phase_s)  # load against the database that came back
    report = driver.join(CALL_TIMEOUT_S + 10)
    print(f"\n{report.format()}")
    print(
        f"outage: {during.calls:,} calls during it ({during.ok:,} ok, {during.failed} precise errors), "
        f"{kills_during} workers killed, {pending_at_restart} writes buffered; registry afterwards: "
        f"flushed {registry.flushed_writes}, dropped {registry.dropped_writes}, conflicted {registry.conflicted_writes}"
    )

    # No call lost or hung, and calls to active plugins kept working while the database was down.
    report.check()
    assert (during.wrong, during.unexpected_count, during.overdue) == (0, 0, 0)
    assert during.count_by_group("ok") >= Counter(builtin=1, trusted=1, untrusted=1)
    # Every write made during the outage reached the database.
    assert pending_at_restart >= DENIALS + 5  # the denials and pg-toggle's five moves at least
    assert registry.flushed_writes >= pending_at_restart
    assert (registry.pending_writes, registry.dropped_writes, registry.conflicted_writes) == (0, 0, 0)
    assert registry.is_available
    assert monkey.wait_settled()
    assert host.restarts == monkey.expected_restarts()
    events = registry.list_events()
    outage = [e for e in events if e.at >= outage_started]
    denied = [e for e in outage if e.event is EventKind.CAPABILITY_DENIED]
    assert sorted(e.details["capability"] for e in denied) == [f"undeclared-{n}" for n in range(DENIALS)]
    toggled = [e.event for e in outage if e.plugin_id == "pg-toggle"]
    assert toggled == [
        EventKind.STOPPING,
        EventKind.SHUTDOWN,
        EventKind.LOADING,
        EventKind.INITIALIZING,
        EventKind.ACTIVATED,
    ]
    assert registry.get_plugin("pg-toggle").status is PluginState.ACTIVE
    restarted = Counter(
        (str(e.plugin_id), str(e.details["reason"])) for e in events if e.event is EventKind.WORKER_RESTARTED
    )
    assert restarted == host.restarts  # those of the outage included

    host.close()
    leaks = wait_for_no_leaks(before)
    print(leaks.format())
    assert leaks.leaks == []
