"""The fleet contract: several hosts on one registry, on every backend. Each host moves only its own instance of
a plugin; the plugin's status is the aggregate over live hosts; a host that closes stops counting; operators'
switches are acknowledged by every live host."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from plugin_pool import Capabilities, PluginInfo, PluginState, RegistryConflictError, TrustLevel
from plugin_pool.registry import (
    EventKind,
    FleetStatus,
    HostLiveness,
    PluginRegistry,
    RegistryChange,
)
from plugin_pool.registry.fleet import AGGREGATE_ORDER, aggregate_state

S = PluginState
ACTOR = "fleet-tests"
TO_ACTIVE = (S.LOADING, S.INITIALIZING, S.ACTIVE)
OtherHost = Callable[[str], PluginRegistry]


def register(registry: PluginRegistry, plugin_id: str = "scanner") -> None:
    info = PluginInfo(id=plugin_id, name=plugin_id.title(), version="1.0.0", trust_level=TrustLevel.TRUSTED)
    registry.register(info, Capabilities.of("scan"), actor=ACTOR)


def move(
    registry: PluginRegistry, *targets: PluginState, plugin_id: str = "scanner", reason: str | None = None
) -> None:
    here = registry.list_instances(plugin_id=plugin_id, host_id=registry.host_id)
    state = here[0].state if here else S.DISCOVERED
    for target in targets:
        state = registry.set_status(plugin_id, target, expected=state, actor=ACTOR, reason=reason).state
    assert registry.flush(timeout_s=10)  # so that other hosts' reads see it (each host reads its own writes)


def test_each_host_moves_its_own_instance_and_never_conflicts_with_another(
    registry: PluginRegistry, other_host: OtherHost
) -> None:
    second = other_host("host-b")
    register(registry)
    register(second)
    move(registry, *TO_ACTIVE)
    move(second, *TO_ACTIVE)  # the same moves from Discovered: no conflict, it is host-b's own instance
    with pytest.raises(RegistryConflictError):  # a stale view of one's own instance still conflicts
        second.set_status("scanner", S.STOPPING, expected=S.LOADING, actor=ACTOR)

    instances = registry.list_instances(plugin_id="scanner")
    assert [(i.host_id, i.state, i.version, i.host_liveness) for i in instances] == [
        ("host-a", S.ACTIVE, "1.0.0", HostLiveness.LIVE),
        ("host-b", S.ACTIVE, "1.0.0", HostLiveness.LIVE),
    ]
    assert all(i.started_at is not None for i in instances)
    record = second.get_plugin("scanner")
    assert (record.status, record.fleet.active, record.fleet.live) == (S.ACTIVE, 2, 2)
    assert second.list_status() == [record.to_status()]  # the lean listing says the same
    assert record.fleet.summary() == "active on 2 of 2 live hosts"
    moves = [(e.host, e.event) for e in registry.list_events(plugin_id="scanner", event=EventKind.ACTIVATED)]
    assert sorted(moves) == [("host-a", EventKind.ACTIVATED), ("host-b", EventKind.ACTIVATED)]


def test_the_status_is_the_truth_of_the_live_hosts_in_every_direction(
    registry: PluginRegistry, other_host: OtherHost
) -> None:
    second = other_host("host-b")
    register(registry)
    register(second)
    move(registry, *TO_ACTIVE)
    move(second, *TO_ACTIVE)

    # One host stops: the plugin is still active (on the other).
    move(registry, S.STOPPING, S.STOPPED, reason="stop requested")
    record = registry.get_plugin("scanner")
    assert (record.status, record.fleet.summary()) == (S.ACTIVE, "active on 1 of 2 live hosts (1 stopped)")

    # The other fails: nothing is active; the status says so, with the failure's reason and host.
    move(second, S.FAILED, reason="boom")
    record = registry.get_plugin("scanner")
    assert (record.status, record.status_reason) == (S.FAILED, "boom")
    assert record.fleet.failed_on == (("host-b", "boom"),)
    assert record.fleet.summary() == "active on 0 of 2 live hosts (1 stopped); failed on host-b: boom"
    assert not registry.is_active("scanner")
    assert registry.list_plugins(status=S.FAILED)[0].id == "scanner"

    # The failed host recovers: active again, the failure is gone from the status.
    move(second, *TO_ACTIVE)
    record = registry.get_plugin("scanner")
    assert (record.status, record.status_reason, record.fleet.failed_on) == (S.ACTIVE, None, ())
    assert registry.is_active("scanner") and not registry.is_active_here("scanner")
    assert second.is_active_here("scanner")

    # The host that runs it leaves the fleet: its instance no longer counts.
    second.close()
    record = registry.get_plugin("scanner")
    assert (record.status, record.fleet.live) == (S.STOPPED, 1)
    assert not registry.is_active("scanner")
    assert {h.id: h.liveness for h in registry.list_hosts()}["host-b"] is HostLiveness.GONE


def test_a_host_closed_and_opened_again_under_its_id_starts_afresh(
    registry: PluginRegistry, other_host: OtherHost
) -> None:
    first_run = other_host("host-b")
    register(first_run)
    move(first_run, *TO_ACTIVE)
    first_run.close()

    second_run = other_host("host-b")
    assert second_run.list_instances(host_id="host-b") == []  # the first run's instances ended with it
    register(second_run)
    move(second_run, *TO_ACTIVE)
    assert registry.get_plugin("scanner").fleet.active == 1


def test_a_second_open_host_with_the_same_id_is_refused(registry: PluginRegistry, other_host: OtherHost) -> None:
    other_host("host-b")
    with pytest.raises(Exception, match="host id 'host-b' is"):
        other_host("host-b")


def test_other_hosts_are_told_of_a_hosts_moves(registry: PluginRegistry, other_host: OtherHost) -> None:
    second = other_host("host-b")
    register(registry)
    seen: list[RegistryChange] = []
    arrived = threading.Event()

    def on_change(change: RegistryChange) -> None:
        if change.kind == "status":
            seen.append(change)
            arrived.set()

    unsubscribe = registry.subscribe(on_change)
    move(registry, S.LOADING)  # its own move: not echoed
    move(second, S.LOADING)
    assert arrived.wait(10)
    time.sleep(0.3)  # an echo of host-a's own move would have arrived by now
    unsubscribe()
    assert [(c.plugin_id, c.status, c.host) for c in seen] == [("scanner", S.LOADING, "host-b")]


def test_every_live_host_acknowledges_a_switch_and_one_that_does_not_is_named(
    registry: PluginRegistry, other_host: OtherHost
) -> None:
    applier, idle, slow = other_host("host-b"), other_host("host-c"), other_host("host-d")
    for host in (registry, applier, slow):
        register(host)
    # host-b applies what it is told and acknowledges; host-c never registered the plugin (its registry
    # acknowledges for it); host-d is told but never acknowledges; host-a has no subscriber (acknowledged).
    applier.subscribe(lambda change: applier.acknowledge(change) if change.kind == "enabled" else None)
    told_d: list[RegistryChange] = []
    slow.subscribe(lambda change: told_d.append(change) if change.kind == "enabled" else None)
    del idle

    record = registry.set_enabled("scanner", False, actor="ops/alice", reason="CVE-1")
    assert (record.enabled, record.enabled_seq, record.enabled_by, record.enabled_reason) == (
        False,
        1,
        "ops/alice",
        "CVE-1",
    )
    state = registry.wait_for_acknowledgements("scanner", timeout_s=1.5)
    assert (state.seq, state.enabled, state.complete) == (1, False, False)
    assert state.acknowledged == ("host-a", "host-b", "host-c")
    assert state.pending == ("host-d",)
    assert [(c.enabled, c.seq, c.actor, c.reason) for c in told_d] == [(False, 1, "ops/alice", "CVE-1")]

    slow.acknowledge(told_d[0])
    assert slow.flush(timeout_s=10)
    state = registry.wait_for_acknowledgements("scanner", timeout_s=10)
    assert state.complete and state.pending == ()
    assert registry.get_acknowledgements("scanner") == state

    slow.close()  # a host that leaves no longer has to acknowledge the next switch
    registry.set_enabled("scanner", True, actor="ops/alice")
    state = registry.wait_for_acknowledgements("scanner", timeout_s=10)
    assert (state.seq, state.enabled, state.complete) == (2, True, True)
    assert state.acknowledged == ("host-a", "host-b", "host-c")


def test_aggregate_order_is_the_rule_of_the_status() -> None:
    assert AGGREGATE_ORDER[0] is S.ACTIVE and AGGREGATE_ORDER[-1] is S.DISCOVERED
    assert set(AGGREGATE_ORDER) == set(S)
    assert aggregate_state({}) is S.DISCOVERED
    for n, state in enumerate(AGGREGATE_ORDER):
        counts = dict.fromkeys(AGGREGATE_ORDER[n:], 1)
        assert aggregate_state(counts) is state
    assert FleetStatus().summary() == "on no live host"
