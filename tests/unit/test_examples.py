"""The bundled examples, tested the way their README tells a plugin author to test them."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import pytest

from plugin_pool.cli import main
from plugin_pool.testing import PluginHarness

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(relative: str) -> ModuleType:
    path = EXAMPLES / relative
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_greets() -> None:  # the test in examples/hello_world/README.md, as written there
    HelloWorld = _load("hello_world/plugin.py").HelloWorld
    with PluginHarness(HelloWorld(), config={"greeting": "Hi"}) as harness:
        assert harness.invoke("greet", "Ada") == "Hi, Ada!"
        assert harness.invoke("scan", "two words") == {"words": 2, "lines": 1}
    assert harness.states[-1] == "stopped"


def test_keyword_policy_finds_and_decides() -> None:
    KeywordPolicy = _load("keyword_policy/plugin.py").KeywordPolicy
    with PluginHarness(KeywordPolicy(), config={"keywords": ["token"]}) as harness:
        assert harness.invoke("scan", "my Token here") == {"findings": [{"keyword": "token", "offset": 3}]}
        assert harness.invoke("evaluate_policy", "nothing") == {"decision": "allow", "reasons": []}
        assert harness.health.stats is not None and harness.health.stats.calls == 2  # Trusted: monitored


def test_the_demo_configuration_runs_all_three_trust_levels(capsys: pytest.CaptureFixture[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["--log-format", "none", "run", str(EXAMPLES / "demo.toml"), "--calls", "200", "--quiet", "--strict"],
        out=out,
        err=err,
    )
    assert code == 0, out.getvalue() + err.getvalue()
    rows = {line.split()[0]: line.split() for line in out.getvalue().splitlines() if line[:1].isalpha()}
    for plugin_id, level in (
        ("hello-world", "builtin"),
        ("keyword-policy", "trusted"),
        ("secrets-scanner", "untrusted"),
    ):
        assert rows[plugin_id][1:4] == [level, "active", "200"], out.getvalue()
