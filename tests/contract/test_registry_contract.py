"""The registry contract: every backend in tests/contract/conftest.py must pass exactly this suite."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from _concurrency import run_in_threads
from packaging.version import Version

from plugin_pool import (
    Capabilities,
    Capability,
    IllegalTransitionError,
    PluginInfo,
    PluginNotFoundError,
    PluginState,
    RegistryConflictError,
    RegistryError,
    TrustLevel,
)
from plugin_pool.registry import AuditEvent, EventKind, InstanceRecord, PluginRecord, PluginRegistry, RegistryChange
from plugin_pool.registry.validation import ACTOR_MAX_LEN, CONFIG_MAX_BYTES, REASON_MAX_LEN

S = PluginState
ACTOR = "contract-tests"
PATH_TO_ACTIVE = [S.LOADING, S.INITIALIZING, S.ACTIVE]


def info(
    plugin_id: str = "scanner",
    version: str = "1.0.0",
    trust_level: TrustLevel = TrustLevel.TRUSTED,
    name: str = "",
) -> PluginInfo:
    return PluginInfo(id=plugin_id, name=name or plugin_id.title(), version=version, trust_level=trust_level)


def register(registry: PluginRegistry, plugin_id: str = "scanner", **kwargs: Any) -> PluginRecord:
    version = kwargs.pop("version", "1.0.0")
    level = kwargs.pop("trust_level", TrustLevel.TRUSTED)
    caps = kwargs.pop("capabilities", Capabilities.of("scan"))
    return registry.register(info(plugin_id, version, level), caps, actor=kwargs.pop("actor", ACTOR), **kwargs)


def move(registry: PluginRegistry, plugin_id: str, *targets: PluginState) -> InstanceRecord:
    """Move this registry's host's instance of the plugin through ``targets`` (compare-and-set each step)."""
    here = registry.list_instances(plugin_id=plugin_id, host_id=registry.host_id)
    state = here[0].state if here else S.DISCOVERED
    instance = None
    for target in targets:
        instance = registry.set_status(plugin_id, target, expected=state, actor=ACTOR)
        state = instance.state
    assert instance is not None
    return instance


def test_backend_implements_the_protocol(registry: PluginRegistry) -> None:
    assert isinstance(registry, PluginRegistry)


# -- register ---------------------------------------------------------------------------------------------


def test_register_new_plugin_starts_discovered_and_audits_registered(registry: PluginRegistry) -> None:
    record = register(registry, config={"depth": 3, "paths": ["/a"]}, assembly_hash="sha256:aa")

    assert (record.id, record.name, record.trust_level) == ("scanner", "Scanner", TrustLevel.TRUSTED)
    assert (record.status, record.status_reason, record.is_active) == (S.DISCOVERED, None, False)
    assert dict(record.config) == {"depth": 3, "paths": ["/a"]}
    assert record.registered_at.tzinfo is not None
    assert record.registered_at <= record.updated_at
    assert registry.get_plugin("scanner") == record
    (event,) = registry.list_events()
    assert (event.plugin_id, event.event, event.state, event.actor) == (
        "scanner",
        EventKind.REGISTERED,
        S.DISCOVERED,
        ACTOR,
    )
    assert dict(event.details) == {"version": "1.0.0", "trust_level": "trusted"}
    assert event.at.tzinfo is not None


def test_register_same_version_and_hash_again_is_idempotent(registry: PluginRegistry) -> None:
    first = register(registry, assembly_hash="sha256:aa")
    again = register(registry, assembly_hash="sha256:aa")

    assert again.status is S.DISCOVERED
    assert again.registered_at == first.registered_at
    assert len(registry.list_versions("scanner")) == 1
    assert [e.event for e in registry.list_events()] == [EventKind.REGISTERED]


def test_register_keeps_the_status_of_a_known_plugin(registry: PluginRegistry) -> None:
    register(registry)
    move(registry, "scanner", *PATH_TO_ACTIVE)
    assert register(registry).status is S.ACTIVE
    assert register(registry, version="1.1.0").status is S.ACTIVE


def test_register_same_version_with_another_hash_is_refused_and_changes_nothing(
    registry: PluginRegistry,
) -> None:
    register(registry, assembly_hash="sha256:aa", config={"depth": 1})
    before = registry.get_plugin("scanner")

    with pytest.raises(RegistryError, match="changed code needs a new version") as caught:
        registry.register(
            info(name="Renamed", trust_level=TrustLevel.BUILTIN),
            Capabilities.of("scan", "connect"),
            actor=ACTOR,
            assembly_hash="sha256:bb",
            config={"depth": 2},
        )

    assert caught.value.plugin_id == "scanner"
    assert registry.get_plugin("scanner") == before
    (version,) = registry.list_versions("scanner")
    assert version.assembly_hash == "sha256:aa"
    assert [c.capability for c in registry.list_capabilities("scanner")] == ["scan"]


def test_register_without_hash_after_one_with_hash_is_refused(registry: PluginRegistry) -> None:
    register(registry, assembly_hash="sha256:aa")
    with pytest.raises(RegistryError):
        register(registry, assembly_hash=None)


def test_new_versions_add_rows_listed_oldest_version_first(registry: PluginRegistry) -> None:
    register(registry, version="1.0.0", assembly_hash="h1")
    register(registry, version="2.0.0", assembly_hash="h2")
    register(registry, version="1.10.0", assembly_hash="h3")

    versions = registry.list_versions("scanner")

    assert [(v.version, v.assembly_hash) for v in versions] == [
        (Version("1.0.0"), "h1"),
        (Version("1.10.0"), "h3"),
        (Version("2.0.0"), "h2"),
    ]
    assert {v.plugin_id for v in versions} == {"scanner"}
    assert len({v.id for v in versions}) == 3
    assert all(v.published_at.tzinfo is not None for v in versions)
    assert [e.event for e in registry.list_events()] == [EventKind.REGISTERED]


def test_register_updates_the_name_and_a_given_config(registry: PluginRegistry) -> None:
    register(registry, config={"depth": 1})
    registry.register(info(version="1.1.0", name="Renamed"), Capabilities(), actor=ACTOR)
    record = registry.get_plugin("scanner")
    assert (record.name, dict(record.config)) == ("Renamed", {"depth": 1})
    register(registry, version="1.2.0", config={"depth": 2})
    assert dict(registry.get_plugin("scanner").config) == {"depth": 2}


def test_capabilities_default_to_the_highest_version_and_round_trip_parameters(
    registry: PluginRegistry,
) -> None:
    register(registry, version="1.0.0", capabilities=Capabilities.of("scan"))
    parameters = {
        "types": ["jar", "war"],
        "limits": {"max_mb": 10, "ratio": 0.5},
        "strict": True,
        "note": None,
    }
    register(
        registry,
        version="2.0.0",
        capabilities=Capabilities.of(Capability("scan", parameters), Capability("evaluate_policy", method="check")),
    )
    register(registry, version="1.5.0", capabilities=Capabilities.of("connect"))
    versions = {str(v.version): v.id for v in registry.list_versions("scanner")}

    latest = registry.list_capabilities("scanner")

    assert [c.capability for c in latest] == ["evaluate_policy", "scan"]
    assert {c.plugin_version_id for c in latest} == {versions["2.0.0"]}
    assert dict(latest[1].parameters) == parameters
    assert dict(latest[0].parameters) == {}
    assert [c.capability for c in registry.list_capabilities("scanner", "1.0.0")] == ["scan"]
    assert [c.capability for c in registry.list_capabilities("scanner", Version("1.5.0"))] == ["connect"]
    assert registry.list_capabilities("scanner", "1.5")[0].plugin_version_id == versions["1.5.0"]


def test_capabilities_of_an_unknown_version_raise_not_found(registry: PluginRegistry) -> None:
    register(registry)
    with pytest.raises(PluginNotFoundError, match=r"has no version 9\.9"):
        registry.list_capabilities("scanner", "9.9")


def test_version_without_capabilities_lists_none(registry: PluginRegistry) -> None:
    register(registry, capabilities=Capabilities())
    assert registry.list_capabilities("scanner") == []


# -- status -----------------------------------------------------------------------------------------------


def test_every_transition_is_audited_with_from_reason_and_actor(registry: PluginRegistry) -> None:
    register(registry)
    path = [S.LOADING, S.INITIALIZING, S.ACTIVE, S.STOPPING, S.STOPPED, S.LOADING, S.FAILED]
    previous = S.DISCOVERED
    for n, target in enumerate(path):
        instance = registry.set_status(
            "scanner", target, expected=previous, actor=f"actor-{n}", reason=f"step {n}", details={"n": n}
        )
        assert (instance.plugin_id, instance.host_id, instance.state, instance.reason) == (
            "scanner",
            registry.host_id,
            target,
            f"step {n}",
        )
        assert instance.version == "1.0.0"
        assert registry.get_plugin("scanner").status is target  # one host: the aggregate is its instance
        assert registry.list_instances(plugin_id="scanner") == [instance]
        previous = target

    events = registry.list_events(plugin_id="scanner")[1:]
    assert [(e.event, e.state) for e in events] == [(EventKind.for_state(s), s) for s in path]
    assert [e.event for e in events] == [
        EventKind.LOADING,
        EventKind.INITIALIZING,
        EventKind.ACTIVATED,
        EventKind.STOPPING,
        EventKind.SHUTDOWN,
        EventKind.LOADING,
        EventKind.FAILED,
    ]
    assert [dict(e.details) for e in events] == [
        {"n": n, "from": source.value, "reason": f"step {n}"} for n, source in enumerate([S.DISCOVERED, *path[:-1]])
    ]
    assert [e.actor for e in events] == [f"actor-{n}" for n in range(len(path))]
    assert {e.host for e in events} == {registry.host_id}  # every event names the host that recorded it
    assert len({e.uid for e in events}) == len(events)


def test_set_status_without_reason_records_no_reason(registry: PluginRegistry) -> None:
    register(registry)
    instance = registry.set_status("scanner", S.LOADING, expected=None, actor=ACTOR)
    assert instance.reason is None
    assert dict(registry.list_events()[-1].details) == {"from": "discovered"}


def test_set_status_refuses_when_the_expected_state_differs(registry: PluginRegistry) -> None:
    register(registry)
    move(registry, "scanner", S.LOADING)
    events_before = registry.list_events()

    with pytest.raises(RegistryConflictError) as caught:
        registry.set_status("scanner", S.INITIALIZING, expected=S.DISCOVERED, actor=ACTOR)

    error = caught.value
    assert (error.plugin_id, error.expected, error.actual) == ("scanner", S.DISCOVERED, S.LOADING)
    assert "expected state discovered but the registry holds loading" in str(error)
    assert isinstance(error, RegistryError)
    assert registry.get_plugin("scanner").status is S.LOADING
    assert registry.list_events() == events_before


def test_set_status_refuses_an_illegal_transition(registry: PluginRegistry) -> None:
    register(registry)
    events_before = registry.list_events()

    with pytest.raises(IllegalTransitionError) as caught:
        registry.set_status("scanner", S.ACTIVE, expected=S.DISCOVERED, actor=ACTOR)

    assert (caught.value.source, caught.value.target, caught.value.plugin_id) == (
        S.DISCOVERED,
        S.ACTIVE,
        "scanner",
    )
    assert registry.get_plugin("scanner").status is S.DISCOVERED
    assert registry.list_events() == events_before


def test_is_active(registry: PluginRegistry) -> None:
    assert registry.is_active("ghost") is False
    assert registry.is_active_here("ghost") is False
    register(registry)
    assert (registry.is_active("scanner"), registry.is_active_here("scanner")) == (False, False)
    move(registry, "scanner", *PATH_TO_ACTIVE)
    assert (registry.is_active("scanner"), registry.is_active_here("scanner")) == (True, True)
    assert registry.get_plugin("scanner").is_active
    move(registry, "scanner", S.FAILED)
    assert (registry.is_active("scanner"), registry.is_active_here("scanner")) == (False, False)


# -- events -----------------------------------------------------------------------------------------------


def test_record_event_appends_an_audit_event(registry: PluginRegistry) -> None:
    register(registry)
    event = registry.record_event(
        EventKind.CAPABILITY_DENIED,
        plugin_id="scanner",
        actor="host-1",
        state=S.DISCOVERED,
        details={"capability": "delete", "declared": ["scan"]},
    )
    hostwide = registry.record_event(EventKind.WORKER_RESTARTED, plugin_id=None, actor="host-1")

    assert isinstance(event, AuditEvent)
    assert (event.plugin_id, event.event, event.state, event.actor, event.host) == (
        "scanner",
        EventKind.CAPABILITY_DENIED,
        S.DISCOVERED,
        "host-1",
        registry.host_id,
    )
    assert dict(event.details) == {"capability": "delete", "declared": ["scan"]}
    assert (hostwide.plugin_id, hostwide.state, dict(hostwide.details)) == (None, None, {})
    stored = registry.list_events()[-2:]
    assert [e.uid for e in stored] == [event.uid, hostwide.uid]  # the id is assigned when written (PostgreSQL)
    for returned, kept in zip([event, hostwide], stored, strict=True):
        assert (kept.plugin_id, kept.event, kept.state, kept.actor, kept.host) == (
            returned.plugin_id,
            returned.event,
            returned.state,
            returned.actor,
            returned.host,
        )
        assert dict(kept.details) == dict(returned.details)
    assert 0 < stored[0].id < stored[1].id


def test_list_events_filters(registry: PluginRegistry) -> None:
    register(registry, "a")
    register(registry, "b")
    move(registry, "a", S.LOADING, S.INITIALIZING)
    move(registry, "b", S.LOADING)
    denied = registry.record_event(EventKind.CAPABILITY_DENIED, plugin_id="a", actor=ACTOR)
    everything = registry.list_events()
    assert [(e.plugin_id, e.event) for e in everything] == [
        ("a", EventKind.REGISTERED),
        ("b", EventKind.REGISTERED),
        ("a", EventKind.LOADING),
        ("a", EventKind.INITIALIZING),
        ("b", EventKind.LOADING),
        ("a", EventKind.CAPABILITY_DENIED),
    ]
    ids = [e.id for e in everything]
    assert ids == sorted(set(ids))

    assert [e.event for e in registry.list_events(plugin_id="b")] == [EventKind.REGISTERED, EventKind.LOADING]
    assert [e.plugin_id for e in registry.list_events(event=EventKind.LOADING)] == ["a", "b"]
    assert [e.uid for e in registry.list_events(plugin_id="a", event=EventKind.CAPABILITY_DENIED)] == [denied.uid]
    assert registry.list_events(after_id=ids[3]) == everything[4:]
    assert registry.list_events(limit=2) == everything[:2]
    assert registry.list_events(after_id=ids[0], limit=2) == everything[1:3]
    assert registry.list_events(plugin_id="a", after_id=ids[2], limit=1) == [everything[3]]
    assert registry.list_events(limit=0) == []
    assert registry.list_events(after_id=ids[-1]) == []
    assert registry.list_events(plugin_id="ghost") == []


# -- plugins ----------------------------------------------------------------------------------------------


def test_list_plugins_orders_by_id_and_filters(registry: PluginRegistry) -> None:
    register(registry, "charlie", trust_level=TrustLevel.TRUSTED)
    register(registry, "alpha", trust_level=TrustLevel.BUILTIN)
    register(registry, "bravo", trust_level=TrustLevel.TRUSTED)
    move(registry, "bravo", S.LOADING)

    def ids(**filters: Any) -> list[str]:
        return [r.id for r in registry.list_plugins(**filters)]

    assert ids() == ["alpha", "bravo", "charlie"]
    assert ids(trust_level=TrustLevel.TRUSTED) == ["bravo", "charlie"]
    assert ids(trust_level=TrustLevel.UNTRUSTED) == []
    assert ids(status=S.DISCOVERED) == ["alpha", "charlie"]
    assert ids(status=S.LOADING, trust_level=TrustLevel.TRUSTED) == ["bravo"]
    assert ids(status=S.LOADING, trust_level=TrustLevel.BUILTIN) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.get_plugin("ghost"),
        lambda r: r.set_status("ghost", S.LOADING, expected=None, actor=ACTOR),
        lambda r: r.list_versions("ghost"),
        lambda r: r.list_capabilities("ghost"),
    ],
    ids=["get_plugin", "set_status", "list_versions", "list_capabilities"],
)
def test_unknown_plugin_raises_not_found(registry: PluginRegistry, call: Callable[[PluginRegistry], Any]) -> None:
    register(registry)
    with pytest.raises(PluginNotFoundError, match="'ghost'") as caught:
        call(registry)
    assert caught.value.plugin_id == "ghost"
    assert isinstance(caught.value, LookupError)


# -- input is checked before it reaches storage -------------------------------------------------------------


@pytest.mark.parametrize("bad_actor", ["", "   ", "a" * (ACTOR_MAX_LEN + 1), None, 7])
def test_bad_actor_is_rejected_before_storage(registry: PluginRegistry, bad_actor: Any) -> None:
    with pytest.raises(RegistryError, match=r"actor .* is invalid"):
        register(registry, actor=bad_actor)
    assert registry.list_plugins() == []
    assert registry.list_events() == []

    register(registry)
    with pytest.raises(RegistryError, match=r"actor .* is invalid"):
        registry.set_status("scanner", S.LOADING, expected=None, actor=bad_actor)
    with pytest.raises(RegistryError, match=r"actor .* is invalid"):
        registry.record_event(EventKind.FAILED, plugin_id="scanner", actor=bad_actor)
    assert registry.get_plugin("scanner").status is S.DISCOVERED
    assert len(registry.list_events()) == 1


def test_actor_of_maximum_length_is_accepted(registry: PluginRegistry) -> None:
    register(registry, actor="a" * ACTOR_MAX_LEN)
    assert registry.list_events()[0].actor == "a" * ACTOR_MAX_LEN


@pytest.mark.parametrize(
    "bad_config",
    [
        {"tags": {"a", "b"}},
        {"handler": object()},
        {1: "int key"},
        {"nested": {"raw": object()}},
        ["not", "a", "map"],
    ],
    ids=["set", "object", "int-key", "nested-object", "list"],
)
def test_non_json_config_is_rejected_before_storage(registry: PluginRegistry, bad_config: Any) -> None:
    with pytest.raises(RegistryError, match="configuration of plugin 'scanner'"):
        register(registry, config=bad_config)
    assert registry.list_plugins() == []
    assert registry.list_events() == []


def test_oversized_config_is_rejected(registry: PluginRegistry) -> None:
    with pytest.raises(RegistryError, match=f"the limit is {CONFIG_MAX_BYTES}"):
        register(registry, config={"blob": "x" * CONFIG_MAX_BYTES})
    assert registry.list_plugins() == []


def test_non_json_event_details_are_rejected_before_storage(registry: PluginRegistry) -> None:
    register(registry)
    with pytest.raises(RegistryError, match="event details"):
        registry.set_status("scanner", S.LOADING, expected=None, actor=ACTOR, details={"when": object()})
    with pytest.raises(RegistryError, match="event details"):
        registry.record_event(EventKind.FAILED, plugin_id="scanner", actor=ACTOR, details={"s": {1}})
    assert registry.get_plugin("scanner").status is S.DISCOVERED
    assert len(registry.list_events()) == 1


def test_overlong_reason_is_truncated_and_a_non_string_reason_rejected(registry: PluginRegistry) -> None:
    register(registry)
    instance = registry.set_status("scanner", S.FAILED, expected=None, actor=ACTOR, reason="r" * (REASON_MAX_LEN * 3))
    assert instance.reason == "r" * (REASON_MAX_LEN - 1) + "…"
    assert registry.get_plugin("scanner").status_reason == instance.reason  # Failed: the failure's reason
    assert registry.list_events()[-1].details["reason"] == instance.reason

    with pytest.raises(RegistryError, match=r"reason .* is invalid"):
        registry.set_status("scanner", S.LOADING, expected=None, actor=ACTOR, reason=42)  # type: ignore[arg-type]
    assert registry.get_plugin("scanner").status is S.FAILED


def test_stored_config_is_a_copy(registry: PluginRegistry) -> None:
    config: dict[str, Any] = {"paths": ["/a"]}
    register(registry, config=config)
    config["paths"].append("/b")
    assert dict(registry.get_plugin("scanner").config) == {"paths": ["/a"]}


# -- concurrency and close ----------------------------------------------------------------------------------


def test_concurrent_registration_of_one_version_makes_one_row(registry: PluginRegistry) -> None:
    results, errors = run_in_threads(8, lambda i: register(registry, assembly_hash="sha256:aa"))
    assert errors == []
    assert len(results) == 8
    assert len(registry.list_versions("scanner")) == 1
    assert [e.event for e in registry.list_events()] == [EventKind.REGISTERED]
    assert [c.capability for c in registry.list_capabilities("scanner")] == ["scan"]


def test_concurrent_compare_and_set_lets_exactly_one_win(registry: PluginRegistry) -> None:
    register(registry)
    results, errors = run_in_threads(
        8, lambda i: registry.set_status("scanner", S.LOADING, expected=S.DISCOVERED, actor=f"racer-{i}")
    )
    assert len(results) == 1
    assert len(errors) == 7
    assert all(isinstance(e, RegistryConflictError) and e.actual is S.LOADING for e in errors)
    assert len(registry.list_events(event=EventKind.LOADING)) == 1


def test_list_plugins_pages_by_id(registry: PluginRegistry) -> None:
    for n in range(7):
        register(registry, f"p{n}")
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = [r.id for r in registry.list_plugins(after=after, limit=3)]
        if not page:
            break
        pages.append(page)
        after = page[-1]
    assert pages == [["p0", "p1", "p2"], ["p3", "p4", "p5"], ["p6"]]
    assert registry.list_plugins(limit=0) == []
    with pytest.raises(RegistryError, match="limit"):
        registry.list_plugins(limit=-1)


def test_close_is_idempotent(registry: PluginRegistry) -> None:
    registry.close()
    registry.close()


# -- an operator's switch: set_enabled, and subscribers told of it ------------------------------------------


def test_set_enabled_disables_and_enables_once_each_and_audits_who_and_why(registry: PluginRegistry) -> None:
    assert register(registry).enabled is True
    move(registry, "scanner", *PATH_TO_ACTIVE)
    after = registry.list_events()[-1].id

    disabled = registry.set_enabled("scanner", False, actor="ops/alice", reason="CVE-2026-1234")
    again = registry.set_enabled("scanner", False, actor="ops/bob")  # already disabled: nothing changes

    assert (disabled.enabled, disabled.status) == (False, S.ACTIVE)  # the flag, not a lifecycle move
    assert registry.get_plugin("scanner").enabled is False
    assert again.enabled is False
    enabled = registry.set_enabled("scanner", True, actor="ops/alice")
    assert enabled.enabled is True and registry.get_plugin("scanner").enabled is True
    events = registry.list_events(after_id=after)
    assert [(e.event, e.actor, e.state, dict(e.details)) for e in events] == [
        (EventKind.DISABLED, "ops/alice", S.ACTIVE, {"reason": "CVE-2026-1234"}),
        (EventKind.ENABLED, "ops/alice", S.ACTIVE, {}),
    ]


def test_set_enabled_refuses_unknown_plugins_and_bad_input(registry: PluginRegistry) -> None:
    with pytest.raises(PluginNotFoundError, match="ghost"):
        registry.set_enabled("ghost", False, actor=ACTOR)
    register(registry)
    with pytest.raises(RegistryError, match="enabled must be True or False"):
        registry.set_enabled("scanner", "no", actor=ACTOR)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="actor"):
        registry.set_enabled("scanner", False, actor="")
    assert registry.get_plugin("scanner").enabled is True
    assert [e.event for e in registry.list_events()] == [EventKind.REGISTERED]


def test_subscribers_are_told_of_every_disable_and_enable(registry: PluginRegistry) -> None:
    register(registry)
    seen: list[RegistryChange] = []
    arrived = threading.Condition()

    def on_change(change: RegistryChange) -> None:
        with arrived:
            if change.kind == "enabled":
                seen.append(change)
                arrived.notify_all()

    unsubscribe = registry.subscribe(on_change)
    registry.set_enabled("scanner", False, actor="ops/alice", reason="maintenance")
    registry.set_enabled("scanner", True, actor="ops/alice")
    with arrived:
        assert arrived.wait_for(lambda: len(seen) == 2, timeout=10)
    assert [(c.plugin_id, c.enabled, c.actor, c.reason) for c in seen] == [
        ("scanner", False, "ops/alice", "maintenance"),
        ("scanner", True, "ops/alice", None),
    ]

    unsubscribe()
    unsubscribe()
    # The fence: a subscriber that stays is told of the next change; deliveries go out in order, so by the
    # time it hears of it, the one that left would have heard too.
    fence = threading.Event()
    stay = registry.subscribe(lambda change: fence.set() if change.kind == "enabled" else None)
    registry.set_enabled("scanner", False, actor="ops/alice")
    assert fence.wait(10)
    stay()
    assert len(seen) == 2


def test_registering_a_known_plugin_with_another_trust_level_is_audited(registry: PluginRegistry) -> None:
    register(registry, trust_level=TrustLevel.UNTRUSTED)
    register(registry, trust_level=TrustLevel.UNTRUSTED)  # the same: nothing more to say
    record = register(registry, trust_level=TrustLevel.TRUSTED, version="1.1.0")

    assert record.trust_level is TrustLevel.TRUSTED
    events = registry.list_events(plugin_id="scanner")
    assert [(e.event, e.state, dict(e.details)) for e in events] == [
        (EventKind.REGISTERED, S.DISCOVERED, {"version": "1.0.0", "trust_level": "untrusted"}),
        (
            EventKind.REGISTERED,
            S.DISCOVERED,
            {"version": "1.1.0", "trust_level": "trusted", "previous_trust_level": "untrusted"},
        ),
    ]
