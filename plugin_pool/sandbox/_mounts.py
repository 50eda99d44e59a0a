"""The worker's own view of the filesystem, built like bubblewrap's: a mount namespace with a new root.

Runs inside the worker (standard library only), right after it unshared a mount namespace and before it
drops its uid or restricts itself with Landlock (both forbid mounting). The new root is an empty tmpfs with,
at their usual paths:

- read-only bind mounts of exactly what the worker needs: the Python runtime and the packages it imports,
  the worker code, the plugin's verified private copy, the system libraries (with the top-level symlinks
  such as ``/lib -> usr/lib`` that the dynamic loader's cache names), ``/etc/ld.so.cache``;
- ``/dev`` with ``null``, ``zero``, ``random`` and ``urandom`` only;
- a fresh ``/proc`` of the zygote's PID namespace, mounted ``hidepid=invisible,subset=pid``: with a uid of
  its own, the worker sees only its own process there;
- ``/tmp``: a tmpfs of its own, limited in size and inodes (``noexec``, ``nosuid``, ``nodev``), counted in
  the worker's memory cgroup;
- the socket directory the host chose, bound read-write so the host sees the socket the worker creates.

Then ``pivot_root`` into it, detach the old root and make the new root read-only. The worker no longer
depends on the permissions of the host's directories (a checkout in a 0700 home works), and nothing of the
host's filesystem that was not listed exists for it. Landlock stays on top as a second layer.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DEVICES", "MountPlan", "build_root"]

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2

DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
# Top-level links that library paths go through (Debian and Fedora merge /lib into /usr/lib).
LINKED_DIRS = ("/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin")
ROOT_OPTIONS = "size=1m,nr_inodes=4096,mode=0755"
OLD_ROOT = "/.old-root"
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "armv7l": 218, "i686": 217, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long


@dataclass(frozen=True)
class MountPlan:
    """What the new root holds. Paths are absolute host paths, mounted at the same path inside.

    ``root_dir`` is an empty directory the new root's tmpfs is mounted on (it stays empty for the host: the
    mount is private to the worker's namespace). ``tmp_uid``/``tmp_gid`` own ``/tmp`` (None: the caller).
    """

    root_dir: str
    read_only_paths: tuple[str, ...]
    read_write_paths: tuple[str, ...]
    tmp_dir: str = "/tmp"
    tmp_size_mb: int = 64
    tmp_max_files: int = 4096
    tmp_uid: int | None = None
    tmp_gid: int | None = None
    mount_proc: bool = True


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            None if source is None else source.encode(),
            target.encode(),
            None if fstype is None else fstype.encode(),
            flags,
            None if data is None else data.encode(),
        ),
        f"mount {source or fstype} on {target}",
    )


def _outermost(paths: Iterable[str]) -> list[str]:
    """Existing paths, resolved, without those inside another one of them (visible through it anyway)."""
    resolved = sorted({os.path.realpath(p) for p in paths if os.path.lexists(p)})
    kept: list[str] = []
    for path in resolved:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _make_target(root: str, path: str) -> str:
    target = root + path
    if os.path.isdir(path):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    return target


def _bind(root: str, path: str, flags: int) -> None:
    target = _make_target(root, path)
    _mount(path, target, None, MS_BIND | MS_REC)
    # A bind mount takes the flags of its source; they change only with a remount of the bind.
    _mount(None, target, None, MS_BIND | MS_REMOUNT | flags)


def build_root(plan: MountPlan) -> str:
    """Build the new root described by ``plan`` and pivot into it. Returns a one-line description.

    The caller must be alone in a fresh mount namespace (``unshare(CLONE_NEWNS)``) with CAP_SYS_ADMIN over
    it, single-threaded, before Landlock and seccomp. Raises OSError naming the step that failed; the process
    is then half-built and must exit. Not safe to call twice.
    """
    arch = platform.machine()
    if arch not in _PIVOT_ROOT:
        raise OSError(95, f"pivot_root: no syscall number known for {arch}")
    # Nothing mounted here may propagate back to the host, nor anything of the host's later mounts in here.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = plan.root_dir.rstrip("/")
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, ROOT_OPTIONS)
    for link in LINKED_DIRS:
        if os.path.islink(link):
            os.symlink(os.readlink(link), root + link)
    # /tmp first: the host's paths bound below may lie under /tmp (a checkout made with mktemp -d).
    tmp_options = f"size={plan.tmp_size_mb}m,nr_inodes={plan.tmp_max_files},mode=0700"
    if plan.tmp_uid is not None:
        tmp_options += f",uid={plan.tmp_uid},gid={plan.tmp_gid if plan.tmp_gid is not None else plan.tmp_uid}"
    os.makedirs(root + plan.tmp_dir, mode=0o755, exist_ok=True)
    _mount("tmpfs", root + plan.tmp_dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, tmp_options)
    read_only = _outermost(plan.read_only_paths)
    for path in read_only:
        if path.startswith("/dev/"):
            continue  # devices below, never with nodev
        _bind(root, path, MS_RDONLY | MS_NOSUID | MS_NODEV)
    for device in DEVICES:
        if os.path.exists(device):  # a device node cannot be executed and is not setuid: no remount needed
            _mount(device, _make_target(root, device), None, MS_BIND)
    for path in _outermost(plan.read_write_paths):
        _bind(root, path, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if plan.mount_proc:
        os.makedirs(root + "/proc", mode=0o555, exist_ok=True)
        try:
            _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible,subset=pid")
        except OSError:  # kernels before 5.8 know neither option name
            _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
    os.mkdir(root + OLD_ROOT, 0o700)
    _check(int(_libc.syscall(_PIVOT_ROOT[arch], root.encode(), (root + OLD_ROOT).encode())), f"pivot_root into {root}")
    os.chdir("/")
    _check(_libc.umount2(OLD_ROOT.encode(), MNT_DETACH), "detaching the old root")
    os.rmdir(OLD_ROOT)
    _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    parts = [f"private root of {len(read_only)} read-only trees", f"/tmp tmpfs {tmp_options}"]
    parts.append("/proc hidepid" if plan.mount_proc else "no /proc")
    return "; ".join(parts)
