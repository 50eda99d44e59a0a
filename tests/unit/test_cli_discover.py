"""``plugin-pool discover``: what would load, at which trust level, and why anything would not."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from plugin_pool.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--log-format", "none", "discover", *argv], out=out, err=err)
    return code, out.getvalue()


def test_discover_lists_the_untrusted_example_with_its_hash(tmp_path: Path) -> None:
    code, text = _run("--path", str(EXAMPLES), "--path", str(tmp_path / "missing"))
    assert code == 0
    assert "secrets-scanner" in text and "untrusted" in text and "sha256:" in text
    assert "SKIP" in text and "missing" in text


def test_discover_exits_1_and_says_why_a_plugin_would_not_load(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "secrets_scanner", tmp_path / "ok")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "plugin.toml").write_text('[plugin]\nid = "Bad Id"\n')
    code, text = _run("--path", str(tmp_path))
    assert code == 1
    assert "FAIL" in text and "plugin.toml" in text
    assert "load  secrets-scanner" in text
