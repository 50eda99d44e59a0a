"""Control groups for workers (host side): memory, processes and CPU counted per worker, not per mapping.

RLIMIT_DATA misses shared anonymous mappings, memfd and tmpfs; a memory cgroup counts them all, and its
OOM kill is reported as a ``memory`` restart. The pids controller bounds threads (a worker cannot fork), and
the cpu controller bounds the worker's CPU share. Every worker gets a group of its own below one group per
host, created below the cgroup the host itself runs in (which may already be nested, e.g. in a container):

    <host's cgroup>/plugin-pool-<host pid>-<token>/w<n>

cgroup v2 (``/sys/fs/cgroup`` is cgroup2 with the controllers enabled) and v1 (one hierarchy per controller:
``memory``, ``pids``, ``cpu``, ``cpuacct``) are both supported. The host creates the groups and sets the
limits; the worker joins them itself right after fork, while it is still root and single-threaded (it writes
``0`` to each ``cgroup.procs`` the spec lists), so everything it allocates from then on is charged to it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CgroupLimits", "CgroupTree", "WorkerCgroup", "find_cgroup_dirs"]

_log = logging.getLogger("plugin_pool.sandbox")

GROUP_PREFIX = "plugin-pool-"
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
REMOVE_WAIT_S = 2.0
"""How long removing a worker's group waits for its last task to be gone."""
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """What one worker's group allows: ``memory_mb`` (MiB, swap included), ``max_threads`` (pids.max) and
    ``cpu_quota`` (CPUs; 0 = unbounded)."""

    memory_mb: int
    max_threads: int
    cpu_quota: float


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """Controller (or '' for cgroup v2) -> this process's path in that hierarchy, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    with open(proc_cgroup) as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                paths[""] = path
            for name in controllers.split(","):
                paths[name] = path
    return paths


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount point, root within the hierarchy, options) of every cgroup mount, from mountinfo."""
    found = []
    with open(mountinfo) as fh:
        for line in fh:
            left, _, right = line.rstrip("\n").partition(" - ")
            fields = left.split()
            fstype, _, super_options = right.split(" ", 2)
            if fstype in ("cgroup", "cgroup2"):
                found.append((fstype, fields[4], fields[3], set(super_options.split(","))))
    return found


def find_cgroup_dirs(
    proc_cgroup: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo"
) -> tuple[int, dict[str, Path]]:
    """Return (version, controller -> the directory of this process's own cgroup) for the controllers the
    workers need, or raise OSError naming what is missing. Reads /proc (or the files given) only.

    cgroup v1 wins when it has every controller (a hybrid system keeps them there and an empty v2 tree)."""
    own = _own_paths(proc_cgroup)
    mounts = _mounts(mountinfo)
    v1: dict[str, Path] = {}
    for fstype, point, root, options in mounts:
        if fstype != "cgroup":
            continue
        for name in V1_CONTROLLERS:
            if name in options and name in own and name not in v1:
                v1[name] = _join(point, root, own[name])
    if all(name in v1 for name in V1_CONTROLLERS):
        return 1, v1
    for fstype, point, root, _ in mounts:
        if fstype == "cgroup2" and "" in own:
            directory = _join(point, root, own[""])
            try:
                available = (Path(point) / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if all(name in available for name in V2_CONTROLLERS):
                return 2, dict.fromkeys(V2_CONTROLLERS, directory)
    missing = [name for name in V1_CONTROLLERS if name not in v1]
    raise OSError(
        errno.ENOENT,
        f"no cgroup v2 hierarchy with {', '.join(V2_CONTROLLERS)} and no cgroup v1 hierarchy for {', '.join(missing)}",
    )


def _join(point: str, root: str, own: str) -> Path:
    relative = os.path.relpath(own, root) if own.startswith(root) else own.lstrip("/")
    return Path(point) / ("" if relative == "." else relative)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


@dataclass(frozen=True, slots=True)
class WorkerCgroup:
    """One worker's groups. ``procs_files`` are the ``cgroup.procs`` files the worker writes ``0`` into."""

    version: int
    dirs: dict[str, Path]

    @property
    def procs_files(self) -> tuple[str, ...]:
        """The files a process writes its pid (or 0) into to join every group of this worker."""
        return tuple(sorted({str(d / "cgroup.procs") for d in self.dirs.values()}))

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into every group of this worker. Blocks: a cgroup v1 move
        waits for an RCU grace period (several ms). Raises OSError if the kernel refuses."""
        for procs in self.procs_files:
            _write(Path(procs), str(pid))

    @property
    def group_dirs(self) -> tuple[str, ...]:
        """The distinct directories of this worker's groups (one per hierarchy). No side effects."""
        return tuple(sorted({str(d) for d in self.dirs.values()}))

    def get_oom_kills(self) -> int:
        """How many processes of this group the kernel's OOM killer killed. Reads one file; 0 if it is gone."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = (self.dirs["memory"] / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def get_cpu_seconds(self) -> float | None:
        """CPU time the group used so far (user + system), or None if it cannot be read. Reads one file."""
        try:
            if self.version == 1:
                return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
            for line in (self.dirs["cpu"] / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        except (OSError, ValueError):
            return None
        return None

    def remove(self, wait_s: float = REMOVE_WAIT_S) -> None:
        """Remove the groups once the worker has exited. The kernel refuses (EBUSY) while a task is left: a
        worker killed with its zygote's PID namespace may still be on its way out, so this waits up to
        ``wait_s`` for that. Idempotent."""
        deadline = time.monotonic() + wait_s
        for directory in set(self.dirs.values()):
            while True:
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                        time.sleep(0.005)
                        continue
                    _log.warning("cannot remove cgroup %s: %s", directory, exc, extra={"event": "cgroup_remove_failed"})
                break


class CgroupTree:
    """The host's group of worker groups. ``open`` creates it (or raises OSError saying why it cannot);
    ``create_worker`` makes one worker's group with its limits (about 0.5 ms); ``close`` removes what is
    left. Thread-safe for distinct worker names; ``open`` and ``close`` are idempotent."""

    def __init__(self) -> None:
        self.version = 0
        self.parents: dict[str, Path] = {}
        self._opened = False

    def open(self) -> None:
        """Create this host's group below its own cgroup in every hierarchy. Raises OSError when the kernel or
        the permissions do not allow it (the layer is then unavailable)."""
        if self._opened:
            return
        version, own = find_cgroup_dirs()
        remove_orphaned_groups(set(own.values()))
        name = f"{GROUP_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        created: list[Path] = []
        try:
            if version == 2:
                directory = next(iter(own.values()))
                _enable_v2_controllers(directory)
                parent = directory / name
                parent.mkdir()
                created.append(parent)
                _enable_v2_controllers(parent)
                self.parents = dict.fromkeys(V2_CONTROLLERS, parent)
            else:
                for controller, directory in own.items():
                    parent = directory / name
                    if parent not in created:  # cpu and cpuacct may share one hierarchy
                        parent.mkdir()
                        created.append(parent)
                    self.parents[controller] = parent
        except OSError:
            for path in reversed(created):
                with contextlib.suppress(OSError):
                    path.rmdir()
            self.parents = {}
            raise
        self.version = version
        self._opened = True

    def create_worker(self, name: str, limits: CgroupLimits) -> WorkerCgroup:
        """Create the groups of one worker with its limits. Raises OSError if the kernel refuses."""
        dirs: dict[str, Path] = {}
        made: list[Path] = []
        try:
            for controller, parent in self.parents.items():
                directory = parent / name
                if directory not in made:
                    directory.mkdir()
                    made.append(directory)
                dirs[controller] = directory
            group = WorkerCgroup(self.version, dirs)
            _apply_limits(group, limits)
        except OSError:
            for path in made:
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise
        return group

    def close(self) -> None:
        """Remove the host's group and any worker group left in it (their workers must be gone). Idempotent."""
        if not self._opened:
            return
        self._opened = False
        for parent in set(self.parents.values()):
            _remove_tree(parent)

    def describe(self) -> str:
        """One line for the confinement report. No side effects."""
        where = ", ".join(sorted({str(p) for p in self.parents.values()}))
        return f"cgroup v{self.version}: memory, pids and cpu per worker below {where}"


def _enable_v2_controllers(directory: Path) -> None:
    wanted = " ".join(f"+{name}" for name in V2_CONTROLLERS)
    try:
        _write(directory / "cgroup.subtree_control", wanted)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise OSError(
                exc.errno,
                f"cannot enable {', '.join(V2_CONTROLLERS)} below {directory}: it holds processes (cgroup v2 "
                "allows controllers only below a group without them); run the host in a delegated cgroup "
                "(systemd: Delegate=yes) and move it into a leaf",
            ) from exc
        raise


def _apply_limits(group: WorkerCgroup, limits: CgroupLimits) -> None:
    memory = str(limits.memory_mb * _MIB)
    memory_dir, pids_dir, cpu_dir = group.dirs["memory"], group.dirs["pids"], group.dirs["cpu"]
    quota = int(limits.cpu_quota * CPU_PERIOD_US) if limits.cpu_quota > 0 else 0
    if group.version == 1:
        _write(memory_dir / "memory.limit_in_bytes", memory)
        swap = memory_dir / "memory.memsw.limit_in_bytes"
        if swap.exists():  # only with swap accounting; memory + swap together, so nothing escapes to swap
            _write(swap, memory)
        if quota:
            _write(cpu_dir / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu_dir / "cpu.cfs_quota_us", str(quota))
    else:
        _write(memory_dir / "memory.max", memory)
        swap = memory_dir / "memory.swap.max"
        if swap.exists():
            _write(swap, "0")
        if quota:
            _write(cpu_dir / "cpu.max", f"{quota} {CPU_PERIOD_US}")
    _write(pids_dir / "pids.max", str(limits.max_threads))


def _remove_tree(parent: Path) -> None:
    try:
        children = [p for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return
    for child in children:
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        parent.rmdir()


def remove_orphaned_groups(directories: set[Path]) -> list[Path]:
    """Remove the empty groups of hosts that died without closing (their pid is in the name). Returns them."""
    removed = []
    for directory in directories:
        try:
            candidates = list(directory.glob(f"{GROUP_PREFIX}*-*"))
        except OSError:
            continue
        for path in candidates:
            pid_text = path.name[len(GROUP_PREFIX) :].split("-", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue
            try:
                os.kill(int(pid_text), 0)
                continue
            except ProcessLookupError:
                pass
            except OSError:
                continue
            _remove_tree(path)
            if not path.exists():
                removed.append(path)
    return removed
