"""The one entry loader: configured entries, entry points, Trusted folders' packages, and the worker's import."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from plugin_pool._loader import instantiate, load_entry, load_entry_point, resolve_entry

PLUGIN_SOURCE = textwrap.dedent(
    """
    class Scanner:
        made = 0

        def __init__(self):
            Scanner.made += 1

    class Outer:
        class Inner:
            pass

    instance = Scanner()
    """
)


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "scanner_plugin.py"
    path.write_text(PLUGIN_SOURCE)
    return path


def test_a_file_entry_is_imported_once_and_a_class_is_instantiated(plugin_file: Path) -> None:
    first = load_entry(f"{plugin_file}:Scanner")
    second = load_entry(f"{plugin_file}:Scanner")
    assert type(first) is type(second)  # one module, imported once
    assert first is not second  # each call makes a new instance of a class entry
    assert load_entry(f"{plugin_file}:instance") is resolve_entry(f"{plugin_file}:instance")
    assert isinstance(load_entry(f"{plugin_file}:Outer.Inner"), resolve_entry(f"{plugin_file}:Outer.Inner"))


def test_a_module_entry_resolves_through_the_import_system() -> None:
    assert resolve_entry("json:dumps") is __import__("json").dumps
    assert instantiate(len) is len


@pytest.mark.parametrize(
    ("entry", "error", "match"),
    [
        ("no_colon", ImportError, "expected 'module:attribute'"),
        ("json:", ImportError, "expected 'module:attribute'"),
        ("json:nothing_here", AttributeError, "entry 'json:nothing_here': json has no attribute"),
        ("/nowhere/missing.py:X", ImportError, "does not exist"),
        ("plugin_pool_no_such_module:X", ModuleNotFoundError, "plugin_pool_no_such_module"),
    ],
)
def test_bad_entries_raise_naming_the_entry(entry: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        load_entry(entry)


def test_a_package_entry_imports_the_module_inside_that_package(tmp_path: Path) -> None:
    (tmp_path / "rules.py").write_text("LIMIT = 3\n")
    (tmp_path / "main.py").write_text("from . import rules\n\nclass Plugin:\n    limit = rules.LIMIT\n")
    name = "plugin_pool_test_private_package"
    package = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(name, None, is_package=True))
    package.__path__ = [str(tmp_path)]
    sys.modules[name] = package
    try:
        assert load_entry("main:Plugin", package=name).limit == 3
    finally:
        for module in [m for m in sys.modules if m.startswith(name)]:
            del sys.modules[module]


def test_files_false_never_reads_a_path(plugin_file: Path) -> None:
    # The worker's manifests name modules; a ".py" target is then a module path, never a file to read.
    with pytest.raises(ModuleNotFoundError):
        load_entry(f"{plugin_file}:Scanner", files=False)


def test_an_entry_point_loads_through_the_same_resolution() -> None:
    assert (
        load_entry_point(EntryPoint(name="x", value="json:JSONDecoder", group="g")).__class__.__name__ == "JSONDecoder"
    )
    assert load_entry_point(EntryPoint(name="x", value="json", group="g")) is __import__("json")


def test_the_loader_imports_only_the_standard_library() -> None:
    code = (
        "import sys; import plugin_pool._loader; print(sorted(m for m in sys.modules if m.startswith('plugin_pool')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "['plugin_pool', 'plugin_pool._loader']"
