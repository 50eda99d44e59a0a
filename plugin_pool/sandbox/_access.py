"""Inside a worker: which confinement layer refused a file, and the fix, for the error the host shows.

A plugin that cannot read or map a file fails with a bare ``PermissionError``, ``FileNotFoundError`` or
``cannot open shared object file``, which says nothing about the sandbox. :func:`explain_access_error` looks
at the path the error names (or the library the dynamic loader could not open) and at the worker's own view
(its read-only paths, its /tmp, its uid, whether it has a private root and Landlock) and says which layer
refused and what to do:

- **outside the worker's paths**: the private root (mount namespace) holds only the runtime, the plugin's
  verified copy and ``[sandbox] extra_read_paths``; without a private root, Landlock allows only those. Fix:
  vendor the dependency into the plugin folder, or have the operator add its folder to ``extra_read_paths``.
- **file mode for the worker's uid**: the file is in a read-only path but its mode (or a folder's on the way)
  does not let the worker's own uid read it (a package installed with umask 077). Fix: make it world-readable.
- **read-only**: the path may be read, not written, created or executed (read-only bind mounts, Landlock's
  read-only rules). Fix: write in the worker's /tmp.
- **the dynamic loader** searched the worker's root for a library by name and found none there. Fix: a wheel
  that bundles it, vendored, or ``extra_read_paths``.

Worker side: standard library only, imported by ``_worker``; it reads file metadata (``stat``), never data.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["WorkerView", "explain_access_error"]

_SHARED_OBJECT = re.compile(r"(?P<lib>[^\s:][^:]*): cannot open shared object file: (?P<why>[^\n]+)")
_REFUSED = (errno.EACCES, errno.EPERM)


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What a worker may see: its read-only trees, its /tmp, its ids, and the layers in force."""

    read_only_paths: tuple[str, ...]
    temp_dir: str
    uid: int
    gid: int
    private_root: bool
    landlock: bool

    def contains(self, path: str) -> str | None:
        """The innermost read-only tree (or the temp dir) holding ``path``, or None: a tree bound below /tmp
        hides that part of the worker's /tmp, as its bind mount does. Pure."""
        best: str | None = None
        for root in (self.temp_dir, *self.read_only_paths):
            base = root.rstrip("/") or "/"
            if (path == base or path.startswith(base + "/")) and (best is None or len(base) > len(best)):
                best = root
        return best

    def layer_of_paths(self) -> str:
        """The layer that keeps the worker inside its paths, named for a message."""
        if self.private_root:
            return "the worker's private root (mount namespace)" + (" and its Landlock rules" if self.landlock else "")
        if self.landlock:
            return "Landlock (the worker's path set)"
        return "the worker's uid and the file modes"


def explain_access_error(exc: BaseException, view: WorkerView) -> str | None:
    """Why the sandbox refused the file ``exc`` is about, and the fix; None when ``exc`` (and its causes) is not
    about a file the confinement refused. Reads metadata only; never raises."""
    try:
        for error in _chain(exc):
            text = _explain_one(error, view)
            if text is not None:
                return text
    except Exception:  # a diagnosis must never hide the original error
        return None
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _explain_one(error: BaseException, view: WorkerView) -> str | None:
    match = _SHARED_OBJECT.search(str(error))
    if match is not None:
        return _explain_library(match.group("lib").strip(), match.group("why").strip(), view)
    if isinstance(error, OSError) and isinstance(error.filename, str):
        return _explain_path(os.path.abspath(error.filename), error.errno, view)
    if isinstance(error, ModuleNotFoundError):
        hidden = [p for p in sys.path if _hidden(p, view)]
        if hidden:
            return (
                f"[sandbox: sys.path names folders the worker cannot see ({', '.join(hidden[:3])}"
                f"{', ...' if len(hidden) > 3 else ''}), which {view.layer_of_paths()} hides: an editable install or "
                f"a .pth file of the runtime points there. Fix: vendor the dependency into the plugin folder "
                f"([python] path, plugin-pool vendor)]"
            )
    return None


def _hidden(entry: str, view: WorkerView) -> bool:
    """A sys.path folder the worker cannot see: absolute (not a path hook's name), not the stdlib zip, not a
    folder here, and not a parent of one of its paths (the zygote puts the package's parent there)."""
    if not entry.startswith("/") or entry.endswith(".zip") or os.path.isdir(entry):
        return False
    prefix = entry.rstrip("/") + "/"
    return not any(root.startswith(prefix) for root in view.read_only_paths)


def _explain_path(path: str, code: int | None, view: WorkerView) -> str | None:
    root = view.contains(path)
    if root == view.temp_dir and view.private_root and code in (errno.ENOENT, errno.ENOTDIR):
        return (
            f"[sandbox: {path} is not in the worker's {view.temp_dir}: that is a private tmpfs of its own (mount "
            f"namespace), not the host's {view.temp_dir}, and holds only what the worker wrote there. Fix: ship the "
            f"file in the plugin folder, or have the operator add its folder to [sandbox] extra_read_paths]"
        )
    if root is None:
        if code not in (errno.ENOENT, errno.ENOTDIR, *_REFUSED):
            return None
        return (
            f"[sandbox: {path} is outside the worker's read-only paths; {view.layer_of_paths()} refused it. A worker "
            f"sees only the Python runtime, its plugin's verified copy and [sandbox] extra_read_paths. Fix: vendor "
            f"the dependency into the plugin folder ([python] path, plugin-pool vendor), or have the operator add "
            f"its folder to [sandbox] extra_read_paths]"
        )
    if code == errno.EROFS or (code in _REFUSED and root != view.temp_dir and _mode_allows(path, root, view) is None):
        return (
            f"[sandbox: {path} is in a read-only path: the worker may read it but not write, create or execute "
            f"there (read-only mounts{', Landlock' if view.landlock else ''}). Fix: write in the worker's own "
            f"{view.temp_dir} (TMPDIR)]"
        )
    if code in _REFUSED:
        why = _mode_allows(path, root, view)
        if why is not None:
            return (
                f"[sandbox: file mode: {why}, so the worker's uid {view.uid} cannot read it. Fix: make the "
                f"files world-readable (chmod -R a+rX on the folder; packages installed with umask 077 are "
                f"not), or vendor them into the plugin folder, whose copy the host makes readable]"
            )
    return None


def _explain_library(lib: str, why: str, view: WorkerView) -> str | None:
    if "/" in lib:
        code = errno.EACCES if "ermission" in why else errno.ENOENT if "No such file" in why else None
        return _explain_path(os.path.abspath(lib), code, view)
    if "ermission" in why:
        return (
            f"[sandbox: file mode: the dynamic loader found {lib} but cannot read it as the worker's uid "
            f"{view.uid}. Fix: make the library world-readable (chmod a+r), or use a wheel that bundles it]"
        )
    return (
        f"[sandbox: the dynamic loader found no {lib} inside {view.layer_of_paths()}: it searches the runtime's "
        f"library folders and the extension's rpath there, and a library installed elsewhere on the host is not "
        f"visible. Fix: use a wheel that bundles it (auditwheel's *.libs folder) vendored into the plugin folder, "
        f"or have the operator add its folder to [sandbox] extra_read_paths]"
    )


def _mode_allows(path: str, root: str, view: WorkerView) -> str | None:
    """Why the mode bits of ``path`` (or a folder between ``root`` and it) keep the worker's uid from reading
    it, or None when they let it. Ignores ACLs."""
    if view.uid == 0:
        return None
    parts = path[len(root.rstrip("/")) :].strip("/").split("/") if path != root else []
    current = root.rstrip("/") or "/"
    chain = [current] + [current := os.path.join(current, part) for part in parts if part]
    for index, entry in enumerate(chain):
        try:
            st = os.stat(entry)
        except OSError:
            return None  # cannot tell from here (a folder on the way cannot be searched: reported by its parent)
        last = index == len(chain) - 1
        need = (4 | (1 if stat.S_ISDIR(st.st_mode) else 0)) if last else 1
        if st.st_uid == view.uid:
            granted = (st.st_mode >> 6) & 7
        elif st.st_gid == view.gid:
            granted = (st.st_mode >> 3) & 7
        else:
            granted = st.st_mode & 7
        if need & ~granted:
            what = "folder" if stat.S_ISDIR(st.st_mode) else "file"
            return f"the {what} {entry} has mode {stat.S_IMODE(st.st_mode):04o} and owner {st.st_uid}:{st.st_gid}"
    return None
