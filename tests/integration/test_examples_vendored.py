"""The vendored examples: real third-party scanners, unchanged, as Untrusted plugins, give exactly the results
of the same scanner called directly.

- examples/bandit_scanner: bandit (pure Python, loads its checks through stevedore entry points) and its
  dependencies, vendored into the plugin folder;
- examples/yara_scanner: yara-python, a C extension with a bundled shared library found through its rpath.

``scripts/test`` vendors both (``plugin-pool vendor``; a no-op once done, so later runs need no network); the
test extra installs the same versions into the test environment for the direct calls.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from plugin_pool import PluginHost
from plugin_pool._vendor import STAMP_NAME
from plugin_pool.lifecycle import PluginState

pytestmark = pytest.mark.sandbox

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PYTHON_SOURCES = [
    "import subprocess\nsubprocess.call('ls -l', shell=True)\n",
    "import pickle, hashlib\n\ndef load(b):\n    return pickle.loads(b)\n\nhashlib.md5(b'x').hexdigest()\n",
    "password = 'hunter2'\nimport yaml\nyaml.load(open('c.yml'))\nexec(input())\n",
    "import requests\nrequests.get('https://example.org', verify=False)\nassert True\n",
    "def add(a, b):\n    return a + b\n",
    "try:\n    import telnetlib\nexcept Exception:\n    pass\nimport tempfile\ntempfile.mktemp()\n",
]

YARA_INPUTS: list[bytes | str] = [
    "user=admin password = hunter2\naws AKIAABCDEFGHIJKLMNOP here",
    b"\x7fELF\x02\x01\x01" + b"\x00" * 64,
    "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----BEGIN RSA PRIVATE KEY-----",
    "nothing to see",
    b"",
]


def vendored(name: str) -> Path:
    folder = EXAMPLES / name
    stamp = folder / "_vendor" / STAMP_NAME
    if not stamp.is_file():  # never a skip: the suite must prove the example works
        pytest.fail(f"{folder}/_vendor is missing: run `plugin-pool vendor {folder}` (scripts/test does)")
    assert json.loads(stamp.read_text())["require_hashes"] is True
    return folder


@pytest.fixture
def started(open_host: Callable[..., PluginHost]) -> Iterator[Callable[[str], PluginHost]]:
    def start(name: str) -> PluginHost:
        folder = vendored(name)
        host = open_host()
        [plugin_id] = [host.add_plugin_dir(folder).id]
        state = host.start_plugin(plugin_id)
        assert state is PluginState.ACTIVE, host.get_plugin_health(plugin_id).reason
        return host

    yield start


# bandit 1.9.4 passes stevedore 5.10 an argument it deprecated: harmless, but the suite makes warnings errors.
@pytest.mark.filterwarnings("ignore:The verify_requirements argument:DeprecationWarning")
def test_bandit_in_the_sandbox_finds_exactly_what_bandit_finds(started: Callable[[str], PluginHost]) -> None:
    host = started("bandit_scanner")
    where = host.invoke("bandit-scanner", "where")
    # The vendored copy, from the host's private staged copy; not the test environment's bandit.
    assert "/_vendor/bandit/" in where["file"] and not where["file"].startswith(sys.prefix)
    assert not where["file"].startswith(str(EXAMPLES))
    findings = example_module("bandit_scanner").findings  # the example's own shaping of bandit's issues
    import bandit

    assert bandit.__version__ == where["version"]
    total = 0
    for source in PYTHON_SOURCES:
        with tempfile.NamedTemporaryFile("w", suffix=".py", encoding="utf-8") as fh:
            fh.write(source)
            fh.flush()
            direct = findings(fh.name)
        sandboxed = host.invoke("bandit-scanner", "scan", source)["findings"]
        assert sandboxed == direct, source
        total += len(direct)
    assert total >= 8  # the samples do trigger bandit: the comparison is not between two empty lists


def test_yara_in_the_sandbox_matches_exactly_what_yara_matches(started: Callable[[str], PluginHost]) -> None:
    host = started("yara_scanner")
    where = host.invoke("yara-scanner", "where")
    assert "/_vendor/yara" in where["file"] and not where["file"].startswith(sys.prefix)
    import yara

    rules = yara.compile(filepath=str(EXAMPLES / "yara_scanner" / "rules.yar"))
    shaped = example_module("yara_scanner").matches
    seen = 0
    for data in YARA_INPUTS:
        direct = shaped(rules, data.encode() if isinstance(data, str) else data)
        assert host.invoke("yara-scanner", "scan", data)["matches"] == direct, data
        seen += len(direct)
    assert seen == 4  # every rule matches somewhere: the comparison is not between empty lists


def example_module(name: str) -> Any:
    """The example's scanner.py, imported into the test process (to call the scanner directly, shaped alike)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "scanner.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
