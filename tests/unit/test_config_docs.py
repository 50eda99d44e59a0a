"""docs/CONFIGURATION.md is generated from plugin_pool.config: these tests fail when it is stale, so a setting
added or changed without regenerating the docs fails CI (fix: .venv/bin/python scripts/gen_config_docs.py)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from types import ModuleType

import pytest

from plugin_pool.cli import format_settings_doc, main
from plugin_pool.config import PluginSettings, list_settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "CONFIGURATION.md"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    """scripts/gen_config_docs.py, imported in-process from its path."""
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts" / "gen_config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_configuration_doc_is_up_to_date(generator: ModuleType) -> None:
    assert generator.main(["--check"]) == 0, "docs/CONFIGURATION.md is stale: run scripts/gen_config_docs.py"
    assert DOC.read_text(encoding="utf-8") == format_settings_doc()


def test_the_check_fails_on_a_stale_or_missing_file_and_passes_once_written(
    generator: ModuleType, tmp_path: Path
) -> None:
    doc = tmp_path / "CONFIGURATION.md"
    assert generator.main(["--check"], doc=doc) == 1  # missing
    doc.write_text(format_settings_doc().replace("| `sandbox.max_workers` |", "| `sandbox.max_workerz` |"))
    assert generator.main(["--check"], doc=doc) == 1  # stale
    assert generator.main([], doc=doc) == 0
    assert generator.main(["--check"], doc=doc) == 0


def test_every_setting_is_documented_with_type_unit_default_and_variable() -> None:
    text = format_settings_doc()
    for row in list_settings():
        line = next(line for line in text.splitlines() if line.startswith(f"| `{row['key']}` |"))
        assert f"`{row['env']}`" in line and (row["unit"] or "-") in line and row["doc"].split("|")[0] in line
    section_rows = [line for line in text.splitlines() if line.startswith("| `") and "PLUGIN_POOL_" in line]
    assert len(section_rows) == len(list_settings())
    for name in PluginSettings.__dataclass_fields__:
        assert f"| `{name}` |" in text
    assert "highest precedence first" in text and "PLUGIN_POOL_<SECTION>_<KEY>" in text


def test_the_cli_prints_the_same_document_and_checks_a_file(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(["--log-format", "none", "config", "settings"], out=out, err=err) == 0
    assert out.getvalue() == format_settings_doc()
    stale = tmp_path / "stale.md"
    stale.write_text("# old\n")
    assert main(["--log-format", "none", "config", "settings", "--check-docs", str(stale)], out=out, err=err) == 1
    assert "stale" in err.getvalue()
    assert main(["--log-format", "none", "config", "settings", "--check-docs", str(DOC)], out=out, err=err) == 0
