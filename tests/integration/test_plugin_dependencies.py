"""An Untrusted plugin's own dependencies: ``[python] path`` folders inside its verified copy, bytecode the host
compiled once per content hash, and an operator's ``[sandbox] extra_read_paths``.

Real hosts, real zygotes, real confined workers.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from plugin_pool import PluginHost
from plugin_pool.lifecycle import PluginState
from plugin_pool.staging import BytecodeCache

pytestmark = pytest.mark.sandbox

PLUGIN = """\
from __future__ import annotations

import os
import sys

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Deps(PluginBase):
    info = PluginInfo(id="{plugin_id}", name="Deps", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability("probe")
    def probe(self, payload):
        if payload.get("shared"):
            sys.path.append(payload["shared"])
            import shared_dep

            return {{"shared": shared_dep.VALUE}}
        import vendored_dep

        return {{
            "value": vendored_dep.VALUE,
            "file": vendored_dep.__file__,
            "cached": vendored_dep.__cached__,
            "cached_exists": os.path.exists(vendored_dep.__cached__),
            "path": [p for p in sys.path if "_vendor" in p],
        }}
"""


def write_plugin(parent: Path, plugin_id: str, *, python_path: bool = True) -> Path:
    folder = parent / plugin_id
    (folder / "_vendor" / "vendored_dep").mkdir(parents=True)
    (folder / "_vendor" / "vendored_dep" / "__init__.py").write_text("VALUE = 'from the vendored copy'\n")
    (folder / "deps_plugin.py").write_text(PLUGIN.format(plugin_id=plugin_id))
    table = '\n[python]\npath = ["_vendor"]\n' if python_path else ""
    (folder / "plugin.toml").write_text(
        textwrap.dedent(
            f"""\
            [plugin]
            id = "{plugin_id}"
            name = "Deps"
            version = "1.0.0"
            trust_level = "untrusted"
            entry = "deps_plugin:Deps"

            [capabilities.probe]

            [pool]
            min_workers = 1
            max_workers = 1
            """
        )
        + table
    )
    return folder


def private_cache(tmp_path: Path) -> str:
    cache = tmp_path / "bytecode"
    cache.mkdir(mode=0o700)
    return str(cache)


def test_a_vendored_dependency_loads_from_the_verified_copy_with_host_compiled_bytecode(
    open_host: Callable[..., PluginHost], tmp_path: Path
) -> None:
    folder = write_plugin(tmp_path, "deps-vendored")
    host = open_host({"bytecode_cache": private_cache(tmp_path)})
    host.add_plugin_dir(folder)
    assert host.start_plugin("deps-vendored") is PluginState.ACTIVE, host.get_plugin_health("deps-vendored").reason
    seen = host.invoke("deps-vendored", "probe", {})
    assert seen["value"] == "from the vendored copy"
    # Imported from the staged copy (never from the author's folder), with the bytecode the host compiled there.
    assert not seen["file"].startswith(str(folder))
    assert seen["file"].endswith("_vendor/vendored_dep/__init__.py")
    assert seen["cached_exists"] is True
    assert seen["path"] == [seen["file"].rsplit("/vendored_dep/", 1)[0]]


def test_without_python_path_the_vendored_folder_is_not_importable(
    open_host: Callable[..., PluginHost], tmp_path: Path
) -> None:
    folder = write_plugin(tmp_path, "deps-no-path", python_path=False)
    host = open_host({"bytecode_cache": "off"})
    host.add_plugin_dir(folder)
    assert host.start_plugin("deps-no-path") is PluginState.ACTIVE
    from plugin_pool import PluginCallError

    with pytest.raises(PluginCallError, match="vendored_dep"):
        host.invoke("deps-no-path", "probe", {})


def test_a_restart_takes_the_bytecode_from_the_cache_instead_of_compiling(
    open_host: Callable[..., PluginHost], tmp_path: Path
) -> None:
    folder = write_plugin(tmp_path, "deps-restart")
    cache_dir = private_cache(tmp_path)
    host = open_host({"bytecode_cache": cache_dir})
    host.add_plugin_dir(folder)
    assert host.start_plugin("deps-restart") is PluginState.ACTIVE
    first = Path(host.invoke("deps-restart", "probe", {})["cached"])
    cache = host.sandbox.supervisor.bytecode_cache if host.sandbox is not None else None
    assert isinstance(cache, BytecodeCache) and cache.usable
    entries = [e for e in next(Path(cache_dir).iterdir()).iterdir() if not e.name.startswith(".")]
    assert len(entries) == 1, entries
    cached = entries[0] / "_vendor" / "vendored_dep" / "__pycache__" / first.name
    assert cached.is_file()
    host.stop_plugin("deps-restart")
    assert host.start_plugin("deps-restart") is PluginState.ACTIVE
    second = Path(host.invoke("deps-restart", "probe", {})["cached"])
    # A new private copy, whose bytecode is the cache's own file (a hard link), not a new compilation.
    assert second != first
    assert os.stat(_on_host(host, second)).st_ino == os.stat(cached).st_ino


def test_extra_read_paths_lets_workers_read_an_operators_shared_tree(
    open_host: Callable[..., PluginHost], tmp_path: Path
) -> None:
    shared = tmp_path / "shared-tree"
    shared.mkdir(mode=0o755)
    (shared / "shared_dep.py").write_text("VALUE = 'shared by the operator'\n")
    (shared / "shared_dep.py").chmod(0o644)
    folder = write_plugin(tmp_path, "deps-shared")

    refused = open_host({"bytecode_cache": "off"})
    refused.add_plugin_dir(folder)
    assert refused.start_plugin("deps-shared") is PluginState.ACTIVE
    from plugin_pool import PluginCallError

    with pytest.raises(PluginCallError, match="shared_dep"):
        refused.invoke("deps-shared", "probe", {"shared": str(shared)})

    allowed = open_host({"bytecode_cache": "off", "extra_read_paths": (str(shared),)})
    allowed.add_plugin_dir(folder)
    assert allowed.start_plugin("deps-shared") is PluginState.ACTIVE
    assert allowed.invoke("deps-shared", "probe", {"shared": str(shared)}) == {"shared": "shared by the operator"}


def _on_host(host: PluginHost, inside: Path) -> Path:
    """The host's path of a file a worker names: the staged copies are bound at the same path."""
    assert host.sandbox is not None and host.sandbox.supervisor.base_dir is not None
    assert str(inside).startswith(str(host.sandbox.supervisor.base_dir))
    return inside


@pytest.mark.parametrize("link", ["to_a_file_outside", "to_etc_shadow"])
def test_a_symlink_in_a_folder_never_reaches_a_worker_even_unverified(
    open_host: Callable[..., PluginHost], tmp_path: Path, link: str
) -> None:
    # The copy workers load is made by the one reader of plugin folders, which refuses links whatever the
    # caller asked to verify: the old copytree copied them (a link that Landlock then had to stop).
    folder = write_plugin(tmp_path, f"deps-link-{link.replace('_', '-')}")
    outside = tmp_path / "secret.txt"
    outside.write_text("host secret")
    (folder / "_vendor" / "leak").symlink_to(outside if link == "to_a_file_outside" else Path("/etc/shadow"))
    host = open_host({"bytecode_cache": "off"})
    info = host.add_plugin_dir(folder, verify_content=False)
    assert host.start_plugin(info.id) is PluginState.FAILED
    reason = host.get_plugin_health(info.id).reason or ""
    assert "_vendor/leak" in reason and "symbolic link" in reason and str(folder) in reason
    assert host.list_worker_pids(info.id) == []
