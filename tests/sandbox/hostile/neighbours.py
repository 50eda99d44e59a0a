"""Reaching other processes without ptrace or signals: priorities, rlimits, scheduling, I/O priority, and
undoing the tie to the parent. Each action names its target by pid (a victim the test started and watches
from outside) and reports the errno; the test checks the victim's state from outside."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import time
from typing import Any

__all__ = ["drop_pdeathsig", "harm_neighbour", "list_processes"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_SYS_IOPRIO_SET = 251  # x86_64
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3
_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2


def _attack(kind: str, pid: int) -> None:
    if kind == "setpriority":
        os.setpriority(os.PRIO_PROCESS, pid, 19)
    elif kind == "prlimit":
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (16, 16))
    elif kind == "sched_setscheduler":
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    elif kind == "sched_setaffinity":
        os.sched_setaffinity(pid, {0})
    elif kind == "ioprio_set":
        if _libc.syscall(_SYS_IOPRIO_SET, _IOPRIO_WHO_PROCESS, pid, _IOPRIO_CLASS_IDLE << 13) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    elif kind == "stop":
        os.kill(pid, 19)  # SIGSTOP
    else:
        raise ValueError(f"unknown attack {kind!r}")


def harm_neighbour(arg: Any, ctx: Any) -> dict[str, Any]:
    """arg: [attack, victim pid]. Returns {"done": True} or raises the OSError the kernel gave."""
    kind, pid = str(arg[0]), int(arg[1])
    _attack(kind, pid)
    return {"done": True}


def drop_pdeathsig(arg: Any, ctx: Any) -> dict[str, Any]:
    """Undo the death signal that ties this process to its parent, then live on for ``arg`` seconds."""
    result = _libc.prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0)
    errno_ = ctypes.get_errno() if result != 0 else None
    value = ctypes.c_int(-1)
    _libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
    # Report before sleeping, so the test can kill the parent while this process still lives.
    line = {"stage": "dropped", "errno": errno_, "pdeathsig": value.value}
    os.write(ctx.result_fd, (json.dumps(line) + "\n").encode())
    time.sleep(float(arg))
    return {"survived": True}


def list_processes(arg: Any, ctx: Any) -> dict[str, Any]:
    """The pids this process can see in its /proc."""
    return {"pids": sorted(int(name) for name in os.listdir("/proc") if name.isdigit()), "me": os.getpid()}
