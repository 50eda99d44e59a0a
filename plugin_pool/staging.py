"""Private, verified copies of plugin folders: what the host imports (Trusted) and workers load (Untrusted).

One call, :func:`stage_plugin`, copies a plugin folder to a destination private to the host and hashes
the same bytes in one pass (:func:`plugin_pool.content.hash_and_copy`: the one reader of plugin folders),
then compares the digest with the hash registered at discovery. Nothing is read twice, so there is no
window between check and use: the copy holds exactly the bytes that were hashed, and they match what
was registered (and, for a Trusted folder, signed). Then, by choice of the caller (``precompile``, or a
separate call), the host compiles
bytecode inside the copy (:func:`compile_bytecode`), so the bytecode that runs was made by the host from
verified sources and never comes from the plugin folder.

Errors name the plugin's own folder, never the private copy:

- ``ContentHashMismatchError`` (``kind`` ``hash_mismatch``): the files differ from the registered hash
  (changed, added or removed files named); the host audits ``hash_mismatch``;
- ``IntegrityRejectedError`` (``kind`` one of ``REJECTION_KINDS``: ``symlink``, ``special_file``,
  ``bytecode``, size and count limits, ``unreadable`` ...), with ``file``, ``reason`` and ``fix``; the host
  audits ``integrity_rejected``; both count in ``plugin_integrity_rejections_total{kind}``;
- ``StagingError``: the host could not write the copy (disk full): not the plugin's doing.

Both the host (Trusted imports) and the sandbox supervisor (Untrusted folders) call this module, at the
layer of discovery; it imports nothing of either.
"""

from __future__ import annotations

import os
import py_compile
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from plugin_pool.content import DIR_MODE, FILE_MODE, ContentHash, FolderLimits, hash_and_copy
from plugin_pool.errors import ContentHashMismatchError

__all__ = ["CompileReport", "StagedPlugin", "compile_bytecode", "remove_staged", "stage_plugin"]

_COMPILE_TIMEOUT_S = 120.0
_COMPILE_MEMORY_BYTES = 2 << 30
# Run by ``sys.executable -I`` (no site, no environment, no user code on the path): compile each listed
# source into its own __pycache__, report failures as "rel NUL message" lines on stdout.
_COMPILER = r"""
import os, py_compile, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
root = sys.argv[1]
mode = py_compile.PycInvalidationMode.TIMESTAMP
for rel in sys.stdin.buffer.read().decode("utf-8", "surrogateescape").split("\0"):
    if rel:
        try:
            py_compile.compile(os.path.join(root, rel), doraise=True, invalidation_mode=mode)
        except py_compile.PyCompileError as exc:
            line = (rel + "\0" + str(exc.msg).replace("\n", " ")).encode("utf-8", "surrogateescape")
            sys.stdout.buffer.write(line + b"\n")
"""


@dataclass(frozen=True, slots=True)
class StagedPlugin:
    """A verified private copy of a plugin folder.

    ``path`` is the copy (what to import or hand to workers), ``source`` the plugin's folder (what every
    message names), ``content_hash`` the hash of exactly the bytes in the copy.
    """

    plugin_id: str
    source: Path
    path: Path
    content_hash: ContentHash


@dataclass(frozen=True, slots=True)
class CompileReport:
    """What :func:`compile_bytecode` did: sources compiled, and the ones that did not compile with why.

    A source that does not compile is not an integrity problem: importing it raises the same error later,
    where the plugin's load fails with it.
    """

    compiled: int
    failed: tuple[tuple[str, str], ...] = ()


def stage_plugin(
    source: Path | str,
    destination: Path | str,
    *,
    plugin_id: str,
    expected: ContentHash | None,
    limits: FolderLimits | None = None,
    precompile: bool = False,
    isolated_compile: bool = True,
) -> StagedPlugin:
    """Copy the plugin folder ``source`` to ``destination``, hashing the same bytes; verify against ``expected``.

    ``destination`` must not exist and its parent should be private to the host (a ``mkdtemp`` folder,
    the supervisor's base directory). ``source`` is the folder discovery read (``manifest.directory``);
    if it, or anything in it, is now a symlink, a fifo, a socket or a device, staging refuses it. With
    ``expected`` None nothing is compared (only for folders the caller prepared itself). With ``precompile``
    the host then compiles bytecode into the copy (:func:`compile_bytecode`, ``isolated_compile`` says
    how). The copy ends with folders 0755 and files 0644, owned by this process, readable by a worker
    uid and writable by none.

    Returns the StagedPlugin. Raises ContentHashMismatchError, IntegrityRejectedError (see the module)
    or StagingError; on any error nothing is left at ``destination``. Blocks on reading and writing the
    folder (and compiling); not safe to call twice with one destination.
    """
    folder, target = Path(source), Path(destination)
    actual = hash_and_copy(folder, target, limits=limits, plugin_id=plugin_id)
    try:
        if expected is not None and actual.digest != expected.digest:
            raise ContentHashMismatchError(plugin_id, folder, expected, actual)
        staged = StagedPlugin(plugin_id=plugin_id, source=folder, path=target, content_hash=actual)
        if precompile:
            compile_bytecode(staged, isolated=isolated_compile)
        os.chmod(target, DIR_MODE)
    except BaseException:
        remove_staged(target)
        raise
    return staged


def compile_bytecode(
    staged: StagedPlugin, *, isolated: bool = True, timeout_s: float = _COMPILE_TIMEOUT_S
) -> CompileReport:
    """Compile every hashed ``.py`` of a staged copy into its ``__pycache__`` (timestamp-checked .pyc).

    Runs in the host: ``isolated=True`` (the default, and the choice for Untrusted code) compiles in a
    short-lived ``sys.executable -I`` child under a 2 GiB address-space limit and ``timeout_s``, so a
    hostile source that crashes or exhausts the compiler cannot harm the host; ``isolated=False``
    compiles in this process (for Trusted code, which runs in-process anyway). Both compile at
    optimization level 0 (what ``python -I`` workers and a plain host import). Caches written are 0644
    in 0755 folders. A compiler that crashes or times out fails every source it did not report on;
    nothing raises for a source that does not compile. Blocks; safe to call twice (recompiles).
    """
    sources = sorted(rel for rel in staged.content_hash.files if rel.endswith(".py"))
    if not sources:
        return CompileReport(compiled=0)
    failed = _compile_in_child(staged.path, sources, timeout_s) if isolated else _compile_here(staged.path, sources)
    _fix_cache_modes(staged.path, sources)
    return CompileReport(compiled=len(sources) - len(failed), failed=tuple(sorted(failed.items())))


def _compile_here(root: Path, sources: Sequence[str]) -> dict[str, str]:
    failed: dict[str, str] = {}
    for rel in sources:
        try:
            py_compile.compile(
                str(root / rel), doraise=True, optimize=0, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP
            )
        except py_compile.PyCompileError as exc:
            failed[rel] = str(exc.msg)
    return failed


def _compile_in_child(root: Path, sources: Sequence[str], timeout_s: float) -> dict[str, str]:
    listing = "\0".join(sources).encode("utf-8", "surrogateescape")
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _COMPILER, str(root), str(_COMPILE_MEMORY_BYTES)],
            input=listing,
            capture_output=True,
            timeout=timeout_s,
            check=False,
            close_fds=True,
        )
    except subprocess.TimeoutExpired:
        return dict.fromkeys(sources, f"bytecode compilation did not finish within {timeout_s:g} s")
    failed: dict[str, str] = {}
    for line in done.stdout.splitlines():
        rel, _, message = line.decode("utf-8", "surrogateescape").partition("\0")
        failed[rel] = message
    if done.returncode != 0:
        why = f"the bytecode compiler exited with code {done.returncode}"
        for rel in sources:
            if not _cache_of(root, rel).is_file():
                failed.setdefault(rel, why)
    return failed


def _cache_of(root: Path, rel: str) -> Path:
    source = root / rel
    return source.parent / "__pycache__" / f"{source.stem}.{sys.implementation.cache_tag}.pyc"


def _fix_cache_modes(root: Path, sources: Sequence[str]) -> None:
    """Make every cache folder 0755 and cache file 0644 (the compiler honours the umask, which may be narrower)."""
    for folder in {(root / rel).parent / "__pycache__" for rel in sources}:
        if not folder.is_dir():
            continue
        os.chmod(folder, DIR_MODE)
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False):
                os.chmod(entry.path, FILE_MODE)


def remove_staged(path: Path | str) -> None:
    """Remove a staged copy (or a partial one). Idempotent; blocks on deleting the files."""
    shutil.rmtree(path, ignore_errors=True)
