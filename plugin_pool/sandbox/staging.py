"""Private copies of plugin folders that sandbox workers load (host side).

Workers load a private read-only copy of the plugin folder, made while the plugin is Loading by
:func:`plugin_pool.staging.stage_plugin`: copied and hashed in one pass (every file opened
``O_NOFOLLOW|O_NONBLOCK``; symlinks, fifos, sockets, devices and stray bytecode refused; the ``[discovery]``
limits enforced), compared with the hash registered at discovery, then given bytecode compiled by the host in
an isolated child (or restored from the bytecode cache when it holds the copy's digest). Directories 0755 and
files 0644, owned by the host: readable by the worker's uid wherever the folder lives, and the code that runs
cannot change under a running plugin.
"""

from __future__ import annotations

import os
from pathlib import Path

from plugin_pool.config import SandboxConfig
from plugin_pool.sandbox.worker_client import WorkerPlan
from plugin_pool.staging import BytecodeCache, remove_staged
from plugin_pool.staging import stage_plugin as stage_verified_copy

__all__ = ["STAGED_DIR", "bytecode_cache_for", "is_staged", "stage_copy", "unstage_copy"]

STAGED_DIR = "plugins"
"""Where the copies live, under the pool's private directory."""


def stage_copy(base_dir: Path, name: str, plan: WorkerPlan, bytecode_cache: BytecodeCache | None) -> Path:
    """Make the verified copy of ``plan.plugin_dir`` at ``base_dir/plugins/<name>``; return it. Blocks.

    Raises ContentHashMismatchError, IntegrityRejectedError (both naming the plugin's folder, never the
    copy) or StagingError; nothing is left behind then.
    """
    staged = base_dir / STAGED_DIR
    staged.mkdir(mode=0o711, exist_ok=True)
    copy = stage_verified_copy(
        plan.plugin_dir,
        staged / name,
        plugin_id=plan.plugin_id,
        expected=plan.content_hash,
        limits=plan.limits,
        precompile=True,
        bytecode_cache=bytecode_cache,
    )
    return copy.path


def is_staged(base_dir: Path, path: Path) -> bool:
    """Whether ``path`` is a copy made by ``stage_copy``. No side effects."""
    return path.parent == base_dir / STAGED_DIR


def unstage_copy(base_dir: Path, staged: Path) -> None:
    """Remove a copy made by ``stage_copy`` (a no-op for any other path). Idempotent."""
    if is_staged(base_dir, staged):
        remove_staged(staged)


def bytecode_cache_for(config: SandboxConfig, runtime_dir: Path) -> BytecodeCache | None:
    """The bytecode cache ``[sandbox] bytecode_cache`` names (None for 'off'), opened (checked)."""
    where = config.bytecode_cache
    if where == "off":
        return None
    cache = BytecodeCache(runtime_dir / f"bytecode-{os.geteuid()}" if where == "auto" else Path(where))
    cache.open()
    return cache
