"""Worker-side confinement: what a freshly forked, single-threaded sandbox worker does to itself.

This module runs inside the worker, so it imports only the standard library and its two siblings
(``_landlock``: ctypes, ``_seccomp``: pyseccomp). It must stay importable on its own.

The order is the one measured in SANDBOX-FACTS section 1 (see docs/SANDBOX.md for the reasons)::

    thread check -> PDEATHSIG + getppid -> setsid -> stdio -> close fds -> environment -> join cgroups
    -> check the PID namespace -> setrlimit
    -> unshare (mount+net+ipc+uts) -> private root (``_mounts``) -> setgroups/setresgid/setresuid
       (or, in user-namespace mode: setresuid -> unshare (user+mount+net+ipc+uts) -> private root)
    -> PDEATHSIG again -> NO_NEW_PRIVS -> Landlock -> seccomp filter 1      (all in ``confine_self``)
    ... grpc.server() + add_insecure_port + start() ...      (the caller)
    -> seccomp filter 2 with TSYNC                             (``lock_sockets``)

The host side uses ``probe_layers`` (which never changes the calling process) and reads the
``ConfinementReport`` the worker sends back, so it can refuse to run below a minimum.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Literal

from . import _landlock, _mounts

try:
    from . import _seccomp
except RuntimeError as _exc:  # pyseccomp raises RuntimeError("Unable to find libseccomp")
    _SECCOMP_IMPORT_ERROR: str | None = f"libseccomp is not loadable: {_exc}; install libseccomp2"
else:
    _SECCOMP_IMPORT_ERROR = None

# Layer names, in the order confine_self applies them; lock_sockets applies the last one.
LAYER_PDEATHSIG: Final = "pdeathsig"
LAYER_CGROUP: Final = "cgroup"
LAYER_PIDNS: Final = "pidns"
LAYER_RLIMITS: Final = "rlimits"
LAYER_USERNS: Final = "userns"
LAYER_NETNS: Final = "netns"
LAYER_MOUNTNS: Final = "mountns"
LAYER_UID: Final = "uid"
LAYER_NO_NEW_PRIVS: Final = "no_new_privs"
LAYER_LANDLOCK: Final = "landlock"
LAYER_SECCOMP: Final = "seccomp"
LAYER_SECCOMP_SOCKETS: Final = "seccomp_sockets"
ALL_LAYERS: Final = (
    LAYER_PDEATHSIG,
    LAYER_CGROUP,
    LAYER_PIDNS,
    LAYER_RLIMITS,
    LAYER_USERNS,
    LAYER_NETNS,
    LAYER_MOUNTNS,
    LAYER_UID,
    LAYER_NO_NEW_PRIVS,
    LAYER_LANDLOCK,
    LAYER_SECCOMP,
    LAYER_SECCOMP_SOCKETS,
)
# Steps that are always done and have no "unavailable" case; a failure names the step as the layer.
STEP_THREADS: Final = "threads"
STEP_SESSION: Final = "session"
STEP_STDIO: Final = "stdio"
STEP_FDS: Final = "fds"
STEP_ENVIRONMENT: Final = "environment"

DEFAULT_REQUIRED_LAYERS: Final = frozenset(
    {LAYER_PDEATHSIG, LAYER_RLIMITS, LAYER_NO_NEW_PRIVS, LAYER_LANDLOCK, LAYER_SECCOMP, LAYER_SECCOMP_SOCKETS}
)
# Below 256 MiB of RLIMIT_DATA grpc could not start its threads under load (SANDBOX-FACTS section 7).
MIN_MEMORY_MB: Final = 256
# SIGXCPU at the soft limit; if the plugin ignores it, SIGKILL this many seconds later at the hard limit.
CPU_KILL_GRACE_S: Final = 1
MALLOC_ARENA_MAX: Final = 2
MINIMAL_PATH: Final = "/usr/bin:/bin"
SYSTEM_READ_ONLY_PATHS: Final = (
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/local/lib",
    "/etc/ld.so.cache",
    "/dev/urandom",
)

_PR_SET_PDEATHSIG: Final = 1
_PR_GET_PDEATHSIG: Final = 2
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_GET_NO_NEW_PRIVS: Final = 39
_M_ARENA_MAX: Final = -8
_CLONE_NEWNS: Final = 0x00020000
_CLONE_NEWUTS: Final = 0x04000000
_CLONE_NEWIPC: Final = 0x08000000
_CLONE_NEWUSER: Final = 0x10000000
_CLONE_NEWPID: Final = 0x20000000
_CLONE_NEWNET: Final = 0x40000000
# A mount namespace comes with its own IPC (SysV shared memory, message queues) and hostname.
_MOUNT_FLAGS: Final = _CLONE_NEWNS | _CLONE_NEWIPC | _CLONE_NEWUTS
_CAPABILITY_VERSION_3: Final = 0x20080522
_MIB: Final = 1024 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.restype = ctypes.c_int
_libc.unshare.restype = ctypes.c_int
_libc.mallopt.restype = ctypes.c_int
_libc.capset.restype = ctypes.c_int

LayerState = Literal["in_force", "skipped", "not_requested"]


class ConfinementError(RuntimeError):
    """A confinement step that was required could not be applied; the worker must not go on.

    ``layer`` is the layer or step name (see ``ALL_LAYERS`` and the ``STEP_*`` constants) and ``reason``
    says what happened. The worker should exit with a distinct code so the host stops respawning it.
    """

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(f"confinement layer '{layer}' failed: {reason}")
        self.layer = layer
        self.reason = reason


@dataclass(frozen=True)
class ConfinementSpec:
    """Everything a worker needs to confine itself. Built on the host, passed to the worker as data.

    Paths must be absolute. Every ``*_mb`` is MiB, every ``*_s`` is seconds of CPU time; ``None`` leaves
    that limit as inherited. There are no environment variables here: the host's configuration fills it.

    - ``temp_dir``: the worker's private writable directory; TMPDIR points to it. Without a mount namespace
      it must exist; with one it is where the worker's own tmpfs is mounted (``/tmp``).
    - ``read_only_paths``: read-only trees (READ_FILE + READ_DIR; no EXECUTE). Use
      ``default_read_only_paths()`` plus the worker code and plugin directories. Missing paths are skipped.
      With a mount namespace these are exactly what the worker's new root holds (bind mounts).
    - ``socket_dir``: where the worker creates its gRPC socket (MAKE_SOCK + REMOVE_FILE only), or None.
    - ``cgroup_procs``: ``cgroup.procs`` files the worker joins itself, first (``sandbox.cgroups`` made the
      groups). A cgroup v1 move waits for an RCU grace period (~7 ms), so the pool moves its workers itself
      while they confine themselves, and passes ``cgroup_dirs`` instead: the groups ``check_cgroups`` checks
      the worker is in before it imports the plugin.
    - ``pid_namespace``: the zygote made a PID namespace for its workers; the worker checks it is in one.
    - ``mount_namespace`` (default False): a private root (``_mounts``) mounted on ``root_dir``, an empty
      directory, with a fresh /proc and a tmpfs /tmp of ``tmp_size_mb`` MiB and ``tmp_max_files`` inodes.
    - ``cpu_time_s`` (default 300): RLIMIT_CPU, a budget for the worker's whole life, not per call.
    - ``memory_mb`` (default 512, at least 256): RLIMIT_DATA. RLIMIT_AS is not used: thread stacks and
      malloc arenas reserve about 1.1 GiB of address space that is never touched.
    - ``open_files`` (default 256): RLIMIT_NOFILE.
    - ``processes`` (default None): RLIMIT_NPROC. It counts every thread of the real uid across all
      workers (and the host, when they share a uid); uid 0 is exempt. Leave None unless each worker has
      its own uid.
    - ``file_size_mb`` (default 64): RLIMIT_FSIZE; a bigger write fails with EFBIG. RLIMIT_CORE is always 0.
    - ``uid``/``gid``: drop to these ids (gid defaults to uid). Needs root, and (without a mount namespace)
      the Python runtime must be reachable by that uid.
    - ``unshare_net`` (default True): a new, empty network namespace (needs root, or ``user_namespace``).
    - ``user_namespace`` (default False): unshare a user namespace (with the network and mount ones),
      mapping the worker to its own id inside; works unprivileged and drops every capability the worker had
      in the host namespace. With ``uid`` set (a root host), the worker drops to that uid first, so it never
      keeps real root outside.
    - ``layers``: which layers to apply at all (default every layer); ``required_layers``: those whose
      failure raises ``ConfinementError`` (default ``DEFAULT_REQUIRED_LAYERS``). Others are skipped.
    - ``keep_fds``: fds to keep open besides 0-2 (for example the pipe the report goes back on).
    - ``stdout_fd``/``log_fd``: fds to put on 1 and 2 (default /dev/null); 0 is always /dev/null.
    - ``pdeathsig``: signal the worker gets when its parent dies (default SIGKILL).
    - ``extra_environment``: (name, value) pairs added to the minimal environment.
    """

    temp_dir: str
    read_only_paths: tuple[str, ...] = ()
    socket_dir: str | None = None
    cpu_time_s: int | None = 300
    memory_mb: int | None = 512
    open_files: int | None = 256
    processes: int | None = None
    file_size_mb: int | None = 64
    uid: int | None = None
    gid: int | None = None
    unshare_net: bool = True
    user_namespace: bool = False
    layers: frozenset[str] = frozenset(ALL_LAYERS)
    required_layers: frozenset[str] = DEFAULT_REQUIRED_LAYERS
    keep_fds: tuple[int, ...] = ()
    stdout_fd: int | None = None
    log_fd: int | None = None
    pdeathsig: int = int(signal.SIGKILL)
    extra_environment: tuple[tuple[str, str], ...] = ()
    cgroup_procs: tuple[str, ...] = ()
    cgroup_dirs: tuple[str, ...] = ()
    pid_namespace: bool = False
    mount_namespace: bool = False
    root_dir: str | None = None
    tmp_size_mb: int = 64
    tmp_max_files: int = 4096

    def __post_init__(self) -> None:
        paths = [self.temp_dir, *self.read_only_paths, *self.cgroup_procs, *self.cgroup_dirs]
        for optional in (self.socket_dir, self.root_dir):
            if optional is not None:
                paths.append(optional)
        for path in paths:
            if not os.path.isabs(path):
                raise ValueError(f"ConfinementSpec: path {path!r} is not absolute; pass an absolute path")
        unknown = (self.layers | self.required_layers) - set(ALL_LAYERS)
        if unknown:
            raise ValueError(f"ConfinementSpec: unknown layers {sorted(unknown)}; known: {list(ALL_LAYERS)}")
        if not self.required_layers <= self.layers:
            missing = sorted(self.required_layers - self.layers)
            raise ValueError(f"ConfinementSpec: required layers {missing} are not in 'layers'")
        for name in ("cpu_time_s", "memory_mb", "open_files", "processes", "file_size_mb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"ConfinementSpec: {name} must be positive or None, got {value}")
        if self.memory_mb is not None and self.memory_mb < MIN_MEMORY_MB:
            raise ValueError(
                f"ConfinementSpec: memory_mb={self.memory_mb} is below {MIN_MEMORY_MB}; grpc cannot start "
                "its threads with less RLIMIT_DATA"
            )
        if self.gid is not None and self.uid is None:
            raise ValueError("ConfinementSpec: gid is set but uid is not; set uid too")
        if self.mount_namespace and self.root_dir is None:
            raise ValueError("ConfinementSpec: mount_namespace needs root_dir, an empty directory for the new root")
        for name in ("tmp_size_mb", "tmp_max_files"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ConfinementSpec: {name} must be positive, got {getattr(self, name)}")
        if LAYER_MOUNTNS in self.required_layers and not self.mount_namespace:
            raise ValueError("ConfinementSpec: layer 'mountns' is required but mount_namespace is False")
        if LAYER_CGROUP in self.required_layers and not (self.cgroup_procs or self.cgroup_dirs):
            raise ValueError(
                "ConfinementSpec: layer 'cgroup' is required but neither cgroup_procs nor cgroup_dirs is set"
            )
        if LAYER_PIDNS in self.required_layers and not self.pid_namespace:
            raise ValueError("ConfinementSpec: layer 'pidns' is required but pid_namespace is False")
        if LAYER_UID in self.required_layers and self.uid is None:
            raise ValueError("ConfinementSpec: layer 'uid' is required but uid is None")
        if LAYER_USERNS in self.required_layers and not self.user_namespace:
            raise ValueError("ConfinementSpec: layer 'userns' is required but user_namespace is False")
        if LAYER_NETNS in self.required_layers and not self.unshare_net:
            raise ValueError("ConfinementSpec: layer 'netns' is required but unshare_net is False")
        if any(fd < 0 for fd in self.keep_fds):
            raise ValueError(f"ConfinementSpec: keep_fds {self.keep_fds} has a negative fd")
        for name in ("stdout_fd", "log_fd"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"ConfinementSpec: {name}={value} is negative; pass None for /dev/null")

    @property
    def effective_gid(self) -> int | None:
        """The gid the worker drops to: ``gid``, else ``uid``, else None. No side effects."""
        return self.gid if self.gid is not None else self.uid

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dict that ``from_dict`` turns back into an equal spec."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, frozenset):
                value = sorted(value)
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfinementSpec:
        """Build a spec from ``to_dict`` output; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"ConfinementSpec: unknown keys {sorted(unknown)}")
        kwargs: dict[str, Any] = dict(data)
        for name in ("layers", "required_layers"):
            if name in kwargs:
                kwargs[name] = frozenset(kwargs[name])
        for name in ("read_only_paths", "keep_fds", "cgroup_procs", "cgroup_dirs"):
            if name in kwargs:
                kwargs[name] = tuple(kwargs[name])
        if "extra_environment" in kwargs:
            kwargs["extra_environment"] = tuple((str(k), str(v)) for k, v in kwargs["extra_environment"])
        return cls(**kwargs)


@dataclass(frozen=True)
class LayerOutcome:
    """One layer's result in a worker: ``in_force``, ``skipped`` (wanted but unavailable, not required),
    or ``not_requested``; ``detail`` says what was applied or why not."""

    state: LayerState
    detail: str


@dataclass(frozen=True)
class ConfinementReport:
    """What confinement a worker is under. Immutable; ``lock_sockets`` returns an extended copy.

    ``layers`` maps every name in ``ALL_LAYERS`` to its outcome; ``landlock_abi`` is 0 without Landlock;
    ``step_ms`` is the time after ``confine_self`` started at which each step finished.
    """

    layers: Mapping[str, LayerOutcome]
    landlock_abi: int
    uid: int
    gid: int
    step_ms: Mapping[str, float] = field(default_factory=dict)

    def is_in_force(self, layer: str) -> bool:
        """Say whether ``layer`` is in force. No side effects."""
        outcome = self.layers.get(layer)
        return outcome is not None and outcome.state == "in_force"

    def list_in_force(self) -> list[str]:
        """Return the layers in force, in the order they were applied. No side effects."""
        return [name for name in ALL_LAYERS if self.is_in_force(name)]

    def list_missing(self, minimum: Iterable[str]) -> list[str]:
        """Return the layers of ``minimum`` that are not in force (empty when the minimum is met)."""
        return [name for name in minimum if not self.is_in_force(name)]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dict (layer -> {state, detail}, plus abi, ids and timings)."""
        return {
            "layers": {name: {"state": o.state, "detail": o.detail} for name, o in self.layers.items()},
            "landlock_abi": self.landlock_abi,
            "uid": self.uid,
            "gid": self.gid,
            "step_ms": {k: round(v, 3) for k, v in self.step_ms.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfinementReport:
        """Rebuild a report from ``to_dict`` output (for the host reading a worker's report)."""
        layers = {name: LayerOutcome(o["state"], o["detail"]) for name, o in data["layers"].items()}
        return cls(layers, int(data["landlock_abi"]), int(data["uid"]), int(data["gid"]), dict(data["step_ms"]))


@dataclass(frozen=True)
class LayerStatus:
    """Whether a layer can be applied on this machine, and why not. ``abi`` is set for Landlock only."""

    available: bool
    reason: str
    abi: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dict."""
        return {"available": self.available, "reason": self.reason, "abi": self.abi}


# ---------------------------------------------------------------------------------------------------------
# small helpers


def get_thread_count() -> int:
    """Return the number of kernel tasks (threads) of this process, from /proc/self/task.

    ``threading.active_count()`` misses grpc's native threads, so it cannot be used. No side effects.
    """
    return len(os.listdir("/proc/self/task"))


def default_read_only_paths(*extra: str) -> tuple[str, ...]:
    """Return the read-only paths a worker of this interpreter needs, plus ``extra``, deduplicated.

    That is the standard library (with lib-dynload), site-packages, the system library directories,
    /etc/ld.so.cache and /dev/urandom (grpc aborts without it). Only existing paths are returned, in
    their resolved form. Reads the filesystem; no other side effects.
    """
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    candidates = [sysconfig.get_paths()[name] for name in names]
    candidates += [*SYSTEM_READ_ONLY_PATHS, *extra]
    out: list[str] = []
    for path in candidates:
        real = os.path.realpath(path)
        if os.path.exists(real) and real not in out:
            out.append(real)
    return tuple(out)


def _prctl(option: int, arg2: int = 0) -> int:
    res = int(_libc.prctl(option, ctypes.c_ulong(arg2), 0, 0, 0))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return res


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare({flags:#x}): {os.strerror(err)}")


def _describe_owner(st: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {st.st_uid}:{st.st_gid}"


def _find_inaccessible_path(path: str, uid: int, gid: int, need: int, *, ancestors: bool = True) -> str | None:
    """Return why ``uid``/``gid`` (no supplementary groups) cannot reach ``path`` with ``need`` (R/W/X bits
    as in os.R_OK...), or None. Checks mode bits of every ancestor (or only of the path itself when
    ``ancestors`` is False); ignores ACLs. Only reads metadata."""
    if uid == 0:
        return None
    real = os.path.realpath(path)
    if not os.path.exists(real):
        return None
    parts = real.split("/")
    for i in range(1 if ancestors else len(parts), len(parts) + 1):
        current = "/".join(parts[:i]) or "/"
        st = os.stat(current)
        wanted = need if i == len(parts) else os.X_OK
        if i == len(parts) and stat.S_ISDIR(st.st_mode) and need & os.R_OK:
            wanted |= os.X_OK
        if st.st_uid == uid:
            granted = (st.st_mode >> 6) & 7
        elif st.st_gid == gid:
            granted = (st.st_mode >> 3) & 7
        else:
            granted = st.st_mode & 7
        if wanted & ~granted:
            return f"{current} ({_describe_owner(st)}) does not let uid {uid} reach {path}"
    return None


def _find_inaccessible_for_uid(spec: ConfinementSpec, uid: int, gid: int) -> str | None:
    checks = [(p, os.R_OK) for p in spec.read_only_paths]
    if not spec.mount_namespace:
        checks.append((spec.temp_dir, os.R_OK | os.W_OK | os.X_OK))
    if spec.socket_dir is not None:
        checks.append((spec.socket_dir, os.W_OK | os.X_OK))
    for path, need in checks:
        # With a private root every path is bound at the top of directories the worker made (0755): only
        # the path itself decides, not the host's ancestors (a 0700 home).
        why = _find_inaccessible_path(path, uid, gid, need, ancestors=not spec.mount_namespace)
        if why is not None:
            return why
    return None


# ---------------------------------------------------------------------------------------------------------
# the worker side


class _Steps:
    """Collects outcomes; raises for required layers, records skips for optional ones."""

    def __init__(self, spec: ConfinementSpec) -> None:
        self.spec = spec
        self.outcomes: dict[str, LayerOutcome] = {
            name: LayerOutcome("not_requested", "" if name in spec.layers else "not in spec.layers")
            for name in ALL_LAYERS
        }
        self.step_ms: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def wants(self, layer: str) -> bool:
        return layer in self.spec.layers

    def mark(self, name: str) -> None:
        self.step_ms[name] = (time.perf_counter() - self._t0) * 1000.0

    def done(self, layer: str, detail: str) -> None:
        self.outcomes[layer] = LayerOutcome("in_force", detail)
        self.mark(layer)

    def not_requested(self, layer: str, detail: str) -> None:
        self.outcomes[layer] = LayerOutcome("not_requested", detail)

    def failed(self, layer: str, reason: str, cause: BaseException | None = None) -> None:
        if layer in self.spec.required_layers:
            raise ConfinementError(layer, reason) from cause
        self.outcomes[layer] = LayerOutcome("skipped", reason)


def _fail_step(step: str, exc: OSError) -> ConfinementError:
    return ConfinementError(step, f"{exc.strerror or exc} (errno {exc.errno})")


def _arm_pdeathsig(spec: ConfinementSpec, parent_pid: int) -> None:
    _prctl(_PR_SET_PDEATHSIG, spec.pdeathsig)
    # The parent may have died before the signal was armed; then nobody would ever kill this worker.
    if os.getppid() != parent_pid:
        raise ConfinementError(
            LAYER_PDEATHSIG, f"parent {parent_pid} exited before the worker started (ppid is {os.getppid()})"
        )


def _redirect_stdio(spec: ConfinementSpec) -> None:
    # Inherited stdio is the zygote's reply pipe: a plugin print() would be read as the zygote's answer.
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.dup2(devnull, 0)
        os.dup2(spec.stdout_fd if spec.stdout_fd is not None else devnull, 1)
        os.dup2(spec.log_fd if spec.log_fd is not None else devnull, 2)
    finally:
        if devnull > 2:
            os.close(devnull)


def _close_inherited_fds(keep: Iterable[int]) -> None:
    # Bounded by the highest open fd: without close_range (Linux < 5.9) closerange loops over every number.
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    low = 3
    for fd in sorted(set(keep) | {0, 1, 2}):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, highest + 1)


def _scrub_environment(spec: ConfinementSpec) -> None:
    os.environ.clear()
    os.environ.update({"PATH": MINIMAL_PATH, "TMPDIR": spec.temp_dir, "MALLOC_ARENA_MAX": str(MALLOC_ARENA_MAX)})
    os.environ.update(dict(spec.extra_environment))
    # glibc read MALLOC_ARENA_MAX when the interpreter started; only mallopt changes it now.
    _libc.mallopt(_M_ARENA_MAX, MALLOC_ARENA_MAX)
    # tempfile caches the directory it found first, which may be the host's.
    tempfile.tempdir = spec.temp_dir
    # The worker cannot write bytecode next to the plugin anyway; do not even try.
    sys.dont_write_bytecode = True


def _apply_rlimits(spec: ConfinementSpec) -> str:
    wanted: list[tuple[str, int, int | None, int]] = [
        ("cpu_s", resource.RLIMIT_CPU, spec.cpu_time_s, 1),
        ("data_mb", resource.RLIMIT_DATA, spec.memory_mb, _MIB),
        ("nofile", resource.RLIMIT_NOFILE, spec.open_files, 1),
        ("nproc", resource.RLIMIT_NPROC, spec.processes, 1),
        ("fsize_mb", resource.RLIMIT_FSIZE, spec.file_size_mb, _MIB),
        ("core", resource.RLIMIT_CORE, 0, 1),
    ]
    applied: list[str] = []
    for label, res, value, unit in wanted:
        if value is None:
            continue
        soft = value * unit
        hard = soft + CPU_KILL_GRACE_S if res == resource.RLIMIT_CPU else soft
        _, current_hard = resource.getrlimit(res)
        # Never try to raise a hard limit: that needs CAP_SYS_RESOURCE, which a user namespace lacks.
        if current_hard != resource.RLIM_INFINITY:
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        resource.setrlimit(res, (soft, hard))
        applied.append(f"{label}={value}")
    return " ".join(applied)


def _drop_uid(spec: ConfinementSpec, uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise OSError(errno.EPERM, f"ids are {os.getresuid()}/{os.getresgid()} after setresuid")


def _landlock_rules(spec: ConfinementSpec, steps: _Steps) -> list[tuple[str, int]]:
    rules = [(path, _landlock.READ_ONLY) for path in spec.read_only_paths]
    if steps.outcomes[LAYER_MOUNTNS].state == "in_force" and os.path.isdir("/proc/self"):
        # The worker's own /proc (hidepid: it sees only itself there), so a plugin can read its own status.
        rules.append(("/proc", _landlock.READ_ONLY))
    rules.append((spec.temp_dir, _landlock.READ_WRITE))
    if spec.socket_dir is not None:
        rules.append((spec.socket_dir, _landlock.SOCKET_DIR))
    return rules


def _describe_landlock(result: _landlock.LandlockResult) -> str:
    parts = [f"abi {result.abi}", f"{result.rule_count} rules", f"fs rights {result.handled_access_fs:#x}"]
    parts.append("tcp bind/connect denied" if result.handled_access_net else "no tcp rules (abi < 4)")
    parts.append("scoped: abstract-unix, signal" if result.scoped else "no ipc scoping (abi < 6)")
    if result.missing_paths:
        parts.append(f"missing paths skipped: {', '.join(result.missing_paths)}")
    return "; ".join(parts)


def confine_self(spec: ConfinementSpec, *, parent_pid: int) -> ConfinementReport:
    """Confine the calling process, which must be a freshly forked, single-threaded worker.

    Applies everything up to and including seccomp filter 1, in the order in the module docstring;
    ``parent_pid`` is the pid of the process that forked this one (the PDEATHSIG check). Call it before
    ``grpc.server()`` (which starts threads), then call ``lock_sockets`` once the server has started.

    Raises ``ConfinementError`` when the process has more than one thread, when a required layer or an
    always-on step fails, or when the parent is already gone; the process is then partly confined and
    must exit. Layers that are not required and fail are recorded as ``skipped`` in the report.
    Non-blocking (a few ms). Not safe to call twice: the second call would fail (no fork, no unshare)
    or stack a second set of filters.
    """
    steps = _Steps(spec)
    threads = get_thread_count()
    if threads != 1:
        raise ConfinementError(
            STEP_THREADS,
            f"the process has {threads} threads; confine_self must run before any thread is started "
            "(grpc.server() starts 6)",
        )
    if not spec.mount_namespace and not os.path.isdir(spec.temp_dir):
        raise ConfinementError(STEP_ENVIRONMENT, f"temp_dir {spec.temp_dir} is not a directory")

    if steps.wants(LAYER_PDEATHSIG):
        try:
            _arm_pdeathsig(spec, parent_pid)
            steps.done(LAYER_PDEATHSIG, f"signal {spec.pdeathsig} when parent {parent_pid} exits")
        except OSError as exc:
            steps.failed(LAYER_PDEATHSIG, str(exc), exc)

    # A session of its own: the host's terminal and process-group signals (Ctrl-C) do not reach it.
    if os.getsid(0) != os.getpid():
        try:
            os.setsid()
        except OSError as exc:
            raise _fail_step(STEP_SESSION, exc) from exc
    steps.mark(STEP_SESSION)
    try:
        _redirect_stdio(spec)
    except OSError as exc:
        raise _fail_step(STEP_STDIO, exc) from exc
    steps.mark(STEP_STDIO)
    try:
        _close_inherited_fds(spec.keep_fds)
    except OSError as exc:
        raise _fail_step(STEP_FDS, exc) from exc
    steps.mark(STEP_FDS)
    _scrub_environment(spec)
    steps.mark(STEP_ENVIRONMENT)

    # First, while still root: everything allocated from here on is charged to the worker's own groups.
    if spec.cgroup_dirs and not spec.cgroup_procs:
        steps.not_requested(LAYER_CGROUP, "pending: the host moves the worker, check_cgroups() before the import")
    elif not spec.cgroup_procs:
        steps.not_requested(LAYER_CGROUP, "no cgroup configured")
    elif steps.wants(LAYER_CGROUP):
        try:
            for procs in spec.cgroup_procs:
                with open(procs, "w") as fh:
                    fh.write("0")
            steps.done(LAYER_CGROUP, f"joined {len(spec.cgroup_procs)} groups: memory, pids and cpu limits")
        except OSError as exc:
            steps.failed(LAYER_CGROUP, f"joining {exc.filename or 'the cgroup'} failed: {exc.strerror}", exc)
    _check_pid_namespace(spec, steps)

    if steps.wants(LAYER_RLIMITS):
        try:
            steps.done(LAYER_RLIMITS, _apply_rlimits(spec))
        except (OSError, ValueError) as exc:
            steps.failed(LAYER_RLIMITS, f"setrlimit failed: {exc}", exc)

    uid, gid = spec.uid, spec.effective_gid
    if uid is None or gid is None:
        steps.not_requested(LAYER_UID, "no uid configured")
    if spec.user_namespace:
        # Never real root outside: drop to the worker's own uid first, then make the user namespace as it.
        _drop_to_worker_uid(spec, steps, parent_pid)
        _apply_namespaces(spec, steps)
    else:
        _apply_namespaces(spec, steps)
        _drop_to_worker_uid(spec, steps, parent_pid)
    # Changing credentials clears PDEATHSIG (measured); arm it again and re-check the parent.
    if steps.wants(LAYER_PDEATHSIG) and steps.outcomes[LAYER_PDEATHSIG].state == "in_force":
        try:
            _arm_pdeathsig(spec, parent_pid)
        except OSError as exc:
            raise ConfinementError(LAYER_PDEATHSIG, f"re-arming after the uid change failed: {exc}") from exc

    if steps.wants(LAYER_NO_NEW_PRIVS):
        try:
            _prctl(_PR_SET_NO_NEW_PRIVS, 1)
            if _prctl(_PR_GET_NO_NEW_PRIVS) != 1:
                raise OSError(errno.EINVAL, "PR_GET_NO_NEW_PRIVS does not read 1")
            steps.done(LAYER_NO_NEW_PRIVS, "set")
        except OSError as exc:
            steps.failed(LAYER_NO_NEW_PRIVS, str(exc), exc)

    abi = _landlock.get_abi_version()
    if steps.wants(LAYER_LANDLOCK):
        try:
            result = _landlock.restrict_self(_landlock_rules(spec, steps), abi=abi)
            steps.done(LAYER_LANDLOCK, _describe_landlock(result))
        except OSError as exc:
            reason = f"{exc}; the worker uid must be able to open every rule path" if abi else str(exc)
            steps.failed(LAYER_LANDLOCK, reason, exc)

    if steps.wants(LAYER_SECCOMP):
        if _SECCOMP_IMPORT_ERROR is not None:
            steps.failed(LAYER_SECCOMP, _SECCOMP_IMPORT_ERROR)
        else:
            try:
                loaded = _seccomp.load_base_filter(os.getpid())
                detail = (
                    f"deny list on {len(loaded.rule_syscalls)} syscalls, calls naming a process only for itself, "
                    "bad arch kills the process"
                )
                if loaded.unknown_syscalls:
                    detail += f"; unknown here: {', '.join(loaded.unknown_syscalls)}"
                steps.done(LAYER_SECCOMP, detail)
            except OSError as exc:
                steps.failed(LAYER_SECCOMP, f"loading filter 1 failed: {exc}", exc)

    if steps.wants(LAYER_SECCOMP_SOCKETS):
        steps.not_requested(LAYER_SECCOMP_SOCKETS, "pending: lock_sockets() after the server starts")
    return ConfinementReport(
        layers=dict(steps.outcomes),
        landlock_abi=abi if steps.outcomes[LAYER_LANDLOCK].state == "in_force" else 0,
        uid=os.getuid(),
        gid=os.getgid(),
        step_ms=dict(steps.step_ms),
    )


def check_cgroups(spec: ConfinementSpec, report: ConfinementReport, view_fd: int) -> ConfinementReport:
    """Check that the parent put this process in every group of ``spec.cgroup_dirs``; return ``report`` with
    the ``cgroup`` layer's outcome. ``view_fd`` is /proc/self/cgroup, opened before Landlock.

    Raises ``ConfinementError`` if the layer is required and the process is not in its groups. Call it before
    any plugin code runs. Reads one small file; safe to call twice.
    """
    if not spec.cgroup_dirs:
        return report
    steps = _Steps(spec)
    steps.outcomes = dict(report.layers)
    if not steps.wants(LAYER_CGROUP):
        return report
    # A group is named by its last two components (plugin-pool-<host>-<token>/w<n>), whatever the mount.
    suffixes = {"/" + "/".join(d.rstrip("/").split("/")[-2:]) for d in spec.cgroup_dirs}
    hierarchies = len(set(spec.cgroup_dirs))
    lines = os.pread(view_fd, 65536, 0).decode(errors="replace").splitlines()
    placed = [line for line in lines if any(line.endswith(suffix) for suffix in suffixes)]
    if len(placed) >= hierarchies:
        steps.done(LAYER_CGROUP, f"in its own groups in {hierarchies} hierarchies: memory, pids and cpu limits")
    else:
        steps.failed(LAYER_CGROUP, f"not in its groups {sorted(suffixes)}: /proc/self/cgroup reads {lines}")
    return replace(report, layers=steps.outcomes)


def get_host_pid() -> int:
    """This process's pid as the host's PID namespace numbers it (``/proc`` of the host, before the worker
    mounts its own), which differs from ``os.getpid()`` inside a PID namespace. Reads /proc/self."""
    try:
        return int(os.readlink("/proc/self"))
    except (OSError, ValueError):
        return os.getpid()


def _check_pid_namespace(spec: ConfinementSpec, steps: _Steps) -> None:
    if not spec.pid_namespace:
        steps.not_requested(LAYER_PIDNS, "the zygote made no PID namespace")
        return
    if not steps.wants(LAYER_PIDNS):
        return
    host_pid = get_host_pid()
    if host_pid == os.getpid():
        steps.failed(LAYER_PIDNS, "the worker is not in a PID namespace of its own (its pid is the host's)")
        return
    steps.done(
        LAYER_PIDNS,
        f"pid {os.getpid()} in the zygote's PID namespace (host pid {host_pid}); the namespace dies with the zygote",
    )


def _drop_to_worker_uid(spec: ConfinementSpec, steps: _Steps, parent_pid: int) -> None:
    uid, gid = spec.uid, spec.effective_gid
    if uid is None or gid is None or not steps.wants(LAYER_UID):
        return
    why = _find_inaccessible_for_uid(spec, uid, gid)
    if why is not None:
        steps.failed(LAYER_UID, f"{why}; install Python where uid {uid} can read it, or use a mount namespace")
        return
    try:
        _drop_uid(spec, uid, gid)
        steps.done(LAYER_UID, f"uid {uid} gid {gid} of its own, no supplementary groups")
    except OSError as exc:
        steps.failed(LAYER_UID, f"setresuid({uid}) failed: {exc}", exc)


def _apply_namespaces(spec: ConfinementSpec, steps: _Steps) -> None:
    want_net = spec.unshare_net and steps.wants(LAYER_NETNS)
    want_user = spec.user_namespace and steps.wants(LAYER_USERNS)
    want_mount = spec.mount_namespace and steps.wants(LAYER_MOUNTNS)
    if not spec.unshare_net:
        steps.not_requested(LAYER_NETNS, "unshare_net is False")
    if not spec.user_namespace:
        steps.not_requested(LAYER_USERNS, "user_namespace is False")
    if not spec.mount_namespace:
        steps.not_requested(LAYER_MOUNTNS, "mount_namespace is False")
    flags = (_CLONE_NEWNET if want_net else 0) | (_MOUNT_FLAGS if want_mount else 0)
    if want_user:
        # One call: the new namespaces are then owned by the new user namespace, which is what lets an
        # unprivileged process create them. It needs a single-threaded caller.
        outer_uid, outer_gid = os.getuid(), os.getgid()
        try:
            _unshare(_CLONE_NEWUSER | flags)
            _map_own_ids(outer_uid, outer_gid)
        except OSError as exc:
            steps.failed(LAYER_USERNS, str(exc), exc)
            for layer, wanted in ((LAYER_NETNS, want_net), (LAYER_MOUNTNS, want_mount)):
                if wanted:
                    steps.failed(layer, f"not created: the user namespace failed ({exc})", exc)
            return
        steps.done(LAYER_USERNS, f"own user namespace, uid {outer_uid} inside and out: no capabilities outside")
    elif flags:
        try:
            _unshare(flags)
        except OSError as exc:
            for layer, wanted in ((LAYER_NETNS, want_net), (LAYER_MOUNTNS, want_mount)):
                if wanted:
                    hint = "unprivileged hosts need user_namespace=True" if os.geteuid() else "unshare failed"
                    steps.failed(layer, f"{exc}; {hint}", exc)
            return
    if want_net:
        steps.done(LAYER_NETNS, "empty network namespace (loopback down)")
    if want_mount:
        assert spec.root_dir is not None  # checked by the spec
        plan = _mounts.MountPlan(
            root_dir=spec.root_dir,
            read_only_paths=spec.read_only_paths,
            read_write_paths=() if spec.socket_dir is None else (spec.socket_dir,),
            tmp_dir=spec.temp_dir,
            tmp_size_mb=spec.tmp_size_mb,
            tmp_max_files=spec.tmp_max_files,
            tmp_uid=None if want_user else spec.uid,
            tmp_gid=None if want_user else spec.effective_gid,
            # A fresh /proc needs rights over the PID namespace, which a nested user namespace lacks.
            mount_proc=not want_user,
        )
        try:
            steps.done(LAYER_MOUNTNS, _mounts.build_root(plan))
        except OSError as exc:
            steps.failed(LAYER_MOUNTNS, f"building the private root failed: {exc}", exc)
    if want_user:
        _drop_capabilities()


def _map_own_ids(uid: int, gid: int) -> None:
    """Map the worker's own (unprivileged) ids into its new user namespace, the same numbers inside."""
    with open("/proc/self/setgroups", "w") as fh:
        fh.write("deny")
    with open("/proc/self/uid_map", "w") as fh:
        fh.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as fh:
        fh.write(f"{gid} {gid} 1")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    # The creator of a user namespace holds every capability in it; the mounts are done, so give them up.
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise ConfinementError(LAYER_USERNS, f"dropping capabilities failed: {os.strerror(err)}")


def lock_sockets(spec: ConfinementSpec, report: ConfinementReport) -> ConfinementReport:
    """Load seccomp filter 2 on every thread (TSYNC): socket, socketpair and connect then get EPERM.

    Call it once, after the grpc server has started and before the plugin is imported; accepting on the
    listening socket keeps working. Returns ``report`` extended with the ``seccomp_sockets`` layer.
    Raises ``ConfinementError`` if the layer is required and cannot be loaded. Non-blocking (~0.2 ms).
    Calling it twice stacks an identical filter: harmless, but pointless.
    """
    steps = _Steps(spec)
    steps.outcomes = dict(report.layers)
    if not steps.wants(LAYER_SECCOMP_SOCKETS):
        steps.not_requested(LAYER_SECCOMP_SOCKETS, "not in spec.layers")
    elif _SECCOMP_IMPORT_ERROR is not None:
        steps.failed(LAYER_SECCOMP_SOCKETS, _SECCOMP_IMPORT_ERROR)
    else:
        try:
            _seccomp.load_socket_filter()
            steps.done(LAYER_SECCOMP_SOCKETS, "socket, socketpair, connect denied on all threads (TSYNC)")
        except OSError as exc:
            steps.failed(LAYER_SECCOMP_SOCKETS, f"loading filter 2 failed: {exc}", exc)
    return replace(report, layers=steps.outcomes)


# ---------------------------------------------------------------------------------------------------------
# the host side

# Run in throwaway interpreters (python -I -S), so the probes never change the caller. Stdlib only.
_NAMESPACE_PROBE = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
USER, NET, NS, PID = 0x10000000, 0x40000000, 0x00020000, 0x20000000
unprivileged = os.geteuid() != 0
def attempt(flags, mount=False):
    # Each attempt in a child of its own: namespaces and mounts never touch this process or the next attempt.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        result = [True, "unshare works"]
        if libc.unshare(flags) != 0:
            result = [False, "unshare failed: " + os.strerror(ctypes.get_errno())]
        elif mount and (libc.mount(None, b"/", None, (1 << 14) | (1 << 18), None) != 0
                        or libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 6, b"size=1m") != 0):
            result = [False, "mounting a tmpfs in it failed: " + os.strerror(ctypes.get_errno())]
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 4096)
    os.waitpid(pid, 0)
    return json.loads(data or b'[false, "the probe child died"]')
extra = USER if unprivileged else 0
out = {
    "netns": attempt(NET | extra),
    "userns": attempt(USER | NET),
    "mountns": attempt(NS | extra, mount=True),
    "pidns": attempt(PID | extra),
}
print(json.dumps(out))
"""

_UID_PROBE = """
import json, os, sys
uid, gid, paths = json.loads(sys.argv[1])
try:
    os.setgroups([]); os.setresgid(gid, gid, gid); os.setresuid(uid, uid, uid)
except OSError as exc:
    print(json.dumps([False, "setresuid(%d) failed: %s" % (uid, exc.strerror)])); raise SystemExit
for path in paths:
    try:
        os.close(os.open(path, os.O_RDONLY))
    except FileNotFoundError:
        pass
    except OSError as exc:
        print(json.dumps([False, "uid %d cannot open %s: %s" % (uid, path, exc.strerror)])); raise SystemExit
print(json.dumps([True, "uid %d can open every read-only path" % uid]))
"""


def _run_probe(code: str, args: list[str], timeout_s: float) -> Any:
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout_s,
        env={},
        check=False,
    )
    if proc.returncode != 0:
        raise OSError(errno.EIO, f"probe exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-300:]}")
    return json.loads(proc.stdout)


def probe_layers(spec: ConfinementSpec | None = None, *, timeout_s: float = 10.0) -> dict[str, LayerStatus]:
    """Report, for every layer in ``ALL_LAYERS``, whether a worker could apply it here, and why not.

    Run it on the host side. It never changes the calling process: it uses side-effect-free calls
    (PR_GET_*, landlock_create_ruleset with the VERSION flag, SECCOMP_GET_ACTION_AVAIL) and runs the
    unshare and setresuid attempts in throwaway interpreters (``sys.executable -I -S``), so it is safe in
    a multi-threaded host. With ``spec`` the uid probe checks that ``spec.uid`` can open
    ``spec.read_only_paths``. Blocks for about 50 ms (two short child processes, at most ``timeout_s``).
    Safe to call any number of times.
    """
    status: dict[str, LayerStatus] = {}
    try:
        signo = ctypes.c_int(0)
        _libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(signo), 0, 0, 0)
        status[LAYER_PDEATHSIG] = LayerStatus(True, "prctl(PR_SET_PDEATHSIG) is always available on Linux")
        _prctl(_PR_GET_NO_NEW_PRIVS)
        status[LAYER_NO_NEW_PRIVS] = LayerStatus(True, "PR_GET_NO_NEW_PRIVS answers")
    except OSError as exc:
        status.setdefault(LAYER_PDEATHSIG, LayerStatus(False, str(exc)))
        status.setdefault(LAYER_NO_NEW_PRIVS, LayerStatus(False, str(exc)))
    status[LAYER_RLIMITS] = LayerStatus(True, "setrlimit can always lower limits")

    abi = _landlock.get_abi_version()
    if abi >= 1:
        features = ["16 fs rights" if abi >= 5 else f"fs rights of abi {abi}"]
        features.append("tcp bind/connect" if abi >= 4 else "no tcp rules")
        features.append("abstract-unix and signal scopes" if abi >= 6 else "no ipc scoping")
        status[LAYER_LANDLOCK] = LayerStatus(True, f"abi {abi}: {', '.join(features)}", abi=abi)
    else:
        status[LAYER_LANDLOCK] = LayerStatus(
            False, "landlock_create_ruleset fails: kernel without Landlock, or 'landlock' not in lsm=", abi=0
        )

    if _SECCOMP_IMPORT_ERROR is not None:
        seccomp_status = LayerStatus(False, _SECCOMP_IMPORT_ERROR)
    elif _seccomp.is_filter_supported():
        seccomp_status = LayerStatus(True, "filter mode with KILL_PROCESS and TSYNC available")
    else:
        seccomp_status = LayerStatus(False, "SECCOMP_GET_ACTION_AVAIL failed: no seccomp filter support")
    status[LAYER_SECCOMP] = seccomp_status
    status[LAYER_SECCOMP_SOCKETS] = seccomp_status

    try:
        namespaces = _run_probe(_NAMESPACE_PROBE, [], timeout_s)
        for layer in (LAYER_NETNS, LAYER_USERNS, LAYER_MOUNTNS, LAYER_PIDNS):
            status[layer] = LayerStatus(bool(namespaces[layer][0]), str(namespaces[layer][1]))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        for layer in (LAYER_NETNS, LAYER_USERNS, LAYER_MOUNTNS, LAYER_PIDNS):
            status[layer] = LayerStatus(False, f"probe failed: {exc}")

    status[LAYER_CGROUP] = _probe_cgroup()
    status[LAYER_UID] = _probe_uid(spec, timeout_s)
    return {name: status[name] for name in ALL_LAYERS}


def _probe_cgroup() -> LayerStatus:
    # Host side only: creates and removes an empty group below this process's own cgroup, nothing else.
    from . import cgroups

    tree = cgroups.CgroupTree()
    try:
        tree.open()
        group = tree.create_worker("probe", cgroups.CgroupLimits(memory_mb=256, max_threads=64, cpu_quota=1.0))
        group.remove()
        return LayerStatus(True, tree.describe())
    except OSError as exc:
        return LayerStatus(False, f"cannot create a worker cgroup: {exc}")
    finally:
        tree.close()


def _probe_uid(spec: ConfinementSpec | None, timeout_s: float) -> LayerStatus:
    if os.geteuid() != 0:
        return LayerStatus(False, f"the host runs as uid {os.geteuid()}, not root; use user_namespace")
    if spec is None or spec.uid is None:
        return LayerStatus(True, "root can setresuid; pass a spec with uid to check the paths")
    uid, gid = spec.uid, spec.effective_gid
    assert gid is not None  # uid is set, so effective_gid is too
    why = _find_inaccessible_for_uid(spec, uid, gid)
    if why is not None:
        return LayerStatus(False, why)
    if spec.mount_namespace:
        # The worker will see these paths bound at the top of its own root, so the host's ancestors (which
        # a uid probe here would have to traverse) do not matter: the metadata check above is the answer.
        return LayerStatus(True, f"uid {uid} can read every read-only path inside its private root")
    try:
        ok, reason = _run_probe(_UID_PROBE, [json.dumps([uid, gid, list(spec.read_only_paths)])], timeout_s)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return LayerStatus(False, f"probe failed: {exc}")
    return LayerStatus(bool(ok), str(reason))
