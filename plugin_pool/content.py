"""Content hashes of plugin folders, and the one reader of a plugin folder's files.

The content hash (the seed's ``assembly_hash``) is a SHA-256 over a plugin folder: one line per file,
``relative/path NUL sha256-hex LF``, sorted by path. The manifest enters it in canonical form (its TOML
data without ``[signature]``, as sorted JSON), so signing a folder does not change its hash.

**The invariant** (docs/ARCHITECTURE.md, "What runs is what was verified"): every file that can run is
covered by the hash, and a private copy of a folder holds exactly the files that were hashed, read once.
:class:`_FolderReader` is the one place that enforces it; hashing (:func:`compute_content_hash`) and
copying (:func:`hash_and_copy`, used by ``plugin_pool.staging``) are the same walk, so a copy's bytes
are the hashed bytes. The rule:

- a plugin folder holds regular files and folders only: a symlink, fifo, socket or device anywhere in
  it is refused (``symlink``, ``special_file``), whenever it appears (every folder is opened with
  ``O_DIRECTORY|O_NOFOLLOW`` relative to its parent's descriptor, every file with
  ``O_NOFOLLOW|O_NONBLOCK`` and checked with ``fstat`` before a byte is read);
- entries named ``__pycache__`` or ``.git`` are left out of the hash *and* of the copy (nothing in them
  can be imported from a copy that does not hold them); the host compiles bytecode itself, in the copy,
  after verification;
- bytecode anywhere else (``*.pyc``: Python imports a sourceless ``x.pyc`` or ``__init__.pyc``) is
  refused (``bytecode``): no bytecode from outside ever runs;
- everything else is hashed, every byte of it, and copied: sources, extension modules, data;
- a copy holds the hashed files and the folders that contain them, nothing more (an empty folder could
  otherwise turn a failing import into a namespace package);
- limits (:class:`FolderLimits`): bytes per file and per folder, entries, depth.

This module reads files and never imports anything from a plugin folder.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import importlib.machinery
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson

from plugin_pool._files import (
    UnsafeFileError,
    describe_mode,
    open_dir_at,
    open_regular_at,
    read_bounded,
    read_regular_file,
)
from plugin_pool.errors import IntegrityError, IntegrityRejectedError, StagingError
from plugin_pool.manifest import MANIFEST_MAX_BYTES, MANIFEST_NAME, ManifestError, parse_manifest_text

if TYPE_CHECKING:
    from collections.abc import Mapping

    from plugin_pool.config import DiscoveryConfig

__all__ = [
    "BYTECODE_SUFFIXES",
    "DIR_MODE",
    "FILE_MODE",
    "SKIPPED_NAMES",
    "ContentHash",
    "FolderLimits",
    "canonical_data",
    "canonical_manifest",
    "canonical_manifest_bytes",
    "compute_content_hash",
    "hash_and_copy",
    "read_manifest_bytes",
]

SKIPPED_NAMES = frozenset({"__pycache__", ".git"})
"""Entries left out of the hash and of every copy, at any depth."""
BYTECODE_SUFFIXES = tuple(importlib.machinery.BYTECODE_SUFFIXES)
"""Files Python imports as bytecode (``.pyc``): refused outside ``__pycache__``."""
FILE_MODE = 0o644
"""Mode of every file of a private copy: readable by a worker uid, writable by none but the host."""
DIR_MODE = 0o755
"""Mode of every folder of a private copy."""
_CHUNK_BYTES = 1 << 20
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_A_DIR = (errno.ENOTDIR, errno.ENOENT)


@dataclass(frozen=True, slots=True)
class FolderLimits:
    """How much of a plugin folder is read (and copied): bytes per file and in all, entries, depth.

    Built from ``[discovery]`` with :meth:`from_config`; the defaults are those of the configuration.
    """

    max_file_bytes: int = 64 << 20
    max_total_bytes: int = 256 << 20
    max_files: int = 20_000
    """Entries (files and folders, skipped ones excepted) in the whole folder."""
    max_depth: int = 32
    """Folders nested below the plugin folder (each open folder holds a descriptor while it is read)."""

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_total_bytes", "max_files", "max_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FolderLimits.{name} = {value!r} is invalid: expected a positive integer")

    @classmethod
    def from_config(cls, discovery: DiscoveryConfig) -> FolderLimits:
        """The limits ``[discovery]`` sets. Pure."""
        return cls(
            max_file_bytes=discovery.max_file_bytes,
            max_total_bytes=discovery.max_plugin_bytes,
            max_files=discovery.max_plugin_files,
        )


@dataclass(frozen=True)
class ContentHash:
    """The content hash of a plugin folder: the overall ``digest`` and each hashed file's digest.

    ``files`` maps relative POSIX paths to ``sha256:<hex>``; its keys are exactly the files the digest
    covers, and exactly the files a private copy of the folder holds.
    """

    digest: str
    files: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))

    def __hash__(self) -> int:
        return hash(self.digest)

    def diff(self, other: ContentHash) -> list[str]:
        """What changed from ``self`` (the earlier, recorded hash) to ``other`` (the current one). Pure.

        Lines ``changed: PATH``, ``added: PATH`` (only in ``other``), ``removed: PATH`` (only in ``self``),
        sorted by path; empty when the files are the same.
        """
        lines = []
        for path in sorted(self.files.keys() | other.files.keys()):
            before, after = self.files.get(path), other.files.get(path)
            if before is None:
                lines.append(f"added: {path}")
            elif after is None:
                lines.append(f"removed: {path}")
            elif before != after:
                lines.append(f"changed: {path}")
        return lines

    @classmethod
    def of_files(cls, files: Mapping[str, str]) -> ContentHash:
        """The content hash of these per-file digests (relative path -> ``sha256:<hex>``). Pure."""
        overall = hashlib.sha256()
        ordered = dict(sorted(files.items()))
        for rel, digest in ordered.items():
            overall.update(rel.encode("utf-8", "surrogateescape") + b"\0" + digest[7:].encode("ascii") + b"\n")
        return cls(digest="sha256:" + overall.hexdigest(), files=ordered)


# --- canonical manifest -----------------------------------------------------------------------------------


def canonical_manifest_bytes(raw: bytes, path: Path) -> bytes:
    """The canonical form of a manifest's bytes: its TOML data without ``[signature]``, as sorted JSON.

    Whitespace, comments, key order and the signature do not change it; any value does. Dates and times
    become ISO 8601 strings. Pure. Raises IntegrityError naming ``path`` for bytes that are not UTF-8, not
    valid TOML, nested too deeply, or hold inf/nan.
    """
    try:
        data = parse_manifest_text(raw, path)
    except ManifestError as exc:
        raise IntegrityError(exc.reason, path=path) from None
    return canonical_data(data, path)


def canonical_data(data: Mapping[str, Any], path: Path) -> bytes:
    """The canonical form of parsed manifest data (see canonical_manifest_bytes). Pure."""
    try:
        plain = _plain({k: v for k, v in data.items() if k != "signature"}, path, "")
        return orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise IntegrityError(f"the manifest holds a value that cannot be canonicalized ({exc})", path=path) from None
    except RecursionError:
        raise IntegrityError("the manifest's values are nested too deeply; flatten them", path=path) from None


def _plain(value: Any, path: Path, where: str) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v, path, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, _dt.date | _dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no inf or nan (orjson would write null for both), so they could not be told apart.
        raise IntegrityError(f"{where} = {value!r}: inf and nan are not allowed in a manifest", path=path, field=where)
    return value


def canonical_manifest(manifest_path: Path | str) -> bytes:
    """The canonical form of the manifest file ``manifest_path`` (see canonical_manifest_bytes).

    Blocks on reading one file; safe to call twice. Raises IntegrityError naming the file when it is
    unreadable (a symlink, a special file or over MANIFEST_MAX_BYTES included), not UTF-8, not valid TOML,
    or holds inf/nan.
    """
    path = Path(manifest_path)
    return canonical_manifest_bytes(read_manifest_bytes(path), path)


def read_manifest_bytes(path: Path) -> bytes:
    """A manifest file's bytes, read as read_manifest reads them. Raises IntegrityError naming the file.

    Blocks on one read; safe to call twice."""
    try:
        return read_regular_file(path, MANIFEST_MAX_BYTES)
    except UnsafeFileError as exc:
        raise IntegrityError(f"cannot open the manifest: it is a {exc.what}", path=path) from None
    except OSError as exc:
        raise IntegrityError(f"cannot open the manifest ({exc.strerror})", path=path) from None


# --- the folder reader: the one place that decides what is hashed and copied -----------------------------


@dataclass(slots=True)
class _Frame:
    """One open folder of the walk: its descriptors, path prefix, depth and subfolders still to visit."""

    src_fd: int
    dst_fd: int | None
    name: str
    prefix: str
    depth: int
    subdirs: list[str]
    holds_files: bool = False


class _FolderReader:
    """Reads a plugin folder once, hashing every byte and (with a destination) writing the same bytes.

    Not thread-safe; one reader per walk. Folders are visited depth first with at most two descriptors per
    level open (source and copy), so ``max_depth`` bounds the descriptors a walk holds.
    """

    def __init__(self, folder: Path, limits: FolderLimits, plugin_id: str | None) -> None:
        self.folder = folder
        self.limits = limits
        self.plugin_id = plugin_id
        self.files: dict[str, str] = {}
        self.entries = 0
        self.total_bytes = 0

    def reject(self, rel: str, kind: str, reason: str, fix: str) -> IntegrityRejectedError:
        """The error for ``rel`` (relative to the plugin folder), naming the plugin folder, never a copy."""
        return IntegrityRejectedError(
            folder=self.folder, file=rel, kind=kind, reason=reason, fix=fix, plugin_id=self.plugin_id
        )

    def walk(self, root_fd: int, root_dst_fd: int | None) -> ContentHash:
        """Hash (and copy) everything under ``root_fd``; return the content hash. Closes no root descriptor."""
        root = _Frame(root_fd, root_dst_fd, "", "", 0, [])
        root.subdirs = self._visit(root)
        stack = [root]
        try:
            while stack:
                top = stack[-1]
                if top.subdirs:
                    child = self._enter(top, top.subdirs.pop())
                    stack.append(child)
                    child.subdirs = self._visit(child)
                    continue
                stack.pop()
                if top is root:
                    break
                parent = stack[-1]
                _close(top)
                if top.holds_files:
                    parent.holds_files = True
                elif parent.dst_fd is not None:
                    self._remove_empty(parent, top.name)
        finally:
            for frame in stack:
                if frame is not root:
                    _close(frame)
        return ContentHash.of_files(self.files)

    def _enter(self, parent: _Frame, name: str) -> _Frame:
        rel = parent.prefix + name
        if parent.depth + 1 > self.limits.max_depth:
            raise self.reject(
                rel,
                "too_deep",
                f"folders are nested more than {self.limits.max_depth} deep",
                "flatten the plugin's folders",
            )
        try:
            src_fd = open_dir_at(name, parent.src_fd)
        except UnsafeFileError as exc:
            raise self._unsafe(rel, exc) from None
        except OSError as exc:
            if exc.errno in _NOT_A_DIR:
                raise self.reject(
                    rel,
                    "unreadable",
                    "was a folder and is not any more: the plugin folder changed while it was read",
                    "do not change a plugin folder while the host reads it, then try again",
                ) from None
            raise self._unreadable(rel, exc) from None
        dst_fd: int | None = None
        if parent.dst_fd is not None:
            try:
                os.mkdir(name, DIR_MODE, dir_fd=parent.dst_fd)
                dst_fd = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.dst_fd
                )
                os.fchmod(dst_fd, DIR_MODE)
            except OSError as exc:
                os.close(src_fd)
                if dst_fd is not None:
                    os.close(dst_fd)
                raise self._copy_failed(rel, exc) from None
        return _Frame(src_fd, dst_fd, name, rel + "/", parent.depth + 1, [])

    def _visit(self, frame: _Frame) -> list[str]:
        """Hash (and copy) the files of one folder; return its subfolders' names for the walk."""
        try:
            with os.scandir(frame.src_fd) as listing:
                entries = list(listing)
        except OSError as exc:
            raise self._unreadable(frame.prefix.rstrip("/"), exc) from None
        subdirs = []
        max_files = self.limits.max_files
        for entry in entries:
            name = entry.name
            if name in SKIPPED_NAMES:
                continue
            self.entries += 1
            if self.entries > max_files:
                raise self.reject(
                    frame.prefix + name,
                    "too_many_files",
                    f"the folder holds more than {max_files} files and folders",
                    "remove what the plugin does not need, or raise [discovery] max_plugin_files",
                )
            try:
                # d_type first (no syscall on most file systems); the open below checks again with fstat.
                if entry.is_file(follow_symlinks=False):
                    if name.endswith(BYTECODE_SUFFIXES):
                        raise self.reject(
                            frame.prefix + name,
                            "bytecode",
                            "is compiled bytecode, which Python imports without its source and no hash can vouch for",
                            "ship the source (.py) instead; the host compiles bytecode itself after verification",
                        )
                    rel = frame.prefix + name
                    self.files[rel] = self._read_file(frame, name, rel)
                    frame.holds_files = True
                elif entry.is_dir(follow_symlinks=False):
                    subdirs.append(name)
                elif entry.is_symlink():
                    raise UnsafeFileError("symlink", name, "symbolic link")
                else:
                    # Never open a fifo, socket or device: opening one can block or act on hardware.
                    raise UnsafeFileError(
                        "special_file", name, describe_mode(entry.stat(follow_symlinks=False).st_mode)
                    )
            except UnsafeFileError as exc:
                raise self._unsafe(frame.prefix + name, exc) from None
            except OSError as exc:
                raise self._unreadable(frame.prefix + name, exc) from None
        return subdirs

    def _read_file(self, frame: _Frame, name: str, rel: str) -> str:
        """Hash one file (copying its bytes when there is a copy); return ``sha256:<hex>``.

        Raises the rejection itself; an OSError escaping here is turned into ``unreadable`` by the caller.
        """
        try:
            fd, st = open_regular_at(name, frame.src_fd)
        except UnsafeFileError as exc:
            raise self._unsafe(rel, exc) from None
        out: int | None = None
        try:
            size = st.st_size
            if size > self.limits.max_file_bytes or self.total_bytes + size > self.limits.max_total_bytes:
                self._check_size(rel, size)
            if frame.dst_fd is not None:
                try:
                    out = os.open(name, _WRITE_FLAGS, FILE_MODE, dir_fd=frame.dst_fd)
                    os.fchmod(out, FILE_MODE)
                except OSError as exc:
                    raise self._copy_failed(rel, exc) from None
            if rel == MANIFEST_NAME:
                return self._read_manifest(fd, size, out, rel)
            h = hashlib.sha256()
            want = min(size + 1, _CHUNK_BYTES)
            read = 0
            while True:
                chunk = os.read(fd, want)
                read += len(chunk)
                if read > size:  # grew since fstat: check the limits again as it grows
                    self._check_size(rel, read)
                h.update(chunk)
                if out is not None and chunk:
                    self._write(out, chunk, rel)
                if len(chunk) < want:  # a regular file reads short only at its end
                    break
                want = _CHUNK_BYTES
            self.total_bytes += read
            return "sha256:" + h.hexdigest()
        finally:
            os.close(fd)
            if out is not None:
                os.close(out)

    def _read_manifest(self, fd: int, size_hint: int, out: int | None, rel: str) -> str:
        try:
            raw = read_bounded(fd, size_hint, min(MANIFEST_MAX_BYTES, self.limits.max_file_bytes), rel)
        except UnsafeFileError as exc:
            raise self.reject(
                rel, "manifest", f"the manifest is too large ({exc.what})", "a manifest holds settings only"
            ) from None
        except OSError as exc:
            raise self._unreadable(rel, exc) from None
        self._check_size(rel, len(raw))
        self.total_bytes += len(raw)
        if out is not None:
            self._write(out, raw, rel)
        try:
            canonical = canonical_manifest_bytes(raw, Path(self.folder, rel))
        except IntegrityError as exc:
            message = str(exc).removeprefix(f"{exc.path}: ")
            raise self.reject(rel, "manifest", message, "fix the manifest") from None
        return "sha256:" + hashlib.sha256(canonical).hexdigest()

    def _check_size(self, rel: str, size: int) -> None:
        if size > self.limits.max_file_bytes:
            raise self.reject(
                rel,
                "file_too_large",
                f"is larger than the limit of {self.limits.max_file_bytes} bytes per file",
                "remove it from the plugin folder, or raise [discovery] max_file_bytes",
            )
        if self.total_bytes + size > self.limits.max_total_bytes:
            raise self.reject(
                rel,
                "folder_too_large",
                f"takes the plugin folder past the limit of {self.limits.max_total_bytes} bytes",
                "remove what the plugin does not need, or raise [discovery] max_plugin_bytes",
            )

    def _write(self, out: int, data: bytes, rel: str) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(out, view) :]
        except OSError as exc:
            raise self._copy_failed(rel, exc) from None

    def _remove_empty(self, parent: _Frame, name: str) -> None:
        assert parent.dst_fd is not None
        try:
            os.rmdir(name, dir_fd=parent.dst_fd)
        except OSError as exc:
            raise self._copy_failed(parent.prefix + name, exc) from None

    def _unsafe(self, rel: str, exc: UnsafeFileError) -> IntegrityRejectedError:
        if exc.kind == "symlink":
            return self.reject(
                rel,
                "symlink",
                "is a symbolic link; a plugin folder holds only regular files and folders",
                "replace the link with a copy of what it points to, or remove it",
            )
        return self.reject(
            rel,
            "special_file",
            f"is a special file ({exc.what}); a plugin folder holds only regular files and folders",
            "remove it",
        )

    def _unreadable(self, rel: str, exc: OSError) -> IntegrityRejectedError:
        return self.reject(
            rel, "unreadable", f"cannot be read ({exc.strerror or exc})", "check that the host may read it"
        )

    def _copy_failed(self, rel: str, exc: OSError) -> StagingError:
        return StagingError(
            f"plugin folder {self.folder}: cannot write the private copy of {rel or 'the folder'} "
            f"({exc.strerror or exc}); check the free space and permissions of the host's private directory",
            plugin_id=self.plugin_id,
            path=self.folder,
        )


def _close(frame: _Frame) -> None:
    os.close(frame.src_fd)
    if frame.dst_fd is not None:
        os.close(frame.dst_fd)


def _open_root(folder: Path | str, reader: _FolderReader) -> int:
    try:
        return open_dir_at(folder)
    except UnsafeFileError as exc:
        raise reader._unsafe("", exc) from None
    except FileNotFoundError:
        raise reader.reject(
            "", "unreadable", "cannot open the plugin folder (it does not exist)", "check the path"
        ) from None
    except NotADirectoryError:
        raise reader.reject(
            "", "unreadable", "is not a directory", "a plugin is a folder with a plugin.toml: give that folder"
        ) from None
    except OSError as exc:
        raise reader.reject(
            "", "unreadable", f"cannot open the plugin folder ({exc.strerror})", "check its permissions"
        ) from None


def compute_content_hash(
    directory: Path | str, *, limits: FolderLimits | None = None, plugin_id: str | None = None
) -> ContentHash:
    """The content hash of the plugin folder ``directory``. Blocks on reading every file once; safe to call twice.

    The folders leading to ``directory`` are the caller's and are followed; inside it the rule of this
    module applies. Raises IntegrityRejectedError (``kind``, ``file``, ``reason``, ``fix``, naming
    ``directory``) for anything the rule refuses, a file or folder that cannot be read, or a limit passed.
    ``plugin_id`` only names the plugin in errors.
    """
    shown = Path(directory)
    reader = _FolderReader(shown, limits or FolderLimits(), plugin_id)
    root_fd = _open_root(os.path.realpath(shown), reader)
    try:
        return reader.walk(root_fd, None)
    finally:
        os.close(root_fd)


def hash_and_copy(
    source: Path | str, destination: Path | str, *, limits: FolderLimits | None = None, plugin_id: str | None = None
) -> ContentHash:
    """Copy the plugin folder ``source`` to ``destination`` and hash the same bytes in one pass.

    ``destination`` must not exist; its parent must (and should be private to the host). It is created
    mode 0700 and left so (``plugin_pool.staging`` opens it up when the copy is verified); folders inside
    are 0755 and files 0644, owned by this process. ``source`` itself must not be a symlink (no folder on
    the way is resolved: the caller passes the folder discovery resolved). Returns the hash of exactly
    the bytes written. On any error nothing is left at ``destination``; raises IntegrityRejectedError as
    compute_content_hash does, and StagingError when the copy cannot be written. Blocks on the copy; not
    safe to call twice with the same destination (it exists then).
    """
    folder, target = Path(source), Path(destination)
    reader = _FolderReader(folder, limits or FolderLimits(), plugin_id)
    root_fd = _open_root(folder, reader)
    try:
        try:
            os.mkdir(target, 0o700)
        except OSError as exc:
            raise reader._copy_failed("", exc) from None
        try:
            dst_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if os.fstat(dst_fd).st_uid != os.geteuid():
                    raise reader._copy_failed("", PermissionError(errno.EPERM, "not owned by the host"))
                os.fchmod(dst_fd, 0o700)
                return reader.walk(root_fd, dst_fd)
            finally:
                os.close(dst_fd)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    finally:
        os.close(root_fd)
