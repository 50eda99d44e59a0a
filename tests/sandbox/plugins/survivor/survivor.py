"""Hostile: tries everything that would let it outlive the host and zygote that started it."""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Any

from plugin_pool.sdk import PluginBase, PluginInfo, TrustLevel, capability

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, arg: int) -> int | None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        return ctypes.get_errno()
    return None


class Survivor(PluginBase):
    info = PluginInfo(id="survivor", name="Survivor", version="1.0.0", trust_level=TrustLevel.UNTRUSTED)

    @capability
    def unbind(self, payload: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"pdeathsig": _prctl(_PR_SET_PDEATHSIG, 0)}
        value = ctypes.c_int(-1)
        _libc.prctl(_PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
        out["pdeathsig_now"] = value.value
        out["subreaper"] = _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            try:
                signal.signal(sig, signal.SIG_IGN)
            except ValueError:  # not the main thread: only the main thread may set handlers
                pass
        try:
            os.setsid()
            out["setsid"] = None
        except OSError as exc:
            out["setsid"] = exc.errno
        return out

    @capability
    def ping(self, payload: Any) -> dict[str, Any]:
        return {"pid": os.getpid()}
