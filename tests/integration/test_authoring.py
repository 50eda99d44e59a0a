"""A plugin author's path: ``plugin-pool new`` (a folder that passes its own test at once), ``plugin-pool vendor``
(dependencies inside the folder, hashes required) and ``PluginHarness.from_folder`` (a folder tested through the
real sandbox, with its pytest fixture)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from plugin_pool import ManifestError, PayloadError, PluginCallError, VendorError
from plugin_pool._vendor import vendor_plugin
from plugin_pool.cli import main
from plugin_pool.content import compute_content_hash
from plugin_pool.testing import PluginHarness

pytestmark = pytest.mark.sandbox

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("trust", ["untrusted", "trusted"])
def test_a_new_plugin_passes_its_own_test_at_once(tmp_path: Path, trust: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert (
        main(
            ["--log-format", "none", "new", "word-counter", "--trust", trust, "--dir", str(tmp_path)], out=out, err=err
        )
        == 0
    )
    folder = tmp_path / "word_counter"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "plugin.toml",
        "test_word_counter.py",
        "word_counter.py",
    ]
    assert f'trust_level = "{trust}"' in (folder / "plugin.toml").read_text()
    # Its own test, in a fresh interpreter, as the author would run it (the sandbox for an Untrusted plugin).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(folder)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("4 passed" if trust == "untrusted" else "2 passed") in done.stdout.splitlines()[-1]
    # The folder is a valid plugin folder as written (the test's own caches aside).
    assert "word_counter.py" in compute_content_hash(folder).files


def test_new_refuses_an_invalid_name_and_an_existing_folder(tmp_path: Path) -> None:
    err = io.StringIO()
    assert main(["--log-format", "none", "new", "Bad Name", "--dir", str(tmp_path)], out=io.StringIO(), err=err) == 2
    assert "is not a valid plugin id" in err.getvalue()
    assert main(["--log-format", "none", "new", "twice", "--dir", str(tmp_path)], out=io.StringIO(), err=err) == 0
    assert main(["--log-format", "none", "new", "twice", "--dir", str(tmp_path)], out=io.StringIO(), err=err) == 2
    assert "already exists" in err.getvalue()


def test_from_folder_drives_a_folder_through_the_real_sandbox(
    plugin_folder_harness: Callable[..., PluginHarness],
) -> None:
    harness = plugin_folder_harness(EXAMPLES / "secrets_scanner", sandbox={"min_workers": 1, "max_workers": 1})
    assert harness.plugin is None and harness.plugin_id == "secrets-scanner"
    found = harness.invoke("scan", "password = hunter2")["findings"]
    assert [f["rule"] for f in found] == ["password_assignment"]
    # What production sees: a worker process of its own, and only values that cross the boundary.
    [pid] = harness.host.list_worker_pids("secrets-scanner")
    assert pid != os.getpid()
    with pytest.raises(PayloadError, match="finite"):
        harness.invoke("scan", float("inf"))
    with pytest.raises(PluginCallError):
        harness.invoke("scan", 12)
    assert harness.invoke_many("scan", ["a", "b"]) == [{"findings": []}, {"findings": []}]


def test_from_folder_refuses_a_folder_without_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no plugin\.toml"):
        PluginHarness.from_folder(tmp_path)


# -- vendor -----------------------------------------------------------------------------------------------------


def plugin_with(tmp_path: Path, python: str) -> Path:
    folder = tmp_path / "dep_user"
    folder.mkdir()
    (folder / "plugin.toml").write_text(
        '[plugin]\nid = "dep-user"\nname = "D"\nversion = "1"\ntrust_level = "untrusted"\nentry = "m:P"\n'
        "[capabilities.scan]\n" + python
    )
    (folder / "m.py").write_text("")
    return folder


def test_vendor_without_requirements_says_what_to_add(tmp_path: Path) -> None:
    folder = plugin_with(tmp_path, "")
    with pytest.raises(VendorError, match=r"has no \[python\] requirements") as raised:
        vendor_plugin(folder)
    assert raised.value.path == folder


def test_vendor_refuses_requirements_without_hashes_and_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    folder = plugin_with(tmp_path, '[python]\npath = ["_vendor"]\nrequirements = ["six"]\n')
    (folder / "_vendor").mkdir()
    (folder / "_vendor" / "kept.py").write_text("KEPT = True\n")
    before = compute_content_hash(folder)
    with pytest.raises(VendorError, match=r"--require-hashes|pinned") as raised:
        vendor_plugin(folder)
    assert "fix:" in str(raised.value)
    assert compute_content_hash(folder) == before  # nothing half-installed, nothing left behind
    assert sorted(p.name for p in folder.iterdir()) == ["_vendor", "m.py", "plugin.toml"]


def test_vendor_is_a_no_op_when_the_stamp_matches(capsys: pytest.CaptureFixture[str]) -> None:
    folder = EXAMPLES / "yara_scanner"
    before = compute_content_hash(folder)
    result = vendor_plugin(folder)  # vendored by scripts/test: no network, nothing written
    assert not result.installed and result.distributions == ("yara_python-4.5.4",)
    assert result.content_digest == before.digest == compute_content_hash(folder).digest
