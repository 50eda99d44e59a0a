"""Hostile: PTRACE_ATTACH to another process (payload: pid); detaches at once if it ever succeeds."""

from __future__ import annotations

import ctypes
import os
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

_PTRACE_ATTACH = 16
_PTRACE_DETACH = 17
_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


class Ptracer(PluginBase):
    info = PluginInfo(id="ptracer", name="Ptracer", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def attach(self, payload: Any) -> dict[str, Any]:
        pid = int(payload)
        if pid == 0:
            pid = os.getppid()
        if _libc.ptrace(_PTRACE_ATTACH, pid, None, None) != 0:
            return {"attached": False, "pid": pid, "errno": ctypes.get_errno()}
        _libc.ptrace(_PTRACE_DETACH, pid, None, None)
        return {"attached": True, "pid": pid, "errno": None}

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
