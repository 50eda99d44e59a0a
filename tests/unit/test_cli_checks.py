"""``plugin-pool config check`` catches what it can without running, and the ``run``/``discover``/``config``
fixes of issue 16: exit codes, capability and kill-worker errors, JSON-only stderr, renamed docs check."""

from __future__ import annotations

import io
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from plugin_pool._config_check import check_config
from plugin_pool.cli import main
from plugin_pool.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIGURATION.md"

BUILTIN = """\
from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Good(PluginBase):
    info = PluginInfo(id="good", name="Good", version="1.0", trust_level=TrustLevel.BUILTIN)

    @capability
    def scan(self, payload):
        return len(payload)


class Broken(PluginBase):
    info = PluginInfo(id="broken", name="Broken", version="1.0", trust_level=TrustLevel.BUILTIN)

    def initialize(self, context):
        raise RuntimeError("broken on purpose")

    @capability
    def scan(self, payload):
        return 0
"""


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plugin_pool.toml"
    path.write_text(textwrap.dedent(text))
    return path


def check(tmp_path: Path, text: str) -> tuple[int, str]:
    code, out, _ = cli("--log-format", "none", "config", "check", str(write(tmp_path, text)))
    return code, out


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    (tmp_path / "builtin_plugins.py").write_text(BUILTIN)
    shutil.copytree(EXAMPLES / "secrets_scanner", tmp_path / "scanner")
    return tmp_path


# -- config check ------------------------------------------------------------------------------------------


def test_a_clean_configuration_is_ok(plugins: Path) -> None:
    code, out = check(
        plugins,
        """\
        [plugins.good]
        entry = "builtin_plugins.py:Good"
        trust_level = "builtin"

        [plugins.secrets-scanner]
        path = "scanner"
        """,
    )
    assert code == 0 and "OK (2 plugins configured)" in out, out


def test_a_plugins_table_that_matches_no_plugin_is_an_error(plugins: Path) -> None:
    code, out = check(plugins, '[discovery]\npaths = ["."]\n\n[plugins.secret-scanner]\nconfig = { a = 1 }\n')
    assert code == 1
    assert "plugins.secret-scanner: matches no plugin" in out and "found: secrets-scanner" in out


def test_a_plugins_table_matching_a_discovered_plugin_is_fine(plugins: Path) -> None:
    code, out = check(plugins, '[discovery]\npaths = ["."]\n\n[plugins.secrets-scanner]\nconfig = { a = 1 }\n')
    assert code == 0, out


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('path = "missing"', "plugins.p.path: "),
        ('entry = "missing.py:P"\ntrust_level = "builtin"', "missing.py does not exist"),
        (
            'entry = "no_such_module_here.sub:P"\ntrust_level = "trusted"',
            "module 'no_such_module_here' cannot be found",
        ),
    ],
)
def test_missing_folders_and_entries_are_errors(plugins: Path, table: str, says: str) -> None:
    code, out = check(plugins, f"[plugins.p]\n{table}\n")
    assert code == 1 and says in out, out


def test_a_folder_holding_another_plugin_id_is_an_error(plugins: Path) -> None:
    code, out = check(plugins, '[plugins.scanner]\npath = "scanner"\n')
    assert code == 1
    assert "holds plugin 'secrets-scanner', not 'scanner'" in out and "[plugins.secrets-scanner]" in out


def test_unknown_layer_names_missing_keys_and_read_paths_are_errors(plugins: Path) -> None:
    code, out = check(
        plugins,
        """\
        [sandbox]
        required_layers = "seccomp, landlok, mountns"
        extra_read_paths = ["/nonexistent/shared-tree"]

        [trust]
        trusted_keys = ["keys/vendor.pub"]
        """,
    )
    assert code == 1
    assert "sandbox.required_layers: names unknown layer 'landlok'" in out
    assert "sandbox.extra_read_paths: /nonexistent/shared-tree does not exist" in out
    assert "trust.trusted_keys:" in out and "vendor.pub" in out
    assert out.count("\nerror") + out.startswith("error") == 3


def test_pool_bounds_are_checked_across_sources_with_the_one_rule(plugins: Path) -> None:
    manifest = plugins / "scanner" / "plugin.toml"
    manifest.write_text(manifest.read_text().replace("max_workers = 2", "max_workers = 3"))
    code, out = check(
        plugins, '[sandbox]\nmax_total_workers = 4\n\n[plugins.secrets-scanner]\npath = "scanner"\nmin_workers = 5\n'
    )
    assert code == 1 and "plugins.secrets-scanner.min_workers = 5 is above sandbox.max_total_workers = 4" in out, out
    # Across sources the more specific bound wins (as the host resolves it): a warning, not an error.
    code, out = check(plugins, '[plugins.secrets-scanner]\npath = "scanner"\nmin_workers = 4\n')
    assert code == 0 and "warning" in out and "the more specific minimum wins: pool 4..4" in out, out


def test_a_manifest_whose_pool_breaks_the_rule_is_an_error(plugins: Path) -> None:
    manifest = plugins / "scanner" / "plugin.toml"
    manifest.write_text(manifest.read_text().replace("min_workers = 1", "min_workers = 3"))
    code, out = check(plugins, '[plugins.secrets-scanner]\npath = "scanner"\n')
    assert code == 1 and "max_workers = 2 is below" in out, out


def test_warnings_for_missing_discovery_paths_and_unvendored_python_paths(plugins: Path) -> None:
    manifest = plugins / "scanner" / "plugin.toml"
    manifest.write_text(manifest.read_text() + '\n[python]\npath = ["_vendor"]\n')
    code, out = check(plugins, '[discovery]\npaths = ["nowhere"]\n\n[plugins.secrets-scanner]\npath = "scanner"\n')
    assert code == 0, out
    assert "discovery.paths:" in out and "nowhere does not exist" in out
    assert "'_vendor' does not exist" in out and "plugin-pool vendor" in out


def test_a_file_that_does_not_load_still_exits_2_with_the_key(tmp_path: Path) -> None:
    code, _, err = cli("--log-format", "none", "config", "check", str(write(tmp_path, "[sandbox]\nmax_workers = 0\n")))
    assert code == 2 and "sandbox.max_workers" in err


def test_check_config_reports_errors_before_warnings(plugins: Path) -> None:
    config = load_config(write(plugins, '[discovery]\npaths = ["nowhere"]\n[plugins.x]\nenabled = true\n'))
    assert [f.level for f in check_config(config)] == ["error", "warning"]


# -- run, discover, config settings -------------------------------------------------------------------------


def test_run_exits_1_when_a_plugin_failed_without_strict(plugins: Path) -> None:
    config = write(
        plugins,
        """\
        [plugins.good]
        entry = "builtin_plugins.py:Good"
        trust_level = "builtin"

        [plugins.broken]
        entry = "builtin_plugins.py:Broken"
        trust_level = "builtin"
        """,
    )
    code, out, err = cli("--log-format", "none", "run", str(config), "--calls", "20", "--quiet")
    assert code == 1, out + err
    assert "[run] 1 plugin(s) failed: broken" in err
    code, out, err = cli("--log-format", "none", "run", str(config), "--calls", "20", "--quiet", "--plugin", "x=a")
    assert code == 2  # a bad --plugin is still a usage error


def test_run_with_a_capability_no_plugin_declares_is_an_error(plugins: Path) -> None:
    config = write(plugins, '[plugins.good]\nentry = "builtin_plugins.py:Good"\ntrust_level = "builtin"\n')
    code, _, err = cli("--log-format", "none", "run", str(config), "--capability", "evaluate", "--quiet")
    assert code == 2
    assert "capability 'evaluate' matches no active plugin; the active plugins declare: scan" in err


def test_kill_workers_without_an_untrusted_plugin_says_why_not(plugins: Path) -> None:
    config = write(plugins, '[plugins.good]\nentry = "builtin_plugins.py:Good"\ntrust_level = "builtin"\n')
    code, _, err = cli("--log-format", "none", "run", str(config), "--kill-workers", "2", "--quiet")
    assert code == 2 and "--kill-workers 2: no Untrusted plugin is active" in err


def test_with_json_stderr_holds_only_json_lines(plugins: Path) -> None:
    config = write(
        plugins,
        """\
        [plugins.good]
        entry = "builtin_plugins.py:Good"
        trust_level = "builtin"

        [plugins.broken]
        entry = "builtin_plugins.py:Broken"
        trust_level = "builtin"
        """,
    )
    for extra in ((), ("--capability", "nothing")):
        code, out, err = cli("--log-level", "INFO", "run", str(config), "--calls", "10", "--json", *extra)
        assert code in (1, 2) and err.strip()
        records = [json.loads(line) for line in err.splitlines()]  # raises on any line that is not JSON
        assert all(isinstance(r, dict) for r in records)
        if not extra:
            assert json.loads(out)["plugins"] and any(r.get("event") == "plugins_failed" for r in records)
        else:
            assert (
                records[-1]["event"] == "configuration_error" and "matches no active plugin" in records[-1]["message"]
            )


def test_discover_includes_the_folders_of_plugins_path_tables(plugins: Path) -> None:
    config = write(plugins, '[plugins.secrets-scanner]\npath = "scanner"\n')
    code, out, _ = cli("--log-format", "none", "discover", str(config))
    assert code == 0 and "secrets-scanner" in out and str(plugins / "scanner") in out, out


def test_config_settings_check_docs_is_the_docs_drift_check(tmp_path: Path) -> None:
    stale = tmp_path / "CONFIGURATION.md"
    stale.write_text("old")
    assert cli("--log-format", "none", "config", "settings", "--check-docs", str(stale))[0] == 1
    assert cli("--log-format", "none", "config", "settings", "--check-docs", str(DOC))[0] == 0
    code, _, err = cli("--log-format", "none", "config", "settings", "--check", str(DOC))  # the old name still works
    assert code == 0 and "renamed '--check-docs'" in err


def test_discovery_log_records_carry_event_plugin_id_and_trust_level(
    plugins: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from plugin_pool.discovery import discover

    bad = plugins / "bad"
    bad.mkdir()
    (bad / "plugin.toml").write_text('[plugin]\nid = "bad"\nname = "b"\n')
    caplog.set_level("INFO", logger="plugin_pool.discovery")
    discover([str(plugins), str(plugins / "missing")], use_entry_points=False)
    records = [r for r in caplog.records if r.name == "plugin_pool.discovery"]
    by_event = {getattr(r, "event", None): r for r in records}
    assert set(by_event) == {"plugin_discovered", "discovery_rejected", "discovery_path_skipped"}
    found = by_event["plugin_discovered"]
    assert (getattr(found, "pluginId", None), getattr(found, "trustLevel", None)) == ("secrets-scanner", "untrusted")
    assert getattr(by_event["discovery_rejected"], "pluginId", "unset") == "bad"
    assert all(hasattr(r, "pluginId") and hasattr(r, "trustLevel") for r in records)
