"""Bad input, on every backend, through the one validator (plugin_pool.registry.validation): what identifies
something is refused with an error naming it and nothing is stored; free text about what happened is stored
cleaned. The in-memory backend must refuse exactly what PostgreSQL would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from packaging.version import Version

from plugin_pool import Capabilities, Capability, PluginInfo, PluginState, RegistryError, TrustLevel
from plugin_pool.registry import EventKind, PluginRegistry
from plugin_pool.registry.validation import JSON_MAX_DEPTH, PAGE_MAX

S = PluginState
ACTOR = "input-tests"
NUL = "a\x00b"
SURROGATE = "a\udc80b"  # what Python makes of the byte 0x80 in a non-UTF-8 argument (surrogateescape)


def nested(depth: int, leaf: Any = 1, *, kind: type = dict) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value} if kind is dict else [value]
    return value


def info(name: str = "Scanner", version: str | Version = "1.0.0") -> PluginInfo:
    return PluginInfo(id="scanner", name=name, version=version, trust_level=TrustLevel.TRUSTED)


def register(registry: PluginRegistry, **kwargs: Any) -> None:
    registry.register(
        kwargs.pop("info", info()), kwargs.pop("capabilities", Capabilities.of("scan")), actor=ACTOR, **kwargs
    )


def assert_nothing_stored(registry: PluginRegistry) -> None:
    assert registry.flush(timeout_s=10)
    assert registry.list_plugins() == []
    assert registry.list_events() == []


BAD_CONFIGS: dict[str, Any] = {
    "nul-in-value": {"path": NUL},
    "surrogate-in-value": {"path": SURROGATE},
    "surrogate-in-key": {SURROGATE: 1},
    "nul-in-key": {NUL: 1},
    "nan": {"ratio": float("nan")},
    "infinity": {"ratio": float("inf")},
    "minus-infinity": {"ratio": float("-inf")},
    "5000-deep-object": nested(5000),
    "5000-deep-array": {"a": nested(5000, kind=list)},
    "one-level-too-deep": nested(JSON_MAX_DEPTH + 1),  # each object or array is one level
    "integer-beyond-64-bits": {"n": 2**70},
    "set": {"tags": {"a"}},
    "bytes": {"blob": b"\x00"},
    "int-key": {1: "x"},
}


@pytest.mark.parametrize("config", list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS))
def test_bad_configuration_is_refused_naming_it_and_nothing_is_stored(registry: PluginRegistry, config: Any) -> None:
    with pytest.raises(RegistryError, match="configuration of plugin 'scanner'") as caught:
        register(registry, config=config)
    assert caught.value.plugin_id == "scanner"
    assert len(str(caught.value)) < 400  # a message, not a dump of the value
    assert_nothing_stored(registry)


def test_configuration_at_the_depth_limit_is_accepted(registry: PluginRegistry) -> None:
    register(registry, config=nested(JSON_MAX_DEPTH))
    assert registry.get_plugin("scanner").config == nested(JSON_MAX_DEPTH)


@pytest.mark.parametrize(
    "parameters", [{"x": float("nan")}, {"x": NUL}, nested(JSON_MAX_DEPTH + 1)], ids=["nan", "nul", "too-deep"]
)
def test_bad_capability_parameters_are_refused(registry: PluginRegistry, parameters: Any) -> None:
    with pytest.raises(RegistryError, match="parameters of capability 'scan'"):
        register(registry, capabilities=Capabilities.of(Capability("scan", parameters)))
    assert_nothing_stored(registry)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"info": info(name=NUL)}, "plugin name .* NUL"),
        ({"info": info(name=SURROGATE)}, "plugin name .* not valid UTF-8"),
        ({"info": info(name="two\nlines")}, "plugin name .* control character"),
        ({"info": info(version=Version("1." + "1" * 120))}, "longer than 100"),
        ({"assembly_hash": NUL}, "assembly_hash .* NUL"),
        ({"assembly_hash": "h" * 201}, "assembly_hash"),
    ],
    ids=["name-nul", "name-surrogate", "name-newline", "version-length", "hash-nul", "hash-length"],
)
def test_bad_identifying_fields_are_refused(registry: PluginRegistry, kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(RegistryError, match=says):
        register(registry, **kwargs)
    assert_nothing_stored(registry)


@pytest.mark.parametrize("actor", [NUL, SURROGATE, "ops\x1b[31m", "", " ", "a" * 201, None, 7])
def test_bad_actors_are_refused_everywhere(registry: PluginRegistry, actor: Any) -> None:
    register(registry)
    events = len(registry.list_events())
    calls: list[Callable[[], Any]] = [
        lambda: registry.set_status("scanner", S.LOADING, expected=None, actor=actor),
        lambda: registry.record_event(EventKind.FAILED, plugin_id="scanner", actor=actor),
        lambda: registry.set_enabled("scanner", False, actor=actor),
    ]
    for call in calls:
        with pytest.raises(RegistryError, match="actor"):
            call()
    assert registry.flush(timeout_s=10)
    assert len(registry.list_events()) == events
    assert registry.get_plugin("scanner").enabled is True


@pytest.mark.parametrize("reason", [NUL, SURROGATE], ids=["nul", "surrogate"])
def test_an_operators_reason_that_cannot_be_stored_is_refused(registry: PluginRegistry, reason: str) -> None:
    register(registry)
    with pytest.raises(RegistryError, match=r"reason .* is invalid.*give the reason as UTF-8 text"):
        registry.set_enabled("scanner", False, actor="ops/alice", reason=reason)
    assert registry.get_plugin("scanner").enabled is True


def test_free_text_from_a_plugin_is_kept_exactly_never_refused(registry: PluginRegistry) -> None:
    register(registry)
    hostile = f"boom {NUL} {SURROGATE} \ue000 \ue0000041"  # also what the storable form uses as an escape
    instance = registry.set_status(
        "scanner",
        S.FAILED,
        expected=None,
        actor=ACTOR,
        reason=hostile,
        details={SURROGATE: [hostile, float("nan")], "n": float("inf")},
    )
    event = registry.record_event(
        EventKind.HASH_MISMATCH, plugin_id="scanner", actor=ACTOR, details={"changes": [hostile]}
    )
    assert instance.reason == hostile
    assert dict(event.details) == {"changes": [hostile]}
    record = registry.get_plugin("scanner")
    assert (record.status_reason, record.fleet.failed_on) == (hostile, ((registry.host_id, hostile),))
    assert registry.list_instances(plugin_id="scanner")[0].reason == hostile
    stored = registry.list_events(plugin_id="scanner")[-2:]
    assert dict(stored[0].details) == {SURROGATE: [hostile, "nan"], "n": "inf", "from": "discovered", "reason": hostile}
    assert dict(stored[1].details) == {"changes": [hostile]}


@pytest.mark.parametrize(
    "details",
    [nested(JSON_MAX_DEPTH + 1), {"x": object()}, {1: 2}, {"big": "x" * (1024 * 1024 + 1)}],
    ids=["too-deep", "object", "int-key", "too-large"],
)
def test_event_details_of_the_wrong_shape_are_refused(registry: PluginRegistry, details: Any) -> None:
    register(registry)
    with pytest.raises(RegistryError, match="event details"):
        registry.record_event(EventKind.FAILED, plugin_id="scanner", actor=ACTOR, details=details)
    with pytest.raises(RegistryError, match="event details"):
        registry.set_status("scanner", S.LOADING, expected=None, actor=ACTOR, details=details)
    assert registry.flush(timeout_s=10)
    assert len(registry.list_events()) == 1


@pytest.mark.parametrize("plugin_id", [NUL, SURROGATE, "x" * 201, ""], ids=["nul", "surrogate", "long", "empty"])
def test_an_audit_event_naming_an_impossible_plugin_id_is_refused(registry: PluginRegistry, plugin_id: str) -> None:
    with pytest.raises(RegistryError, match="audit event plugin id"):
        registry.record_event(EventKind.FAILED, plugin_id=plugin_id, actor=ACTOR)
    assert_nothing_stored(registry)


@pytest.mark.parametrize("host_id", ["bad id", "-leading", "x" * 65, "", "ünïcode"])
def test_an_invalid_host_id_is_refused(
    registry: PluginRegistry, other_host: Callable[[str], PluginRegistry], host_id: str
) -> None:
    with pytest.raises(RegistryError, match=r"host id .* is invalid"):
        other_host(host_id)


@pytest.mark.parametrize("limit", [-1, PAGE_MAX + 1, True, 1.5])
def test_an_impossible_page_size_is_refused(registry: PluginRegistry, limit: Any) -> None:
    with pytest.raises(RegistryError, match="limit"):
        registry.list_plugins(limit=limit)
    with pytest.raises(RegistryError, match="limit"):
        registry.list_instances(limit=limit)
