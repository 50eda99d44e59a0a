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


def test_discover_lists_every_rejected_folder_with_its_path_and_reason(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "secrets_scanner", tmp_path / "ok")
    rest = 'name = "n"\nversion = "1"\ntrust_level = "untrusted"\nentry = "m:P"\n[capabilities.scan]\n'
    reasons = {
        "slash": '[plugin]\nid = "a/b"\n' + rest,
        "newline": '[plugin]\nid = "x\\n"\n' + rest,
        "latin1": b'[plugin]\nid = "caf\xe9"\n',
    }
    for name, text in reasons.items():
        (tmp_path / name).mkdir()
        manifest = tmp_path / name / "plugin.toml"
        manifest.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, text = _run("--path", str(tmp_path))
    assert code == 1
    assert "1 plugin(s) would load, 3 would not" in text and "load  secrets-scanner" in text
    assert "FAIL  latin1" in text and "is not UTF-8" in text
    assert f"{tmp_path / 'slash'}\n" in text and "plugin id 'a/b' is invalid" in text
    assert "plugin id 'x\\n' is invalid (plugin.id)" in text  # the id's repr: no raw newline reaches the terminal
