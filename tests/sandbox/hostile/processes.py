"""Process escapes: new processes, exec, tracing and signalling the parent, new namespaces; and an
introspection action that reads the confinement state from inside."""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import subprocess
import threading
import time
from typing import Any

__all__ = [
    "do_fork",
    "exec_shell",
    "introspect",
    "ptrace_parent",
    "raw_syscall",
    "run_subprocess",
    "signal_parent",
    "sleep",
    "start_thread",
    "unshare_user",
    "x32_syscall",
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.syscall.restype = ctypes.c_long
_PTRACE_ATTACH = 16
_PTRACE_DETACH = 17
_CLONE_NEWUSER = 0x10000000


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def do_fork(arg: Any, ctx: Any) -> dict[str, Any]:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return {"forked": pid}


def run_subprocess(arg: Any, ctx: Any) -> dict[str, Any]:
    proc = subprocess.run(["/bin/true"], check=False, timeout=5)
    return {"returncode": proc.returncode}


def exec_shell(arg: Any, ctx: Any) -> dict[str, Any]:
    os.execv("/bin/sh", ["/bin/sh", "-c", "exit 0"])


def ptrace_parent(arg: Any, ctx: Any) -> dict[str, Any]:
    parent = os.getppid()
    if _libc.ptrace(_PTRACE_ATTACH, parent, None, None) != 0:
        _raise_errno("ptrace(PTRACE_ATTACH)")
    # Should never get here; let the parent go at once.
    _libc.ptrace(_PTRACE_DETACH, parent, None, None)
    return {"attached": parent}


def signal_parent(arg: Any, ctx: Any) -> dict[str, Any]:
    # Signal 0 only checks permission: nothing is delivered even if the sandbox failed.
    os.kill(os.getppid(), 0)
    return {"signalled": os.getppid()}


def unshare_user(arg: Any, ctx: Any) -> dict[str, Any]:
    if _libc.unshare(_CLONE_NEWUSER) != 0:
        _raise_errno("unshare(CLONE_NEWUSER)")
    return {"unshared": True}


def start_thread(arg: Any, ctx: Any) -> dict[str, Any]:
    """Positive control: threads still start (clone with CLONE_THREAD after clone3 -> ENOSYS)."""
    out: list[int] = []
    threads = [threading.Thread(target=lambda: out.append(sum(range(1000)))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    return {"results": out}


def _prctl_int(option: int) -> int:
    value = ctypes.c_int(0)
    _libc.prctl(option, ctypes.byref(value), 0, 0, 0)
    return value.value


def introspect(arg: Any, ctx: Any) -> dict[str, Any]:
    """Read the confinement state from inside (no /proc reads: Landlock denies them)."""
    limits = {
        name: list(resource.getrlimit(getattr(resource, name)))
        for name in ("RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CORE")
    }
    open_fds = []
    for fd in range(1024):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
            open_fds.append(fd)
        except OSError:
            pass
    devnull_rdev = os.stat("/dev/null").st_rdev
    try:
        os.listdir("/")
        root_listing = "allowed"
    except PermissionError:
        root_listing = "denied"
    return {
        "no_new_privs": _libc.prctl(39, 0, 0, 0, 0),
        "seccomp_mode": _libc.prctl(21, 0, 0, 0, 0),
        "pdeathsig": _prctl_int(2),
        "rlimits": limits,
        "netns_inode": os.stat("/proc/self/ns/net").st_ino,
        "resuid": list(os.getresuid()),
        "groups": os.getgroups(),
        "environ": dict(os.environ),
        "open_fds": open_fds,
        "stdin_is_devnull": os.fstat(0).st_rdev == devnull_rdev,
        "stdout_is_devnull": os.fstat(1).st_rdev == devnull_rdev,
        "session_leader": os.getsid(0) == os.getpid(),
        "root_listing": root_listing,
    }


def sleep(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: seconds to sleep (bounded by the caller); used to watch PDEATHSIG."""
    time.sleep(float(arg))
    return {"slept": arg}


def raw_syscall(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: [syscall number, up to 6 integer arguments]. Used for syscalls Python does not wrap."""
    nr, *args = (int(a) for a in arg)
    res = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))
    if res < 0:
        _raise_errno(f"syscall({nr})")
    return {"returned": res}


def x32_syscall(arg: Any, ctx: Any) -> dict[str, Any]:
    """getpid through the x32 ABI (nr | 0x40000000): the filter's arch check must kill the process."""
    res = _libc.syscall(ctypes.c_long(0x40000000 | 39))
    return {"returned": res, "errno": ctypes.get_errno()}
