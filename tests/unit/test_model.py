"""PluginInfo, TrustLevel, Capability and Capabilities: validation that names the field, and frozen data."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from plugin_pool import Capabilities, Capability, InvalidPluginError, PluginInfo, TrustLevel
from plugin_pool.model import Version


def info(**changes: Any) -> PluginInfo:
    fields: dict[str, Any] = {"id": "hello", "name": "Hello", "version": "1.2.0", "trust_level": "builtin"}
    fields.update(changes)
    return PluginInfo(**fields)


# -- PluginInfo ----------------------------------------------------------------------------------------


def test_valid_info_keeps_its_values_and_parses_version_and_trust_level() -> None:
    made = info(description="says hello", author="team")
    assert made.id == "hello"
    assert made.name == "Hello"
    assert made.version == Version("1.2.0")
    assert made.trust_level is TrustLevel.BUILTIN
    assert (made.description, made.author) == ("says hello", "team")


@pytest.mark.parametrize(
    "good_id",
    ["a", "hello-world", "scan_v2", "x" * 63, "a0-_9"],
    ids=["one-char", "dash", "underscore", "63", "mix"],
)
def test_accepted_ids(good_id: str) -> None:
    assert info(id=good_id).id == good_id


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "Hello",
        "x" * 64,
        "1hello",
        "hello world",
        " hello",
        "hello.world",
        "héllo",
        "-hello",
        "x\n",
        "x\r\n",
        "x\x00",
        "a/b",
        "../etc",
        'x"y',
        "x'y",
        "x\ty",
        "x\x1b[2J",
        "x" * 63 + "\n",
        "\uff58",  # fullwidth x
        None,
        42,
        b"hello",
    ],
    ids=[
        "empty",
        "uppercase",
        "too-long-64",
        "digit-first",
        "space",
        "leading-space",
        "dot",
        "non-ascii",
        "dash-first",
        "trailing-newline",
        "trailing-crlf",
        "nul",
        "slash",
        "dot-dot-slash",
        "double-quote",
        "single-quote",
        "tab",
        "escape-sequence",
        "63-plus-newline",
        "fullwidth-x",
        "none",
        "int",
        "bytes",
    ],
)
def test_rejected_ids_name_the_id_field(bad_id: object) -> None:
    with pytest.raises(InvalidPluginError, match=r"plugin id .* is invalid") as caught:
        info(id=bad_id)
    assert caught.value.field == "id"
    assert repr(bad_id) in str(caught.value)


@pytest.mark.parametrize("bad_name", ["", "   ", "n" * 201, None, 7])
def test_rejected_names_name_the_name_field(bad_name: object) -> None:
    with pytest.raises(InvalidPluginError) as caught:
        info(name=bad_name)
    assert caught.value.field == "name"


@pytest.mark.parametrize("bad_version", ["", "one", "1.0-beta-gamma!", 1.0, None, ["1", "0"]])
def test_rejected_versions_name_the_version_field_and_the_plugin(bad_version: object) -> None:
    with pytest.raises(InvalidPluginError, match=r"plugin version .* is invalid") as caught:
        info(version=bad_version)
    assert caught.value.field == "version"
    assert caught.value.plugin_id == "hello"


@pytest.mark.parametrize("bad_level", ["root", "", "built-in", 3, None])
def test_rejected_trust_levels_name_the_trust_level_field_and_the_allowed_values(bad_level: object) -> None:
    with pytest.raises(InvalidPluginError, match="expected one of: builtin, trusted, untrusted") as caught:
        info(trust_level=bad_level)
    assert caught.value.field == "trust_level"


@pytest.mark.parametrize(("field", "value"), [("description", "d" * 2001), ("author", "a" * 201), ("author", 5)])
def test_rejected_optional_text_names_its_field(field: str, value: object) -> None:
    with pytest.raises(InvalidPluginError) as caught:
        info(**{field: value})
    assert caught.value.field == field


def test_invalid_plugin_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        info(id="")


def test_info_is_frozen() -> None:
    made = info()
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.id = "other"  # type: ignore[misc]


def test_version_object_is_kept_as_is() -> None:
    version = Version("2.0.0rc1")
    assert info(version=version).version is version


def test_versions_order_numerically_not_as_text() -> None:
    versions = [info(version=v).version for v in ["1.10.0", "1.9.0", "1.9.0rc1", "2.0", "1.9.0.post1"]]
    assert [str(v) for v in sorted(versions)] == ["1.9.0rc1", "1.9.0", "1.9.0.post1", "1.10.0", "2.0"]
    assert info(version="1.0").version == info(version="1.0.0").version


def test_to_dict_is_json_compatible_with_strings_for_version_and_trust_level() -> None:
    assert info(version="1.02", trust_level=TrustLevel.TRUSTED, author="me").to_dict() == {
        "id": "hello",
        "name": "Hello",
        "version": "1.2",
        "trust_level": "trusted",
        "description": None,
        "author": "me",
    }


def test_equal_infos_compare_equal_and_hash_alike() -> None:
    assert info() == info(trust_level=TrustLevel.BUILTIN, version=Version("1.2.0"))
    assert hash(info()) == hash(info())
    assert info() != info(version="1.2.1")


# -- TrustLevel ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "level"),
    [("builtin", TrustLevel.BUILTIN), ("Trusted", TrustLevel.TRUSTED), ("UNTRUSTED", TrustLevel.UNTRUSTED)],
)
def test_trust_level_parse_is_case_insensitive(text: str, level: TrustLevel) -> None:
    assert TrustLevel.parse(text) is level


def test_trust_level_parse_returns_a_level_unchanged() -> None:
    assert TrustLevel.parse(TrustLevel.TRUSTED) is TrustLevel.TRUSTED


def test_trust_level_parse_names_the_bad_value_and_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown trust level 'root'; expected one of: builtin, trusted, untrusted"):
        TrustLevel.parse("root")


def test_only_untrusted_runs_outside_the_host_process() -> None:
    assert {level: level.in_process for level in TrustLevel} == {
        TrustLevel.BUILTIN: True,
        TrustLevel.TRUSTED: True,
        TrustLevel.UNTRUSTED: False,
    }


# -- Capability ----------------------------------------------------------------------------------------


def test_capability_method_defaults_to_its_name() -> None:
    cap = Capability("scan")
    assert (cap.name, cap.method, dict(cap.parameters)) == ("scan", "scan", {})
    assert cap.is_well_known


def test_capability_may_map_to_another_method() -> None:
    cap = Capability("evaluate_policy", method="check")
    assert cap.method == "check"
    assert cap.is_well_known
    assert not Capability("custom_thing").is_well_known


@pytest.mark.parametrize(
    "bad_name", ["", "Scan", "scan-files", "2scan", "_scan", "s" * 64, "scan files", "scan\n", None, 3]
)
def test_rejected_capability_names_name_the_capabilities_field(bad_name: object) -> None:
    with pytest.raises(InvalidPluginError, match=r"capability name .* is invalid") as caught:
        Capability(bad_name)  # type: ignore[arg-type]
    assert caught.value.field == "capabilities"


@pytest.mark.parametrize("bad_method", ["_private", "not-an-identifier", "1st"])
def test_capability_method_must_be_a_public_identifier(bad_method: str) -> None:
    with pytest.raises(InvalidPluginError, match="not a public Python identifier"):
        Capability("scan", method=bad_method)


@pytest.mark.parametrize(
    ("parameters", "where"),
    [
        ({"types": {"a", "b"}}, "parameters.types: set is not JSON-compatible"),
        ({"handler": object()}, "parameters.handler: object is not JSON-compatible"),
        ({"nested": {"deep": [1, b"raw"]}}, "parameters.nested.deep[1]: bytes is not JSON-compatible"),
        ({"nested": {1: "x"}}, "parameters.nested: keys must be strings"),
    ],
    ids=["set", "object", "bytes-in-list", "int-key"],
)
def test_capability_parameters_must_be_json_compatible(parameters: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidPluginError, match=re.escape(f"capability 'scan' {where}")) as caught:
        Capability("scan", parameters)
    assert caught.value.field == "capabilities"


def test_capability_parameters_are_frozen_deeply() -> None:
    source: dict[str, Any] = {"types": ["jar", "war"], "limits": {"max_mb": 10}, "on": True, "none": None}
    cap = Capability("scan", source)
    source["types"].append("ear")
    source["limits"]["max_mb"] = 99
    assert cap.parameters["types"] == ("jar", "war")
    assert cap.parameters["limits"]["max_mb"] == 10
    with pytest.raises(TypeError):
        cap.parameters["on"] = False  # type: ignore[index]
    with pytest.raises(TypeError):
        cap.parameters["limits"]["max_mb"] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cap.name = "other"  # type: ignore[misc]


# -- Capabilities --------------------------------------------------------------------------------------


def test_capabilities_of_keeps_declaration_order_and_accepts_names_and_objects() -> None:
    caps = Capabilities.of("scan", Capability("connect", {"ports": [443]}), "evaluate_policy")
    assert caps.names == ("scan", "connect", "evaluate_policy")
    assert list(caps) == ["scan", "connect", "evaluate_policy"]
    assert len(caps) == 3
    assert caps["connect"].parameters["ports"] == (443,)
    assert "scan" in caps
    assert "delete" not in caps
    assert repr(caps) == "Capabilities.of('scan', 'connect', 'evaluate_policy')"


def test_empty_capabilities() -> None:
    assert Capabilities().names == ()
    assert Capabilities.of() == Capabilities()


def test_duplicate_capability_is_rejected() -> None:
    with pytest.raises(InvalidPluginError, match="capability 'scan' is declared twice") as caught:
        Capabilities.of("scan", Capability("scan", {"x": 1}))
    assert caught.value.field == "capabilities"


def test_capabilities_reject_other_objects() -> None:
    with pytest.raises(InvalidPluginError, match="must be Capability objects or names"):
        Capabilities([Capability("scan"), "connect"])  # type: ignore[list-item]


def test_capabilities_compare_by_content() -> None:
    assert Capabilities.of("scan", "connect") == Capabilities.of("scan", "connect")
    assert Capabilities.of("scan") != Capabilities.of(Capability("scan", {"x": 1}))
    assert hash(Capabilities.of("a", "b")) == hash(Capabilities.of("b", "a"))


def test_capabilities_cannot_be_changed() -> None:
    caps = Capabilities.of("scan")
    with pytest.raises(TypeError):
        caps["connect"] = Capability("connect")  # type: ignore[index]
    with pytest.raises(AttributeError):
        caps.extra = 1  # type: ignore[attr-defined]


def test_the_id_rule_is_one_rule_with_a_bool_form() -> None:
    from plugin_pool.model import is_valid_plugin_id, validate_plugin_id

    for value in ("ok", "x" * 63):
        assert is_valid_plugin_id(value) and validate_plugin_id(value) == value
    for value in ("x\n", "x" * 64, "a/b", None):
        assert not is_valid_plugin_id(value)
        with pytest.raises(InvalidPluginError) as caught:
            validate_plugin_id(value, field_name="plugin.id")
        assert caught.value.field == "plugin.id"
