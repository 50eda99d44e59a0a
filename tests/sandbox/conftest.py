"""Shared fixtures for the sandbox tests: which layers this machine has, and the CI rule.

A sandbox test that needs a layer this machine lacks is skipped locally but FAILS when ``CI`` is set:
a CI run that "passes" by skipping the sandbox proves nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _confined import FULL_STACK, Dirs

from plugin_pool.sandbox import _confine


@pytest.fixture(scope="session")
def layer_status() -> dict[str, _confine.LayerStatus]:
    """probe_layers() once per session (it spawns two short child processes)."""
    return _confine.probe_layers()


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: sandbox tests must not skip)")
    pytest.skip(reason)


@pytest.fixture
def skip_or_fail() -> Callable[[str], None]:
    """Call with a reason: skips locally, fails when the ``CI`` environment variable is set."""
    return _skip_or_fail


@pytest.fixture
def require_layers(layer_status: dict[str, _confine.LayerStatus]) -> Callable[..., None]:
    """Call with layer names; skips (or fails under CI) when one is unavailable here."""

    def require(*layers: str) -> None:
        missing = {name: layer_status[name].reason for name in layers if not layer_status[name].available}
        if missing:
            _skip_or_fail(f"sandbox layers unavailable here: {missing}")

    return require


@pytest.fixture
def dirs() -> Iterator[Dirs]:
    # Under /tmp with 0755, not pytest's 0700 tmp_path, so a worker dropped to uid 65534 can reach it.
    base = Path(tempfile.mkdtemp(prefix="plugin-pool-sandbox-"))
    try:
        base.chmod(0o755)
        made = Dirs(base, base / "plugin", base / "tmp", base / "sock", base / "outside", base / "outside" / "s")
        for path in (made.plugin, made.temp, made.sock, made.outside):
            path.mkdir(mode=0o755)
        made.secret.write_text("host secret")
        made.secret.chmod(0o644)
        (made.plugin / "plugin.py").write_text("VALUE = 1\n")
        (made.plugin / "link-to-secret").symlink_to(made.secret)
        yield made
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def full_stack(require_layers: Callable[..., None]) -> None:
    require_layers(*FULL_STACK, "seccomp_sockets")
