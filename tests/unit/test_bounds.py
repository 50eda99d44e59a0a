"""Pool bounds: one rule (plugin_pool._bounds), enforced alike by every reader and writer of pool sizes.

load_config (so `plugin-pool config check` and a SIGHUP reload), the manifest's [pool], resize_pool,
apply_pool_sizes and set_max_total_workers all refuse the same bad sizes with ConfigError; nothing is
clamped silently.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from plugin_pool import ConfigError, ManifestError, PluginHost, load_config
from plugin_pool._bounds import check_pool_size, resolve_pool_size
from plugin_pool.cli import main
from plugin_pool.manifest import read_manifest

MANIFEST = """\
[plugin]
id = "scanner"
name = "Scanner"
version = "1.0.0"
trust_level = "untrusted"
entry = "scanner:Scanner"

[capabilities.scan]

[pool]
{pool}
"""


def test_good_bounds_pass_unchanged() -> None:
    assert check_pool_size(1, 1) == (1, 1)
    assert check_pool_size(2, 5, max_total_workers=2) == (2, 5)


@pytest.mark.parametrize(
    ("low", "high", "total", "key", "says"),
    [
        (0, 2, None, "sandbox.min_workers", "at least 1"),
        (1, 0, None, "sandbox.max_workers", "at least 1"),
        (True, 2, None, "sandbox.min_workers", "whole number"),
        (3, 2, None, "sandbox.max_workers", "is below sandbox.min_workers = 3"),
        (4, 8, 3, "sandbox.min_workers", "above sandbox.max_total_workers = 3"),
        (1, 2, 0, "sandbox.max_total_workers", "at least 1"),
    ],
)
def test_bad_bounds_raise_naming_the_key(low: int, high: int, total: int | None, key: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        check_pool_size(low, high, max_total_workers=total)
    assert caught.value.key == key


def test_each_bound_comes_from_the_most_specific_source_that_sets_it() -> None:
    plugin = ("plugins.p", {"min_workers": None, "max_workers": 6})
    manifest = ("p/plugin.toml [pool]", {"min_workers": 2})
    defaults = ("sandbox", {"min_workers": 1, "max_workers": 2})
    assert resolve_pool_size("p", (plugin, manifest, defaults)) == ((2, 6), None)


def test_a_more_specific_bound_carries_the_other_along_and_says_so() -> None:
    defaults = ("sandbox", {"min_workers": 1, "max_workers": 2})
    (bounds, note) = resolve_pool_size("p", (("plugins.p", {"min_workers": 4}), defaults))
    assert bounds == (4, 4)
    assert note is not None and "plugins.p.min_workers = 4 is above sandbox.max_workers = 2" in note
    defaults = ("sandbox", {"min_workers": 3, "max_workers": 5})
    (bounds, note) = resolve_pool_size("p", (("plugins.p", {"max_workers": 1}), defaults))
    assert bounds == (1, 1)
    assert note is not None and "the more specific maximum wins" in note


def test_two_bounds_from_one_source_that_disagree_are_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.p\.max_workers = 1 is below plugins\.p\.min_workers = 3"):
        resolve_pool_size("p", (("plugins.p", {"min_workers": 3, "max_workers": 1}), ("sandbox", {})))


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plugin-pool.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[sandbox]\nmin_workers = 3\nmax_workers = 2\n", "sandbox.max_workers = 2 is below sandbox.min_workers = 3"),
        ("[sandbox]\nmin_workers = 20\nmax_workers = 30\n", "above sandbox.max_total_workers = 16"),
        ("[plugins.p]\npath = 'p'\nmin_workers = 3\nmax_workers = 2\n", "plugins.p.max_workers = 2 is below"),
    ],
)
def test_load_config_and_config_check_refuse_bad_pool_sizes(tmp_path: Path, text: str, says: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match=says) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    err = io.StringIO()
    assert main(["config", "check", str(path)], out=io.StringIO(), err=err) == 2
    assert says in err.getvalue()


def test_the_environment_is_checked_with_the_file_and_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[sandbox]\nmax_workers = 2\n")
    with pytest.raises(ConfigError, match="PLUGIN_POOL_SANDBOX_MIN_WORKERS"):
        load_config(path, env={"PLUGIN_POOL_SANDBOX_MIN_WORKERS": "3"})


def test_a_manifest_pool_whose_bounds_disagree_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plugin.toml").write_text(MANIFEST.format(pool="min_workers = 3\nmax_workers = 2"))
    with pytest.raises(ManifestError, match=r"pool\.max_workers = 2 is below pool\.min_workers = 3") as caught:
        read_manifest(tmp_path)
    assert caught.value.field == "pool"
    (tmp_path / "plugin.toml").write_text(MANIFEST.format(pool="min_workers = 3"))
    assert dict(read_manifest(tmp_path).pool) == {"min_workers": 3}


def test_runtime_changes_follow_the_same_rule(host: PluginHost) -> None:
    sandbox = host.config.sandbox
    with pytest.raises(ConfigError, match=r"is below sandbox\.min_workers"):
        host.apply_pool_sizes(replace(sandbox, min_workers=3, max_workers=2))
    with pytest.raises(ConfigError, match=r"sandbox\.max_total_workers = 0"):
        host.set_max_total_workers(0)
    with pytest.raises(ConfigError, match=r"above sandbox\.max_total_workers"):
        host.apply_pool_sizes(replace(sandbox, min_workers=4, max_workers=4, max_total_workers=3))
    assert host.config.sandbox == sandbox  # nothing changed
    host.set_max_total_workers(8)
    assert host.config.sandbox.max_total_workers == 8


def test_a_sighup_reload_refuses_what_load_config_refuses(tmp_path: Path, make_host: Callable[..., PluginHost]) -> None:
    from plugin_pool.cli import reload_pool_sizes

    host = make_host()
    path = write_config(tmp_path, "[sandbox]\nmin_workers = 3\nmax_workers = 2\n")
    err = io.StringIO()
    assert reload_pool_sizes(host, str(path), err) is False
    assert "sandbox.max_workers = 2 is below sandbox.min_workers = 3" in err.getvalue()
