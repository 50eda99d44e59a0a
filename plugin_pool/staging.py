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

Bytecode is compiled once per content hash: a :class:`BytecodeCache` (a folder only the host's uid may
write) keeps what :func:`compile_bytecode` made for a verified copy under the copy's digest, and restores it
into the next copy with the same digest, so a plugin started again, or by a restarted host, does not compile
again. The caches are unchecked hash-based ``.pyc`` files (PEP 552): a copy never changes once staged, and
the digest that keys the cache covers every source byte, so nothing needs checking at import time.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import py_compile
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from plugin_pool.content import DIR_MODE, FILE_MODE, ContentHash, FolderLimits, hash_and_copy
from plugin_pool.errors import ContentHashMismatchError

__all__ = ["BytecodeCache", "CompileReport", "StagedPlugin", "compile_bytecode", "remove_staged", "stage_plugin"]

_log = logging.getLogger("plugin_pool.staging")

_COMPILE_TIMEOUT_S = 120.0
_COMPILE_MEMORY_BYTES = 2 << 30
# Run by ``sys.executable -I`` (no site, no environment, no user code on the path): compile each listed
# source into its own __pycache__, report failures as "rel NUL message" lines on stdout.
_COMPILER = r"""
import os, py_compile, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
root = sys.argv[1]
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
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
    bytecode: CompileReport | None = None
    """What compiling (or the cache) gave the copy, when ``stage_plugin`` was asked to precompile."""


@dataclass(frozen=True, slots=True)
class CompileReport:
    """What :func:`compile_bytecode` did: sources compiled, and the ones that did not compile with why.

    A source that does not compile is not an integrity problem: importing it raises the same error later,
    where the plugin's load fails with it. ``from_cache`` is True when a :class:`BytecodeCache` supplied
    the bytecode instead of the compiler.
    """

    compiled: int
    failed: tuple[tuple[str, str], ...] = ()
    from_cache: bool = False


def stage_plugin(
    source: Path | str,
    destination: Path | str,
    *,
    plugin_id: str,
    expected: ContentHash | None,
    limits: FolderLimits | None = None,
    precompile: bool = False,
    isolated_compile: bool = True,
    bytecode_cache: BytecodeCache | None = None,
) -> StagedPlugin:
    """Copy the plugin folder ``source`` to ``destination``, hashing the same bytes; verify against ``expected``.

    ``destination`` must not exist and its parent should be private to the host (a ``mkdtemp`` folder,
    the supervisor's base directory). ``source`` is the folder discovery read (``manifest.directory``);
    if it, or anything in it, is now a symlink, a fifo, a socket or a device, staging refuses it. With
    ``expected`` None nothing is compared (only for folders the caller prepared itself). With ``precompile``
    the host then compiles bytecode into the copy (:func:`compile_bytecode`, ``isolated_compile`` says
    how), or restores it from ``bytecode_cache`` when that holds the copy's digest. The copy ends with
    folders 0755 and files 0644, owned by this process, readable by a worker uid and writable by none.

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
            if bytecode_cache is not None:
                report = bytecode_cache.apply(staged, isolated=isolated_compile)
            else:
                report = compile_bytecode(staged, isolated=isolated_compile)
            staged = replace(staged, bytecode=report)
        os.chmod(target, DIR_MODE)
    except BaseException:
        remove_staged(target)
        raise
    return staged


def compile_bytecode(
    staged: StagedPlugin, *, isolated: bool = True, timeout_s: float = _COMPILE_TIMEOUT_S
) -> CompileReport:
    """Compile every hashed ``.py`` of a staged copy into its ``__pycache__`` (unchecked hash-based .pyc).

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
                str(root / rel),
                doraise=True,
                optimize=0,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
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


def _cache_rel(rel: str) -> Path:
    """Where the bytecode of source ``rel`` lives, relative to the copy."""
    source = Path(rel)
    return source.parent / "__pycache__" / f"{source.stem}.{sys.implementation.cache_tag}.pyc"


def _cache_of(root: Path, rel: str) -> Path:
    return root / _cache_rel(rel)


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


_CACHE_INDEX = "index.json"
_CACHE_DIR_MODE = 0o700


class BytecodeCache:
    """Bytecode the host compiled from verified sources, kept by content digest in a folder only it writes.

    ``directory`` holds one folder per interpreter (cache tag and magic number), and in it one entry per
    content digest: the ``__pycache__`` files :func:`compile_bytecode` made for a copy with that digest,
    laid out as in the copy, plus an index of what compiled. :meth:`apply` restores an entry into a new copy
    with the same digest (hard links where it can, else copies) or compiles and stores one. An entry is
    written to a temporary folder and renamed into place, so hosts sharing a machine (same uid) share the
    cache safely and a reader never sees half an entry; at most ``max_entries`` entries are kept, the least
    recently used removed first.

    The cache is used only when ``directory`` is owned by this process's uid and writable by nobody else
    (:meth:`open` checks, and creates it 0700 when missing): bytecode from a cache anyone else can write
    would be bytes nobody verified. Thread-safe; entries are immutable once renamed into place.
    """

    def __init__(self, directory: Path | str, *, max_entries: int = 64) -> None:
        self.directory = Path(directory)
        self.max_entries = max_entries
        self.usable: bool | None = None
        """None until :meth:`open`; then whether the folder passed the ownership check."""
        self.reason: str | None = None
        """Why the cache is not used, when ``usable`` is False."""
        tag = sys.implementation.cache_tag or "python"
        self._root = self.directory / f"{tag}-{importlib.util.MAGIC_NUMBER.hex()}"

    def open(self) -> bool:
        """Create the folder (0700) if missing and check it is this uid's alone. Returns ``usable``.

        Blocks briefly; safe to call twice. A folder that fails the check is logged and left alone: staging
        then compiles at every start, as without a cache.
        """
        try:
            for folder in (self.directory, self._root):
                try:
                    os.mkdir(folder, _CACHE_DIR_MODE)
                except FileExistsError:
                    pass
                st = os.lstat(folder)
                if not stat.S_ISDIR(st.st_mode):
                    raise OSError(errno.ENOTDIR, f"{folder} is not a folder (a symlink or a file)")
                if st.st_uid != os.geteuid():
                    raise OSError(
                        errno.EPERM, f"{folder} is owned by uid {st.st_uid}, not by this host (uid {os.geteuid()})"
                    )
                if st.st_mode & 0o022:
                    mode = f"{folder} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
                    raise OSError(errno.EPERM, mode)
        except OSError as exc:
            self.usable, self.reason = False, f"{exc.strerror or exc}"
            _log.warning(
                "bytecode cache %s not used: %s; plugins compile their bytecode at every start (fix the folder, "
                "or set [sandbox] bytecode_cache)",
                self.directory,
                self.reason,
                extra={"event": "bytecode_cache_unusable"},
            )
            return False
        self.usable, self.reason = True, None
        return True

    def entry_of(self, digest: str) -> Path:
        """The folder of the entry for content ``digest`` (it may not exist). Pure."""
        return self._root / digest.replace(":", "-")

    def apply(
        self, staged: StagedPlugin, *, isolated: bool = True, timeout_s: float = _COMPILE_TIMEOUT_S
    ) -> CompileReport:
        """Give the copy its bytecode: restore the entry of its digest, or compile and store one. Blocks.

        Falls back to :func:`compile_bytecode` alone when the cache is not usable or cannot be written (a
        full disk is logged, never raised). Safe to call twice.
        """
        if self.usable is None:
            self.open()
        if not self.usable:
            return compile_bytecode(staged, isolated=isolated, timeout_s=timeout_s)
        entry = self.entry_of(staged.content_hash.digest)
        restored = self._restore(entry, staged)
        if restored is not None:
            return restored
        report = compile_bytecode(staged, isolated=isolated, timeout_s=timeout_s)
        try:
            self._store(entry, staged, report)
        except OSError as exc:
            _log.warning(
                "bytecode of plugin %r not cached: %s",
                staged.plugin_id,
                exc,
                extra={"event": "bytecode_cache_write_failed", "pluginId": staged.plugin_id},
            )
        return report

    def _restore(self, entry: Path, staged: StagedPlugin) -> CompileReport | None:
        try:
            with open(entry / _CACHE_INDEX, "rb", opener=_nofollow) as fh:
                index = json.loads(fh.read())
            compiled, failed = int(index["compiled"]), tuple((str(a), str(b)) for a, b in index["failed"])
            sources = sorted(rel for rel in staged.content_hash.files if rel.endswith(".py"))
            for rel in sources:
                cached = _cache_rel(rel)
                if (entry / cached).is_file():
                    _place(entry / cached, staged.path / cached)
            os.utime(entry)  # most recently used
        except (OSError, ValueError, KeyError, TypeError):
            return None
        _fix_cache_modes(staged.path, sources)
        return CompileReport(compiled=compiled, failed=failed, from_cache=True)

    def _store(self, entry: Path, staged: StagedPlugin, report: CompileReport) -> None:
        if entry.exists():
            return
        work = Path(tempfile.mkdtemp(prefix=".new-", dir=self._root))
        try:
            for rel in sorted(r for r in staged.content_hash.files if r.endswith(".py")):
                cached = _cache_rel(rel)
                source = staged.path / cached
                if source.is_file():
                    (work / cached).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, work / cached, follow_symlinks=False)
            index = {"compiled": report.compiled, "failed": [list(item) for item in report.failed]}
            (work / _CACHE_INDEX).write_text(json.dumps(index), encoding="utf-8")
            try:
                os.rename(work, entry)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # another host stored it first
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self._evict()

    def _evict(self) -> None:
        entries = [e for e in self._root.iterdir() if e.is_dir() and not e.name.startswith(".")]
        if len(entries) <= self.max_entries:
            return
        entries.sort(key=lambda e: e.stat().st_mtime)
        for old in entries[: len(entries) - self.max_entries]:
            shutil.rmtree(old, ignore_errors=True)

    def clear(self) -> None:
        """Remove every entry of this interpreter. Blocks; idempotent."""
        if self._root.is_dir():
            for entry in self._root.iterdir():
                shutil.rmtree(entry, ignore_errors=True)


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _place(cached: Path, target: Path) -> None:
    """Put a cached file into a copy: a hard link when on one filesystem, else a copy (never a symlink)."""
    target.parent.mkdir(mode=DIR_MODE, exist_ok=True)
    if not stat.S_ISREG(os.lstat(cached).st_mode):
        raise OSError(errno.EINVAL, f"{cached} is not a regular file")
    try:
        os.link(cached, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(cached, target, follow_symlinks=False)
