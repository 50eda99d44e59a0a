"""The package's public surface is exactly ``__all__``, and importing the package loads nothing heavy."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap

import pytest

import plugin_pool


def lazily_exported_names() -> set[str]:
    return set(plugin_pool._WHERE) | {"__version__"}


def test_all_is_sorted_and_has_no_duplicates() -> None:
    assert plugin_pool.__all__ == sorted(set(plugin_pool.__all__))


def test_all_is_exactly_the_lazily_exported_names() -> None:
    assert set(plugin_pool.__all__) == lazily_exported_names()


@pytest.mark.parametrize("name", plugin_pool.__all__)
def test_every_public_name_resolves_to_the_object_of_its_module(name: str) -> None:
    value = getattr(plugin_pool, name)
    assert value is not None
    if name != "__version__":
        module = sys.modules[plugin_pool._WHERE[name]]
        assert getattr(module, name) is value


@pytest.mark.parametrize("module_name", sorted(plugin_pool._EXPORTS))
def test_every_export_is_public_in_its_module(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = plugin_pool._EXPORTS[module_name]
    if hasattr(module, "__all__"):
        assert set(names) <= set(module.__all__)
    else:  # no __all__: every export must at least be defined there, not imported from elsewhere
        assert {n: getattr(module, n).__module__ for n in names} == dict.fromkeys(names, module_name)


def test_dir_lists_exactly_all() -> None:
    assert dir(plugin_pool) == sorted(plugin_pool.__all__)


def test_unknown_attribute_raises_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = plugin_pool.NoSuchThing  # type: ignore[attr-defined]


def test_version_is_the_distribution_version() -> None:
    from importlib.metadata import version

    assert plugin_pool.__version__ == version("plugin_pool")


def loaded_modules_after(code: str) -> set[str]:
    """Run ``code`` in a fresh interpreter and return the names in its sys.modules afterwards."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


HEAVY = ("plugin_pool.host", "plugin_pool.registry", "plugin_pool.sandbox", "grpc", "psycopg", "orjson")


def test_importing_the_package_loads_no_host_registry_or_driver() -> None:
    loaded = loaded_modules_after("import plugin_pool")
    assert "plugin_pool" in loaded
    assert sorted(m for m in loaded if m.startswith(HEAVY)) == []


def test_plugin_author_names_load_no_host_registry_or_driver() -> None:
    loaded = loaded_modules_after(
        "from plugin_pool import PluginBase, PluginInfo, TrustLevel, capability, PluginState, load_config"
    )
    assert "plugin_pool.sdk" in loaded
    assert sorted(m for m in loaded if m.startswith(HEAVY)) == []


def test_host_name_loads_the_host_but_no_database_driver() -> None:
    loaded = loaded_modules_after("from plugin_pool import PluginHost")
    assert "plugin_pool.host" in loaded
    assert sorted(m for m in loaded if m.startswith(("psycopg", "grpc"))) == []
