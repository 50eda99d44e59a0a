"""What the host gives each worker besides its process (host side): a directory, a progress cell, a uid of
its own and cgroups, all claimed before the fork and released when the worker is reaped; and the runtime
directory every worker directory lives in.

Per worker ``<private dir>/w<n>/``: ``sock/`` (0700, owned by its uid: the only place it may make its
socket), ``root/`` (the empty mount point of its private root) or ``tmp/`` (its temp dir when there is no
private root), and ``progress`` (the page it maps before confining itself, see ``_codec``). Names are
numbers, so a socket path never grows with a plugin id.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psutil

from plugin_pool.config import SandboxConfig
from plugin_pool.sandbox._codec import PROGRESS, PROGRESS_BYTES
from plugin_pool.sandbox.cgroups import CgroupLimits, CgroupTree
from plugin_pool.sandbox.confinement import PROGRESS_NAME
from plugin_pool.sandbox.identities import WorkerIdentities
from plugin_pool.sandbox.worker_client import BootError, WorkerHandle, WorkerPlan

__all__ = [
    "BASE_DIR_PREFIX",
    "MAX_SOCKET_PATH",
    "RUN_DIR",
    "SOCKET_NAME",
    "claim_resources",
    "cpu_seconds_of",
    "make_worker_dirs",
    "read_progress",
    "release_resources",
    "remove_orphaned_dirs",
    "rss_of",
    "runtime_dir_for",
]

MAX_SOCKET_PATH = 107
"""sun_path holds 108 bytes with the terminating NUL."""
RUN_DIR = "/run/plugin-pool"
"""The runtime directory of a root host (sandbox.runtime_dir = 'auto'); shared by every host of the machine."""
BASE_DIR_PREFIX = "plugin-pool-"
SOCKET_NAME = "s"


def make_worker_dirs(handle: WorkerHandle, *, mount_namespace: bool) -> None:
    """Create the worker's directory and its progress cell (kept open in ``handle.progress_fd``). Raises
    OSError."""
    directory = handle.directory
    directory.mkdir(mode=0o711)
    # root: the empty mount point of the worker's private root (the mount exists only in its namespace);
    # tmp: its temp dir when there is no private root (then it has no size limit).
    subdirs = ("sock", "root") if mount_namespace else ("sock", "tmp")
    uid = handle.identity.uid if handle.identity is not None else None
    for sub in subdirs:
        path = directory / sub
        path.mkdir(mode=0o700)
        if uid is not None and sub != "root":
            os.chown(path, uid, uid)
    # The progress cell: the worker maps it before it drops its uid; the host reads it when it dies.
    fd = os.open(directory / PROGRESS_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, PROGRESS_BYTES)
    except OSError:
        os.close(fd)
        raise
    handle.progress_fd = fd


def claim_resources(
    config: SandboxConfig,
    plan: WorkerPlan,
    handle: WorkerHandle,
    identities: WorkerIdentities | None,
    cgroups: CgroupTree | None,
) -> None:
    """A uid and cgroups of its own for a worker about to be spawned (``release_resources`` gives them back).
    Raises BootError when its cgroup cannot be made."""
    if identities is not None:
        handle.identity = identities.claim()
    if cgroups is not None:
        limits = CgroupLimits(
            memory_mb=min(plan.memory_mb or config.memory_mb, config.memory_mb),
            max_threads=config.max_threads,
            cpu_quota=config.cpu_quota,
        )
        try:
            handle.cgroup = cgroups.create_worker(handle.directory.name, limits)
        except OSError as exc:
            release_resources(handle, identities)
            raise BootError(
                f"plugin {plan.plugin_id!r}: cannot create the worker's cgroup: {exc}",
                plugin_id=plan.plugin_id,
                pid=None,
            ) from exc


def release_resources(handle: WorkerHandle, identities: WorkerIdentities | None) -> None:
    """Give back a gone worker's uid, remove its cgroups, close its progress cell. Idempotent."""
    progress_fd, handle.progress_fd = handle.progress_fd, None
    if progress_fd is not None:
        os.close(progress_fd)
    identity, handle.identity = handle.identity, None
    cgroup, handle.cgroup = handle.cgroup, None
    if cgroup is not None:
        cgroup.remove()
    if identity is not None and identities is not None:
        identities.release(identity)


def read_progress(handle: WorkerHandle) -> int:
    """The progress cell's value (0 when unreadable): which call of a batch the worker was in. No side effects."""
    if handle.progress_fd is None:
        return 0
    try:
        return int(PROGRESS.unpack(os.pread(handle.progress_fd, PROGRESS.size, 0))[0])
    except (OSError, ValueError):  # struct.error is a ValueError
        return 0


def runtime_dir_for(config: SandboxConfig) -> Path:
    """The directory a pool keeps its private directory and uid locks in (``sandbox.runtime_dir``).

    'auto' is /run/plugin-pool for a root host (short, root-only, shared by every host of the machine so
    their uid claims meet), else /tmp, else the system temp dir. No side effects.
    """
    if config.runtime_dir != "auto":
        return Path(config.runtime_dir)
    if os.geteuid() == 0 and os.path.isdir("/run"):
        return Path(RUN_DIR)
    if os.access("/tmp", os.W_OK | os.X_OK):
        return Path("/tmp")
    return Path(tempfile.gettempdir())


def remove_orphaned_dirs(parent: Path | None = None) -> list[Path]:
    """Remove the private directories of hosts that died without closing (SIGKILL leaves them behind).

    Only directories named by this module, owned by this uid, whose host pid no longer runs. A pid that
    was reused by another process keeps its directory (the safe side). Returns what was removed.
    """
    removed = []
    for path in Path(parent or tempfile.gettempdir()).glob(f"{BASE_DIR_PREFIX}*-*"):
        pid_text = path.name[len(BASE_DIR_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            if path.lstat().st_uid != os.geteuid() or not path.is_dir() or path.is_symlink():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:
            continue
    return removed


def cpu_seconds_of(pid: int | None) -> float:
    """CPU seconds a process used (0 when it is gone). No side effects."""
    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, OSError):
        return 0.0
    return float(times.user + times.system)


def rss_of(pid: int | None) -> int:
    """A process's resident set size in bytes (0 when it is gone). No side effects."""
    if pid is None:
        return 0
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return 0
