"""The worker's two seccomp filters, built with libseccomp (pyseccomp).

Runs inside the worker: standard library plus pyseccomp only. Both filters are deny lists on top of
ALLOW, because grpc keeps creating threads and sockets work differently before and after it starts:

- ``load_base_filter`` (filter 1) is loaded before ``grpc.server()``. It denies process creation,
  exec, tracing, namespaces, mounts, kernel-facing interfaces and every non-AF_UNIX socket family.
  clone3 gets ENOSYS (not EPERM) so glibc falls back to clone(CLONE_THREAD), which stays allowed:
  EPERM there stopped grpc from ever serving (SANDBOX-FACTS section 3).
- ``load_socket_filter`` (filter 2) is loaded after ``server.start()``, with TSYNC so it reaches the
  grpc and executor threads that already exist. It denies socket, socketpair and connect outright.

Both use KILL_PROCESS for a foreign architecture (which also covers x32 syscall numbers on x86_64).
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass
from typing import Any, Final

import pyseccomp  # type: ignore[import-untyped,unused-ignore]

AF_UNIX: Final = 1
TIOCSTI: Final = 0x5412
TIOCLINUX: Final = 0x541C
PERSONALITY_QUERY: Final = 0xFFFFFFFF
CLONE_THREAD: Final = 0x00010000
CLONE_NEW_FLAGS: Final = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
_MASK_32: Final = 0xFFFFFFFF

# Denied outright with EPERM by filter 1, grouped by what they would give a plugin.
DENIED_SYSCALLS: Final[tuple[str, ...]] = (
    # new processes and programs (threads use clone with CLONE_THREAD, handled separately)
    "fork", "vfork", "execve", "execveat",
    # reaching into other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    # namespaces and mounts
    "unshare", "setns", "chroot", "pivot_root",
    "mount", "umount2", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # kernel attack surface that no plugin needs
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "modify_ldt", "lookup_dcookie", "fanotify_init", "uselib",
    # machine administration; these matter when the worker keeps uid 0 with its capabilities
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "open_by_handle_at", "name_to_handle_at", "iopl", "ioperm", "acct",
    "quotactl", "syslog", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "vhangup",
)  # fmt: skip

# Calls that name another process are allowed only when they name the worker itself: a uid of its own
# already makes the kernel refuse other processes, this refuses them whatever the uid (user-namespace mode
# keeps the host's uid) and whatever the PID namespace shows. (syscall, argument index, allowed value) where
# the value is SELF (the worker's own pid, as its PID namespace numbers it) or a constant; any other value
# gets EPERM. A value is compared in full 64 bits, so junk in the high bits is refused, not truncated.
SELF = -1
SELF_ONLY_ARGUMENTS: Final[tuple[tuple[str, int, int], ...]] = (
    ("kill", 0, SELF), ("tkill", 0, SELF), ("tgkill", 0, SELF),
    ("rt_sigqueueinfo", 0, SELF), ("rt_tgsigqueueinfo", 0, SELF), ("pidfd_open", 0, SELF),
    # 0 means "the calling process" to these (glibc's setrlimit is prlimit64(0, ...))
    ("prlimit64", 0, 0), ("sched_setaffinity", 0, 0), ("sched_setscheduler", 0, 0), ("sched_setparam", 0, 0),
    ("sched_setattr", 0, 0), ("migrate_pages", 0, 0), ("move_pages", 0, 0), ("get_robust_list", 0, 0),
    ("setpriority", 0, 0), ("setpriority", 1, 0),  # PRIO_PROCESS, who = 0: only its own nice value
    ("ioprio_set", 0, 1), ("ioprio_set", 1, 0),  # IOPRIO_WHO_PROCESS, who = 0
)  # fmt: skip
SELF_ONLY_DENIED: Final[tuple[str, ...]] = ("kcmp",)
# mknod of a socket node needs no privilege, and the worker's socket directory (on the host's disk) allows
# making sockets (for grpc's bind): refused, so a worker cannot fill that directory with inodes. Device nodes
# too (they need CAP_MKNOD, which a worker never has; refused all the same). FIFOs and files stay allowed.
S_IFMT: Final = 0o170000
MKNOD_DENIED_TYPES: Final[dict[str, int]] = {"S_IFSOCK": 0o140000, "S_IFCHR": 0o020000, "S_IFBLK": 0o060000}
MKNOD_MODE_ARGUMENT: Final[dict[str, int]] = {"mknod": 1, "mknodat": 2}
"""Denied outright with the calls above: comparing another process's resources leaks what it holds."""

# prctl options that would undo confinement once it is in place: the death signal that ties the worker to
# the zygote, dumpability and ptracer (ptrace and /proc access by others), capabilities and securebits,
# the memory map, subreaping, I/O flusher status and speculation controls.
PR_SET_PDEATHSIG: Final = 1
DENIED_PRCTL_OPTIONS: Final[dict[str, int]] = {
    "PR_SET_PDEATHSIG": PR_SET_PDEATHSIG,
    "PR_SET_DUMPABLE": 4,
    "PR_SET_KEEPCAPS": 8,
    "PR_SET_SECUREBITS": 28,
    "PR_SET_MM": 35,
    "PR_SET_CHILD_SUBREAPER": 36,
    "PR_CAP_AMBIENT": 47,
    "PR_SET_SPECULATION_CTRL": 53,
    "PR_SET_IO_FLUSHER": 57,
    "PR_SET_PTRACER": 0x59616D61,
}

SOCKET_FILTER_SYSCALLS: Final[tuple[str, ...]] = ("socket", "socketpair", "connect")

# prctl and seccomp(2) constants for the side-effect-free probes.
_PR_GET_SECCOMP: Final = 21
_SECCOMP_GET_ACTION_AVAIL: Final = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


@dataclass(frozen=True)
class SeccompResult:
    """What one loaded filter does: its name, the syscalls it touches, and whether it was TSYNCed."""

    name: str
    rule_syscalls: tuple[str, ...]
    unknown_syscalls: tuple[str, ...]
    tsync: bool


def _resolve(name: str) -> int:
    # -1 is libseccomp's __NR_SCMP_ERROR: the name is unknown to it on this architecture.
    return int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))


def _new_filter() -> Any:
    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    return flt


def get_seccomp_mode() -> int:
    """Return the calling thread's seccomp mode (0 none, 2 filter). Non-blocking, no side effects."""
    return int(_libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0))


def is_filter_supported() -> bool:
    """Say whether filter mode with KILL_PROCESS is available and libseccomp knows this architecture.

    Uses SECCOMP_GET_ACTION_AVAIL, which changes nothing. Non-blocking, safe to call any number of times.
    """
    nr = _resolve("seccomp")
    action = ctypes.c_uint32(pyseccomp.KILL_PROCESS)
    return nr >= 0 and _libc.syscall(nr, _SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action)) == 0


def load_base_filter(self_pid: int) -> SeccompResult:
    """Load filter 1 (the deny list) on the calling thread; the caller must be single-threaded.

    ``self_pid`` is the caller's pid as its own PID namespace numbers it (``os.getpid()``): calls that name
    a process are allowed for that pid only. Non-blocking (about 1.5 ms to compile and load). Each call
    stacks one more filter, so call it once. Raises ``OSError`` from libseccomp if the filter cannot be built
    or loaded; then nothing was loaded.
    """
    flt = _new_filter()
    eperm = pyseccomp.ERRNO(errno.EPERM)
    used: list[str] = []
    unknown: list[str] = []

    def add(name: str, action: int, *args: object) -> None:
        if _resolve(name) < 0:
            unknown.append(name)
            return
        flt.add_rule(action, name, *args)
        if name not in used:
            used.append(name)

    for name in DENIED_SYSCALLS:
        add(name, eperm)
    # Only AF_UNIX sockets; NE on the full 64-bit argument also denies AF_UNIX with junk in the high bits.
    for name in ("socket", "socketpair"):
        add(name, pyseccomp.ERRNO(errno.EAFNOSUPPORT), pyseccomp.Arg(0, pyseccomp.NE, AF_UNIX))
    # clone is allowed only for threads, and never with a new namespace.
    add("clone", eperm, pyseccomp.Arg(0, pyseccomp.MASKED_EQ, CLONE_THREAD, 0))
    for flag in CLONE_NEW_FLAGS.values():
        add("clone", eperm, pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory that seccomp cannot read; ENOSYS makes glibc fall back to clone.
    add("clone3", pyseccomp.ERRNO(errno.ENOSYS))
    # The kernel reads ioctl's command as 32 bits; compare only those.
    for request in (TIOCSTI, TIOCLINUX):
        add("ioctl", eperm, pyseccomp.Arg(1, pyseccomp.MASKED_EQ, _MASK_32, request))
    add("personality", eperm, pyseccomp.Arg(0, pyseccomp.NE, PERSONALITY_QUERY))
    for name, index, allowed in SELF_ONLY_ARGUMENTS:
        add(name, eperm, pyseccomp.Arg(index, pyseccomp.NE, self_pid if allowed == SELF else allowed))
    for name in SELF_ONLY_DENIED:
        add(name, eperm)
    for name, index in MKNOD_MODE_ARGUMENT.items():
        for kind in MKNOD_DENIED_TYPES.values():
            add(name, eperm, pyseccomp.Arg(index, pyseccomp.MASKED_EQ, S_IFMT, kind))
    # prctl's option is an int: compare its low 32 bits, as the kernel reads it.
    for option in DENIED_PRCTL_OPTIONS.values():
        add("prctl", eperm, pyseccomp.Arg(0, pyseccomp.MASKED_EQ, _MASK_32, option))
    flt.load()
    return SeccompResult("base", tuple(used), tuple(unknown), tsync=False)


def load_socket_filter() -> SeccompResult:
    """Load filter 2 on every thread of the process (TSYNC): socket, socketpair and connect get EPERM.

    Call it after the grpc server has started: from then on the worker only accepts on its listening
    socket. Non-blocking (about 0.14 ms). Calling it twice stacks an identical filter, which is harmless
    but pointless. Raises ``OSError`` if loading fails (for example ESRCH from TSYNC when some thread
    runs a different filter stack); then no thread got the filter.
    """
    flt = _new_filter()
    flt.set_attr(pyseccomp.Attr.CTL_TSYNC, 1)
    for name in SOCKET_FILTER_SYSCALLS:
        flt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
    flt.load()
    return SeccompResult("sockets", SOCKET_FILTER_SYSCALLS, (), tsync=True)
