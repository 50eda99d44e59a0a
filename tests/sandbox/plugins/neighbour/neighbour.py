"""Hostile: changes other processes without ptrace, the way a same-uid neighbour could.

``attack`` takes {"attack": kind, "pid"/"uid": target} and reports the errno the kernel (or the filter)
gave; the test reads the target's state from outside. ``whoami`` reports its ids and what /proc shows.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_IOPRIO_SET = 251  # x86_64
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_IDLE = 3


def _ioprio_set(pid: int) -> None:
    if _libc.syscall(_SYS_IOPRIO_SET, _IOPRIO_WHO_PROCESS, pid, _IOPRIO_CLASS_IDLE << 13) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_ATTACKS = {
    "setpriority": lambda t: os.setpriority(os.PRIO_PROCESS, t, 19),
    "renice_user": lambda t: os.setpriority(os.PRIO_USER, t, 19),
    "prlimit": lambda t: resource.prlimit(t, resource.RLIMIT_NOFILE, (16, 16)),
    "sched_setscheduler": lambda t: os.sched_setscheduler(t, os.SCHED_IDLE, os.sched_param(0)),
    "sched_setaffinity": lambda t: os.sched_setaffinity(t, {0}),
    "ioprio_set": _ioprio_set,
    "stop": lambda t: os.kill(t, signal.SIGSTOP),
    "stop_all": lambda t: os.kill(-1, signal.SIGSTOP),
}


class Neighbour(PluginBase):
    info = PluginInfo(id="neighbour", name="Neighbour", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def attack(self, payload: Any) -> dict[str, Any]:
        try:
            _ATTACKS[payload["attack"]](int(payload.get("target", 0)))
        except OSError as exc:
            return {"done": False, "errno": exc.errno}
        return {"done": True, "errno": None}

    @capability
    def whoami(self, payload: Any) -> dict[str, Any]:
        try:
            visible = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
        except OSError as exc:
            visible = [-exc.errno]
        return {"ids": [*os.getresuid(), *os.getresgid()], "pid": os.getpid(), "visible": visible}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
