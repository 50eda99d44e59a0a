"""load_config: defaults, TOML file, PLUGIN_POOL_* variables, overrides; errors name key and source."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

import plugin_pool.config as config_module
from plugin_pool import Config, ConfigError, HostConfig, LifecycleConfig, load_config
from plugin_pool.config import WorkloadConfig, env_var, list_settings


def write_toml(tmp_path: Path, text: str, name: str = "plugin-pool.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# -- defaults ------------------------------------------------------------------------------------------


def test_defaults() -> None:
    config = load_config()
    assert config == Config()
    assert config.host == HostConfig(actor="plugin-pool", monitor_builtin=False, call_timeout_s=30.0)
    assert config.lifecycle == LifecycleConfig(initialize_timeout_s=5.0, start_timeout_s=5.0, stop_timeout_s=5.0)
    assert config.workload == WorkloadConfig(capability="scan", calls=2000, threads=4)
    assert dict(config.plugins) == {}
    assert config.source is None


def test_config_is_frozen() -> None:
    config = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.host.actor = "someone"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.plugins["x"] = None  # type: ignore[index]


# -- the file ------------------------------------------------------------------------------------------


def test_file_values_are_loaded_and_ints_become_floats(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        [host]
        actor = "scanner-7"
        monitor_builtin = true
        call_timeout_s = 2

        [lifecycle]
        start_timeout_s = 1.5

        [workload]
        calls = 10
        """,
    )
    config = load_config(path)
    assert config.host == HostConfig(actor="scanner-7", monitor_builtin=True, call_timeout_s=2.0)
    assert isinstance(config.host.call_timeout_s, float)
    assert config.lifecycle == LifecycleConfig(start_timeout_s=1.5)
    assert config.workload == WorkloadConfig(calls=10)
    assert config.source == str(path)


def test_plugins_tables_are_loaded(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        [plugins.hello]
        entry = "examples.hello:Hello"
        trust_level = "builtin"
        services = ["clock"]

        [plugins.hello.config]
        greeting = "hi"
        limits = { max = 3 }

        [plugins.off]
        enabled = false
        """,
    )
    plugins = load_config(path).plugins
    assert list(plugins) == ["hello", "off"]
    hello = plugins["hello"]
    assert (hello.entry, hello.trust_level, hello.enabled, hello.services) == (
        "examples.hello:Hello",
        "builtin",
        True,
        ("clock",),
    )
    assert dict(hello.config) == {"greeting": "hi", "limits": {"max": 3}}
    with pytest.raises(TypeError):
        hello.config["greeting"] = "bye"  # type: ignore[index]
    assert (plugins["off"].enabled, plugins["off"].entry, plugins["off"].trust_level) == (False, None, None)


def test_relative_py_entry_is_resolved_against_the_files_directory(tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = write_toml(
        conf_dir,
        f"""
        [plugins.local]
        entry = "plugins/local.py:Local"
        trust_level = "trusted"

        [plugins.absolute]
        entry = "{tmp_path / "abs.py"}:Abs"
        trust_level = "trusted"

        [plugins.module]
        entry = "some.module:Thing"
        trust_level = "builtin"
        """,
    )
    plugins = load_config(path).plugins
    assert plugins["local"].entry == f"{conf_dir.resolve() / 'plugins' / 'local.py'}:Local"
    assert plugins["absolute"].entry == f"{tmp_path / 'abs.py'}:Abs"
    assert plugins["module"].entry == "some.module:Thing"


def test_a_file_given_as_str_works_like_a_path(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[workload]\nthreads = 2\n")
    assert load_config(str(path)).workload.threads == 2


# -- environment and overrides -------------------------------------------------------------------------


def test_environment_variables_override_defaults() -> None:
    config = load_config(
        env={
            "PLUGIN_POOL_LIFECYCLE_START_TIMEOUT_S": "2.5",
            "PLUGIN_POOL_HOST_MONITOR_BUILTIN": "yes",
            "PLUGIN_POOL_HOST_ACTOR": "ci-runner",
            "PLUGIN_POOL_WORKLOAD_CALLS": "10",
            "UNRELATED": "ignored",
        }
    )
    assert config.lifecycle.start_timeout_s == 2.5
    assert config.host.monitor_builtin is True
    assert config.host.actor == "ci-runner"
    assert config.workload.calls == 10
    assert config.lifecycle.stop_timeout_s == 5.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("TRUE", True),
        ("on", True),
        ("yes", True),
        ("0", False),
        ("false", False),
        ("Off", False),
    ],
)
def test_boolean_environment_values(text: str, expected: bool) -> None:
    assert load_config(env={"PLUGIN_POOL_HOST_MONITOR_BUILTIN": text}).host.monitor_builtin is expected


def test_overrides_beat_environment_which_beats_the_file(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path, "[lifecycle]\nstart_timeout_s = 1.0\nstop_timeout_s = 1.0\ninitialize_timeout_s = 1.0\n"
    )
    env = {"PLUGIN_POOL_LIFECYCLE_START_TIMEOUT_S": "2.0", "PLUGIN_POOL_LIFECYCLE_STOP_TIMEOUT_S": "2.0"}
    config = load_config(path, env=env, overrides={"lifecycle": {"start_timeout_s": 3.0}})
    assert config.lifecycle == LifecycleConfig(initialize_timeout_s=1.0, start_timeout_s=3.0, stop_timeout_s=2.0)


def test_overrides_change_only_the_keys_they_name() -> None:
    config = load_config(overrides={"host": {"call_timeout_s": 0.2}})
    assert config.host == HostConfig(call_timeout_s=0.2)


SETTINGS = list_settings()


def changed_value(row: dict[str, Any]) -> tuple[str, Any] | None:
    """A valid non-default value for the setting as (variable text, parsed value); None for strings."""
    default = row["default"]
    if row["type"] == "bool":
        return ("false", False) if default else ("true", True)
    if row["type"] == "int":
        return str(default + 1), default + 1
    if row["type"] == "float":
        return str(default + 1.5), default + 1.5
    return None  # strings may have their own rules; the invalid-value test shows the variable is read


@pytest.mark.parametrize("row", SETTINGS, ids=[row["key"] for row in SETTINGS])
def test_every_listed_setting_is_read_from_its_variable(row: dict[str, Any]) -> None:
    section, key = row["key"].split(".")
    assert getattr(getattr(load_config(), section), key) == row["default"]
    change = changed_value(row)
    if change is not None:
        text, value = change
        assert getattr(getattr(load_config(env={row["env"]: text}), section), key) == value
    invalid = {"bool": "maybe", "int": "many", "float": "soon"}.get(row["type"], "")
    with pytest.raises(ConfigError) as caught:
        load_config(env={row["env"]: invalid})
    assert (caught.value.key, caught.value.source) == (row["key"], row["env"])


def test_list_settings_documents_every_section_field() -> None:
    rows = {row["key"]: row for row in SETTINGS}
    expected_keys = {
        f"{section}.{f.name}" for section, cls in config_module._SECTIONS.items() for f in dataclasses.fields(cls)
    }
    assert set(rows) == expected_keys
    assert {"host", "lifecycle", "workload"} <= set(config_module._SECTIONS)
    assert rows["lifecycle.start_timeout_s"] == {
        "key": "lifecycle.start_timeout_s",
        "type": "float",
        "unit": "s",
        "default": 5.0,
        "env": "PLUGIN_POOL_LIFECYCLE_START_TIMEOUT_S",
        "doc": "time a plugin's start() may take",
    }
    assert all(row["doc"] for row in rows.values())
    assert all(row["unit"] == "s" for key, row in rows.items() if key.endswith("_s"))
    assert len({row["env"] for row in rows.values()}) == len(rows)
    assert env_var("host", "call_timeout_s") == "PLUGIN_POOL_HOST_CALL_TIMEOUT_S"


# -- errors --------------------------------------------------------------------------------------------


def config_error(tmp_path: Path, text: str) -> tuple[ConfigError, Path]:
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value, path


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ("[hosts]\nactor = 'x'\n", "hosts", "unknown section [hosts]"),
        ("[host]\nactr = 'x'\n", "host.actr", "unknown setting host.actr"),
        (
            "[lifecycle]\nstart_timeout_s = 'fast'\n",
            "lifecycle.start_timeout_s",
            "is invalid: expected float",
        ),
        ("[workload]\ncalls = 2.5\n", "workload.calls", "is invalid: expected int"),
        ("[workload]\ncalls = true\n", "workload.calls", "is invalid: expected int"),
        ("[host]\nmonitor_builtin = 1\n", "host.monitor_builtin", "is invalid: expected bool"),
        ("[host]\nactor = ''\n", "host.actor", "is invalid: expected str"),
        (
            "[lifecycle]\nstart_timeout_s = 0\n",
            "lifecycle.start_timeout_s",
            "is too small: the minimum is 0.001",
        ),
        ("[workload]\nthreads = 0\n", "workload.threads", "is too small: the minimum is 1"),
        ("[lifecycle]\nstop_timeout_s = nan\n", "lifecycle.stop_timeout_s", "is invalid: expected float"),
        ("host = 3\n", "host", "[host] in"),
        ("plugins = 3\n", "plugins", "[plugins] in"),
        ("[plugins.Bad]\n", "plugins.Bad", "plugin id 'Bad' is invalid"),
        ("[plugins.x]\ncolour = 'red'\n", "plugins.x.colour", "unknown setting plugins.x.colour"),
        ("[plugins.x]\nentry = 'x.py:X'\n", "plugins.x.trust_level", "must be 'builtin' or 'trusted'"),
        (
            "[plugins.x]\nentry = 'x.py:X'\ntrust_level = 'untrusted'\n",
            "plugins.x.trust_level",
            "Untrusted plugins are never imported by the host",
        ),
        (
            "[plugins.x]\nentry = 'no_colon'\ntrust_level = 'builtin'\n",
            "plugins.x.entry",
            "expected 'module:attribute'",
        ),
        ("[plugins.x]\nenabled = 'yes'\n", "plugins.x.enabled", "must be true or false"),
        ("[plugins.x]\nconfig = 3\n", "plugins.x.config", "must be a table"),
        ("[plugins.x]\nservices = 'clock'\n", "plugins.x.services", "must be a list of service names"),
        ("[plugins.x]\nservices = ['']\n", "plugins.x.services", "must be a list of service names"),
    ],
    ids=[
        "unknown-section",
        "unknown-key",
        "wrong-type-float",
        "float-for-int",
        "bool-for-int",
        "int-for-bool",
        "empty-str",
        "below-minimum-float",
        "below-minimum-int",
        "nan",
        "section-not-table",
        "plugins-not-table",
        "bad-plugin-id",
        "unknown-plugin-key",
        "entry-without-trust-level",
        "entry-untrusted",
        "entry-no-colon",
        "enabled-not-bool",
        "config-not-table",
        "services-not-list",
        "services-empty-name",
    ],
)
def test_file_errors_name_the_key_and_the_file(tmp_path: Path, text: str, key: str, says: str) -> None:
    error, path = config_error(tmp_path, text)
    assert error.key == key
    assert error.source == str(path)
    assert says in str(error)
    assert str(path) in str(error)


@pytest.mark.parametrize("bad_id", ["x\n", "a/b", "x y"], ids=["newline", "slash", "space"])
def test_a_plugin_id_key_with_a_trailing_newline_or_separator_is_refused(tmp_path: Path, bad_id: str) -> None:
    import json

    error, _ = config_error(tmp_path, f"[plugins.{json.dumps(bad_id)}]\nenabled = false\n")
    assert error.key == f"plugins.{bad_id}" and "plugin id" in str(error)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    error, path = config_error(tmp_path, "[host\nactor = \n")
    assert error.source == str(path)
    assert f"configuration file {path} is not valid TOML" in str(error)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"configuration file {missing} does not exist") as caught:
        load_config(missing)
    assert caught.value.source == str(missing)


@pytest.mark.parametrize(
    ("env", "key", "says"),
    [
        ({"PLUGIN_POOL_LIFECYCLE_START_TIMEOUT_S": "soon"}, "lifecycle.start_timeout_s", "expected float"),
        ({"PLUGIN_POOL_LIFECYCLE_START_TIMEOUT_S": "0"}, "lifecycle.start_timeout_s", "the minimum is 0.001"),
        ({"PLUGIN_POOL_HOST_CALL_TIMEOUT_S": "inf"}, "host.call_timeout_s", "expected float"),
        ({"PLUGIN_POOL_WORKLOAD_CALLS": "1.5"}, "workload.calls", "expected int"),
        ({"PLUGIN_POOL_HOST_MONITOR_BUILTIN": "maybe"}, "host.monitor_builtin", "expected bool"),
    ],
)
def test_environment_errors_name_the_key_and_the_variable(env: dict[str, str], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    (variable,) = env
    assert (caught.value.key, caught.value.source) == (key, variable)
    assert variable in str(caught.value)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        ({"lifecycle": {"start_timeout_s": 0.0}}, "lifecycle.start_timeout_s", "the minimum is 0.001"),
        ({"host": {"call_timeout_s": "fast"}}, "host.call_timeout_s", "expected float"),
        ({"host": {"colour": "red"}}, "host.colour", "unknown setting host.colour"),
        ({"hots": {"actor": "x"}}, "hots", "unknown section 'hots' in overrides"),
    ],
)
def test_override_errors_name_the_key_and_say_overrides(overrides: dict[str, Any], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)
    assert (caught.value.key, caught.value.source) == (key, "overrides")
    assert says in str(caught.value)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        load_config(overrides={"workload": {"threads": 0}})


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1879048192", "expected 'first-last'"),
        ("a-b", "expected 'first-last'"),
        ("0-65535", "below 1000 belong to the system"),
        ("5000-4000", "before its first uid"),
        ("2000000000-3000000000", "above 2147483647"),
    ],
)
def test_a_bad_uid_range_names_the_key_the_file_and_why(tmp_path: Path, text: str, why: str) -> None:
    path = write_toml(tmp_path, f'[sandbox]\nuid_range = "{text}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == "sandbox.uid_range"
    assert str(path) in str(caught.value) and why in str(caught.value)


def test_worker_user_is_auto_or_userns(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected one of auto, userns"):
        load_config(write_toml(tmp_path, '[sandbox]\nworker_user = "nobody"\n'))
    assert load_config(overrides={"sandbox": {"worker_user": "userns"}}).sandbox.worker_user == "userns"
