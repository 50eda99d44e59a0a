"""Private copies of plugin folders that sandbox workers load (host side).

Workers load a private read-only copy of the plugin folder, made when the plugin starts: readable by the
worker's uid wherever the folder lives, and the code that runs cannot change under a running plugin.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["STAGED_DIR", "stage_copy", "unstage_copy"]

STAGED_DIR = "plugins"
"""Where the copies live, under the pool's private directory."""


def stage_copy(base_dir: Path, name: str, source: Path) -> Path:
    """Copy ``source`` to ``base_dir/plugins/<name>``; return the copy. Blocks briefly.

    Directories become 0755 and files 0644, owned by the host: the worker uid can read them but not
    change them, wherever the original lives (a 0700 home, a temp dir). Symlinks are copied as links,
    so one that points outside still leads nowhere a worker may read (Landlock).
    """
    staged = base_dir / STAGED_DIR
    staged.mkdir(mode=0o711, exist_ok=True)
    target = staged / name
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for dirpath, _, filenames in os.walk(target):
        os.chmod(dirpath, 0o755)
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
    return target


def unstage_copy(base_dir: Path, staged: Path) -> None:
    """Remove a copy made by ``stage_copy`` (a no-op for any other path). Idempotent."""
    if staged.parent == base_dir / STAGED_DIR:
        shutil.rmtree(staged, ignore_errors=True)
