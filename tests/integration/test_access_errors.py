"""A worker that cannot read or map a file says which sandbox layer refused and the fix, in the error the host
shows: outside its paths (private root / Landlock), a file mode its uid cannot read, a read-only path, a library
the dynamic loader cannot find in its root, a sys.path folder it cannot see. Real confined workers."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from plugin_pool import PluginCallError, PluginHost
from plugin_pool.lifecycle import PluginState

pytestmark = pytest.mark.sandbox

PROBE = """\
import ctypes
import os

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability


class Probe(PluginBase):
    info = PluginInfo(id="{plugin_id}", name="P", version="1", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def probe(self, payload):
        op, path = payload["op"], payload.get("path")
        if op == "read":
            with open(path, "rb") as fh:
                return len(fh.read())
        if op == "write":
            with open(path, "w") as fh:
                fh.write("x")
            return True
        if op == "dlopen":
            ctypes.CDLL(path)
            return True
        return os.getpid()
"""


def folder_of(parent: Path, plugin_id: str, code: str = PROBE) -> Path:
    folder = parent / plugin_id
    folder.mkdir()
    (folder / "probe.py").write_text(code.format(plugin_id=plugin_id))
    (folder / "plugin.toml").write_text(
        textwrap.dedent(
            f"""\
            [plugin]
            id = "{plugin_id}"
            name = "P"
            version = "1"
            trust_level = "untrusted"
            entry = "probe:Probe"

            [capabilities.probe]

            [pool]
            min_workers = 1
            max_workers = 1
            """
        )
    )
    return folder


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """An operator's shared tree (extra_read_paths) with a world-readable file, a 0600 file and a 0600 library."""
    tree = tmp_path / "shared"
    tree.mkdir(mode=0o755)
    (tree / "open.txt").write_text("readable")
    (tree / "open.txt").chmod(0o644)
    (tree / "private.txt").write_text("umask 077")
    (tree / "private.txt").chmod(0o600)
    spec = importlib.util.find_spec("_ctypes")  # any shared object of the runtime, copied with mode 0600
    assert spec is not None and spec.origin is not None
    library = Path(spec.origin)
    shutil.copyfile(library, tree / "libprivate.so")
    (tree / "libprivate.so").chmod(0o600)
    return tree


@pytest.fixture
def probe(open_host: Callable[..., PluginHost], tmp_path: Path, shared: Path) -> Callable[..., str]:
    host = open_host({"extra_read_paths": (str(shared),), "bytecode_cache": "off"})
    host.add_plugin_dir(folder_of(tmp_path, "probe"))
    assert host.start_plugin("probe") is PluginState.ACTIVE, host.get_plugin_health("probe").reason

    def refused(op: str, path: str) -> str:
        with pytest.raises(PluginCallError) as raised:
            host.invoke("probe", "probe", {"op": op, "path": path})
        return raised.value.remote_message

    return refused


def test_a_file_outside_the_workers_paths_names_the_private_root_and_the_fix(probe: Callable[..., str]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="plugin-pool-access-", dir="/var/tmp"))
    try:
        secret = folder / "elsewhere.txt"
        secret.write_text("host file")
        secret.chmod(0o644)
        message = probe("read", str(secret))
    finally:
        shutil.rmtree(folder)
    assert "No such file" in message  # the original error stays first
    assert f"{secret} is outside the worker's read-only paths" in message
    assert "private root (mount namespace)" in message and "extra_read_paths" in message and "vendor" in message


def test_a_host_file_under_tmp_names_the_workers_private_tmp(probe: Callable[..., str], tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("host file")
    secret.chmod(0o644)
    message = probe("read", str(secret))
    assert "No such file" in message and "is not in the worker's /tmp: that is a private tmpfs of its own" in message


def test_a_file_its_uid_cannot_read_names_the_file_mode_and_the_fix(probe: Callable[..., str], shared: Path) -> None:
    message = probe("read", str(shared / "private.txt"))
    assert "Permission denied" in message
    assert "file mode" in message and "mode 0600 and owner 0:0" in message and "chmod -R a+rX" in message


def test_writing_in_a_read_only_path_names_it_and_the_fix(probe: Callable[..., str], shared: Path) -> None:
    message = probe("write", str(shared / "open.txt"))
    assert "is in a read-only path" in message and "/tmp" in message


def test_a_library_mapped_by_path_with_mode_0600_names_the_file_mode(probe: Callable[..., str], shared: Path) -> None:
    message = probe("dlopen", str(shared / "libprivate.so"))
    assert "cannot open shared object file" in message
    assert "file mode" in message and "libprivate.so has mode 0600" in message


def test_a_library_not_in_the_root_names_the_dynamic_loader(probe: Callable[..., str]) -> None:
    message = probe("dlopen", "libplugin_pool_absent.so.7")
    assert "cannot open shared object file" in message
    assert "dynamic loader found no libplugin_pool_absent.so.7" in message and "bundles it" in message


def test_a_plugin_whose_import_path_leaves_the_root_fails_naming_the_layer(
    open_host: Callable[..., PluginHost], tmp_path: Path
) -> None:
    # An editable install or a .pth pointing outside site-packages puts such a folder on sys.path.
    outside = tmp_path / "src_checkout"
    outside.mkdir(mode=0o755)
    (outside / "helper_dep.py").write_text("VALUE = 1\n")
    code = f"import sys\nsys.path.append({str(outside)!r})\nimport helper_dep\n" + PROBE
    host = open_host({"bytecode_cache": "off"})
    host.add_plugin_dir(folder_of(tmp_path, "importer", code))
    assert host.start_plugin("importer") is PluginState.FAILED
    reason = host.get_plugin_health("importer").reason or ""
    assert "No module named 'helper_dep'" in reason
    assert "sys.path names folders the worker cannot see" in reason and str(outside) in reason
